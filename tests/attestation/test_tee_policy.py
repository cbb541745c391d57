"""Per-TEE reference values: TOML loading fails closed, round-trips, and each check has its code."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import pytest

from sealedml.attestation.claims import Claims
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.errors import AttestationError, ConfigError

NOW = datetime(2025, 7, 1, tzinfo=UTC)
SNP_M, TD_M, RTMR = "a1" * 48, "b2" * 48, "c3" * 48
MRENCLAVE, MRSIGNER = "d4" * 32, "e5" * 32

FULL = f"""
[attestation]
max_evidence_age_seconds = 300

[attestation.sev-snp]
measurements = ["{SNP_M.upper()}"]
host_data = ["{"01" * 32}"]
min_tcb = {{ bootloader = 2, snp = 5, microcode = 68 }}
min_guest_svn = 1
products = ["Milan"]

[attestation.tdx]
mr_td = ["{TD_M}"]
rtmr1 = ["{RTMR}"]
min_tee_tcb_svn = "{"03" + "00" * 15}"

[attestation.sgx]
mr_signer = ["{MRSIGNER}"]
isv_prod_id = 1
min_isv_svn = 2
accepted_tcb_statuses = ["SWHardeningNeeded"]
accepted_advisories = ["INTEL-SA-00615"]
max_collateral_age_seconds = 86400
"""


@pytest.fixture
def policy() -> AppraisalPolicy:
    return AppraisalPolicy.from_toml(FULL)


def claims(tee: str, **changes: object) -> Claims:
    raw: dict[str, object] = {
        "sev-snp": {
            "host_data": "01" * 32,
            "id_key_digest": "00" * 48,
            "product": "Milan",
            "reported_tcb": {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68},
        },
        "tdx": {"rtmr1": RTMR, "tee_tcb_svn": "03" + "00" * 15},
        "sgx": {"mr_signer": MRSIGNER, "isv_prod_id": 1},
    }[tee]
    base = Claims(
        tee=tee,
        simulated=False,
        measurement={"sev-snp": SNP_M, "tdx": TD_M, "sgx": MRENCLAVE}[tee],
        report_data=bytes(64),
        debug=False,
        platform_id="ff" * 8,
        issued_at=NOW,
        svn=2,
        root_fingerprint="00" * 32,
        raw=MappingProxyType(raw),
        tcb_status=None if tee == "sev-snp" else "UpToDate",
        collateral_issued_at=None if tee == "sev-snp" else NOW - timedelta(hours=1),
    )
    return dataclasses.replace(base, **changes)


def with_raw(c: Claims, **changes: object) -> Claims:
    return dataclasses.replace(c, raw=MappingProxyType({**c.raw, **changes}))


def code_of(policy: AppraisalPolicy, c: Claims) -> str | None:
    try:
        policy.verify(c, now=NOW)
    except AttestationError as exc:
        return exc.code
    return None


def test_full_policy_loads_and_round_trips(policy):
    assert policy.sev_snp is not None and policy.sev_snp.measurements == (SNP_M,)
    assert policy.sev_snp.min_tcb == {"bootloader": 2, "snp": 5, "microcode": 68}
    assert policy.tdx is not None and policy.tdx.accepted_tcb_statuses == ("UpToDate",)
    assert policy.sgx is not None and policy.sgx.isv_prod_id == 1
    assert policy.reference_measurements == ()
    assert AppraisalPolicy.from_toml(policy.to_toml()) == policy


@pytest.mark.parametrize("tee", ["sev-snp", "tdx", "sgx"])
def test_matching_claims_pass(policy, tee):
    assert code_of(policy, claims(tee)) is None


@pytest.mark.parametrize("tee", ["sev-snp", "tdx", "sgx"])
def test_tee_without_table_is_refused(tee):
    only_simulated = AppraisalPolicy(reference_measurements=("ab" * 48,))
    assert code_of(only_simulated, claims(tee)) == "attestation.no_reference_values"


@pytest.mark.parametrize("tee", ["sev-snp", "tdx", "sgx"])
def test_debug_forbidden_by_default(policy, tee):
    assert code_of(policy, claims(tee, debug=True)) == "attestation.debug_not_allowed"


@pytest.mark.parametrize(
    ("tee", "change", "code"),
    [
        ("sev-snp", {"measurement": "ff" * 48}, "attestation.measurement_mismatch"),
        ("sev-snp", {"raw": {"host_data": "02" * 32}}, "attestation.policy_mismatch"),
        ("sev-snp", {"raw": {"product": "Genoa"}}, "attestation.policy_mismatch"),
        (
            "sev-snp",
            {"raw": {"reported_tcb": {"bootloader": 2, "tee": 0, "snp": 4, "microcode": 68}}},
            "attestation.tcb_too_low",
        ),
        ("sev-snp", {"raw": {"reported_tcb": None}}, "attestation.tcb_too_low"),
        ("sev-snp", {"svn": 0}, "attestation.tcb_too_low"),
        ("tdx", {"measurement": "ff" * 48}, "attestation.measurement_mismatch"),
        ("tdx", {"raw": {"rtmr1": "00" * 48}}, "attestation.policy_mismatch"),
        ("tdx", {"raw": {"tee_tcb_svn": "02" + "00" * 15}}, "attestation.tcb_too_low"),
        ("tdx", {"tcb_status": None}, "attestation.collateral_missing"),
        ("tdx", {"tcb_status": "SWHardeningNeeded"}, "attestation.tcb_status_not_allowed"),
        ("tdx", {"tcb_status": "OutOfDate"}, "attestation.tcb_status_not_allowed"),
        ("tdx", {"advisories": ("INTEL-SA-00615",)}, "attestation.tcb_status_not_allowed"),
        ("tdx", {"collateral_issued_at": NOW - timedelta(days=31)}, "attestation.collateral_expired"),
        ("sgx", {"raw": {"mr_signer": "00" * 32}}, "attestation.policy_mismatch"),
        ("sgx", {"raw": {"isv_prod_id": 2}}, "attestation.policy_mismatch"),
        ("sgx", {"svn": 1}, "attestation.tcb_too_low"),
        ("sgx", {"tcb_status": "ConfigurationAndSWHardeningNeeded"}, "attestation.tcb_status_not_allowed"),
        (
            "sgx",
            {"tcb_status": "SWHardeningNeeded", "advisories": ("INTEL-SA-00615", "INTEL-SA-00289")},
            "attestation.tcb_status_not_allowed",
        ),
        ("sgx", {"collateral_issued_at": NOW - timedelta(days=2)}, "attestation.collateral_expired"),
    ],
)
def test_each_check_has_its_code(policy, tee, change, code):
    raw = change.pop("raw", None)
    c = claims(tee, **change)
    if raw is not None:
        c = with_raw(c, **raw)
    assert code_of(policy, c) == code


def test_named_advisories_accepted_only_when_listed(policy):
    ok = claims("sgx", tcb_status="SWHardeningNeeded", advisories=("INTEL-SA-00615",))
    assert code_of(policy, ok) is None


def test_messages_name_the_values(policy):
    with pytest.raises(AttestationError) as info:
        policy.verify(claims("tdx", tcb_status="SWHardeningNeeded", advisories=("INTEL-SA-00615",)), now=NOW)
    assert "SWHardeningNeeded" in info.value.message and "INTEL-SA-00615" in info.value.message
    with pytest.raises(AttestationError) as info:
        policy.verify(claims("sev-snp", measurement="ff" * 48), now=NOW)
    assert "ffffffffffffffff" in info.value.message and SNP_M[:16] in info.value.message


@pytest.mark.parametrize(
    "table",
    [
        '[attestation.sev-snp]\nmeasurements = []\n',
        '[attestation.sev-snp]\nmeasurements = ["abc"]\n',
        f'[attestation.sev-snp]\nmeasurements = ["{SNP_M}"]\nmin_tcb = {{ fmc = 1 }}\n',
        f'[attestation.sev-snp]\nmeasurements = ["{SNP_M}"]\nmin_tcb = {{ snp = 300 }}\n',
        f'[attestation.sev-snp]\nmeasurements = ["{SNP_M}"]\nproducts = ["Naples"]\n',
        f'[attestation.sev-snp]\nmeasurements = ["{SNP_M}"]\nallow_debug = "no"\n',
        f'[attestation.sev-snp]\nmeasurements = ["{SNP_M}"]\nsurprise = 1\n',
        '[attestation.tdx]\nmr_td = []\n',
        f'[attestation.tdx]\nmr_td = ["{TD_M}"]\naccepted_tcb_statuses = ["Revoked"]\n',
        f'[attestation.tdx]\nmr_td = ["{TD_M}"]\naccepted_advisories = ["CVE-2024-1"]\n',
        f'[attestation.tdx]\nmr_td = ["{TD_M}"]\nmax_collateral_age_seconds = 0\n',
        f'[attestation.tdx]\nmr_td = ["{TD_M}"]\nmin_tee_tcb_svn = "03"\n',
        "[attestation.sgx]\nmin_isv_svn = 1\n",
        f'[attestation.sgx]\nmr_signer = ["{MRSIGNER}"]\n',
        f'[attestation.sgx]\nmr_enclave = ["{MRENCLAVE}"]\nmin_isv_svn = 70000\n',
        "[attestation.keystone]\nmeasurements = []\n",
        '[attestation]\nsev-snp = "yes"\n',
    ],
)
def test_bad_tables_fail_closed(table):
    with pytest.raises(ConfigError) as info:
        AppraisalPolicy.from_toml(table)
    assert info.value.code == "config.invalid"


def test_policy_pinning_nothing_is_refused():
    with pytest.raises(ConfigError):
        AppraisalPolicy.from_toml("[attestation]\nallow_simulated = true\n")
