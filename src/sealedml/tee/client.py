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

    @classmethod
    def from_hello(cls, head: dict[str, Any]) -> EnclaveInfo:
        """Read an enclave's ``hello`` reply; a reply missing or mangling a field is ``enclave.protocol``."""
        try:
            return cls(
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


@dataclass(frozen=True)
class PeerRequest:
    """A joiner's answer to a member's challenge: its evidence (bundle JSON) and its own nonce."""

    evidence: bytes
    nonce: bytes


@dataclass(frozen=True)
class PeerTransfer:
    """A member's sealed transfer for one joiner, with the member's evidence and signature."""

    transfer: bytes
    evidence: bytes
    signature: str
    models: tuple[str, ...]


@dataclass(frozen=True)
class PeerImport:
    """What a joiner installed: the cluster's public keys, and model configs sealed to its platform."""

    sealed_configs: dict[str, bytes]
    hpke_public_key: bytes
    signing_public_key: bytes


class EnclaveClient:
    """Async wrapper over a :class:`Channel`; every method raises the enclave's ``SealedMLError``."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    async def _call(self, op: str, header: dict[str, Any], parts: Sequence[bytes] = ()) -> Answer:
        return await asyncio.wrap_future(self.channel.call(op, header, parts))

    async def hello(self) -> EnclaveInfo:
        """Return the enclave's identity."""
        head, _ = await self._call("hello", {})
        return EnclaveInfo.from_hello(head)

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

    # -- raw calls and peers (clusters of enclaves) -----------------------------------------------

    async def call(self, op: str, header: dict[str, Any], parts: Sequence[bytes] = ()) -> Answer:
        """Send one raw enclave-protocol request (a Ray worker relays these); returns ``(header, parts)``.

        The enclave's errors keep their ``SealedMLError`` code.
        """
        return await self._call(op, header, parts)

    async def peer_challenge(self) -> bytes:
        """Step 1 of a join, on a member: a fresh single-use nonce the member keeps for 60 s."""
        head, _ = await self._call("peer_challenge", {})
        return _hex_field(head, "nonce")

    async def peer_request(self, challenge: bytes) -> PeerRequest:
        """Step 2, on the joiner: its evidence for the member's ``challenge``, and its own nonce."""
        head, parts = await self._call("peer_request", {"nonce": challenge.hex()})
        return PeerRequest(evidence=_one(parts), nonce=_hex_field(head, "nonce"))

    async def peer_export(
        self, evidence: bytes, nonce: bytes, models: Sequence[str] | None = None
    ) -> PeerTransfer:
        """Step 3, on the member: verify the joiner's ``evidence``; seal the cluster identity to it.

        ``models`` limits the model configs sent (default: every loaded model).
        """
        header: dict[str, Any] = {"nonce": nonce.hex()}
        if models is not None:
            header["models"] = list(models)
        head, parts = await self._call("peer_export", header, (evidence,))
        if len(parts) != 2 or not isinstance(head.get("signature"), str):
            raise EnclaveError("enclave.protocol", "malformed peer_export reply")
        return PeerTransfer(
            transfer=parts[0],
            evidence=parts[1],
            signature=str(head["signature"]),
            models=tuple(str(m) for m in head.get("models") or ()),
        )

    async def peer_import(self, transfer: PeerTransfer) -> PeerImport:
        """Step 4, on the joiner: verify the member, install the cluster identity.

        Returns each transferred model's config sealed to this enclave's platform (for :meth:`load`).
        """
        head, parts = await self._call(
            "peer_import", {"signature": transfer.signature}, (transfer.transfer, transfer.evidence)
        )
        models = head.get("models")
        if not isinstance(models, list) or len(models) != len(parts):
            raise EnclaveError("enclave.protocol", "malformed peer_import reply")
        return PeerImport(
            sealed_configs=dict(zip((str(m) for m in models), parts, strict=True)),
            hpke_public_key=_hex_field(head, "hpke_public_key"),
            signing_public_key=_hex_field(head, "signing_public_key"),
        )

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

    # -- data-parallel training (sealedml.enclave.parallel_training) -------------------------------

    async def ptrain_begin(
        self,
        model_id: str,
        client: str,
        job_id: str,
        datasets: Sequence[str],
        request: bytes,
        blobs: Sequence[bytes],
        shards: int,
    ) -> tuple[str, int, bytes, list[bytes]]:
        """Start a sealed job data-parallel on this (coordinator) enclave.

        Returns ``(job token, rounds, round-1 weights, one task per shard)``; all bytes are
        ciphertext only cluster enclaves open.
        """
        header = {"model": model_id, "client": client, "job": job_id, "datasets": list(datasets)}
        head, parts = await self._call("ptrain_begin", {**header, "shards": shards}, (request, *blobs))
        token, rounds = head.get("ptrain"), head.get("rounds")
        if not isinstance(token, str) or not isinstance(rounds, int) or len(parts) != 1 + shards:
            raise EnclaveError("enclave.protocol", "malformed ptrain_begin reply")
        return token, rounds, parts[0], list(parts[1:])

    async def ptrain_round(
        self, token: str, shard: int, round_no: int, task: bytes, weights: bytes, blobs: Sequence[bytes] = ()
    ) -> bytes:
        """Train one shard for one round; returns its sealed update (hand ``blobs`` the first time)."""
        _, parts = await self._call(
            "ptrain_round", {"ptrain": token, "shard": shard, "round": round_no}, (task, weights, *blobs)
        )
        return _one(parts)

    async def ptrain_aggregate(
        self, token: str, round_no: int, updates: Sequence[bytes]
    ) -> tuple[bytes | None, TrainResult | None]:
        """Average one round's updates: ``(next weights, None)``, or ``(None, result)`` after the last."""
        head, parts = await self._call("ptrain_aggregate", {"ptrain": token, "round": round_no}, updates)
        if head.get("done"):
            return None, _train_result(head, parts)
        return _one(parts), None

    async def ptrain_abort(self, token: str) -> bool:
        """Forget a parallel job on its coordinator; returns whether it was running there."""
        head, _ = await self._call("ptrain_abort", {"ptrain": token})
        return bool(head.get("aborted"))


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


def _hex_field(head: dict[str, Any], name: str) -> bytes:
    try:
        return bytes.fromhex(head[name])
    except (KeyError, TypeError, ValueError) as exc:
        raise EnclaveError("enclave.protocol", f"the reply lacks a hex {name!r}") from exc


def _one(parts: list[bytes]) -> bytes:
    if len(parts) != 1:
        raise EnclaveError("enclave.protocol", "expected exactly one binary part")
    return parts[0]
