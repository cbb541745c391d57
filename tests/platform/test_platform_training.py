"""Confidential training through the platform: a real server on loopback, the real simulated enclave
process (relaunched when it dies), real crypto, the SDK as the clients."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from hypothesis import given, settings
from hypothesis import strategies as st

from e2e_support import policy_for
from enclave.test_training_kit import (
    CANCER_LABEL,
    breast_cancer_table,
    declared_bounds,
    onnx_labels,
    validation_rows,
)
from sealedml.client import SealedMLClient
from sealedml.client._training import UploadedDataset, public_hex
from sealedml.crypto.envelope import canonical_json
from sealedml.crypto.request import seal_request
from sealedml.errors import EnclaveError, SealedMLError
from sealedml.platform.app import create_app
from sealedml.platform.db import Database, Dataset, Job
from sealedml.platform.server import BackgroundServer
from sealedml.platform.settings import Settings
from sealedml.platform.training import TrainingSettings
from sealedml.tee.client import DatasetBudget, _train_result
from sealedml.tee.simulated import launch_simulated

MAX_DATASET_BYTES = 200 * 1024


@dataclass
class World:
    server: BackgroundServer
    settings: Settings
    admin_token: str
    policy: object
    names: iter = field(default_factory=lambda: iter(range(10_000)))

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def supervisor(self):
        return self.server.app.state.service.enclave

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{next(self.names)}-{uuid.uuid4().hex[:6]}"

    def account(self, role: str = "data_owner", credits: int = 0) -> str:
        with SealedMLClient(self.url, self.admin_token) as admin:
            created = admin.create_account(self.unique(role), role)
            if credits:
                admin.market.grant(created["id"], credits)
        return str(created["token"])

    def client(self, token: str) -> SealedMLClient:
        return SealedMLClient(self.url, token, policy=self.policy)

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.settings.data_dir / "sealedml.db")

    def stored_files(self) -> dict[str, str]:
        root = self.settings.blob_dir
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*")
            if p.is_file()
        }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data = tmp_path_factory.mktemp("training-platform")
    settings = Settings(data_dir=data, max_request_bytes=1024 * 1024)
    relaunch = partial(launch_simulated, data / "platform", workers=2)
    app = create_app(
        settings,
        relaunch(),
        relauncher=relaunch,
        training_settings=TrainingSettings(max_dataset_bytes=MAX_DATASET_BYTES),
    )
    try:
        with BackgroundServer(app) as server:
            token = settings.admin_token_path.read_text().strip()
            yield World(server, settings, token, policy_for(server.url))
    finally:
        app.state.service.enclave.close()


def upload(client: SealedMLClient, table: pa.Table, name: str, **options) -> UploadedDataset:
    key = ed25519.Ed25519PrivateKey.generate()
    return client.training.upload_table(table, name, approval_key=key, **options)


def run_job(client: SealedMLClient, owner_key: ed25519.Ed25519PrivateKey | None, spec: dict, **submit):
    submission, job = client.training.submit(spec, **submit)
    if owner_key is not None:
        client.training.approve(job.id, {spec["datasets"][0]: owner_key})
    seen = []
    final = client.training.wait(job.id, submission=submission, on_update=seen.append, raise_on_failure=False)
    return submission, final, seen


# -- single owner ---------------------------------------------------------------------------------


def test_single_owner_job_runs_in_the_background_and_its_model_matches_the_released_metrics(world) -> None:
    table = breast_cancer_table()
    recipient = x25519.X25519PrivateKey.generate()
    owner = world.account()
    doctor = world.account()
    with world.client(owner) as client:
        dataset = upload(client, table, world.unique("cancer"))
        assert dataset.info.status == "ready" and dataset.confirmation["rows"] == 569
        features = [c for c in table.column_names if c != CANCER_LABEL]
        spec = client.training.build_spec(
            [dataset.info.id],
            label=CANCER_LABEL,
            algorithm="logistic_regression",
            recipients=[public_hex(recipient)],
            features=features,
            publish=True,
            serving={"output_policy": {"mode": "probabilities", "decimals": 6}},
        )
        name = world.unique("cancer-model")
        submission, job = client.training.submit(spec, publish_name=name)
        assert job.status == "awaiting_approval" and job.error_code == "request.approvals_missing"
        assert list(job.waiting_for) == [dataset.info.id] and job.request_fresh is True
        assert [m.status for m in client.list_models() if m.name == name] == ["created"]  # reserved
        # A request sealed too long ago keeps the approved job queued (it would expire in the
        # enclave) until the submitter's SDK re-seals it while waiting.
        stale = seal_request(
            enclave_public_key=bytes.fromhex(client.enclave_info()["hpke_public_key"]),
            op="train",
            model=spec["model"],
            payload=canonical_json(spec),
            now=int(time.time()) - 500,
        )
        client._request(
            "PUT",
            f"/v1/jobs/{job.id}/request",
            content=stale.envelope,
            headers={"Content-Type": "application/octet-stream"},
        )
        approvals = client.training.approve(job.id, {dataset.info.id: dataset.approval_key})
        assert approvals[0].spec_sha256 == submission.spec_sha256
        queued = client.training.job(job.id)
        assert (queued.status, queued.phase, queued.progress) == ("queued", "queued", 5)
        assert queued.request_fresh is False and queued.waiting_for == ()
        seen, refreshed = [], []
        final = client.training.wait(
            job.id, submission=submission, on_update=seen.append, on_refresh=refreshed.append
        )
        assert len(refreshed) == 1 and refreshed[0].request_id != submission.request_id
        outcome = client.training.outcome(refreshed[0], final)
        fetched = client.training.fetch_model(job.id, recipient, evidence=client.training.last_evidence)
        listed = [(j["id"], j["kind"], j["status"]) for j in client.list_jobs()]

    states = [(j.status, j.phase, j.progress) for j in seen]
    assert states[0] == ("queued", "queued", 5) and states[-1] == ("done", "done", 100)
    assert [p["phase"] for p in final.phases] == [
        "decrypting",
        "preparing",
        "training",
        "exporting",
        "evaluating",
        "encrypting",
    ]
    assert (job.id, "train", "done") in listed
    assert final.receipt["kind"] == "train" and final.receipt["spec_sha256"] == submission.spec_sha256
    assert outcome.ledger is not None and outcome.feature_columns == tuple(features)

    # The recipient's model, run outside the enclave, reproduces the released accuracy exactly.
    x = np.column_stack([table.column(f).to_numpy() for f in features]).astype(np.float32)
    y = table.column(CANCER_LABEL).to_numpy()
    x_val, y_val = validation_rows(x, y)
    labels, _ = onnx_labels(fetched.onnx_bytes, x_val)
    assert float(np.mean(labels == y_val)) == pytest.approx(outcome.metrics["accuracy"], abs=1e-12)
    assert fetched.metrics == outcome.metrics and fetched.input_columns == tuple(features)

    # The published model is ready in the catalog and another account predicts with it unseen.
    with world.client(doctor) as client:
        model = client.get_model(name)
        assert model.status == "ready" and model.input_columns == tuple(features)
        prediction = client.predict(model.id, x_val[:10])
    local_labels, local_probabilities = onnx_labels(fetched.onnx_bytes, x_val[:10])
    assert np.array_equal(prediction.labels, local_labels)
    assert np.allclose(prediction.probabilities, local_probabilities, atol=1e-5)


# -- multi-party ----------------------------------------------------------------------------------


def _joint_tables(canary: str) -> tuple[pa.Table, pa.Table]:
    """Two hospitals' halves of the cancer data with a non-feature id column; B's first id is
    ``canary``, so a plaintext copy anywhere on the host would contain it."""
    table = breast_cancer_table()
    ids = [f"patient-{i:04d}" for i in range(table.num_rows)]
    ids[400] = canary
    table = table.append_column("patient_id", pa.array(ids))
    return table.slice(0, 400), table.slice(400)


def test_joint_job_needs_every_owner_and_no_plaintext_reaches_the_host(world, tmp_path: Path) -> None:
    canary = f"CANARY-{uuid.uuid4().hex}"
    table_a, table_b = _joint_tables(canary)
    csv_b = tmp_path / "hospital-b.csv"
    pa_csv.write_csv(table_b, csv_b)
    owner_a, owner_b, outsider = world.account(), world.account(), world.account()
    keys = {k: x25519.X25519PrivateKey.generate() for k in ("a", "b")}
    with world.client(owner_a) as a, world.client(owner_b) as b:
        data_a = upload(a, table_a, world.unique("hospital-a"))
        key_b = ed25519.Ed25519PrivateKey.generate()
        sent = []
        data_b = b.training.upload_file(
            csv_b, world.unique("hospital-b"), approval_key=key_b, progress=lambda s, t: sent.append((s, t))
        )
        assert sent and sent[-1][0] == sent[-1][1] == data_b.info.blob_size
        # The joint spec: the feature columns are shared by agreement; the id column is not one.
        features = [c for c in table_a.column_names if c not in (CANCER_LABEL, "patient_id")]
        spec = a.training.build_spec(
            [data_a.info.id, data_b.info.id],
            label=CANCER_LABEL,
            algorithm="random_forest",
            params={"n_estimators": 20},
            features=features,
            recipients=[public_hex(keys["a"]), public_hex(keys["b"])],
        )
        submission, job = a.training.submit(spec)
        a.training.approve(job.id, {data_a.info.id: data_a.approval_key})
        waiting = a.training.job(job.id)
        assert waiting.status == "awaiting_approval"
        assert list(waiting.waiting_for) == [data_b.info.id]
        assert waiting.error_code == "request.approvals_missing" and data_b.info.id in waiting.error_message

        # A cannot approve for B's dataset through the platform, nor an outsider see the job.
        with pytest.raises(SealedMLError) as caught:
            a.training.approve(waiting, {data_b.info.id: data_a.approval_key})
        assert caught.value.code == "not_found.dataset"
        with world.client(outsider) as c:
            for action in (
                lambda: c.training.job(job.id),
                lambda: c._json("GET", f"/v1/jobs/{job.id}/model"),
                lambda: c._json("GET", f"/v1/datasets/{data_a.info.id}"),
            ):
                with pytest.raises(SealedMLError) as caught:
                    action()
                assert caught.value.code in ("not_found.job", "not_found.dataset")
            assert c.list_jobs() == []
        with pytest.raises(SealedMLError) as caught:
            a._json("GET", f"/v1/datasets/{data_b.info.id}")
        assert caught.value.code == "not_found.dataset"

        # B relaying an approval signed with another key is refused by the enclave.
        with pytest.raises(SealedMLError) as caught:
            b.training.approve(job.id, {data_b.info.id: data_a.approval_key})
        assert caught.value.code == "request.approval_invalid"
        assert b.training.job(job.id).status == "awaiting_approval"

        # B reviews the spec the platform shows (its digest is recomputed) and approves it.
        shown = b.training.job(job.id)
        assert shown.spec_sha256 == submission.spec_sha256
        b.training.approve(shown, {data_b.info.id: key_b})
        final = a.training.wait(job.id, submission=submission)
        outcome = a.training.outcome(submission, final)
        model_a = a.training.fetch_model(
            job.id, keys["a"], evidence=(submission.evidence, submission.attested_at)
        )
        model_b = b.training.fetch_model(job.id, keys["b"])
        assert b.training.grant_outcome(final, keys["b"]).metrics == outcome.metrics
    assert model_a.model_sha256 == model_b.model_sha256 == final.receipt["model_sha256"]
    assert outcome.metrics["rows_used"] == 569
    assert [d["approved"] for d in final.datasets] == [True, True]

    # The platform never stored a plaintext row: not in the blob folder, the databases or any file.
    found = [
        str(p)
        for p in world.settings.data_dir.rglob("*")
        if p.is_file() and (canary.encode() in p.read_bytes() or b"patient-0401" in p.read_bytes())
    ]
    assert found == []
    assert canary.encode() in csv_b.read_bytes()  # the canary is really in the owner's plaintext


# -- differential privacy and budgets -------------------------------------------------------------


def test_dp_budget_is_spent_stored_and_exhaustion_changes_nothing(world) -> None:
    table = breast_cancer_table()
    bounds = declared_bounds(table, CANCER_LABEL)
    recipient = x25519.X25519PrivateKey.generate()
    owner = world.account()
    with world.client(owner) as client:
        dataset = upload(client, table, world.unique("dp"), epsilon_total=1.5)
        assert dataset.info.epsilon_total == 1.5 and dataset.info.epsilon_remaining == 1.5

        def dp_spec(**fields):
            return client.training.build_spec(
                [dataset.info.id],
                label=CANCER_LABEL,
                algorithm="naive_bayes",
                recipients=[public_hex(recipient)],
                feature_bounds=bounds,
                classes=[0, 1],
                **fields,
            )

        with pytest.raises(SealedMLError) as caught:  # a budgeted dataset takes DP jobs only
            client.training.submit(
                client.training.build_spec(
                    [dataset.info.id],
                    label=CANCER_LABEL,
                    algorithm="naive_bayes",
                    recipients=[public_hex(recipient)],
                )
            )
        assert caught.value.code == "input.dp_required"

        _, first, _ = run_job(client, dataset.approval_key, dp_spec(dp_epsilon=1.0))
        assert first.status == "done" and first.receipt["epsilon_spent"] == 1.0
        assert first.budgets[0]["epsilon_remaining"] == pytest.approx(0.5)
        after = client.training.dataset(dataset.info.id)
        assert (after.generation, after.epsilon_spent) == (1, 1.0)
        with world.db() as db:
            (stored_state,) = db.execute(
                "SELECT sealed_state FROM datasets WHERE id = ?", (dataset.info.id,)
            ).fetchone()

        # The host refuses a job the public budget cannot cover; nothing is stored.
        files = world.stored_files()
        with pytest.raises(SealedMLError) as caught:
            client.training.submit(dp_spec(dp_epsilon=1.0))
        assert caught.value.code == "input.privacy_budget_exhausted"
        assert world.stored_files() == files

        # A host that lost track of the budget cannot overspend it: the enclave refuses.
        with world.db() as db:
            db.execute("UPDATE datasets SET epsilon_spent = 0 WHERE id = ?", (dataset.info.id,))
        _, refused, _ = run_job(client, dataset.approval_key, dp_spec(dp_epsilon=1.0))
        assert (refused.status, refused.error_code) == ("failed", "input.privacy_budget_exhausted")
        with world.db() as db:
            row = db.execute(
                "SELECT sealed_state, generation FROM datasets WHERE id = ?", (dataset.info.id,)
            ).fetchone()
        assert row == (stored_state, 1)  # the stored sealed state is unchanged


# -- restarts, tampering, billing, limits ---------------------------------------------------------


def test_dataset_is_reloaded_from_its_sealed_state_after_an_enclave_restart(world) -> None:
    table = breast_cancer_table()
    recipient = x25519.X25519PrivateKey.generate()
    with world.client(world.account()) as client:
        dataset = upload(client, table, world.unique("restart"))
        before = client.enclave_info()["instance_id"]
        channel = world.supervisor.client.channel
        os.kill(channel.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while channel.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        client.attest()  # reaches the relaunched enclave, with new keys
        assert client.enclave_info()["instance_id"] != before
        assert not world.supervisor.dataset_loaded(dataset.info.id)
        spec = client.training.build_spec(
            [dataset.info.id],
            label=CANCER_LABEL,
            algorithm="naive_bayes",
            recipients=[public_hex(recipient)],
        )
        _, final, _ = run_job(client, dataset.approval_key, spec)
    assert final.status == "done", final.error_message
    assert world.supervisor.dataset_loaded(dataset.info.id)  # loaded back from the stored sealed state


def test_training_price_is_paid_to_the_owner_and_a_tampered_blob_fails_unbilled(world) -> None:
    table = breast_cancer_table()
    recipient = x25519.X25519PrivateKey.generate()
    owner, researcher = world.account(), world.account(credits=100)
    name = world.unique("priced")
    with world.client(owner) as o, world.client(researcher) as r:
        dataset = upload(o, table, name)
        o.training.offer(dataset.info.id, columns=[("mean radius", "float")], rows=569, price=7)
        found = r.training.resolve(name)  # listed on the market: other accounts may name it
        assert found["id"] == dataset.info.id and found["own"] is False

        def job() -> dict:
            return r.training.build_spec(
                [found["id"]], label=CANCER_LABEL, algorithm="naive_bayes", recipients=[public_hex(recipient)]
            )

        submission, pending = r.training.submit(job())
        assert r.me()["balance"] == 93  # held at submission
        o.training.approve(pending.id, {dataset.info.id: dataset.approval_key})
        done = r.training.wait(pending.id, submission=submission)
        assert done.status == "done"
        assert (r.me()["balance"], o.me()["balance"]) == (93, 7)

        # The host's copy of the ciphertext is altered: the job fails with the enclave's code, unbilled.
        with world.db() as db:
            (path,) = db.execute("SELECT blob_path FROM datasets WHERE id = ?", (dataset.info.id,)).fetchone()
        blob = world.settings.blob_dir / path
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0x01
        blob.write_bytes(bytes(data))
        submission, pending = r.training.submit(job())
        assert r.me()["balance"] == 86
        o.training.approve(pending.id, {dataset.info.id: dataset.approval_key})
        failed = r.training.wait(pending.id, submission=submission, raise_on_failure=False)
        assert (failed.status, failed.error_code) == ("failed", "input.blob_mismatch")
        assert (r.me()["balance"], o.me()["balance"]) == (93, 7)
        researcher_id = r.me()["id"]
    charges = world.server.app.state.service.billing.charges(account_id=researcher_id)
    assert sorted((c.amount, c.status, c.model_id) for c in charges) == [
        (7, "refunded", dataset.info.id),
        (7, "settled", dataset.info.id),
    ]


def test_cancelled_job_is_refunded_and_takes_no_approvals(world) -> None:
    table = breast_cancer_table()
    owner, researcher = world.account(), world.account(credits=10)
    name = world.unique("cancel")
    with world.client(owner) as o, world.client(researcher) as r:
        dataset = upload(o, table, name)
        o.training.offer(dataset.info.id, columns=[("mean radius", "float")], rows=569, price=4)
        spec = r.training.build_spec(
            [dataset.info.id],
            label=CANCER_LABEL,
            algorithm="naive_bayes",
            recipients=[public_hex(x25519.X25519PrivateKey.generate())],
        )
        _, pending = r.training.submit(spec)
        assert r.me()["balance"] == 6
        assert r.training.cancel(pending.id).status == "cancelled"
        assert r.me()["balance"] == 10
        with pytest.raises(SealedMLError) as caught:
            o.training.approve(pending.id, {dataset.info.id: dataset.approval_key})
        assert caught.value.code == "input.conflict"


def test_oversized_dataset_upload_is_refused_and_nothing_is_stored(world) -> None:
    rng = np.random.default_rng(0)
    big = pa.table({f"c{i}": pa.array(rng.normal(size=4000)) for i in range(10)})
    files = world.stored_files()
    with world.client(world.account()) as client:
        with pytest.raises(SealedMLError) as caught:
            upload(client, big, world.unique("big"))
        assert caught.value.code == "input.too_large"
        assert client.training.list_datasets() == []  # the half-made entry was removed
    assert world.stored_files() == files


def test_invalid_specs_are_refused_by_the_host_before_anything_is_stored(world) -> None:
    with world.client(world.account()) as client:
        dataset = upload(client, breast_cancer_table(), world.unique("spec"))
        good = client.training.build_spec(
            [dataset.info.id],
            label=CANCER_LABEL,
            algorithm="naive_bayes",
            recipients=[public_hex(x25519.X25519PrivateKey.generate())],
        )
        cases = {
            "input.spec_invalid": [
                {**good, "params": {"n_estimators": 5}},  # not a naive Bayes parameter
                {**good, "job": "not-hex"},
                {**good, "publish": True},  # publishing needs features and a name
            ],
            "not_found.dataset": [{**good, "datasets": [uuid.uuid4().hex]}],
        }
        for code, specs in cases.items():
            for spec in specs:
                with pytest.raises(SealedMLError) as caught:
                    client.training.submit(spec)
                assert caught.value.code == code, spec
        assert [j for j in client.list_jobs() if j["kind"] == "train"] == []


def test_an_old_jobs_table_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE accounts (id VARCHAR(32) PRIMARY KEY)")
        db.execute("INSERT INTO accounts VALUES ('acct')")
        db.execute(
            "CREATE TABLE jobs (id VARCHAR(32) PRIMARY KEY, owner_id VARCHAR(32) REFERENCES accounts(id), "
            "model_id VARCHAR(32), request_id VARCHAR(128) UNIQUE, status VARCHAR(16), rows INTEGER, "
            "receipt JSON, signature VARCHAR(256), result_path VARCHAR(512), created_at DATETIME, "
            "CONSTRAINT ck_jobs_status CHECK (status IN ('done')))"
        )
        db.execute("CREATE INDEX ix_jobs_owner_id ON jobs (owner_id)")
        db.execute(
            "INSERT INTO jobs VALUES ('j1', 'acct', 'm1', 'r1', 'done', 3, '{\"job\": \"j1\"}', 'sig', "
            "'results/j1.sml', '2026-01-01 00:00:00')"
        )
    database = Database(f"sqlite:///{path}")
    try:
        with database.session() as session:
            job = session.get(Job, "j1")
            assert (job.kind, job.status, job.rows, job.receipt) == ("predict", "done", 3, {"job": "j1"})
            session.add(
                Job(
                    id="j2",
                    owner_id="acct",
                    model_id="m2",
                    request_id="r2",
                    status="awaiting_approval",
                    rows=0,
                    receipt={},
                    signature="",
                    result_path="",
                    kind="train",
                )
            )
        assert Database(f"sqlite:///{path}").dialect == "sqlite"  # a second open changes nothing
        with database.session() as session:
            assert session.get(Dataset, "none") is None
            assert {j.id for j in session.query(Job)} == {"j1", "j2"}
    finally:
        database.dispose()


def test_waiting_jobs_expire_and_a_restart_fails_unfinished_jobs_with_refunds(tmp_path: Path) -> None:
    """Approvals live in enclave memory: a job that waits too long for them fails, and so does every
    unfinished job when the platform (and with it the enclave) restarts; their prices come back."""
    data = tmp_path / "data"
    settings = Settings(data_dir=data)

    @contextmanager
    def serving(training: TrainingSettings) -> Iterator[World]:
        enclave = launch_simulated(data / "platform", workers=1)
        app = create_app(settings, enclave, training_settings=training)
        try:
            with BackgroundServer(app) as server:
                token = settings.admin_token_path.read_text().strip()
                yield World(server, settings, token, policy_for(server.url))
        finally:
            enclave.close()

    def priced_job(world: World, researcher: str, dataset_id: str) -> str:
        with world.client(researcher) as r:
            spec = r.training.build_spec(
                [dataset_id],
                label=CANCER_LABEL,
                algorithm="naive_bayes",
                recipients=[public_hex(x25519.X25519PrivateKey.generate())],
            )
            return r.training.submit(spec)[1].id

    with serving(TrainingSettings()) as first:
        owner, researcher = first.account(), first.account(credits=20)
        with first.client(owner) as o:
            dataset = upload(o, breast_cancer_table(), first.unique("restart"))
            o.training.offer(dataset.info.id, columns=[("mean radius", "float")], rows=569, price=5)
        pending = priced_job(first, researcher, dataset.info.id)
        with first.client(researcher) as r:
            assert r.me()["balance"] == 15

    with serving(TrainingSettings(approval_wait_seconds=0, sweep_seconds=0.05)) as second:
        with second.client(researcher) as r:
            failed = r.training.job(pending)
            assert (failed.status, failed.error_code) == ("failed", "request.expired")
            assert r.me()["balance"] == 20
            expiring = priced_job(second, researcher, dataset.info.id)
            expired = r.training.wait(expiring, raise_on_failure=False, timeout=30)
            assert (expired.status, expired.error_code) == ("failed", "request.approvals_missing")
            assert r.me()["balance"] == 20


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
REPLY_FIELDS = (
    "model job spec_sha256 model_sha256 model_blob_sha256 published grants phases datasets receipt "
    "signature layout dataset generation epsilon_total"
).split()
reply_fields = st.sampled_from(REPLY_FIELDS)


@settings(max_examples=300, deadline=None)
@given(
    header=st.dictionaries(reply_fields, json_values, max_size=10),
    parts=st.lists(st.binary(max_size=8), max_size=4),
)
def test_enclave_replies_of_any_shape_raise_only_protocol_errors(header, parts) -> None:
    """The host parses what the enclave process sends back; a broken or hostile peer gets a typed
    ``enclave.protocol`` error, never an IndexError or AttributeError."""
    for parse in (lambda: _train_result(header, parts), lambda: DatasetBudget.from_header(header)):
        try:
            parse()
        except EnclaveError as exc:
            assert exc.code == "enclave.protocol"


def test_a_well_formed_train_reply_parses_into_its_parts() -> None:
    header = {
        "model": "m",
        "job": "j",
        "spec_sha256": "aa" * 32,
        "model_sha256": "bb" * 32,
        "model_blob_sha256": "cc" * 32,
        "published": True,
        "grants": [{"recipient": "dd" * 32, "grant": "0102"}],
        "phases": [{"phase": "training", "seconds": 0.5}],
        "datasets": [
            {
                "dataset": "d",
                "generation": 2,
                "epsilon_spent": 1.0,
                "epsilon_total": 3.0,
                "epsilon_remaining": 2.0,
            }
        ],
        "receipt": {"kind": "train"},
        "signature": "ee",
        "layout": ["model_blob", "response", "model_config", "dataset_state:d"],
    }
    result = _train_result(header, [b"blob", b"response", b"config", b"state"])
    assert (result.model_blob, result.response, result.model_config) == (b"blob", b"response", b"config")
    assert result.dataset_states == {"d": b"state"} and result.grants == (("dd" * 32, b"\x01\x02"),)
    assert result.budgets[0].epsilon_remaining == 2.0
    with pytest.raises(EnclaveError):  # a published model must come with its sealed config
        _train_result({**header, "layout": ["model_blob", "response"]}, [b"blob", b"response"])
