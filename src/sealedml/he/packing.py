"""How rows of a table are laid out in CKKS slots, and which layout is cheaper for a batch.

Two layouts (the ``layout`` field of every ``he-batch``/``he-scores`` header):

``columns``
    One ciphertext per feature per group of up to ``slots`` rows (slot t of ciphertext j = feature
    j of row t). Evaluation is ciphertext x plaintext only (no Galois keys); a batch costs
    ``features`` ciphertexts whether it holds 1 row or ``slots`` rows.

``rows``
    Every feature of up to ``capacity = slots // block`` rows in ONE ciphertext, where ``block`` is
    the feature count rounded up to a power of two. A group of ``r`` rows occupies a vector of
    ``block * width`` values with ``width = next_pow2(r)``: slot ``j * width + t`` holds feature
    ``j`` of row ``t`` (zero for ``j >= features`` and ``t >= r``). The server multiplies by the
    weights and sums the ``block`` strides with ``log2(block)`` rotations (Galois keys needed), then
    multiplies by a 0/1 mask that keeps exactly the ``r`` declared slots. A single row is one
    ciphertext instead of ``features``.

:func:`choose_layout` picks the cheaper one from a cost model whose constants were measured with
``benchmarks/he_inference.py`` (see the constants below and docs/he.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sealedml.errors import HEError
from sealedml.he.wire import LAYOUTS as WIRE_LAYOUTS

__all__ = [
    "LAYOUTS",
    "ROWS_AUTO_PRESETS",
    "RowsGroup",
    "choose_layout",
    "columns_cost",
    "next_pow2",
    "rows_block",
    "rows_capacity",
    "rows_cost",
    "rows_groups",
]

LAYOUTS = WIRE_LAYOUTS

# -- cost model -------------------------------------------------------------------------------------
# Unit: encrypting and serializing one fresh ciphertext of the preset (~6 ms at N=8192 on the
# shared 2-core benchmark machine). Measured with benchmarks/he_inference.py (breast cancer, 30
# features, logistic regression, preset ``linear``, best of 3, docs/he.md):
#   columns, 1-4096 rows: 30 ciphertexts, encrypt 178-238 ms, evaluate 59-97 ms (2-3 ms per
#            feature ciphertext and output), total 240-315 ms per batch
#   rows, 1-128 rows: 1 ciphertext, encrypt 5.4-7.5 ms, evaluate 11.8-16.6 ms for one output (one
#            plaintext multiply, 5 rotations, mask, bias, (de)serialization), total 17.6-24.8 ms;
#            4096 rows = 32 ciphertexts, total 586 ms
# so a rows ciphertext with one output costs ~2.95 units and a columns batch 30 x 1.4 = 42 units:
# the rows layout wins up to 14 ciphertexts = 1,792 rows of 30 features, columns from there on.
#: Server cost of one (feature ciphertext, output) product-and-add in the columns layout, in units.
COLUMN_OUTPUT_COST = 0.4
#: Server cost of one rotation (key switch) in the rows layout, in units.
ROTATION_COST = 0.25
#: Server cost of the plaintext multiply, mask, bias and serialization of one output in the rows
#: layout, in units.
ROWS_OUTPUT_COST = 0.7
#: Presets whose Galois keys fit the platform's default 64 MiB request limit, so ``auto`` may pick
#: ``rows``: the ``linear`` public context with Galois keys is 33.7 MiB; ``mlp`` (N=16384) is
#: 116.6 MiB, over the limit, so ``rows`` is only used for it when asked for explicitly.
ROWS_AUTO_PRESETS = frozenset({"linear"})


def next_pow2(value: int) -> int:
    """Return the smallest power of two >= ``value`` (``value`` >= 1)."""
    return 1 << max(int(value) - 1, 0).bit_length()


def rows_block(features: int) -> int:
    """Slots one row's features take in the rows layout: ``features`` rounded up to a power of two."""
    return next_pow2(features)


def rows_capacity(features: int, slots: int) -> int:
    """Rows one ciphertext holds in the rows layout (``he.shape_mismatch`` if a row does not fit)."""
    block = rows_block(features)
    if block > slots:
        raise HEError(
            "he.shape_mismatch",
            f"{features} features need {block} slots per row; a ciphertext has {slots}: "
            "use the columns layout",
        )
    return slots // block


@dataclass(frozen=True)
class RowsGroup:
    """One ciphertext of a rows-layout batch: rows ``start`` .. ``start + rows - 1`` in
    ``block * width`` slots (``width`` = rows rounded up to a power of two)."""

    start: int
    rows: int
    width: int
    block: int

    @property
    def size(self) -> int:
        """Declared number of values of the ciphertext."""
        return self.block * self.width


def rows_groups(rows: int, features: int, slots: int) -> list[RowsGroup]:
    """Split ``rows`` rows into rows-layout ciphertexts, in order (the last one may hold fewer rows)."""
    block, capacity = rows_block(features), rows_capacity(features, slots)
    groups = []
    for start in range(0, rows, capacity):
        count = min(capacity, rows - start)
        groups.append(RowsGroup(start=start, rows=count, width=next_pow2(count), block=block))
    return groups


def columns_cost(rows: int, features: int, outputs: int, slots: int) -> float:
    """Estimated cost (units above) of a columns-layout batch: encryption plus evaluation."""
    groups = math.ceil(rows / slots)
    return groups * features * (1.0 + outputs * COLUMN_OUTPUT_COST)


def rows_cost(rows: int, features: int, outputs: int, slots: int) -> float:
    """Estimated cost (units above) of a rows-layout batch: encryption plus evaluation."""
    groups = math.ceil(rows / rows_capacity(features, slots))
    rotations = int(math.log2(rows_block(features)))
    return groups * (1.0 + outputs * (ROWS_OUTPUT_COST + rotations * ROTATION_COST))


def choose_layout(
    rows: int, features: int, outputs: int, slots: int, *, preset: str, two_layers: bool = False
) -> str:
    """Return the cheaper layout for a batch, ``"rows"`` or ``"columns"``.

    Guarantees: ``"columns"`` whenever the rows layout is not available automatically (a preset
    outside :data:`ROWS_AUTO_PRESETS`, a 2-layer model, or a row wider than a ciphertext); otherwise
    the layout with the lower :func:`rows_cost`/:func:`columns_cost` (ties go to ``columns``, which
    needs no Galois keys). For 30 features and one output that is ``rows`` up to 1,792 rows.
    """
    if rows <= 0 or preset not in ROWS_AUTO_PRESETS or two_layers or rows_block(features) > slots:
        return "columns"
    if rows_cost(rows, features, outputs, slots) < columns_cost(rows, features, outputs, slots):
        return "rows"
    return "columns"
