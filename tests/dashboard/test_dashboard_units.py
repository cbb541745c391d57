"""The dashboard's pure parts: the step-by-step proof check, sessions, usage buckets, charts, states
and how records are presented."""

from __future__ import annotations

import hashlib
import itertools
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest

from sealedml.errors import LedgerError
from sealedml.ledger.merkle import MemoryTree, leaf_hash, verify_inclusion
from sealedml.platform.auth import Principal
from sealedml.platform.dashboard.charts import bucket_series, render_bars_svg
from sealedml.platform.dashboard.present import (
    MEASUREMENT_NOT_ALLOWED,
    format_age,
    format_when,
    listing_badge,
    receipt_fields,
    resource_view,
    short_hex,
)
from sealedml.platform.dashboard.proofs import walk_inclusion
from sealedml.platform.dashboard.queries import JobRow, describe_state
from sealedml.platform.dashboard.routes import template_environment
from sealedml.platform.dashboard.sessions import SessionStore
from sealedml.platform.market import ModelListing, ResourceRecord

NOW = datetime(2026, 11, 24, 15, 30, tzinfo=UTC)


def _python_verdict(entry: bytes, index: int, size: int, path: list[bytes], root: bytes) -> bool:
    try:
        verify_inclusion(leaf_hash(entry), index, size, path, root)
    except LedgerError:
        return False
    return True


def test_walk_agrees_with_the_verifier_on_every_small_tree():
    checked = accepted = 0
    for size in range(1, 34):
        leaves = [f"receipt {i}".encode() for i in range(size)]
        tree = MemoryTree(leaves)
        root = tree.root()
        for index in range(size):
            path = tree.inclusion_proof(index)
            variants = [
                (leaves[index], index, size, path),
                (leaves[index] + b" edited", index, size, path),
                (leaves[index], index + 1, size, path),
                (leaves[index], index, size + 1, path),
                (leaves[index], index, size, [*path, root]),
                (leaves[index], index, size, path[:-1]),
                (leaves[index], index, size, list(reversed(path))),
            ]
            for entry, i, n, p in variants:
                walk = walk_inclusion(entry, i, n, p, root)
                assert walk.verified == _python_verdict(entry, i, n, p, root), (size, index, i, n, len(p))
                assert (walk.problem is None) == walk.verified
                checked += 1
                accepted += walk.verified
            assert not walk_inclusion(leaves[index] + b" edited", index, size, path, root).verified
            walk = walk_inclusion(leaves[index], index, size, path, root)
            assert walk.verified and walk.computed_root == root.hex() and len(walk.steps) == len(path)
            assert walk.leaf_hash == hashlib.sha256(b"\x00" + leaves[index]).hexdigest()
            if walk.steps:
                last = walk.steps[-1]
                assert last.result == root.hex() and last.side in ("left", "right")
    assert checked > 3000 and sum(range(1, 34)) <= accepted < checked / 2


def test_walk_explains_why_a_proof_fails():
    tree = MemoryTree([b"a", b"b", b"c"])
    root, path = tree.root(), tree.inclusion_proof(1)
    assert walk_inclusion(b"b", 3, 3, path, root).problem == "leaf 3 is not in a tree of 3"
    assert walk_inclusion(b"b", 1, 3, path[:-1], root).problem == "the path is too short"
    assert walk_inclusion(b"b", 1, 3, [*path, root], root).problem == "the path has more hashes than levels"
    assert walk_inclusion(b"x", 1, 3, path, root).problem == "the computed root differs from the head"


def test_sessions_keep_only_hashes_and_expire():
    clock = [1000.0]
    store = SessionStore(ttl_seconds=60, login_ttl_seconds=10, max_sessions=3, clock=lambda: clock[0])
    principal = Principal("a" * 32, "alice", "data_owner")
    session_id, session = store.create(principal)
    assert store.get(session_id) == session and session.principal == principal
    assert session_id not in store.stored_keys()
    assert store.stored_keys() == [hashlib.sha256(session_id.encode()).hexdigest()]
    assert session.csrf_matches(session.csrf) and not session.csrf_matches(session.csrf[:-1] + "x")
    assert not session.csrf_matches(None) and not session.csrf_matches("é")
    login_id, login = store.create(None)
    assert login.principal is None and login.expires_at == 1010.0
    for bad in (None, "", "x" * 500, "ünïcode", session_id + "x"):
        assert store.get(bad) is None
    clock[0] = 1011.0
    assert store.get(login_id) is None and store.get(session_id) == session
    clock[0] = 1060.0
    assert store.get(session_id) is None
    store.delete(session_id)  # no error for a gone session
    ids = [store.create(principal)[0] for _ in range(5)]
    assert len(store) == 3 and store.get(ids[0]) is None and store.get(ids[-1]) is not None
    store.delete(ids[-1])
    assert store.get(ids[-1]) is None
    # a flood of sign-in forms never pushes a signed-in session out
    kept, _session = store.create(principal)
    forms = [store.create(None)[0] for _ in range(10_050)]
    assert store.get(kept) is not None and store.get(forms[0]) is None and store.get(forms[-1]) is not None
    with pytest.raises(ValueError):
        SessionStore(ttl_seconds=0)


def test_buckets_are_hourly_then_daily_and_bounded():
    assert bucket_series([], now=NOW) == ("hour", [])
    points = [(NOW - timedelta(minutes=5), 5), (NOW - timedelta(minutes=1), 7), (NOW - timedelta(hours=3), 2)]
    granularity, buckets = bucket_series(points, now=NOW)
    assert granularity == "hour" and len(buckets) == 12  # at least 12 hours are shown
    assert [b.total for b in buckets][-4:] == [2, 0, 0, 12] and buckets[-1].events == 2
    assert buckets[-1].label == "2026-11-24 15:00"
    assert all(b.start - a.start == timedelta(hours=1) for a, b in itertools.pairwise(buckets))
    granularity, buckets = bucket_series([(NOW - timedelta(days=3), 4), (NOW, 1)], now=NOW)
    assert granularity == "day" and len(buckets) == 7 and buckets[-4].total == 4 and buckets[-1].total == 1
    granularity, buckets = bucket_series([(NOW - timedelta(days=400), 9), (NOW, 1)], now=NOW)
    assert granularity == "day" and len(buckets) == 90 and sum(b.total for b in buckets) == 1
    naive_east = datetime(2026, 11, 24, 16, 10, tzinfo=UTC).astimezone()  # any zone: bucketed in UTC
    assert bucket_series([(naive_east, 3)], now=NOW + timedelta(hours=1))[1][-1].total == 3


def test_charts_are_deterministic_script_free_svg():
    _granularity, buckets = bucket_series([(NOW, 5), (NOW - timedelta(hours=2), 3)], now=NOW)
    first = render_bars_svg(buckets, title="Rows predicted per hour", ylabel="rows")
    assert first == render_bars_svg(buckets, title="Rows predicted per hour", ylabel="rows")
    root = ET.fromstring(first)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert not [el for el in root.iter() if el.tag.endswith(("script", "foreignObject"))]
    assert b"Rows predicted per hour" in first and b"Nov 24 04:00" in first and b"14:00" in first
    empty = render_bars_svg([], title="Credits earned per hour", ylabel="credits")
    assert b"No usage yet" in empty


def test_job_states_render_any_status():
    assert describe_state("done") == ("Done", "state-done", 100)
    assert describe_state("running", 42) == ("Running", "state-running", 42)
    assert describe_state("queued") == ("Queued", "state-waiting", None)
    assert describe_state("failed") == ("Failed", "state-failed", None)
    assert describe_state("paused_by_admin", 10.5) == ("Paused by admin", "state-other", 10)
    for bad in (True, -1, 101, "50", None):
        assert describe_state("running", bad)[2] is None


def _resource(passing: bool, **changes) -> ResourceRecord:
    values = {
        "id": "r" * 32,
        "name": "local-enclave",
        "tee": "simulated",
        "simulated": True,
        "measurement": "ab" * 48,
        "instance_id": "i" * 32,
        "price_per_hour": 3,
        "passing": passing,
        "claims": {
            "tee": "simulated",
            "simulated": True,
            "measurement": "ab" * 48,
            "report_data": "cd" * 64,
            "raw": {"secretish": "not shown"},
            "advisories": [],
            "svn": 2,
        }
        if passing
        else None,
        "error_code": None if passing else "attestation.measurement_mismatch",
        "error_message": None if passing else "enclave measurement abab… is not a reference measurement",
        "verified_at": NOW - timedelta(seconds=42),
    } | changes
    return ResourceRecord(**values)


def _listing(passing: bool) -> ModelListing:
    return ModelListing(
        id="m" * 32,
        name="risk",
        version="1",
        description="",
        owner="prov",
        input_columns=["a"],
        output_policy=None,
        price_per_row=2,
        allowed_measurements=[],
        measurement="ab" * 48,
        tee="simulated",
        attestation_passing=passing,
        attestation_reason="reason",
        uses=0,
        rows=0,
    )


def test_badges_show_the_verdict_and_only_verified_claims():
    good = resource_view(_resource(True), now=NOW)
    assert good.badge.passing and good.badge.text == "VERIFIED" and good.badge.simulated
    assert good.age_seconds == 42 and format_age(good.age_seconds) == "42 s"
    labels = dict(good.claims)
    assert (
        labels["Simulated"] == "yes" and labels["Advisories"] == "none" and labels["Security version"] == "2"
    )
    assert all("cd" * 64 not in value and "secretish" not in value for _label, value in good.claims)
    bad = resource_view(_resource(False), now=NOW)
    assert bad.badge.text == "FAILS: attestation.measurement_mismatch" and bad.claims == ()
    assert "not a reference measurement" in bad.badge.reason
    assert listing_badge(_listing(True), _resource(True)).passing
    assert listing_badge(_listing(False), _resource(False)).code == "attestation.measurement_mismatch"
    assert listing_badge(_listing(False), _resource(True)).code == MEASUREMENT_NOT_ALLOWED


def test_formatting_helpers():
    assert short_hex("ab" * 48, 8) == "abababab…" and short_hex("abc") == "abc" and short_hex(None) == ""
    assert format_when(NOW) == "2026-11-24 15:30:00 UTC" and format_when(None) == "—"
    assert format_when("2026-11-24T15:30:00+00:00") == "2026-11-24 15:30:00 UTC"
    assert format_when("not a time") == "not a time"
    assert [format_age(s) for s in (None, 5, 600, 7200, 200_000)] == [
        "unknown",
        "5 s",
        "10 min",
        "2 h",
        "2 d",
    ]
    fields = dict(receipt_fields({"job": "j", "rows": 3, "issued_at": 1795546586, "extra": {"b": [1]}}))
    assert fields == {
        "extra": '{"b":[1]}',
        "issued_at": "2026-11-24 18:56:26 UTC",
        "job": "j",
        "rows": "3",
    }
    assert dict(receipt_fields({"issued_at": 10**30}))["issued_at"] == str(10**30)


def test_the_jobs_page_renders_every_state_and_escapes():
    rows = []
    for number, (status, progress) in enumerate(
        [("done", None), ("running", 42), ("queued", None), ("failed", None), ("awaiting_<b>approval</b>", 7)]
    ):
        label, css, percent = describe_state(status, progress)
        rows.append(
            JobRow(
                id=f"{number:032x}",
                kind="predict" if number == 0 else "train",
                owner="owner",
                model_id="m" * 32,
                model="risk",
                state=status,
                state_label=label,
                state_class=css,
                progress=percent,
                rows=10,
                created_at=NOW,
            )
        )
    html = (
        template_environment()
        .get_template("jobs.html")
        .render(
            principal=Principal("a" * 32, "alice", "data_owner"),
            csrf="c",
            title="Jobs",
            nav="jobs",
            jobs=rows,
        )
    )
    assert html.count("<progress") == 3  # done (100 %), running (42 %), the unknown state (7 %)
    assert 'value="42"' in html and 'value="100"' in html
    for css in ("state-done", "state-running", "state-waiting", "state-failed", "state-other"):
        assert f'class="state {css}"' in html
    assert "Awaiting &lt;b&gt;approval&lt;/b&gt;" in html and "<b>approval" not in html
    assert html.count("inclusion proof</a>") == 1 and html.count("not yet") == 4
    assert html.count(">train<") == 4 and html.count(">prediction<") == 1
