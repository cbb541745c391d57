"""Writing files that hold secrets (keys, tokens) on the host or client side."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_secret_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, readable and writable by its owner only (mode 0600).

    Guarantees: the file is written to a temporary file in the same folder, flushed to disk and
    renamed over ``path``, so a crash leaves either the old file or the whole new one, never a
    partial one; the file is never readable by others, not even briefly; a missing parent folder
    is created with mode 0700. On failure the temporary file is removed and the error raised.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
