"""Credits and charges: failed jobs are free, retries are billed once, concurrency cannot overdraw."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from sealedml.errors import EnclaveError
from sealedml.platform.db import Charge, Job

ROWS = 3  # the fake enclave runs the rows each sealed request declares (env.seal declares 3)


def _error(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


def _me(client: httpx.Client) -> dict:
    return client.get("/v1/me").json()


def _grant(env, account_id: str, amount: object) -> httpx.Response:
    return env.client(env.admin_token).post(f"/v1/accounts/{account_id}/credits", json={"amount": amount})


def _count(env, table: type) -> int:
    with env.service.catalog.db.session() as session:
        return session.query(table).count()


@pytest.fixture
def priced(env, provider: httpx.Client) -> dict:
    model = env.ready_model(provider)
    response = provider.patch(f"/v1/models/{model['id']}", json={"price_per_row": 5})
    assert response.status_code == 200, response.text
    assert response.json()["price_per_row"] == 5
    return response.json()


def test_admin_grants_credits_and_me_shows_them(env, owner):
    account = _me(owner)
    assert account["balance"] == 0
    response = _grant(env, account["id"], 100)
    assert response.json() == {"account_id": account["id"], "balance": 100}
    assert _me(owner)["balance"] == 100


@pytest.mark.parametrize("amount", [0, -5, 10**16, True, 1.5, "10"])
def test_bad_grants_change_nothing(env, owner, amount):
    account = _me(owner)
    response = _grant(env, account["id"], amount)
    assert response.status_code in (400, 422)
    assert _error(response) in ("billing.invalid_amount", "input.malformed")
    assert _me(owner)["balance"] == 0


def test_grant_needs_admin_and_a_real_account(env, owner, provider):
    account = _me(owner)
    forbidden = provider.post(f"/v1/accounts/{account['id']}/credits", json={"amount": 5})
    assert (forbidden.status_code, _error(forbidden)) == (403, "auth.forbidden")
    missing = _grant(env, "0" * 32, 5)
    assert (missing.status_code, _error(missing)) == (404, "not_found.account")
    assert _me(owner)["balance"] == 0


def test_negative_price_is_refused_and_nothing_changes(env, provider):
    created = provider.post("/v1/models", json={"name": "m", "input_columns": ["a"], "price_per_row": -1})
    assert (created.status_code, _error(created)) == (400, "billing.invalid_amount")
    assert provider.get("/v1/models").json() == []
    model = env.ready_model(provider)
    patched = provider.patch(f"/v1/models/{model['id']}", json={"price_per_row": -3})
    assert (patched.status_code, _error(patched)) == (400, "billing.invalid_amount")
    assert provider.get(f"/v1/models/{model['id']}").json()["price_per_row"] == 0


def test_only_the_owner_changes_a_listing(env, provider, priced):
    other = env.account("provider-b", "provider")
    response = other.patch(f"/v1/models/{priced['id']}", json={"price_per_row": 0})
    assert (response.status_code, _error(response)) == (403, "auth.forbidden")
    assert provider.get(f"/v1/models/{priced['id']}").json()["price_per_row"] == 5


def test_paid_prediction_moves_credits_from_payer_to_provider(env, owner, provider, priced):
    _grant(env, _me(owner)["id"], 100)
    response = owner.post(f"/v1/models/{priced['id']}/predict", content=env.seal("predict", priced["id"]))
    assert response.status_code == 200, response.text
    assert _me(owner)["balance"] == 100 - 5 * ROWS
    assert _me(provider)["balance"] == 5 * ROWS
    (charge,) = env.service.billing.charges()
    assert (charge.status, charge.amount, charge.rows) == ("settled", 15, ROWS)
    assert charge.job_id == response.json()["job_id"]


def test_insufficient_credit_refuses_before_the_enclave_runs(env, owner, provider, priced):
    _grant(env, _me(owner)["id"], 5 * ROWS - 1)
    calls = env.fake.ops("predict")
    response = owner.post(f"/v1/models/{priced['id']}/predict", content=env.seal("predict", priced["id"]))
    assert (response.status_code, _error(response)) == (402, "billing.insufficient_credit")
    assert "15 credits" in response.json()["error"]["message"]
    assert env.fake.ops("predict") == calls
    assert _me(owner)["balance"] == 5 * ROWS - 1 and _me(provider)["balance"] == 0
    assert _count(env, Charge) == 0 and _count(env, Job) == 0


def test_failed_job_is_not_billed(env, owner, provider, priced):
    _grant(env, _me(owner)["id"], 100)
    env.fake.fail_next["predict"] = EnclaveError("enclave.unavailable", "the enclave died")
    envelope = env.seal("predict", priced["id"])
    response = owner.post(f"/v1/models/{priced['id']}/predict", content=envelope)
    assert response.status_code == 503
    assert _me(owner)["balance"] == 100 and _me(provider)["balance"] == 0
    (charge,) = env.service.billing.charges()
    assert charge.status == "refunded" and "enclave.unavailable" in (charge.reason or "")
    # the same request may be sent again once it was refunded, and is billed once
    again = owner.post(f"/v1/models/{priced['id']}/predict", content=envelope)
    assert again.status_code == 200, again.text
    assert _me(owner)["balance"] == 100 - 5 * ROWS


def test_retried_request_is_billed_once(env, owner, provider, priced):
    _grant(env, _me(owner)["id"], 100)
    envelope = env.seal("predict", priced["id"])
    first = owner.post(f"/v1/models/{priced['id']}/predict", content=envelope)
    second = owner.post(f"/v1/models/{priced['id']}/predict", content=envelope)
    assert first.status_code == 200
    assert (second.status_code, _error(second)) == (409, "request.replayed")
    assert _me(owner)["balance"] == 100 - 5 * ROWS
    assert [c.status for c in env.service.billing.charges()] == ["settled"]


def test_parallel_clients_cannot_overdraw(env, provider, priced):
    """24 clients race with credit for exactly 10 jobs: 10 succeed, 14 are refused, books balance."""
    payer = env.account("hospital-race", "data_owner")
    payer_id = _me(payer)["id"]
    _grant(env, payer_id, 10 * 5 * ROWS)
    token = payer.headers["Authorization"]
    envelopes = [env.seal("predict", priced["id"]) for _ in range(24)]

    def attempt(envelope: bytes) -> int:
        with httpx.Client(base_url=env.server.url, headers={"Authorization": token}, timeout=30) as http:
            return http.post(f"/v1/models/{priced['id']}/predict", content=envelope).status_code

    with ThreadPoolExecutor(max_workers=24) as pool:
        statuses = list(pool.map(attempt, envelopes))
    assert sorted(statuses) == [200] * 10 + [402] * 14
    assert _me(payer)["balance"] == 0
    assert _me(provider)["balance"] == 10 * 5 * ROWS
    totals = env.service.billing.totals()
    assert totals == {"balances": 10 * 5 * ROWS, "settled": 10 * 5 * ROWS, "held": 0}
    assert _count(env, Job) == 10


def test_holds_left_by_a_crash_are_refunded_at_start(env, owner, priced):
    account = _me(owner)["id"]
    _grant(env, account, 100)
    billing = env.service.billing
    billing.hold(
        job_id="f" * 32,
        request_id="crashed-request",
        payer_id=account,
        payee_id=priced["owner_id"],
        model_id=priced["id"],
        rows=4,
        price_per_row=5,
    )
    assert _me(owner)["balance"] == 80
    assert billing.release_stale_holds() == 1
    assert _me(owner)["balance"] == 100
    (charge,) = billing.charges(status="refunded")
    assert charge.job_id == "f" * 32 and "restarted" in (charge.reason or "")
    assert billing.release_stale_holds() == 0


def test_a_database_from_before_the_marketplace_is_upgraded(tmp_path):
    """Accounts and models made by the first release gain balances and prices; nothing is lost."""
    import sqlite3

    from sealedml.platform.billing import Billing
    from sealedml.platform.catalog import Catalog
    from sealedml.platform.db import Database

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE accounts (id VARCHAR(32) PRIMARY KEY, name VARCHAR(128) UNIQUE, role VARCHAR(16), "
            "token_sha256 VARCHAR(64) UNIQUE, created_at DATETIME)"
        )
        db.execute(
            "INSERT INTO accounts VALUES ('a1', 'hospital', 'data_owner', 'ff', '2026-01-01 00:00:00')"
        )
        db.execute(
            "CREATE TABLE models (id VARCHAR(32) PRIMARY KEY, owner_id VARCHAR(32) REFERENCES accounts(id), "
            "name VARCHAR(128) UNIQUE, description TEXT, input_columns JSON, output_policy JSON, "
            "status VARCHAR(16), blob_path VARCHAR(512), blob_sha256 VARCHAR(64), blob_size INTEGER, "
            "sealed_key BLOB, model_sha256 VARCHAR(64), measurement VARCHAR(128), created_at DATETIME)"
        )
        db.execute(
            "INSERT INTO models VALUES ('m1', 'a1', 'screen', 'old', '[\"a\"]', NULL, 'created', NULL, NULL, "
            "NULL, NULL, NULL, NULL, '2026-01-01 00:00:00')"
        )
    database = Database(f"sqlite:///{path}")
    try:
        billing = Billing(database)
        assert billing.balance("a1") == 0
        assert billing.grant("a1", 25) == 25
        model = Catalog(database).get_model("m1")
        assert model is not None
        assert (model.name, model.price_per_row, model.version, model.allowed_measurements) == (
            "screen",
            0,
            "1",
            (),
        )
    finally:
        database.dispose()
    reopened = Database(f"sqlite:///{path}")  # a second open changes nothing
    try:
        assert Billing(reopened).balance("a1") == 25
    finally:
        reopened.dispose()
