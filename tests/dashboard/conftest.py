"""The dashboard against a real platform: a simulated enclave process, the API and the dashboard
served on loopback, real parties who publish and use a model through the SDK, and headless
Chromium (Debian's ``/usr/bin/chromium``) driven by Playwright.

Browser tests carry the ``browser`` marker. They are skipped only when ``/usr/bin/chromium`` is
absent and ``SEALEDML_REQUIRE_BROWSER`` is unset (CI sets it, so CI fails instead of skipping).
Screenshots go to ``SEALEDML_SCREENSHOTS_DIR`` when set (``docs/screenshots`` to refresh the
README's), else to a temporary folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e_support import policy_for
from sealedml.attestation.producers.simulated import SimulatedPlatform
from sealedml.client import PreparedModel, SealedMLClient, from_estimator
from sealedml.platform.app import create_app
from sealedml.platform.dashboard import SESSION_COOKIE, install_dashboard
from sealedml.platform.server import BackgroundServer
from sealedml.platform.settings import Settings
from sealedml.tee.simulated import launch_simulated

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INJECTION = "<script>alert(1)</script><img src=x onerror=alert(1)>"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "browser: drives headless Chromium; skipped only if /usr/bin/chromium is absent and "
        "SEALEDML_REQUIRE_BROWSER is unset",
    )


@contextmanager
def dashboard_platform(data_dir: Path, **settings: Any) -> Iterator[BackgroundServer]:
    """The platform as ``sealedml serve`` runs it (simulated enclave process, API) plus the dashboard."""
    platform_dir = data_dir / "platform"
    root = SimulatedPlatform.open(platform_dir).root_fingerprint  # created before the enclave reads it
    enclave = launch_simulated(platform_dir, workers=2)
    try:
        app = create_app(Settings(data_dir=data_dir, simulated_roots=(root,), **settings), enclave)
        install_dashboard(app, service=app.state.service, market=app.state.market)
        with BackgroundServer(app) as server:
            yield server
    finally:
        enclave.close()


@dataclass
class World:
    """A running platform with a provider, two data owners, published models and finished jobs."""

    server: BackgroundServer
    data_dir: Path
    admin: str
    provider: str
    owner: str
    other: str
    provider_name: str
    owner_name: str
    other_name: str
    model_id: str
    model_name: str
    columns: list[str]
    evil_model_id: str
    owner_jobs: list[str] = field(default_factory=list)
    other_jobs: list[str] = field(default_factory=list)
    injection: str = INJECTION

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def service(self) -> Any:
        return self.server.app.state.service

    def client(self, token: str) -> SealedMLClient:
        return SealedMLClient(self.url, token, policy=policy_for(self.url))


@pytest.fixture(scope="session")
def prepared_model() -> tuple[PreparedModel, Any]:
    """A breast-cancer classifier (scikit-learn's bundled data set) and held-out rows to predict."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = load_breast_cancer(as_frame=True).frame
    train, test = train_test_split(frame, test_size=0.2, random_state=3, stratify=frame["target"])
    features = [c for c in frame.columns if c != "target"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
        train[features], train["target"]
    )
    return from_estimator(model), test


def _populate(
    server: BackgroundServer, data_dir: Path, prepared: PreparedModel, test: Any, *, jobs: bool = True
) -> World:
    admin_token = (data_dir / "admin-token").read_text().strip()
    policy = policy_for(server.url)
    names = {"provider": "oncology-labs", "owner": "st-mary-hospital", "other": "city-clinic"}
    with SealedMLClient(server.url, admin_token) as admin:
        provider = admin.create_account(names["provider"], "provider")["token"]
        owner = admin.create_account(names["owner"], "data_owner")["token"]
        other = admin.create_account(names["other"], "data_owner")["token"]
    with SealedMLClient(server.url, provider, policy=policy) as client:
        model = client.publish_model(
            "breast-cancer-risk",
            prepared,
            description="Logistic regression on the 30 Wisconsin diagnostic features; returns P(benign).",
            price_per_row=2,
            version="1.2",
        ).model
        evil = client.publish_model("notes-model", prepared, description=INJECTION).model
    owner_jobs: list[str] = []
    other_jobs: list[str] = []
    with SealedMLClient(server.url, owner, policy=policy) as client:
        owner_id = client.me()["id"]
        client.market.offer_dataset(
            "tumour-expression-panel",
            columns=[("BRCA1", "float"), ("TP53", "float"), ("response", "category")],
            rows=312,
            size_bytes=9_800_000,
            description="Expression panel of 312 tumours (schema only).",
            price=40,
        )
    with SealedMLClient(server.url, other, policy=policy) as client:
        other_id = client.me()["id"]
    with SealedMLClient(server.url, admin_token) as admin:
        admin.market.grant(owner_id, 1000)
        admin.market.grant(other_id, 1000)
    if jobs:
        with SealedMLClient(server.url, owner, policy=policy) as client:
            for rows in (slice(0, 5), slice(5, 17)):
                owner_jobs.append(client.predict(model.id, test.iloc[rows]).job_id)
        with SealedMLClient(server.url, other, policy=policy) as client:
            other_jobs.append(client.predict(model.id, test.iloc[:3]).job_id)
    return World(
        server=server,
        data_dir=data_dir,
        admin=admin_token,
        provider=provider,
        owner=owner,
        other=other,
        provider_name=names["provider"],
        owner_name=names["owner"],
        other_name=names["other"],
        model_id=model.id,
        model_name=model.name,
        columns=list(prepared.input_columns),
        evil_model_id=evil.id,
        owner_jobs=owner_jobs,
        other_jobs=other_jobs,
    )


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory, prepared_model) -> Iterator[World]:
    """One platform for the whole dashboard suite, populated once."""
    data_dir = tmp_path_factory.mktemp("dashboard")
    prepared, test = prepared_model
    with dashboard_platform(data_dir) as server:
        yield _populate(server, data_dir, prepared, test)


@pytest.fixture(scope="session")
def failing_world(tmp_path_factory: pytest.TempPathFactory, prepared_model) -> Iterator[World]:
    """A platform whose policy pins another measurement, so its own enclave fails attestation.

    Its model was published while the policy was still the default (clients attest with their own
    policy), so the catalog has a listing to turn red.
    """
    data_dir = tmp_path_factory.mktemp("dashboard-failing")
    prepared, test = prepared_model
    with dashboard_platform(data_dir, reference_measurements=("00" * 48,)) as server:
        yield _populate(server, data_dir, prepared, test, jobs=False)


def sign_in(url: str, token: str) -> httpx.Client:
    """An HTTP client holding a dashboard session (sign-in form fetched, CSRF token sent back)."""
    client = httpx.Client(base_url=url, follow_redirects=False, timeout=30)
    form = client.get("/ui/signin")
    csrf = csrf_of(form.text)
    response = client.post("/ui/signin", data={"csrf": csrf, "token": token})
    assert response.status_code == 303, response.text
    assert client.cookies.get(SESSION_COOKIE)
    return client


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    marker = 'name="csrf" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]


@pytest.fixture
def session_for(world: World) -> Iterator[Callable[[str], httpx.Client]]:
    """Open signed-in HTTP clients; all are closed after the test."""
    opened: list[httpx.Client] = []

    def open_session(token: str) -> httpx.Client:
        client = sign_in(world.url, token)
        opened.append(client)
        return client

    yield open_session
    for client in opened:
        client.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Headless Debian Chromium under Playwright (each launch gets a fresh temporary profile).

    Module-scoped on purpose: Playwright's sync API keeps an asyncio loop marked as running in
    this thread while it is started, which would break later tests that call ``asyncio.run``.
    """
    if not CHROMIUM.exists():
        if os.environ.get("SEALEDML_REQUIRE_BROWSER"):
            pytest.fail(
                f"{CHROMIUM} is missing and SEALEDML_REQUIRE_BROWSER is set: apt-get install chromium"
            )
        pytest.skip(f"{CHROMIUM} is not installed (set SEALEDML_REQUIRE_BROWSER to make this an error)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``SEALEDML_SCREENSHOTS_DIR`` if set, else a temporary folder."""
    chosen = os.environ.get("SEALEDML_SCREENSHOTS_DIR")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
