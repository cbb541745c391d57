"""SimulatedPlatform (the evidence producer) and the report_data binding."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

import sealedml.attestation
from sealedml.attestation.producers.simulated import LEAF_VALIDITY, ROOT_FILE, STATE_FILE, SimulatedPlatform
from sealedml.attestation.report_data import REPORT_DATA_CONTEXT, bind_report_data
from sealedml.errors import ConfigError

# -- report_data ----------------------------------------------------------------------------------


def test_bind_report_data_is_sha512_of_context_keys_nonce():
    hpke, sign, nonce = b"h" * 32, b"s" * 32, b"n" * 16
    assert REPORT_DATA_CONTEXT == b"sealedml-v1"
    expected = hashlib.sha512(b"sealedml-v1" + hpke + sign + nonce).digest()
    assert bind_report_data(hpke, sign, nonce) == expected
    assert len(expected) == 64


def test_bind_report_data_separates_its_inputs():
    base = bind_report_data(b"h" * 32, b"s" * 32, b"n" * 16)
    assert bind_report_data(b"s" * 32, b"h" * 32, b"n" * 16) != base
    assert bind_report_data(b"h" * 32, b"s" * 32, b"n" * 17) != base


@pytest.mark.parametrize(
    ("hpke", "sign", "nonce"),
    [
        (b"h" * 31, b"s" * 32, b"n" * 16),
        (b"h" * 32, b"s" * 33, b"n" * 16),
        (b"h" * 32, b"s" * 32, b"n" * 15),
        (b"h" * 32, b"s" * 32, b"n" * 65),
        ("h" * 32, b"s" * 32, b"n" * 16),
    ],
)
def test_bind_report_data_rejects_bad_sizes(hpke, sign, nonce):
    with pytest.raises(ValueError):
        bind_report_data(hpke, sign, nonce)


# -- platform directory ---------------------------------------------------------------------------


def test_open_creates_private_directory_and_files(platform, platform_dir):
    assert stat.S_IMODE(platform_dir.stat().st_mode) == 0o700
    assert sorted(p.name for p in platform_dir.iterdir()) == sorted([STATE_FILE, ROOT_FILE])
    for path in platform_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    root_pem = x509.load_pem_x509_certificate((platform_dir / ROOT_FILE).read_bytes())
    assert hashlib.sha256(root_pem.public_bytes(serialization.Encoding.DER)).hexdigest() == (
        platform.root_fingerprint
    )


def test_reopen_loads_the_same_platform(platform, platform_dir, now):
    again = SimulatedPlatform.open(platform_dir, now=now + timedelta(days=1))
    assert again.root_fingerprint == platform.root_fingerprint
    assert again.root_certificate_der == platform.root_certificate_der
    assert again.certificate_chain == platform.certificate_chain
    assert again.sealing_secret == platform.sealing_secret
    assert len(again.sealing_secret) == 32
    assert again.platform_id == platform.platform_id


def test_distinct_directories_are_distinct_platforms(platform, other_platform):
    assert platform.root_fingerprint != other_platform.root_fingerprint
    assert platform.sealing_secret != other_platform.sealing_secret


def test_certificate_profile(platform, now):
    leaf, platform_ca, root = (x509.load_der_x509_certificate(der) for der in platform.certificate_chain)
    assert (
        "SIMULATED" in root.subject.rfc4514_string()
        and "NO HARDWARE PROTECTION" in root.subject.rfc4514_string()
    )
    assert (
        root.issuer == root.subject
        and platform_ca.issuer == root.subject
        and leaf.issuer == platform_ca.subject
    )
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert root.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True
    basic = platform_ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is True and basic.path_length == 0
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature is True
    assert root.version == x509.Version.v3
    assert root.not_valid_after_utc - root.not_valid_before_utc == timedelta(days=3650)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == LEAF_VALIDITY
    assert root.not_valid_before_utc <= now <= leaf.not_valid_after_utc


def test_expiring_leaf_is_renewed_under_the_same_root(
    platform, platform_dir, now, keys, nonce, policy, measurement
):
    from sealedml.attestation import verify_evidence

    later = now + LEAF_VALIDITY - timedelta(days=10)
    renewed = SimulatedPlatform.open(platform_dir, now=later)
    assert renewed.root_fingerprint == platform.root_fingerprint
    assert renewed.certificate_chain[1:] == platform.certificate_chain[1:]
    assert renewed.certificate_chain[0] != platform.certificate_chain[0]
    assert renewed.sealing_secret == platform.sealing_secret
    far = later + timedelta(days=100)  # the old leaf has expired by then; the renewed one has not
    bundle = renewed.attest(
        measurement=measurement, hpke_public_key=keys[0], signing_public_key=keys[1], nonce=nonce, now=far
    )
    assert verify_evidence(bundle, nonce=nonce, policy=policy, now=far).claims.root_fingerprint == (
        platform.root_fingerprint
    )
    assert SimulatedPlatform.open(platform_dir, now=later).certificate_chain == renewed.certificate_chain


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda state: "not json",
        lambda state: json.dumps({**state, "version": 2}),
        lambda state: json.dumps({k: v for k, v in state.items() if k != "report_key"}),
        lambda state: json.dumps({**state, "sealing_secret": "00" * 16}),
        lambda state: json.dumps({**state, "report_key": state["platform_key"]}),
        lambda state: json.dumps({**state, "platform_certificate": "garbage"}),
    ],
    ids=["not-json", "version", "missing-key", "short-secret", "key-mismatch", "bad-pem"],
)
def test_corrupt_state_is_a_config_error(platform, platform_dir, now, corrupt):
    state_path = platform_dir / STATE_FILE
    state_path.write_text(corrupt(json.loads(state_path.read_text())))
    with pytest.raises(ConfigError) as info:
        SimulatedPlatform.open(platform_dir, now=now)
    assert info.value.code == "config.invalid"


def test_state_with_foreign_chain_is_a_config_error(platform, platform_dir, other_platform, tmp_path, now):
    state_path = platform_dir / STATE_FILE
    state = json.loads(state_path.read_text())
    foreign = json.loads((tmp_path / "other-platform" / STATE_FILE).read_text())
    state["root_certificate"] = foreign["root_certificate"]
    state_path.write_text(json.dumps(state))
    with pytest.raises(ConfigError):
        SimulatedPlatform.open(platform_dir, now=now)


OPEN_AND_PRINT = (
    "import sys; from pathlib import Path; "
    "from sealedml.attestation.producers.simulated import SimulatedPlatform; "
    "print(SimulatedPlatform.open(Path(sys.argv[1])).root_fingerprint)"
)


def test_concurrent_first_opens_agree_on_one_root(tmp_path):
    directory = tmp_path / "race"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AND_PRINT, str(directory)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    fingerprints = {process.communicate(timeout=60)[0].strip() for process in processes}
    assert all(process.returncode == 0 for process in processes)
    assert fingerprints == {SimulatedPlatform.open(directory).root_fingerprint}
    assert not [p for p in directory.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"measurement": "A1" * 48},
        {"measurement": "a1" * 47},
        {"report_data": bytes(63)},
        {"debug": 1},
    ],
)
def test_issue_report_rejects_bad_arguments(platform, now, measurement, kwargs):
    arguments = {"measurement": measurement, "report_data": bytes(64), "now": now, **kwargs}
    with pytest.raises(ValueError):
        platform.issue_report(**arguments)


def test_issue_report_rejects_naive_time(platform, measurement, now):
    with pytest.raises(ValueError):
        platform.issue_report(measurement=measurement, report_data=bytes(64), now=now.replace(tzinfo=None))


# -- package surface ------------------------------------------------------------------------------


def test_public_names_resolve_and_match_all():
    assert set(sealedml.attestation.__all__) == set(sealedml.attestation._LAZY)
    for name in sealedml.attestation.__all__:
        assert getattr(sealedml.attestation, name) is not None
    with pytest.raises(AttributeError):
        _ = sealedml.attestation.does_not_exist


# -- machines under one simulated vendor ----------------------------------------------------------


def test_a_machine_shares_the_root_but_not_the_keys_or_sealing_secret(platform, platform_dir, tmp_path, now):
    machine_dir = tmp_path / "machines" / "worker-1"
    machine = SimulatedPlatform.open_machine(machine_dir, root_dir=platform_dir, now=now)
    assert machine.root_fingerprint == platform.root_fingerprint
    assert machine.platform_id != platform.platform_id
    assert machine.sealing_secret != platform.sealing_secret
    state = json.loads((machine_dir / STATE_FILE).read_bytes())
    assert "root_key" not in state, "the vendor root's private key must stay with the root"
    assert stat.S_IMODE((machine_dir / STATE_FILE).stat().st_mode) == 0o600
    # Its reports chain to the shared root.
    leaf, ca, root = (x509.load_der_x509_certificate(der) for der in machine.certificate_chain)
    leaf.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(root)
    assert root.fingerprint(hashes.SHA256()).hex() == platform.root_fingerprint
    # Reopening gives the same machine, and a second machine is another one.
    again = SimulatedPlatform.open_machine(machine_dir, root_dir=platform_dir, now=now)
    assert (again.platform_id, again.sealing_secret) == (machine.platform_id, machine.sealing_secret)
    other = SimulatedPlatform.open_machine(tmp_path / "machines" / "worker-2", root_dir=platform_dir, now=now)
    assert other.sealing_secret not in (machine.sealing_secret, platform.sealing_secret)


def test_a_machine_needs_a_readable_root(platform_dir, tmp_path, now):
    SimulatedPlatform.open(platform_dir, now=now)
    (platform_dir / STATE_FILE).write_text("{not json")
    with pytest.raises(ConfigError) as info:
        SimulatedPlatform.open_machine(tmp_path / "machine", root_dir=platform_dir, now=now)
    assert info.value.code == "config.invalid"
    assert not (tmp_path / "machine" / STATE_FILE).exists()
