"""How records are shown: attestation badges, short hashes, ages, amounts, receipt fields.

Pure functions from the platform's records to plain values for the templates; nothing here reads
a database or the enclave. Only public metadata is passed through: claims, measurements, names,
prices, digests, times.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sealedml.platform.market import ModelListing, ResourceRecord

__all__ = [
    "Badge",
    "ResourceView",
    "format_age",
    "format_credits",
    "format_ms",
    "format_when",
    "listing_badge",
    "receipt_fields",
    "resource_view",
    "short_hex",
]

MEASUREMENT_NOT_ALLOWED = "attestation.measurement_not_allowed"
"""The code a model listing shows when its enclave passes but runs a measurement not allowed for it."""

_CLAIM_LABELS = (
    ("tee", "TEE type"),
    ("simulated", "Simulated"),
    ("measurement", "Measurement"),
    ("debug", "Debug mode"),
    ("svn", "Security version"),
    ("tcb_status", "TCB status"),
    ("advisories", "Advisories"),
    ("platform_id", "Platform id"),
    ("root_fingerprint", "Root certificate (SHA-256)"),
    ("issued_at", "Evidence issued at"),
)


@dataclass(frozen=True)
class Badge:
    """An attestation verdict as a badge: green when ``passing``, else red with the failing ``code``."""

    passing: bool
    code: str | None
    reason: str
    simulated: bool

    @property
    def text(self) -> str:
        """``VERIFIED`` or ``FAILS: <code>``."""
        return "VERIFIED" if self.passing else f"FAILS: {self.code or 'attestation.unknown'}"


@dataclass(frozen=True)
class ResourceView:
    """A TEE resource with its badge, verified claims (label, value) and evidence age in seconds."""

    name: str
    tee: str
    measurement: str
    instance_id: str
    price_per_hour: int
    badge: Badge
    claims: tuple[tuple[str, str], ...]
    verified_at: datetime | None
    age_seconds: float | None


def _claim_text(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "—"
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value) or "none"
    return str(value)


def resource_view(resource: ResourceRecord, *, now: datetime | None = None) -> ResourceView:
    """Return how a TEE resource is shown: the verdict, the verified claims and the evidence age.

    Guarantees: the badge passes only if the platform's last check passed; claims are only the
    verified ones (none when the check failed); the raw report and report data are left out.
    """
    now = now or datetime.now(UTC)
    age = None if resource.verified_at is None else max(0.0, (now - resource.verified_at).total_seconds())
    reason = (
        "fresh evidence verified under the platform's policy"
        if resource.passing
        else (resource.error_message or "the enclave could not be attested")
    )
    badge = Badge(resource.passing, resource.error_code, reason, resource.simulated)
    claims = tuple(
        (label, _claim_text(resource.claims[key]))
        for key, label in _CLAIM_LABELS
        if resource.claims is not None and key in resource.claims
    )
    return ResourceView(
        name=resource.name,
        tee=resource.tee,
        measurement=resource.measurement,
        instance_id=resource.instance_id,
        price_per_hour=resource.price_per_hour,
        badge=badge,
        claims=claims,
        verified_at=resource.verified_at,
        age_seconds=age,
    )


def listing_badge(listing: ModelListing, resource: ResourceRecord) -> Badge:
    """Return a model listing's badge: its enclave's failure code, or a measurement the provider
    did not allow, or a pass."""
    if listing.attestation_passing:
        return Badge(True, None, listing.attestation_reason, resource.simulated)
    code = resource.error_code if not resource.passing else MEASUREMENT_NOT_ALLOWED
    return Badge(False, code, listing.attestation_reason, resource.simulated)


def short_hex(value: object, length: int = 16) -> str:
    """The first ``length`` characters of a digest followed by an ellipsis (whole if short)."""
    text = "" if value is None else str(value)
    return text if len(text) <= length else text[:length] + "…"


def format_when(value: object) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS UTC`` (``—`` for none); ISO strings are accepted."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if not isinstance(value, datetime):
        return str(value)
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_ms(value: int) -> str:
    """A Unix time in milliseconds as :func:`format_when` shows it."""
    return format_when(datetime.fromtimestamp(value / 1000, tz=UTC))


def format_age(seconds: float | None) -> str:
    """An age in words: ``12 s``, ``4 min``, ``3 h``, ``2 d`` (``unknown`` for none)."""
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{int(seconds)} s"
    if seconds < 90 * 60:
        return f"{int(seconds // 60)} min"
    if seconds < 36 * 3600:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


def format_credits(value: int) -> str:
    """A whole number of credits with thousands separators."""
    return f"{value:,}"


def receipt_fields(receipt: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every field of a signed receipt as ``(name, text)``, sorted by name (times made readable).

    Any receipt kind renders: unknown fields are shown as compact JSON.
    """
    fields: list[tuple[str, str]] = []
    for name in sorted(receipt):
        value = receipt[name]
        if name == "issued_at" and isinstance(value, int) and not isinstance(value, bool):
            try:
                text = format_ms(value) if value > 10**11 else format_when(datetime.fromtimestamp(value, UTC))
            except (OverflowError, ValueError, OSError):
                text = str(value)
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            text = str(value)
        else:
            text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        fields.append((name, text))
    return fields
