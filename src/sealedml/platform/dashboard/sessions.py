"""Server-side sessions of the web dashboard.

A browser holds only a random session id in an HttpOnly cookie; the server keeps the SHA-256 of
that id (never the id itself, never the API token) with the account it signed in as, a CSRF token
and an expiry. A session that has not signed in yet (the sign-in form's) has no account: it exists
so that the sign-in form, too, carries a CSRF token bound to the browser that fetched it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sealedml.platform.auth import Principal

__all__ = ["Session", "SessionStore"]

_ID_BYTES = 32
_MAX_ID_LENGTH = 128


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Session:
    """One browser session: the account (None before sign-in), its CSRF token and its expiry."""

    principal: Principal | None
    csrf: str
    expires_at: float

    def csrf_matches(self, candidate: object) -> bool:
        """True only if ``candidate`` is this session's CSRF token (compared in constant time)."""
        if not isinstance(candidate, str) or not candidate.isascii():
            return False
        return hmac.compare_digest(candidate.encode(), self.csrf.encode())


class SessionStore:
    """Sessions in memory, keyed by the SHA-256 of their id, each with a fixed lifetime.

    Guarantees: ids carry 256 random bits and are never stored; an expired or unknown id resolves
    to None; at most ``max_sessions`` signed-in sessions and ``max_logins`` sign-in forms are held
    (the oldest of each are dropped first), so a flood of sign-in form requests can neither
    exhaust memory nor sign anybody out. Safe to use from several threads.
    """

    def __init__(
        self,
        *,
        ttl_seconds: float = 8 * 3600.0,
        login_ttl_seconds: float = 15 * 60.0,
        max_sessions: int = 50_000,
        max_logins: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_seconds <= 0 or login_ttl_seconds <= 0 or max_sessions <= 0 or max_logins <= 0:
            raise ValueError("session lifetimes and limits must be positive")
        self.ttl_seconds = ttl_seconds
        self.login_ttl_seconds = login_ttl_seconds
        self._clock = clock
        # signed-in sessions and sign-in forms are held apart, so a flood of sign-in forms can
        # never push a signed-in session out
        self._signed_in: OrderedDict[str, Session] = OrderedDict()
        self._logins: OrderedDict[str, Session] = OrderedDict()
        self._max_sessions = max_sessions
        self._max_logins = max_logins
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._signed_in) + len(self._logins)

    def create(self, principal: Principal | None) -> tuple[str, Session]:
        """Start a session (a signed-in one if ``principal`` is given); return its id and record.

        The id is returned once, to be put in the cookie; only its hash is kept.
        """
        session_id = secrets.token_urlsafe(_ID_BYTES)
        ttl = self.ttl_seconds if principal is not None else self.login_ttl_seconds
        session = Session(principal, secrets.token_urlsafe(_ID_BYTES), self._clock() + ttl)
        table = self._signed_in if principal is not None else self._logins
        limit = self._max_sessions if principal is not None else self._max_logins
        with self._lock:
            table[_digest(session_id)] = session
            self._sweep_locked(table, limit)
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """Return the live session for ``session_id``; None if it is unknown, expired or malformed."""
        if not session_id or len(session_id) > _MAX_ID_LENGTH or not session_id.isascii():
            return None
        key = _digest(session_id)
        with self._lock:
            for table in (self._signed_in, self._logins):
                session = table.get(key)
                if session is None:
                    continue
                if session.expires_at <= self._clock():
                    del table[key]
                    return None
                return session
            return None

    def delete(self, session_id: str | None) -> None:
        """End the session (no error if there is none)."""
        if not session_id or len(session_id) > _MAX_ID_LENGTH or not session_id.isascii():
            return
        key = _digest(session_id)
        with self._lock:
            self._signed_in.pop(key, None)
            self._logins.pop(key, None)

    def stored_keys(self) -> list[str]:
        """The keys under which sessions are held (hashes of their ids), for audits and tests."""
        with self._lock:
            return [*self._signed_in, *self._logins]

    def _sweep_locked(self, table: OrderedDict[str, Session], limit: int) -> None:
        # Oldest first (all sessions of a table live equally long): drop the expired ones from the
        # front, amortised O(1) per session, then enforce the table's limit.
        now = self._clock()
        while table:
            key, session = next(iter(table.items()))
            if session.expires_at > now:
                break
            del table[key]
        while len(table) > limit:
            table.popitem(last=False)
