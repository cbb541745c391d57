"""The marketplace web dashboard served by ``sealedml serve`` under ``/ui``.

Server-rendered pages (Jinja2, autoescaped) for model providers, data owners and platform
operators: the catalog with live attestation badges, model pages with usage charts, the
transparency log with inclusion proofs checked step by step (and again in the browser), jobs and
billing. Sign-in takes the same API token as the CLI; the browser then holds only a random session
id. The dashboard shows metadata, claims and receipts only: predictions and training stay in the
CLI/SDK, where the keys are.

Mount it on the platform app with one call after the API routes::

    install_dashboard(app, service=service, market=market)
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from sealedml.platform.dashboard.routes import LOGIN_COOKIE, SESSION_COOKIE, Dashboard
from sealedml.platform.dashboard.security import SecurityHeadersMiddleware
from sealedml.platform.dashboard.sessions import SessionStore
from sealedml.platform.market import Market
from sealedml.platform.service import PlatformService

__all__ = ["LOGIN_COOKIE", "SESSION_COOKIE", "Dashboard", "SessionStore", "install_dashboard"]

STATIC = Path(__file__).parent / "static"


def install_dashboard(
    app: FastAPI,
    *,
    service: PlatformService | None = None,
    market: Market | None = None,
    sessions: SessionStore | None = None,
) -> Dashboard:
    """Add the dashboard to ``app``: pages under ``/ui``, static files under ``/ui/static`` and a
    redirect from ``/`` to ``/ui``; return the :class:`Dashboard` (``app.state.dashboard`` too).

    ``service`` and ``market`` default to ``app.state.service`` and ``app.state.market`` (set by
    :func:`sealedml.platform.app.create_app`). Guarantees: every ``/ui`` response carries the
    dashboard's security headers; no route is added outside ``/`` and ``/ui``; the API is
    unchanged; a second call on the same app returns the dashboard already installed. Call it
    before the app starts serving.
    """
    installed = getattr(app.state, "dashboard", None)
    if isinstance(installed, Dashboard):
        return installed
    service = service if service is not None else app.state.service
    market = market if market is not None else app.state.market
    dashboard = Dashboard(service, market, sessions if sessions is not None else SessionStore())
    app.state.dashboard = dashboard
    app.add_middleware(SecurityHeadersMiddleware)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="dashboard-static")
    routes = [
        ("/", dashboard.root, ["GET"]),
        ("/ui", dashboard.root, ["GET"]),
        ("/ui/", dashboard.root, ["GET"]),
        ("/ui/signin", dashboard.signin_form, ["GET"]),
        ("/ui/signin", dashboard.signin, ["POST"]),
        ("/ui/signout", dashboard.signout, ["POST"]),
        ("/ui/catalog", dashboard.page()(dashboard.catalog), ["GET"]),
        ("/ui/catalog/attest", dashboard.page()(dashboard.attest_now), ["POST"]),
        ("/ui/models/{model_id}", dashboard.page()(dashboard.model), ["GET"]),
        ("/ui/models/{model_id}/usage.svg", dashboard.page()(dashboard.model_chart), ["GET"]),
        ("/ui/ledger", dashboard.page()(dashboard.ledger_page), ["GET"]),
        ("/ui/jobs", dashboard.page("data_owner", "admin")(dashboard.jobs), ["GET"]),
        ("/ui/jobs/{job_id}", dashboard.page("data_owner", "admin")(dashboard.job), ["GET"]),
        ("/ui/billing", dashboard.page()(dashboard.billing), ["GET"]),
        ("/ui/billing/chart.svg", dashboard.page()(dashboard.billing_chart), ["GET"]),
        ("/ui/{rest:path}", dashboard.not_found, ["GET", "POST"]),
    ]
    for path, endpoint, methods in routes:
        app.add_route(path, endpoint, methods=methods, include_in_schema=False)
    return dashboard
