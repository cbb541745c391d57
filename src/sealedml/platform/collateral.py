"""DCAP collateral for the platform's SGX/TDX evidence, fetched from a PCCS (or Intel's PCS).

A DCAP quote alone cannot be judged: the verifier needs Intel's TCB info, QE identity and CRLs
for the platform's FMSPC. The enclave has no network, so the untrusted host fetches them and
attaches them to the evidence bundle it serves. This is safe: every piece is signed by Intel and
checked by the client's verifier; a host that withholds or swaps collateral only makes
verification fail (``attestation.collateral_missing`` / ``_invalid`` / ``_expired``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable

from sealedml.attestation.evidence.bundle import MAX_COLLATERAL_SIZE, EvidenceBundle
from sealedml.attestation.evidence.dcap_quote import parse_quote
from sealedml.errors import AttestationError

__all__ = ["CollateralSource", "Fetcher", "pccs_fetcher"]

log = logging.getLogger(__name__)

Fetcher = Callable[[bytes], Awaitable[bytes]]
"""Return the collateral JSON (dcap-qvl ``QuoteCollateralV3`` format) for a raw quote."""

DCAP_TEES = ("sgx", "tdx")


def pccs_fetcher(pccs_url: str) -> Fetcher:
    """Return a fetcher asking the PCCS (or PCS) at ``pccs_url`` through dcap-qvl."""
    import dcap_qvl

    async def fetch(quote: bytes) -> bytes:
        collateral = await dcap_qvl.get_collateral(pccs_url, quote)
        return str(collateral.to_json()).encode("utf-8")

    return fetch


class CollateralSource:
    """Attaches collateral to SGX/TDX evidence bundles, caching it per PCK certificate chain.

    Collateral is per platform (FMSPC), not per quote, and Intel refreshes it at most daily, so a
    cached copy is reused for ``ttl_seconds``.
    """

    def __init__(self, fetch: Fetcher | None, *, ttl_seconds: float = 3600.0) -> None:
        self._fetch = fetch
        self._ttl = ttl_seconds
        self._cache: dict[str, tuple[float, bytes]] = {}

    @property
    def enabled(self) -> bool:
        """Whether a PCCS is configured."""
        return self._fetch is not None

    async def attach(self, evidence: bytes) -> bytes:
        """Return ``evidence`` with collateral attached when it is an SGX/TDX bundle without any.

        Guarantees: other bundles come back byte for byte; a failed or oversized fetch is logged and
        the bundle is returned without collateral (the client's policy then refuses it by name).
        """
        if self._fetch is None:
            return evidence
        bundle = EvidenceBundle.from_json(evidence)
        if bundle.tee not in DCAP_TEES or bundle.collateral:
            return evidence
        try:
            key = hashlib.sha256(parse_quote(bundle.report).qe.cert_data).hexdigest()
        except AttestationError:
            return evidence  # a malformed quote: the client's verifier will say so
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            collateral = cached[1]
        else:
            try:
                collateral = await self._fetch(bundle.report)
            except Exception as exc:  # network and PCCS errors of any kind: serve the quote alone
                log.warning("could not fetch DCAP collateral: %s", type(exc).__name__)
                return evidence
            if not collateral or len(collateral) > MAX_COLLATERAL_SIZE:
                log.warning("the PCCS returned %d bytes of collateral; not attached", len(collateral))
                return evidence
            self._cache[key] = (time.monotonic(), collateral)
        return dataclasses.replace(bundle, collateral=collateral).to_json().encode("utf-8")
