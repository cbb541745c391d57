"""The simulated TEE backend: the enclave as a separate local process.

It runs the same enclave code as a real TEE would, reached over the same framed protocol, and
produces evidence signed by a *simulated* platform certificate chain. It protects NOTHING from the
host: the host can read the process memory and the platform keys. Clients reject its evidence unless
their policy says ``allow_simulated = true``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from sealedml.tee.channel import ProcessChannel
from sealedml.tee.client import EnclaveClient

log = logging.getLogger("sealedml.tee")


def launch_simulated(platform_dir: Path, *, workers: int = 4) -> EnclaveClient:
    """Start a simulated enclave process using the platform keys in ``platform_dir``."""
    log.warning("starting the SIMULATED TEE: no protection from the host (development only)")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    argv = [
        sys.executable,
        "-m",
        "sealedml.enclave",
        "--platform-dir",
        str(platform_dir),
        "--workers",
        str(workers),
    ]
    return EnclaveClient(ProcessChannel(argv, env=env))
