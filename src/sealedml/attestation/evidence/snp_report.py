"""AMD SEV-SNP ``ATTESTATION_REPORT``: the byte layout and a strict parser (no cryptography here).

Layout: AMD *SEV Secure Nested Paging Firmware ABI Specification* (pub. 56860), table
"ATTESTATION_REPORT Structure"; cross-checked with google/go-sev-guest ``abi/abi.go``
(``ReportToProto``: the must-be-zero ranges) and virtee/sev ``src/firmware/guest/types/snp.rs``
(``GuestPolicy``, ``PlatformInfo``, ``KeyInfo`` bit tables, Turin ``TCB_VERSION`` layout).
Offsets were verified against the real reports in ``../shared/attestation-vectors/sev-snp``.

The parser rejects, with ``attestation.malformed``, anything the ABI does not allow: another size
than 0x4A0, an unknown version (2..5 are known), a signature algorithm other than ECDSA P-384 /
SHA-384, a reserved ``SIGNING_KEY`` value, a cleared must-be-one policy bit 17, and a non-zero
byte in a reserved range. It never verifies the signature: :mod:`~sealedml.attestation.evidence.snp`
does.
"""

from __future__ import annotations

from dataclasses import dataclass

from sealedml.errors import AttestationError

__all__ = [
    "ECDSA_P384_SHA384",
    "REPORT_SIZE",
    "SIGNED_SIZE",
    "SIGNING_KEY_NONE",
    "SIGNING_KEY_VCEK",
    "SIGNING_KEY_VLEK",
    "SUPPORTED_VERSIONS",
    "SnpReport",
    "decode_tcb",
    "parse_snp_report",
]

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
"""The signature covers bytes [0, 0x2A0)."""
SUPPORTED_VERSIONS = (2, 3, 4, 5)
ECDSA_P384_SHA384 = 1
SIGNING_KEY_VCEK, SIGNING_KEY_VLEK, SIGNING_KEY_NONE = 0, 1, 7
_SIGNING_KEY_NAMES = {SIGNING_KEY_VCEK: "vcek", SIGNING_KEY_VLEK: "vlek", SIGNING_KEY_NONE: "none"}
_ECDSA_COMPONENT = 72  # R and S are 72-byte zero-extended little-endian integers.
_POLICY_MUST_BE_ONE = 1 << 17

_POLICY_FLAGS = {
    "smt": 16,
    "migrate_ma": 18,
    "debug": 19,
    "single_socket": 20,
    "cxl_allow": 21,
    "mem_aes_256_xts": 22,
    "rapl_dis": 23,
    "ciphertext_hiding": 24,
}
_PLATFORM_INFO_FLAGS = {
    "smt_enabled": 0,
    "tsme_enabled": 1,
    "ecc_enabled": 2,
    "rapl_disabled": 3,
    "ciphertext_hiding_enabled": 4,
    "alias_check_complete": 5,
}


def _malformed(message: str) -> AttestationError:
    return AttestationError("attestation.malformed", f"SEV-SNP report: {message}")


def decode_tcb(raw: bytes, product: str) -> dict[str, int]:
    """Split an 8-byte ``TCB_VERSION`` into its security patch levels for ``product``.

    Guarantees: Milan and Genoa give ``bootloader`` [0], ``tee`` [1], ``snp`` [6], ``microcode``
    [7]; Turin gives ``fmc`` [0], ``bootloader`` [1], ``tee`` [2], ``snp`` [3], ``microcode`` [7]
    (virtee/sev ``TcbVersion::from_turin_bytes``). Raises ``ValueError`` on another length.
    """
    if len(raw) != 8:
        raise ValueError("a TCB_VERSION is 8 bytes")
    if product == "Turin":
        return {"fmc": raw[0], "bootloader": raw[1], "tee": raw[2], "snp": raw[3], "microcode": raw[7]}
    return {"bootloader": raw[0], "tee": raw[1], "snp": raw[6], "microcode": raw[7]}


def _bits(value: int, table: dict[str, int]) -> dict[str, bool]:
    return {name: bool(value >> bit & 1) for name, bit in table.items()}


@dataclass(frozen=True)
class SnpReport:
    """Every field of a well-formed SEV-SNP attestation report (versions 2 to 5), unverified.

    Byte fields keep report order; TCB versions stay raw (8 bytes) because their layout depends
    on the product, which only the certificate chain establishes (see :func:`decode_tcb`).
    ``cpuid_*`` are ``None`` before version 3, ``*_mit_vector`` are ``None`` before version 5.
    """

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: bytes
    platform_info: int
    signer_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: bytes
    cpuid_family: int | None
    cpuid_model: int | None
    cpuid_stepping: int | None
    chip_id: bytes
    committed_tcb: bytes
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: bytes
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: bytes
    signature_s: bytes

    @property
    def author_key_en(self) -> bool:
        """``AUTHOR_KEY_EN`` (0x48 bit 0): ``author_key_digest`` is present."""
        return bool(self.signer_info & 1)

    @property
    def mask_chip_key(self) -> bool:
        """``MASK_CHIP_KEY`` (0x48 bit 1): the firmware wrote zeroes instead of signing."""
        return bool(self.signer_info >> 1 & 1)

    @property
    def signing_key(self) -> int:
        """``SIGNING_KEY`` (0x48 bits 4:2): 0 VCEK, 1 VLEK, 7 none."""
        return self.signer_info >> 2 & 0b111

    @property
    def debug(self) -> bool:
        """Policy bit 19: the host may decrypt guest memory (``SNP_DBG_DECRYPT``)."""
        return bool(self.policy >> _POLICY_FLAGS["debug"] & 1)

    def fields(self, product: str) -> dict[str, object]:
        """Return every field as JSON-friendly values (hex strings, ints, bools, plain dicts).

        Guarantees: TCB versions are ``{"raw": hex, <component>: int, ...}`` decoded for
        ``product``; ``policy``, ``platform_info`` and ``signer_info`` are ``hex(int)`` with their
        flags decoded beside them; ``cpuid`` and the mitigation vectors appear only in the report
        versions that carry them.
        """

        def tcb(raw: bytes) -> dict[str, object]:
            return {"raw": raw.hex(), **decode_tcb(raw, product)}

        result: dict[str, object] = {
            "product": product,
            "version": self.version,
            "guest_svn": self.guest_svn,
            "policy": hex(self.policy),
            "policy_flags": {
                "abi_minor": self.policy & 0xFF,
                "abi_major": self.policy >> 8 & 0xFF,
                **_bits(self.policy, _POLICY_FLAGS),
            },
            "family_id": self.family_id.hex(),
            "image_id": self.image_id.hex(),
            "vmpl": self.vmpl,
            "signature_algo": self.signature_algo,
            "current_tcb": tcb(self.current_tcb),
            "platform_info": hex(self.platform_info),
            "platform_info_flags": _bits(self.platform_info, _PLATFORM_INFO_FLAGS),
            "signer_info": hex(self.signer_info),
            "author_key_en": self.author_key_en,
            "mask_chip_key": self.mask_chip_key,
            "signing_key": _SIGNING_KEY_NAMES[self.signing_key],
            "report_data": self.report_data.hex(),
            "measurement": self.measurement.hex(),
            "host_data": self.host_data.hex(),
            "id_key_digest": self.id_key_digest.hex(),
            "author_key_digest": self.author_key_digest.hex(),
            "report_id": self.report_id.hex(),
            "report_id_ma": self.report_id_ma.hex(),
            "reported_tcb": tcb(self.reported_tcb),
            "chip_id": self.chip_id.hex(),
            "committed_tcb": tcb(self.committed_tcb),
            "current_build": self.current_build,
            "current_minor": self.current_minor,
            "current_major": self.current_major,
            "committed_build": self.committed_build,
            "committed_minor": self.committed_minor,
            "committed_major": self.committed_major,
            "launch_tcb": tcb(self.launch_tcb),
            "signature_r": self.signature_r.hex(),
            "signature_s": self.signature_s.hex(),
        }
        if self.cpuid_family is not None:
            result["cpuid"] = {
                "family": self.cpuid_family,
                "model": self.cpuid_model,
                "stepping": self.cpuid_stepping,
            }
        if self.launch_mit_vector is not None:
            result["launch_mit_vector"] = hex(self.launch_mit_vector)
            result["current_mit_vector"] = hex(self.current_mit_vector or 0)
        return result


def _uint(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset : offset + size], "little")


def _reserved_ranges(version: int) -> tuple[tuple[int, int], ...]:
    # Reserved bytes per the ABI table; go-sev-guest ReportToProto rejects the same ranges. From
    # version 3 on, 0x188..0x18A hold CPUID family/model/stepping; from version 5 on,
    # 0x1F8..0x207 hold the launch/current mitigation vectors. The ECDSA signature uses only
    # the first 144 bytes of its 512-byte field.
    return (
        (0x04C, 0x050),
        (0x188 if version < 3 else 0x18B, 0x1A0),
        (0x1EB, 0x1EC),
        (0x1EF, 0x1F0),
        (0x1F8 if version < 5 else 0x208, SIGNED_SIZE),
        (SIGNED_SIZE + 2 * _ECDSA_COMPONENT, REPORT_SIZE),
    )


def parse_snp_report(data: bytes) -> SnpReport:
    """Parse a raw SEV-SNP attestation report into a :class:`SnpReport`.

    Guarantees: returns only for exactly 0x4A0 bytes of a known version (2..5) signed with ECDSA
    P-384 / SHA-384 (``signature_algo`` 1), whose ``SIGNING_KEY`` is not a reserved value, whose
    policy bit 17 is set and whose reserved bytes and bits are zero; otherwise raises
    ``AttestationError("attestation.malformed")`` naming the offending field. It checks no
    signature and no certificate. Any input (bytes-like or not) raises only that error.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _malformed(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) != REPORT_SIZE:
        raise _malformed(f"must be exactly {REPORT_SIZE} bytes (0x{REPORT_SIZE:X}), got {len(data)}")
    version = _uint(data, 0x00, 4)
    if version not in SUPPORTED_VERSIONS:
        raise _malformed(f"unsupported version {version} (known: {', '.join(map(str, SUPPORTED_VERSIONS))})")
    signature_algo = _uint(data, 0x34, 4)
    if signature_algo != ECDSA_P384_SHA384:
        raise _malformed(f"signature_algo is {signature_algo}, expected 1 (ECDSA P-384 with SHA-384)")
    policy = _uint(data, 0x08, 8)
    if not policy & _POLICY_MUST_BE_ONE:
        raise _malformed(f"policy 0x{policy:x} has reserved bit 17 cleared (the ABI requires it set)")
    signer_info = _uint(data, 0x48, 4)
    if signer_info >> 5:
        raise _malformed(f"signer info 0x{signer_info:x} at 0x48 sets reserved bits 31:5")
    if signer_info >> 2 & 0b111 not in _SIGNING_KEY_NAMES:
        raise _malformed(f"SIGNING_KEY {signer_info >> 2 & 0b111} is reserved (0 VCEK, 1 VLEK, 7 none)")
    for start, end in _reserved_ranges(version):
        if any(data[start:end]):
            raise _malformed(
                f"reserved bytes 0x{start:03X}..0x{end - 1:03X} are not zero (version {version})"
            )
    has_cpuid, has_mit = version >= 3, version >= 5
    return SnpReport(
        version=version,
        guest_svn=_uint(data, 0x04, 4),
        policy=policy,
        family_id=data[0x10:0x20],
        image_id=data[0x20:0x30],
        vmpl=_uint(data, 0x30, 4),
        signature_algo=signature_algo,
        current_tcb=data[0x38:0x40],
        platform_info=_uint(data, 0x40, 8),
        signer_info=signer_info,
        report_data=data[0x50:0x90],
        measurement=data[0x90:0xC0],
        host_data=data[0xC0:0xE0],
        id_key_digest=data[0xE0:0x110],
        author_key_digest=data[0x110:0x140],
        report_id=data[0x140:0x160],
        report_id_ma=data[0x160:0x180],
        reported_tcb=data[0x180:0x188],
        cpuid_family=data[0x188] if has_cpuid else None,
        cpuid_model=data[0x189] if has_cpuid else None,
        cpuid_stepping=data[0x18A] if has_cpuid else None,
        chip_id=data[0x1A0:0x1E0],
        committed_tcb=data[0x1E0:0x1E8],
        current_build=data[0x1E8],
        current_minor=data[0x1E9],
        current_major=data[0x1EA],
        committed_build=data[0x1EC],
        committed_minor=data[0x1ED],
        committed_major=data[0x1EE],
        launch_tcb=data[0x1F0:0x1F8],
        launch_mit_vector=_uint(data, 0x1F8, 8) if has_mit else None,
        current_mit_vector=_uint(data, 0x200, 8) if has_mit else None,
        signature_r=data[SIGNED_SIZE : SIGNED_SIZE + _ECDSA_COMPONENT],
        signature_s=data[SIGNED_SIZE + _ECDSA_COMPONENT : SIGNED_SIZE + 2 * _ECDSA_COMPONENT],
    )
