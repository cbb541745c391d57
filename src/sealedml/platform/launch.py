"""Wiring the platform to the simulated enclave: foreground (``sealedml serve``) or background.

The simulated platform's state (its certificate chain and sealing secret) lives in
``data_dir/platform``. It is readable by this host: the simulated TEE protects nothing, and its
evidence says so. A dead enclave process is relaunched on the same platform state, so sealed model
keys stay usable across restarts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from fastapi import FastAPI

from sealedml.platform.app import create_app
from sealedml.platform.enclave_manager import EnclaveSupervisor
from sealedml.platform.server import BackgroundServer, serve_app
from sealedml.platform.settings import Settings


def simulated_platform_dir(settings: Settings) -> Path:
    """Where the simulated TEE keeps its platform state for this data folder."""
    return settings.data_dir / "platform"


@contextmanager
def _platform_app(settings: Settings, workers: int) -> Iterator[FastAPI]:
    """Launch the enclave on ``settings.tee`` and build the app on it; stop the enclave on exit."""
    from sealedml.attestation.producers.simulated import SimulatedPlatform
    from sealedml.tee.launcher import launch_enclave

    relaunch = partial(
        launch_enclave,
        simulated_platform_dir(settings),
        tee=settings.tee,
        workers=workers,
        command=settings.enclave_command or None,
    )
    enclave = relaunch()
    try:
        if settings.tee == "simulated" and not settings.simulated_roots and settings.policy_path is None:
            # The platform launched this simulated TEE itself, so it knows which root to pin.
            root = SimulatedPlatform.open(simulated_platform_dir(settings)).root_fingerprint
            settings = dataclasses.replace(settings, simulated_roots=(root,))
        app = create_app(settings, enclave, relauncher=relaunch)
    except BaseException:
        enclave.close()
        raise
    supervisor: EnclaveSupervisor = app.state.service.enclave
    try:
        yield app
    finally:
        supervisor.close()


def run_platform(settings: Settings, *, workers: int = 4) -> None:
    """Launch the simulated enclave and serve the platform until interrupted (blocking).

    Guarantees: the enclave process (and any relaunched one) is stopped when this returns.
    """
    with _platform_app(settings, workers) as app:
        serve_app(app, settings)


@contextmanager
def platform_in_background(settings: Settings, *, workers: int = 4) -> Iterator[BackgroundServer]:
    """Run the platform with a simulated enclave on a free loopback port for the block's duration.

    Yields the running :class:`BackgroundServer` (``.url``; ``.app.state.service`` for tests).
    On exit the server stops and the current enclave process is closed.
    """
    with _platform_app(settings, workers) as app, BackgroundServer(app) as server:
        yield server
