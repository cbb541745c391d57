"""Running the platform API: blocking in the foreground, or in a background thread for tests.

Uvicorn runs with ``log_level="warning"`` and no access log by default: request lines are not
secret, but nothing about a request's content belongs in the host's logs.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI

from sealedml.platform.app import create_app
from sealedml.platform.enclave_manager import Relauncher
from sealedml.platform.settings import Settings

if TYPE_CHECKING:
    from sealedml.tee.client import EnclaveClient

log = logging.getLogger(__name__)


def serve(
    settings: Settings,
    enclave: EnclaveClient,
    *,
    relauncher: Relauncher | None = None,
    log_level: str = "warning",
) -> None:
    """Serve the platform on ``settings.host:settings.port`` until interrupted (blocking).

    The caller keeps ownership of ``enclave`` and closes it afterwards.
    """
    serve_app(create_app(settings, enclave, relauncher=relauncher), settings, log_level=log_level)


def serve_app(app: FastAPI, settings: Settings, *, log_level: str = "warning") -> None:
    """Serve an already built platform app on ``settings.host:settings.port`` (blocking)."""
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=log_level, access_log=False
    )
    log.warning("SealedML platform listening on http://%s:%d", settings.host, settings.port)
    uvicorn.Server(config).run()


class BackgroundServer:
    """Serve an ASGI app on ``127.0.0.1`` and a free port in a daemon thread.

    Use as a context manager: on entry the socket is bound and the server has started (``.url`` is
    reachable); on exit the server shuts down gracefully (lifespan shutdown included) and the thread
    is joined.
    """

    def __init__(
        self,
        app: FastAPI,
        *,
        log_level: str = "warning",
        startup_timeout: float = 15.0,
        shutdown_timeout: float = 15.0,
    ) -> None:
        self.app = app
        self._log_level = log_level
        self._startup_timeout = startup_timeout
        self._shutdown_timeout = shutdown_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.port = 0

    @classmethod
    def for_platform(cls, settings: Settings, enclave: EnclaveClient, **kwargs: object) -> BackgroundServer:
        """Return a server (not yet started) for ``create_app(settings, enclave)``."""
        return cls(create_app(settings, enclave), **kwargs)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:54321``."""
        if self._server is None:
            raise RuntimeError("the server is not running")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BackgroundServer:
        """Bind, start serving and wait until the server accepts connections."""
        if self._server is not None:
            raise RuntimeError("the server is already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._socket = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level=self._log_level, access_log=False, lifespan="on")
        server = uvicorn.Server(config)
        self._server = server
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"sealedml-http-{self.port}", daemon=True
        )
        self._thread = thread
        thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the platform server did not start (see the log above)")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Shut the server down and wait for its thread; safe to call twice."""
        server, thread, sock = self._server, self._thread, self._socket
        self._server = self._thread = self._socket = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(self._shutdown_timeout)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(self._shutdown_timeout)
        if sock is not None:
            sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
