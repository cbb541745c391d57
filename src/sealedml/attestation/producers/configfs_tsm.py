"""Evidence from a confidential VM through Linux configfs-tsm (``/sys/kernel/config/tsm/report``).

The kernel ABI (Documentation/ABI/testing/configfs-tsm, Linux 6.7+): ``mkdir`` a report entry,
write up to 64 bytes to ``inblob`` (and optionally ``privlevel``), then read ``outblob`` (the
report, format named by ``provider``: ``sev_guest`` or ``tdx_guest``) and ``auxblob`` (for
``sev_guest``: the GHCB ``cert_table`` the host supplied, possibly empty). ``generation`` counts
the writes to the entry; comparing it before and after tells whether someone else wrote in
between, in which case the report may answer their ``inblob`` and is thrown away. Each request
gets its own entry, removed with ``rmdir`` afterwards.

What is returned here is *untrusted until verified*: this module checks shapes and bounds so the
bundle is well formed, never signatures (the client's verifier does that).

SEV-SNP certificate table (GHCB specification, MSG_REPORT_REQ / extended guest request): a list
of 24-byte entries ``GUID (16 bytes, RFC 4122 byte order) || u32 offset || u32 length`` (little
endian) ended by an all-zero entry; offsets count from the start of the table, and the
certificates (DER) follow the table.

This module uses only the standard library; the enclave imports it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from sealedml.attestation.producers.device_files import malformed, read_bounded, unavailable
from sealedml.errors import EnclaveError

__all__ = [
    "ARK_GUID",
    "ASK_GUID",
    "MAX_AUXBLOB_SIZE",
    "MAX_CERTIFICATE_SIZE",
    "MAX_OUTBLOB_SIZE",
    "SEV_GUEST_PROVIDER",
    "SNP_REPORT_SIZE",
    "TDX_GUEST_PROVIDER",
    "TSM_REPORT_ROOT",
    "VCEK_GUID",
    "VLEK_GUID",
    "ConfigfsTsm",
    "SnpCertificates",
    "TsmReport",
    "check_snp_report",
    "check_tdx_quote",
    "parse_snp_cert_table",
    "snp_signing_key",
]

TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
SEV_GUEST_PROVIDER = "sev_guest"
TDX_GUEST_PROVIDER = "tdx_guest"

INBLOB_SIZE = 64
MAX_OUTBLOB_SIZE = 64 * 1024
"""The kernel caps outblob at 32 KiB (TSM_OUTBLOB_MAX); anything above 64 KiB is refused."""
MAX_AUXBLOB_SIZE = 64 * 1024
"""The SEV guest driver gives at most 16 KiB (SEV_FW_BLOB_MAX_SIZE); SVSM may give more."""
MAX_CERTIFICATE_SIZE = 16 * 1024
"""Same bound as an evidence bundle's certificate."""
_MAX_SMALL_ATTRIBUTE = 256
DEFAULT_ATTEMPTS = 3

VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
"""The ASK slot; for a VLEK-signed report it carries the ASVK."""
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
_CERT_SLOTS = {VCEK_GUID.bytes: "vcek", VLEK_GUID.bytes: "vlek", ASK_GUID.bytes: "ask", ARK_GUID.bytes: "ark"}
_TABLE_ENTRY = struct.Struct("<16sII")

SNP_REPORT_SIZE = 0x4A0
_SNP_SIGNER_INFO = 0x48
_SNP_MIN_VERSION = 2

_TDX_TEE_TYPE = 0x81
_ECDSA_P256 = 2
_QUOTE_HEADER = struct.Struct("<HHI")
_TDX_V4_SIGNATURE_LEN_AT = 48 + 584
_TDX_V5_BODY_AT = 54


def _read_text(path: Path, what: str) -> str:
    raw = read_bounded(path, _MAX_SMALL_ATTRIBUTE, what)
    try:
        return raw.decode("ascii").strip().strip("\x00")
    except UnicodeDecodeError:
        raise malformed(f"{what} is not ASCII text") from None


@dataclass(frozen=True)
class TsmReport:
    """One configfs-tsm answer: the report bytes, the auxiliary blob and who produced them.

    Guarantees: ``outblob`` is 1..64 KiB and ``auxblob`` at most 64 KiB; both were read with no
    foreign write to the entry between our ``inblob`` write and the last read (``generation``
    checked); ``provider`` is the one the caller asked for.
    """

    provider: str
    outblob: bytes
    auxblob: bytes
    generation: int


class ConfigfsTsm:
    """The configfs-tsm report interface under ``root`` (a fake tree in tests).

    ``privlevel`` (SEV-SNP VMPL, 0..3) is written before ``inblob`` when given. Instances hold no
    state between calls and are safe to share between threads: each call uses its own entry.
    """

    def __init__(
        self,
        root: Path = TSM_REPORT_ROOT,
        *,
        privlevel: int | None = None,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        if privlevel is not None and not 0 <= privlevel <= 3:
            raise ValueError("privlevel must be 0..3")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.root = Path(root)
        self.privlevel = privlevel
        self.attempts = attempts

    # -- kernel-facing operations (tests emulate the kernel by overriding these three) --------------

    def _create_entry(self, path: Path) -> None:
        """Create a report entry; the kernel populates its attributes."""
        path.mkdir(mode=0o700)

    def _write_attribute(self, path: Path, data: bytes) -> None:
        """Write one attribute in a single write, committed on close as configfs expects."""
        fd = os.open(path, os.O_WRONLY)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        finally:
            os.close(fd)

    def _remove_entry(self, path: Path) -> None:
        """Remove a report entry (the kernel drops its attributes with it)."""
        path.rmdir()

    # -- public API -----------------------------------------------------------------------------------

    def _open_entry(self) -> Path:
        if not self.root.is_dir():
            raise unavailable(
                f"configfs-tsm report interface not found at {self.root}: it needs Linux 6.7+ with "
                "CONFIG_TSM_REPORTS, configfs mounted on /sys/kernel/config, and the sev-guest or "
                "tdx-guest driver loaded (in a paravisor CVM such as Azure's the guest has no such "
                "interface)"
            )
        entry = self.root / f"sealedml-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            self._create_entry(entry)
        except PermissionError:
            raise unavailable(
                f"cannot create {entry}: run the enclave as root (or grant it the tree)"
            ) from None
        except OSError as exc:
            raise unavailable(f"cannot create {entry}: {exc.strerror or type(exc).__name__}") from None
        return entry

    def provider(self) -> str:
        """Return the TSM provider name (``sev_guest``, ``tdx_guest``, ...) without requesting a report.

        Raises ``EnclaveError("enclave.platform_unavailable")`` when there is no usable interface.
        """
        entry = self._open_entry()
        try:
            return _read_text(entry / "provider", "provider")
        finally:
            with contextlib.suppress(OSError):
                self._remove_entry(entry)

    def _generation(self, entry: Path) -> int:
        text = _read_text(entry / "generation", "generation")
        if not text.isdigit():
            raise malformed(f"generation must be a decimal counter, got {text[:20]!r}")
        return int(text)

    def report(self, inblob: bytes, *, provider: str) -> TsmReport:
        """Request a report binding ``inblob`` (exactly 64 bytes) from ``provider``.

        Guarantees: the entry is removed before returning or raising; a foreign write detected
        through ``generation`` makes the request start over, at most ``attempts`` times, then
        raises ``enclave.platform_busy``. Another provider, a missing interface or an I/O error is
        ``enclave.platform_unavailable``; an oversized blob is ``attestation.malformed``.
        """
        if not isinstance(inblob, bytes) or len(inblob) != INBLOB_SIZE:
            raise ValueError(f"inblob must be {INBLOB_SIZE} bytes")
        entry = self._open_entry()
        try:
            actual = _read_text(entry / "provider", "provider")
            if actual != provider:
                raise unavailable(
                    f"this guest's TSM provider is {actual!r}, not {provider!r}: "
                    "start the enclave with the --tee that matches the hardware"
                )
            for _attempt in range(self.attempts):
                before = self._generation(entry)
                writes = 0
                try:
                    if self.privlevel is not None:
                        self._write_attribute(entry / "privlevel", str(self.privlevel).encode())
                        writes += 1
                    self._write_attribute(entry / "inblob", inblob)
                    writes += 1
                except FileNotFoundError as exc:
                    raise unavailable(
                        f"{exc.filename} does not exist: the TSM provider does not offer that option"
                    ) from None
                except OSError as exc:
                    raise unavailable(
                        f"writing to {entry} failed: {exc.strerror or type(exc).__name__}"
                    ) from None
                outblob = read_bounded(entry / "outblob", MAX_OUTBLOB_SIZE, "outblob")
                aux_path = entry / "auxblob"
                auxblob = read_bounded(aux_path, MAX_AUXBLOB_SIZE, "auxblob") if aux_path.exists() else b""
                after = self._generation(entry)
                if after == before + writes:
                    if not outblob:
                        raise malformed("the TSM provider returned an empty outblob")
                    return TsmReport(provider=actual, outblob=outblob, auxblob=auxblob, generation=after)
            raise EnclaveError(
                "enclave.platform_busy",
                f"another writer kept changing {entry} (generation moved {self.attempts} times); "
                "no report was taken: retry, and check nothing else writes to configfs-tsm entries",
            )
        finally:
            with contextlib.suppress(OSError):
                self._remove_entry(entry)


# -- SEV-SNP --------------------------------------------------------------------------------------------


def check_snp_report(report: bytes) -> bytes:
    """Return ``report`` if it has the shape of an SEV-SNP ATTESTATION_REPORT (1184 bytes, version 2+).

    Raises ``attestation.malformed`` otherwise. Nothing about its signature is checked.
    """
    if len(report) != SNP_REPORT_SIZE:
        raise malformed(f"an SEV-SNP report is {SNP_REPORT_SIZE} bytes, the provider returned {len(report)}")
    version = int.from_bytes(report[0:4], "little")
    if version < _SNP_MIN_VERSION:
        raise malformed(f"SEV-SNP report version {version} is not supported (2 or later)")
    return report


def snp_signing_key(report: bytes) -> str:
    """Return which key signed a (shape-checked) SEV-SNP report: ``"vcek"``, ``"vlek"`` or ``"none"``.

    Reads SIGNING_KEY, bits 4:2 of the word at 0x48 (zero in version 2 reports, meaning VCEK).
    """
    selector = (int.from_bytes(report[_SNP_SIGNER_INFO : _SNP_SIGNER_INFO + 4], "little") >> 2) & 0x7
    return {0: "vcek", 1: "vlek"}.get(selector, "none")


def _der_length(blob: bytes) -> int:
    """Return the total length of the DER element at the start of ``blob`` (a SEQUENCE)."""
    if len(blob) < 2 or blob[0] != 0x30:
        raise malformed("a certificate in the SEV-SNP certificate table is not DER")
    first = blob[1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if not 1 <= count <= 3 or len(blob) < 2 + count:
        raise malformed("a certificate in the SEV-SNP certificate table has a bad DER length")
    return 2 + count + int.from_bytes(blob[2 : 2 + count], "big")


@dataclass(frozen=True)
class SnpCertificates:
    """The certificates found in an SEV-SNP certificate table (DER, each at most 16 KiB).

    ``ask`` is whatever the host put in the ASK slot: the ASK for a VCEK, the ASVK for a VLEK.
    """

    vcek: bytes | None = None
    vlek: bytes | None = None
    ask: bytes | None = None
    ark: bytes | None = None

    def chain(self, signing_key: str) -> tuple[bytes, ...]:
        """Return the chain for a report signed by ``signing_key`` ("vcek"/"vlek"), leaf first.

        Guarantees: ``(leaf, ASK/ASVK, ARK)`` when all three are present; ``(leaf,)`` when only the
        leaf is (the verifier supplies the AMD chain it pins); ``()`` without the leaf.
        """
        leaf = {"vcek": self.vcek, "vlek": self.vlek}.get(signing_key)
        if leaf is None:
            return ()
        if self.ask is not None and self.ark is not None:
            return (leaf, self.ask, self.ark)
        return (leaf,)


def parse_snp_cert_table(auxblob: bytes) -> SnpCertificates:
    """Parse the GHCB certificate table an SEV guest's ``auxblob`` holds.

    Guarantees: returns the VCEK, VLEK, ASK/ASVK and ARK it names (other GUIDs are ignored);
    an empty blob gives no certificates. Raises ``attestation.malformed`` (never another error)
    for a blob over 64 KiB, a table without its zero terminator, an entry pointing into the table
    or past the end, a GUID listed twice, or a certificate that is not a DER SEQUENCE of at most
    16 KiB. A DER certificate followed by padding inside its entry is returned without the padding.
    """
    if len(auxblob) > MAX_AUXBLOB_SIZE:
        raise malformed(f"the SEV-SNP certificate table is larger than {MAX_AUXBLOB_SIZE} bytes")
    if not auxblob:
        return SnpCertificates()
    entries: list[tuple[bytes, int, int]] = []
    offset = 0
    while True:
        if offset + _TABLE_ENTRY.size > len(auxblob):
            raise malformed("the SEV-SNP certificate table has no all-zero terminator entry")
        guid, start, length = _TABLE_ENTRY.unpack_from(auxblob, offset)
        offset += _TABLE_ENTRY.size
        if guid == bytes(16) and start == 0 and length == 0:
            break
        entries.append((guid, start, length))
    table_end = offset
    found: dict[str, bytes] = {}
    seen: set[bytes] = set()
    for guid, start, length in entries:
        if guid in seen:
            raise malformed(f"the SEV-SNP certificate table lists {uuid.UUID(bytes=guid)} twice")
        seen.add(guid)
        if length == 0:
            continue
        if start < table_end or start + length > len(auxblob):
            raise malformed(
                f"the SEV-SNP certificate table entry {uuid.UUID(bytes=guid)} points outside the "
                f"certificate area (offset {start}, length {length}, blob {len(auxblob)} bytes)"
            )
        slot = _CERT_SLOTS.get(guid)
        if slot is None:
            continue
        blob = auxblob[start : start + length]
        size = _der_length(blob)
        if size > length:
            raise malformed(f"the {slot.upper()} certificate is truncated in the SEV-SNP certificate table")
        if size > MAX_CERTIFICATE_SIZE:
            raise malformed(f"the {slot.upper()} certificate is larger than {MAX_CERTIFICATE_SIZE} bytes")
        found[slot] = blob[:size]
    return SnpCertificates(**found)


# -- TDX ------------------------------------------------------------------------------------------------


def check_tdx_quote(quote: bytes) -> bytes:
    """Return ``quote`` if it has the shape of a TDX DCAP quote (v4 or v5, ECDSA P-256, TEE type 0x81).

    Guarantees: the header, TD report body and signature-data length all lie inside ``quote``
    (trailing padding is allowed). Raises ``attestation.malformed`` otherwise. Signatures are
    not checked here.
    """
    if len(quote) < _QUOTE_HEADER.size:
        raise malformed(f"the TDX quote is truncated ({len(quote)} bytes)")
    version, key_type, tee_type = _QUOTE_HEADER.unpack_from(quote)
    if version not in (4, 5) or tee_type != _TDX_TEE_TYPE or key_type != _ECDSA_P256:
        raise malformed(
            f"not a TDX ECDSA quote (version {version}, key type {key_type}, TEE type {tee_type:#x})"
        )
    if version == 4:
        length_at = _TDX_V4_SIGNATURE_LEN_AT
    else:
        if len(quote) < _TDX_V5_BODY_AT:
            raise malformed(f"the TDX v5 quote is truncated ({len(quote)} bytes)")
        body_size = int.from_bytes(quote[50:54], "little")
        length_at = _TDX_V5_BODY_AT + body_size
    if len(quote) < length_at + 4:
        raise malformed(f"the TDX quote is truncated ({len(quote)} bytes, body ends at {length_at})")
    signature_length = int.from_bytes(quote[length_at : length_at + 4], "little")
    if length_at + 4 + signature_length > len(quote):
        raise malformed(
            f"the TDX quote is truncated: its signature data needs {signature_length} bytes "
            f"after offset {length_at + 4}, only {len(quote) - length_at - 4} are present"
        )
    return quote
