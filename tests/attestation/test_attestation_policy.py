"""AppraisalPolicy: TOML loading fails closed, round-trips, and appraises claims."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealedml.attestation.claims import Claims
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.errors import AttestationError, ConfigError

M1, M2 = "a1" * 48, "b2" * 48
ROOT = "cd" * 32
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

VALID = f"""
[attestation]
allow_simulated = true
reference_measurements = ["{M1}", "{M2}"]
max_evidence_age_seconds = 120
allow_debug = false
simulated_roots = ["{ROOT}"]
"""


def config_error(text: str | bytes) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        AppraisalPolicy.from_toml(text)
    assert info.value.code == "config.invalid"
    return info.value


def claims(**changes: object) -> Claims:
    base = Claims(
        tee="simulated",
        simulated=True,
        measurement=M1,
        report_data=bytes(64),
        debug=False,
        platform_id="ee" * 32,
        issued_at=NOW,
        svn=1,
        root_fingerprint=ROOT,
        raw=MappingProxyType({}),
    )
    return dataclasses.replace(base, **changes)


# -- loading --------------------------------------------------------------------------------------


def test_valid_policy_loads():
    policy = AppraisalPolicy.from_toml(VALID)
    assert policy.allow_simulated is True
    assert policy.reference_measurements == (M1, M2)
    assert policy.max_evidence_age_seconds == 120
    assert policy.allow_debug is False
    assert policy.simulated_roots == (ROOT,)


def test_defaults_fail_closed():
    policy = AppraisalPolicy.from_toml(f'[attestation]\nreference_measurements = ["{M1}"]\n')
    assert policy.allow_simulated is False
    assert policy.allow_debug is False
    assert policy.max_evidence_age_seconds == 300
    assert policy.simulated_roots == ()


def test_load_from_file_and_bytes(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(VALID)
    assert AppraisalPolicy.load(path) == AppraisalPolicy.from_toml(VALID.encode())


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        AppraisalPolicy.load(tmp_path / "absent.toml")
    assert info.value.code == "config.invalid"


def test_hex_is_normalised_to_lowercase():
    policy = AppraisalPolicy.from_toml(VALID.replace(M1, M1.upper()).replace(ROOT, ROOT.upper()))
    assert policy.reference_measurements[0] == M1 and policy.simulated_roots == (ROOT,)


def test_round_trip():
    policy = AppraisalPolicy.from_toml(VALID)
    assert AppraisalPolicy.from_toml(policy.to_toml()) == policy
    empty_roots = dataclasses.replace(policy, simulated_roots=())
    assert AppraisalPolicy.from_toml(empty_roots.to_toml()) == empty_roots


@given(
    measurements=st.lists(st.text("0123456789abcdef", min_size=96, max_size=96), min_size=1, max_size=4),
    roots=st.lists(st.text("0123456789abcdef", min_size=64, max_size=64), max_size=3),
    age=st.integers(1, 315_360_000),
    allow_simulated=st.booleans(),
    allow_debug=st.booleans(),
)
def test_round_trip_any_policy(measurements, roots, age, allow_simulated, allow_debug):
    policy = AppraisalPolicy(
        reference_measurements=tuple(measurements),
        simulated_roots=tuple(roots),
        max_evidence_age_seconds=age,
        allow_simulated=allow_simulated,
        allow_debug=allow_debug,
    )
    assert AppraisalPolicy.from_toml(policy.to_toml()) == policy


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (VALID + "allow_everything = true\n", "allow_everything"),
        (VALID.replace("allow_debug", "alow_debug"), "alow_debug"),
        (VALID + "[attestaton]\nallow_simulated = true\n", "attestaton"),
        (VALID + "\n[extra]\nx = 1\n", "extra"),
    ],
)
def test_unknown_key_is_rejected_and_named(text, names):
    assert names in config_error(text).message


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (VALID.replace(M1, M1[:-2]), "reference_measurements"),
        (VALID.replace(M1, "zz" + M1[2:]), "reference_measurements"),
        (VALID.replace(M1, M1 + "00"), "reference_measurements"),
        (VALID.replace(ROOT, ROOT[:-1]), "simulated_roots"),
        (VALID.replace(ROOT, "g" + ROOT[1:]), "simulated_roots"),
    ],
)
def test_bad_hex_is_rejected(text, names):
    assert names in config_error(text).message


@pytest.mark.parametrize(
    ("old", "new", "names"),
    [
        (f'["{M1}", "{M2}"]', "[]", "reference_measurements"),
        (f'reference_measurements = ["{M1}", "{M2}"]\n', "", "reference_measurements"),
        (f'["{M1}", "{M2}"]', f'"{M1}"', "reference_measurements"),
        (f'["{M1}", "{M2}"]', f'["{M1}", 5]', "reference_measurements"),
        (f'["{ROOT}"]', f'"{ROOT}"', "simulated_roots"),
        ("allow_simulated = true", 'allow_simulated = "yes"', "allow_simulated"),
        ("allow_debug = false", "allow_debug = 0", "allow_debug"),
        ("max_evidence_age_seconds = 120", "max_evidence_age_seconds = 0", "max_evidence_age_seconds"),
        ("max_evidence_age_seconds = 120", "max_evidence_age_seconds = -5", "max_evidence_age_seconds"),
        ("max_evidence_age_seconds = 120", "max_evidence_age_seconds = 1.5", "max_evidence_age_seconds"),
        ("max_evidence_age_seconds = 120", "max_evidence_age_seconds = true", "max_evidence_age_seconds"),
        (
            "max_evidence_age_seconds = 120",
            "max_evidence_age_seconds = 10_000_000_000",
            "max_evidence_age_seconds",
        ),
    ],
)
def test_wrong_value_is_rejected_and_named(old, new, names):
    assert old in VALID
    assert names in config_error(VALID.replace(old, new)).message


@pytest.mark.parametrize(
    "text",
    ["", "[attestation", "attestation = 5", "[attestation]\nreference_measurements = [", b"\xff\xfe"],
)
def test_not_a_policy_is_rejected(text):
    config_error(text)


def test_construction_in_code_is_validated_too():
    with pytest.raises(ConfigError):
        AppraisalPolicy(reference_measurements=())
    with pytest.raises(ConfigError):
        AppraisalPolicy(reference_measurements=(M1,), allow_simulated=1)  # type: ignore[arg-type]


# -- appraisal ------------------------------------------------------------------------------------


@pytest.fixture
def policy() -> AppraisalPolicy:
    return AppraisalPolicy.from_toml(VALID)


def appraisal_code(policy: AppraisalPolicy, claim: Claims, now: datetime = NOW) -> str | None:
    try:
        policy.verify(claim, now=now)
    except AttestationError as error:
        return error.code
    return None


def test_acceptable_claims_pass(policy):
    assert appraisal_code(policy, claims()) is None
    assert appraisal_code(policy, claims(measurement=M2)) is None


@pytest.mark.parametrize(
    ("claim", "now", "code"),
    [
        (claims(measurement="ff" * 48), NOW, "attestation.measurement_mismatch"),
        (claims(debug=True), NOW, "attestation.debug_not_allowed"),
        (claims(root_fingerprint="00" * 32), NOW, "attestation.untrusted_root"),
        (claims(), NOW + timedelta(seconds=121), "attestation.expired"),
        (claims(), NOW - timedelta(seconds=61), "attestation.not_yet_valid"),
    ],
)
def test_each_policy_check_has_its_code(policy, claim, now, code):
    assert appraisal_code(policy, claim, now) == code


def test_simulated_refused_by_strict_policy(policy):
    strict = dataclasses.replace(policy, allow_simulated=False)
    assert appraisal_code(strict, claims()) == "attestation.simulated_not_allowed"
    # Real-TEE claims are judged by their own table; without one they are refused (deny by default).
    assert appraisal_code(strict, claims(simulated=False, tee="sev-snp")) == "attestation.no_reference_values"


def test_boundaries(policy):
    assert appraisal_code(policy, claims(), NOW + timedelta(seconds=120)) is None
    assert appraisal_code(policy, claims(), NOW - timedelta(seconds=60)) is None


def test_mismatch_message_shows_expected_and_got(policy):
    with pytest.raises(AttestationError) as info:
        policy.verify(claims(measurement="ff" * 48), now=NOW)
    assert "ff" * 8 in info.value.message and M1[:16] in info.value.message and M2[:16] in info.value.message


def test_naive_now_is_a_caller_error(policy):
    with pytest.raises(ValueError):
        policy.verify(claims(), now=NOW.replace(tzinfo=None))
