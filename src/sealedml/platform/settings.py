"""Settings of the untrusted host service: where it keeps ciphertext and how much it accepts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sealedml.errors import ConfigError

if TYPE_CHECKING:
    from sealedml.attestation.policy import AppraisalPolicy

MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Immutable configuration of one platform instance.

    ``db_url`` defaults to an SQLite file inside ``data_dir``; any SQLAlchemy URL works
    (``postgresql+psycopg://user@host/db``). Size limits bound every body the service reads.
    """

    data_dir: Path
    db_url: str | None = None
    max_model_bytes: int = 256 * MIB
    max_request_bytes: int = 64 * MIB
    host: str = "127.0.0.1"
    port: int = 8000
    hello_ttl_seconds: float = 5.0
    policy_path: Path | None = None
    reference_measurements: tuple[str, ...] = ()
    simulated_roots: tuple[str, ...] = ()
    resource_name: str = "local-enclave"
    resource_price_per_hour: int = 0
    attestation_ttl_seconds: float = 60.0
    tee: str = "simulated"
    enclave_command: tuple[str, ...] = ()
    pccs_url: str | None = None
    ledger_url: str | None = None
    anchor: str = "none"
    anchor_interval_seconds: float = 60.0
    ray: str | None = None
    """Serve from enclave workers on Ray: ``"local"`` (a local Ray runtime) or a Ray address."""
    ray_workers: int = 2
    """How many enclave workers (Ray actors) to start when ``ray`` is set."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.db_url is None:
            object.__setattr__(self, "db_url", f"sqlite:///{self.data_dir / 'sealedml.db'}")
        if self.max_model_bytes <= 0 or self.max_request_bytes <= 0:
            raise ConfigError("config.invalid", "size limits must be positive")
        if not 0 <= self.port <= 65535:
            raise ConfigError("config.invalid", f"port {self.port} is out of range")
        if type(self.ray_workers) is not int or not 1 <= self.ray_workers <= 4096:
            raise ConfigError("config.invalid", "ray_workers must be an integer in 1..4096")
        if self.ray is not None and not self.ray.strip():
            raise ConfigError("config.invalid", 'ray must be "local" or a Ray address')

    def appraisal_policy(self) -> AppraisalPolicy:
        """The policy the platform checks its own enclave workers against (for the catalog badge).

        From ``policy_path`` if set; otherwise the measurement of the enclave code installed here
        (or ``reference_measurements``), with simulated evidence allowed only from
        ``simulated_roots``. Raises ``config.invalid`` for an unreadable or invalid policy.
        """
        from sealedml.attestation.measurement import compute_measurement
        from sealedml.attestation.policy import AppraisalPolicy

        if self.policy_path is not None:
            return AppraisalPolicy.load(self.policy_path)
        return AppraisalPolicy(
            reference_measurements=self.reference_measurements or (compute_measurement(),),
            allow_simulated=True,
            simulated_roots=self.simulated_roots,
        )

    @property
    def database_url(self) -> str:
        """The resolved database URL (never ``None`` once constructed)."""
        assert self.db_url is not None
        return self.db_url

    @property
    def ledger_database_url(self) -> str:
        """Where the transparency log lives (default: its own SQLite file in the data folder)."""
        return self.ledger_url or f"sqlite:///{self.data_dir / 'ledger.db'}"

    @property
    def ledger_key_path(self) -> Path:
        """The log operator's Ed25519 key (PEM, mode 0600), created on first start."""
        return self.data_dir / "ledger-key.pem"

    @property
    def blob_dir(self) -> Path:
        """The folder holding the encrypted model blobs and result envelopes."""
        return self.data_dir / "blobs"

    @property
    def admin_token_path(self) -> Path:
        """Where the bootstrap admin token is written (mode 0600) on a fresh database."""
        return self.data_dir / "admin-token"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Build settings from ``SEALEDML_*`` variables; raises ``config.invalid`` on bad values."""
        env = dict(os.environ if environ is None else environ)
        try:
            return cls(
                data_dir=Path(env.get("SEALEDML_DATA_DIR", "./sealedml-data")),
                db_url=env.get("SEALEDML_DB_URL") or None,
                max_model_bytes=int(env.get("SEALEDML_MAX_MODEL_BYTES", 256 * MIB)),
                max_request_bytes=int(env.get("SEALEDML_MAX_REQUEST_BYTES", 64 * MIB)),
                host=env.get("SEALEDML_HOST", "127.0.0.1"),
                port=int(env.get("SEALEDML_PORT", 8000)),
            )
        except ValueError as exc:
            raise ConfigError("config.invalid", f"bad SEALEDML_* setting: {exc}") from exc
