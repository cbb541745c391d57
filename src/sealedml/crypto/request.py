"""HPKE-sealed requests to the enclave, and responses only the requester can open.

A request is an envelope of kind ``REQUEST``: the header is public routing metadata (operation,
model id, request id, issue time, which enclave key it is for) and the body is
``HPKE.Seal(pk_enclave, info=prefix, plaintext)`` with RFC 9180's DHKEM(X25519, HKDF-SHA256),
HKDF-SHA256 and AES-128-GCM (single shot, ``cryptography.hazmat.primitives.hpke``). Because the
whole prefix is the HPKE ``info``, the host cannot change the operation, model or request id
without the enclave noticing. The plaintext is ``response_key (32 bytes) || payload``: the
response is sealed with AES-256-GCM under that fresh key, so only the requester reads it, even
though the host relays every byte.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from sealedml.crypto.envelope import Kind, encode_prefix, field, hex_field, parse
from sealedml.errors import CryptoError, RequestError

SUITE_NAME = "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-128-GCM"
RESPONSE_ALG = "A256GCM"
_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_128_GCM)
RESPONSE_KEY_SIZE = 32
MAX_ID = 128
MAX_ROWS = 2**40
"""Upper bound on a declared row count (public metering metadata)."""


def key_id(public_key: bytes) -> str:
    """Return the short public identifier of an enclave HPKE key (SHA-256, first 16 bytes, hex)."""
    return hashlib.sha256(public_key).hexdigest()[:32]


@dataclass(frozen=True)
class RequestHeader:
    """Public, authenticated metadata of a sealed request."""

    op: str
    model: str
    request_id: str
    issued_at: int
    recipient: str
    rows: int | None = None
    """Rows the request declares (public, for metering); the enclave checks it against the payload."""


@dataclass(frozen=True)
class SealedRequest:
    """What the client keeps after sealing: the bytes to send and the key to open the answer."""

    envelope: bytes
    response_key: bytes
    header: RequestHeader


@dataclass(frozen=True)
class OpenedRequest:
    """What the enclave gets after opening: the authenticated header, payload and response key."""

    header: RequestHeader
    payload: bytes
    response_key: bytes


def _check_id(name: str, value: str) -> None:
    if not value or len(value) > MAX_ID or not value.isprintable():
        raise ValueError(f"{name} must be 1..{MAX_ID} printable characters")


def seal_request(
    *,
    enclave_public_key: bytes,
    op: str,
    model: str,
    payload: bytes,
    request_id: str | None = None,
    now: int | None = None,
    rows: int | None = None,
) -> SealedRequest:
    """Seal ``payload`` for the enclave holding ``enclave_public_key``.

    Guarantees: only that enclave can read the payload; any change to the envelope (header or
    body) makes it fail to open; the returned ``response_key`` is fresh and known only to the
    caller and that enclave.
    """
    _check_id("op", op)
    _check_id("model", model)
    rid = uuid.uuid4().hex if request_id is None else request_id
    _check_id("request_id", rid)
    header = RequestHeader(
        op=op,
        model=model,
        request_id=rid,
        issued_at=int(time.time()) if now is None else int(now),
        recipient=key_id(enclave_public_key),
        rows=rows,
    )
    if rows is not None and (type(rows) is not int or not 0 <= rows <= MAX_ROWS):
        raise ValueError(f"rows must be an integer in 0..{MAX_ROWS}")
    public: dict[str, object] = {
        "iat": header.issued_at,
        "model": model,
        "op": op,
        "rid": rid,
        "suite": SUITE_NAME,
        "to": header.recipient,
    }
    if rows is not None:
        public["rows"] = rows
    prefix = encode_prefix(Kind.REQUEST, public)
    response_key = os.urandom(RESPONSE_KEY_SIZE)
    public_key = x25519.X25519PublicKey.from_public_bytes(enclave_public_key)
    body = _SUITE.encrypt(response_key + payload, public_key, info=prefix)
    return SealedRequest(envelope=prefix + body, response_key=response_key, header=header)


def peek_request(envelope: bytes) -> RequestHeader:
    """Parse a request's public header without opening it (the host uses this for routing).

    The result is *not* authenticated until the enclave opens the request.
    """
    env = parse(envelope, Kind.REQUEST)
    if field(env.header, "suite", str) != SUITE_NAME:
        raise CryptoError("crypto.unsupported_version", "unknown request cipher suite")
    header = RequestHeader(
        op=field(env.header, "op", str),
        model=field(env.header, "model", str),
        request_id=field(env.header, "rid", str),
        issued_at=field(env.header, "iat", int),
        recipient=hex_field(env.header, "to", 16).hex(),
        rows=_rows(env.header),
    )
    for name in ("op", "model", "request_id"):
        value = getattr(header, name)
        if not value or len(value) > MAX_ID or not value.isprintable():
            raise CryptoError("crypto.malformed", f"request {name} is out of bounds")
    return header


def _rows(header: dict[str, Any]) -> int | None:
    if "rows" not in header:
        return None
    rows = header["rows"]
    if type(rows) is not int or not 0 <= rows <= MAX_ROWS:
        raise CryptoError("crypto.malformed", "request rows is out of bounds")
    return rows


class RecipientKey:
    """An enclave's HPKE key pair. The private half never leaves this object."""

    def __init__(self, private_key: x25519.X25519PrivateKey) -> None:
        self._private = private_key
        self.public_bytes: bytes = private_key.public_key().public_bytes_raw()
        self.key_id: str = key_id(self.public_bytes)

    @classmethod
    def generate(cls) -> RecipientKey:
        """Return a fresh key pair."""
        return cls(x25519.X25519PrivateKey.generate())

    def open_request(self, envelope: bytes) -> OpenedRequest:
        """Open a request sealed to this key.

        Raises ``request.wrong_recipient`` if it names another key (e.g. from before a restart)
        and ``crypto.auth_failed`` if any byte was altered.
        """
        header = peek_request(envelope)
        if header.recipient != self.key_id:
            raise RequestError("request.wrong_recipient", "request was sealed to another enclave key")
        env = parse(envelope, Kind.REQUEST)
        try:
            plain = _SUITE.decrypt(env.body, self._private, info=env.prefix)
        except (InvalidTag, ValueError):
            raise CryptoError("crypto.auth_failed", "request failed authentication") from None
        if len(plain) < RESPONSE_KEY_SIZE:
            raise CryptoError("crypto.malformed", "request plaintext is too short")
        return OpenedRequest(
            header=header,
            payload=plain[RESPONSE_KEY_SIZE:],
            response_key=plain[:RESPONSE_KEY_SIZE],
        )


def seal_response(*, response_key: bytes, request_id: str, payload: bytes) -> bytes:
    """Seal ``payload`` as the answer to request ``request_id``, readable with ``response_key`` only."""
    nonce = os.urandom(12)
    prefix = encode_prefix(Kind.RESPONSE, {"alg": RESPONSE_ALG, "nonce": nonce.hex(), "rid": request_id})
    return prefix + AESGCM(response_key).encrypt(nonce, payload, prefix)


def open_response(envelope: bytes, *, response_key: bytes, request_id: str) -> bytes:
    """Open a response; raises ``crypto.auth_failed`` unless it answers ``request_id`` untampered."""
    env = parse(envelope, Kind.RESPONSE)
    if field(env.header, "alg", str) != RESPONSE_ALG:
        raise CryptoError("crypto.unsupported_version", "unknown response algorithm")
    nonce = hex_field(env.header, "nonce", 12)
    if field(env.header, "rid", str) != request_id:
        raise CryptoError("crypto.auth_failed", "response answers another request")
    try:
        return AESGCM(response_key).decrypt(nonce, env.body, env.prefix)
    except InvalidTag:
        raise CryptoError("crypto.auth_failed", "response failed authentication") from None
