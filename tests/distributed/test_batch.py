"""Sharded streaming batch inference through the platform: one enclave, and workers on Ray."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray

from e2e_support import policy_for
from sealedml.client import SealedMLClient, from_estimator
from sealedml.client._batch import predict_batch
from sealedml.errors import SealedMLError
from sealedml.platform.launch import platform_in_background
from sealedml.platform.settings import Settings

PRICE = 2


@pytest.fixture(scope="module", autouse=True)
def ray_runtime() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def build_cancer():
    """The breast-cancer data, its features, a fitted pipeline and its prepared ONNX model."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = load_breast_cancer(as_frame=True).frame
    features = [c for c in frame.columns if c != "target"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
        frame[features], frame["target"]
    )
    return frame, features, model, from_estimator(model)


@pytest.fixture(scope="module")
def cancer():
    return build_cancer()


def parties(url: str, data_dir: Path, prepared, credits: int) -> tuple[SealedMLClient, str, str]:
    admin_token = (data_dir / "admin-token").read_text().strip()
    policy = policy_for(url)
    with SealedMLClient(url, admin_token) as admin:
        provider = admin.create_account("provider", "provider")["token"]
        owner = admin.create_account("owner", "data_owner")
        admin._json("POST", f"/v1/accounts/{owner['id']}/credits", json={"amount": credits})
    with SealedMLClient(url, provider, policy=policy) as client:
        model_id = client.publish_model("model", prepared, price_per_row=PRICE).model.id
    return SealedMLClient(url, owner["token"], policy=policy), model_id, owner["id"]


def input_file(tmp_path: Path, frame: pd.DataFrame, features: list[str], rows: int, suffix: str) -> Path:
    repeats = -(-rows // len(frame))
    big = pd.concat([frame[features]] * repeats, ignore_index=True).iloc[:rows]
    big = big + np.random.default_rng(7).normal(scale=0.01, size=big.shape)
    path = tmp_path / f"input{suffix}"
    if suffix == ".csv":
        big.to_csv(path, index=False)
    else:
        big.to_parquet(path, index=False)
    return path


def expected_labels(model, path: Path, features: list[str]) -> np.ndarray:
    frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    return model.predict(frame[features].astype(np.float32))


def read_output(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


def test_batch_runs_through_a_single_enclave_without_ray(tmp_path, cancer):
    frame, features, model, prepared = cancer
    data_dir = tmp_path / "single"
    with platform_in_background(Settings(data_dir=data_dir)) as server:
        owner, model_id, _owner_id = parties(server.url, data_dir, prepared, credits=10_000)
        with owner:
            source = input_file(tmp_path, frame, features, 1_234, ".csv")
            seen: list[int] = []
            uploaded: list[tuple[int, int]] = []
            result = predict_batch(
                owner,
                model_id,
                source,
                tmp_path / "out.csv",
                shard_rows=300,
                window=2,
                progress=lambda done, total: seen.append(done),
                sent=lambda done, total: uploaded.append((done, total)),
            )
            assert result.rows == 1_234 and result.shards == 5 and len(set(result.job_ids)) == 5
            assert seen == [300, 600, 900, 1200, 1234]
            assert uploaded == [(300, 1_234), (600, 1_234), (900, 1_234), (1200, 1_234), (1234, 1_234)]
            out = read_output(tmp_path / "out.csv")
            assert list(out["prediction"]) == list(expected_labels(model, source, features))
            assert {"p_0", "p_1"} <= set(out.columns)
            assert owner.me()["balance"] == 10_000 - PRICE * 1_234
            jobs = owner.list_jobs()
            assert sorted(j["id"] for j in jobs) == sorted(result.job_ids)


def test_batch_on_ray_workers_survives_a_killed_worker_and_bills_each_shard_once(tmp_path, cancer):
    frame, features, model, prepared = cancer
    data_dir = tmp_path / "ray"
    rows, shard_rows = 24_000, 600
    with platform_in_background(Settings(data_dir=data_dir, ray="local", ray_workers=2), workers=1) as server:
        pool = server.app.state.service.enclave
        assert [w.name for w in pool.cluster.workers] == ["worker-0", "worker-1"]
        owner, model_id, _ = parties(server.url, data_dir, prepared, credits=1_000_000)
        # Provisioning fanned the model out to both workers by peer transfer.
        assert all(model_id in w.models for w in pool.cluster.workers)
        source = input_file(tmp_path, frame, features, rows, ".parquet")
        killed: list[str] = []

        def kill_one_busy_worker() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if pool.completed >= 5:
                    busy = [w for w in pool.cluster.workers if w.slot == 1 and pool.in_flight(w.slot)]
                    if busy:
                        killed.append(busy[0].name)
                        ray.kill(busy[0].actor, no_restart=True)
                        return
                time.sleep(0.002)

        killer = threading.Thread(target=kill_one_busy_worker)
        killer.start()
        with owner:
            result = predict_batch(
                owner, model_id, source, tmp_path / "out.parquet", shard_rows=shard_rows, window=4
            )
            killer.join()
            assert killed == ["worker-1"]
            shards = rows // shard_rows
            assert result.rows == rows and result.shards == shards and len(set(result.job_ids)) == shards
            out = read_output(tmp_path / "out.parquet")
            assert list(out["prediction"]) == list(expected_labels(model, source, features))
            # Billed exactly once per shard: the balance fell by the price of every row, once.
            assert owner.me()["balance"] == 1_000_000 - PRICE * rows
            assert len(owner.list_jobs()) == shards
        assert pool.retries >= 1
        # The lost worker was replaced in its slot, joined and serves the cluster identity.
        assert [w.slot for w in pool.cluster.workers] == [0, 1]
        assert pool.cluster.workers[1].name != "worker-1"


def test_a_failing_shard_stops_the_batch_after_the_shards_before_it(tmp_path, cancer):
    frame, features, _model, prepared = cancer
    data_dir = tmp_path / "short"
    with platform_in_background(Settings(data_dir=data_dir)) as server:
        # Credit for two shards only: the third is refused by billing, nothing after it runs.
        owner, model_id, _ = parties(server.url, data_dir, prepared, credits=PRICE * 200)
        with owner:
            source = input_file(tmp_path, frame, features, 500, ".csv")
            with pytest.raises(SealedMLError) as info:
                predict_batch(owner, model_id, source, tmp_path / "out.csv", shard_rows=100, window=1)
            assert info.value.code == "billing.insufficient_credit"
            assert len(read_output(tmp_path / "out.csv")) == 200
            assert owner.me()["balance"] == 0


@pytest.mark.ray_heavy
def test_a_million_rows_on_three_workers_with_two_killed(tmp_path, cancer):
    frame, features, model, prepared = cancer
    rows, shard_rows = 1_000_000, 20_000
    data_dir = tmp_path / "heavy"
    with platform_in_background(Settings(data_dir=data_dir, ray="local", ray_workers=3), workers=1) as server:
        pool = server.app.state.service.enclave
        owner, model_id, _ = parties(server.url, data_dir, prepared, credits=10 * rows)
        source = input_file(tmp_path, frame, features, rows, ".parquet")
        killed: list[str] = []

        def kill(after: int, slot: int) -> None:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if pool.completed >= after:
                    target = next((w for w in pool.cluster.workers if w.slot == slot), None)
                    if target is not None and pool.in_flight(slot):
                        killed.append(target.name)
                        ray.kill(target.actor, no_restart=True)
                        return
                time.sleep(0.002)

        killers = [threading.Thread(target=kill, args=(5, 1)), threading.Thread(target=kill, args=(20, 2))]
        for killer in killers:
            killer.start()
        with owner:
            result = predict_batch(
                owner, model_id, source, tmp_path / "out.parquet", shard_rows=shard_rows, window=6
            )
            for killer in killers:
                killer.join()
            assert sorted(killed) == ["worker-1", "worker-2"]
            assert result.rows == rows and result.shards == rows // shard_rows
            out = pd.read_parquet(tmp_path / "out.parquet")
            assert len(out) == rows
            assert np.array_equal(out["prediction"].to_numpy(), expected_labels(model, source, features))
            assert owner.me()["balance"] == 10 * rows - PRICE * rows
            assert len({j["id"] for j in owner.list_jobs() if j["kind"] == "predict"}) == rows // shard_rows
        assert [w.slot for w in pool.cluster.workers] == [0, 1, 2]
