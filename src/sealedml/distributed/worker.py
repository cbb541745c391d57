"""One enclave worker: a Ray actor that launches its own enclave and relays raw protocol calls to it.

The actor is the worker machine's untrusted host side: it starts the enclave process with
:func:`~sealedml.tee.launcher.launch_enclave` (the same code path for the simulated backend and
real TEEs) and forwards frames. It never sees plaintext: everything it relays is ciphertext,
evidence or public metadata.

A *simulated machine* models a separate computer under one simulated vendor: its platform CA and
report signer are certified by the shared simulated root (so verifiers pinning that root accept
its evidence), but it has its own platform key and its own sealing secret, so what one machine
seals another cannot unseal.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from sealedml.attestation.producers.simulated import SimulatedPlatform
from sealedml.errors import SealedMLError

__all__ = ["EnclaveWorker", "simulated_machine"]

MACHINES_DIR = "machines"


def simulated_machine(root_dir: Path, machine_dir: Path) -> SimulatedPlatform:
    """Open (creating on first use) a simulated machine in ``machine_dir`` under ``root_dir``'s root.

    See :meth:`SimulatedPlatform.open_machine`: same root, its own platform key and sealing secret.
    """
    return SimulatedPlatform.open_machine(Path(machine_dir), root_dir=Path(root_dir))


def machine_dir(platform_dir: Path, slot: int) -> Path:
    """Where worker slot ``slot`` keeps its simulated machine: slot 0 is the platform itself."""
    return Path(platform_dir) if slot == 0 else Path(platform_dir) / MACHINES_DIR / f"worker-{slot}"


class EnclaveWorker:
    """A Ray actor (wrap with ``ray.remote``) owning one enclave process.

    Guarantees: :meth:`call` relays exactly one enclave-protocol request and returns
    ``("ok", header, parts)`` or ``("error", {"code", "message"}, [])`` for the enclave's typed
    errors (they cross Ray as data, keeping their code); the enclave process stops with the actor.
    """

    def __init__(
        self,
        platform_dir: str,
        *,
        tee: str = "simulated",
        root_dir: str | None = None,
        enclave_workers: int = 2,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        from sealedml.tee.launcher import launch_enclave

        if env:
            # A different build or configuration of the enclave on this worker's machine.
            os.environ.update(env)
        directory = Path(platform_dir)
        if tee == "simulated" and root_dir is not None and Path(root_dir) != directory:
            simulated_machine(Path(root_dir), directory)
        self._client = launch_enclave(directory, tee=tee, workers=enclave_workers, command=command or None)

    async def call(self, op: str, header: dict[str, Any], parts: list[bytes]) -> tuple[str, Any, list[bytes]]:
        """Relay one request to the enclave; typed errors come back as ``("error", dict, [])``."""
        try:
            head, out = await self._client.call(op, header, parts)
        except SealedMLError as exc:
            return "error", exc.to_dict(), []
        return "ok", head, list(out)

    def pid(self) -> int:
        """The actor's process id."""
        return os.getpid()

    def enclave_pid(self) -> int:
        """The enclave process id (tests kill it to simulate an enclave crash)."""
        return int(getattr(self._client.channel, "pid", -1))

    async def info(self) -> dict[str, Any]:
        """The enclave's unverified self-description (``hello``)."""
        head, _ = await self._client.call("hello", {})
        return {k: v for k, v in head.items() if k not in ("id", "ok", "parts")}

    def close(self) -> None:
        """Stop the enclave process."""
        with contextlib.suppress(Exception):
            self._client.close()
