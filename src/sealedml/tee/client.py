"""The typed, asynchronous API the platform uses to talk to an enclave over any :class:`Channel`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sealedml.errors import EnclaveError
from sealedml.tee.channel import Answer, Channel


@dataclass(frozen=True)
class EnclaveInfo:
    """An enclave instance's public identity. Not trustworthy until attested."""

    tee: str
    simulated: bool
    measurement: str
    hpke_public_key: bytes
    signing_public_key: bytes
    instance_id: str
    protocol: int


@dataclass(frozen=True)
class ProvisionResult:
    """The enclave's answer to a provider's key provisioning."""

    sealed_key: bytes
    response: bytes
    model_sha256: str
    receipt: dict[str, Any]
    signature: str


@dataclass(frozen=True)
class PredictResult:
    """The enclave's answer to a prediction: an opaque response and its signed receipt."""

    response: bytes
    receipt: dict[str, Any]
    signature: str
    rows: int
    usage: int


class EnclaveClient:
    """Async wrapper over a :class:`Channel`; every method raises the enclave's ``SealedMLError``."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    async def _call(self, op: str, header: dict[str, Any], parts: Sequence[bytes] = ()) -> Answer:
        return await asyncio.wrap_future(self.channel.call(op, header, parts))

    async def hello(self) -> EnclaveInfo:
        """Return the enclave's identity."""
        head, _ = await self._call("hello", {})
        try:
            return EnclaveInfo(
                tee=str(head["tee"]),
                simulated=bool(head["simulated"]),
                measurement=str(head["measurement"]),
                hpke_public_key=bytes.fromhex(head["hpke_public_key"]),
                signing_public_key=bytes.fromhex(head["signing_public_key"]),
                instance_id=str(head["instance_id"]),
                protocol=1,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise EnclaveError("enclave.protocol", "malformed hello reply") from exc

    async def evidence(self, nonce: bytes) -> bytes:
        """Return evidence (EvidenceBundle JSON) binding the enclave keys and ``nonce``."""
        _, parts = await self._call("evidence", {"nonce": nonce.hex()})
        return _one(parts)

    async def provision(self, model_id: str, client: str, request: bytes, blob: bytes) -> ProvisionResult:
        """Hand a provider's sealed key request and the encrypted model to the enclave."""
        head, parts = await self._call("provision", {"model": model_id, "client": client}, (request, blob))
        if len(parts) != 2:
            raise EnclaveError("enclave.protocol", "malformed provision reply")
        return ProvisionResult(
            sealed_key=parts[0],
            response=parts[1],
            model_sha256=str(head.get("model_sha256")),
            receipt=dict(head.get("receipt") or {}),
            signature=str(head.get("signature")),
        )

    async def load(self, model_id: str, sealed_key: bytes, blob: bytes, usage: dict[str, int]) -> None:
        """Reload a model from its sealed key (after an enclave restart)."""
        await self._call("load", {"model": model_id, "usage": usage}, (sealed_key, blob))

    async def predict(self, model_id: str, client: str, job_id: str, request: bytes) -> PredictResult:
        """Run a sealed prediction request."""
        head, parts = await self._call(
            "predict", {"model": model_id, "client": client, "job": job_id}, (request,)
        )
        return PredictResult(
            response=_one(parts),
            receipt=dict(head.get("receipt") or {}),
            signature=str(head.get("signature")),
            rows=int(head.get("rows", 0)),
            usage=int(head.get("usage", 0)),
        )

    async def unload(self, model_id: str) -> None:
        """Drop a model from enclave memory."""
        await self._call("unload", {"model": model_id})

    def close(self) -> None:
        """Stop the enclave."""
        self.channel.close()


def _one(parts: list[bytes]) -> bytes:
    if len(parts) != 1:
        raise EnclaveError("enclave.protocol", "expected exactly one binary part")
    return parts[0]
