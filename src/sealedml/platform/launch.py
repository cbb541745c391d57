"""Wiring the platform to the simulated enclave: foreground (``sealedml serve``) or background.

The simulated platform's state (its certificate chain and sealing secret) lives in
``data_dir/platform``. It is readable by this host: the simulated TEE protects nothing, and its
evidence says so. A dead enclave process is relaunched on the same platform state, so sealed model
keys stay usable across restarts.

With ``settings.ray`` the platform serves from a cluster of enclave workers on Ray instead
(:mod:`sealedml.distributed`): ``settings.ray_workers`` actors, each launching its own enclave,
attested with the platform's policy before they join; worker 0 runs on ``data_dir/platform``,
the others on simulated machines under the same root (``data_dir/platform/machines``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from sealedml.errors import ConfigError
from sealedml.platform.app import create_app
from sealedml.platform.enclave_manager import EnclaveSupervisor
from sealedml.platform.server import BackgroundServer, serve_app
from sealedml.platform.settings import Settings


def simulated_platform_dir(settings: Settings) -> Path:
    """Where the simulated TEE keeps its platform state for this data folder."""
    return settings.data_dir / "platform"


def _pin_own_root(settings: Settings) -> Settings:
    """Pin the simulated root the platform created itself, unless the operator pinned roots."""
    from sealedml.attestation.producers.simulated import SimulatedPlatform

    if settings.tee == "simulated" and not settings.simulated_roots and settings.policy_path is None:
        root = SimulatedPlatform.open(simulated_platform_dir(settings)).root_fingerprint
        return dataclasses.replace(settings, simulated_roots=(root,))
    return settings


def _job_spec(app: FastAPI, job_id: str) -> dict[str, Any] | None:
    """The public spec of a training job (for the pool's choice of data-parallel training)."""
    record = app.state.training.store.get_job(job_id)
    return None if record is None else dict(record.spec)


@contextmanager
def _ray_app(
    settings: Settings, workers: int, worker_env: Mapping[str, Mapping[str, str]] | None = None
) -> Iterator[FastAPI]:
    """Start the enclave cluster on Ray and build the app on its pool; stop the workers on exit."""
    from sealedml.distributed.cluster import EnclaveCluster
    from sealedml.distributed.pool import RayEnclavePool

    assert settings.ray is not None
    settings = _pin_own_root(settings)
    cluster = asyncio.run(
        EnclaveCluster.start(
            workers=settings.ray_workers,
            address=settings.ray,
            tee=settings.tee,
            platform_dir=simulated_platform_dir(settings),
            policy=settings.appraisal_policy(),
            enclave_workers=workers,
            command=settings.enclave_command or None,
            worker_env=worker_env,
        )
    )
    try:
        pool = RayEnclavePool(cluster, hello_ttl=settings.hello_ttl_seconds)
        app = create_app(settings, None, supervisor=pool)  # type: ignore[arg-type]
        pool.spec_lookup = partial(_job_spec, app)
        yield app
    finally:
        asyncio.run(cluster.close())


@contextmanager
def _platform_app(
    settings: Settings, workers: int, worker_env: Mapping[str, Mapping[str, str]] | None = None
) -> Iterator[FastAPI]:
    """Launch the enclave on ``settings.tee`` and build the app on it; stop the enclave on exit."""
    if settings.ray:
        with _ray_app(settings, workers, worker_env) as app:
            yield app
        return
    if worker_env:
        raise ConfigError("config.invalid", "worker environments are for enclave workers on Ray (--ray)")
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
        # The platform launched this simulated TEE itself, so it knows which root to pin.
        settings = _pin_own_root(settings)
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

    Guarantees: the enclave process (and any relaunched one) is stopped when this returns; with
    ``settings.ray``, every enclave worker is stopped.
    """
    with _platform_app(settings, workers) as app:
        serve_app(app, settings)


@contextmanager
def platform_in_background(
    settings: Settings,
    *,
    workers: int = 4,
    worker_env: Mapping[str, Mapping[str, str]] | None = None,
) -> Iterator[BackgroundServer]:
    """Run the platform with a simulated enclave on a free loopback port for the block's duration.

    Yields the running :class:`BackgroundServer` (``.url``; ``.app.state.service`` for tests).
    On exit the server stops and the current enclave process is closed. With ``settings.ray``,
    ``worker_env`` gives named enclave workers extra environment variables (e.g. ``PYTHONPATH``
    of another build, to show that its attestation fails).
    """
    with _platform_app(settings, workers, worker_env) as app, BackgroundServer(app) as server:
        yield server
