"""Start the enclave process on the TEE the platform runs on: simulated, SGX (Gramine), SEV-SNP or TDX.

Every backend runs the same enclave code over the same framed protocol; only the way the process
is started differs. On a confidential VM (SEV-SNP, TDX) the whole VM is the TEE, so the enclave is
an ordinary process of the guest that reads its evidence from configfs-tsm. On SGX the process must
be started by Gramine (``gramine-sgx <manifest>``), whose signed manifest fixes the arguments; the
caller passes that command.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sealedml.errors import ConfigError
from sealedml.tee.channel import ProcessChannel
from sealedml.tee.client import EnclaveClient
from sealedml.tee.simulated import launch_simulated

__all__ = ["TEE_BACKENDS", "launch_enclave"]

log = logging.getLogger("sealedml.tee")

TEE_BACKENDS = ("simulated", "sgx", "sev-snp", "tdx")


def launch_enclave(
    platform_dir: Path,
    *,
    tee: str = "simulated",
    workers: int = 4,
    command: Sequence[str] | None = None,
) -> EnclaveClient:
    """Start an enclave process for ``tee`` and return a client connected to it.

    Guarantees: ``simulated`` starts the simulated backend (loudly labelled); ``sev-snp`` and
    ``tdx`` start ``python -m sealedml.enclave --tee ...`` inside this confidential VM; ``sgx``
    runs ``command`` (e.g. ``["gramine-sgx", "sealedml-enclave"]``), which is required because the
    Gramine manifest fixes the enclave's arguments. Unknown backends or a missing SGX command are
    ``config.invalid``. Whether the TEE interface really exists is found out by the enclave process,
    which exits with ``enclave.platform_unavailable``; the first call then fails with
    ``enclave.unavailable``.
    """
    if tee not in TEE_BACKENDS:
        raise ConfigError(
            "config.invalid", f"unknown TEE backend {tee!r} (choose from {', '.join(TEE_BACKENDS)})"
        )
    if tee == "simulated":
        if command:
            raise ConfigError("config.invalid", "an enclave command is only used with --tee sgx")
        return launch_simulated(platform_dir, workers=workers)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    if tee == "sgx":
        if not command:
            raise ConfigError(
                "config.invalid",
                "--tee sgx needs the Gramine command that starts the signed enclave, "
                "e.g. --enclave-command 'gramine-sgx sealedml-enclave' (see docs/deploy-real-tee.md)",
            )
        argv = list(command)
    else:
        if command:
            raise ConfigError("config.invalid", "an enclave command is only used with --tee sgx")
        argv = [
            sys.executable,
            "-m",
            "sealedml.enclave",
            "--tee",
            tee,
            "--platform-dir",
            str(platform_dir),
            "--workers",
            str(workers),
        ]
    log.info("starting the enclave on %s: %s", tee, " ".join(argv))
    return EnclaveClient(ProcessChannel(argv, env=env))
