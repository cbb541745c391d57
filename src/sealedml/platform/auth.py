"""Bearer-token authentication for the platform API.

Tokens are ``sml_`` followed by 32 random bytes in URL-safe base64. The database keeps only their
SHA-256, so a copy of it does not let anyone log in. Lookups are cached in memory (accounts are
never deleted or re-keyed through this service, so a cached entry cannot go stale); the database
stays the source of truth for every miss.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from sealedml.errors import AuthError, InputError
from sealedml.platform.db import ROLES, Account, Database
from sealedml.secretfile import write_secret_file

log = logging.getLogger(__name__)

TOKEN_PREFIX = "sml_"  # noqa: S105 (a prefix, not a secret)
_TOKEN_BYTES = 32
_MAX_TOKEN_LENGTH = 128
ADMIN_NAME = "admin"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    id: str
    name: str
    role: str


def new_token() -> str:
    """Return a fresh bearer token with 256 bits of entropy."""
    return TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)


def hash_token(token: str) -> str:
    """Return the hex SHA-256 of ``token``: the only form in which tokens are stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_token(header: str | None) -> str:
    """Extract the token from an ``Authorization: Bearer ...`` header.

    Raises ``auth.missing_token`` when there is none and ``auth.invalid_token`` when it is not a
    well-formed SealedML token (so garbage never reaches the database).
    """
    if not header:
        raise AuthError("auth.missing_token", "send an Authorization: Bearer <token> header")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("auth.missing_token", "send an Authorization: Bearer <token> header")
    if not token.startswith(TOKEN_PREFIX) or len(token) > _MAX_TOKEN_LENGTH or not token.isascii():
        raise AuthError("auth.invalid_token", "the token is not valid")
    return token


class Authenticator:
    """Resolves tokens to accounts, with a bounded in-memory cache in front of the database."""

    def __init__(self, db: Database, *, cache_size: int = 10_000) -> None:
        self._db = db
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def cached(self, token: str) -> Principal | None:
        """Return the account for ``token`` if it is cached (no database access)."""
        digest = hash_token(token)
        with self._lock:
            principal = self._cache.get(digest)
            if principal is not None:
                self._cache.move_to_end(digest)
            return principal

    def lookup(self, token: str) -> Principal:
        """Return the account for ``token`` (cache, then database); raises ``auth.invalid_token``.

        Blocking: call it from a worker thread.
        """
        principal = self.cached(token)
        if principal is not None:
            return principal
        digest = hash_token(token)
        with self._db.session() as session:
            row = session.scalars(select(Account).where(Account.token_sha256 == digest)).one_or_none()
            if row is None:
                raise AuthError("auth.invalid_token", "the token is not valid")
            principal = Principal(id=row.id, name=row.name, role=row.role)
        self._remember(digest, principal)
        return principal

    def _remember(self, digest: str, principal: Principal) -> None:
        with self._lock:
            self._cache[digest] = principal
            self._cache.move_to_end(digest)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def create_account(self, name: str, role: str) -> tuple[Principal, str]:
        """Create an account and return it with its token (the only time the token exists in clear).

        Raises ``input.conflict`` if the name is taken and ``input.malformed`` for an unknown role.
        Blocking: call it from a worker thread.
        """
        if role not in ROLES:
            raise InputError("input.malformed", f"role must be one of {', '.join(ROLES)}")
        token = new_token()
        digest = hash_token(token)
        try:
            with self._db.session() as session:
                if session.scalar(select(Account.id).where(Account.name == name)) is not None:
                    raise InputError("input.conflict", f"an account named {name!r} already exists")
                row = Account(name=name, role=role, token_sha256=digest)
                session.add(row)
                session.flush()
                principal = Principal(id=row.id, name=row.name, role=row.role)
        except IntegrityError as exc:
            raise InputError("input.conflict", f"an account named {name!r} already exists") from exc
        self._remember(digest, principal)
        return principal, token

    def get_account(self, account_id: str) -> Principal | None:
        """Return the account with ``account_id``, or ``None``. Blocking."""
        with self._db.session() as session:
            row = session.get(Account, account_id)
            return None if row is None else Principal(id=row.id, name=row.name, role=row.role)


def ensure_admin(auth: Authenticator, db: Database, token_path: Path) -> Path | None:
    """On a database with no accounts, create ``admin`` and write its token to ``token_path``.

    Guarantees: the token file is created with mode 0600 and replaced atomically; the token itself
    is never logged (only the path is). Returns the path if an admin was created, else ``None``.
    """
    with db.session() as session:
        if session.scalar(select(func.count()).select_from(Account)):
            return None
    try:
        _principal, token = auth.create_account(ADMIN_NAME, "admin")
    except InputError:
        return None  # another process bootstrapped the same database first
    write_secret_file(token_path, (token + "\n").encode("ascii"))
    log.warning("created the admin account; its token is in %s", token_path)
    return token_path


