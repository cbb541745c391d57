"""Data-parallel training across the attested enclaves of a cluster (synchronous model averaging).

Four operations, all inside enclaves that share the *cluster identity* (every attested worker holds
the cluster's HPKE private key, so anything sealed to "the cluster" opens in any of them):

``ptrain_begin`` (coordinator)
    Opens the requester's sealed ``train`` request exactly like single-enclave training does (op,
    model, freshness, single use), validates the spec, requires every owner's approval
    (``_begin_job``), decrypts the datasets, splits train/validation with the spec's seed, fits the
    feature scaling on the training rows and cuts the training rows into ``n`` contiguous shards.
    It returns the round-1 weights sealed under a fresh per-job *round key* and one *task* per shard,
    HPKE-sealed to the cluster key: the shard's position, the dataset keys and blob digests, the
    scaling, the schedule and the round key. The host sees neither row counts nor keys.
``ptrain_round`` (any worker)
    Opens its task, decrypts the datasets (blobs handed by the host, kept in enclave memory for the
    job's later rounds), recomputes the same split (checked against the digest in the task), keeps
    only its shard, trains ``local_epochs`` epochs from the round's weights with scikit-learn's
    ``MLPClassifier.partial_fit`` and returns the new weights sealed under the round key, bound to
    (job, round, shard).
``ptrain_aggregate`` (coordinator)
    Checks that the round's updates are exactly one per shard, of this job and this round,
    authentic and of the shard's size, and averages them weighted by shard size. After the last
    round it builds the final model, exports ONNX with the parity check, evaluates it on the
    validation rows, encrypts it to the recipients (publishing it if asked), commits the job and
    returns the signed train receipt: the same reply as ``train``.
``ptrain_abort`` (coordinator)
    Forgets a job and releases its reservation so the same spec can run again.

Why averaging is (close to) mini-batch gradient averaging: with plain SGD, one local step over the
whole shard and weights ``n_i / N``, ``sum_i n_i/N (w - eta grad L_i(w)) = w - eta grad L(w)``: the
average of the workers' models is exactly one full-batch gradient step on all rows. Several local
steps (``local_epochs`` epochs of mini-batches with Adam, as here) make it *local SGD* / federated
averaging, whose gap to synchronous mini-batch SGD is second order in the step size; it is what
the schedule trades for fewer rounds. The L2 penalty is scaled per shard so every local step
carries the single-enclave model's penalty. Logistic regression is an ``MLPClassifier`` without
hidden layers (sigmoid or softmax output, log loss, L2) exported as a ``LogisticRegression``.

What leaves an enclave (see ``docs/distributed-training.md``): the tasks (HPKE to the cluster
key), weights and updates (AES-256-GCM under the round key, which only travels inside tasks) and
the final reply of single-enclave training. Never a gradient, weight or row in clear: gradients and
weights leak training rows (gradient inversion).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealedml.crypto.envelope import Kind, encode_prefix, hex_field, parse
from sealedml.crypto.envelope import field as envelope_field
from sealedml.crypto.request import seal_request
from sealedml.enclave import payload
from sealedml.errors import CryptoError, EnclaveError, InputError, ModelError, RequestError
from sealedml.training_spec import (
    JobSpec,
    loads_json,
    parse_job_spec_json,
    spec_digest,
)

if TYPE_CHECKING:
    from sealedml.enclave.datasets import DatasetState, DatasetTable, TrainingLimits
    from sealedml.enclave.runtime import Enclave, Reply
    from sealedml.enclave.training import PhaseLog, TrainedModel

PARALLEL_ALGORITHMS = ("logistic_regression", "mlp")
"""Algorithms with a data-parallel implementation; everything else trains in one enclave."""

TASK_OP = "ptrain_task"
ROUND_ALG = "A256GCM-ptrain-v1"
KEY_SIZE = 32
MAX_SHARDS = 64
MIN_SHARD_ROWS = 10
MAX_ROUNDS = 50
"""Rounds per job at most: the epoch budget is spread over at most this many averaging rounds."""
LR_MAX_EPOCHS = 100
LR_LEARNING_RATE = 0.01
BATCH_SIZE = 200
"""scikit-learn's own ``batch_size="auto"`` cap, used by single-enclave MLP training too."""
JOB_TTL_SECONDS = 3600
MAX_JOBS = 16
MAX_CACHED_SHARDS = 8
METHOD = "synchronous model averaging (local SGD)"


def supports_data_parallel(
    algorithm: str, params: dict[str, Any] | None = None, *, dp_epsilon: float | None = None
) -> bool:
    """Whether a job with this algorithm, parameters and privacy setting can train data-parallel.

    True only for non-DP logistic regression (with an intercept) and MLP jobs; DP jobs and every
    other algorithm must use single-enclave training.
    """
    if dp_epsilon is not None or algorithm not in PARALLEL_ALGORITHMS:
        return False
    return not (algorithm == "logistic_regression" and (params or {}).get("fit_intercept", True) is False)


@dataclass(frozen=True)
class Schedule:
    """How a job's epochs are spread over averaging rounds (derived from the spec, in the enclave)."""

    rounds: int
    local_epochs: int

    @classmethod
    def of(cls, spec: JobSpec) -> Schedule:
        """Return the schedule: ``max_iter`` epochs (at most 100 for logistic regression), <= 50 rounds."""
        epochs = int(spec.params["max_iter"])
        if spec.algorithm == "logistic_regression":
            epochs = min(epochs, LR_MAX_EPOCHS)
        rounds = min(MAX_ROUNDS, epochs)
        return cls(rounds=rounds, local_epochs=math.ceil(epochs / rounds))


# -- sealed round messages -------------------------------------------------------------------------


def seal_round(key: bytes, *, kind: str, job: str, round_no: int, shard: int | None, body: bytes) -> bytes:
    """Encrypt ``body`` under the round key with (kind, job, round, shard) authenticated in clear.

    Guarantees: only holders of ``key`` read it; changing any header field (e.g. to replay it in
    another round or as another shard) makes :func:`open_round` fail.
    """
    nonce = os.urandom(12)
    header: dict[str, Any] = {
        "alg": ROUND_ALG,
        "job": job,
        "kind": kind,
        "nonce": nonce.hex(),
        "round": round_no,
    }
    if shard is not None:
        header["shard"] = shard
    prefix = encode_prefix(Kind.SEALED, header)
    return prefix + AESGCM(key).encrypt(nonce, body, prefix)


@dataclass(frozen=True)
class RoundMessage:
    """An authenticated round message: its public binding and decrypted body."""

    job: str
    round: int
    shard: int | None
    body: bytes


def peek_round(blob: bytes, kind: str) -> tuple[str, int, int | None]:
    """Return the unauthenticated (job, round, shard) of a round message of ``kind``.

    Raises ``crypto.malformed`` for anything else.
    """
    envelope = parse(blob, Kind.SEALED)
    header = envelope.header
    if envelope_field(header, "alg", str) != ROUND_ALG or header.get("kind") != kind:
        raise CryptoError("crypto.malformed", f"this is not a parallel-training {kind} message")
    job, round_no = envelope_field(header, "job", str), envelope_field(header, "round", int)
    shard = header.get("shard")
    if shard is not None and (not isinstance(shard, int) or isinstance(shard, bool)):
        raise CryptoError("crypto.malformed", "round message shard is not an integer")
    return job, round_no, shard


def open_round(key: bytes, blob: bytes, kind: str) -> RoundMessage:
    """Authenticate and decrypt a round message; raises ``crypto.auth_failed`` if altered."""
    job, round_no, shard = peek_round(blob, kind)
    envelope = parse(blob, Kind.SEALED)
    nonce = hex_field(envelope.header, "nonce", 12)
    try:
        body = AESGCM(key).decrypt(nonce, envelope.body, envelope.prefix)
    except InvalidTag:
        raise CryptoError(
            "crypto.auth_failed", f"the {kind} of round {round_no} failed authentication"
        ) from None
    return RoundMessage(job=job, round=round_no, shard=shard, body=body)


def pack_weights(weights: Sequence[np.ndarray], meta: dict[str, Any] | None = None) -> bytes:
    """Serialise a list of float64 arrays (alternating coefs and intercepts per layer)."""
    arrays = {f"w{i}": np.ascontiguousarray(w, dtype=np.float64) for i, w in enumerate(weights)}
    return payload.pack({"layers": len(weights), **(meta or {})}, arrays)


def unpack_weights(body: bytes, shapes: Sequence[tuple[int, ...]]) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Parse weights and check they have exactly ``shapes`` and finite values; raises ``input.malformed``."""
    try:
        meta, arrays = payload.unpack(body)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError("input.malformed", "malformed weights in a round message") from exc
    if meta.get("layers") != len(shapes) or len(arrays) != len(shapes):
        raise InputError("input.malformed", "round message has the wrong number of weight arrays")
    out = []
    for i, shape in enumerate(shapes):
        array = arrays.get(f"w{i}")
        if array is None or array.dtype != np.float64 or tuple(array.shape) != tuple(shape):
            raise InputError("input.malformed", f"weight array {i} has the wrong type or shape")
        if not np.isfinite(array).all():
            raise InputError("input.malformed", f"weight array {i} is not finite")
        out.append(np.array(array))
    return out, meta


# -- tasks -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """What one shard's worker needs, sealed to the cluster key (never readable by the host)."""

    job: str
    shard: int
    shards: int
    start: int
    end: int
    round_key: bytes
    spec_json: bytes
    configs: tuple[dict[str, Any], ...]
    train_sha256: str
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    class_weights: tuple[float, ...] | None
    rows_train: int
    local_epochs: int

    def to_json(self) -> bytes:
        """Return the JSON sealed into the task (contains keys: only ever sealed)."""
        return json.dumps(
            {
                "job": self.job,
                "shard": self.shard,
                "shards": self.shards,
                "start": self.start,
                "end": self.end,
                "round_key": self.round_key.hex(),
                "spec": self.spec_json.decode(),
                "configs": list(self.configs),
                "train_sha256": self.train_sha256,
                "mean": list(self.mean),
                "scale": list(self.scale),
                "class_weights": None if self.class_weights is None else list(self.class_weights),
                "rows_train": self.rows_train,
                "local_epochs": self.local_epochs,
            },
            allow_nan=False,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Task:
        """Parse an opened task; raises ``input.malformed`` on any defect."""
        try:
            data = loads_json(raw)
            weights = data["class_weights"]
            task = cls(
                job=str(data["job"]),
                shard=int(data["shard"]),
                shards=int(data["shards"]),
                start=int(data["start"]),
                end=int(data["end"]),
                round_key=bytes.fromhex(data["round_key"]),
                spec_json=str(data["spec"]).encode(),
                configs=tuple(dict(c) for c in data["configs"]),
                train_sha256=str(data["train_sha256"]),
                mean=tuple(float(v) for v in data["mean"]),
                scale=tuple(float(v) for v in data["scale"]),
                class_weights=None if weights is None else tuple(float(v) for v in weights),
                rows_train=int(data["rows_train"]),
                local_epochs=int(data["local_epochs"]),
            )
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise InputError("input.malformed", "a parallel-training task is malformed") from exc
        if len(task.round_key) != KEY_SIZE or not 0 <= task.start < task.end <= task.rows_train:
            raise InputError("input.malformed", "a parallel-training task is inconsistent")
        return task


# -- per-enclave state -----------------------------------------------------------------------------


@dataclass
class _Job:
    """A running data-parallel job on its coordinator (enclave memory only)."""

    token: str
    spec: JobSpec
    digest: str
    states: list[DatasetState]
    job: str
    client: str
    request: bytes
    request_id: str
    response_key: bytes
    round_key: bytes
    bounds: list[int]
    schedule: Schedule
    shapes: list[tuple[int, ...]]
    weights: list[np.ndarray]
    features: tuple[str, ...]
    classes: tuple[Any, ...]
    mean: np.ndarray
    scale: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    y_train: np.ndarray
    first_row: np.ndarray
    log: PhaseLog
    training_started: float
    touched: float
    round: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def shard_rows(self, shard: int) -> int:
        """Number of training rows of ``shard``."""
        return self.bounds[shard + 1] - self.bounds[shard]


@dataclass
class _Shard:
    """A worker's decrypted, scaled shard and its local optimiser (enclave memory only)."""

    x: np.ndarray
    y: np.ndarray
    sample_weight: np.ndarray | None
    estimator: Any
    touched: float
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _State:
    jobs: dict[str, _Job] = field(default_factory=dict)
    shards: OrderedDict[tuple[str, int], _Shard] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_STATES: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def _state(enclave: Enclave) -> _State:
    with _STATES_LOCK:
        state = _STATES.get(enclave)
        if state is None:
            state = _STATES[enclave] = _State()
        return state


# -- helpers ---------------------------------------------------------------------------------------


def _str(header: dict[str, Any], name: str) -> str:
    value = header.get(name)
    if not isinstance(value, str) or not value or len(value) > 128:
        raise EnclaveError("enclave.protocol", f"frame field {name!r} is missing or invalid")
    return value


def _int(header: dict[str, Any], name: str, low: int, high: int) -> int:
    value = header.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise EnclaveError("enclave.protocol", f"frame field {name!r} must be an integer in [{low}, {high}]")
    return value


def _unknown_job(token: str) -> RequestError:
    return RequestError(
        "request.ptrain_unknown",
        f"this enclave runs no parallel training job {token[:16]!r}: it finished, was aborted or expired, "
        "or the coordinator restarted; start the job again",
    )


def _train_digest(train: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(train, dtype="<i8").tobytes()).hexdigest()


def _n_outputs(classes: Sequence[Any]) -> int:
    return 1 if len(classes) == 2 else len(classes)


def layer_shapes(spec: JobSpec, n_features: int, n_classes: int) -> list[tuple[int, ...]]:
    """The weight shapes of a job's network: per layer ``(fan_in, fan_out)`` then ``(fan_out,)``."""
    hidden = list(spec.params["hidden_layer_sizes"]) if spec.algorithm == "mlp" else []
    units = [n_features, *hidden, 1 if n_classes == 2 else n_classes]
    shapes: list[tuple[int, ...]] = []
    for fan_in, fan_out in itertools.pairwise(units):
        shapes += [(fan_in, fan_out), (fan_out,)]
    return shapes


def initial_weights(spec: JobSpec, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Round-1 weights: zeros for logistic regression; for an MLP, scikit-learn's Glorot-uniform scheme
    (bound ``sqrt(f / (fan_in + fan_out))``, f = 2 for logistic activations else 6) from the spec's seed."""
    if spec.algorithm == "logistic_regression":
        return [np.zeros(s) for s in shapes]
    rng = np.random.default_rng(spec.seed)
    factor = 2.0 if spec.params["activation"] == "logistic" else 6.0
    out = []
    for i in range(0, len(shapes), 2):
        fan_in, fan_out = shapes[i]
        bound = math.sqrt(factor / (fan_in + fan_out))
        out += [rng.uniform(-bound, bound, shapes[i]), rng.uniform(-bound, bound, shapes[i + 1])]
    return out


def _local_estimator(spec: JobSpec, rows: int, rows_train: int, seed: int) -> Any:
    """The shard's scikit-learn learner, with the L2 penalty scaled to the single-enclave model's."""
    from sklearn.neural_network import MLPClassifier

    batch = min(BATCH_SIZE, rows)
    if spec.algorithm == "logistic_regression":
        # LogisticRegression minimises mean loss + ||w||^2 / (2 C N); MLPClassifier adds
        # alpha ||w||^2 / (2 batch) per mini-batch: alpha = batch / (C N) gives the same penalty.
        return MLPClassifier(
            hidden_layer_sizes=(),
            alpha=batch / (spec.params["C"] * rows_train),
            learning_rate_init=LR_LEARNING_RATE,
            batch_size=batch,
            random_state=seed,
        )
    return MLPClassifier(
        hidden_layer_sizes=tuple(spec.params["hidden_layer_sizes"]),
        activation=spec.params["activation"],
        alpha=spec.params["alpha"] * batch / min(BATCH_SIZE, rows_train),
        learning_rate_init=spec.params["learning_rate_init"],
        batch_size=batch,
        random_state=seed,
    )


def _bootstrap(estimator: Any, x: np.ndarray, y: np.ndarray, n_classes: int) -> Any:
    """Give a fresh learner its fitted structure (one row), then forget that step's optimiser state.

    The weights it learnt are overwritten by the caller before any real training.
    """
    batch = estimator.batch_size
    estimator.set_params(batch_size="auto")  # one row: a larger batch would warn
    estimator.partial_fit(x[:1], y[:1], classes=np.arange(n_classes))
    estimator.set_params(batch_size=batch)
    del estimator._optimizer  # a fresh Adam state for the real epochs
    return estimator


def _set_weights(estimator: Any, weights: Sequence[np.ndarray]) -> None:
    """Write ``weights`` into the learner *in place* (its optimiser holds references to the arrays)."""
    params = [p for pair in zip(estimator.coefs_, estimator.intercepts_, strict=True) for p in pair]
    for target, value in zip(params, weights, strict=True):
        target[...] = value


def _epoch_seed(seed: int, round_no: int, shard: int, epoch: int) -> int:
    """A distinct, reproducible shuffling seed per (job seed, round, shard, local epoch)."""
    return (seed + 7919 * round_no + 104_729 * shard + epoch) % 2**32


def _get_weights(estimator: Any) -> list[np.ndarray]:
    return [p.copy() for pair in zip(estimator.coefs_, estimator.intercepts_, strict=True) for p in pair]


# -- data ------------------------------------------------------------------------------------------


def _decrypt_all(
    configs: Sequence[Any], blobs: Sequence[bytes], limits: TrainingLimits
) -> list[DatasetTable]:
    from sealedml.enclave.training import decrypt_tables  # the ML stack loads with the first job

    return decrypt_tables(configs, blobs, limits)


@dataclass(frozen=True)
class _Prepared:
    matrix: np.ndarray
    labels: np.ndarray
    features: tuple[str, ...]
    classes: tuple[Any, ...]
    train: np.ndarray
    validation: np.ndarray


def _prepare(spec: JobSpec, tables: Sequence[DatasetTable]) -> _Prepared:
    """Assemble and split exactly as single-enclave training does (deterministic for non-DP jobs)."""
    from sealedml.enclave import training

    matrix, labels, features, classes = training.assemble(spec, tables)
    train, validation = training.split(spec, labels, len(classes))
    return _Prepared(matrix, labels, tuple(features), tuple(classes), train, validation)


# -- ptrain_begin ----------------------------------------------------------------------------------


def _expire(enclave: Enclave, state: _State, now: float) -> None:
    with state.lock:
        stale = [j for j in state.jobs.values() if j.touched < now - JOB_TTL_SECONDS]
        for job in stale:
            del state.jobs[job.token]
        for key in [k for k, s in state.shards.items() if s.touched < now - JOB_TTL_SECONDS]:
            del state.shards[key]
    for job in stale:
        enclave._abort_job(job.spec, job.digest)


def _begin(enclave: Enclave, header: dict[str, Any], parts: list[bytes]) -> Reply:
    from sealedml.enclave import training
    from sealedml.enclave.runtime import Reply

    model_id, client, job_id = _str(header, "model"), _str(header, "client"), _str(header, "job")
    shards = _int(header, "shards", 1, MAX_SHARDS)
    opened, spec, request, blobs = enclave._open_train(model_id, header, parts)
    if not supports_data_parallel(spec.algorithm, spec.params, dp_epsilon=spec.dp_epsilon):
        raise InputError(
            "input.parallel_unsupported",
            f"{spec.algorithm} {'with dp_epsilon ' if spec.dp else ''}cannot train data-parallel: "
            f"only non-DP {list(PARALLEL_ALGORITHMS)} (logistic regression with an intercept) can; "
            "run it as a single-enclave train job",
        )
    digest = spec_digest(spec)
    state = _state(enclave)
    now = enclave._clock()
    _expire(enclave, state, now)
    with state.lock:
        if len(state.jobs) >= MAX_JOBS:
            raise EnclaveError("enclave.busy", "too many parallel training jobs are running; retry later")
    states = enclave._begin_job(spec, digest)
    progress = enclave._progress
    log = training.PhaseLog(None if progress is None else (lambda phase: progress(job_id, phase)))
    try:
        with log.phase("decrypting"):
            tables = _decrypt_all([s.config for s in states], blobs, enclave._limits)
        with log.phase("preparing"):
            prepared = _prepare(spec, tables)
            del tables
            x_train = prepared.matrix[prepared.train].astype(np.float64)
            y_train = prepared.labels[prepared.train]
            rows_train = int(y_train.size)
            if rows_train // shards < MIN_SHARD_ROWS:
                raise InputError(
                    "input.insufficient_data",
                    f"{shards} shards leave fewer than {MIN_SHARD_ROWS} training rows per shard: use fewer",
                )
            mean = x_train.mean(axis=0)
            scale = x_train.std(axis=0)
            scale[scale == 0.0] = 1.0  # as StandardScaler: constant features are left unscaled
            k = len(prepared.classes)
            class_weights = None
            if spec.algorithm == "logistic_regression" and spec.params["class_weight"] == "balanced":
                counts = np.bincount(y_train, minlength=k).astype(np.float64)
                class_weights = tuple(float(rows_train / (k * c)) if c > 0 else 1.0 for c in counts)
            bounds = [rows_train * i // shards for i in range(shards + 1)]
            schedule = Schedule.of(spec)
            shapes = layer_shapes(spec, x_train.shape[1], k)
            weights = initial_weights(spec, shapes)
            token = secrets.token_hex(16)
            round_key = os.urandom(KEY_SIZE)
            train_sha256 = _train_digest(prepared.train)
            configs = tuple(json.loads(s.config.to_json()) for s in states)
            tasks = [
                seal_request(
                    enclave_public_key=enclave._hpke.public_bytes,
                    op=TASK_OP,
                    model=token,
                    request_id=f"{token}-{i}",
                    payload=Task(
                        job=token,
                        shard=i,
                        shards=shards,
                        start=bounds[i],
                        end=bounds[i + 1],
                        round_key=round_key,
                        spec_json=spec.to_json(),
                        configs=configs,
                        train_sha256=train_sha256,
                        mean=tuple(float(v) for v in mean),
                        scale=tuple(float(v) for v in scale),
                        class_weights=class_weights,
                        rows_train=rows_train,
                        local_epochs=schedule.local_epochs,
                    ).to_json(),
                ).envelope
                for i in range(shards)
            ]
            first_row = (x_train[:1] - mean) / scale
            job = _Job(
                token=token,
                spec=spec,
                digest=digest,
                states=states,
                job=job_id,
                client=client,
                request=request,
                request_id=opened.header.request_id,
                response_key=opened.response_key,
                round_key=round_key,
                bounds=bounds,
                schedule=schedule,
                shapes=shapes,
                weights=weights,
                features=prepared.features,
                classes=prepared.classes,
                mean=mean,
                scale=scale,
                x_val=prepared.matrix[prepared.validation],
                y_val=prepared.labels[prepared.validation],
                y_train=y_train,
                first_row=np.concatenate([first_row, first_row]),
                log=log,
                training_started=time.perf_counter(),
                touched=now,
            )
            del prepared, x_train
    except BaseException:
        enclave._abort_job(spec, digest)
        raise
    with state.lock:
        state.jobs[token] = job
    if progress is not None:
        progress(job_id, "training")
    sealed = seal_round(
        round_key, kind="weights", job=token, round_no=1, shard=None, body=pack_weights(weights)
    )
    return Reply(
        {
            "ptrain": token,
            "job": job_id,
            "spec_sha256": digest,
            "shards": shards,
            "rounds": schedule.rounds,
            "round": 1,
            "local_epochs": schedule.local_epochs,
        },
        (sealed, *tasks),
    )


# -- ptrain_round ----------------------------------------------------------------------------------


def _load_shard(enclave: Enclave, task: Task, spec: JobSpec, blobs: Sequence[bytes]) -> _Shard:
    from sealedml.enclave.datasets import DatasetConfig

    if len(blobs) != len(task.configs):
        raise RequestError(
            "request.shard_not_loaded",
            f"this worker has not loaded shard {task.shard} of the job: hand it the {len(task.configs)} "
            "dataset blob(s) with this round",
        )
    configs = [DatasetConfig.from_dict(c) for c in task.configs]
    tables = _decrypt_all(configs, blobs, enclave._limits)
    prepared = _prepare(spec, tables)
    del tables
    if _train_digest(prepared.train) != task.train_sha256 or prepared.train.size != task.rows_train:
        raise ModelError(
            "model.training_failed",
            "this worker's train/validation split differs from the coordinator's: "
            "coordinator and workers must run the same enclave build",
        )
    rows = prepared.train[task.start : task.end]
    mean, scale = np.asarray(task.mean), np.asarray(task.scale)
    if mean.shape != (prepared.matrix.shape[1],) or scale.shape != mean.shape:
        raise InputError("input.malformed", "the task's feature scaling does not fit the data")
    x = (prepared.matrix[rows].astype(np.float64) - mean) / scale
    y = prepared.labels[rows]
    weights = None
    if task.class_weights is not None:
        weights = np.asarray(task.class_weights, dtype=np.float64)[y]
    estimator = _local_estimator(spec, int(y.size), task.rows_train, seed=spec.seed + task.shard)
    _bootstrap(estimator, x, y, len(prepared.classes))
    return _Shard(x=x, y=y, sample_weight=weights, estimator=estimator, touched=enclave._clock())


def _round(enclave: Enclave, header: dict[str, Any], parts: list[bytes]) -> Reply:
    from sealedml.enclave.runtime import Reply

    token = _str(header, "ptrain")
    shard_no = _int(header, "shard", 0, MAX_SHARDS - 1)
    round_no = _int(header, "round", 1, MAX_ROUNDS)
    if len(parts) < 2:
        raise EnclaveError(
            "enclave.protocol", "ptrain_round needs the task, the weights and optionally blobs"
        )
    opened = enclave._hpke.open_request(parts[0])
    if opened.header.op != TASK_OP or opened.header.model != token:
        raise RequestError("request.update_foreign", "this task belongs to another parallel training job")
    task = Task.from_json(opened.payload)
    if task.job != token or opened.header.request_id != f"{token}-{task.shard}":
        raise RequestError("request.update_foreign", "this task belongs to another parallel training job")
    if task.shard != shard_no:
        raise RequestError(
            "request.task_mismatch",
            f"the host routed shard {shard_no} but the task is for shard {task.shard} (another row range)",
        )
    job, weights_round, _ = peek_round(parts[1], "weights")
    if job != token:
        raise RequestError("request.update_foreign", "the weights belong to another parallel training job")
    if weights_round != round_no:
        raise RequestError(
            "request.round_mismatch", f"the weights are for round {weights_round}, not round {round_no}"
        )
    message = open_round(task.round_key, parts[1], "weights")
    spec = parse_job_spec_json(task.spec_json)
    state = _state(enclave)
    key = (token, task.shard)
    with state.lock:
        shard = state.shards.get(key)
        if shard is not None:
            state.shards.move_to_end(key)
    if shard is None:
        shard = _load_shard(enclave, task, spec, parts[2:])
        with state.lock:
            shard = state.shards.setdefault(key, shard)
            while len(state.shards) > MAX_CACHED_SHARDS:
                state.shards.popitem(last=False)
    with shard.lock:
        shapes = [tuple(w.shape) for w in _get_weights(shard.estimator)]
        weights, _meta = unpack_weights(message.body, shapes)
        _set_weights(shard.estimator, weights)
        for epoch in range(task.local_epochs):
            shard.estimator.set_params(random_state=_epoch_seed(spec.seed, round_no, task.shard, epoch))
            try:
                shard.estimator.partial_fit(shard.x, shard.y, sample_weight=shard.sample_weight)
            except (ValueError, FloatingPointError) as exc:
                raise ModelError(
                    "model.training_failed", "local training produced non-finite weights"
                ) from exc
        update = pack_weights(_get_weights(shard.estimator), {"rows": int(shard.y.size)})
        shard.touched = enclave._clock()
    sealed = seal_round(
        task.round_key, kind="update", job=token, round_no=round_no, shard=task.shard, body=update
    )
    return Reply({"ptrain": token, "round": round_no, "shard": task.shard}, (sealed,))


# -- ptrain_aggregate ------------------------------------------------------------------------------


def _job(enclave: Enclave, token: str) -> _Job:
    state = _state(enclave)
    with state.lock:
        job = state.jobs.get(token)
    if job is None:
        raise _unknown_job(token)
    return job


def _average(job: _Job, parts: Sequence[bytes], round_no: int) -> list[np.ndarray]:
    """Check the round's updates (one per shard, this job, this round, authentic) and average them."""
    shards = len(job.bounds) - 1
    seen: dict[int, list[np.ndarray]] = {}
    for blob in parts:
        token, update_round, shard = peek_round(blob, "update")
        if token != job.token:
            raise RequestError("request.update_foreign", "an update belongs to another parallel training job")
        if update_round < round_no:
            raise RequestError(
                "request.replayed", f"an update is from round {update_round}; the job is at round {round_no}"
            )
        if update_round != round_no:
            raise RequestError(
                "request.round_mismatch", f"an update is for round {update_round}, not round {round_no}"
            )
        if shard is None or not 0 <= shard < shards:
            raise RequestError(
                "request.update_foreign", f"an update names shard {shard} of a {shards}-shard job"
            )
        if shard in seen:
            raise RequestError(
                "request.shard_duplicated", f"shard {shard} appears twice in round {round_no}: send each once"
            )
        message = open_round(job.round_key, blob, "update")
        weights, meta = unpack_weights(message.body, job.shapes)
        if meta.get("rows") != job.shard_rows(shard):
            raise RequestError(
                "request.update_foreign", f"the update of shard {shard} was trained on other rows"
            )
        seen[shard] = weights
    missing = sorted(set(range(shards)) - set(seen))
    if missing:
        raise RequestError(
            "request.shards_incomplete",
            f"round {round_no} lacks the update(s) of shard(s) {missing[:10]}: every shard must be sent once",
        )
    total = float(job.bounds[-1])
    return [
        sum((job.shard_rows(s) / total) * seen[s][i] for s in range(shards)) for i in range(len(job.shapes))
    ]


def _final_estimator(job: _Job) -> Any:
    """The trained model as a scikit-learn pipeline: the job's scaling, then the averaged classifier."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler()
    scaler.mean_, scaler.scale_, scaler.var_ = job.mean, job.scale, job.scale**2
    scaler.n_features_in_ = job.mean.shape[0]
    scaler.n_samples_seen_ = int(job.bounds[-1])
    k = len(job.classes)
    if job.spec.algorithm == "logistic_regression":
        classifier: Any = LogisticRegression(C=job.spec.params["C"])
        classifier.coef_ = np.ascontiguousarray(job.weights[0].T)
        classifier.intercept_ = job.weights[1].copy()
        classifier.classes_ = np.arange(k)
        classifier.n_features_in_ = job.mean.shape[0]
        classifier.n_iter_ = np.array([job.schedule.rounds * job.schedule.local_epochs], dtype=np.int32)
    else:
        classifier = _local_estimator(job.spec, int(job.bounds[-1]), int(job.bounds[-1]), seed=job.spec.seed)
        _bootstrap(classifier, job.first_row, np.zeros(2, dtype=np.int64), k)
        _set_weights(classifier, job.weights)
    return Pipeline([("scale", scaler), ("classifier", classifier)])


def _normalised(probabilities: np.ndarray) -> np.ndarray:
    """Float32 ONNX probabilities as float64 rows summing to one (as single-enclave metrics use them)."""
    full = probabilities.astype(np.float64)
    sums = full.sum(axis=1, keepdims=True)
    return full / np.where(sums > 0, sums, 1.0)


def _trained_model(job: _Job) -> TrainedModel:
    """Export the averaged model to ONNX (parity-checked) and evaluate it on the validation rows."""
    from sealedml.enclave import training

    spec, log = job.spec, job.log
    log.phases.append(training.Phase("training", time.perf_counter() - job.training_started))
    with log.phase("exporting"):
        estimator = _final_estimator(job)
        onnx_bytes = training.export_onnx(estimator, job.features, job.classes)
        predicted, probabilities = training.check_parity(onnx_bytes, estimator, job.x_val)
    with log.phase("evaluating"):
        metrics = training.exact_metrics(
            y_train=job.y_train,
            y_val=job.y_val,
            predicted_val=predicted.astype(np.int64),
            proba_val=_normalised(probabilities),
            classes=job.classes,
        )
        metrics["dp"] = None
    metrics["classes"] = list(job.classes)
    metrics["features"] = len(job.features)
    metrics["algorithm"] = spec.algorithm
    metrics["notes"] = []
    metrics["parallel"] = {
        "method": METHOD,
        "shards": len(job.bounds) - 1,
        "rounds": job.schedule.rounds,
        "local_epochs": job.schedule.local_epochs,
    }
    return training.TrainedModel(
        onnx_bytes=onnx_bytes,
        model_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        feature_columns=job.features,
        classes=job.classes,
        metrics=metrics,
        epsilon_spent=None,
    )


def _aggregate(enclave: Enclave, header: dict[str, Any], parts: list[bytes]) -> Reply:
    from sealedml.enclave.runtime import Reply

    token = _str(header, "ptrain")
    round_no = _int(header, "round", 1, MAX_ROUNDS)
    job = _job(enclave, token)
    state = _state(enclave)
    with job.lock:
        if state.jobs.get(token) is not job:
            raise _unknown_job(token)
        if round_no != job.round:
            raise RequestError(
                "request.round_mismatch",
                f"the job is at round {job.round}; the host aggregated round {round_no}",
            )
        averaged = _average(job, parts, round_no)
        if not all(np.isfinite(w).all() for w in averaged):
            raise ModelError("model.training_failed", "the averaged weights are not finite")
        job.weights = averaged
        job.touched = enclave._clock()
        if round_no < job.schedule.rounds:
            job.round = round_no + 1
            sealed = seal_round(
                job.round_key,
                kind="weights",
                job=token,
                round_no=job.round,
                shard=None,
                body=pack_weights(averaged),
            )
            return Reply(
                {"ptrain": token, "round": job.round, "rounds": job.schedule.rounds, "done": False}, (sealed,)
            )
        with state.lock:
            state.jobs.pop(token, None)
        try:
            trained = _trained_model(job)
        except BaseException:
            enclave._abort_job(job.spec, job.digest)
            raise
        # packages, publishes and commits exactly as single-enclave training does (same reply)
        final = enclave._finish_training(
            spec=job.spec,
            digest=job.digest,
            states=job.states,
            trained=trained,
            log=job.log,
            job=job.job,
            client=job.client,
            request=job.request,
            request_id=job.request_id,
            response_key=job.response_key,
        )
        return Reply({**final.header, "done": True}, final.parts)


def _abort(enclave: Enclave, header: dict[str, Any], parts: list[bytes]) -> Reply:
    from sealedml.enclave.runtime import Reply

    token = _str(header, "ptrain")
    state = _state(enclave)
    with state.lock:
        job = state.jobs.pop(token, None)
        for key in [k for k in state.shards if k[0] == token]:
            del state.shards[key]
    if job is not None:
        with job.lock:
            enclave._abort_job(job.spec, job.digest)
    return Reply({"ptrain": token, "aborted": job is not None})


HANDLERS: dict[str, Callable[[Enclave, dict[str, Any], list[bytes]], Reply]] = {
    "ptrain_begin": _begin,
    "ptrain_round": _round,
    "ptrain_aggregate": _aggregate,
    "ptrain_abort": _abort,
}
"""The enclave operations of data-parallel training, merged into ``Enclave._HANDLERS``."""

__all__ = [
    "HANDLERS",
    "PARALLEL_ALGORITHMS",
    "RoundMessage",
    "Schedule",
    "Task",
    "initial_weights",
    "layer_shapes",
    "open_round",
    "pack_weights",
    "peek_round",
    "seal_round",
    "supports_data_parallel",
    "unpack_weights",
]
