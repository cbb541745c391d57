"""Hardware launch paths against fake device trees that serve REAL evidence (no TEE hardware here).

- Gramine-SGX: a fake ``/dev/attestation`` directory whose ``quote`` is the real DCAP v3 quote of
  ``sgx/dcapqvl_sgx_v3_quote.bin``;
- SEV-SNP / TDX: a fake configfs-tsm tree. Plain files cannot react to writes, so
  :class:`FakeTsmKernel` overrides the three kernel-facing operations of ``ConfigfsTsm`` the way
  the kernel behaves: ``mkdir`` populates the entry's attributes, each write bumps
  ``generation``, ``rmdir`` drops the entry. Its ``outblob`` is the real SNP report
  ``gosevguest_milan_v2_report.bin`` (with a certificate table built here from the real VCEK and
  the AMD Milan ASK/ARK) or the real TDX v4 quote.

The fakes return fixed evidence, so only the plumbing is tested here: what the producers write,
what they parse, what they hand back, that they clean up, and how they fail. Whether a report
binds the enclave's keys is the verifier's job and is not (cannot be) tested with a fixed report.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import example, given, settings
from hypothesis import strategies as st

from attestation_vectors import expected_fields, read_vector
from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.measurement import compute_measurement, tcb_files
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.attestation.producers.configfs_tsm import (
    ARK_GUID,
    ASK_GUID,
    VCEK_GUID,
    VLEK_GUID,
    ConfigfsTsm,
    check_snp_report,
    check_tdx_quote,
    parse_snp_cert_table,
    snp_signing_key,
)
from sealedml.attestation.producers.gramine import (
    STATE_MOUNT,
    GramineAttestation,
    check_sgx_quote,
    gramine_manifest,
    read_sigstruct,
    read_sigstruct_mrenclave,
)
from sealedml.attestation.reference_values import reference_values
from sealedml.attestation.report_data import bind_report_data
from sealedml.enclave.framing import encode_frame, read_frame
from sealedml.enclave.hw_platforms import (
    CVM_SEALING_SECRET_FILE,
    SNP_CERTIFICATE_DIR,
    GramineSGX,
    SevSnpGuest,
    TdxGuest,
    open_platform,
)
from sealedml.enclave.platforms import SimulatedTEE
from sealedml.errors import AttestationError, ConfigError, EnclaveError

SNP_REPORT = read_vector("sev-snp", "gosevguest_milan_v2_report.bin")
SNP_VCEK = read_vector("sev-snp", "gosevguest_milan_v2_vcek.der")
SNP_VLEK_REPORT = read_vector("sev-snp", "trustee_milan_v3_vlek_aws_report.bin")
TDX_QUOTE = read_vector("tdx", "dcapqvl_tdx_v4_quote.bin")
SGX_QUOTE = read_vector("sgx", "dcapqvl_sgx_v3_quote.bin")
SNP_REPORT_DATA = bytes.fromhex(expected_fields("sev-snp")["gosevguest_milan_v2_report.bin"]["report_data"])
TDX_REPORT_DATA = bytes.fromhex(expected_fields("tdx")["dcapqvl_tdx_v4_quote.bin"]["report_data"])


def _pem_to_der(pem: bytes) -> list[bytes]:
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", pem, re.S)
    return [base64.b64decode(b"".join(block.split())) for block in blocks]


SNP_ASK, SNP_ARK = _pem_to_der(read_vector("sev-snp", "ask_ark_milan.pem"))


def cert_table(
    entries: list[tuple[uuid.UUID | bytes, bytes]], *, pad: int = 0, terminate: bool = True
) -> bytes:
    """Build a GHCB certificate table: entries, zero terminator, then the certificates."""
    header_size = 24 * (len(entries) + (1 if terminate else 0))
    header, body = b"", b""
    for guid, cert in entries:
        raw = guid.bytes if isinstance(guid, uuid.UUID) else guid
        header += struct.pack("<16sII", raw, header_size + len(body), len(cert) + pad)
        body += cert + bytes(pad)
    if terminate:
        header += bytes(24)
    return header + body


FULL_TABLE = cert_table([(VCEK_GUID, SNP_VCEK), (ASK_GUID, SNP_ASK), (ARK_GUID, SNP_ARK)])


class FakeTsmKernel(ConfigfsTsm):
    """configfs-tsm emulated over a tmp_path tree, behaving like the kernel for mkdir/write/rmdir.

    ``foreign_writes[i]`` extra generation bumps happen during attempt ``i`` (another writer).
    """

    def __init__(
        self,
        root: Path,
        *,
        provider: str,
        outblob: bytes,
        auxblob: bytes | None = None,
        foreign_writes: tuple[int, ...] = (),
        privlevel: int | None = None,
        attempts: int = 3,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(root, privlevel=privlevel, attempts=attempts)
        self.fake_provider = provider
        self.outblob = outblob
        self.auxblob = auxblob
        self.foreign_writes = foreign_writes
        self.inblob_writes = 0
        self.written: dict[str, list[bytes]] = {}
        self.created: list[Path] = []

    def _create_entry(self, path: Path) -> None:
        path.mkdir()
        self.created.append(path)
        (path / "provider").write_text(self.fake_provider + "\n")
        (path / "generation").write_text("0\n")
        (path / "inblob").write_bytes(b"")
        (path / "outblob").write_bytes(self.outblob)
        if self.auxblob is not None:
            (path / "auxblob").write_bytes(self.auxblob)
        if self.fake_provider == "sev_guest":
            (path / "privlevel").write_bytes(b"")

    def _write_attribute(self, path: Path, data: bytes) -> None:
        super()._write_attribute(path, data)
        self.written.setdefault(path.name, []).append(data)
        bump = 1
        if path.name == "inblob":
            attempt = self.inblob_writes
            self.inblob_writes += 1
            bump += self.foreign_writes[attempt] if attempt < len(self.foreign_writes) else 0
        generation = path.parent / "generation"
        generation.write_text(f"{int(generation.read_text()) + bump}\n")

    def _remove_entry(self, path: Path) -> None:
        shutil.rmtree(path)


def leftover(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def snp_guest(tmp_path: Path, **kernel: object) -> tuple[SevSnpGuest, FakeTsmKernel]:
    fake = FakeTsmKernel(tmp_path / "tsm", provider="sev_guest", **kernel)  # type: ignore[arg-type]
    return SevSnpGuest.from_tsm(fake, tmp_path / "platform"), fake


def fake_dev_attestation(root: Path, *, kind: bytes = b"dcap", quote: bytes = SGX_QUOTE) -> Path:
    (root / "keys").mkdir(parents=True)
    (root / "attestation_type").write_bytes(kind)
    (root / "user_report_data").write_bytes(b"")
    (root / "quote").write_bytes(quote)
    (root / "keys" / "_sgx_mrenclave").write_bytes(bytes(range(16)))
    return root


# -- SEV-SNP through configfs-tsm --------------------------------------------------------------------


def test_snp_writes_inblob_and_returns_report_with_chain_from_auxblob(tmp_path: Path) -> None:
    guest, fake = snp_guest(tmp_path, outblob=SNP_REPORT, auxblob=FULL_TABLE)
    report, signature, chain = guest.evidence(measurement="ignored", report_data=SNP_REPORT_DATA, now=0.0)
    assert fake.written["inblob"] == [SNP_REPORT_DATA]
    assert report == SNP_REPORT
    assert signature == b""
    assert chain == (SNP_VCEK, SNP_ASK, SNP_ARK)
    assert leftover(fake.root) == []  # the probe entry and the report entry are both gone
    assert len(fake.created) == 2
    bundle = EvidenceBundle(
        tee=guest.tee,
        report=report,
        signature=signature,
        certificates=chain,
        hpke_public_key=bytes(32),
        signing_public_key=bytes(32),
        nonce=bytes(16),
    )
    assert EvidenceBundle.from_json(bundle.to_json()) == bundle
    assert guest.tee == "sev-snp" and guest.simulated is False


def test_snp_privlevel_is_written_before_inblob_and_counted(tmp_path: Path) -> None:
    guest, fake = snp_guest(tmp_path, outblob=SNP_REPORT, auxblob=FULL_TABLE, privlevel=0)
    guest.evidence(measurement="", report_data=SNP_REPORT_DATA, now=0.0)
    assert fake.written["privlevel"] == [b"0"]
    assert fake.written["inblob"] == [SNP_REPORT_DATA]


def test_snp_without_certificate_table_uses_the_cached_chain(tmp_path: Path) -> None:
    guest, _ = snp_guest(tmp_path, outblob=SNP_REPORT, auxblob=None)
    assert guest.evidence(measurement="", report_data=SNP_REPORT_DATA, now=0.0)[2] == ()
    certs = tmp_path / "platform" / SNP_CERTIFICATE_DIR
    certs.mkdir()
    for name, der in (("vcek.der", SNP_VCEK), ("ask.der", SNP_ASK), ("ark.der", SNP_ARK)):
        (certs / name).write_bytes(der)
    assert guest.evidence(measurement="", report_data=SNP_REPORT_DATA, now=0.0)[2] == (
        SNP_VCEK,
        SNP_ASK,
        SNP_ARK,
    )


def test_snp_concurrent_writer_is_detected_and_retried(tmp_path: Path) -> None:
    guest, fake = snp_guest(tmp_path, outblob=SNP_REPORT, auxblob=FULL_TABLE, foreign_writes=(1,))
    report, _, _ = guest.evidence(measurement="", report_data=SNP_REPORT_DATA, now=0.0)
    assert report == SNP_REPORT
    assert fake.written["inblob"] == [SNP_REPORT_DATA, SNP_REPORT_DATA]  # first answer thrown away
    assert leftover(fake.root) == []


def test_snp_writer_that_never_stops_is_platform_busy(tmp_path: Path) -> None:
    guest, fake = snp_guest(tmp_path, outblob=SNP_REPORT, auxblob=FULL_TABLE, foreign_writes=(1, 2, 1))
    with pytest.raises(EnclaveError) as caught:
        guest.evidence(measurement="", report_data=SNP_REPORT_DATA, now=0.0)
    assert caught.value.code == "enclave.platform_busy"
    assert fake.inblob_writes == 3
    assert leftover(fake.root) == []


def test_snp_truncated_outblob_is_malformed_and_cleaned_up(tmp_path: Path) -> None:
    guest, fake = snp_guest(tmp_path, outblob=SNP_REPORT[:1000], auxblob=FULL_TABLE)
    with pytest.raises(AttestationError) as caught:
        guest.evidence(measurement="", report_data=SNP_REPORT_DATA, now=0.0)
    assert caught.value.code == "attestation.malformed"
    assert "1000" in caught.value.message
    assert leftover(fake.root) == []


@pytest.mark.parametrize(
    ("auxblob", "fragment"),
    [
        (FULL_TABLE[:-1], "outside"),  # the ARK runs past the end of the blob
        (cert_table([(VCEK_GUID, SNP_VCEK[:-10])]), "truncated"),  # entry shorter than its DER
        (cert_table([(VCEK_GUID, SNP_VCEK)], terminate=False), "terminator"),
        (cert_table([(VCEK_GUID, SNP_VCEK), (VCEK_GUID, SNP_VCEK)]), "twice"),
        (cert_table([(VCEK_GUID, b"not a certificate")]), "DER"),
        (struct.pack("<16sII", VCEK_GUID.bytes, 48, 5000) + bytes(24) + SNP_VCEK, "outside"),
        (struct.pack("<16sII", VCEK_GUID.bytes, 8, 16) + bytes(24) + SNP_VCEK, "outside"),
        (FULL_TABLE + bytes(64 * 1024), "larger than"),
    ],
)
def test_snp_malformed_auxblob_is_refused(tmp_path: Path, auxblob: bytes, fragment: str) -> None:
    guest, fake = snp_guest(tmp_path, outblob=SNP_REPORT, auxblob=auxblob)
    with pytest.raises(AttestationError) as caught:
        guest.evidence(measurement="", report_data=SNP_REPORT_DATA, now=0.0)
    assert caught.value.code == "attestation.malformed"
    assert fragment in caught.value.message
    assert leftover(fake.root) == []


def test_cert_table_parsing_of_real_certificates() -> None:
    unknown = uuid.UUID("00000000-1111-2222-3333-444444444444")
    table = cert_table(
        [(ARK_GUID, SNP_ARK), (unknown, b"\x30\x00"), (VCEK_GUID, SNP_VCEK), (ASK_GUID, SNP_ASK)], pad=7
    )
    certs = parse_snp_cert_table(table)
    assert (certs.vcek, certs.ask, certs.ark, certs.vlek) == (
        SNP_VCEK,
        SNP_ASK,
        SNP_ARK,
        None,
    )  # padding dropped
    assert certs.chain("vcek") == (SNP_VCEK, SNP_ASK, SNP_ARK)
    assert certs.chain("vlek") == ()
    assert parse_snp_cert_table(cert_table([(VLEK_GUID, SNP_VCEK)])).chain("vlek") == (SNP_VCEK,)
    assert parse_snp_cert_table(b"").chain("vcek") == ()


def test_snp_signing_key_is_read_from_the_report() -> None:
    assert snp_signing_key(check_snp_report(SNP_REPORT)) == "vcek"
    assert snp_signing_key(check_snp_report(SNP_VLEK_REPORT)) == "vlek"
    with pytest.raises(AttestationError, match="version"):
        check_snp_report(bytes(1184))


def test_cvm_sealing_secret_is_created_private_and_stable(tmp_path: Path) -> None:
    first, _ = snp_guest(tmp_path, outblob=SNP_REPORT)
    secret_file = tmp_path / "platform" / CVM_SEALING_SECRET_FILE
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert len(first.sealing_secret) == 32 and first.sealing_secret == secret_file.read_bytes()
    again = SevSnpGuest.from_tsm(
        FakeTsmKernel(tmp_path / "tsm2", provider="sev_guest", outblob=SNP_REPORT), tmp_path / "platform"
    )
    assert again.sealing_secret == first.sealing_secret
    other, _ = snp_guest(tmp_path / "elsewhere", outblob=SNP_REPORT)
    assert other.sealing_secret != first.sealing_secret
    secret_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        snp_guest(tmp_path, outblob=SNP_REPORT)


# -- TDX through configfs-tsm ------------------------------------------------------------------------


def test_tdx_writes_inblob_and_returns_the_quote(tmp_path: Path) -> None:
    fake = FakeTsmKernel(tmp_path / "tsm", provider="tdx_guest", outblob=TDX_QUOTE)
    guest = TdxGuest.from_tsm(fake, tmp_path / "platform")
    quote, signature, chain = guest.evidence(measurement="", report_data=TDX_REPORT_DATA, now=0.0)
    assert (quote, signature, chain) == (TDX_QUOTE, b"", ())
    assert fake.written == {"inblob": [TDX_REPORT_DATA]}
    assert leftover(fake.root) == []
    assert guest.tee == "tdx" and not guest.simulated


def test_tdx_truncated_quote_is_malformed(tmp_path: Path) -> None:
    fake = FakeTsmKernel(tmp_path / "tsm", provider="tdx_guest", outblob=TDX_QUOTE[:700])
    guest = TdxGuest.from_tsm(fake, tmp_path / "platform")
    with pytest.raises(AttestationError) as caught:
        guest.evidence(measurement="", report_data=TDX_REPORT_DATA, now=0.0)
    assert caught.value.code == "attestation.malformed"
    assert leftover(fake.root) == []
    with pytest.raises(AttestationError, match="not a TDX"):
        check_tdx_quote(SGX_QUOTE)


def test_wrong_provider_is_refused(tmp_path: Path) -> None:
    tdx_kernel = FakeTsmKernel(tmp_path / "tsm", provider="tdx_guest", outblob=TDX_QUOTE)
    with pytest.raises(EnclaveError) as caught:
        SevSnpGuest.from_tsm(tdx_kernel, tmp_path / "platform")
    assert caught.value.code == "enclave.platform_unavailable"
    assert "'tdx_guest'" in caught.value.message
    with pytest.raises(EnclaveError, match="not 'sev_guest'"):
        tdx_kernel.report(bytes(64), provider="sev_guest")
    assert leftover(tdx_kernel.root) == []
    assert "inblob" not in tdx_kernel.written  # nothing was requested from the wrong provider


def test_missing_devices_are_platform_unavailable(tmp_path: Path) -> None:
    for kind in ("sev-snp", "tdx", "sgx"):
        with pytest.raises(EnclaveError) as caught:
            open_platform(kind, tmp_path / "platform", root=tmp_path / "absent")
        assert caught.value.code == "enclave.platform_unavailable"
    with pytest.raises(EnclaveError, match="configfs-tsm report interface not found"):
        ConfigfsTsm(tmp_path / "absent").report(bytes(64), provider="sev_guest")


def test_open_platform_kinds(tmp_path: Path) -> None:
    assert isinstance(open_platform("simulated", tmp_path / "sim"), SimulatedTEE)
    with pytest.raises(ConfigError):
        open_platform("simulated", tmp_path / "sim", root=tmp_path)
    with pytest.raises(ConfigError, match="unknown TEE"):
        open_platform("sev", tmp_path / "x")
    sgx = open_platform("sgx", tmp_path / "x", root=fake_dev_attestation(tmp_path / "dev"))
    assert isinstance(sgx, GramineSGX)


# -- Gramine-SGX -------------------------------------------------------------------------------------


def test_gramine_writes_user_report_data_and_returns_the_quote(tmp_path: Path) -> None:
    root = fake_dev_attestation(tmp_path / "attestation")
    platform = GramineSGX.open(root)
    report_data = hashlib.sha512(b"binding").digest()
    quote, signature, chain = platform.evidence(measurement="", report_data=report_data, now=0.0)
    assert (quote, signature, chain) == (SGX_QUOTE, b"", ())
    assert (root / "user_report_data").read_bytes() == report_data
    assert platform.tee == "sgx" and not platform.simulated
    expected = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"sealedml-gramine-sealing-v1",
        info=b"sealedml platform sealing secret",
    ).derive(bytes(range(16)))
    assert platform.sealing_secret == expected
    assert bytes(range(16)) not in platform.sealing_secret


@pytest.mark.parametrize("kind", [b"none", b"epid", b""])
def test_gramine_without_dcap_is_refused(tmp_path: Path, kind: bytes) -> None:
    root = fake_dev_attestation(tmp_path / "attestation", kind=kind)
    with pytest.raises(EnclaveError) as caught:
        GramineSGX.open(root)
    assert caught.value.code == "enclave.platform_unavailable"
    assert "dcap" in caught.value.message


@pytest.mark.parametrize(
    ("quote", "fragment"),
    [
        (SGX_QUOTE[:500], "truncated"),
        (TDX_QUOTE, "not an SGX"),
        (SGX_QUOTE + bytes(64 * 1024), "larger than"),
    ],
)
def test_gramine_bad_quotes_are_malformed(tmp_path: Path, quote: bytes, fragment: str) -> None:
    attestation = GramineAttestation.open(fake_dev_attestation(tmp_path / "attestation", quote=quote))
    with pytest.raises(AttestationError) as caught:
        attestation.quote(bytes(64))
    assert caught.value.code == "attestation.malformed"
    assert fragment in caught.value.message


def test_gramine_missing_sealing_key_is_platform_unavailable(tmp_path: Path) -> None:
    root = fake_dev_attestation(tmp_path / "attestation")
    (root / "keys" / "_sgx_mrenclave").unlink()
    with pytest.raises(EnclaveError, match="_sgx_mrenclave"):
        GramineSGX.open(root)


def _exchange(
    proc: subprocess.Popen[bytes], header: dict[str, object]
) -> tuple[dict[str, object], list[bytes]]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(encode_frame(header))
    proc.stdin.flush()
    frame = read_frame(proc.stdout)
    assert frame is not None
    return frame


def test_enclave_process_serves_gramine_evidence_end_to_end(tmp_path: Path) -> None:
    """Plumbing only: the fake quote is fixed, so its REPORTDATA cannot match the enclave's keys."""
    root = fake_dev_attestation(tmp_path / "attestation")
    argv = [sys.executable, "-m", "sealedml.enclave", "--platform-dir", str(tmp_path / "state")]
    argv += ["--tee", "sgx", "--tee-root", str(root), "--workers", "2"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        hello, _ = _exchange(proc, {"id": 1, "op": "hello"})
        assert hello["ok"] is True and hello["tee"] == "sgx" and hello["simulated"] is False
        nonce = os.urandom(32)
        answer, parts = _exchange(proc, {"id": 2, "op": "evidence", "nonce": nonce.hex()})
        assert answer["ok"] is True
        bundle = EvidenceBundle.from_json(parts[0])
        assert bundle.tee == "sgx"
        assert bundle.report == SGX_QUOTE
        assert bundle.signature == b"" and bundle.certificates == ()
        assert bundle.nonce == nonce
        assert bundle.hpke_public_key.hex() == hello["hpke_public_key"]
        # What the enclave asked Gramine to put in the quote: its keys bound to our nonce.
        written = (root / "user_report_data").read_bytes()
        assert written == bind_report_data(bundle.hpke_public_key, bundle.signing_public_key, nonce)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()
    assert proc.returncode == 0, stderr
    assert "running on sgx hardware" in stderr


def test_enclave_process_refuses_to_start_without_the_device(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "sealedml.enclave", "--platform-dir", str(tmp_path / "state")]
    argv += ["--tee", "tdx", "--tee-root", str(tmp_path / "absent")]
    result = subprocess.run(argv, input=b"", capture_output=True, timeout=60, check=False)
    assert result.returncode == 3
    assert b"enclave.platform_unavailable" in result.stderr


# -- Gramine manifest --------------------------------------------------------------------------------


def test_gramine_manifest_is_toml_and_pins_every_tcb_file(tmp_path: Path) -> None:
    text = gramine_manifest(state_dir=tmp_path / "state", enclave_size="8G", max_threads=16, workers=4)
    manifest = tomllib.loads(text)
    sgx = manifest["sgx"]
    assert sgx["remote_attestation"] == "dcap"
    assert sgx["debug"] is False
    assert sgx["enclave_size"] == "8G" and sgx["max_threads"] == 16
    assert sgx["file_check_policy"] == "strict"
    assert "allowed_files" not in sgx
    pinned = {entry["uri"]: entry.get("sha256") for entry in sgx["trusted_files"]}
    files = tcb_files()
    assert files
    for _rel, path in files:
        assert pinned[f"file:{path}"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert f"file:{Path(sys.executable).resolve()}" in pinned
    assert manifest["libos"]["entrypoint"] == str(Path(sys.executable).resolve())
    encrypted = [m for m in manifest["fs"]["mounts"] if m.get("type") == "encrypted"]
    assert encrypted == [
        {
            "type": "encrypted",
            "path": STATE_MOUNT,
            "uri": f"file:{(tmp_path / 'state').resolve()}",
            "key_name": "_sgx_mrenclave",
        }
    ]
    argv = manifest["loader"]["argv"]
    assert argv[argv.index("--tee") + 1] == "sgx"
    assert argv[argv.index("--platform-dir") + 1] == STATE_MOUNT
    assert "loader" in manifest and "insecure__use_cmdline_argv" not in manifest["loader"]


def test_gramine_manifest_follows_the_code_it_pins(tmp_path: Path) -> None:
    package = tmp_path / "src" / "sealedml"
    shutil.copytree(Path(tcb_files()[0][1]).parent, package)
    before = {
        e["uri"]: e.get("sha256")
        for e in tomllib.loads(gramine_manifest(state_dir=tmp_path, package_dir=package))["sgx"][
            "trusted_files"
        ]
    }
    target = package / "enclave" / "runtime.py"
    target.write_text(target.read_text() + "\n# changed\n")
    after = {
        e["uri"]: e.get("sha256")
        for e in tomllib.loads(gramine_manifest(state_dir=tmp_path, package_dir=package))["sgx"][
            "trusted_files"
        ]
    }
    uri = f"file:{target.resolve()}"
    assert before[uri] != after[uri] == hashlib.sha256(target.read_bytes()).hexdigest()
    manifest = tomllib.loads(gramine_manifest(state_dir=tmp_path, package_dir=package))
    assert manifest["loader"]["env"]["PYTHONPATH"].split(":")[0] == str((tmp_path / "src").resolve())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_threads": 2},
        {"workers": 0},
        {"workers": 30, "max_threads": 32},
        {"enclave_size": "lots"},
        {"isv_svn": 70000},
    ],
)
def test_gramine_manifest_refuses_bad_settings(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        gramine_manifest(state_dir=tmp_path, **kwargs)  # type: ignore[arg-type]


# -- SIGSTRUCT ---------------------------------------------------------------------------------------

ENCLAVE_HASH = hashlib.sha256(b"sealedml test enclave").digest()
MODULUS = hashlib.sha512(b"modulus").digest() * 6


def sigstruct(*, debug: bool = False, vendor: int = 0x8086, exponent: int = 3) -> bytearray:
    """A SIGSTRUCT laid out per the Intel SDM (vol. 3D, table "SIGSTRUCT")."""
    sig = bytearray(1808)
    sig[0:16] = bytes.fromhex("06000000e10000000000010000000000")
    sig[16:20] = vendor.to_bytes(4, "little")
    sig[20:24] = bytes.fromhex("20240115")[::-1]
    sig[24:40] = bytes.fromhex("01010000600000006000000001000000")
    sig[128:512] = MODULUS
    sig[512:516] = exponent.to_bytes(4, "little")
    sig[516:900] = b"\x5a" * 384
    sig[928:936] = (0x4 | (0x2 if debug else 0)).to_bytes(8, "little")
    sig[960:992] = ENCLAVE_HASH
    sig[1024:1026] = (7).to_bytes(2, "little")
    sig[1026:1028] = (3).to_bytes(2, "little")
    return sig


def test_read_sigstruct_fields() -> None:
    assert read_sigstruct_mrenclave(bytes(sigstruct())) == ENCLAVE_HASH.hex()
    fields = read_sigstruct(bytes(sigstruct(debug=True)))
    assert fields.mr_signer == hashlib.sha256(MODULUS).hexdigest()
    assert (fields.isv_prod_id, fields.isv_svn, fields.debug, fields.vendor) == (7, 3, True, 0x8086)
    assert fields.date == "2024-01-15"
    assert read_sigstruct(bytes(sigstruct(vendor=0))).debug is False


def _corrupt(offset: int) -> bytes:
    sig = sigstruct()
    sig[offset] ^= 0x01
    return bytes(sig)


@pytest.mark.parametrize(
    "sig",
    [
        bytes(sigstruct())[:-1],
        bytes(sigstruct()) + b"\x00",
        b"",
        _corrupt(4),  # header1
        _corrupt(28),  # header2
        bytes(sigstruct(vendor=0x1234)),
        bytes(sigstruct(exponent=65537)),
        SGX_QUOTE[:1808],
    ],
)
def test_read_sigstruct_refuses_what_is_not_a_sigstruct(sig: bytes) -> None:
    with pytest.raises(AttestationError) as caught:
        read_sigstruct_mrenclave(sig)
    assert caught.value.code == "attestation.malformed"


# -- reference values --------------------------------------------------------------------------------


def test_reference_values_simulated() -> None:
    values = reference_values("simulated")
    assert values.known() == {"reference_measurements": compute_measurement()}
    assert [v.key for v in values.to_compute()] == ["simulated_roots"]
    assert not values.complete
    with pytest.raises(ConfigError, match="simulated_roots"):
        AppraisalPolicy.from_toml(values.policy_toml)
    filled = values.policy_toml.replace("<REPLACE: sha256 of root-ca.pem DER>", "ab" * 32)
    policy = AppraisalPolicy.from_toml(filled)
    assert policy.reference_measurements == (compute_measurement(),)
    json.dumps(values.to_dict())


def test_reference_values_sgx_from_a_sigstruct(tmp_path: Path) -> None:
    path = tmp_path / "sealedml-enclave.sig"
    path.write_bytes(bytes(sigstruct()))
    values = reference_values("sgx", sigstruct=path)
    assert values.known() == {
        "mr_enclave": ENCLAVE_HASH.hex(),
        "mr_signer": hashlib.sha256(MODULUS).hexdigest(),
        "isv_prod_id": "7",
        "min_isv_svn": "3",
    }
    assert values.complete
    policy = AppraisalPolicy.from_toml(values.policy_toml)
    assert policy.sgx is not None
    assert policy.sgx.mr_enclave == (ENCLAVE_HASH.hex(),)
    assert (policy.sgx.isv_prod_id, policy.sgx.min_isv_svn, policy.sgx.allow_debug) == (7, 3, False)
    assert not any("DEBUG" in note for note in values.notes)
    path.write_bytes(bytes(sigstruct(debug=True)))
    assert "ALLOWS DEBUG" in reference_values("sgx", sigstruct=path).notes[0]


def test_reference_values_sgx_without_a_sigstruct_says_how() -> None:
    values = reference_values("sgx")
    assert values.known() == {}
    commands = " ".join(values.values[0].commands)
    assert "gramine-sgx-sign" in commands and "gramine-manifest" in commands
    with pytest.raises(ConfigError):
        AppraisalPolicy.from_toml(values.policy_toml)
    assert "sgx" in tomllib.loads(values.policy_toml)["attestation"]


def test_reference_values_sev_snp() -> None:
    values = reference_values("sev-snp")
    assert values.known() == {}
    keys = [v.key for v in values.to_compute()]
    assert keys[:3] == ["measurements", "host_data", "id_key_digests"]
    command = next(c for c in values.values[0].commands if c.startswith("sev-snp-measure"))
    for flag in ("--mode snp", "--vcpus=", "--vcpu-type=", "--ovmf=", "--kernel=", "--initrd=", "--append="):
        assert flag in command
    assert any("NOT the enclave's code" in note for note in values.notes)
    with pytest.raises(ConfigError):
        AppraisalPolicy.from_toml(values.policy_toml)
    measurement = expected_fields("sev-snp")["gosevguest_milan_v2_report.bin"]["measurement"]
    filled = re.sub(r"<REPLACE: [^>]*>", str(measurement), values.policy_toml)
    policy = AppraisalPolicy.from_toml(filled)
    assert policy.sev_snp is not None and policy.sev_snp.measurements == (measurement,)


def test_reference_values_tdx() -> None:
    values = reference_values("tdx")
    keys = [v.key for v in values.to_compute()]
    assert keys == ["mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_seam"]
    assert any(c.startswith("tdx-measure") for c in values.values[0].commands)
    mr_td = str(expected_fields("tdx")["dcapqvl_tdx_v4_quote.bin"]["mr_td"])
    filled = re.sub(r"<REPLACE: [^>]*>", mr_td, values.policy_toml)
    policy = AppraisalPolicy.from_toml(filled)
    assert policy.tdx is not None and policy.tdx.mr_td == (mr_td,)
    assert "Reference values for tdx" in values.render()


def test_reference_values_refusals(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown TEE"):
        reference_values("sgx-epid")
    with pytest.raises(ConfigError, match="SIGSTRUCT"):
        reference_values("tdx", sigstruct=tmp_path / "x.sig")
    with pytest.raises(ConfigError, match="cannot read"):
        reference_values("sgx", sigstruct=tmp_path / "missing.sig")
    (tmp_path / "quote.sig").write_bytes(SGX_QUOTE)
    with pytest.raises(AttestationError):
        reference_values("sgx", sigstruct=tmp_path / "quote.sig")


# -- parsers given arbitrary bytes raise only typed errors --------------------------------------------


def _table_like(data: bytes) -> bytes:
    """Bias random input towards certificate tables: real GUIDs and plausible offsets."""
    guids = [VCEK_GUID.bytes, ASK_GUID.bytes, ARK_GUID.bytes, VLEK_GUID.bytes, bytes(16)]
    out = b""
    for index in range(0, min(len(data), 40), 4):
        chunk = data[index : index + 4].ljust(4, b"\0")
        out += struct.pack("<16sII", guids[chunk[0] % 5], chunk[1] * 8, chunk[2] * 16 + chunk[3])
    return out + data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
@example(FULL_TABLE[:100])
@example(bytes(24))
def test_parsers_raise_only_typed_errors(data: bytes) -> None:
    for parse, blob in (
        (parse_snp_cert_table, data),
        (parse_snp_cert_table, _table_like(data)),
        (check_snp_report, data),
        (check_tdx_quote, data),
        (check_tdx_quote, TDX_QUOTE[:48] + data),
        (check_sgx_quote, SGX_QUOTE[:48] + data),
        (read_sigstruct, data),
        (read_sigstruct, bytes(sigstruct())[:40] + data),
    ):
        try:
            parse(blob)  # type: ignore[operator]
        except AttestationError as exc:
            assert exc.code == "attestation.malformed"
