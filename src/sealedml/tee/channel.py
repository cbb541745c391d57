"""The transport seam: frames in, frames out, several requests in flight, matched by id."""

from __future__ import annotations

import itertools
import logging
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, Protocol

from sealedml.enclave.framing import encode_frame, read_frame
from sealedml.errors import EnclaveError, SealedMLError, error_from_dict

log = logging.getLogger("sealedml.tee")

Answer = tuple[dict[str, Any], list[bytes]]


class Channel(Protocol):
    """A way to reach one enclave instance. The platform cannot tell implementations apart."""

    def call(self, op: str, header: dict[str, Any], parts: Sequence[bytes] = ()) -> Future[Answer]:
        """Send one request; the future resolves to the reply or raises its ``SealedMLError``."""
        ...

    @property
    def alive(self) -> bool:
        """Whether the enclave can still answer."""
        ...

    def close(self) -> None:
        """Stop the enclave and fail every pending call with ``enclave.unavailable``."""
        ...


class ProcessChannel:
    """A :class:`Channel` to an enclave running as a child process, over its stdin/stdout."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None) -> None:
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0)
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[Answer]] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, name="enclave-reader", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        """Whether the process is running and the channel open."""
        return not self._closed and self._proc.poll() is None

    @property
    def pid(self) -> int:
        """The enclave process id (tests kill it to check restarts)."""
        return self._proc.pid

    def call(self, op: str, header: dict[str, Any], parts: Sequence[bytes] = ()) -> Future[Answer]:
        """Send one request frame; never blocks on the answer."""
        future: Future[Answer] = Future()
        with self._lock:
            if self._closed:
                future.set_exception(EnclaveError("enclave.unavailable", "the enclave is not running"))
                return future
            rid = next(self._ids)
            self._pending[rid] = future
        try:
            frame = encode_frame({**header, "id": rid, "op": op}, tuple(parts))
            with self._write_lock:
                assert self._proc.stdin is not None
                self._proc.stdin.write(frame)
                self._proc.stdin.flush()
        except SealedMLError as exc:
            self._resolve(rid, exc)
        except OSError:
            self._resolve(rid, EnclaveError("enclave.unavailable", "the enclave is not running"))
        return future

    def _resolve(self, rid: int, result: Answer | SealedMLError) -> None:
        with self._lock:
            future = self._pending.pop(rid, None)
        if future is None or future.done():
            return
        if isinstance(result, SealedMLError):
            future.set_exception(result)
        else:
            future.set_result(result)

    def _read_loop(self) -> None:
        assert self._proc.stdout is not None
        try:
            while True:
                frame = read_frame(self._proc.stdout)
                if frame is None:
                    break
                header, parts = frame
                rid = header.get("id")
                if not isinstance(rid, int):
                    log.error("enclave sent a frame without an id")
                    break
                if header.get("ok") is True:
                    self._resolve(rid, (header, parts))
                else:
                    self._resolve(rid, error_from_dict(header.get("error")))
        except (SealedMLError, OSError, ValueError) as exc:
            log.error("enclave channel broke: %s", type(exc).__name__)
        self._fail_all()

    def _fail_all(self) -> None:
        with self._lock:
            self._closed = True
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(EnclaveError("enclave.unavailable", "the enclave stopped"))

    def close(self, timeout: float = 5.0) -> None:
        """Ask the enclave to stop, then make sure it has."""
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                with self._write_lock:
                    self._proc.stdin.write(encode_frame({"id": 0, "op": "shutdown"}))
                    self._proc.stdin.close()
            except OSError:
                pass
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._fail_all()
        self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None and not pipe.closed:
                try:
                    pipe.close()
                except OSError:
                    pass
