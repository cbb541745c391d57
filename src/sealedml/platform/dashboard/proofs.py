"""The RFC 9162 §2.1.3.2 inclusion check written out step by step, for people to follow.

The dashboard shows each step of the check server-side (so the page explains itself without
JavaScript) and the browser repeats it independently (``static/proof.js``). The verdict the page
states comes from :func:`sealedml.ledger.log.check_inclusion`; :func:`walk_inclusion` must agree
with it and with :func:`sealedml.ledger.merkle.verify_inclusion` on every input (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sealedml.ledger.merkle import leaf_hash, node_hash

__all__ = ["ProofStep", "ProofWalk", "walk_inclusion"]


@dataclass(frozen=True)
class ProofStep:
    """One path element: where it goes (``left``: ``H(0x01 || p || r)``; ``right``: ``H(0x01 || r || p)``),
    the counters ``fn``/``sn`` before the step, and the running hash ``r`` after it."""

    number: int
    sibling: str
    side: str
    fn: int
    sn: int
    result: str


@dataclass(frozen=True)
class ProofWalk:
    """The whole check: the leaf hash, every step, the root it leads to and the verdict."""

    leaf_hash: str
    steps: tuple[ProofStep, ...]
    computed_root: str
    expected_root: str
    verified: bool
    problem: str | None


def walk_inclusion(entry: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> ProofWalk:
    """Run RFC 9162 §2.1.3.2 on ``entry`` (the leaf *input*) at ``index`` of a tree of ``size``
    leaves, recording every step.

    Guarantees: ``verified`` is True exactly when the RFC algorithm accepts (the same inputs make
    :func:`~sealedml.ledger.merkle.verify_inclusion` return); otherwise ``problem`` says why.
    """
    leaf = leaf_hash(entry)
    steps: list[ProofStep] = []
    if not 0 <= index < size:
        return ProofWalk(leaf.hex(), (), "", root.hex(), False, f"leaf {index} is not in a tree of {size}")
    fn, sn, r = index, size - 1, leaf  # steps 2 and 3
    for number, p in enumerate(path, start=1):  # step 4
        if sn == 0:  # 4a
            return ProofWalk(
                leaf.hex(), tuple(steps), r.hex(), root.hex(), False, "the path has more hashes than levels"
            )
        before_fn, before_sn = fn, sn
        if fn & 1 or fn == sn:  # 4b
            r, side = node_hash(p, r), "left"
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:  # 4b, otherwise
            r, side = node_hash(r, p), "right"
        fn >>= 1  # 4c
        sn >>= 1
        steps.append(ProofStep(number, p.hex(), side, before_fn, before_sn, r.hex()))
    if sn != 0:  # step 5
        return ProofWalk(leaf.hex(), tuple(steps), r.hex(), root.hex(), False, "the path is too short")
    if r != root:
        return ProofWalk(
            leaf.hex(), tuple(steps), r.hex(), root.hex(), False, "the computed root differs from the head"
        )
    return ProofWalk(leaf.hex(), tuple(steps), r.hex(), root.hex(), True, None)
