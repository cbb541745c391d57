"""Chunked AES-256-GCM streams for models and datasets at rest.

A stream is one envelope of kind ``STREAM``. Its header names the algorithm, the chunk size, the
content type and a random 16-byte stream id. Each stream gets its own subkey,
``HKDF-SHA256(data_key, salt=stream_id, info="sealedml stream v1")``, so a data key reused by
mistake never reuses a (key, nonce) pair. Chunk *i* is sealed with the nonce
``0x00*7 || i (u32) || last (u8)`` and the envelope prefix as associated data, so:

- reordering or dropping a chunk changes its index: authentication fails;
- cutting the stream at a chunk boundary leaves a last chunk not marked final: it fails;
- splicing in chunks of another stream (another subkey, another prefix): it fails;
- editing the header (chunk size, content type): every chunk fails.

Every failure is the uniform ``crypto.auth_failed``. Files larger than memory stream through
:class:`StreamEncryptor` / :class:`StreamDecryptor` with one chunk of look-ahead.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealedml.crypto.envelope import Kind, encode_prefix, field, hex_field, parse_prefix
from sealedml.errors import CryptoError

ALGORITHM = "A256GCM-STREAM-v1"
DEFAULT_CHUNK_SIZE = 64 * 1024
MIN_CHUNK_SIZE = 256
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MAX_CHUNKS = 2**32 - 1
TAG_SIZE = 16
KEY_SIZE = 32


def new_data_key() -> bytes:
    """Return a fresh random 256-bit data key."""
    return os.urandom(KEY_SIZE)


@dataclass(frozen=True)
class StreamHeader:
    """The public, authenticated header of a stream: what the host may know about a blob."""

    content_type: str
    chunk_size: int
    stream_id: bytes
    prefix: bytes


def _nonce(index: int, last: bool) -> bytes:
    return b"\x00" * 7 + struct.pack(">IB", index, 1 if last else 0)


def _subkey(key: bytes, stream_id: bytes) -> AESGCM:
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise ValueError("a stream key is 32 bytes")
    derived = HKDF(
        algorithm=hashes.SHA256(), length=KEY_SIZE, salt=stream_id, info=b"sealedml stream v1"
    ).derive(key)
    return AESGCM(derived)


def read_stream_header(data: bytes) -> StreamHeader:
    """Parse the header at the start of ``data`` (which may be a partial stream).

    Guarantees a well-formed header of a supported algorithm; says nothing about whether the
    chunks that follow authenticate. Raises ``crypto.malformed`` / ``crypto.unsupported_version``.
    """
    header, end = parse_prefix(data, Kind.STREAM)
    if field(header, "alg", str) != ALGORITHM:
        raise CryptoError("crypto.unsupported_version", "unknown stream algorithm")
    chunk = field(header, "chunk", int)
    if not MIN_CHUNK_SIZE <= chunk <= MAX_CHUNK_SIZE:
        raise CryptoError("crypto.malformed", "stream chunk size is out of bounds")
    return StreamHeader(
        content_type=field(header, "content", str),
        chunk_size=chunk,
        stream_id=hex_field(header, "sid", 16),
        prefix=bytes(data[:end]),
    )


class StreamEncryptor:
    """Incremental encryptor: feed plaintext with :meth:`update`, end with :meth:`finalize`.

    The concatenation of every returned piece is one complete stream envelope.
    """

    def __init__(self, key: bytes, *, content_type: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError("chunk size out of bounds")
        self._sid = os.urandom(16)
        self._aead = _subkey(key, self._sid)
        self._chunk = chunk_size
        self._prefix = encode_prefix(
            Kind.STREAM,
            {"alg": ALGORITHM, "chunk": chunk_size, "content": content_type, "sid": self._sid.hex()},
        )
        self._buffer = bytearray()
        self._index = 0
        self._started = False
        self._done = False

    def update(self, data: bytes) -> bytes:
        """Absorb ``data``; return the ciphertext that can already be emitted."""
        if self._done:
            raise ValueError("stream already finalized")
        self._buffer += data
        out = bytearray()
        if not self._started:
            out += self._prefix
            self._started = True
        # Keep at least one byte back: only finalize() knows which chunk is the last.
        while len(self._buffer) > self._chunk:
            out += self._seal(bytes(self._buffer[: self._chunk]), last=False)
            del self._buffer[: self._chunk]
        return bytes(out)

    def finalize(self) -> bytes:
        """Emit the final chunk (possibly empty plaintext) and close the stream."""
        out = self.update(b"")
        self._done = True
        return out + self._seal(bytes(self._buffer), last=True)

    def _seal(self, chunk: bytes, *, last: bool) -> bytes:
        if self._index > MAX_CHUNKS:
            raise ValueError("stream too long")
        sealed = self._aead.encrypt(_nonce(self._index, last), chunk, self._prefix)
        self._index += 1
        return sealed


class StreamDecryptor:
    """Incremental decryptor: feed ciphertext with :meth:`update`, end with :meth:`finalize`.

    Plaintext is released chunk by chunk only after that chunk authenticated; a stream is only
    complete once :meth:`finalize` returned without raising.
    """

    def __init__(self, key: bytes, *, expected_content_type: str | None = None) -> None:
        self._key = key
        self._expected = expected_content_type
        self._header: StreamHeader | None = None
        self._aead: AESGCM | None = None
        self._buffer = bytearray()
        self._index = 0

    @property
    def header(self) -> StreamHeader | None:
        """The stream's header once it has been read."""
        return self._header

    def update(self, data: bytes) -> bytes:
        """Absorb ciphertext; return plaintext of every chunk known not to be the last."""
        self._buffer += data
        out = bytearray()
        if self._header is None:
            try:
                self._header = read_stream_header(bytes(self._buffer))
            except CryptoError as exc:
                if len(self._buffer) < 64 * 1024 and exc.code == "crypto.malformed":
                    return b""  # header may be incomplete; decided at finalize()
                raise
            if self._expected is not None and self._header.content_type != self._expected:
                raise CryptoError(
                    "crypto.malformed",
                    f"stream holds {self._header.content_type!r}, expected {self._expected!r}",
                )
            self._aead = _subkey(self._key, self._header.stream_id)
            del self._buffer[: len(self._header.prefix)]
        size = self._header.chunk_size + TAG_SIZE
        while len(self._buffer) > size:
            out += self._open(bytes(self._buffer[:size]), last=False)
            del self._buffer[:size]
        return bytes(out)

    def finalize(self) -> bytes:
        """Open the final chunk; raises ``crypto.auth_failed`` if the stream was cut short."""
        if self._header is None:
            read_stream_header(bytes(self._buffer))  # raises the precise error
            raise CryptoError("crypto.malformed", "stream header is incomplete")
        if len(self._buffer) < TAG_SIZE:
            raise CryptoError("crypto.auth_failed", "stream is truncated")
        return self._open(bytes(self._buffer), last=True)

    def _open(self, chunk: bytes, *, last: bool) -> bytes:
        assert self._aead is not None and self._header is not None
        try:
            plain = self._aead.decrypt(_nonce(self._index, last), chunk, self._header.prefix)
        except InvalidTag:
            raise CryptoError("crypto.auth_failed", "stream chunk failed authentication") from None
        self._index += 1
        return plain


def encrypt_bytes(
    key: bytes, data: bytes, *, content_type: str, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> bytes:
    """Encrypt ``data`` as one complete stream envelope."""
    enc = StreamEncryptor(key, content_type=content_type, chunk_size=chunk_size)
    return enc.update(data) + enc.finalize()


def decrypt_bytes(key: bytes, blob: bytes, *, expected_content_type: str | None = None) -> bytes:
    """Decrypt a complete stream envelope; all of it authenticates or ``crypto.auth_failed``."""
    dec = StreamDecryptor(key, expected_content_type=expected_content_type)
    return dec.update(blob) + dec.finalize()


def iter_encrypt(
    key: bytes,
    chunks: Iterable[bytes],
    *,
    content_type: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[bytes]:
    """Yield the stream envelope for the plaintext pieces in ``chunks``, in bounded memory."""
    enc = StreamEncryptor(key, content_type=content_type, chunk_size=chunk_size)
    for piece in chunks:
        out = enc.update(piece)
        if out:
            yield out
    yield enc.finalize()


def encrypt_file(
    key: bytes,
    src: BinaryIO,
    dst: BinaryIO,
    *,
    content_type: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Encrypt ``src`` into ``dst`` chunk by chunk; return the ciphertext size written."""
    written = 0
    pieces = iter(lambda: src.read(chunk_size), b"")
    for out in iter_encrypt(key, pieces, content_type=content_type, chunk_size=chunk_size):
        dst.write(out)
        written += len(out)
        if progress is not None:
            progress(len(out))
    return written


def decrypt_file(
    key: bytes,
    src: BinaryIO,
    dst: BinaryIO,
    *,
    expected_content_type: str | None = None,
    read_size: int = 1024 * 1024,
) -> int:
    """Decrypt ``src`` into ``dst``; return the plaintext size.

    On failure ``dst`` may hold a prefix of authenticated chunks: callers write to a temporary file
    and keep it only if this returns.
    """
    dec = StreamDecryptor(key, expected_content_type=expected_content_type)
    total = 0
    for piece in iter(lambda: src.read(read_size), b""):
        out = dec.update(piece)
        dst.write(out)
        total += len(out)
    out = dec.finalize()
    dst.write(out)
    return total + len(out)
