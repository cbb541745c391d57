"""HTTP hardening of the dashboard: security headers on every ``/ui`` response, bounded form bodies.

Every response under ``/ui`` (and the ``/`` redirect) carries a strict Content-Security-Policy (no
inline script or style, nothing from other origins, no framing), ``nosniff``, ``no-referrer`` and
``X-Frame-Options: DENY``; pages are never cached. A response that set its own policy (the SVG
charts) keeps it.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sealedml.errors import InputError

__all__ = ["CSP", "SVG_CSP", "SecurityHeadersMiddleware", "read_form"]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
"""The policy of every dashboard page: the one script is a static file of this origin."""

SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'self'"
"""The policy of a chart (an SVG drawn by matplotlib, which styles with attributes): no script."""

_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)

FORM_LIMIT = 16 * 1024
"""The largest form body the dashboard reads (a sign-in form is under 300 bytes)."""


def _is_dashboard(path: str) -> bool:
    return path == "/" or path == "/ui" or path.startswith("/ui/")


class SecurityHeadersMiddleware:
    """Add the dashboard's security headers to every response under ``/ui`` (others pass untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward the request; on a dashboard path, add the headers to the response start."""
        if scope["type"] != "http" or not _is_dashboard(str(scope.get("path", ""))):
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/ui/static/")

        async def with_headers(message: Message) -> None:
            """Add the headers the response does not already set."""
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                wanted = [(b"content-security-policy", CSP.encode()), *_HEADERS]
                if not static:
                    wanted.append((b"cache-control", b"no-store"))
                headers.extend((name, value) for name, value in wanted if name not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


async def read_form(request: Request, *, limit: int = FORM_LIMIT) -> dict[str, str]:
    """Return the fields of a URL-encoded form body (the first value of each name).

    Raises ``input.malformed`` for another content type, an undecodable body or a client that hung
    up, and ``input.too_large`` past ``limit`` bytes (checked on the declared length first).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise InputError("input.malformed", "send the form as application/x-www-form-urlencoded")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise InputError("input.too_large", f"a dashboard form is at most {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise InputError("input.too_large", f"a dashboard form is at most {limit} bytes")
    except ClientDisconnect:
        raise InputError("input.malformed", "the browser disconnected before the form arrived") from None
    try:
        text = bytes(body).decode("ascii")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=20, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InputError("input.malformed", "the form is not valid URL-encoded text") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    return fields
