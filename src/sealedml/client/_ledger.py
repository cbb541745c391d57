"""The client's side of the transparency log: pin the log key, check that every receipt is logged,
and that the log only ever grows.

:class:`LedgerWatcher` keeps the pinned log public key and the largest signed tree head this client
has verified. Each new receipt must come with an inclusion proof against a signed head, and that
head must be consistent with the one seen before (RFC 9162 consistency proof), so a platform that
drops, edits or reorders a receipt, or shows this client a forked history, is caught. With a
``state_path`` the pin and the last head survive between runs (the CLI keeps them in its keys dir).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealedml.errors import LedgerError
from sealedml.ledger.log import check_consistency, check_inclusion, check_sth, receipt_entry
from sealedml.ledger.sth import SignedTreeHead

__all__ = ["LedgerProof", "LedgerWatcher"]


@dataclass(frozen=True)
class LedgerProof:
    """A receipt's place in the log: its leaf index under a verified signed tree head."""

    leaf_index: int
    sth: SignedTreeHead
    inclusion: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored in receipt files, so the proof can be checked again offline)."""
        return {"leaf_index": self.leaf_index, "sth": self.sth.to_dict(), "inclusion": dict(self.inclusion)}


class LedgerWatcher:
    """Verifies ledger proofs for one platform's log; not thread-safe (one per client)."""

    def __init__(
        self,
        call: Callable[..., Any],
        *,
        public_key: bytes | None = None,
        state_path: Path | None = None,
    ) -> None:
        self._call = call
        self._state_path = state_path
        self._public_key = public_key
        self._last: SignedTreeHead | None = None
        if state_path is not None and state_path.is_file():
            self._load_state(state_path)

    def _load_state(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            pinned = bytes.fromhex(data["public_key"])
            last = SignedTreeHead.from_dict(data["sth"]) if data.get("sth") else None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LedgerError("ledger.malformed", f"cannot read the ledger state {path}: {exc}") from None
        if self._public_key is not None and self._public_key != pinned:
            raise LedgerError(
                "ledger.sth_signature_invalid",
                f"{path} pins another log key than the one given: refusing to mix two logs",
            )
        self._public_key, self._last = pinned, last

    def _save_state(self) -> None:
        if self._state_path is None or self._public_key is None:
            return
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {"public_key": self._public_key.hex(), "sth": self._last.to_dict() if self._last else None},
                indent=2,
            ),
            encoding="utf-8",
        )
        os.replace(tmp, self._state_path)

    @property
    def public_key(self) -> bytes:
        """The pinned log key (trust on first use from the platform if none was given)."""
        if self._public_key is None:
            answer = self._call("GET", "/v1/ledger/public-key")
            try:
                self._public_key = bytes.fromhex(answer["public_key"])
            except (KeyError, TypeError, ValueError) as exc:
                raise LedgerError("ledger.malformed", "the platform sent no valid log public key") from exc
            self._save_state()
        return self._public_key

    @property
    def last(self) -> SignedTreeHead | None:
        """The largest tree head verified so far."""
        return self._last

    def observe(self, sth: SignedTreeHead | Mapping[str, Any]) -> SignedTreeHead:
        """Verify ``sth`` and that it is consistent with the last head seen; remember the larger.

        Raises ``ledger.sth_signature_invalid`` or ``ledger.consistency_invalid`` (a fork).
        """
        head = check_sth(sth, self.public_key)
        last = self._last
        if last is not None and (last.tree_size, last.root_hash) != (head.tree_size, head.root_hash):
            old, new = (last, head) if last.tree_size <= head.tree_size else (head, last)
            try:
                proof = self._call(
                    "GET", "/v1/ledger/consistency", params={"first": old.tree_size, "second": new.tree_size}
                )
            except LedgerError as exc:
                if exc.code != "ledger.index_out_of_range":
                    raise
                raise LedgerError(
                    "ledger.consistency_invalid",
                    f"the log signed a tree of {new.tree_size} entries before and now cannot prove it: "
                    f"it shrank (entries were dropped): {exc.message}",
                ) from None
            check_consistency(old, new, proof, self.public_key)
        if last is None or head.tree_size > last.tree_size:
            self._last = head
            self._save_state()
        return head

    def check_receipt(
        self, receipt: Mapping[str, Any], signature: str, ledger: Mapping[str, Any] | None
    ) -> LedgerProof:
        """Return the receipt's verified place in the log, from the proofs the platform sent with it.

        Raises ``ledger.inclusion_invalid`` if the platform did not log it or the proof fails, and
        the errors of :meth:`observe` if the head is forged or forked.
        """
        if not isinstance(ledger, Mapping) or "sth" not in ledger or "inclusion" not in ledger:
            raise LedgerError(
                "ledger.inclusion_invalid",
                f"the platform did not log the receipt of job {receipt.get('job')}: it cannot be audited",
            )
        head = self.observe(ledger["sth"])
        index = check_inclusion(receipt_entry(receipt, signature), ledger["inclusion"], head, self.public_key)
        return LedgerProof(index, head, dict(ledger["inclusion"]))

    def recheck(self, receipt: Mapping[str, Any], signature: str) -> LedgerProof:
        """Ask the log again, now: the receipt must still be included under the current head."""
        job = receipt.get("job")
        answer = self._call("GET", "/v1/ledger/inclusion", params={"job_id": job})
        return self.check_receipt(receipt, signature, answer)
