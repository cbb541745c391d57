"""Checking receipts: signed by the attested enclave, and describing exactly this job."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sealedml.attestation.claims import AttestationResult
from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.attestation.verifier import verify_evidence
from sealedml.crypto.envelope import canonical_json
from sealedml.crypto.signing import verify_signature
from sealedml.errors import ReceiptError


def verify_receipt(receipt: dict[str, Any], signature: str, attestation: AttestationResult) -> None:
    """Return only if ``receipt`` was signed by the enclave that ``attestation`` verified.

    Checks the Ed25519 signature with the attested signing key, and that the receipt names that
    key, the attested measurement and TEE type. Raises ``crypto.signature_invalid`` or
    ``receipt.mismatch``.
    """
    try:
        sig = bytes.fromhex(signature)
    except (ValueError, TypeError):
        raise ReceiptError("receipt.malformed", "receipt signature is not hex") from None
    verify_signature(attestation.signing_public_key, canonical_json(receipt), sig)
    expected = {
        "enclave_key": attestation.signing_public_key.hex(),
        "measurement": attestation.claims.measurement,
        "tee": attestation.claims.tee,
    }
    for name, value in expected.items():
        if receipt.get(name) != value:
            raise ReceiptError(
                "receipt.mismatch", f"receipt field {name!r} does not match the attested enclave"
            )


def check_job(receipt: dict[str, Any], *, request: bytes, response: bytes, **fields: object) -> None:
    """Return only if the receipt covers exactly these request/response bytes and field values."""
    checks: dict[str, object] = {
        "input_sha256": hashlib.sha256(request).hexdigest(),
        "output_sha256": hashlib.sha256(response).hexdigest(),
        **fields,
    }
    for name, value in checks.items():
        if receipt.get(name) != value:
            raise ReceiptError("receipt.mismatch", f"receipt field {name!r} does not describe this job")


@dataclass(frozen=True)
class ReceiptBundle:
    """A receipt with everything an auditor needs: signature, evidence and the challenge nonce."""

    receipt: dict[str, Any]
    signature: str
    evidence: EvidenceBundle
    ledger: dict[str, Any] | None = None
    """Where the transparency log proved it holds this receipt: leaf index and signed tree head."""

    def to_json(self) -> str:
        """Return the file form written by ``sealedml predict --receipt``."""
        data: dict[str, Any] = {
            "receipt": self.receipt,
            "signature": self.signature,
            "evidence": json.loads(self.evidence.to_json()),
        }
        if self.ledger is not None:
            data["ledger"] = self.ledger
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ReceiptBundle:
        """Parse the file form; raises ``receipt.malformed``."""
        try:
            data = json.loads(text)
            receipt, signature, evidence = data["receipt"], data["signature"], data["evidence"]
            if not isinstance(receipt, dict) or not isinstance(signature, str):
                raise TypeError("bad receipt shape")
        except (ValueError, KeyError, TypeError) as exc:
            raise ReceiptError("receipt.malformed", "not a SealedML receipt file") from exc
        ledger = data.get("ledger")
        if ledger is not None and not isinstance(ledger, dict):
            raise ReceiptError("receipt.malformed", "the receipt file's ledger entry is not an object")
        return cls(receipt, signature, EvidenceBundle.from_json(json.dumps(evidence)), ledger=ledger)

    @classmethod
    def load(cls, path: Path) -> ReceiptBundle:
        """Read a receipt file."""
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ReceiptError("receipt.malformed", f"cannot read {path}: {exc.strerror}") from exc

    def verify(self, policy: AppraisalPolicy) -> AttestationResult:
        """Verify the evidence under ``policy`` as of the receipt's time, then the receipt itself.

        Guarantees the job ran on an enclave that satisfied ``policy`` when the receipt was
        issued, and that the receipt is unaltered.
        """
        issued = self.receipt.get("issued_at")
        if not isinstance(issued, int):
            raise ReceiptError("receipt.malformed", "receipt has no issue time")
        result = verify_evidence(
            self.evidence,
            nonce=self.evidence.nonce,
            policy=policy,
            now=datetime.fromtimestamp(issued, tz=UTC),
        )
        verify_receipt(self.receipt, self.signature, result)
        return result
