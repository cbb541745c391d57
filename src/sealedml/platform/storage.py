"""The blob folder: encrypted models and response envelopes, written atomically.

Layout: ``{root}/models/`` and ``{root}/results/``. Every write goes to a hidden temporary file in
the destination folder and is published with ``os.replace``, so a reader sees either nothing or
the complete file; on any failure the temporary file is removed. The platform only ever stores
bytes it received already encrypted.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import anyio.to_thread

from sealedml.errors import InputError

_TMP_PREFIX = ".tmp-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_WRITE_BATCH = 1024 * 1024


class Area(enum.StrEnum):
    """The sub-folders of the blob store."""

    MODELS = "models"
    RESULTS = "results"
    HE = "he"


@dataclass(frozen=True)
class StoredBlob:
    """A published blob: its path relative to the store root, SHA-256 and size."""

    path: str
    sha256: str
    size: int


class BlobStore:
    """Atomic writes, reads and deletes under one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for area in Area:
            folder = self.root / area.value
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob(_TMP_PREFIX + "*"):  # left over by a crash
                stale.unlink(missing_ok=True)

    def _target(self, area: Area, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"bad blob name {name!r}")
        return self.root / area.value / name

    def resolve(self, path: str) -> Path:
        """Return the absolute path of a stored blob; refuses paths outside the store."""
        area, _, name = path.partition("/")
        return self._target(Area(area), name)

    def _open_temp(self, area: Area) -> tuple[BinaryIO, Path]:
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.root / area.value)
        return os.fdopen(fd, "wb"), Path(tmp)

    def write_bytes(self, area: Area, name: str, data: bytes, *, durable: bool = False) -> StoredBlob:
        """Write ``data`` as ``area/name`` atomically (replacing any old file); return what was stored.

        With ``durable`` the bytes are fsynced before they become visible.
        """
        target = self._target(area, name)
        handle, tmp = self._open_temp(area)
        try:
            with handle:
                handle.write(data)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredBlob(f"{area.value}/{name}", hashlib.sha256(data).hexdigest(), len(data))

    async def write_stream(
        self,
        area: Area,
        name: str,
        chunks: AsyncIterator[bytes],
        *,
        limit: int,
        durable: bool = True,
    ) -> StoredBlob:
        """Stream ``chunks`` into ``area/name`` atomically, hashing as it goes.

        Guarantees: at most ``limit`` bytes are accepted, past that ``input.too_large`` is raised;
        on any error (including one raised by ``chunks``) nothing is published and the partial
        temporary file is deleted. File I/O runs in worker threads, in batches of about 1 MiB.
        """
        target = self._target(area, name)
        handle, tmp = await anyio.to_thread.run_sync(self._open_temp, area)
        digest = hashlib.sha256()
        size = 0
        pending: list[bytes] = []
        pending_size = 0
        try:
            try:
                async for chunk in chunks:
                    if not chunk:
                        continue
                    size += len(chunk)
                    if size > limit:
                        raise InputError("input.too_large", f"body exceeds the limit of {limit} bytes")
                    digest.update(chunk)
                    pending.append(chunk)
                    pending_size += len(chunk)
                    if pending_size >= _WRITE_BATCH:
                        await anyio.to_thread.run_sync(handle.write, b"".join(pending))
                        pending, pending_size = [], 0
                if pending:
                    await anyio.to_thread.run_sync(handle.write, b"".join(pending))
                if durable:
                    await anyio.to_thread.run_sync(_flush_and_sync, handle)
            finally:
                handle.close()
            await anyio.to_thread.run_sync(os.replace, tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredBlob(f"{area.value}/{name}", digest.hexdigest(), size)

    def read_bytes(self, path: str) -> bytes:
        """Return the whole content of a stored blob."""
        return self.resolve(path).read_bytes()

    def delete(self, path: str) -> None:
        """Remove a stored blob if it exists."""
        self.resolve(path).unlink(missing_ok=True)


def _flush_and_sync(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())
