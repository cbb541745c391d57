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
import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sealedml.attestation.producers.simulated import (
    CA_VALIDITY,
    CLOCK_SKEW,
    LEAF_CN,
    LEAF_VALIDITY,
    PLATFORM_CN,
    STATE_FILE,
    SimulatedPlatform,
    _cert_pem,
    _issue,
    _key_pem,
    _new_key,
    _write_private,
)
from sealedml.errors import ConfigError, SealedMLError

__all__ = ["EnclaveWorker", "simulated_machine"]

MACHINES_DIR = "machines"


def simulated_machine(root_dir: Path, machine_dir: Path) -> SimulatedPlatform:
    """Open (creating on first use) a simulated machine in ``machine_dir`` under ``root_dir``'s root.

    Guarantees: the machine's chain ends at the same root certificate as the simulated platform in
    ``root_dir`` (created there if absent); its platform CA key, report signer and 32-byte sealing
    secret are its own, fixed once created (an existing machine is reopened unchanged, so what it
    sealed stays readable after a worker restart). The root's private key is not copied. Raises
    ``config.invalid`` if ``root_dir``'s state is unreadable.
    """
    SimulatedPlatform.open(root_dir)
    state_path = Path(machine_dir) / STATE_FILE
    if not state_path.exists():
        try:
            root_state = json.loads((Path(root_dir) / STATE_FILE).read_bytes())
            root = x509.load_pem_x509_certificate(root_state["root_certificate"].encode("ascii"))
            root_key = serialization.load_pem_private_key(
                root_state["root_key"].encode("ascii"), password=None
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                "config.invalid", f"cannot read the simulated root in {root_dir}: {type(exc).__name__}"
            ) from None
        if not isinstance(root_key, ec.EllipticCurvePrivateKey):
            raise ConfigError("config.invalid", "the simulated root key is not ECDSA P-384")
        start = datetime.now(UTC).replace(microsecond=0) - CLOCK_SKEW
        platform_key, leaf_key = _new_key(), _new_key()
        platform = _issue(
            subject_cn=PLATFORM_CN,
            public_key=platform_key.public_key(),
            issuer=root,
            issuer_key=root_key,
            ca=True,
            path_length=0,
            start=start,
            validity=CA_VALIDITY,
        )
        leaf = _issue(
            subject_cn=LEAF_CN,
            public_key=leaf_key.public_key(),
            issuer=platform,
            issuer_key=platform_key,
            ca=False,
            path_length=None,
            start=start,
            validity=LEAF_VALIDITY,
        )
        state = {
            "version": 1,
            "warning": "SIMULATED TEE machine: these keys protect nothing from whoever can read this file",
            "root_certificate": root_state["root_certificate"],
            "platform_certificate": _cert_pem(platform),
            "platform_key": _key_pem(platform_key),
            "report_certificate": _cert_pem(leaf),
            "report_key": _key_pem(leaf_key),
            "sealing_secret": secrets.token_bytes(32).hex(),
        }
        Path(machine_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = _write_private(Path(machine_dir), json.dumps(state, indent=2).encode("utf-8"))
        try:
            os.link(tmp, state_path)  # atomic; another process that got there first wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return SimulatedPlatform.open(Path(machine_dir))


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
