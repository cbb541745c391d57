"""The enclave's request handlers: the only code that ever sees plaintext models, inputs or outputs.

``Enclave.handle(op, header, parts)`` is everything the host can ask. The host is untrusted, so
every field it supplies is checked against what the *sealed* request says: the operation and model
id are authenticated inside the HPKE envelope, request ids are accepted once within a freshness
window, and a model blob must have the digest its provider sealed to us.

Confidential training adds ``provision_dataset`` / ``load_dataset`` / ``unload_dataset`` (a data
owner's key, like a provider's), ``approve`` (an owner's Ed25519 signature over one job spec's
digest) and ``train`` (a sealed job spec; the model key goes only to the spec's recipients). The
heavy ML libraries are imported on the first training job, not at enclave start.

In a cluster (:mod:`sealedml.enclave.peers`) the enclave serves the cluster's identity: the keys
clients seal to and that sign receipts are taken over from an attested peer (``peer_challenge``,
``peer_request``, ``peer_export``, ``peer_import``); its *instance* keys, which only peers use,
never leave it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.report_data import bind_report_data
from sealedml.crypto.request import OpenedRequest, RecipientKey, seal_response
from sealedml.crypto.sealing import seal, unseal
from sealedml.crypto.signing import SigningKey, verify_signature
from sealedml.crypto.stream import decrypt_bytes
from sealedml.enclave import parallel_training, payload, peers
from sealedml.enclave.datasets import DatasetConfig, DatasetState, TrainingLimits, decrypt_dataset
from sealedml.enclave.models import (
    LoadedModel,
    ModelConfig,
    OutputPolicy,
    check_features,
    load_model,
    run_model,
)
from sealedml.enclave.receipts import build_receipt, build_train_receipt
from sealedml.errors import ClusterError, CryptoError, EnclaveError, InputError, ModelError, RequestError
from sealedml.training_spec import (
    MAX_DATASETS,
    JobSpec,
    approval_message,
    loads_json,
    parse_job_spec_json,
    spec_digest,
)

if TYPE_CHECKING:
    from sealedml.enclave.training import PhaseLog, TrainedModel

MODEL_CONTENT_TYPE = "model/onnx"
REQUEST_WINDOW_SECONDS = 600
CLOCK_SKEW_SECONDS = 60
DEFAULT_MAX_ROWS = 1_000_000
APPROVAL_TTL_SECONDS = 24 * 3600
MAX_APPROVALS = 10_000
MAX_FINISHED_JOBS = 10_000

Progress = Callable[[str, str], None]
"""Called with ``(job, phase)`` as a training job enters each phase."""


class Platform(Protocol):
    """What the enclave needs from its TEE platform: a sealing secret and signed reports."""

    tee: str
    simulated: bool

    @property
    def sealing_secret(self) -> bytes:
        """The platform-and-CPU-bound secret sealing keys derive from."""
        ...

    def evidence(
        self, *, measurement: str, report_data: bytes, now: float
    ) -> tuple[bytes, bytes, tuple[bytes, ...]]:
        """Return (report, signature, certificate chain DER leaf-first) binding ``report_data``."""
        ...


@dataclass(frozen=True)
class _Approval:
    """An owner's verified approval of one spec digest for one dataset, held in memory only."""

    approval_key: bytes
    received_at: int


@dataclass(frozen=True)
class Reply:
    """A handler's answer: header fields and binary parts."""

    header: dict[str, Any]
    parts: tuple[bytes, ...] = ()


class Enclave:
    """The enclave's state: its attested keys, loaded models and the replay window."""

    def __init__(
        self,
        *,
        platform: Platform,
        measurement: str,
        clock: Callable[[], float] = time.time,
        max_rows: int = DEFAULT_MAX_ROWS,
        training_limits: TrainingLimits | None = None,
        progress: Progress | None = None,
    ) -> None:
        self._platform = platform
        self.measurement = measurement
        self._clock = clock
        self._max_rows = max_rows
        self._identity = peers.Identity.generate()
        self._instance = peers.Identity.generate()
        self._joined = False
        self._identity_lock = threading.Lock()
        self._challenges = peers.Challenges(clock)
        self._peer_nonces = peers.Challenges(clock)
        self._own_claims: peers.OwnClaims | None = None
        self.instance_id = uuid.uuid4().hex
        self._models: dict[str, LoadedModel] = {}
        self._models_lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._seen_lock = threading.Lock()
        self._limits = training_limits or TrainingLimits()
        self._progress = progress
        self._datasets: dict[str, DatasetState] = {}
        self._reserved: dict[str, float] = {}
        self._approvals: dict[tuple[str, str], _Approval] = {}
        self._running: set[str] = set()
        self._finished: dict[str, int] = {}
        self._datasets_lock = threading.Lock()

    # -- dispatch ---------------------------------------------------------------------------------

    def handle(self, op: str, header: dict[str, Any], parts: list[bytes]) -> Reply:
        """Run one host request; raises a ``SealedMLError`` with a stable code on rejection."""
        handler = self._HANDLERS.get(op)
        if handler is None:
            raise EnclaveError("enclave.protocol", f"unknown operation {op!r}")
        return handler(self, header, parts)

    # -- identity ---------------------------------------------------------------------------------

    @property
    def _hpke(self) -> RecipientKey:
        """The HPKE key clients seal requests to (the cluster's once this enclave joined one)."""
        return self._identity.hpke

    @property
    def _signer(self) -> SigningKey:
        """The key that signs receipts (the cluster's once this enclave joined one)."""
        return self._identity.signer

    def info(self) -> dict[str, Any]:
        """Return the enclave's public identity (the same fields its evidence binds).

        ``hpke_public_key``/``signing_public_key`` are the served identity (the cluster's after
        ``peer_import``); ``joined`` says whether it is shared with peers.
        """
        identity = self._identity
        return {
            "tee": self._platform.tee,
            "simulated": self._platform.simulated,
            "measurement": self.measurement,
            "hpke_public_key": identity.hpke.public_bytes.hex(),
            "signing_public_key": identity.signer.public_bytes.hex(),
            "instance_id": self.instance_id,
            "joined": self._joined,
        }

    def _bundle(self, identity: peers.Identity, nonce: bytes) -> EvidenceBundle:
        """Evidence from this enclave's platform binding ``identity``'s public keys to ``nonce``."""
        hpke_public, signing_public = identity.public
        report_data = bind_report_data(hpke_public, signing_public, nonce)
        report, signature, chain = self._platform.evidence(
            measurement=self.measurement, report_data=report_data, now=self._clock()
        )
        return EvidenceBundle(
            tee=self._platform.tee,
            report=report,
            signature=signature,
            certificates=tuple(chain),
            hpke_public_key=hpke_public,
            signing_public_key=signing_public,
            nonce=nonce,
        )

    def _hello(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        return Reply(self.info())

    def _evidence(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        nonce = peers.parse_nonce(header.get("nonce"))
        return Reply({}, (self._bundle(self._identity, nonce).to_json().encode(),))

    # -- peers: mutual attestation and the cluster identity ---------------------------------------

    def _own(self) -> peers.OwnClaims:
        """This enclave's own TEE type, measurement, debug flag and root, read from its own evidence."""
        own = self._own_claims
        if own is None:
            bundle = self._bundle(self._instance, os.urandom(peers.NONCE_SIZE))
            own = self._own_claims = peers.own_claims(bundle, now=self._clock())
        return own

    def _peer_challenge(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        return Reply({"nonce": self._challenges.issue().hex()})

    def _peer_request(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        their_nonce = peers.parse_nonce(header.get("nonce"))
        bundle = self._bundle(self._instance, their_nonce)
        return Reply({"nonce": self._peer_nonces.issue().hex()}, (bundle.to_json().encode(),))

    def _peer_export(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        their_nonce = peers.parse_nonce(header.get("nonce"))
        (raw,) = _parts(parts, 1)
        wanted = header.get("models")
        if wanted is not None and (
            not isinstance(wanted, list) or not all(isinstance(m, str) for m in wanted)
        ):
            raise EnclaveError("enclave.protocol", "frame field 'models' must list model ids")
        bundle = peers.parse_bundle(raw)
        self._challenges.take(bundle.nonce)
        peers.verify_peer(bundle, nonce=bundle.nonce, own=self._own(), now=self._clock())
        with self._identity_lock:
            self._joined = True
            identity = self._identity
        with self._models_lock:
            chosen = {
                model_id: model.config.to_json()
                for model_id, model in self._models.items()
                if wanted is None or model_id in wanted
            }
        transfer = peers.seal_transfer(
            identity=identity, models=chosen, recipient=bundle.hpke_public_key, nonce=their_nonce
        )
        signature = self._instance.signer.sign(peers.transfer_message(transfer, their_nonce))
        mine = self._bundle(self._instance, their_nonce)
        return Reply(
            {"signature": signature.hex(), "models": sorted(chosen)},
            (transfer, mine.to_json().encode()),
        )

    def _peer_import(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        transfer, raw = _parts(parts, 2)
        bundle = peers.parse_bundle(raw)
        self._peer_nonces.take(bundle.nonce)
        peers.verify_peer(bundle, nonce=bundle.nonce, own=self._own(), now=self._clock())
        peers.check_signature(bundle.signing_public_key, transfer, bundle.nonce, header.get("signature"))
        opened = peers.open_transfer(transfer, instance=self._instance, nonce=bundle.nonce)
        configs = {model_id: ModelConfig.from_json(raw) for model_id, raw in opened.models.items()}
        with self._identity_lock:
            if self._joined and opened.identity.public != self._identity.public:
                raise ClusterError(
                    "cluster.peer_rejected",
                    "this enclave already serves another cluster identity; start a fresh worker to join",
                )
            if opened.identity.public != self._identity.public:
                self._identity = opened.identity
            self._joined = True
            hpke_public, signing_public = self._identity.public
        ids = sorted(configs)
        sealed = tuple(
            seal(
                platform_secret=self._platform.sealing_secret,
                measurement=self.measurement,
                label=f"model:{model_id}",
                plaintext=configs[model_id].to_json(),
            )
            for model_id in ids
        )
        return Reply(
            {
                "models": ids,
                "hpke_public_key": hpke_public.hex(),
                "signing_public_key": signing_public.hex(),
            },
            sealed,
        )

    # -- requests ---------------------------------------------------------------------------------

    def _open(self, envelope: bytes, *, op: str, model_id: str) -> OpenedRequest:
        """Open a sealed request and enforce op, model, freshness and single use."""
        opened = self._hpke.open_request(envelope)
        head = opened.header
        if head.op != op or head.model != model_id:
            raise RequestError(
                "request.invalid", f"request is for {head.op} on another model, not {op} on this one"
            )
        now = int(self._clock())
        if head.issued_at < now - REQUEST_WINDOW_SECONDS or head.issued_at > now + CLOCK_SKEW_SECONDS:
            raise RequestError("request.expired", "request is outside the freshness window")
        with self._seen_lock:
            if head.request_id in self._seen:
                raise RequestError("request.replayed", "this request was already processed")
            horizon = now - REQUEST_WINDOW_SECONDS
            if len(self._seen) > 10_000:
                self._seen = {k: v for k, v in self._seen.items() if v >= horizon}
            self._seen[head.request_id] = head.issued_at
        return opened

    def _decrypt_model(self, model_id: str, config: ModelConfig, blob: bytes) -> LoadedModel:
        if hashlib.sha256(blob).hexdigest() != config.model_blob_sha256:
            raise ModelError(
                "model.key_mismatch", "the stored model blob is not the one its provider provisioned"
            )
        onnx_bytes = decrypt_bytes(config.model_key, blob, expected_content_type=MODEL_CONTENT_TYPE)
        return load_model(model_id, config, onnx_bytes)

    def _provision(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        model_id, client = _str(header, "model"), _str(header, "client")
        request, blob = _parts(parts, 2)
        opened = self._open(request, op="provision", model_id=model_id)
        config = ModelConfig.from_json(opened.payload)
        loaded = self._decrypt_model(model_id, config, blob)
        sealed = seal(
            platform_secret=self._platform.sealing_secret,
            measurement=self.measurement,
            label=f"model:{model_id}",
            plaintext=config.to_json(),
        )
        with self._models_lock:
            self._models[model_id] = loaded
        answer = json.dumps(
            {
                "model": model_id,
                "model_sha256": loaded.model_sha256,
                "measurement": self.measurement,
                "input_columns": list(config.input_columns),
                "output_policy": config.output_policy.to_dict(),
            }
        ).encode()
        response = seal_response(
            response_key=opened.response_key, request_id=opened.header.request_id, payload=answer
        )
        receipt, signature = self._receipt(
            kind="provision",
            job=opened.header.request_id,
            model=loaded,
            request=request,
            response=response,
            client=client,
            rows=0,
            request_id=opened.header.request_id,
        )
        return Reply(
            {"model_sha256": loaded.model_sha256, "receipt": receipt, "signature": signature},
            (sealed, response),
        )

    def _load(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        model_id = _str(header, "model")
        sealed, blob = _parts(parts, 2)
        usage = header.get("usage") or {}
        if not isinstance(usage, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in usage.items()
        ):
            raise EnclaveError("enclave.protocol", "usage must map client ids to row counts")
        config = ModelConfig.from_json(
            unseal(
                platform_secret=self._platform.sealing_secret,
                measurement=self.measurement,
                label=f"model:{model_id}",
                blob=sealed,
            )
        )
        loaded = self._decrypt_model(model_id, config, blob)
        loaded.usage.update(usage)
        with self._models_lock:
            self._models[model_id] = loaded
        return Reply({"model_sha256": loaded.model_sha256})

    def _unload(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        with self._models_lock:
            self._models.pop(_str(header, "model"), None)
        return Reply({})

    def _predict(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        model_id, client, job = _str(header, "model"), _str(header, "client"), _str(header, "job")
        (request,) = _parts(parts, 1)
        with self._models_lock:
            model = self._models.get(model_id)
        if model is None:
            raise ModelError("model.not_provisioned", "the model is not loaded in this enclave")
        opened = self._open(request, op="predict", model_id=model_id)
        meta, arrays = payload.unpack(opened.payload)
        features = check_features(model, meta.get("columns"), arrays.get("features"), self._max_rows)
        rows = int(features.shape[0])
        if opened.header.rows != rows:
            raise RequestError(
                "request.invalid",
                f"the request declares {opened.header.rows} rows but carries {rows}: "
                "the declared count is what the platform meters",
            )
        usage = model.reserve(client, rows)
        try:
            outputs = run_model(model, features)
        except BaseException:
            model.reserve(client, -rows)
            raise
        body = payload.pack(
            {
                "job": job,
                "model": model_id,
                "rows": rows,
                "output_policy": model.config.output_policy.to_dict(),
            },
            outputs,
        )
        response = seal_response(
            response_key=opened.response_key, request_id=opened.header.request_id, payload=body
        )
        receipt, signature = self._receipt(
            kind="predict",
            job=job,
            model=model,
            request=request,
            response=response,
            client=client,
            rows=rows,
            request_id=opened.header.request_id,
        )
        return Reply({"receipt": receipt, "signature": signature, "rows": rows, "usage": usage}, (response,))

    # -- datasets ---------------------------------------------------------------------------------

    def _seal_dataset(self, state: DatasetState) -> bytes:
        return seal(
            platform_secret=self._platform.sealing_secret,
            measurement=self.measurement,
            label=f"dataset:{state.dataset_id}",
            plaintext=state.to_json(),
        )

    def _provision_dataset(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        dataset_id, _client = _str(header, "dataset"), _str(header, "client")
        request, blob = _parts(parts, 2)
        opened = self._open(request, op="provision_dataset", model_id=dataset_id)
        config = DatasetConfig.from_json(opened.payload)
        table = decrypt_dataset(config, blob, self._limits)
        state = DatasetState(dataset_id=dataset_id, config=config)
        sealed = self._seal_dataset(state)
        with self._datasets_lock:
            self._datasets[dataset_id] = state
        answer = json.dumps(
            {
                "dataset": dataset_id,
                "rows": table.rows,
                "columns": len(table.columns),
                "schema_sha256": table.schema_sha256,
                "content_type": table.content_type,
                "epsilon_total": config.epsilon_total,
                "measurement": self.measurement,
            }
        ).encode()
        response = seal_response(
            response_key=opened.response_key, request_id=opened.header.request_id, payload=answer
        )
        return Reply({"dataset": dataset_id, "generation": 0}, (sealed, response))

    def _load_dataset(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        dataset_id = _str(header, "dataset")
        sealed, blob = _parts(parts, 2)
        state = DatasetState.from_json(
            unseal(
                platform_secret=self._platform.sealing_secret,
                measurement=self.measurement,
                label=f"dataset:{dataset_id}",
                blob=sealed,
            ),
            dataset_id,
        )
        if hashlib.sha256(blob).hexdigest() != state.config.dataset_blob_sha256:
            raise InputError(
                "input.blob_mismatch", "the stored dataset blob is not the one its owner provisioned"
            )
        with self._datasets_lock:
            current = self._datasets.get(dataset_id)
            if current is not None and current != state:
                raise RequestError(
                    "request.stale_state",
                    f"this enclave holds dataset {dataset_id!r} at budget generation {current.generation}; "
                    f"the sealed state offered is generation {state.generation}: hand back the latest one",
                )
            self._datasets[dataset_id] = state
        return Reply(_budget(state))

    def _unload_dataset(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        with self._datasets_lock:
            self._datasets.pop(_str(header, "dataset"), None)
        return Reply({})

    # -- approvals --------------------------------------------------------------------------------

    def _approve(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        dataset_id = _str(header, "dataset")
        (request,) = _parts(parts, 1)
        opened = self._open(request, op="approve", model_id=dataset_id)
        try:
            data = loads_json(opened.payload)
            digest, signature = data["spec_sha256"], bytes.fromhex(data["signature"])
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise InputError("input.malformed", "an approval is {spec_sha256, signature (hex)}") from exc
        message = approval_message(dataset_id, digest) if isinstance(digest, str) else b""
        with self._datasets_lock:
            state = self._datasets.get(dataset_id)
        if state is None:
            raise _not_provisioned([dataset_id])
        try:
            verify_signature(state.config.approval_public_key, message, signature)
        except CryptoError:
            raise RequestError(
                "request.approval_invalid",
                f"the approval is not signed by the approval key of dataset {dataset_id!r}'s owner",
            ) from None
        now = int(self._clock())
        with self._datasets_lock:
            if len(self._approvals) >= MAX_APPROVALS:
                horizon = now - APPROVAL_TTL_SECONDS
                self._approvals = {k: v for k, v in self._approvals.items() if v.received_at >= horizon}
                if len(self._approvals) >= MAX_APPROVALS:
                    raise EnclaveError("enclave.busy", "too many pending approvals; retry later")
            self._approvals[(digest, dataset_id)] = _Approval(state.config.approval_public_key, now)
        answer = json.dumps(
            {
                "dataset": dataset_id,
                "spec_sha256": digest,
                "approved": True,
                "expires_at": now + APPROVAL_TTL_SECONDS,
            }
        ).encode()
        response = seal_response(
            response_key=opened.response_key, request_id=opened.header.request_id, payload=answer
        )
        return Reply({"dataset": dataset_id, "spec_sha256": digest}, (response,))

    # -- training ---------------------------------------------------------------------------------

    def _begin_job(self, spec: JobSpec, digest: str) -> list[DatasetState]:
        """Check provisioning, approvals, budgets and the model id; reserve the job's epsilon."""
        now = int(self._clock())
        epsilon = spec.dp_epsilon or 0.0
        with self._datasets_lock:
            if digest in self._running or digest in self._finished:
                raise RequestError(
                    "request.replayed", "a job with exactly this spec already ran or is running here"
                )
            absent = [d for d in spec.datasets if d not in self._datasets]
            if absent:
                raise _not_provisioned(absent)
            states = [self._datasets[d] for d in spec.datasets]
            missing = []
            for state in states:
                approval = self._approvals.get((digest, state.dataset_id))
                if (
                    approval is None
                    or approval.approval_key != state.config.approval_public_key
                    or approval.received_at < now - APPROVAL_TTL_SECONDS
                ):
                    missing.append(state.dataset_id)
            if missing:
                raise RequestError(
                    "request.approvals_missing",
                    f"the owners of {missing} have not approved job spec {digest}: each dataset owner "
                    "must sign this exact spec digest (op approve) before the job can start",
                )
            for state in states:
                if spec.dp_epsilon is None and state.config.epsilon_total is not None:
                    raise InputError(
                        "input.dp_required",
                        f"dataset {state.dataset_id!r} has a privacy budget: "
                        "only jobs with dp_epsilon may use it",
                    )
                reserved = self._reserved.get(state.dataset_id, 0.0)
                if spec.dp_epsilon is not None and not state.can_spend(epsilon, reserved):
                    left = (state.epsilon_remaining or 0.0) - reserved
                    raise InputError(
                        "input.privacy_budget_exhausted",
                        f"dataset {state.dataset_id!r} has epsilon {max(left, 0.0):.6g} of "
                        f"{state.config.epsilon_total:.6g} left; this job needs {epsilon:.6g}",
                    )
            if spec.publish:
                with self._models_lock:
                    if spec.model in self._models:
                        raise InputError(
                            "input.conflict",
                            f"a model {spec.model!r} is already loaded: publish under a new id",
                        )
            for state in states:
                self._reserved[state.dataset_id] = self._reserved.get(state.dataset_id, 0.0) + epsilon
            self._running.add(digest)
        return states

    def _release(self, spec: JobSpec, digest: str) -> None:
        """Undo :meth:`_begin_job`'s reservation (caller holds the datasets lock)."""
        epsilon = spec.dp_epsilon or 0.0
        for dataset_id in spec.datasets:
            left = self._reserved.get(dataset_id, 0.0) - epsilon
            if left > 1e-12:
                self._reserved[dataset_id] = left
            else:
                self._reserved.pop(dataset_id, None)
        self._running.discard(digest)

    def _abort_job(self, spec: JobSpec, digest: str) -> None:
        with self._datasets_lock:
            self._release(spec, digest)

    def _commit_job(
        self, spec: JobSpec, digest: str, states: list[DatasetState], model: LoadedModel | None
    ) -> list[DatasetState]:
        """Spend the budget, consume the approvals and publish the model; all or nothing."""
        epsilon = spec.dp_epsilon
        with self._datasets_lock:
            if model is not None:
                with self._models_lock:
                    if spec.model in self._models:
                        self._release(spec, digest)
                        raise InputError(
                            "input.conflict",
                            f"a model {spec.model!r} was loaded meanwhile: publish under a new id",
                        )
                    self._models[spec.model] = model
            self._release(spec, digest)
            updated = []
            for state in states:
                current = self._datasets.get(state.dataset_id)
                base = current if current is not None and current.config == state.config else state
                new = base.spend(epsilon) if epsilon is not None else base
                if epsilon is not None and base is current:
                    self._datasets[state.dataset_id] = new
                updated.append(new)
                self._approvals.pop((digest, state.dataset_id), None)
            self._finished[digest] = int(self._clock())
            if len(self._finished) > MAX_FINISHED_JOBS:
                oldest = sorted(self._finished, key=self._finished.__getitem__)[: len(self._finished) // 2]
                for key in oldest:
                    del self._finished[key]
        return updated

    def _open_train(
        self, model_id: str, header: dict[str, Any], parts: list[bytes]
    ) -> tuple[OpenedRequest, JobSpec, bytes, list[bytes]]:
        """Open the sealed ``train`` request of ``train`` or ``ptrain_begin`` and check the host's routing.

        Guarantees: the request is fresh, used once and sealed for op ``train`` and ``model_id``; the
        host routed exactly the model and the datasets (in order) its sealed spec names, one blob per
        dataset. Returns the opened request, its spec, the request envelope and the dataset blobs.
        """
        routed = header.get("datasets")
        if (
            not isinstance(routed, list)
            or not 0 < len(routed) <= MAX_DATASETS
            or not all(isinstance(d, str) for d in routed)
        ):
            raise EnclaveError("enclave.protocol", "frame field 'datasets' must list the job's dataset ids")
        if len(parts) != 1 + len(routed):
            raise EnclaveError(
                "enclave.protocol", f"expected {1 + len(routed)} binary parts, got {len(parts)}"
            )
        request, blobs = parts[0], parts[1:]
        opened = self._open(request, op="train", model_id=model_id)
        spec = parse_job_spec_json(opened.payload)
        if spec.model != model_id or list(spec.datasets) != routed:
            raise RequestError(
                "request.invalid",
                "the host routed another model id or other datasets than the sealed spec names",
            )
        return opened, spec, request, blobs

    def _train(self, header: dict[str, Any], parts: list[bytes]) -> Reply:
        model_id, client, job = _str(header, "model"), _str(header, "client"), _str(header, "job")
        opened, spec, request, blobs = self._open_train(model_id, header, parts)
        digest = spec_digest(spec)

        from sealedml.enclave import training  # the ML stack loads with the first job

        states = self._begin_job(spec, digest)
        progress = self._progress
        log = training.PhaseLog(None if progress is None else (lambda phase: progress(job, phase)))
        try:
            trained = training.train_job(spec, states, blobs, self._limits, log)
        except BaseException:
            self._abort_job(spec, digest)
            raise
        return self._finish_training(
            spec=spec,
            digest=digest,
            states=states,
            trained=trained,
            log=log,
            job=job,
            client=client,
            request=request,
            request_id=opened.header.request_id,
            response_key=opened.response_key,
        )

    def _finish_training(
        self,
        *,
        spec: JobSpec,
        digest: str,
        states: list[DatasetState],
        trained: TrainedModel,
        log: PhaseLog,
        job: str,
        client: str,
        request: bytes,
        request_id: str,
        response_key: bytes,
    ) -> Reply:
        """Package, publish and commit a job begun with :meth:`_begin_job`; return its signed ``train`` reply.

        Shared by single-enclave ``train`` and the last ``ptrain_aggregate``. Guarantees: if packaging or
        publishing fails the job's reservation is released and nothing is committed; otherwise the model
        is published (if the spec asks), the budgets spent and the approvals consumed all at once, and
        the reply carries the response sealed to the requester, the train receipt signed over it and the
        parts named by its ``layout``: ``model_blob``, ``response``, then ``model_config`` if published
        and one ``dataset_state:<id>`` per dataset for a DP job.
        """
        from sealedml.enclave import training

        model_id = spec.model
        try:
            packaged = training.package_model(trained, spec, digest, log)
            loaded: LoadedModel | None = None
            sealed_config = b""
            if spec.publish:
                config = ModelConfig(
                    model_key=packaged.model_key,
                    model_blob_sha256=packaged.model_blob_sha256,
                    input_columns=trained.feature_columns,
                    output_policy=OutputPolicy.from_dict(spec.serving.get("output_policy")),
                    query_budget=spec.serving.get("query_budget"),
                )
                loaded = load_model(model_id, config, trained.onnx_bytes)
                sealed_config = seal(
                    platform_secret=self._platform.sealing_secret,
                    measurement=self.measurement,
                    label=f"model:{model_id}",
                    plaintext=config.to_json(),
                )
        except BaseException:
            self._abort_job(spec, digest)
            raise
        updated = self._commit_job(spec, digest, states, loaded)

        budgets = [_budget(state) for state in updated]
        phases = [p.to_dict() for p in log.phases]
        answer = json.dumps(
            {
                "job": job,
                "model": model_id,
                "spec_sha256": digest,
                "model_sha256": trained.model_sha256,
                "model_blob_sha256": packaged.model_blob_sha256,
                "feature_columns": list(trained.feature_columns),
                "metrics": trained.metrics,
                "phases": phases,
                "recipients": list(spec.recipients),
                "published": spec.publish,
                "epsilon_spent": spec.dp_epsilon,
                "datasets": budgets,
            },
            allow_nan=False,
        ).encode()
        response = seal_response(response_key=response_key, request_id=request_id, payload=answer)
        receipt, signature = build_train_receipt(
            self._signer,
            job=job,
            request_id=request_id,
            model_id=model_id,
            model_sha256=trained.model_sha256,
            model_blob_sha256=packaged.model_blob_sha256,
            spec_sha256=digest,
            datasets=[
                {**budget, "blob_sha256": state.config.dataset_blob_sha256}
                for budget, state in zip(budgets, updated, strict=True)
            ],
            recipients=list(spec.recipients),
            published=spec.publish,
            metrics=trained.metrics,
            epsilon_spent=spec.dp_epsilon,
            request=request,
            response=response,
            client=client,
            measurement=self.measurement,
            tee=self._platform.tee,
            issued_at=int(self._clock()),
        )
        layout = ["model_blob", "response"]
        out_parts = [packaged.blob, response]
        if spec.publish:
            layout.append("model_config")
            out_parts.append(sealed_config)
        if spec.dp_epsilon is not None:
            for state in updated:
                layout.append(f"dataset_state:{state.dataset_id}")
                out_parts.append(self._seal_dataset(state))
        return Reply(
            {
                "model": model_id,
                "job": job,
                "spec_sha256": digest,
                "model_sha256": trained.model_sha256,
                "model_blob_sha256": packaged.model_blob_sha256,
                "published": spec.publish,
                "grants": [{"recipient": r, "grant": g.hex()} for r, g in packaged.grants],
                "phases": phases,
                "datasets": budgets,
                "receipt": receipt,
                "signature": signature,
                "layout": layout,
            },
            tuple(out_parts),
        )

    def _receipt(
        self,
        *,
        kind: str,
        job: str,
        model: LoadedModel,
        request: bytes,
        response: bytes,
        client: str,
        rows: int,
        request_id: str,
    ) -> tuple[dict[str, Any], str]:
        return build_receipt(
            self._signer,
            kind=kind,
            job=job,
            request_id=request_id,
            model_id=model.model_id,
            model_sha256=model.model_sha256,
            model_blob_sha256=model.config.model_blob_sha256,
            request=request,
            response=response,
            client=client,
            rows=rows,
            measurement=self.measurement,
            tee=self._platform.tee,
            issued_at=int(self._clock()),
        )

    _HANDLERS: ClassVar[dict[str, Callable[[Enclave, dict[str, Any], list[bytes]], Reply]]] = {
        "hello": _hello,
        "evidence": _evidence,
        "peer_challenge": _peer_challenge,
        "peer_request": _peer_request,
        "peer_export": _peer_export,
        "peer_import": _peer_import,
        "provision": _provision,
        "load": _load,
        "unload": _unload,
        "predict": _predict,
        "provision_dataset": _provision_dataset,
        "load_dataset": _load_dataset,
        "unload_dataset": _unload_dataset,
        "approve": _approve,
        "train": _train,
        # data-parallel training (ptrain_*): a light module that defers its ML imports to the first job
        **parallel_training.HANDLERS,
    }


def _str(header: dict[str, Any], name: str) -> str:
    value = header.get(name)
    if not isinstance(value, str) or not value or len(value) > 128:
        raise EnclaveError("enclave.protocol", f"frame field {name!r} is missing or invalid")
    return value


def _not_provisioned(datasets: list[str]) -> InputError:
    return InputError(
        "input.dataset_not_provisioned",
        f"dataset(s) {datasets} are not loaded in this enclave: provision them, or load their sealed state",
    )


def _budget(state: DatasetState) -> dict[str, Any]:
    """The public budget view of a dataset state (no key, no schema)."""
    return {
        "dataset": state.dataset_id,
        "generation": state.generation,
        "epsilon_spent": state.epsilon_spent,
        "epsilon_total": state.config.epsilon_total,
        "epsilon_remaining": state.epsilon_remaining,
    }


def _parts(parts: list[bytes], count: int) -> list[bytes]:
    if len(parts) != count:
        raise EnclaveError("enclave.protocol", f"expected {count} binary parts, got {len(parts)}")
    return parts


__all__ = ["Enclave", "Platform", "Reply"]
