"""The transparency log of execution receipts: an RFC 9162 Merkle log with signed tree heads.

* :mod:`~sealedml.ledger.merkle`: the RFC 9162 hashing, proof generation and verification;
* :mod:`~sealedml.ledger.sth`: signed tree heads (Ed25519, domain-separated);
* :mod:`~sealedml.ledger.store`: the persistent log (SQLAlchemy: SQLite by default, PostgreSQL by URL);
* :mod:`~sealedml.ledger.log`: the host's :class:`TransparencyLog` and the client's checks.

Anchoring tree heads on a chain lives in :mod:`sealedml.ledger.anchor` (optional web3 dependency),
which this package does not import.
"""

from sealedml.ledger.log import (
    ConsistencyProof,
    InclusionProof,
    TransparencyLog,
    check_consistency,
    check_inclusion,
    check_sth,
    receipt_entry,
)
from sealedml.ledger.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    leaf_hash,
    node_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from sealedml.ledger.sth import SignedTreeHead, TreeHead, log_id_of, sign_tree_head
from sealedml.ledger.store import AppendResult, LedgerStore, LogEntry

__all__ = [
    "EMPTY_ROOT",
    "AppendResult",
    "ConsistencyProof",
    "InclusionProof",
    "LedgerStore",
    "LogEntry",
    "MemoryTree",
    "SignedTreeHead",
    "TransparencyLog",
    "TreeHead",
    "check_consistency",
    "check_inclusion",
    "check_sth",
    "leaf_hash",
    "log_id_of",
    "node_hash",
    "receipt_entry",
    "root_hash",
    "sign_tree_head",
    "verify_consistency",
    "verify_inclusion",
]
