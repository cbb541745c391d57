"""The dashboard's pages: sign-in, catalog, model, ledger, jobs and billing, each by role.

Who sees what:

* every signed-in account: the catalog (models, datasets, TEE resources, live attestation badges),
  model pages with their usage over time, the signed tree head, and its own receipts' proofs;
* a data owner: its own jobs and what it spent;
* a provider: what its models earned (per model and over time, never who paid or their jobs);
* an admin: every job's metadata, every receipt's proof, the whole revenue.

Nothing secret reaches a page: no token, key, sealed key, ciphertext or result blob. Another
account's job or receipt is "not found", exactly like one that does not exist.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from sealedml.errors import AuthError, LedgerError, SealedMLError
from sealedml.ledger.log import check_inclusion, check_sth
from sealedml.ledger.store import LogEntry
from sealedml.platform.auth import Principal, bearer_token
from sealedml.platform.dashboard.charts import bucket_series, render_bars_svg
from sealedml.platform.dashboard.present import (
    format_age,
    format_credits,
    format_ms,
    format_when,
    listing_badge,
    receipt_fields,
    resource_view,
    short_hex,
)
from sealedml.platform.dashboard.proofs import walk_inclusion
from sealedml.platform.dashboard.queries import job_rows, model_usage
from sealedml.platform.dashboard.security import SVG_CSP, read_form
from sealedml.platform.dashboard.sessions import Session, SessionStore
from sealedml.platform.market import Market, ModelListing
from sealedml.platform.service import PlatformService, run_sync

__all__ = ["LOGIN_COOKIE", "SESSION_COOKIE", "Dashboard", "template_environment"]

log = logging.getLogger(__name__)

SESSION_COOKIE = "sml_session"
LOGIN_COOKIE = "sml_login"
COOKIE_PATH = "/ui"
TEMPLATES = Path(__file__).parent / "templates"

ROLE_LABELS = {"admin": "platform operator", "provider": "model provider", "data_owner": "data owner"}
_ID = re.compile(r"[0-9a-f]{32}")
_RECEIPT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_LEAF_INDEX = re.compile(r"#([0-9]{1,18})")
_MAX_QUERY = 128

Handler = Callable[[Request, Session], Awaitable[Response]]


class PageError(Exception):
    """A page that cannot be shown: its HTTP status, a title and a message for the reader."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


def _principal(session: Session) -> Principal:
    assert session.principal is not None
    return session.principal


def template_environment() -> Environment:
    """The dashboard's Jinja2 environment: autoescaping on for every template, undefined names
    an error, and the formatting filters the templates use."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        short=short_hex, when=format_when, ms=format_ms, age=format_age, credits=format_credits
    )
    env.globals["role_label"] = lambda role: ROLE_LABELS.get(role, role)
    return env


class Dashboard:
    """The dashboard over one platform's service and market; :meth:`install` adds its routes."""

    def __init__(self, service: PlatformService, market: Market, sessions: SessionStore) -> None:
        self.service = service
        self.market = market
        self.sessions = sessions
        self.env = template_environment()

    # -- rendering --------------------------------------------------------------------------------
    def render(
        self, name: str, *, session: Session | None, status: int = 200, **context: Any
    ) -> HTMLResponse:
        """Render template ``name`` (autoescaped) with the signed-in account, if any, in the layout."""
        principal = session.principal if session is not None else None
        html = self.env.get_template(name).render(
            principal=principal, csrf=session.csrf if session is not None else "", **context
        )
        return HTMLResponse(html, status_code=status)

    def error_page(self, error: PageError, session: Session | None) -> HTMLResponse:
        """Render a page saying what went wrong and what to do, with the error's status."""
        return self.render(
            "error.html",
            session=session if session is not None and session.principal is not None else None,
            status=error.status,
            title=error.title,
            message=error.message,
            nav="",
        )

    def current(self, request: Request) -> Session | None:
        """The signed-in session of this request, or None."""
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        return session if session is not None and session.principal is not None else None

    def page(self, *roles: str) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
        """Wrap a handler: signed-in only (else to the sign-in page), optionally for ``roles`` only,
        with failures shown as pages (never a stack trace, never the raw input unescaped)."""

        def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
            @functools.wraps(handler)
            async def endpoint(request: Request) -> Response:
                session = self.current(request)
                if session is None:
                    if request.method == "GET":
                        return RedirectResponse("/ui/signin", status_code=303)
                    error = PageError(403, "Signed out", "Your session has ended. Sign in again.")
                    return self.error_page(error, None)
                principal = _principal(session)
                try:
                    if roles and principal.role not in roles:
                        allowed = " or ".join(ROLE_LABELS.get(role, role) for role in roles)
                        raise PageError(403, "Not for this account", f"This page is for a {allowed}.")
                    return await handler(request, session)
                except PageError as exc:
                    return self.error_page(exc, session)
                except SealedMLError as exc:
                    return self.error_page(PageError(exc.status, "Request refused", exc.message), session)
                except Exception:
                    log.exception("dashboard page %s failed", request.url.path)
                    error = PageError(500, "Server error", "Something went wrong on the server; try again.")
                    return self.error_page(error, session)

            return endpoint

        return wrap

    def check_csrf(self, session: Session, form: dict[str, str]) -> None:
        """Raise a 403 page unless the form carries this session's CSRF token."""
        if not session.csrf_matches(form.get("csrf")):
            raise PageError(403, "Form expired", "This form is out of date. Reload the page and try again.")

    @staticmethod
    def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
        """Set an HttpOnly, SameSite=Strict cookie on ``/ui`` (Secure when served over HTTPS)."""
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def clear_cookie(response: Response, request: Request, name: str) -> None:
        """Tell the browser to drop a dashboard cookie."""
        response.delete_cookie(
            name, path=COOKIE_PATH, httponly=True, samesite="strict", secure=request.url.scheme == "https"
        )

    # -- sign-in ----------------------------------------------------------------------------------
    async def root(self, request: Request) -> Response:
        """``/`` and ``/ui``: to the catalog when signed in, else to the sign-in page."""
        target = "/ui/catalog" if self.current(request) is not None else "/ui/signin"
        return RedirectResponse(target, status_code=303)

    def _signin_form(self, request: Request, *, status: int = 200, error: str | None = None) -> Response:
        login_id, login = self.sessions.create(None)
        response = self.render(
            "signin.html",
            session=None,
            status=status,
            title="Sign in",
            nav="",
            login_csrf=login.csrf,
            error=error,
            notice="You are signed out." if request.query_params.get("signed_out") == "1" else None,
        )
        self.sessions.delete(request.cookies.get(LOGIN_COOKIE))
        self.set_cookie(response, request, LOGIN_COOKIE, login_id, int(self.sessions.login_ttl_seconds))
        return response

    async def signin_form(self, request: Request) -> Response:
        """The sign-in form (with a CSRF token bound to a fresh pre-sign-in session)."""
        if self.current(request) is not None:
            return RedirectResponse("/ui/catalog", status_code=303)
        return self._signin_form(request)

    async def signin(self, request: Request) -> Response:
        """Check the CSRF token and the API token; on success start a session and set its cookie.

        A wrong token shows the form again (401) and sets no session cookie; the token is never
        echoed, stored or put in the cookie.
        """
        try:
            form = await read_form(request)
        except SealedMLError as exc:
            return self._signin_form(request, status=400, error=exc.message)
        login = self.sessions.get(request.cookies.get(LOGIN_COOKIE))
        if login is None or login.principal is not None or not login.csrf_matches(form.get("csrf")):
            return self._signin_form(
                request, status=400, error="The sign-in form expired. Enter your token again."
            )
        token = form.get("token", "").strip()
        try:
            bearer_token(f"Bearer {token}")  # well-formed SealedML token, or auth.invalid_token
            principal = await self.service.authenticate(token)
        except AuthError:
            return self._signin_form(
                request,
                status=401,
                error="That token is not valid. Use your CLI's API token (it starts with sml_).",
            )
        self.sessions.delete(request.cookies.get(LOGIN_COOKIE))
        session_id, _session = self.sessions.create(principal)
        response = RedirectResponse("/ui/catalog", status_code=303)
        self.set_cookie(response, request, SESSION_COOKIE, session_id, int(self.sessions.ttl_seconds))
        self.clear_cookie(response, request, LOGIN_COOKIE)
        log.info("dashboard sign-in by account %s", principal.id)
        return response

    async def signout(self, request: Request) -> Response:
        """End the session (CSRF-checked) and clear its cookie."""
        session = self.current(request)
        try:
            form = await read_form(request)
        except SealedMLError as exc:
            return self.error_page(PageError(400, "Bad form", exc.message), session)
        if session is None:
            response: Response = RedirectResponse("/ui/signin?signed_out=1", status_code=303)
        elif not session.csrf_matches(form.get("csrf")):
            error = PageError(403, "Form expired", "This form is out of date. Reload the page and try again.")
            return self.error_page(error, session)
        else:
            self.sessions.delete(request.cookies.get(SESSION_COOKIE))
            response = RedirectResponse("/ui/signin?signed_out=1", status_code=303)
        self.clear_cookie(response, request, SESSION_COOKIE)
        return response

    # -- catalog ----------------------------------------------------------------------------------
    async def catalog(self, request: Request, session: Session) -> Response:
        """Models, datasets and TEE resources with price, owner and the live attestation badge."""
        query = request.query_params.get("q", "").strip()
        raw_price = request.query_params.get("max_price", "").strip()
        problems: list[str] = []
        if len(query) > _MAX_QUERY:
            problems.append(f"Search text is limited to {_MAX_QUERY} characters; it was ignored.")
            query = ""
        max_price: int | None = None
        if raw_price:
            if raw_price.isdigit() and len(raw_price) <= 16:
                max_price = int(raw_price)
            else:
                problems.append("The maximum price must be a whole number of credits; it was ignored.")
                raw_price = ""
        resource = await self.market.check_enclave()
        listings = await run_sync(self.market.models, resource, query=query or None, max_price=max_price)
        datasets = await run_sync(self.market.datasets, query=query or None, max_price=max_price)
        resources = await run_sync(self.market.resources)
        return self.render(
            "catalog.html",
            session=session,
            status=400 if problems else 200,
            title="Catalog",
            nav="catalog",
            query=query,
            max_price=raw_price,
            problems=problems,
            enclave=resource_view(resource),
            models=[(listing, listing_badge(listing, resource)) for listing in listings],
            datasets=datasets,
            resources=[resource_view(r) for r in resources],
        )

    async def attest_now(self, request: Request, session: Session) -> Response:
        """Re-attest the enclave now (CSRF-checked), then show the catalog."""
        self.check_csrf(session, await read_form(request))
        await self.market.check_enclave(force=True)
        return RedirectResponse("/ui/catalog", status_code=303)

    async def _listing(self, request: Request) -> tuple[ModelListing, Any]:
        model_id = request.path_params["model_id"]
        if not _ID.fullmatch(model_id):
            raise PageError(400, "Not a model id", "A model id is 32 lowercase hexadecimal characters.")
        resource = await self.market.check_enclave()
        for listing in await run_sync(self.market.models, resource):
            if listing.id == model_id:
                return listing, resource
        raise PageError(404, "Model not found", "No ready model with this id is listed in the catalog.")

    async def model(self, request: Request, session: Session) -> Response:
        """One model: input schema, output policy, price, attestation and usage over time."""
        listing, resource = await self._listing(request)
        points = await run_sync(model_usage, self.service.catalog.db, listing.id)
        granularity, buckets = bucket_series(points, now=datetime.now(UTC))
        return self.render(
            "model.html",
            session=session,
            title=listing.name,
            nav="catalog",
            model=listing,
            verdict=listing_badge(listing, resource),
            enclave=resource_view(resource),
            granularity=granularity,
            buckets=buckets,
            output_policy=sorted((listing.output_policy or {}).items()),
        )

    async def model_chart(self, request: Request, session: Session) -> Response:
        """The model's rows per hour or day as an SVG chart."""
        listing, _resource = await self._listing(request)
        points = await run_sync(model_usage, self.service.catalog.db, listing.id)
        granularity, buckets = bucket_series(points, now=datetime.now(UTC))
        svg = await run_sync(
            render_bars_svg, buckets, title=f"Rows predicted per {granularity}", ylabel="rows"
        )
        return Response(svg, media_type="image/svg+xml", headers={"Content-Security-Policy": SVG_CSP})

    # -- ledger -----------------------------------------------------------------------------------
    def _visible_entry(self, principal: Principal, query: str) -> tuple[LogEntry, dict[str, Any]] | None:
        """The logged receipt ``query`` names (job id or ``#index``) if this account may see it."""
        ledger = self.service.ledger
        assert ledger is not None
        index = _LEAF_INDEX.fullmatch(query)
        if index is not None:
            try:
                found: LogEntry | None = ledger.log.store.get_entry(int(index.group(1)))
            except LedgerError:
                found = None
        else:
            found = ledger.log.store.find_by_id(query)
        if found is None:
            return None
        try:
            body = json.loads(found.entry)
        except ValueError:
            return None
        receipt = body.get("receipt") if isinstance(body, dict) else None
        if not isinstance(receipt, dict):
            return None
        if principal.role != "admin" and receipt.get("client") != principal.id:
            return None
        return found, receipt

    async def ledger_page(self, request: Request, session: Session) -> Response:
        """The latest signed tree head; with ``q``, one receipt and its inclusion proof, step by step."""
        ledger = self.service.ledger
        if ledger is None:
            raise PageError(404, "No transparency log", "This platform does not keep a transparency log.")
        principal = _principal(session)
        raw = request.query_params.get("q")
        query = raw.strip() if raw is not None else ""
        context: dict[str, Any] = {"query": "", "result": None, "search_error": None}
        status = 200
        if query:
            if len(query) > _MAX_QUERY or not (_RECEIPT_ID.fullmatch(query) or _LEAF_INDEX.fullmatch(query)):
                status = 400
                context["search_error"] = (
                    "That is not a receipt id. Enter a job id (letters, digits, '.', '_', ':' or '-', "
                    "at most 128) or # followed by a leaf index, like #12."
                )
            else:
                context["query"] = query
                found = await run_sync(self._visible_entry, principal, query)
                if found is None:
                    status = 404
                    context["search_error"] = "No receipt with this id is visible to your account."
                else:
                    context["result"] = await run_sync(self._proof_context, *found)
        sth = await run_sync(ledger.sth)
        try:
            check_sth(sth, ledger.public_key)
            sth_ok = True
        except LedgerError:
            sth_ok = False
        own_jobs = []
        if principal.role in ("data_owner", "admin"):
            owner = None if principal.role == "admin" else principal.id
            own_jobs = await run_sync(job_rows, self.service.catalog.db, owner_id=owner, limit=10)
        return self.render(
            "ledger.html",
            session=session,
            status=status,
            title="Transparency log",
            nav="ledger",
            sth=context["result"]["sth"] if context["result"] else sth,
            sth_ok=context["result"]["sth_ok"] if context["result"] else sth_ok,
            log_public_key=ledger.public_key.hex(),
            anchor_mode=ledger.anchor_mode,
            recent_jobs=own_jobs,
            **context,
        )

    def _proof_context(self, found: LogEntry, receipt: dict[str, Any]) -> dict[str, Any]:
        """The receipt, the signed head it is proven against, the proof and its checked steps."""
        ledger = self.service.ledger
        assert ledger is not None
        sth = ledger.sth()
        proof = ledger.log.inclusion(found.index, sth.tree_size)
        try:
            check_inclusion(found.entry, proof, sth, ledger.public_key)
            server_ok, problem = True, None
        except LedgerError as exc:
            server_ok, problem = False, exc.message
        path = [bytes.fromhex(value) for value in proof["inclusion_path"]]
        walk = walk_inclusion(found.entry, found.index, sth.tree_size, path, sth.root_hash)
        try:
            check_sth(sth, ledger.public_key)
            sth_ok = True
        except LedgerError:
            sth_ok = False
        return {
            "entry_id": found.entry_id,
            "leaf_index": found.index,
            "entry_b64": base64.b64encode(found.entry).decode("ascii"),
            "entry_text": found.entry.decode("utf-8", "replace"),
            "receipt": receipt_fields(receipt),
            "kind": str(receipt.get("kind", "")),
            "job": str(receipt.get("job", "")),
            "proof": proof,
            "walk": walk,
            "server_ok": server_ok and walk.verified,
            "problem": problem or walk.problem,
            "sth": sth,
            "sth_ok": sth_ok,
        }

    # -- jobs -------------------------------------------------------------------------------------
    async def jobs(self, request: Request, session: Session) -> Response:
        """A data owner's jobs (an admin: everyone's) with state, progress and rows."""
        principal = _principal(session)
        owner = None if principal.role == "admin" else principal.id
        rows = await run_sync(job_rows, self.service.catalog.db, owner_id=owner, limit=500)
        return self.render("jobs.html", session=session, title="Jobs", nav="jobs", jobs=rows)

    async def job(self, request: Request, session: Session) -> Response:
        """One job and its signed receipt; another account's job is not found."""
        principal = _principal(session)
        job_id = request.path_params["job_id"]
        if not _ID.fullmatch(job_id):
            raise PageError(400, "Not a job id", "A job id is 32 lowercase hexadecimal characters.")
        owner = None if principal.role == "admin" else principal.id
        rows = await run_sync(job_rows, self.service.catalog.db, owner_id=owner, job_id=job_id, limit=1)
        record = await run_sync(self.service.catalog.get_job, job_id) if rows else None
        if not rows or record is None:
            raise PageError(404, "Job not found", "No job with this id belongs to your account.")
        return self.render(
            "job.html",
            session=session,
            title=f"Job {job_id[:8]}",
            nav="jobs",
            job=rows[0],
            receipt=receipt_fields(record.receipt),
            signature=record.signature,
        )

    # -- billing ----------------------------------------------------------------------------------
    async def _billing_rows(self, principal: Principal) -> list[dict[str, Any]]:
        account = None if principal.role == "admin" else principal.id
        rows = await run_sync(self.market.report, account_id=account)
        if principal.role == "provider":
            return [row for row in rows if row["provider"] == principal.name]
        if principal.role == "data_owner":
            return [row for row in rows if row["payer"] == principal.name]
        return rows

    async def billing(self, request: Request, session: Session) -> Response:
        """Revenue (provider: its models; admin: everyone's) or spending (data owner)."""
        principal = _principal(session)
        rows = await self._billing_rows(principal)
        per_model: dict[str, dict[str, int]] = defaultdict(lambda: {"uses": 0, "rows": 0, "credits": 0})
        per_provider: dict[str, int] = defaultdict(int)
        for row in rows:
            entry = per_model[row["model"]]
            entry["uses"] += 1
            entry["rows"] += row["rows"]
            entry["credits"] += row["amount"]
            per_provider[row["provider"]] += row["amount"]
        points = [(datetime.fromisoformat(row["settled_at"]), row["amount"]) for row in rows]
        granularity, buckets = bucket_series(points, now=datetime.now(UTC))
        balance = await self.service.balance(principal)
        return self.render(
            "billing.html",
            session=session,
            title="Spending" if principal.role == "data_owner" else "Revenue",
            nav="billing",
            rows=list(reversed(rows))[:200],
            total=sum(row["amount"] for row in rows),
            per_model=sorted(per_model.items()),
            per_provider=sorted(per_provider.items()),
            granularity=granularity,
            buckets=buckets,
            balance=balance,
        )

    async def billing_chart(self, request: Request, session: Session) -> Response:
        """Credits earned (or spent) per hour or day as an SVG chart."""
        principal = _principal(session)
        rows = await self._billing_rows(principal)
        points = [(datetime.fromisoformat(row["settled_at"]), row["amount"]) for row in rows]
        granularity, buckets = bucket_series(points, now=datetime.now(UTC))
        verb = "spent" if principal.role == "data_owner" else "earned"
        svg = await run_sync(
            render_bars_svg, buckets, title=f"Credits {verb} per {granularity}", ylabel="credits"
        )
        return Response(svg, media_type="image/svg+xml", headers={"Content-Security-Policy": SVG_CSP})

    async def not_found(self, request: Request) -> Response:
        """Any other ``/ui`` address: a 404 page (the address is not echoed)."""
        error = PageError(404, "Page not found", "There is no dashboard page at this address.")
        return self.error_page(error, self.current(request))
