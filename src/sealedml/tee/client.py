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


@dataclass(frozen=True)
class DatasetBudget:
    """A dataset's public privacy budget as the enclave reports it (no key, no schema)."""

    dataset: str
    generation: int
    epsilon_spent: float
    epsilon_total: float | None
    epsilon_remaining: float | None

    @classmethod
    def from_header(cls, data: object) -> DatasetBudget:
        """Parse the budget view of a reply header; raises ``enclave.protocol`` on a bad shape."""
        if not isinstance(data, dict):
            raise EnclaveError("enclave.protocol", "malformed dataset budget in the reply")
        try:
            total, remaining = data.get("epsilon_total"), data.get("epsilon_remaining")
            return cls(
                dataset=str(data["dataset"]),
                generation=int(data["generation"]),
                epsilon_spent=float(data.get("epsilon_spent") or 0.0),
                epsilon_total=None if total is None else float(total),
                epsilon_remaining=None if remaining is None else float(remaining),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise EnclaveError("enclave.protocol", "malformed dataset budget in the reply") from exc

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "dataset": self.dataset,
            "generation": self.generation,
            "epsilon_spent": self.epsilon_spent,
            "epsilon_total": self.epsilon_total,
            "epsilon_remaining": self.epsilon_remaining,
        }


@dataclass(frozen=True)
class ProvisionDatasetResult:
    """The enclave's answer to a data owner's key provisioning: sealed state and sealed answer."""

    sealed_state: bytes
    response: bytes
    generation: int


@dataclass(frozen=True)
class ApproveResult:
    """The enclave's acceptance of an owner's approval of one spec digest."""

    dataset: str
    spec_sha256: str
    response: bytes


@dataclass(frozen=True)
class TrainResult:
    """Everything a finished training job returns; all of it ciphertext or public metadata."""

    model: str
    job: str
    spec_sha256: str
    model_sha256: str
    model_blob_sha256: str
    published: bool
    grants: tuple[tuple[str, bytes], ...]
    phases: tuple[dict[str, Any], ...]
    budgets: tuple[DatasetBudget, ...]
    receipt: dict[str, Any]
    signature: str
    model_blob: bytes
    response: bytes
    model_config: bytes | None
    dataset_states: dict[str, bytes]


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

    # -- training ---------------------------------------------------------------------------------

    async def provision_dataset(
        self, dataset_id: str, client: str, request: bytes, blob: bytes
    ) -> ProvisionDatasetResult:
        """Hand a data owner's sealed dataset config and the encrypted dataset to the enclave."""
        head, parts = await self._call(
            "provision_dataset", {"dataset": dataset_id, "client": client}, (request, blob)
        )
        if len(parts) != 2:
            raise EnclaveError("enclave.protocol", "malformed provision_dataset reply")
        try:
            generation = int(head.get("generation", 0))
        except (TypeError, ValueError, OverflowError) as exc:
            raise EnclaveError("enclave.protocol", "malformed provision_dataset reply") from exc
        return ProvisionDatasetResult(sealed_state=parts[0], response=parts[1], generation=generation)

    async def load_dataset(self, dataset_id: str, sealed_state: bytes, blob: bytes) -> DatasetBudget:
        """Reload a dataset from its sealed state (after a restart); returns its budget."""
        head, _ = await self._call("load_dataset", {"dataset": dataset_id}, (sealed_state, blob))
        return DatasetBudget.from_header(head)

    async def unload_dataset(self, dataset_id: str) -> None:
        """Drop a dataset from enclave memory."""
        await self._call("unload_dataset", {"dataset": dataset_id})

    async def approve(self, dataset_id: str, request: bytes) -> ApproveResult:
        """Relay an owner's sealed approval of a job spec digest for one dataset."""
        head, parts = await self._call("approve", {"dataset": dataset_id}, (request,))
        digest = head.get("spec_sha256")
        if not isinstance(digest, str):
            raise EnclaveError("enclave.protocol", "malformed approve reply")
        return ApproveResult(dataset=str(head.get("dataset")), spec_sha256=digest, response=_one(parts))

    async def train(
        self,
        model_id: str,
        client: str,
        job_id: str,
        datasets: Sequence[str],
        request: bytes,
        blobs: Sequence[bytes],
    ) -> TrainResult:
        """Run a sealed training job on the given encrypted datasets (in the spec's order)."""
        head, parts = await self._call(
            "train",
            {"model": model_id, "client": client, "job": job_id, "datasets": list(datasets)},
            (request, *blobs),
        )
        return _train_result(head, parts)

    def close(self) -> None:
        """Stop the enclave."""
        self.channel.close()


def _train_result(head: dict[str, Any], parts: list[bytes]) -> TrainResult:
    """Parse a ``train`` reply; raises ``enclave.protocol`` if its layout or header is malformed."""
    layout = head.get("layout")
    if (
        not isinstance(layout, list)
        or len(layout) != len(parts)
        or not all(isinstance(n, str) for n in layout)
    ):
        raise EnclaveError("enclave.protocol", "the train reply's layout does not match its parts")
    named = dict(zip(layout, parts, strict=True))
    if "model_blob" not in named or "response" not in named:
        raise EnclaveError("enclave.protocol", "the train reply lacks the model blob or the response")
    try:
        grants = tuple((str(g["recipient"]), bytes.fromhex(g["grant"])) for g in head.get("grants") or [])
        phases = tuple(dict(p) for p in head.get("phases") or [])
        budgets = tuple(DatasetBudget.from_header(b) for b in head.get("datasets") or [])
        result = TrainResult(
            model=str(head["model"]),
            job=str(head["job"]),
            spec_sha256=str(head["spec_sha256"]),
            model_sha256=str(head["model_sha256"]),
            model_blob_sha256=str(head["model_blob_sha256"]),
            published=bool(head.get("published")),
            grants=grants,
            phases=phases,
            budgets=budgets,
            receipt=dict(head["receipt"]),
            signature=str(head["signature"]),
            model_blob=named["model_blob"],
            response=named["response"],
            model_config=named.get("model_config"),
            dataset_states={
                name.split(":", 1)[1]: part
                for name, part in named.items()
                if name.startswith("dataset_state:")
            },
        )
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise EnclaveError("enclave.protocol", "malformed train reply") from exc
    if result.published and result.model_config is None:
        raise EnclaveError("enclave.protocol", "a published model came without its sealed config")
    return result


def _one(parts: list[bytes]) -> bytes:
    if len(parts) != 1:
        raise EnclaveError("enclave.protocol", "expected exactly one binary part")
    return parts[0]
