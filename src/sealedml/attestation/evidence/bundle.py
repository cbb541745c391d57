"""The evidence bundle: what an enclave's platform serves to a client that asks for attestation.

A bundle is an untrusted container. Nothing in it is believed until
:func:`sealedml.attestation.verifier.verify_evidence` has checked it; this module only guarantees
that every :class:`EvidenceBundle` object is *well-formed* (types, shapes and sizes are bounded),
so later checks never see surprising input.

Wire form (version 1): canonical JSON, byte strings in standard padded base64::

    {"certificates":[b64 DER, leaf first...],"hpke_public_key":b64,"nonce":b64,"report":b64,
     "signature":b64,"signing_public_key":b64,"tee":"simulated","version":1}

plus an optional ``"collateral": b64`` member (omitted when empty). Per format:

- ``simulated``: report and detached signature, certificates (signer, platform CA, root);
- ``sev-snp``: the 1184-byte ATTESTATION_REPORT (its signature is inside, so ``signature`` is
  empty), certificates VCEK/VLEK, ASK/ASVK, ARK;
- ``tdx`` / ``sgx``: the DCAP quote (signature and PCK chain inside, so both fields are empty),
  and ``collateral``: the UTF-8 JSON of the quote's collateral (TCB info, QE identity, CRLs).

This module uses only the standard library; the enclave imports it to build bundles.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from sealedml import safejson
from sealedml.attestation.report_data import KEY_LENGTH, NONCE_MAX_LENGTH, NONCE_MIN_LENGTH
from sealedml.errors import AttestationError

__all__ = [
    "BUNDLE_VERSION",
    "MAX_BUNDLE_JSON",
    "MAX_CERTIFICATES",
    "MAX_CERTIFICATE_SIZE",
    "MAX_COLLATERAL_SIZE",
    "MAX_REPORT_SIZE",
    "MAX_SIGNATURE_SIZE",
    "EvidenceBundle",
]

BUNDLE_VERSION = 1
MAX_REPORT_SIZE = 64 * 1024
MAX_SIGNATURE_SIZE = 1024
MAX_CERTIFICATES = 8
MAX_CERTIFICATE_SIZE = 16 * 1024
MAX_COLLATERAL_SIZE = 256 * 1024
MAX_BUNDLE_JSON = 1024 * 1024
"""Upper bound on the JSON text; comfortably above the largest well-formed bundle."""

_TEE_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_OPTIONAL_FIELDS = frozenset({"collateral"})
_FIELDS = frozenset(
    {
        "version",
        "tee",
        "report",
        "signature",
        "certificates",
        "hpke_public_key",
        "signing_public_key",
        "nonce",
    }
)


def _malformed(message: str) -> AttestationError:
    return AttestationError("attestation.malformed", message)


def _check_bytes(name: str, value: object, *, low: int, high: int) -> None:
    if not isinstance(value, bytes):
        raise _malformed(f"evidence field {name!r} must be bytes")
    if not low <= len(value) <= high:
        size = f"{low} bytes" if low == high else f"{low}..{high} bytes"
        raise _malformed(f"evidence field {name!r} must be {size}, got {len(value)}")


@dataclass(frozen=True)
class EvidenceBundle:
    """Evidence plus the enclave public keys it claims to bind. Every instance is well-formed.

    - ``tee``: evidence format (``"simulated"``, ``"sev-snp"``, ``"tdx"`` or ``"sgx"``);
    - ``report``: the signed report bytes, exactly as signed (at most 64 KiB);
    - ``signature``: the platform's signature over ``report`` (empty when the report embeds it);
    - ``certificates``: DER certificates, leaf first (0..8, each at most 16 KiB; none when the
      report embeds its chain, as DCAP quotes do);
    - ``hpke_public_key`` / ``signing_public_key``: the enclave's raw 32-byte X25519 / Ed25519 keys;
    - ``nonce``: an *unauthenticated* echo of the client's challenge (16..64 bytes), used only to
      report ``attestation.nonce_mismatch`` precisely; freshness rests on ``report_data``;
    - ``collateral``: vendor collateral the verifier needs besides the report (at most 256 KiB).
    """

    tee: str
    report: bytes
    signature: bytes
    certificates: tuple[bytes, ...]
    hpke_public_key: bytes
    signing_public_key: bytes
    nonce: bytes
    collateral: bytes = b""

    def __post_init__(self) -> None:
        """Reject any ill-formed field with ``attestation.malformed``; lists become tuples."""
        if isinstance(self.certificates, list):
            object.__setattr__(self, "certificates", tuple(self.certificates))
        if not isinstance(self.tee, str) or not _TEE_RE.fullmatch(self.tee):
            raise _malformed("evidence field 'tee' must be a short lowercase identifier")
        _check_bytes("report", self.report, low=1, high=MAX_REPORT_SIZE)
        _check_bytes("signature", self.signature, low=0, high=MAX_SIGNATURE_SIZE)
        if not isinstance(self.certificates, tuple) or len(self.certificates) > MAX_CERTIFICATES:
            raise _malformed(f"evidence must carry 0..{MAX_CERTIFICATES} certificates")
        for index, der in enumerate(self.certificates):
            _check_bytes(f"certificates[{index}]", der, low=1, high=MAX_CERTIFICATE_SIZE)
        _check_bytes("hpke_public_key", self.hpke_public_key, low=KEY_LENGTH, high=KEY_LENGTH)
        _check_bytes("signing_public_key", self.signing_public_key, low=KEY_LENGTH, high=KEY_LENGTH)
        _check_bytes("nonce", self.nonce, low=NONCE_MIN_LENGTH, high=NONCE_MAX_LENGTH)
        _check_bytes("collateral", self.collateral, low=0, high=MAX_COLLATERAL_SIZE)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready wire form (version 1, byte strings base64-encoded)."""

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode("ascii")

        wire: dict[str, Any] = {
            "version": BUNDLE_VERSION,
            "tee": self.tee,
            "report": b64(self.report),
            "signature": b64(self.signature),
            "certificates": [b64(der) for der in self.certificates],
            "hpke_public_key": b64(self.hpke_public_key),
            "signing_public_key": b64(self.signing_public_key),
            "nonce": b64(self.nonce),
        }
        if self.collateral:
            wire["collateral"] = b64(self.collateral)
        return wire

    def to_json(self) -> str:
        """Return the canonical JSON wire form; ``from_json(b.to_json()) == b`` always holds."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> EvidenceBundle:
        """Parse the wire form, bounding every size before allocating more.

        Guarantees: returns a well-formed bundle or raises ``AttestationError("attestation.malformed")``
        and never any other exception type, whatever the input. Unknown or missing fields, a
        version other than 1, non-canonical base64 and duplicate JSON keys are all rejected.
        """
        if isinstance(text, bytes):
            if len(text) > MAX_BUNDLE_JSON:
                raise _malformed(f"evidence is larger than {MAX_BUNDLE_JSON} bytes")
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise _malformed("evidence is not UTF-8") from None
        if not isinstance(text, str):
            raise _malformed("evidence must be JSON text")
        if len(text) > MAX_BUNDLE_JSON:
            raise _malformed(f"evidence is larger than {MAX_BUNDLE_JSON} bytes")
        try:
            data = safejson.loads(text, max_depth=8, object_pairs_hook=_no_duplicates)
        except (ValueError, RecursionError):
            raise _malformed("evidence is not valid JSON") from None
        if not isinstance(data, dict):
            raise _malformed("evidence must be a JSON object")
        keys = set(data)
        if not _FIELDS <= keys <= _FIELDS | _OPTIONAL_FIELDS:
            unknown, missing = sorted(keys - _FIELDS - _OPTIONAL_FIELDS), sorted(_FIELDS - keys)
            raise _malformed(
                f"evidence fields do not match version 1 (unknown: {unknown}, missing: {missing})"
            )
        version = data["version"]
        if type(version) is not int or version != BUNDLE_VERSION:
            raise _malformed(f"unsupported evidence bundle version {version!r}")
        certificates = data["certificates"]
        if not isinstance(certificates, list) or len(certificates) > MAX_CERTIFICATES:
            raise _malformed(f"evidence must carry 0..{MAX_CERTIFICATES} certificates")
        tee = data["tee"]
        if not isinstance(tee, str):
            raise _malformed("evidence field 'tee' must be a string")
        return cls(
            tee=tee,
            report=_b64("report", data["report"], MAX_REPORT_SIZE),
            signature=_b64("signature", data["signature"], MAX_SIGNATURE_SIZE),
            certificates=tuple(
                _b64(f"certificates[{i}]", der, MAX_CERTIFICATE_SIZE) for i, der in enumerate(certificates)
            ),
            hpke_public_key=_b64("hpke_public_key", data["hpke_public_key"], KEY_LENGTH),
            signing_public_key=_b64("signing_public_key", data["signing_public_key"], KEY_LENGTH),
            nonce=_b64("nonce", data["nonce"], NONCE_MAX_LENGTH),
            collateral=(
                _b64("collateral", data["collateral"], MAX_COLLATERAL_SIZE) if "collateral" in data else b""
            ),
        )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _b64(name: str, value: object, max_size: int) -> bytes:
    """Decode strict, canonical, padded base64, refusing text that would decode above ``max_size``."""
    if not isinstance(value, str):
        raise _malformed(f"evidence field {name!r} must be a base64 string")
    if len(value) > 4 * ((max_size + 2) // 3):
        raise _malformed(f"evidence field {name!r} is larger than {max_size} bytes")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise _malformed(f"evidence field {name!r} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != value:
        raise _malformed(f"evidence field {name!r} is not canonical base64")
    return raw
