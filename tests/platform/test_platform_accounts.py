"""Accounts, roles and bearer tokens, through the real HTTP server."""

from __future__ import annotations

import logging
import stat

from sealedml.platform.app import create_app
from sealedml.platform.auth import hash_token
from sealedml.platform.db import Account, Database
from sealedml.platform.settings import Settings


def test_health_needs_no_token(env) -> None:
    response = env.client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_admin_token_file_is_private_and_works(env) -> None:
    path = env.settings.admin_token_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert env.admin_token.startswith("sml_")
    me = env.client(env.admin_token).get("/v1/me")
    assert me.status_code == 200
    assert me.json()["name"] == "admin" and me.json()["role"] == "admin"


def test_admin_bootstrap_logs_the_path_not_the_token(tmp_path, caplog) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    with caplog.at_level(logging.INFO):
        app = create_app(settings, object())  # type: ignore[arg-type]
    token = settings.admin_token_path.read_text().strip()
    assert str(settings.admin_token_path) in caplog.text
    assert token not in caplog.text
    app.state.service.catalog.db.dispose()


def test_admin_is_created_only_on_a_fresh_database(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = create_app(settings, object())  # type: ignore[arg-type]
    token = settings.admin_token_path.read_text()
    settings.admin_token_path.unlink()
    second = create_app(settings, object())  # type: ignore[arg-type]
    assert not settings.admin_token_path.exists()  # not re-created, not rotated
    for app in (first, second):
        app.state.service.catalog.db.dispose()
    db = Database(settings.database_url)
    with db.session() as session:
        admins = session.query(Account).filter_by(role="admin").all()
        assert [a.token_sha256 for a in admins] == [hash_token(token.strip())]
    db.dispose()


def test_admin_creates_accounts_of_each_role(env) -> None:
    admin = env.client(env.admin_token)
    for name, role in (("acme-models", "provider"), ("st-mary", "data_owner"), ("ops-2", "admin")):
        created = admin.post("/v1/accounts", json={"name": name, "role": role})
        assert created.status_code == 201, created.text
        body = created.json()
        assert set(body) == {"id", "name", "role", "token"}
        assert body["role"] == role and body["token"].startswith("sml_")
        me = env.client(body["token"]).get("/v1/me").json()
        assert me == {"id": body["id"], "name": name, "role": role, "balance": 0}


def test_tokens_are_stored_only_as_hashes(env) -> None:
    token = env.client(env.admin_token).post("/v1/accounts", json={"name": "p1", "role": "provider"})
    token = token.json()["token"]
    raw = env.settings.data_dir.joinpath("sealedml.db").read_bytes()
    wal = env.settings.data_dir / "sealedml.db-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert token.encode() not in raw
    assert env.admin_token.encode() not in raw


def test_duplicate_account_name_conflicts(env) -> None:
    admin = env.client(env.admin_token)
    assert admin.post("/v1/accounts", json={"name": "dup", "role": "provider"}).status_code == 201
    again = admin.post("/v1/accounts", json={"name": "dup", "role": "data_owner"})
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "input.conflict"


def test_only_admins_create_accounts(env) -> None:
    provider = env.account("prov", "provider")
    response = provider.post("/v1/accounts", json={"name": "x", "role": "provider"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "auth.forbidden"


def test_bad_account_requests_are_malformed(env) -> None:
    admin = env.client(env.admin_token)
    for body in (
        {"name": "x", "role": "root"},
        {"name": "has space", "role": "provider"},
        {"name": "", "role": "provider"},
        {"name": "a" * 129, "role": "provider"},
        {"name": "x", "role": "provider", "extra": 1},
    ):
        response = admin.post("/v1/accounts", json=body)
        assert response.status_code == 422, body
        assert response.json()["error"]["code"] == "input.malformed"
    not_json = admin.post("/v1/accounts", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 422
    assert not_json.json()["error"]["code"] == "input.malformed"


def test_missing_token(env) -> None:
    client = env.client()
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}):
        response = client.get("/v1/me", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "auth.missing_token"


def test_invalid_token(env) -> None:
    for token in ("sml_" + "A" * 43, "not-a-sealedml-token", "sml_" + "x" * 500):
        response = env.client(token).get("/v1/me")
        assert response.status_code == 401, token
        assert response.json()["error"]["code"] == "auth.invalid_token"
        assert token not in response.text


def test_token_lookups_are_cached(env) -> None:
    client = env.account("cached", "data_owner")
    auth = env.service.auth
    token = client.headers["Authorization"].removeprefix("Bearer ")
    assert auth.cached(token) is not None  # cached at creation, no DB read needed
    auth._cache.clear()
    assert client.get("/v1/me").status_code == 200  # miss: from the database
    assert auth.cached(token) is not None
