"""EvidenceBundle wire form: round trip, strict parsing, bounded sizes."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest

from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.errors import AttestationError

B64 = lambda data: base64.b64encode(data).decode()  # noqa: E731


def wire(bundle: EvidenceBundle) -> dict:
    return json.loads(bundle.to_json())


def malformed(text: str | bytes) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        EvidenceBundle.from_json(text)
    assert info.value.code == "attestation.malformed"
    assert info.value.status == 400
    return info.value


def test_round_trip(bundle):
    text = bundle.to_json()
    assert EvidenceBundle.from_json(text) == bundle
    assert EvidenceBundle.from_json(text.encode()) == bundle
    assert json.loads(text)["version"] == 1
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


def test_list_of_certificates_becomes_tuple(bundle):
    rebuilt = dataclasses.replace(bundle, certificates=list(bundle.certificates))
    assert rebuilt.certificates == bundle.certificates and isinstance(rebuilt.certificates, tuple)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("nonce"),
        lambda d: d.update(extra="x"),
        lambda d: d.update(version=2),
        lambda d: d.update(version=True),
        lambda d: d.update(version="1"),
        lambda d: d.update(tee=5),
        lambda d: d.update(tee="SIMULATED"),
        lambda d: d.update(tee=""),
        lambda d: d.update(tee="x" * 33),
        lambda d: d.update(report="not base64!"),
        lambda d: d.update(report=d["report"].rstrip("=")),
        lambda d: d.update(report=""),
        lambda d: d.update(report=5),
        lambda d: d.update(signature="QQ="),  # incomplete padding
        lambda d: d.update(signature="QR=="),  # non-canonical trailing bits
        lambda d: d.update(collateral=B64(b"c" * (256 * 1024 + 1))),
        lambda d: d.update(collateral=5),
        lambda d: d.update(certificates="abc="),
        lambda d: d.update(certificates=[B64(b"x")] * 9),
        lambda d: d.update(certificates=[B64(b"x" * (16 * 1024 + 1))]),
        lambda d: d.update(certificates=[5]),
        lambda d: d.update(report=B64(b"x" * (64 * 1024 + 1))),
        lambda d: d.update(signature=B64(b"x" * 2000)),
        lambda d: d.update(hpke_public_key=B64(b"k" * 31)),
        lambda d: d.update(signing_public_key=B64(b"k" * 33)),
        lambda d: d.update(nonce=B64(b"n" * 15)),
        lambda d: d.update(nonce=B64(b"n" * 65)),
        lambda d: d.update(nonce=None),
        lambda d: d.update(nonce="bm9uY2Vub25jZW5vbmNl\n"),
    ],
)
def test_bad_field_is_malformed(bundle, mutate):
    data = wire(bundle)
    mutate(data)
    malformed(json.dumps(data))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "null",
        "[]",
        "{",
        '"string"',
        "1e999999",
        "[" * 100_000 + "]" * 100_000,
        "x" * (600 * 1024),
        b"\xff\xfe\x00",
        b"{" + b" " * (600 * 1024) + b"}",
    ],
    ids=[
        "empty",
        "null",
        "array",
        "truncated",
        "string",
        "huge-float",
        "deep",
        "too-long",
        "not-utf8",
        "too-long-bytes",
    ],
)
def test_not_a_bundle_is_malformed(text):
    malformed(text)


def test_duplicate_keys_are_malformed(bundle):
    text = bundle.to_json()
    malformed(text[:-1] + ',"tee":"simulated"}')


def test_non_string_input_is_malformed():
    malformed(12)  # type: ignore[arg-type]


def test_constructor_validates(bundle):
    with pytest.raises(AttestationError) as info:
        dataclasses.replace(bundle, hpke_public_key=b"short")
    assert info.value.code == "attestation.malformed"
    with pytest.raises(AttestationError):
        dataclasses.replace(bundle, certificates=("not bytes",))
