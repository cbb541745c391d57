"""The host attaches Intel-signed DCAP collateral to SGX/TDX evidence; the client's verifier uses it."""

from __future__ import annotations

import asyncio

from attestation_vectors import at, read_vector
from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.attestation.verifier import verify_claims
from sealedml.platform.collateral import CollateralSource

QUOTE = read_vector("tdx", "dcapqvl_tdx_v4_quote.bin")
COLLATERAL = read_vector("tdx", "dcapqvl_tdx_v4_collateral.json")
NOW = at("2025-07-19T10:00:34Z")
POLICY = AppraisalPolicy(reference_measurements=("00" * 48,))


def bundle(tee: str = "tdx", report: bytes = QUOTE) -> bytes:
    return EvidenceBundle(
        tee=tee,
        report=report,
        signature=b"",
        certificates=(),
        hpke_public_key=b"h" * 32,
        signing_public_key=b"s" * 32,
        nonce=b"n" * 32,
    ).to_json().encode()


class CountingFetcher:
    def __init__(self, answer: bytes | Exception) -> None:
        self.answer, self.calls = answer, 0

    async def __call__(self, quote: bytes) -> bytes:
        self.calls += 1
        assert quote == QUOTE
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_attached_collateral_lets_the_client_evaluate_the_tcb() -> None:
    fetch = CountingFetcher(COLLATERAL)
    source = CollateralSource(fetch)
    served = asyncio.run(source.attach(bundle()))
    claims = verify_claims(EvidenceBundle.from_json(served), policy=POLICY, now=NOW)
    assert claims.tee == "tdx" and claims.tcb_status == "UpToDate"
    without = verify_claims(EvidenceBundle.from_json(bundle()), policy=POLICY, now=NOW)
    assert without.tcb_status is None  # the policy layer refuses this as attestation.collateral_missing
    asyncio.run(source.attach(bundle()))
    assert fetch.calls == 1  # cached per platform


def test_failures_serve_the_quote_alone_and_other_evidence_is_untouched() -> None:
    for answer in (ConnectionError("pccs down"), b"", b"x" * (256 * 1024 + 1)):
        original = bundle()
        assert asyncio.run(CollateralSource(CountingFetcher(answer)).attach(original)) == original
    simulated = bundle(tee="simulated", report=b"r")
    fetch = CountingFetcher(COLLATERAL)
    assert asyncio.run(CollateralSource(fetch).attach(simulated)) == simulated
    assert fetch.calls == 0
    assert asyncio.run(CollateralSource(None).attach(bundle())) == bundle()
    garbled = bundle(report=b"\x04\x00\x02\x00" + b"\x00" * 60)
    assert asyncio.run(CollateralSource(CountingFetcher(COLLATERAL)).attach(garbled)) == garbled
