"""EnclaveInfo.from_hello: the host's reading of an enclave's hello reply."""

from __future__ import annotations

import pytest

from sealedml.errors import EnclaveError
from sealedml.tee.client import EnclaveInfo

HELLO = {
    "tee": "simulated",
    "simulated": True,
    "measurement": "ab" * 48,
    "hpke_public_key": "01" * 32,
    "signing_public_key": "02" * 32,
    "instance_id": "c0ffee",
}


def test_a_hello_reply_is_read_field_by_field():
    info = EnclaveInfo.from_hello(dict(HELLO))
    assert (info.tee, info.simulated, info.measurement) == ("simulated", True, "ab" * 48)
    assert info.hpke_public_key == bytes([1]) * 32 and info.signing_public_key == bytes([2]) * 32
    assert (info.instance_id, info.protocol) == ("c0ffee", 1)


@pytest.mark.parametrize(
    "broken",
    [
        {k: v for k, v in HELLO.items() if k != "instance_id"},
        {**HELLO, "hpke_public_key": "not hex"},
        {**HELLO, "signing_public_key": None},
    ],
)
def test_a_malformed_hello_reply_is_a_protocol_error(broken):
    with pytest.raises(EnclaveError) as info:
        EnclaveInfo.from_hello(broken)
    assert info.value.code == "enclave.protocol"
