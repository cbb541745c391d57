"""Databases made before encrypted-ML mode are upgraded in place: models gain ``mode``, jobs accept
``he-predict``; nothing is lost and foreign keys still hold."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import text

from sealedml.platform.catalog import Catalog
from sealedml.platform.db import Database


def _old_database(path: Path) -> None:
    """The schema of the release before encrypted-ML mode (marketplace and training included)."""
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE accounts (id VARCHAR(32) PRIMARY KEY, name VARCHAR(128) UNIQUE, role VARCHAR(16), "
            "token_sha256 VARCHAR(64) UNIQUE, balance BIGINT NOT NULL DEFAULT 0, created_at DATETIME)"
        )
        db.execute("INSERT INTO accounts VALUES ('a1', 'lab', 'provider', 'ff', 7, '2026-01-01 00:00:00')")
        db.execute(
            "CREATE TABLE models (id VARCHAR(32) PRIMARY KEY, owner_id VARCHAR(32) REFERENCES accounts(id), "
            "name VARCHAR(128) UNIQUE, description TEXT, input_columns JSON, output_policy JSON, "
            "status VARCHAR(16), blob_path VARCHAR(512), blob_sha256 VARCHAR(64), blob_size INTEGER, "
            "sealed_key BLOB, model_sha256 VARCHAR(64), measurement VARCHAR(128), created_at DATETIME, "
            "version VARCHAR(32) NOT NULL DEFAULT '1', price_per_row BIGINT NOT NULL DEFAULT 0, "
            "allowed_measurements JSON NOT NULL DEFAULT '[]')"
        )
        db.execute(
            "INSERT INTO models (id, owner_id, name, description, input_columns, status, created_at) "
            "VALUES ('m1', 'a1', 'screen', 'old', '[\"a\"]', 'created', '2026-01-01 00:00:00')"
        )
        db.execute(
            "CREATE TABLE jobs (id VARCHAR(32) PRIMARY KEY, owner_id VARCHAR(32) REFERENCES accounts(id), "
            "model_id VARCHAR(32), request_id VARCHAR(128) UNIQUE, status VARCHAR(16), rows INTEGER, "
            "receipt JSON, signature VARCHAR(256), result_path VARCHAR(512), created_at DATETIME, "
            "kind VARCHAR(16) NOT NULL DEFAULT 'predict', phase VARCHAR(32), progress INTEGER, "
            "error_code VARCHAR(64), error_message TEXT, updated_at DATETIME, "
            "CONSTRAINT ck_jobs_kind CHECK (kind IN ('predict', 'train')))"
        )
        db.execute("CREATE INDEX ix_jobs_owner_id ON jobs (owner_id)")
        db.execute(
            "INSERT INTO jobs (id, owner_id, model_id, request_id, status, rows, receipt, signature, "
            "result_path, created_at, kind) VALUES ('j1', 'a1', 'm1', 'r1', 'done', 3, '{}', 's', 'x', "
            "'2026-01-01 00:00:00', 'predict')"
        )
        db.execute(
            "CREATE TABLE training_jobs (job_id VARCHAR(32) PRIMARY KEY REFERENCES jobs(id), spec JSON, "
            "spec_sha256 VARCHAR(64), request BLOB, publish_model_id VARCHAR(32), "
            "model_blob_path VARCHAR(512), model_blob_sha256 VARCHAR(64), model_sha256 VARCHAR(64), "
            "grants JSON, phases JSON, budgets JSON, "
            "charge_ids JSON, started_at DATETIME, finished_at DATETIME)"
        )
        db.execute(
            "INSERT INTO jobs (id, owner_id, model_id, request_id, status, rows, receipt, signature, "
            "result_path, created_at, kind) VALUES ('j2', 'a1', 'm1', 'r2', 'queued', 0, '{}', '', '', "
            "'2026-01-02 00:00:00', 'train')"
        )
        db.execute(
            "INSERT INTO training_jobs (job_id, spec, spec_sha256, request, charge_ids) "
            "VALUES ('j2', '{}', 'h', x'00', '[]')"
        )


def test_an_old_database_gains_model_modes_and_he_jobs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _old_database(path)
    database = Database(f"sqlite:///{path}")
    try:
        catalog = Catalog(database)
        model = catalog.get_model("m1")
        assert model is not None and (model.mode, model.he_preset, model.name) == ("tee", None, "screen")
        job = catalog.record_he_job(
            job_id="j3",
            owner_id="a1",
            model_id="m1",
            rows=5,
            receipt={"mode": "he"},
            result_path="results/j3.he",
            query_budget=None,
        )
        assert catalog.get_job("j3").kind == "he-predict" == job.kind
        assert catalog.get_job("j1").rows == 3 and catalog.get_job("j2").kind == "train"
        assert catalog.done_job_ids() == ["j1"]  # HE jobs have no enclave receipt to log
        with database.engine.connect() as conn:
            assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
            assert conn.execute(text("SELECT job_id FROM training_jobs")).scalars().all() == ["j2"]
            indexes = {row[1] for row in conn.execute(text("PRAGMA index_list('jobs')"))}
        assert "ix_jobs_owner_id" in indexes
        updated = catalog.set_he_model(
            "m1", "a1", model_json="{}", model_sha256="0" * 64, preset="linear", query_budget=None
        )
        assert updated is not None and (updated.mode, updated.status, updated.he_preset) == (
            "he",
            "ready",
            "linear",
        )
    finally:
        database.dispose()
    reopened = Database(f"sqlite:///{path}")  # a second open changes nothing
    try:
        assert Catalog(reopened).get_job("j3").kind == "he-predict"
    finally:
        reopened.dispose()
