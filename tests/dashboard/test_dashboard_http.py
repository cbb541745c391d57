"""The dashboard over plain HTTP against the real platform: sign-in, sessions, CSRF, headers, roles,
bad input and escaping. No browser needed."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET

import httpx
import pytest

from sealedml.platform.dashboard import LOGIN_COOKIE, SESSION_COOKIE
from sealedml.platform.dashboard.security import CSP, SVG_CSP


def csrf_of(html: str) -> str:
    marker = 'name="csrf" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]


def anonymous(world) -> httpx.Client:
    return httpx.Client(base_url=world.url, follow_redirects=False, timeout=30)


def set_cookies(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def assert_hardened(response: httpx.Response, *, csp: str = CSP) -> None:
    assert response.headers["content-security-policy"] == csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"


def test_every_dashboard_response_is_hardened_and_the_api_is_not_touched(world, session_for):
    assert "'unsafe-inline'" not in CSP and "default-src 'self'" in CSP and "frame-ancestors 'none'" in CSP
    with anonymous(world) as client:
        for path in ("/", "/ui", "/ui/signin", "/ui/catalog", "/ui/static/proof.js", "/ui/no/such/page"):
            assert_hardened(client.get(path))
        assert client.get("/ui/signin").headers["cache-control"] == "no-store"
        script = client.get("/ui/static/proof.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert "crypto.subtle.digest" in script.text
        health = client.get("/healthz")
        assert health.status_code == 200 and "content-security-policy" not in health.headers
    owner = session_for(world.owner)
    page = owner.get("/ui/catalog")
    assert page.status_code == 200 and "<script" not in page.text  # no inline script at all
    assert_hardened(page)
    ledger = owner.get("/ui/ledger")
    assert '<script src="/ui/static/proof.js" defer></script>' in ledger.text
    assert ledger.text.count("<script") == 1


def test_anonymous_visitors_are_sent_to_sign_in(world):
    with anonymous(world) as client:
        for path in ("/", "/ui", "/ui/catalog", f"/ui/models/{world.model_id}", "/ui/ledger", "/ui/jobs"):
            response = client.get(path)
            assert (response.status_code, response.headers["location"]) == (303, "/ui/signin"), path
        refused = client.post("/ui/catalog/attest", data={"csrf": "x"})
        assert refused.status_code == 403 and "Sign in again" in refused.text


def test_wrong_token_is_refused_without_a_session_or_an_echo(world):
    with anonymous(world) as client:
        for token in ("sml_" + "B" * 43, "<script>alert(1)</script>", "Bearer junk", ""):
            form = client.get("/ui/signin")
            response = client.post("/ui/signin", data={"csrf": csrf_of(form.text), "token": token})
            assert response.status_code == 401
            assert "That token is not valid" in response.text
            assert not any(c.startswith(SESSION_COOKIE + "=") for c in set_cookies(response))
            if token:
                assert token not in response.text
            assert SESSION_COOKIE not in client.cookies


def test_sign_in_needs_the_forms_csrf_token(world):
    with anonymous(world) as client:
        # no sign-in form fetched: no login cookie
        response = client.post("/ui/signin", data={"csrf": "guess", "token": world.owner})
        assert response.status_code == 400 and "expired" in response.text
        assert SESSION_COOKIE not in client.cookies
        client.get("/ui/signin")
        response = client.post("/ui/signin", data={"csrf": "guess", "token": world.owner})
        assert response.status_code == 400 and SESSION_COOKIE not in client.cookies
        # a form body that is not URL-encoded, or far too large
        form = client.get("/ui/signin")
        response = client.post("/ui/signin", json={"csrf": csrf_of(form.text), "token": world.owner})
        assert response.status_code == 400 and SESSION_COOKIE not in client.cookies
        response = client.post("/ui/signin", data={"csrf": "x", "token": "sml_" + "A" * 40_000})
        assert response.status_code == 400 and "at most" in response.text


def test_a_session_is_a_random_id_stored_hashed_and_sign_out_ends_it(world):
    sessions = world.server.app.state.dashboard.sessions
    with anonymous(world) as client:
        form = client.get("/ui/signin")
        login_cookie = [c for c in set_cookies(form) if c.startswith(LOGIN_COOKIE + "=")]
        assert len(login_cookie) == 1 and "HttpOnly" in login_cookie[0]
        response = client.post("/ui/signin", data={"csrf": csrf_of(form.text), "token": world.owner})
        assert (response.status_code, response.headers["location"]) == (303, "/ui/catalog")
        (cookie,) = [c for c in set_cookies(response) if c.startswith(SESSION_COOKIE + "=")]
        attributes = [part.strip().lower() for part in cookie.split(";")]
        assert {"httponly", "samesite=strict", "path=/ui"} <= set(attributes)
        session_id = client.cookies[SESSION_COOKIE]
        assert len(session_id) >= 43 and world.owner not in cookie
        keys = sessions.stored_keys()
        assert hashlib.sha256(session_id.encode()).hexdigest() in keys and session_id not in keys
        page = client.get("/ui/catalog")
        assert page.status_code == 200 and world.owner not in page.text
        # sign-out needs the session's CSRF token
        refused = client.post("/ui/signout", data={"csrf": "guess"})
        assert refused.status_code == 403 and client.get("/ui/catalog").status_code == 200
        done = client.post("/ui/signout", data={"csrf": csrf_of(page.text)})
        assert (done.status_code, done.headers["location"]) == (303, "/ui/signin?signed_out=1")
        assert any(
            c.startswith(SESSION_COOKIE + '=""') or "max-age=0" in c.lower() for c in set_cookies(done)
        )
        assert sessions.get(session_id) is None
        client.cookies.set(SESSION_COOKIE, session_id, path="/ui")  # a replayed cookie is dead
        assert client.get("/ui/catalog").status_code == 303
        assert "You are signed out" in client.get("/ui/signin?signed_out=1").text


def test_state_changing_forms_need_the_csrf_token(world, session_for):
    owner = session_for(world.owner)
    assert owner.post("/ui/catalog/attest", data={"csrf": "guess"}).status_code == 403
    form_type = {"content-type": "application/x-www-form-urlencoded"}
    assert owner.post("/ui/catalog/attest", content=b"", headers=form_type).status_code == 403
    assert owner.post("/ui/catalog/attest", content=b"").status_code == 400  # not a form at all
    page = owner.get("/ui/catalog")
    done = owner.post("/ui/catalog/attest", data={"csrf": csrf_of(page.text)})
    assert (done.status_code, done.headers["location"]) == (303, "/ui/catalog")


def test_another_tenants_job_is_not_found_and_bad_ids_are_not_echoed(world, session_for):
    owner = session_for(world.owner)
    response = owner.get(f"/ui/jobs/{world.other_jobs[0]}")
    assert response.status_code == 404
    assert "No job with this id belongs to your account." in response.text
    assert world.other_jobs[0] not in response.text
    assert owner.get(f"/ui/jobs/{world.owner_jobs[0]}").status_code == 200
    for path, status in (
        ("/ui/jobs/%3Cscript%3Ealert(1)", 400),
        ("/ui/jobs/%3Cscript%3Ealert(1)%3C%2Fscript%3E", 404),  # a "/" in it: no such page
        ("/ui/jobs/" + "f" * 33, 400),
        ("/ui/models/%22onmouseover%3Dalert(1)", 400),
        ("/ui/models/" + "0" * 32, 404),
        ("/ui/%3Cscript%3Ealert(1)%3C%2Fscript%3E", 404),
    ):
        response = owner.get(path)
        assert response.status_code == status, path
        assert "<script>alert" not in response.text and "&lt;script&gt;" not in response.text
        assert "onmouseover" not in response.text
        assert_hardened(response)
    assert "A job id is 32 lowercase hexadecimal characters." in owner.get("/ui/jobs/nope").text


def test_ledger_search_validates_and_scopes_receipts(world, session_for):
    owner, provider, admin = session_for(world.owner), session_for(world.provider), session_for(world.admin)
    found = owner.get("/ui/ledger", params={"q": world.owner_jobs[1]})
    assert found.status_code == 200 and "verified by the server" in found.text
    assert 'class="path-hash"' in found.text
    for bad in ("<script>alert(1)</script>", "a b", "x" * 129, "#-1", "#1e3"):
        response = owner.get("/ui/ledger", params={"q": bad})
        assert response.status_code == 400, bad
        assert "That is not a receipt id" in response.text
        assert "<script>alert(1)" not in response.text and "&lt;script&gt;alert" not in response.text
    hidden = owner.get("/ui/ledger", params={"q": world.other_jobs[0]})
    assert hidden.status_code == 404 and "No receipt with this id is visible" in hidden.text
    assert owner.get("/ui/ledger", params={"q": "no-such-job"}).status_code == 404
    # entry #0 is the provider's first provisioning receipt: the provider's and the admin's to see
    assert owner.get("/ui/ledger", params={"q": "#0"}).status_code == 404
    mine = provider.get("/ui/ledger", params={"q": "#0"})
    assert mine.status_code == 200 and "Provision receipt" in mine.text
    assert admin.get("/ui/ledger", params={"q": world.other_jobs[0]}).status_code == 200
    assert admin.get("/ui/ledger", params={"q": "#999999"}).status_code == 404


def test_injected_description_is_escaped(world, session_for):
    owner = session_for(world.owner)
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
    for path in ("/ui/catalog", f"/ui/models/{world.evil_model_id}"):
        page = owner.get(path).text
        assert escaped in page and world.injection not in page and "<img src=x" not in page


def test_no_secret_reaches_any_page(world, session_for):
    service = world.service
    model = service.catalog.get_model(world.model_id)
    job = service.catalog.get_job(world.owner_jobs[0])
    secrets = [world.admin, world.provider, world.owner, world.other, model.sealed_key.hex()]
    stored = [model.blob_path, job.result_path]
    for token in (world.admin, world.provider, world.owner):
        client = session_for(token)
        for path in (
            "/ui/catalog",
            f"/ui/models/{world.model_id}",
            "/ui/ledger",
            f"/ui/ledger?q={world.owner_jobs[0]}",
            "/ui/jobs",
            f"/ui/jobs/{world.owner_jobs[0]}",
            "/ui/billing",
        ):
            text = client.get(path).text
            assert not any(secret in text for secret in secrets), path
            assert not any(where in text for where in stored), path


def test_each_role_sees_only_what_it_may(world, session_for):
    owner, other, provider, admin = (
        session_for(world.owner),
        session_for(world.other),
        session_for(world.provider),
        session_for(world.admin),
    )
    mine = owner.get("/ui/jobs").text
    assert all(job in mine for job in world.owner_jobs) and world.other_jobs[0] not in mine
    everyone = admin.get("/ui/jobs").text
    assert all(job in everyone for job in world.owner_jobs + world.other_jobs)
    assert world.owner_name in everyone and world.other_name in everyone
    assert admin.get(f"/ui/jobs/{world.other_jobs[0]}").status_code == 200
    for path in ("/ui/jobs", f"/ui/jobs/{world.owner_jobs[0]}"):
        refused = provider.get(path)
        assert (
            refused.status_code == 403
            and "This page is for a data owner or platform operator." in refused.text
        )
    spending = owner.get("/ui/billing").text
    assert "Spending" in spending and "34 credits" in spending and "966 credits" in spending
    assert world.other_name not in spending
    assert "6 credits" in other.get("/ui/billing").text
    revenue = provider.get("/ui/billing").text
    assert "40 credits" in revenue and world.owner_name not in revenue and world.other_name not in revenue
    platform = admin.get("/ui/billing").text
    assert "Revenue of the platform" in platform and "40 credits" in platform
    assert world.provider_name in platform and world.owner_name in platform


def test_catalog_search_and_bad_filters(world, session_for):
    owner = session_for(world.owner)
    hits = owner.get("/ui/catalog", params={"q": "WISCONSIN"}).text
    assert world.model_name in hits and "notes-model" not in hits
    cheap = owner.get("/ui/catalog", params={"max_price": "1"}).text
    assert "notes-model" in cheap and f">{world.model_name}<" not in cheap
    bad = owner.get("/ui/catalog", params={"max_price": "<b>1</b>"})
    assert bad.status_code == 400 and "whole number of credits" in bad.text and "<b>1</b>" not in bad.text
    assert world.model_name in bad.text  # the filter is ignored, the catalog still shows


@pytest.mark.parametrize("path", ["model", "billing"])
def test_charts_are_script_free_svg(world, session_for, path):
    owner = session_for(world.owner)
    url = f"/ui/models/{world.model_id}/usage.svg" if path == "model" else "/ui/billing/chart.svg"
    response = owner.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/svg+xml"
    assert_hardened(response, csp=SVG_CSP)
    root = ET.fromstring(response.content)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert not [el for el in root.iter() if el.tag.endswith("script") or el.tag.endswith("foreignObject")]
    assert b"onload" not in response.content.lower()
