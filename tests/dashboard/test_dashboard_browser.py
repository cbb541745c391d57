"""The dashboard in real headless Chromium against the real platform on loopback."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sealedml.errors import LedgerError
from sealedml.ledger.merkle import MemoryTree, leaf_hash, verify_inclusion
from sealedml.platform.dashboard import SESSION_COOKIE

pytestmark = pytest.mark.browser

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def open_page(chromium) -> Iterator[Callable[..., Any]]:
    """New browser contexts (one per party), closed after the test; optionally signed in."""
    contexts: list[Any] = []

    def open_page(url: str, token: str | None = None) -> Any:
        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        page.goto(url + "/ui/")
        if token is not None:
            page.get_by_label("API token").fill(token)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url("**/ui/catalog")
        return page

    yield open_page
    for context in contexts:
        context.close()


def shoot(page: Any, folder, name: str) -> None:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 10_000


def browser_verdict_is(page: Any, state: str) -> None:
    """Wait for the in-browser proof check to reach ``state`` (no string eval: the page's CSP forbids it)."""
    from playwright.sync_api import expect

    expect(page.locator("#browser-verdict")).to_have_attribute("data-state", state, timeout=20_000)


def loaded_width(image: Any) -> int:
    """The natural width of an image once it has loaded and decoded."""
    return int(image.evaluate("img => img.decode().then(() => img.naturalWidth)"))


def session_cookies(page: Any) -> list[dict[str, Any]]:
    return [c for c in page.context.cookies() if c["name"] == SESSION_COOKIE]


def test_wrong_token_shows_an_error_and_sets_no_session(open_page, world):
    page = open_page(world.url)
    assert page.url.endswith("/ui/signin")
    page.get_by_label("API token").fill("sml_" + "A" * 43)
    page.get_by_role("button", name="Sign in").click()
    error = page.get_by_test_id("signin-error")
    assert "not valid" in error.inner_text()
    assert session_cookies(page) == []
    assert "sml_" + "A" * 43 not in page.content()
    page.get_by_label("API token").fill("not a token at all")
    page.get_by_role("button", name="Sign in").click()
    assert "not valid" in page.get_by_test_id("signin-error").inner_text()
    assert session_cookies(page) == []


def test_data_owner_browses_the_catalog_and_a_model(open_page, world, screenshots):
    page = open_page(world.url, world.owner)
    (cookie,) = session_cookies(page)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert cookie["value"] != world.owner
    shoot(page, screenshots, "catalog")
    # accessible skeleton: language, skip link first, every form field labelled
    assert page.locator("html").get_attribute("lang") == "en"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to main content"
    unlabelled = page.evaluate(
        """[...document.querySelectorAll('input:not([type=hidden])')]
            .filter(i => !i.labels || i.labels.length === 0).length"""
    )
    assert unlabelled == 0
    assert world.owner_name in page.get_by_test_id("signed-in-as").inner_text()
    enclave = page.locator("section.enclave")
    assert enclave.get_by_test_id("attestation-badge").inner_text().endswith("VERIFIED")
    assert "SIMULATED — no protection" in enclave.get_by_test_id("simulated-marker").inner_text()
    assert re.search(r"\d+ (s|min)", enclave.get_by_test_id("evidence-age").inner_text())
    row = page.get_by_test_id("models-table").locator("tr", has_text=world.model_name)
    assert "2" in row.locator("td.num").first.inner_text() and world.provider_name in row.inner_text()
    assert row.get_by_test_id("attestation-badge").get_attribute("data-passing") == "true"
    assert "tumour-expression-panel" in page.get_by_test_id("datasets-table").inner_text()

    row.get_by_role("link", name=world.model_name).click()
    page.wait_for_url(f"**/ui/models/{world.model_id}")
    schema = page.get_by_test_id("input-schema").locator("li")
    assert schema.count() == len(world.columns) and schema.first.inner_text() == world.columns[0]
    assert page.get_by_test_id("model-price").inner_text() == "2 credits per row"
    chart = page.get_by_test_id("usage-chart")
    chart.scroll_into_view_if_needed()
    assert loaded_width(chart) > 100
    page.get_by_text("Usage as a table").click()
    usage = page.get_by_test_id("usage-table").inner_text()
    assert "17" in usage or "20" in usage  # rows of today's jobs (ours, plus other clients')
    shoot(page, screenshots, "model")

    page.get_by_role("link", name="Jobs").click()
    table = page.get_by_test_id("jobs-table")
    for job in world.owner_jobs:
        assert table.locator(f"tr[data-job='{job}']").count() == 1
        assert table.locator(f"tr[data-job='{job}'] [data-state]").inner_text() == "Done"
    assert table.locator(f"tr[data-job='{world.other_jobs[0]}']").count() == 0
    assert table.locator("progress").first.get_attribute("value") == "100"
    shoot(page, screenshots, "jobs")


def test_ledger_proof_verifies_in_the_browser_and_tampering_fails(open_page, world, screenshots):
    page = open_page(world.url, world.owner)
    page.get_by_role("link", name="Ledger").click()
    page.get_by_label("Job id (receipt id) or # and a leaf index").fill(world.owner_jobs[0])
    page.get_by_role("button", name="Find receipt").click()
    verdict = page.locator("#browser-verdict")
    browser_verdict_is(page, "verified")
    assert verdict.inner_text().startswith("Verified in your browser")
    assert "verified by the server" in page.get_by_test_id("server-verdict").inner_text()
    assert world.owner_jobs[0] in page.get_by_test_id("receipt-fields").inner_text()
    steps = page.get_by_test_id("proof-steps").locator("li")
    assert steps.count() >= 1
    shoot(page, screenshots, "ledger-proof")

    # flip one hex digit of the first path hash on the page, then ask the browser to check again
    page.evaluate(
        """() => {
            const el = document.querySelector('code.path-hash');
            const t = el.textContent.trim();
            el.textContent = (t[0] === '0' ? '1' : '0') + t.slice(1);
        }"""
    )
    page.get_by_role("button", name="Check again in my browser").click()
    browser_verdict_is(page, "failed")
    assert verdict.inner_text().startswith("NOT verified in your browser")

    # a reload restores the true proof; then a forged tree size fails the signature check
    page.reload()
    browser_verdict_is(page, "verified")
    page.evaluate(
        """() => {
            const el = document.querySelector('[data-sth=signature]');
            const t = el.textContent.trim();
            el.textContent = t.slice(0, -1) + (t.endsWith('0') ? '1' : '0');
        }"""
    )
    page.get_by_role("button", name="Check again in my browser").click()
    browser_verdict_is(page, "failed")
    assert "signature" in verdict.inner_text()


def test_browser_check_agrees_with_the_python_verifier(open_page, world):
    """proof.js against merkle.verify_inclusion on every leaf of trees of 1..16 entries, true and tampered."""
    page = open_page(world.url, world.owner)
    page.goto(f"{world.url}/ui/ledger?q={world.owner_jobs[0]}")
    browser_verdict_is(page, "verified")  # proof.js has run
    cases = []
    for size in range(1, 17):
        leaves = [f"entry-{i}".encode() for i in range(size)]
        tree = MemoryTree(leaves)
        root = tree.root()
        for index in range(size):
            path = tree.inclusion_proof(index)
            variants = [("true", index, size, path), ("wrong-index", (index + 1) % (size + 1), size, path)]
            if path:
                variants.append(("flipped", index, size, [bytes([path[0][0] ^ 1]) + path[0][1:], *path[1:]]))
                variants.append(("short", index, size, path[:-1]))
            variants.append(("long", index, size, [*path, root]))
            for name, i, n, p in variants:
                try:
                    verify_inclusion(leaf_hash(leaves[index]), i, n, p, root)
                    expected = True
                except LedgerError:
                    expected = False
                cases.append(
                    {
                        "name": f"{size}/{index}/{name}",
                        "entry": list(leaves[index]),
                        "index": i,
                        "size": n,
                        "path": [h.hex() for h in p],
                        "root": root.hex(),
                        "expected": expected,
                    }
                )
    results = page.evaluate(
        """async (cases) => {
            const P = window.SealedMLProof;
            const out = [];
            for (const c of cases) {
                const r = await P.verifyInclusion(Uint8Array.from(c.entry), c.index, c.size,
                    c.path.map(P.hexToBytes), P.hexToBytes(c.root));
                out.push([c.name, r.ok, c.expected]);
            }
            return out;
        }""",
        cases,
    )
    assert len(results) == len(cases) > 400
    disagreements = [name for name, got, expected in results if got != expected]
    assert disagreements == []
    assert any(expected for _n, _g, expected in results) and not all(expected for _n, _g, expected in results)


def test_provider_sees_revenue_but_no_payers_or_jobs(open_page, world, screenshots):
    page = open_page(world.url, world.provider)
    assert page.get_by_role("link", name="Jobs").count() == 0
    page.get_by_role("link", name="Revenue").click()
    # 5 + 12 + 3 rows at 2 credits each, from two data owners
    assert page.get_by_test_id("billing-total").inner_text() == "40 credits"
    per_model = page.get_by_test_id("per-model").inner_text()
    assert world.model_name in per_model and "20" in per_model
    content = page.content()
    assert world.owner_name not in content and world.other_name not in content
    assert not any(job in content for job in world.owner_jobs + world.other_jobs)
    assert loaded_width(page.get_by_test_id("billing-chart")) > 100
    shoot(page, screenshots, "revenue")
    response = page.goto(f"{world.url}/ui/jobs")
    assert response.status == 403


def test_data_owner_cannot_open_another_owners_job(open_page, world):
    page = open_page(world.url, world.owner)
    response = page.goto(f"{world.url}/ui/jobs/{world.other_jobs[0]}")
    assert response.status == 404
    assert page.get_by_test_id("error-message").inner_text() == "No job with this id belongs to your account."
    response = page.goto(f"{world.url}/ui/ledger?q={world.other_jobs[0]}")
    assert response.status == 404
    assert "No receipt with this id is visible" in page.get_by_test_id("search-error").inner_text()
    response = page.goto(f"{world.url}/ui/jobs/{world.owner_jobs[0]}")
    assert response.status == 200


def test_injected_model_description_is_shown_as_text(open_page, world):
    page = open_page(world.url, world.owner)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{world.url}/ui/catalog")
    row = page.get_by_test_id("models-table").locator("tr", has_text="notes-model")
    assert row.locator("td.description").inner_text() == world.injection
    page.goto(f"{world.url}/ui/models/{world.evil_model_id}")
    assert page.get_by_test_id("model-description").inner_text() == world.injection
    assert page.locator("img[src=x]").count() == 0
    assert page.locator("main script").count() == 0
    page.wait_for_load_state("load")
    assert dialogs == []
    # and even markup that did get in could not run: the policy refuses inline script
    with page.expect_console_message(lambda message: "Content Security Policy" in message.text):
        page.evaluate(
            """() => { const s = document.createElement('script'); s.textContent = 'window.ran = true';
                       document.body.appendChild(s); }"""
        )
    assert page.evaluate("() => window.ran === undefined")


def test_badge_turns_red_when_the_measurement_is_not_in_policy(open_page, failing_world, screenshots):
    page = open_page(failing_world.url, failing_world.admin)
    enclave = page.locator("section.enclave")
    badge = enclave.get_by_test_id("attestation-badge")
    assert badge.inner_text().endswith("FAILS: attestation.measurement_mismatch")
    assert badge.get_attribute("data-passing") == "false"
    red, green, blue = map(
        int, re.findall(r"\d+", badge.evaluate("el => getComputedStyle(el).backgroundColor"))[:3]
    )
    assert red > 150 and green < 60 and blue < 60
    assert "not a reference measurement" in enclave.inner_text()
    assert "No claims are shown" in enclave.inner_text()
    row = page.get_by_test_id("models-table").locator("tr", has_text=failing_world.model_name)
    assert (
        row.get_by_test_id("attestation-badge")
        .inner_text()
        .endswith("FAILS: attestation.measurement_mismatch")
    )
    shoot(page, screenshots, "catalog-attestation-failing")
    page.get_by_role("link", name=failing_world.model_name).click()
    model_badge = page.locator("h1 + p.verdict").get_by_test_id("attestation-badge")
    assert model_badge.get_attribute("data-passing") == "false"
