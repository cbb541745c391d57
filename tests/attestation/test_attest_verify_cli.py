"""`sealedml attest verify EVIDENCE --policy P`: claims and verdict for every evidence type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attestation_vectors import vector_path
from sealedml.attestation.appraisal import appraise, detect_format
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.cli import app
from sealedml.errors import AttestationError

runner = CliRunner()
SNP = "sev-snp"
IDBLOCK_MEASUREMENT = (
    "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c"
)
GOSEV_MEASUREMENT = (
    "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"
)
AT = "2025-06-01T00:00:00Z"
IDBLOCK_TABLE = f'[attestation.sev-snp]\nmeasurements = ["{IDBLOCK_MEASUREMENT}"]\n'


def write_policy(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(body)
    return path


def snp_args(report: str, vcek: str) -> list[str]:
    return [
        str(vector_path(SNP, report)),
        "--cert",
        str(vector_path(SNP, vcek)),
        "--cert",
        str(vector_path(SNP, "ask_ark_milan.pem")),
        "--at",
        AT,
    ]


def verify(args: list[str], policy: Path):
    return runner.invoke(app, ["attest", "verify", *args, "--policy", str(policy), "--json"])


def test_snp_report_accepted_with_claims(tmp_path):
    policy = write_policy(
        tmp_path,
        IDBLOCK_TABLE + "min_tcb = { bootloader = 3, snp = 8 }\n",
    )
    result = verify(
        snp_args("trustee_milan_v2_idblock_report.bin", "trustee_milan_v2_idblock_vcek.der"), policy
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["accepted"] is True and answer["format"] == "sev-snp"
    assert answer["claims"]["measurement"] == IDBLOCK_MEASUREMENT
    assert answer["claims"]["raw"]["guest_svn"] == 4
    assert answer["report_data_checked"] == "not checked"


@pytest.mark.parametrize(
    ("policy_body", "code"),
    [
        (f'[attestation.sev-snp]\nmeasurements = ["{"00" * 48}"]\n', "attestation.measurement_mismatch"),
        (
            IDBLOCK_TABLE + "min_tcb = { microcode = 200 }\n",
            "attestation.tcb_too_low",
        ),
        (
            f'[attestation.sev-snp]\nmeasurements = ["{IDBLOCK_MEASUREMENT}"]\nmin_guest_svn = 5\n',
            "attestation.tcb_too_low",
        ),
        (f'[attestation.tdx]\nmr_td = ["{"00" * 48}"]\n', "attestation.no_reference_values"),
    ],
)
def test_snp_report_refused_by_policy_still_shows_claims(tmp_path, policy_body, code):
    policy = write_policy(tmp_path, policy_body)
    result = verify(
        snp_args("trustee_milan_v2_idblock_report.bin", "trustee_milan_v2_idblock_vcek.der"), policy
    )
    assert result.exit_code == 1
    answer = json.loads(result.stdout)
    assert answer["accepted"] is False and answer["error"]["code"] == code
    assert answer["claims"]["measurement"] == IDBLOCK_MEASUREMENT
    assert "REJECTED" in result.stderr


def test_debug_report_refused_under_a_strict_policy(tmp_path):
    policy = write_policy(tmp_path, f'[attestation.sev-snp]\nmeasurements = ["{GOSEV_MEASUREMENT}"]\n')
    result = verify(snp_args("gosevguest_milan_v2_report.bin", "gosevguest_milan_v2_vcek.der"), policy)
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["code"] == "attestation.debug_not_allowed"
    relaxed = write_policy(
        tmp_path, f'[attestation.sev-snp]\nmeasurements = ["{GOSEV_MEASUREMENT}"]\nallow_debug = true\n'
    )
    assert (
        verify(snp_args("gosevguest_milan_v2_report.bin", "gosevguest_milan_v2_vcek.der"), relaxed).exit_code
        == 0
    )


def test_expected_report_data(tmp_path):
    policy = write_policy(
        tmp_path, f'[attestation.sev-snp]\nmeasurements = ["{GOSEV_MEASUREMENT}"]\nallow_debug = true\n'
    )
    args = snp_args("gosevguest_milan_v2_report.bin", "gosevguest_milan_v2_vcek.der")
    good = verify([*args, "--report-data", "0102030405"], policy)
    assert good.exit_code == 0 and json.loads(good.stdout)["report_data_checked"] == "expected report_data"
    bad = verify([*args, "--report-data", "0102030406"], policy)
    assert json.loads(bad.stdout)["error"]["code"] == "attestation.report_data_mismatch"


def test_expired_vcek_is_refused_with_the_date(tmp_path):
    policy = write_policy(tmp_path, f'[attestation.sev-snp]\nmeasurements = ["{IDBLOCK_MEASUREMENT}"]\n')
    args = snp_args("trustee_milan_v2_idblock_report.bin", "trustee_milan_v2_idblock_vcek.der")
    args[args.index(AT)] = "2031-01-01T00:00:00Z"
    result = verify(args, policy)
    answer = json.loads(result.stdout)
    assert answer["error"]["code"] == "attestation.certificate_expired" and answer["claims"] is None
    assert "2030-01-24" in answer["error"]["message"]


def test_bad_inputs_are_clear_errors(tmp_path):
    policy = write_policy(tmp_path, f'[attestation.sev-snp]\nmeasurements = ["{IDBLOCK_MEASUREMENT}"]\n')
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x07" * 100)
    result = runner.invoke(app, ["attest", "verify", str(junk), "--policy", str(policy)])
    assert result.exit_code == 1 and "attestation.malformed" in result.stderr
    result = runner.invoke(app, ["attest", "verify", str(tmp_path / "missing"), "--policy", str(policy)])
    assert result.exit_code == 1 and "cannot read evidence file" in result.stderr
    args = snp_args("trustee_milan_v2_idblock_report.bin", "trustee_milan_v2_idblock_vcek.der")
    result = runner.invoke(app, ["attest", "verify", *args[:-1], "yesterday", "--policy", str(policy)])
    assert result.exit_code == 1 and "ISO 8601" in result.stderr


def test_detect_format():
    assert detect_format(vector_path(SNP, "gosevguest_milan_v2_report.bin").read_bytes()) == "sev-snp"
    assert detect_format(vector_path("sgx", "dcapqvl_sgx_v3_quote.bin").read_bytes()) == "sgx"
    assert detect_format(vector_path("tdx", "dcapqvl_tdx_v4_quote.bin").read_bytes()) == "tdx"
    assert detect_format(vector_path("tdx", "dcapqvl_tdx_v5_quote_nomatch.bin").read_bytes()) == "tdx"
    assert detect_format(b'{"version": 1}') == "bundle"
    with pytest.raises(AttestationError):
        detect_format(b"")


def test_simulated_bundle_round_trip(tmp_path):
    """A simulated evidence bundle goes through the same command (and says it is simulated)."""
    from datetime import UTC, datetime

    from sealedml.attestation.producers.simulated import SimulatedPlatform
    from sealedml.attestation.report_data import bind_report_data

    platform = SimulatedPlatform.open(tmp_path / "platform")
    hpke, sign, nonce = b"h" * 32, b"s" * 32, b"n" * 32
    now = datetime.now(UTC)
    bundle = platform.attest(
        measurement="ab" * 48, hpke_public_key=hpke, signing_public_key=sign, nonce=nonce, now=now
    )
    evidence = tmp_path / "evidence.json"
    evidence.write_text(bundle.to_json())
    policy = AppraisalPolicy(
        reference_measurements=("ab" * 48,),
        allow_simulated=True,
        simulated_roots=(platform.root_fingerprint,),
    )
    path = write_policy(tmp_path, policy.to_toml())
    result = verify([str(evidence), "--nonce", nonce.hex()], path)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["report_data_checked"] == "enclave keys and nonce"
    assert "SIMULATED TEE" in result.stderr
    wrong = verify([str(evidence), "--nonce", ("m" * 32).encode().hex()], path)
    assert json.loads(wrong.stdout)["error"]["code"] == "attestation.nonce_mismatch"
    appraisal = appraise(evidence.read_bytes(), policy=policy, now=now)
    assert appraisal.accepted and appraisal.binding.startswith("enclave keys")
    assert bind_report_data(hpke, sign, nonce) == appraisal.claims.report_data


SGX_MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
SGX_AT = "2025-07-19T10:01:17Z"
TDX_MRTD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
TDX_AT = "2025-07-19T10:00:34Z"


def sgx_args(at: str = SGX_AT) -> list[str]:
    return [
        str(vector_path("sgx", "dcapqvl_sgx_v3_quote.bin")),
        "--collateral",
        str(vector_path("sgx", "dcapqvl_sgx_v3_collateral.json")),
        "--at",
        at,
    ]


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ("", "attestation.tcb_status_not_allowed"),
        (
            'accepted_tcb_statuses = ["ConfigurationAndSWHardeningNeeded"]\n',
            "attestation.tcb_status_not_allowed",
        ),
        (
            'accepted_tcb_statuses = ["ConfigurationAndSWHardeningNeeded"]\n'
            'accepted_advisories = ["INTEL-SA-00289", "INTEL-SA-00615"]\n',
            None,
        ),
    ],
)
def test_sgx_quote_needs_its_status_and_every_advisory_listed(tmp_path, extra, code):
    policy = write_policy(
        tmp_path,
        f'[attestation.sgx]\nmr_enclave = ["{SGX_MRENCLAVE}"]\nmax_collateral_age_seconds = 31536000\n'
        + extra,
    )
    result = verify(sgx_args(), policy)
    answer = json.loads(result.stdout)
    assert answer["claims"]["tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    assert answer["claims"]["advisories"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    if code is None:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 1 and answer["error"]["code"] == code


def test_sgx_quote_after_the_collateral_expired(tmp_path):
    policy = write_policy(tmp_path, f'[attestation.sgx]\nmr_enclave = ["{SGX_MRENCLAVE}"]\n')
    answer = json.loads(verify(sgx_args("2025-08-30T00:00:00Z"), policy).stdout)
    assert answer["error"]["code"] == "attestation.collateral_expired"


def test_tdx_quote_up_to_date_and_pinned(tmp_path):
    policy = write_policy(
        tmp_path, f'[attestation.tdx]\nmr_td = ["{TDX_MRTD}"]\nmax_collateral_age_seconds = 31536000\n'
    )
    args = [
        str(vector_path("tdx", "dcapqvl_tdx_v4_quote.bin")),
        "--collateral",
        str(vector_path("tdx", "dcapqvl_tdx_v4_collateral.json")),
        "--at",
        TDX_AT,
    ]
    result = verify(args, policy)
    assert result.exit_code == 0, result.output
    claims = json.loads(result.stdout)["claims"]
    assert claims["tee"] == "tdx" and claims["tcb_status"] == "UpToDate" and claims["measurement"] == TDX_MRTD
    without = verify([args[0], "--at", TDX_AT], policy)
    assert json.loads(without.stdout)["error"]["code"] == "attestation.collateral_missing"


def test_tdx_quote_whose_tcb_level_does_not_match(tmp_path):
    policy = write_policy(tmp_path, f'[attestation.tdx]\nmr_td = ["{TDX_MRTD}"]\n')
    args = [
        str(vector_path("tdx", "dcapqvl_tdx_v5_quote_nomatch.bin")),
        "--collateral",
        str(vector_path("tdx", "dcapqvl_tdx_v5_nomatch_collateral.json")),
        "--at",
        "2026-03-01T00:00:00Z",
    ]
    answer = json.loads(verify(args, policy).stdout)
    assert answer["error"]["code"] == "attestation.tcb_mismatch" and answer["claims"] is None
