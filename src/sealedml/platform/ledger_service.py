"""The platform's transparency log: every enclave-signed receipt is appended, tree heads are signed
and, optionally, anchored on a chain.

The log key is the platform's (the log operator's): clients pin its public key and check every
tree head against it, so a host that drops, edits or reorders a receipt is caught by the proofs it
can no longer produce. A receipt that could not be logged (storage failure, crash) is logged at
the next start by :meth:`PlatformLedger.reconcile`, so nothing signed is lost.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from sealedml.crypto.signing import SigningKey
from sealedml.errors import ConfigError, LedgerError
from sealedml.ledger.log import TransparencyLog
from sealedml.ledger.sth import SignedTreeHead
from sealedml.platform.catalog import Catalog
from sealedml.secretfile import write_secret_file

__all__ = ["PlatformLedger", "load_or_create_log_key"]

log = logging.getLogger(__name__)


def load_or_create_log_key(path: Path) -> SigningKey:
    """Return the log's Ed25519 key from ``path`` (PKCS#8 PEM), creating it (mode 0600) on first use.

    Raises ``config.invalid`` if the file exists but is not an Ed25519 private key.
    """
    path = Path(path)
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError("config.invalid", f"{path} is not a PEM private key: {exc}") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ConfigError("config.invalid", f"{path} holds a {type(key).__name__}, not an Ed25519 key")
        return SigningKey(key)
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_secret_file(path, pem)
    return SigningKey(private)


class PlatformLedger:
    """The transparency log plus its optional chain anchor, as the platform uses them."""

    def __init__(self, transparency_log: TransparencyLog, *, anchor: str = "none") -> None:
        if anchor not in ("none", "embedded") and not anchor.startswith(("http://", "https://")):
            raise ConfigError("config.invalid", "anchor must be 'none', 'embedded' or a JSON-RPC URL")
        self.log = transparency_log
        self.anchor_mode = anchor
        self._chain: Any = None
        self._chain_lock = threading.Lock()
        self._anchors: list[dict[str, Any]] = []
        self._anchored_size = -1

    @classmethod
    def open(cls, database: str, key_path: Path, *, anchor: str = "none") -> PlatformLedger:
        """Open the log stored at ``database`` with the key at ``key_path`` (created if missing)."""
        return cls(TransparencyLog.open(database, load_or_create_log_key(key_path)), anchor=anchor)

    @property
    def public_key(self) -> bytes:
        """The log's Ed25519 public key (clients pin it)."""
        return self.log.public_key

    def log_receipt(self, receipt: Mapping[str, Any], signature: str) -> dict[str, Any]:
        """Append a receipt (idempotent per job) and return ``{"leaf_index", "sth", "inclusion"}``.

        Guarantees: the returned inclusion proof is against the returned signed tree head, which
        covers the receipt; logging the same job again returns its existing index with fresh proofs.
        """
        job = str(receipt.get("job", ""))
        try:
            index, sth = self.log.append_receipt(receipt, signature)
        except LedgerError as exc:
            if exc.code != "ledger.duplicate_entry":
                raise
            sth = self.log.sth()
            proof = self.log.inclusion_by_id(job, sth.tree_size)
            return {"leaf_index": proof["leaf_index"], "sth": sth.to_dict(), "inclusion": proof}
        return {
            "leaf_index": index,
            "sth": sth.to_dict(),
            "inclusion": self.log.inclusion(index, sth.tree_size),
        }

    def reconcile(self, catalog: Catalog) -> int:
        """Log every finished job whose receipt is missing from the log (oldest first).

        Costs a few queries whatever the size (ids are compared in chunks); only the missing
        receipts are read. Returns how many were added.
        """
        job_ids = catalog.done_job_ids()
        logged = self.log.store.existing_ids(job_ids)
        missing = [job_id for job_id in job_ids if job_id not in logged]
        for receipt, signature in catalog.receipts_of(missing):
            self.log.append_receipt(receipt, signature)
        if missing:
            log.warning("logged %d receipts that were missing from the transparency log", len(missing))
        return len(missing)

    def sth(self) -> SignedTreeHead:
        """A freshly signed head of the whole log."""
        return self.log.sth()

    # -- chain anchoring ----------------------------------------------------------------------
    def _chain_anchor(self) -> Any:
        from sealedml.ledger.anchor import ChainAnchor

        with self._chain_lock:
            if self._chain is None:
                if self.anchor_mode == "embedded":
                    self._chain = ChainAnchor.embedded()
                else:
                    key = os.environ.get("SEALEDML_ANCHOR_KEY")
                    if not key:
                        raise ConfigError(
                            "config.invalid",
                            "anchoring to a JSON-RPC URL needs SEALEDML_ANCHOR_KEY (hex private key)",
                        )
                    self._chain = ChainAnchor.connect(self.anchor_mode, key)
            return self._chain

    @property
    def chain(self) -> Any:
        """The :class:`~sealedml.ledger.anchor.ChainAnchor` in use (started on first use), or None."""
        return None if self.anchor_mode == "none" else self._chain_anchor()

    def anchor_now(self) -> dict[str, Any] | None:
        """Anchor the current signed tree head on the chain unless the log is empty or this size is
        anchored already.

        Returns ``{"sth", "anchor"}`` for a new anchor, or None (nothing new, or anchoring is off).
        """
        if self.anchor_mode == "none":
            return None
        sth = self.log.sth()
        if sth.tree_size in (0, self._anchored_size):
            return None
        chain = self._chain_anchor()
        anchor = chain.anchor(sth.log_id, sth.tree_size, sth.root_hash, sth.timestamp_ms)
        record = {"sth": sth.to_dict(), "anchor": anchor.to_dict()}
        self._anchors.append(record)
        self._anchored_size = sth.tree_size
        log.info(
            "anchored tree head %d (%s…) in tx %s", sth.tree_size, sth.root_hash.hex()[:12], anchor.tx_hash
        )
        return record

    def anchors(self) -> list[dict[str, Any]]:
        """Every anchor this platform made of this log, read back from the chain (oldest first)."""
        if self.anchor_mode == "none":
            return []
        chain = self._chain_anchor()
        return [anchor.to_dict() for anchor in chain.anchors_for(self.log.log_id)]
