"""Appraisal policy: the relying party's reference values, and the verdict on verified claims.

A policy is loaded from the ``[attestation]`` table of a TOML file::

    [attestation]
    allow_simulated = false            # the simulated TEE protects nothing; only for development
    reference_measurements = ["<96 hex chars>", ...]   # required, non-empty
    max_evidence_age_seconds = 300     # 1 .. 315360000 (ten years)
    allow_debug = false
    simulated_roots = ["<64 hex chars>"]  # SHA-256 of the pinned simulated root certificate DER

Real TEEs get their own sub-tables, ``[attestation.sev-snp]``, ``[attestation.tdx]`` and
``[attestation.sgx]`` (see :mod:`sealedml.attestation.tee_policy`); a TEE type without one is refused.
``reference_measurements`` (the simulated enclave's code measurement) is required unless a real-TEE
table is present.

Policies fail closed: unknown keys or tables, wrong types, malformed hex, or a policy that pins
nothing are ``ConfigError("config.invalid")``; an empty ``simulated_roots`` rejects all simulated
evidence. Hex values are normalised to lowercase.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sealedml.attestation.claims import Claims
from sealedml.attestation.tee_policy import (
    SgxReference,
    SnpReference,
    TdxReference,
    TeeReference,
    from_tables,
    reference_classes,
)
from sealedml.errors import AttestationError, ConfigError

__all__ = [
    "DEFAULT_MAX_EVIDENCE_AGE_SECONDS",
    "FUTURE_SKEW_SECONDS",
    "MAX_EVIDENCE_AGE_LIMIT_SECONDS",
    "AppraisalPolicy",
]

DEFAULT_MAX_EVIDENCE_AGE_SECONDS = 300
MAX_EVIDENCE_AGE_LIMIT_SECONDS = 10 * 365 * 24 * 3600
FUTURE_SKEW_SECONDS = 60
"""Evidence issued at most this far in the future (clock skew) is still accepted."""
MAX_POLICY_SIZE = 1024 * 1024

_TABLE = "attestation"
_MEASUREMENT_RE = re.compile(r"[0-9a-fA-F]{96}")
_ROOT_RE = re.compile(r"[0-9a-fA-F]{64}")
_KEYS = (
    "allow_simulated",
    "reference_measurements",
    "max_evidence_age_seconds",
    "allow_debug",
    "simulated_roots",
)


def _invalid(message: str) -> ConfigError:
    return ConfigError("config.invalid", message)


def _short(hex_text: str) -> str:
    return hex_text[:16] + "…"


def _hex_list(key: str, value: object, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise _invalid(f"[{_TABLE}] {key} must be a list of strings")
    for index, item in enumerate(value):
        if not pattern.fullmatch(item):
            raise _invalid(f"[{_TABLE}] {key}[{index}] must be {what}, got {item[:20]!r}")
    return tuple(item.lower() for item in value)


@dataclass(frozen=True, kw_only=True)
class AppraisalPolicy:
    """What a relying party accepts. Every instance is valid (checked on construction).

    - ``reference_measurements``: the enclave measurements to trust (at least one);
    - ``allow_simulated``: accept the simulated TEE, which protects nothing (default False);
    - ``max_evidence_age_seconds``: how old evidence may be (default 300);
    - ``allow_debug``: accept debug enclaves, whose memory the host can read (default False);
    - ``simulated_roots``: SHA-256 fingerprints of pinned simulated root certificates;
    - ``sev_snp`` / ``tdx`` / ``sgx``: reference values for real TEEs (None refuses that type).
    """

    reference_measurements: tuple[str, ...] = ()
    allow_simulated: bool = False
    max_evidence_age_seconds: int = DEFAULT_MAX_EVIDENCE_AGE_SECONDS
    allow_debug: bool = False
    simulated_roots: tuple[str, ...] = ()
    sev_snp: SnpReference | None = None
    tdx: TdxReference | None = None
    sgx: SgxReference | None = None

    def __post_init__(self) -> None:
        """Validate every field, raising ``ConfigError("config.invalid")`` naming the key."""
        for key in ("allow_simulated", "allow_debug"):
            if not isinstance(getattr(self, key), bool):
                raise _invalid(f"[{_TABLE}] {key} must be true or false")
        age = self.max_evidence_age_seconds
        if type(age) is not int or not 0 < age <= MAX_EVIDENCE_AGE_LIMIT_SECONDS:
            raise _invalid(
                f"[{_TABLE}] max_evidence_age_seconds must be an integer in "
                f"1..{MAX_EVIDENCE_AGE_LIMIT_SECONDS}"
            )
        measurements = _hex_list(
            "reference_measurements",
            self.reference_measurements,
            _MEASUREMENT_RE,
            "96 hex characters (SHA-384)",
        )
        for key, cls in (("sev_snp", SnpReference), ("tdx", TdxReference), ("sgx", SgxReference)):
            value = getattr(self, key)
            if value is not None and not isinstance(value, cls):
                raise _invalid(f"[{_TABLE}] {key} must be a {cls.__name__}")
        if not measurements and not self.real_tees():
            raise _invalid(
                f"[{_TABLE}] reference_measurements must list at least one measurement "
                "(or add an [attestation.sev-snp], [attestation.tdx] or [attestation.sgx] table)"
            )
        roots = _hex_list("simulated_roots", self.simulated_roots, _ROOT_RE, "64 hex characters (SHA-256)")
        object.__setattr__(self, "reference_measurements", measurements)
        object.__setattr__(self, "simulated_roots", roots)

    def real_tees(self) -> dict[str, TeeReference]:
        """Return the real-TEE reference tables this policy has, keyed by TEE type."""
        tables = {"sev-snp": self.sev_snp, "tdx": self.tdx, "sgx": self.sgx}
        return {tee: table for tee, table in tables.items() if table is not None}

    # -- loading and saving -----------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> AppraisalPolicy:
        """Load a policy file; an unreadable or invalid file raises ``ConfigError("config.invalid")``."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise _invalid(f"cannot read policy file {path}: {exc.strerror or type(exc).__name__}") from None
        return cls.from_toml(data)

    @classmethod
    def from_toml(cls, text: str | bytes) -> AppraisalPolicy:
        """Parse a policy from TOML text.

        Guarantees: returns a valid policy or raises ``ConfigError("config.invalid")`` naming the
        offending key, and never any other exception type. Unknown keys and tables are rejected.
        """
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise _invalid("policy file is not UTF-8") from None
        if not isinstance(text, str):
            raise _invalid("policy must be TOML text")
        if len(text) > MAX_POLICY_SIZE:
            raise _invalid(f"policy file is larger than {MAX_POLICY_SIZE} characters")
        try:
            document = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, RecursionError, ValueError) as exc:
            raise _invalid(f"policy is not valid TOML: {str(exc)[:200]}") from None
        unknown_tables = sorted(set(document) - {_TABLE})
        if unknown_tables:
            raise _invalid(f"unknown key {unknown_tables[0]!r} in policy (expected only [{_TABLE}])")
        table = document.get(_TABLE)
        if not isinstance(table, dict):
            raise _invalid(f"policy has no [{_TABLE}] table")
        sub_tables = set(reference_classes())
        unknown = sorted(set(table) - set(_KEYS) - sub_tables)
        if unknown:
            raise _invalid(
                f"unknown key {unknown[0]!r} in [{_TABLE}] "
                f"(known: {', '.join(_KEYS)}; tables: {', '.join(sorted(sub_tables))})"
            )
        real = from_tables({key: table[key] for key in sub_tables if key in table})
        if "reference_measurements" not in table and not real:
            raise _invalid(f"[{_TABLE}] reference_measurements is required")
        values: dict[str, Any] = {key: value for key, value in table.items() if key not in sub_tables}
        values.update({key.replace("-", "_"): value for key, value in real.items()})
        for key in ("reference_measurements", "simulated_roots"):
            if key in values and not isinstance(values[key], list):
                raise _invalid(f"[{_TABLE}] {key} must be a list of strings")
        return cls(**values)

    def to_toml(self) -> str:
        """Return the policy as TOML; ``AppraisalPolicy.from_toml(p.to_toml()) == p`` always holds."""

        def toml_list(items: tuple[str, ...]) -> str:
            if not items:
                return "[]"
            return "[\n" + "".join(f'    "{item}",\n' for item in items) + "]"

        def toml_bool(value: bool) -> str:
            return "true" if value else "false"

        return (
            f"[{_TABLE}]\n"
            f"allow_simulated = {toml_bool(self.allow_simulated)}\n"
            f"reference_measurements = {toml_list(self.reference_measurements)}\n"
            f"max_evidence_age_seconds = {self.max_evidence_age_seconds}\n"
            f"allow_debug = {toml_bool(self.allow_debug)}\n"
            f"simulated_roots = {toml_list(self.simulated_roots)}\n"
        ) + "".join("\n" + table.to_toml() for table in self.real_tees().values())

    # -- appraisal --------------------------------------------------------------------------------

    def verify(self, claims: Claims, *, now: datetime) -> None:
        """Appraise verified ``claims`` at ``now``; return only if this policy accepts them.

        Checks, each with its own code: simulated TEE allowed (``attestation.simulated_not_allowed``)
        and its root pinned (``attestation.untrusted_root``); measurement among the references
        (``attestation.measurement_mismatch``); debug allowed (``attestation.debug_not_allowed``);
        issued no more than 60 s in the future (``attestation.not_yet_valid``) and no longer than
        ``max_evidence_age_seconds`` ago (``attestation.expired``). Raises ``ValueError`` if ``now``
        is naive.
        """
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be a timezone-aware datetime")
        if not claims.simulated:
            reference = self.real_tees().get(claims.tee)
            if reference is None:
                raise AttestationError(
                    "attestation.no_reference_values",
                    f"the policy has no [{_TABLE}.{claims.tee}] table, so {claims.tee} evidence is refused",
                )
            reference.check(claims, now=now)
            self._check_freshness(claims, now)
            return
        if claims.simulated:
            if not self.allow_simulated:
                raise AttestationError(
                    "attestation.simulated_not_allowed",
                    "the evidence comes from the SIMULATED TEE, which protects nothing from the host",
                )
            if claims.root_fingerprint not in self.simulated_roots:
                raise AttestationError(
                    "attestation.untrusted_root",
                    f"simulated root {_short(claims.root_fingerprint)} is not pinned in simulated_roots",
                )
        if claims.measurement not in self.reference_measurements:
            expected = ", ".join(_short(m) for m in self.reference_measurements[:3])
            more = (
                f" and {len(self.reference_measurements) - 3} more"
                if len(self.reference_measurements) > 3
                else ""
            )
            raise AttestationError(
                "attestation.measurement_mismatch",
                f"enclave measurement {_short(claims.measurement)} is not a reference measurement "
                f"(expected {expected}{more})",
            )
        if claims.debug and not self.allow_debug:
            raise AttestationError(
                "attestation.debug_not_allowed",
                "the enclave runs in debug mode, so the host can read its memory",
            )
        self._check_freshness(claims, now)

    def _check_freshness(self, claims: Claims, now: datetime) -> None:
        now = now.astimezone(UTC)
        if claims.issued_at > now + timedelta(seconds=FUTURE_SKEW_SECONDS):
            raise AttestationError(
                "attestation.not_yet_valid",
                f"the evidence is issued at {claims.issued_at.isoformat()}, "
                f"in the future of {now.isoformat()}",
            )
        age = now - claims.issued_at
        if age > timedelta(seconds=self.max_evidence_age_seconds):
            raise AttestationError(
                "attestation.expired",
                f"the evidence is {int(age.total_seconds())} s old; the policy accepts at most "
                f"{self.max_evidence_age_seconds} s",
            )
