"""The platform served from enclave workers on a local Ray runtime, end to end over HTTP.

A data owner uploads an encrypted dataset and lists it; a researcher (paying for it) submits a
training job, the owner approves it, and the job trains data-parallel on the two attested workers
(or in one enclave when the algorithm or DP needs it). The recipient opens the model and scores
held-out rows the platform never saw. One worker actor is killed mid-training: the job still
completes, is billed once and its receipt is valid and in the transparency log. The CLI's
``batch predict`` runs against the same kind of platform in the background.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import ray
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from sklearn.model_selection import train_test_split
from typer.testing import CliRunner

from e2e_support import policy_for
from enclave.test_training_kit import (
    CANCER_LABEL,
    breast_cancer_table,
    declared_bounds,
    onnx_labels,
)
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.cli import app as cli_app
from sealedml.client import SealedMLClient, from_estimator
from sealedml.client._training import FetchedModel, TrainingJob, TrainingOutcome, public_hex
from sealedml.platform.launch import platform_in_background
from sealedml.platform.server import BackgroundServer
from sealedml.platform.settings import Settings

PRICE = 7
"""What the owner charges per training job on the dataset (paid by the researcher)."""
CREDITS = 1_000
HELD_OUT = 100
DP_EPSILON = 2.0


@pytest.fixture(scope="module", autouse=True)
def ray_runtime() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@dataclass
class RayPlatform:
    server: BackgroundServer
    data_dir: Path
    admin_token: str
    policy: AppraisalPolicy

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pool(self) -> Any:
        return self.server.app.state.service.enclave

    def account(self, role: str = "data_owner", credits: int = 0) -> tuple[str, str]:
        with SealedMLClient(self.url, self.admin_token) as admin:
            created = admin.create_account(f"{role}-{uuid.uuid4().hex[:8]}", role)
            if credits:
                admin.market.grant(created["id"], credits)
        return str(created["id"]), str(created["token"])

    def client(self, token: str) -> SealedMLClient:
        return SealedMLClient(self.url, token, policy=self.policy)

    def job_phase(self, job_id: str) -> tuple[str, str | None]:
        record = self.server.app.state.training.store.get_job(job_id)
        return (record.job.status, record.job.phase) if record is not None else ("unknown", None)

    def job_progress(self, job_id: str) -> tuple[str, int]:
        record = self.server.app.state.training.store.get_job(job_id)
        return (record.job.status, int(record.job.progress or 0)) if record is not None else ("unknown", 0)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayPlatform]:
    data_dir = tmp_path_factory.mktemp("ray-platform")
    settings = Settings(data_dir=data_dir, ray="local", ray_workers=2)
    with platform_in_background(settings, workers=1) as server:
        token = (data_dir / "admin-token").read_text().strip()
        yield RayPlatform(server, data_dir, token, policy_for(server.url))


@dataclass(frozen=True)
class Cancer:
    uploaded: pa.Table
    """What the owner uploads (encrypted)."""
    x_held: np.ndarray
    y_held: np.ndarray
    """Rows the platform never sees: the recipient scores them with the model it opened."""
    features: list[str]


@pytest.fixture(scope="module")
def cancer() -> Cancer:
    table = breast_cancer_table()
    y = table.column(CANCER_LABEL).to_numpy()
    kept, held = train_test_split(np.arange(len(y)), test_size=HELD_OUT, random_state=11, stratify=y)
    features = [c for c in table.column_names if c != CANCER_LABEL]
    held_table = table.take(pa.array(np.sort(held)))
    x_held = np.column_stack([held_table.column(f).to_numpy() for f in features]).astype(np.float32)
    return Cancer(
        table.take(pa.array(np.sort(kept))), x_held, held_table.column(CANCER_LABEL).to_numpy(), features
    )


@dataclass(frozen=True)
class Trained:
    job: TrainingJob
    outcome: TrainingOutcome
    fetched: FetchedModel
    paid: int
    """How far the researcher's balance fell."""
    earned: int
    """How far the owner's balance rose."""
    charges: list[tuple[str, int, str]]
    """The researcher's charges as the platform stores them: (charge id, amount, status)."""
    job_charges: tuple[str, ...]
    """The charge ids the platform tied to the training job."""
    held_out_accuracy: float


def train_on_ray(
    platform: RayPlatform,
    cancer: Cancer,
    algorithm: str,
    params: dict[str, Any],
    *,
    dp: bool = False,
    while_training: Callable[[str], None] | None = None,
) -> Trained:
    """The whole training flow as the parties' SDKs run it; ``while_training(job_id)`` runs in a
    thread from the moment the owner approved until the job finished."""
    _owner_id, owner_token = platform.account()
    researcher_id, researcher_token = platform.account(credits=CREDITS)
    approval_key = ed25519.Ed25519PrivateKey.generate()
    recipient = x25519.X25519PrivateKey.generate()
    with platform.client(owner_token) as owner, platform.client(researcher_token) as researcher:
        dataset = owner.training.upload_table(
            cancer.uploaded, f"cancer-{uuid.uuid4().hex[:8]}", approval_key=approval_key
        )
        assert dataset.confirmation["rows"] == cancer.uploaded.num_rows
        owner.training.offer(
            dataset.info.id, columns=[("mean radius", "float")], rows=cancer.uploaded.num_rows, price=PRICE
        )
        before = (researcher.me()["balance"], owner.me()["balance"])
        extra: dict[str, Any] = {}
        if dp:
            extra = {
                "dp_epsilon": DP_EPSILON,
                "feature_bounds": declared_bounds(cancer.uploaded, CANCER_LABEL),
                "classes": [0, 1],
            }
        spec = researcher.training.build_spec(
            [dataset.info.id],
            label=CANCER_LABEL,
            algorithm=algorithm,
            params=params,
            features=cancer.features,
            recipients=[public_hex(recipient)],
            **extra,
        )
        submission, job = researcher.training.submit(spec)
        owner.training.approve(job.id, {dataset.info.id: approval_key})
        side = None
        if while_training is not None:
            side = threading.Thread(target=while_training, args=(job.id,))
            side.start()
        try:
            final = researcher.training.wait(job.id, submission=submission, timeout=600)
        finally:
            if side is not None:
                side.join()
        outcome = researcher.training.outcome(submission, final)
        evidence = researcher.training.last_evidence
        fetched = researcher.training.fetch_model(job.id, recipient, evidence=evidence)
        after = (researcher.me()["balance"], owner.me()["balance"])
        cluster_key = researcher.enclave_info()["signing_public_key"]
    assert final.receipt["enclave_key"] == cluster_key
    charges = platform.server.app.state.service.billing.charges(account_id=researcher_id)
    labels, _ = onnx_labels(fetched.onnx_bytes, cancer.x_held)
    return Trained(
        job=final,
        outcome=outcome,
        fetched=fetched,
        paid=before[0] - after[0],
        earned=after[1] - before[1],
        charges=[(c.job_id, c.amount, c.status) for c in charges],
        job_charges=tuple(platform.server.app.state.training.store.get_job(final.id).charge_ids),
        held_out_accuracy=float(np.mean(labels == cancer.y_held)),
    )


def assert_complete_and_billed_once(trained: Trained) -> None:
    """Done, the receipt checked by the SDK (signature, digests, metrics) and in the log, paid once."""
    assert trained.job.status == "done"
    assert trained.outcome.ledger is not None and trained.fetched.ledger is not None
    assert trained.fetched.metrics == trained.outcome.metrics
    assert trained.fetched.model_sha256 == trained.job.receipt["model_sha256"]
    assert (trained.paid, trained.earned) == (PRICE, PRICE)
    assert len(trained.job_charges) == 1
    assert trained.charges == [(trained.job_charges[0], PRICE, "settled")]


def test_logistic_regression_trains_data_parallel_on_two_workers(platform, cancer) -> None:
    pool = platform.pool
    assert [w.name for w in pool.cluster.workers] == ["worker-0", "worker-1"] and pool.cluster.rejected == []
    seen: list[int] = []

    def watch(job_id: str) -> None:
        """Record the job's progress while it runs: rounds move it through the training share."""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status, progress = platform.job_progress(job_id)
            seen.append(progress)
            if status in ("done", "failed", "cancelled"):
                return
            time.sleep(0.002)

    trained = train_on_ray(
        platform, cancer, "logistic_regression", {"C": 1.0, "max_iter": 100}, while_training=watch
    )
    assert_complete_and_billed_once(trained)
    parallel = trained.outcome.metrics["parallel"]
    assert parallel["method"] == "synchronous model averaging (local SGD)"
    assert parallel["shards"] == 2 and parallel["rounds"] >= 10
    # Between "training" (30 %) and "storing" (90 %), the platform reports finished rounds.
    assert any(30 < value < 90 for value in seen), sorted(set(seen))
    assert seen == sorted(seen) and seen[-1] == 100
    # The receipt (signed with the cluster key) binds these metrics, parallel section included:
    # the SDK checked its signature and metrics_sha256.
    assert trained.held_out_accuracy >= 0.9


def test_mlp_trains_data_parallel_on_two_workers(platform, cancer) -> None:
    trained = train_on_ray(
        platform, cancer, "mlp", {"hidden_layer_sizes": [16], "max_iter": 60, "learning_rate_init": 0.01}
    )
    assert_complete_and_billed_once(trained)
    assert trained.outcome.metrics["parallel"]["shards"] == 2
    assert trained.held_out_accuracy >= 0.9


@pytest.mark.ray_heavy
def test_a_worker_killed_mid_training_is_replaced_and_the_job_completes_billed_once(
    platform, cancer, caplog
) -> None:
    pool = platform.pool
    caplog.set_level(logging.WARNING, logger="sealedml.distributed")
    killed: list[tuple[str, str | None]] = []

    def kill_worker_one(job_id: str) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status, phase = platform.job_phase(job_id)
            if status in ("done", "failed", "cancelled"):
                return
            if (status, phase) == ("running", "training"):
                victim = next(w for w in pool.cluster.workers if w.slot == 1)
                ray.kill(victim.actor, no_restart=True)
                killed.append((victim.name, phase))
                return
            time.sleep(0.005)

    trained = train_on_ray(
        platform,
        cancer,
        "mlp",
        {"hidden_layer_sizes": [16], "max_iter": 100, "learning_rate_init": 0.01},
        while_training=kill_worker_one,
    )
    assert len(killed) == 1 and killed[0][1] == "training"
    assert_complete_and_billed_once(trained)
    assert trained.outcome.metrics["parallel"]["shards"] == 2
    assert trained.held_out_accuracy >= 0.9
    # The lost worker's shard was redone on a replacement, attested and joined in the same slot.
    replaced = [r.getMessage() for r in caplog.records if "lost, replacing it" in r.getMessage()]
    assert len(replaced) == 1 and killed[0][0] in replaced[0]
    assert [w.slot for w in pool.cluster.workers] == [0, 1]
    replacement = pool.cluster.workers[1].name
    assert replacement.startswith("worker-1.") and replacement != killed[0][0]


@pytest.mark.parametrize(
    ("algorithm", "params", "dp"),
    [
        ("logistic_regression", {"C": 1.0}, True),
        ("random_forest", {"n_estimators": 20, "max_depth": 6}, False),
    ],
    ids=["dp-logistic-regression", "random-forest"],
)
def test_dp_and_unsupported_algorithms_train_in_one_enclave(platform, cancer, algorithm, params, dp) -> None:
    trained = train_on_ray(platform, cancer, algorithm, params, dp=dp)
    assert_complete_and_billed_once(trained)
    assert "parallel" not in trained.outcome.metrics
    assert trained.job.receipt["epsilon_spent"] == (DP_EPSILON if dp else None)
    if not dp:  # a DP model's accuracy depends on its noise draw: no threshold for it
        assert trained.held_out_accuracy >= 0.9


def test_cli_batch_predict_against_a_ray_platform(platform, cancer, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = cancer.uploaded.to_pandas()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
        frame[cancer.features], frame[CANCER_LABEL]
    )
    _, provider_token = platform.account("provider")
    _, user_token = platform.account(credits=100_000)
    name = f"cancer-{uuid.uuid4().hex[:8]}"
    with platform.client(provider_token) as provider:
        provider.publish_model(name, from_estimator(model), price_per_row=1)
    rows = 2_345
    repeats = -(-rows // len(frame))
    data = pd.concat([frame[cancer.features]] * repeats, ignore_index=True).iloc[:rows]
    data = data + np.random.default_rng(3).normal(scale=0.01, size=data.shape)
    source, output = tmp_path / "data.csv", tmp_path / "out.csv"
    data.to_csv(source, index=False)

    runner = CliRunner()
    env = {
        "SEALEDML_URL": platform.url,
        "SEALEDML_POLICY": str(tmp_path / "policy.toml"),
        "SEALEDML_KEYS_DIR": str(tmp_path / "keys"),
        "SEALEDML_TOKEN": user_token,
    }
    initialised = runner.invoke(cli_app, ["policy", "init", "--allow-simulated"], env=env)
    assert initialised.exit_code == 0, initialised.output
    result = runner.invoke(
        cli_app,
        ["batch", "predict", "--model", name, str(source), "-o", str(output), "--shard-rows", "500"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert f"done: {rows} row(s) in 5 sealed shard(s)" in said and "every receipt verified" in said
    scored = pd.read_csv(output)
    assert len(scored) == rows
    expected = model.predict(pd.read_csv(source)[cancer.features].astype(np.float32))
    assert scored["prediction"].tolist() == expected.tolist()
    with platform.client(user_token) as user:
        assert user.me()["balance"] == 100_000 - rows
        # The SDK's own entry point: the same shards, in order, into Parquet, billed once more.
        seen: list[int] = []
        result = user.predict_batch(
            name,
            source,
            tmp_path / "out.parquet",
            shard_rows=1_000,
            progress=lambda done, _: seen.append(done),
        )
        assert (result.rows, result.shards, seen) == (rows, 3, [1_000, 2_000, rows])
        assert pd.read_parquet(tmp_path / "out.parquet")["prediction"].tolist() == expected.tolist()
        assert user.me()["balance"] == 100_000 - 2 * rows
