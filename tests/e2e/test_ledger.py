"""The transparency log end to end: every receipt is logged and checked by the SDK; a host that
drops, edits or reorders logged receipts (and rewrites the tree to hide it) is caught; tree heads
are anchored on the embedded chain."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest

from sealedml.client import SealedMLClient
from sealedml.errors import LedgerError
from sealedml.ledger.merkle import MemoryTree, leaf_hash
from sealedml.ledger.sth import SignedTreeHead
from sealedml.platform.launch import platform_in_background
from sealedml.platform.settings import Settings


def test_every_prediction_comes_with_a_verified_log_proof(platform, cancer, unique, tmp_path):
    provider, owner = platform.account(unique("p"), "provider"), platform.account(unique("o"), "data_owner")
    with platform.client(provider) as client:
        model = client.publish_model(unique("m"), cancer.prepared).model
    state = tmp_path / "ledger-state.json"
    with SealedMLClient(platform.url, owner, policy=platform.policy, ledger_state=state) as client:
        first = client.predict(model.id, cancer.test.iloc[:3])
        second = client.predict(model.id, cancer.test.iloc[3:6])
        assert first.receipt.ledger is not None and second.receipt.ledger is not None
        assert second.receipt.ledger["leaf_index"] > first.receipt.ledger["leaf_index"]
        assert client.ledger.last is not None
        assert client.ledger.last.tree_size >= second.receipt.ledger["leaf_index"] + 1
        again = client.ledger.recheck(first.receipt.receipt, first.receipt.signature)
        assert again.leaf_index == first.receipt.ledger["leaf_index"]
    saved = json.loads(state.read_text())
    assert bytes.fromhex(saved["public_key"]) == client.ledger.public_key
    # a later client run starts from the saved head and pinned key
    with SealedMLClient(platform.url, owner, policy=platform.policy, ledger_state=state) as later:
        assert later.ledger.last == client.ledger.last
        later.predict(model.id, cancer.test.iloc[:2])


def test_public_audit_endpoints(platform):
    sth = httpx.get(platform.url + "/v1/ledger/sth").json()
    key = httpx.get(platform.url + "/v1/ledger/public-key").json()
    head = SignedTreeHead.from_dict(sth)
    head.verify(bytes.fromhex(key["public_key"]))
    assert key["log_id"] == head.log_id
    proof = httpx.get(platform.url + "/v1/ledger/consistency", params={"first": 0}).json()
    assert proof["tree_size_2"] >= head.tree_size
    bad = httpx.get(platform.url + "/v1/ledger/consistency", params={"first": head.tree_size + 10**6})
    assert bad.status_code in (400, 404, 422) and bad.json()["error"]["code"].startswith("ledger.")


def test_inclusion_by_job_is_private_to_the_job_owner(platform, cancer, unique):
    provider, owner = platform.account(unique("p"), "provider"), platform.account(unique("o"), "data_owner")
    other = platform.account(unique("x"), "data_owner")
    with platform.client(provider) as client:
        model = client.publish_model(unique("m"), cancer.prepared).model
    with platform.client(owner) as client:
        job = client.predict(model.id, cancer.test.iloc[:2]).job_id
    headers = {"Authorization": f"Bearer {other}"}
    response = httpx.get(platform.url + "/v1/ledger/inclusion", params={"job_id": job}, headers=headers)
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found.job")
    response = httpx.get(platform.url + "/v1/ledger/entries/0", headers=headers)
    assert response.status_code == 404


def test_wrong_log_key_is_refused(platform, cancer, unique):
    provider, owner = platform.account(unique("p"), "provider"), platform.account(unique("o"), "data_owner")
    with platform.client(provider) as client:
        model = client.publish_model(unique("m"), cancer.prepared).model
    with SealedMLClient(platform.url, owner, policy=platform.policy, log_public_key=b"\x01" * 32) as client:
        with pytest.raises(LedgerError) as info:
            client.predict(model.id, cancer.test.iloc[:2])
        assert info.value.code == "ledger.sth_signature_invalid"


class Host:
    """The platform operator rewriting the log database behind the service's back."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rewrite(self, change) -> None:
        """Apply ``change`` to the entry rows, then recompute every hash so the store is consistent."""
        con = sqlite3.connect(self.path)
        try:
            with con:
                rows = con.execute("SELECT idx, entry_id, entry FROM ledger_entries ORDER BY idx").fetchall()
                rows = change([(entry_id, entry) for _, entry_id, entry in rows])
                con.execute("DELETE FROM ledger_entries")
                con.executemany(
                    "INSERT INTO ledger_entries (idx, entry_id, entry, leaf_hash) VALUES (?, ?, ?, ?)",
                    [(i, entry_id, entry, leaf_hash(entry)) for i, (entry_id, entry) in enumerate(rows)],
                )
                tree = MemoryTree(entry for _, entry in rows)
                size = len(rows)
                ids = [(level, i) for level in range(1, size.bit_length()) for i in range(size >> level)]
                nodes = tree.read_nodes(ids)
                con.execute("DELETE FROM ledger_nodes")
                con.executemany(
                    "INSERT INTO ledger_nodes (level, idx, hash) VALUES (?, ?, ?)",
                    [(level, i, nodes[(level, i)]) for level, i in ids],
                )
        finally:
            con.close()


def _edit(rows):
    entry_id, entry = rows[0]
    body = json.loads(entry)
    body["receipt"]["rows"] = body["receipt"]["rows"] + 100
    return [(entry_id, json.dumps(body, sort_keys=True, separators=(",", ":")).encode()), *rows[1:]]


@pytest.mark.parametrize(
    ("change", "codes"),
    [
        (
            lambda rows: rows[1:],
            {"not_found.entry", "ledger.consistency_invalid", "ledger.inclusion_invalid"},
        ),
        (_edit, {"ledger.consistency_invalid", "ledger.inclusion_invalid"}),
        (
            lambda rows: [rows[1], rows[0], *rows[2:]],
            {"ledger.consistency_invalid", "ledger.inclusion_invalid"},
        ),
    ],
    ids=["drop", "edit", "reorder"],
)
def test_host_that_rewrites_the_log_is_caught(tmp_path, cancer, change, codes):
    with platform_in_background(Settings(data_dir=tmp_path / "data")) as server:
        from e2e_support import start_parties

        owner_client, model_id = start_parties(server.url, tmp_path / "data", cancer)
        with owner_client as client:
            first = client.predict(model_id, cancer.test.iloc[:3])
            client.predict(model_id, cancer.test.iloc[3:5])
            seen = client.ledger.last
            assert seen is not None
            Host(tmp_path / "data" / "ledger.db").rewrite(change)
            with pytest.raises(Exception) as info:
                client.ledger.recheck(first.receipt.receipt, first.receipt.signature)
            assert getattr(info.value, "code", None) in codes
            # whatever the host now serves, the head it signed before no longer matches its history
            with pytest.raises(LedgerError) as audit:
                server.app.state.service.ledger.log.store.verify_log([seen.head])
            assert audit.value.code == "ledger.audit_failed"


def test_tree_heads_are_anchored_on_the_embedded_chain(tmp_path, cancer):
    settings = Settings(data_dir=tmp_path / "data", anchor="embedded", anchor_interval_seconds=0)
    with platform_in_background(settings) as server:
        from e2e_support import start_parties

        owner_client, model_id = start_parties(server.url, tmp_path / "data", cancer)
        admin = {"Authorization": f"Bearer {(tmp_path / 'data' / 'admin-token').read_text().strip()}"}
        with owner_client as client:
            client.predict(model_id, cancer.test.iloc[:3])
        anchored = httpx.post(server.url + "/v1/ledger/anchor", headers=admin, timeout=30)
        assert anchored.status_code == 200, anchored.text
        record = anchored.json()
        assert httpx.post(server.url + "/v1/ledger/anchor", headers=admin, timeout=30).status_code == 204
        anchors = httpx.get(server.url + "/v1/ledger/anchors", timeout=30).json()
        assert [a["tx_hash"] for a in anchors] == [record["anchor"]["tx_hash"]]
        sth = SignedTreeHead.from_dict(record["sth"])
        from sealedml.ledger.anchor import Anchor

        chain = server.app.state.service.ledger.chain
        chain.verify_anchor(
            Anchor.from_dict(record["anchor"]),
            log_id=sth.log_id,
            tree_size=sth.tree_size,
            root_hash=sth.root_hash,
        )
        with pytest.raises(LedgerError) as info:
            chain.verify_anchor(
                Anchor.from_dict(record["anchor"]),
                log_id=sth.log_id,
                tree_size=sth.tree_size,
                root_hash=b"\x00" * 32,
            )
        assert info.value.code == "ledger.anchor_mismatch"
        forbidden = httpx.post(server.url + "/v1/ledger/anchor", timeout=30)
        assert forbidden.status_code == 401


def test_receipts_missing_from_the_log_are_logged_at_the_next_start(tmp_path, cancer):
    """A crash between recording a job and logging its receipt loses nothing: the next start logs it."""
    data = tmp_path / "data"
    with platform_in_background(Settings(data_dir=data)) as server:
        from e2e_support import start_parties

        owner_client, model_id = start_parties(server.url, data, cancer)
        with owner_client as client:
            jobs = [client.predict(model_id, cancer.test.iloc[i : i + 2]).job_id for i in (0, 2, 4)]
    # the platform stopped after recording the last two jobs but before logging their receipts
    host = Host(data / "ledger.db")
    host.rewrite(lambda rows: [row for row in rows if row[0] not in {jobs[1], jobs[2]}])
    con = sqlite3.connect(data / "ledger.db")
    try:
        assert {row[0] for row in con.execute("SELECT entry_id FROM ledger_entries")} & set(jobs) == {jobs[0]}
    finally:
        con.close()
    with platform_in_background(Settings(data_dir=data)) as server:
        ledger = server.app.state.service.ledger
        logged = ledger.log.store.existing_ids(jobs)
        assert logged == set(jobs)
        assert ledger.reconcile(server.app.state.service.catalog) == 0  # idempotent
        ledger.log.store.verify_log()
