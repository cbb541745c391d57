"""Reference values for real TEEs: the ``[attestation.sev-snp]``, ``[attestation.tdx]`` and
``[attestation.sgx]`` tables of a policy, and their verdict on verified claims.

Each table is deny-by-default: a TEE type without a table is refused
(``attestation.no_reference_values``), debug is refused unless the table says otherwise, and a DCAP
TCB status other than ``UpToDate`` is accepted only when it is listed in ``accepted_tcb_statuses``
*and* every advisory it names is listed in ``accepted_advisories``. Nothing is accepted silently::

    [attestation.sev-snp]
    measurements = ["<96 hex>"]                 # launch measurement(s), required
    host_data = ["<64 hex>"]                    # optional: one must match
    id_key_digests = ["<96 hex>"]               # optional: one must match
    min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }   # optional
    min_guest_svn = 0
    products = ["Milan", "Genoa"]               # optional
    allow_debug = false

    [attestation.tdx]
    mr_td = ["<96 hex>"]                        # required
    rtmr0 = ["<96 hex>"]                        # optional, likewise rtmr1..rtmr3 and mr_seam
    min_tee_tcb_svn = "<32 hex>"                # optional, compared byte by byte
    accepted_tcb_statuses = ["UpToDate"]
    accepted_advisories = []
    max_collateral_age_seconds = 2592000
    allow_debug = false

    [attestation.sgx]
    mr_enclave = ["<64 hex>"]                   # mr_enclave and/or mr_signer + isv_prod_id
    mr_signer = ["<64 hex>"]
    isv_prod_id = 0
    min_isv_svn = 0
    accepted_tcb_statuses = ["UpToDate"]
    accepted_advisories = []
    max_collateral_age_seconds = 2592000
    allow_debug = false
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from sealedml.attestation.claims import Claims
from sealedml.errors import AttestationError, ConfigError

__all__ = [
    "DCAP_TCB_STATUSES",
    "DEFAULT_MAX_COLLATERAL_AGE_SECONDS",
    "SgxReference",
    "SnpReference",
    "TdxReference",
    "TeeReference",
    "reference_classes",
]

DEFAULT_MAX_COLLATERAL_AGE_SECONDS = 30 * 24 * 3600
"""Intel refreshes TCB info and QE identity at least monthly; older collateral is suspect."""
_MAX_AGE_LIMIT = 10 * 365 * 24 * 3600

DCAP_TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
)
"""Statuses a policy may accept. ``Revoked`` is never acceptable, so it is not listed."""

_ADVISORY_RE = re.compile(r"INTEL-SA-\d{5}")
_SNP_TCB_PARTS = ("bootloader", "tee", "snp", "microcode")
_SNP_PRODUCTS = ("Milan", "Genoa", "Turin")
_UINT16 = 0xFFFF
_UINT32 = 0xFFFFFFFF


def _invalid(table: str, message: str) -> ConfigError:
    return ConfigError("config.invalid", f"[attestation.{table}] {message}")


def _short(value: str) -> str:
    return value[:16] + "…" if len(value) > 16 else value


def _listing(values: tuple[str, ...]) -> str:
    shown = ", ".join(_short(v) for v in values[:3])
    return shown + (f" and {len(values) - 3} more" if len(values) > 3 else "")


def _hex_list(table: str, key: str, value: object, hex_len: int) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise _invalid(table, f"{key} must be a list of strings")
    pattern = re.compile(f"[0-9a-fA-F]{{{hex_len}}}")
    for index, item in enumerate(value):
        if not pattern.fullmatch(item):
            raise _invalid(table, f"{key}[{index}] must be {hex_len} hex characters, got {item[:20]!r}")
    return tuple(item.lower() for item in value)


def _uint(table: str, key: str, value: object, limit: int) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise _invalid(table, f"{key} must be an integer in 0..{limit}")
    return value


def _bool(table: str, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _invalid(table, f"{key} must be true or false")
    return value


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    items = list(value)  # type: ignore[call-overload]
    if not items:
        return "[]"
    return "[\n" + "".join(f"    {_toml_value(item)},\n" for item in items) + "]"


def _raw_hex(claims: Claims, key: str) -> str:
    value = claims.raw.get(key)
    return value.lower() if isinstance(value, str) else ""


def _raw_int(claims: Claims, key: str) -> int | None:
    value = claims.raw.get(key)
    return value if type(value) is int else None


def _mismatch(what: str, actual: str, allowed: tuple[str, ...]) -> AttestationError:
    return AttestationError(
        "attestation.policy_mismatch",
        f"{what} {_short(actual) or '(absent)'} is not in the policy's reference values "
        f"[{_listing(allowed)}]",
    )


@dataclass(frozen=True, kw_only=True)
class TeeReference:
    """Common behaviour of the per-TEE tables: TOML loading, saving and the debug/TCB checks."""

    tee: ClassVar[str] = ""
    allow_debug: bool = False

    @classmethod
    def from_table(cls, table: object) -> TeeReference:
        """Build from a parsed TOML table; unknown keys or bad values are ``config.invalid``."""
        if not isinstance(table, dict):
            raise _invalid(cls.tee, "must be a table")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise _invalid(cls.tee, f"unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        return cls(**table)

    def to_toml(self) -> str:
        """Return this table as TOML; ``from_table(tomllib.loads(...))`` gives it back."""
        lines = [f"[attestation.{self.tee}]"]
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            lines.append(f"{f.name} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    def check(self, claims: Claims, *, now: datetime) -> None:
        """Return only if these reference values accept ``claims`` (verified, of this TEE type)."""
        if claims.debug and not self.allow_debug:
            raise AttestationError(
                "attestation.debug_not_allowed",
                f"the {claims.tee} evidence has the DEBUG flag set, "
                "so the host can read the enclave's memory",
            )


@dataclass(frozen=True, kw_only=True)
class _DcapAcceptance(TeeReference):
    """TCB status, advisories and collateral age, shared by SGX and TDX."""

    accepted_tcb_statuses: tuple[str, ...] = ("UpToDate",)
    accepted_advisories: tuple[str, ...] = ()
    max_collateral_age_seconds: int = DEFAULT_MAX_COLLATERAL_AGE_SECONDS

    def _validate_dcap(self) -> None:
        table = self.tee
        _bool(table, "allow_debug", self.allow_debug)
        statuses = self.accepted_tcb_statuses
        if not isinstance(statuses, list | tuple) or not all(isinstance(s, str) for s in statuses):
            raise _invalid(table, "accepted_tcb_statuses must be a list of strings")
        for status in statuses:
            if status not in DCAP_TCB_STATUSES:
                raise _invalid(
                    table,
                    f"accepted_tcb_statuses: {status!r} is not acceptable "
                    f"(choose from {', '.join(DCAP_TCB_STATUSES)})",
                )
        advisories = self.accepted_advisories
        if not isinstance(advisories, list | tuple) or not all(isinstance(a, str) for a in advisories):
            raise _invalid(table, "accepted_advisories must be a list of strings")
        for advisory in advisories:
            if not _ADVISORY_RE.fullmatch(advisory):
                raise _invalid(
                    table, f"accepted_advisories: {advisory!r} is not an advisory id like INTEL-SA-00615"
                )
        age = self.max_collateral_age_seconds
        if type(age) is not int or not 0 < age <= _MAX_AGE_LIMIT:
            raise _invalid(table, f"max_collateral_age_seconds must be an integer in 1..{_MAX_AGE_LIMIT}")
        object.__setattr__(self, "accepted_tcb_statuses", tuple(statuses))
        object.__setattr__(self, "accepted_advisories", tuple(advisories))

    def check(self, claims: Claims, *, now: datetime) -> None:
        """Debug, then TCB status and advisories, then collateral age (see the module docstring)."""
        super().check(claims, now=now)
        status = claims.tcb_status
        if status is None:
            raise AttestationError(
                "attestation.collateral_missing",
                f"the {claims.tee} quote was verified without collateral, so its TCB status is unknown; "
                "supply TCB info, QE identity and CRLs",
            )
        if status != "UpToDate" and status not in self.accepted_tcb_statuses:
            named = f" (advisories: {', '.join(claims.advisories)})" if claims.advisories else ""
            raise AttestationError(
                "attestation.tcb_status_not_allowed",
                f"TCB status {status}{named} is not in accepted_tcb_statuses "
                f"[{', '.join(self.accepted_tcb_statuses)}]",
            )
        unlisted = sorted(set(claims.advisories) - set(self.accepted_advisories))
        if unlisted:
            raise AttestationError(
                "attestation.tcb_status_not_allowed",
                f"TCB status {status} names advisories not in accepted_advisories: {', '.join(unlisted)}",
            )
        if claims.collateral_issued_at is not None:
            age = now.astimezone(UTC) - claims.collateral_issued_at
            if age > timedelta(seconds=self.max_collateral_age_seconds):
                raise AttestationError(
                    "attestation.collateral_expired",
                    f"the collateral was issued at {claims.collateral_issued_at.isoformat()}, "
                    f"{int(age.total_seconds())} s ago; the policy accepts at most "
                    f"{self.max_collateral_age_seconds} s",
                )


@dataclass(frozen=True, kw_only=True)
class SnpReference(TeeReference):
    """Reference values for AMD SEV-SNP confidential VMs. Valid on construction."""

    tee: ClassVar[str] = "sev-snp"
    measurements: tuple[str, ...] = ()
    host_data: tuple[str, ...] = ()
    id_key_digests: tuple[str, ...] = ()
    min_tcb: Mapping[str, int] = field(default_factory=dict)
    min_guest_svn: int = 0
    products: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Validate every key, raising ``config.invalid`` that names it."""
        table = self.tee
        _bool(table, "allow_debug", self.allow_debug)
        measurements = _hex_list(table, "measurements", self.measurements, 96)
        if not measurements:
            raise _invalid(table, "measurements must list at least one launch measurement")
        object.__setattr__(self, "measurements", measurements)
        object.__setattr__(self, "host_data", _hex_list(table, "host_data", self.host_data, 64))
        object.__setattr__(
            self, "id_key_digests", _hex_list(table, "id_key_digests", self.id_key_digests, 96)
        )
        if not isinstance(self.min_tcb, Mapping):
            raise _invalid(
                table, "min_tcb must be a table like { bootloader = 3, tee = 0, snp = 8, microcode = 115 }"
            )
        unknown = sorted(set(self.min_tcb) - set(_SNP_TCB_PARTS))
        if unknown:
            raise _invalid(
                table, f"min_tcb has unknown component {unknown[0]!r} (known: {', '.join(_SNP_TCB_PARTS)})"
            )
        min_tcb = {
            part: _uint(table, f"min_tcb.{part}", self.min_tcb[part], 255)
            for part in _SNP_TCB_PARTS
            if part in self.min_tcb
        }
        object.__setattr__(self, "min_tcb", min_tcb)
        _uint(table, "min_guest_svn", self.min_guest_svn, _UINT32)
        products = self.products
        if not isinstance(products, list | tuple) or any(p not in _SNP_PRODUCTS for p in products):
            raise _invalid(table, f"products must be a list drawn from {', '.join(_SNP_PRODUCTS)}")
        object.__setattr__(self, "products", tuple(products))

    def check(self, claims: Claims, *, now: datetime) -> None:
        """Debug, launch measurement, host data, ID key, product, TCB floor and guest SVN."""
        super().check(claims, now=now)
        if claims.measurement not in self.measurements:
            raise AttestationError(
                "attestation.measurement_mismatch",
                f"launch measurement {_short(claims.measurement)} is not in the policy's reference values "
                f"[{_listing(self.measurements)}]",
            )
        if self.host_data and _raw_hex(claims, "host_data") not in self.host_data:
            raise _mismatch("host_data", _raw_hex(claims, "host_data"), self.host_data)
        if self.id_key_digests and _raw_hex(claims, "id_key_digest") not in self.id_key_digests:
            raise _mismatch("id_key_digest", _raw_hex(claims, "id_key_digest"), self.id_key_digests)
        product = claims.raw.get("product")
        if self.products and product not in self.products:
            raise AttestationError(
                "attestation.policy_mismatch",
                f"the report comes from an AMD {product} processor; "
                f"the policy accepts {', '.join(self.products)}",
            )
        reported = claims.raw.get("reported_tcb")
        for part, floor in self.min_tcb.items():
            value = reported.get(part) if isinstance(reported, Mapping) else None
            if type(value) is not int or value < floor:
                raise AttestationError(
                    "attestation.tcb_too_low",
                    f"reported TCB {part} SVN is {value}, below the policy minimum {floor}",
                )
        if claims.svn < self.min_guest_svn:
            raise AttestationError(
                "attestation.tcb_too_low",
                f"guest SVN {claims.svn} is below the policy minimum {self.min_guest_svn}",
            )


@dataclass(frozen=True, kw_only=True)
class TdxReference(_DcapAcceptance):
    """Reference values for Intel TDX trust domains. Valid on construction."""

    tee: ClassVar[str] = "tdx"
    mr_td: tuple[str, ...] = ()
    rtmr0: tuple[str, ...] = ()
    rtmr1: tuple[str, ...] = ()
    rtmr2: tuple[str, ...] = ()
    rtmr3: tuple[str, ...] = ()
    mr_seam: tuple[str, ...] = ()
    min_tee_tcb_svn: str | None = None

    _OPTIONAL: ClassVar[tuple[str, ...]] = ("rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_seam")

    def __post_init__(self) -> None:
        """Validate every key, raising ``config.invalid`` that names it."""
        table = self.tee
        self._validate_dcap()
        mr_td = _hex_list(table, "mr_td", self.mr_td, 96)
        if not mr_td:
            raise _invalid(table, "mr_td must list at least one TD measurement")
        object.__setattr__(self, "mr_td", mr_td)
        for key in self._OPTIONAL:
            object.__setattr__(self, key, _hex_list(table, key, getattr(self, key), 96))
        if self.min_tee_tcb_svn is not None:
            if not isinstance(self.min_tee_tcb_svn, str) or not re.fullmatch(
                r"[0-9a-fA-F]{32}", self.min_tee_tcb_svn
            ):
                raise _invalid(table, "min_tee_tcb_svn must be 32 hex characters (16 SVN bytes)")
            object.__setattr__(self, "min_tee_tcb_svn", self.min_tee_tcb_svn.lower())

    def check(self, claims: Claims, *, now: datetime) -> None:
        """Debug, TCB status/advisories/collateral age, MRTD, RTMRs, MRSEAM, TEE TCB SVN floor."""
        super().check(claims, now=now)
        if claims.measurement not in self.mr_td:
            raise AttestationError(
                "attestation.measurement_mismatch",
                f"MRTD {_short(claims.measurement)} is not in the policy's reference values "
                f"[{_listing(self.mr_td)}]",
            )
        for key in self._OPTIONAL:
            allowed = getattr(self, key)
            if allowed and _raw_hex(claims, key) not in allowed:
                raise _mismatch(key.upper(), _raw_hex(claims, key), allowed)
        if self.min_tee_tcb_svn is not None:
            actual = bytes.fromhex(_raw_hex(claims, "tee_tcb_svn") or "00" * 16)
            floor = bytes.fromhex(self.min_tee_tcb_svn)
            for index, (have, need) in enumerate(zip(actual, floor, strict=False)):
                if have < need:
                    raise AttestationError(
                        "attestation.tcb_too_low",
                        f"TEE TCB SVN component {index} is {have}, below the policy minimum {need}",
                    )


@dataclass(frozen=True, kw_only=True)
class SgxReference(_DcapAcceptance):
    """Reference values for Intel SGX enclaves. Valid on construction."""

    tee: ClassVar[str] = "sgx"
    mr_enclave: tuple[str, ...] = ()
    mr_signer: tuple[str, ...] = ()
    isv_prod_id: int | None = None
    min_isv_svn: int = 0

    def __post_init__(self) -> None:
        """Validate every key, raising ``config.invalid`` that names it."""
        table = self.tee
        self._validate_dcap()
        object.__setattr__(self, "mr_enclave", _hex_list(table, "mr_enclave", self.mr_enclave, 64))
        object.__setattr__(self, "mr_signer", _hex_list(table, "mr_signer", self.mr_signer, 64))
        if not self.mr_enclave and not self.mr_signer:
            raise _invalid(table, "pin mr_enclave, or mr_signer with isv_prod_id (or both)")
        if self.mr_signer and self.isv_prod_id is None:
            raise _invalid(table, "isv_prod_id is required with mr_signer (one signer signs many products)")
        if self.isv_prod_id is not None:
            _uint(table, "isv_prod_id", self.isv_prod_id, _UINT16)
        _uint(table, "min_isv_svn", self.min_isv_svn, _UINT16)

    def check(self, claims: Claims, *, now: datetime) -> None:
        """Debug, TCB status/advisories/collateral age, MRENCLAVE, MRSIGNER, ISVPRODID, ISVSVN."""
        super().check(claims, now=now)
        if self.mr_enclave and claims.measurement not in self.mr_enclave:
            raise AttestationError(
                "attestation.measurement_mismatch",
                f"MRENCLAVE {_short(claims.measurement)} is not in the policy's reference values "
                f"[{_listing(self.mr_enclave)}]",
            )
        if self.mr_signer and _raw_hex(claims, "mr_signer") not in self.mr_signer:
            raise _mismatch("MRSIGNER", _raw_hex(claims, "mr_signer"), self.mr_signer)
        if self.isv_prod_id is not None and _raw_int(claims, "isv_prod_id") != self.isv_prod_id:
            raise AttestationError(
                "attestation.policy_mismatch",
                f"ISVPRODID {_raw_int(claims, 'isv_prod_id')} is not the policy's {self.isv_prod_id}",
            )
        if claims.svn < self.min_isv_svn:
            raise AttestationError(
                "attestation.tcb_too_low",
                f"ISVSVN {claims.svn} is below the policy minimum {self.min_isv_svn}",
            )


def reference_classes() -> dict[str, type[TeeReference]]:
    """Return the reference-value table class for each real TEE type, keyed by TOML table name."""
    return {cls.tee: cls for cls in (SnpReference, TdxReference, SgxReference)}


def from_tables(tables: Mapping[str, Any]) -> dict[str, TeeReference]:
    """Build every per-TEE table present in ``tables`` (the ``[attestation]`` sub-tables)."""
    classes = reference_classes()
    return {name: classes[name].from_table(value) for name, value in tables.items() if name in classes}
