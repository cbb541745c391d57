"""`--ray ADDRESS`: the platform joins a Ray cluster that another process started.

A real Ray head runs as a separate process tree (`ray start --head --block` from this venv, its
own temp dir, token authentication as `ray start` sets it up by default). The platform connects
to it with ``Settings(ray="127.0.0.1:<port>")``, its enclave workers run as actors of that
cluster (processes of the head's session, not of this one), a data owner attests, a provider
publishes a model and a sealed batch prediction runs through it: complete, in order, billed once
per shard. The head is stopped by signalling the process this module started (never `ray stop`,
which stops every Ray runtime on the machine) and its whole session is checked to be gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray

from e2e_support import policy_for
from sealedml.attestation.measurement import compute_measurement
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.client import SealedMLClient, from_estimator
from sealedml.client._batch import predict_batch
from sealedml.distributed.cluster import EnclaveCluster
from sealedml.errors import SealedMLError
from sealedml.platform.launch import platform_in_background
from sealedml.platform.settings import Settings

RAY_EXECUTABLE = Path(sys.executable).with_name("ray")
PRICE = 3
ROWS, SHARD_ROWS = 12_000, 1_000
HEAD_START_TIMEOUT = 120.0
HEAD_STOP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def session_processes(sid: int) -> list[int]:
    """Live processes of session ``sid`` (the head's session: everything it and Ray spawned)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.getsid(pid) == sid and "Z" not in (entry / "stat").read_text().split(")")[-1][:3]:
                found.append(pid)
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
    return found


@dataclass(frozen=True)
class RayHead:
    process: subprocess.Popen[bytes]
    port: int
    temp_dir: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return (self.temp_dir / "head.log").read_text(errors="replace")


def stop_head(head: RayHead) -> list[int]:
    """SIGTERM the `ray start --block` process (it stops what it started), then SIGKILL its session's
    stragglers. Returns the processes that were still alive after the graceful stop."""
    if head.process.poll() is None:
        head.process.terminate()
        try:
            head.process.wait(timeout=HEAD_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            head.process.kill()
            head.process.wait(timeout=HEAD_STOP_TIMEOUT)
    deadline = time.monotonic() + HEAD_STOP_TIMEOUT
    stragglers = session_processes(head.process.pid)
    while session_processes(head.process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in session_processes(head.process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return stragglers


@contextlib.contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[RayHead]:
    """A Ray head in its own session and temp dir (short: Ray's unix sockets live under it)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="sealedml-rayhead-", dir="/tmp"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env["RAY_AUTH_MODE"] = "token"  # what `ray start --head` does by default, made explicit
    argv = [
        str(RAY_EXECUTABLE),
        *("start", "--head", "--block", f"--port={port}", f"--num-cpus={num_cpus}"),
        *("--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"),
        f"--dashboard-port={free_port()}",  # the job API server starts anyway; not on the shared 8265
    ]
    with (temp_dir / "head.log").open("wb") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    head = RayHead(process, port, temp_dir)
    try:
        deadline = time.monotonic() + HEAD_START_TIMEOUT
        while not (temp_dir / "ray_current_cluster").exists():  # written once the head is up
            if process.poll() is not None:
                pytest.fail(f"`ray start --head` exited with {process.returncode}:\n{head.log()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"`ray start --head` was not up after {HEAD_START_TIMEOUT} s:\n{head.log()[-3000:]}"
                )
            time.sleep(0.2)
        yield head
    finally:
        stop_head(head)
        left = session_processes(process.pid)
        if not left:
            shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"processes of the Ray head outlived it: {left}"


@contextlib.contextmanager
def token_auth_in_this_process() -> Iterator[None]:
    """What the operator of `sealedml serve --ray ADDRESS` does for a token-authenticated cluster:
    export RAY_AUTH_MODE=token. Ray reads the mode once, when it is imported, so its config is
    refreshed here exactly as `ray.init()` does when it starts a local runtime."""
    from ray._raylet import Config

    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = previous
        Config.initialize("")


@pytest.fixture(scope="module")
def head() -> Iterator[RayHead]:
    if ray.is_initialized():  # another module leaked its runtime: the address would be ignored
        ray.shutdown()
    try:
        with ray_head() as started, token_auth_in_this_process():
            yield started
    finally:
        if ray.is_initialized():  # never leave this module's connection to the next module
            ray.shutdown()


@pytest.fixture(scope="module")
def cancer():
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = load_breast_cancer(as_frame=True).frame
    features = [c for c in frame.columns if c != "target"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
        frame[features], frame["target"]
    )
    return frame, features, model


def test_the_platform_serves_sealed_batches_from_workers_on_a_separately_started_cluster(
    head, cancer, tmp_path
):
    frame, features, model = cancer
    data_dir = tmp_path / "platform"
    settings = Settings(data_dir=data_dir, ray=head.address, ray_workers=2)
    assert not ray.is_initialized()
    with platform_in_background(settings, workers=1) as server:
        pool = server.app.state.service.enclave
        cluster = pool.cluster
        assert [w.name for w in cluster.workers] == ["worker-0", "worker-1"] and cluster.rejected == []
        # Connected to that cluster (not a new local runtime): same GCS port, and every worker actor
        # and its enclave process belong to the head's process session, not to this process's.
        assert ray.get_runtime_context().gcs_address.rsplit(":", 1)[1] == str(head.port)
        actor_pids = [ray.get(w.actor.pid.remote()) for w in cluster.workers]
        enclave_pids = [ray.get(w.actor.enclave_pid.remote()) for w in cluster.workers]
        for pid in (*actor_pids, *enclave_pids):
            assert os.getsid(pid) == head.process.pid != os.getsid(0)
        assert len(set(enclave_pids)) == 2

        # A data owner attests the cluster under its own policy: the enclave code measured here,
        # the simulated root pinned; every worker serves the keys it attested.
        policy: AppraisalPolicy = policy_for(server.url)
        admin_token = (data_dir / "admin-token").read_text().strip()
        with SealedMLClient(server.url, admin_token) as admin:
            provider = admin.create_account(f"provider-{uuid.uuid4().hex[:6]}", "provider")
            owner = admin.create_account(f"owner-{uuid.uuid4().hex[:6]}", "data_owner")
            admin.market.grant(owner["id"], 1_000_000)
        with SealedMLClient(server.url, owner["token"], policy=policy) as client:
            attested = client.attest()
        assert attested.claims.simulated and attested.claims.measurement == compute_measurement()
        for worker in cluster.workers:
            hello = ray.get(worker.actor.info.remote())
            assert bytes.fromhex(hello["hpke_public_key"]) == attested.hpke_public_key
            assert worker.claims["measurement"] == compute_measurement()

        with SealedMLClient(server.url, provider["token"], policy=policy) as client:
            model_id = client.publish_model("cancer", from_estimator(model), price_per_row=PRICE).model.id
        assert all(model_id in w.models for w in cluster.workers)  # fanned out enclave to enclave

        repeats = -(-ROWS // len(frame))
        rows = pd.concat([frame[features]] * repeats, ignore_index=True).iloc[:ROWS]
        rows = rows + np.random.default_rng(5).normal(scale=0.01, size=rows.shape)
        source, output = tmp_path / "rows.parquet", tmp_path / "scored.parquet"
        rows.to_parquet(source, index=False)
        seen: list[int] = []
        with SealedMLClient(server.url, owner["token"], policy=policy) as client:
            result = predict_batch(
                client,
                model_id,
                source,
                output,
                shard_rows=SHARD_ROWS,
                window=4,
                progress=lambda done, _total: seen.append(done),
            )
            balance = client.me()["balance"]
            jobs = client.list_jobs()
        shards = ROWS // SHARD_ROWS
        assert (result.rows, result.shards) == (ROWS, shards)
        assert seen == [SHARD_ROWS * (i + 1) for i in range(shards)]
        scored = pd.read_parquet(output)
        expected = model.predict(pd.read_parquet(source)[features].astype(np.float32))
        assert scored["prediction"].tolist() == expected.tolist()  # complete and in input order
        # Billed once per shard: one settled charge of PRICE x shard rows per job, nothing else.
        assert len(set(result.job_ids)) == shards and sorted(j["id"] for j in jobs) == sorted(result.job_ids)
        charges = server.app.state.service.billing.charges(account_id=owner["id"])
        assert sorted((c.job_id, c.amount, c.status) for c in charges) == sorted(
            (job, PRICE * SHARD_ROWS, "settled") for job in result.job_ids
        )
        assert balance == 1_000_000 - PRICE * ROWS
        assert pool.completed == shards and pool.retries == 0

    # The platform disconnected from the cluster it joined and stopped its workers; it did not
    # stop the cluster itself, which another process owns.
    assert not ray.is_initialized()
    assert head.process.poll() is None
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in enclave_pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in enclave_pids if Path(f"/proc/{pid}").exists()]


def test_an_address_where_no_ray_cluster_listens_fails_fast_with_a_typed_error(tmp_path):
    policy = AppraisalPolicy(allow_simulated=True, reference_measurements=(compute_measurement(),))
    nobody = free_port()  # bound and released: nothing listens there

    async def start(address: str) -> None:
        await EnclaveCluster.start(workers=1, address=address, platform_dir=tmp_path, policy=policy)

    with pytest.raises(SealedMLError) as refused:
        asyncio.run(start(f"127.0.0.1:{nobody}"))
    assert refused.value.code == "cluster.unreachable"
    assert f"127.0.0.1:{nobody}" in refused.value.message and "ray start --head" in refused.value.message
    with pytest.raises(SealedMLError) as malformed:
        asyncio.run(start("127.0.0.1:six-three-seven-nine"))
    assert malformed.value.code == "config.invalid"
    assert not ray.is_initialized()


@pytest.mark.ray_heavy  # Ray retries the refused token for ~20 s before it gives up
def test_a_process_without_the_clusters_token_gets_a_typed_error_naming_the_fix(head, tmp_path):
    """A fresh process (as `sealedml serve` starts) with token authentication off cannot join."""
    script = textwrap.dedent(
        f"""
        from sealedml.distributed.cluster import connect_ray
        from sealedml.errors import SealedMLError
        try:
            connect_ray({head.address!r})
        except SealedMLError as exc:
            print(exc.code)
            print(exc.message)
        else:
            print("connected")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_AUTH_MODE"] = "disabled"
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    lines = done.stdout.splitlines()
    assert lines[:1] == ["cluster.unreachable"], done.stdout + done.stderr[-3000:]
    assert "RAY_AUTH_MODE=token" in lines[1]
