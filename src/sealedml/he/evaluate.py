"""Server-side evaluation of an :class:`HEModel` on an ``he-batch``; no secret key involved.

Two layouts (:mod:`sealedml.he.packing`):

* ``columns``: for each group of up to ``slots`` rows the client sends one ciphertext per feature
  column. Every score column is a sum of ciphertext x plaintext products, so one ciphertext carries
  one score for every row of the group. The LAST layer's plaintext weights and biases are encoded
  as vectors exactly as long as the group's declared rows, i.e. zero in every other slot: whatever
  a client packs beyond the rows it declares (and pays for) comes back as ~0, at no extra level.
* ``rows``: one ciphertext holds every feature of up to ``capacity`` rows (feature-major inside the
  ciphertext). Each first-layer unit is one plaintext multiply and ``log2(block)`` rotations
  (TenSEAL's ``conv2d_im2col``; Galois keys required). A 1-layer model then multiplies by a 0/1
  mask of exactly the declared rows (one more level); a 2-layer model's last layer uses weight
  vectors that are zero beyond the declared rows, as above. Either way every slot the client can
  decrypt other than its declared rows' scores is ~0: the partial sums the rotations leave in the
  other slots (which would reveal weights) never leave the server unmasked.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from sealedml.errors import HEError, InputError
from sealedml.he.context import PublicContext, load_vector
from sealedml.he.models import HEModel
from sealedml.he.packing import RowsGroup, rows_block, rows_capacity, rows_groups
from sealedml.he.wire import HEMessage, decode_message, encode_message

__all__ = [
    "check_batch",
    "check_vectors",
    "evaluate_batch",
    "evaluate_rows_vector",
    "evaluate_vectors",
    "vector_sizes",
]


def check_batch(
    model: HEModel, context: PublicContext, message: bytes, *, max_bytes: int, max_rows: int
) -> HEMessage:
    """Decode an ``he-batch`` and check it fits ``model`` and ``context`` before any computation.

    Guarantees on return: the message names ``context``, declares 1..``max_rows`` rows, lists
    exactly ``model.input_columns``, holds exactly the ciphertexts its layout needs (columns:
    ``groups x features``; rows: one per ``capacity`` rows, with the ``capacity`` and ``groups`` the
    server computes), and the context has the depth and keys the model needs in that layout
    (Galois keys for ``rows``). Errors: the wire errors, ``he.context_mismatch``,
    ``input.too_large``, ``input.schema_mismatch``, ``he.shape_mismatch``, ``he.depth_exceeded``,
    ``he.context_invalid`` (missing relinearization or Galois keys).
    """
    features = len(model.input_columns)
    slots = context.params.slots
    limit = max(1, math.ceil(max_rows / slots)) * features
    if rows_block(features) <= slots:
        limit = max(limit, math.ceil(max_rows / rows_capacity(features, slots)))
    decoded = decode_message(message, expected_kind="he-batch", max_bytes=max_bytes, max_ciphertexts=limit)
    if decoded.context != context.fingerprint:
        raise HEError(
            "he.context_mismatch",
            f"the batch was encrypted under context {decoded.context[:16]}…, not {context.fingerprint[:16]}…",
        )
    rows = decoded.rows
    if rows > max_rows:
        raise InputError("input.too_large", f"{rows} rows in one batch (max {max_rows})")
    columns = decoded.str_list("columns", max_items=features + 1)
    if columns != model.input_columns:
        raise InputError(
            "input.schema_mismatch",
            f"the batch has columns {list(columns)[:8]}…, the model takes {list(model.input_columns)[:8]}…",
        )
    layout = decoded.layout
    if layout == "rows":
        _check_rows_shape(decoded, context, features)
    else:
        groups = math.ceil(rows / slots)
        if decoded.header.get("groups", groups) != groups or len(decoded.ciphertexts) != groups * features:
            raise HEError(
                "he.shape_mismatch",
                f"{len(decoded.ciphertexts)} ciphertexts for {rows} rows x {features} features "
                f"(expected {groups} group(s) of {features} at {slots} slots per ciphertext)",
            )
    depth = model.depth_for(layout)
    if context.params.depth < depth:
        raise HEError(
            "he.depth_exceeded",
            f"the model needs {depth} multiplicative levels in the {layout} layout, the context has "
            f"{context.params.depth} (generate keys with preset {model.preset!r})",
        )
    if model.needs_relin_keys and not context.has_relin_keys:
        raise HEError("he.context_invalid", "the model multiplies ciphertexts: upload relinearization keys")
    return decoded


def _check_rows_shape(decoded: HEMessage, context: PublicContext, features: int) -> None:
    if not context.has_galois_keys:
        raise HEError(
            "he.context_invalid",
            "the rows layout rotates ciphertexts but this context has no Galois keys: upload a context "
            "generated with Galois keys (HEKeys.generate(preset, galois=True)) or send the columns layout",
        )
    slots, rows = context.params.slots, decoded.rows
    capacity = rows_capacity(features, slots)
    groups = math.ceil(rows / capacity)
    if decoded.header.get("capacity") != capacity or decoded.header.get("groups") != groups:
        raise HEError(
            "he.shape_mismatch",
            f"a rows-layout batch of {features} features holds {capacity} rows per ciphertext in "
            f"{groups} ciphertext(s) for {rows} rows; the header says capacity "
            f"{decoded.header.get('capacity')!r}, groups {decoded.header.get('groups')!r}",
        )
    if len(decoded.ciphertexts) != groups:
        raise HEError(
            "he.shape_mismatch",
            f"{len(decoded.ciphertexts)} ciphertexts for {rows} rows in the rows layout (expected {groups}, "
            f"{capacity} rows per ciphertext)",
        )


def vector_sizes(model: HEModel, context: PublicContext, decoded: HEMessage) -> list[int]:
    """Return the declared number of values each ciphertext of a checked batch must hold."""
    features, slots, rows = len(model.input_columns), context.params.slots, decoded.rows
    if decoded.layout == "rows":
        return [group.size for group in rows_groups(rows, features, slots)]
    return [min(slots, rows - (index // features) * slots) for index in range(len(decoded.ciphertexts))]


def check_vectors(model: HEModel, context: PublicContext, decoded: HEMessage) -> None:
    """Load every ciphertext of a batch checked by :func:`check_batch` without evaluating anything.

    Guarantees on return: each ciphertext is a fresh single-chunk vector under ``context`` at its
    scale, holding exactly the number of values its layout prescribes (so a vector longer than one
    row's slots in a 1-row rows batch is refused). Errors: ``he.ciphertext_invalid``,
    ``he.shape_mismatch``.
    """
    for index, (ciphertext, size) in enumerate(
        zip(decoded.ciphertexts, vector_sizes(model, context, decoded), strict=True)
    ):
        load_vector(context, ciphertext, size=size, index=index)


def evaluate_batch(
    model: HEModel, context: PublicContext, message: bytes, *, max_bytes: int, max_rows: int
) -> tuple[bytes, int]:
    """Evaluate ``model`` on an encrypted batch; return the ``he-scores`` message and the rows evaluated.

    Guarantees: only ciphertext x plaintext and ciphertext x ciphertext operations with the public
    context; each output ciphertext decrypts (with the client's key) to ``model.clear_scores`` of
    the group's rows within CKKS precision, and to ~0 in every slot beyond the declared rows.
    Errors: as :func:`check_batch`, plus ``he.ciphertext_invalid``/``he.shape_mismatch`` for a bad
    ciphertext and ``he.depth_exceeded`` if the ciphertexts run out of levels.
    """
    decoded = check_batch(model, context, message, max_bytes=max_bytes, max_rows=max_rows)
    features, slots, rows = len(model.input_columns), context.params.slots, decoded.rows
    out: list[bytes] = []
    header: dict[str, Any] = {"context": context.fingerprint, "rows": rows, "outputs": model.outputs}
    if decoded.layout == "rows":
        groups = rows_groups(rows, features, slots)
        for index, group in enumerate(groups):
            vector = load_vector(context, decoded.ciphertexts[index], size=group.size, index=index)
            out.extend(v.serialize() for v in evaluate_rows_vector(model, vector, group))
        header.update(layout="rows", groups=len(groups), capacity=rows_capacity(features, slots))
    else:
        count_groups = math.ceil(rows / slots)
        for g in range(count_groups):
            count = min(slots, rows - g * slots)
            base = g * features
            vectors = [
                load_vector(context, decoded.ciphertexts[base + j], size=count, index=base + j)
                for j in range(features)
            ]
            out.extend(v.serialize() for v in evaluate_vectors(model, vectors, count))
        header.update(groups=count_groups)
    if isinstance(decoded.header.get("model"), str):
        header["model"] = decoded.header["model"]
    return encode_message("he-scores", header, out), rows


@contextmanager
def _evaluation_errors() -> Iterator[None]:
    try:
        yield
    except (ValueError, RuntimeError, TypeError) as exc:
        text = str(exc)
        if "scale out of bounds" in text or "end of modulus switching chain" in text:
            raise HEError(
                "he.depth_exceeded", "the ciphertexts ran out of multiplicative levels for this model"
            ) from exc
        raise HEError("he.ciphertext_invalid", "the ciphertexts could not be evaluated") from exc


def evaluate_rows_vector(model: HEModel, vector: Any, group: RowsGroup) -> list[Any]:
    """Compute the model's score vectors for one rows-layout ciphertext (``group``).

    Guarantees: one vector per output, of ``group.width`` values, whose first ``group.rows`` slots
    are the rows' scores and whose every other slot (within the width and beyond it) is ~0.
    """
    rows, width, block = group.rows, group.width, group.block
    features = len(model.input_columns)

    def unit(weights: np.ndarray) -> Any:
        kernel = np.zeros((block, 1))
        kernel[:features, 0] = weights
        return vector.conv2d_im2col(kernel.tolist(), width)

    def padded(value: float) -> list[float]:
        return [value] * rows + [0.0] * (width - rows)

    with _evaluation_errors():
        if len(model.layers) == 1:
            layer = model.layers[0]
            mask = padded(1.0)
            return [
                unit(layer.weights[k]) * mask + padded(float(layer.bias[k]))
                for k in range(layer.weights.shape[0])
            ]
        first = model.layers[0]
        hidden = [
            unit(first.weights[i]) + [float(first.bias[i])] * width for i in range(first.weights.shape[0])
        ]
        return _second_layer(model, hidden, rows, width)


def evaluate_vectors(model: HEModel, vectors: list[Any], rows: int) -> list[Any]:
    """Compute the model's score vectors from one group's feature vectors (each of ``rows`` values).

    Inner layers use scalar weights (cheap; values in undeclared slots are still garbage there);
    the last layer multiplies by weight vectors of exactly ``rows`` values (zero elsewhere), which
    masks every undeclared slot.
    """
    with _evaluation_errors():
        if len(model.layers) == 1:
            return _last_layer(model.layers[0].weights, model.layers[0].bias, [(vectors, 1.0)], rows, rows)
        first = model.layers[0]
        hidden = []
        for i in range(first.weights.shape[0]):
            acc = None
            for j, x in enumerate(vectors):
                term = x * float(first.weights[i, j])
                acc = term if acc is None else acc + term
            hidden.append(acc + float(first.bias[i]))
        return _second_layer(model, hidden, rows, rows)


def _second_layer(model: HEModel, hidden: list[Any], rows: int, size: int) -> list[Any]:
    last = model.layers[1]
    c0, c1, c2 = model.activation or (0.0, 0.0, 0.0)
    terms: list[tuple[list[Any], float]] = []
    if c1 != 0.0:
        terms.append((hidden, c1))
    if c2 != 0.0:
        terms.append(([h.square() for h in hidden], c2))
    bias = last.bias + c0 * last.weights.sum(axis=1)
    return _last_layer(last.weights, bias, terms, rows, size)


def _last_layer(
    weights: Any, bias: Any, terms: list[tuple[list[Any], float]], rows: int, size: int
) -> list[Any]:
    """Sum of weight-vector products: each weight is a vector of ``size`` values, zero beyond ``rows``."""
    pad = [0.0] * (size - rows)
    scores = []
    for k in range(weights.shape[0]):
        acc = None
        for inputs, factor in terms:
            for j, x in enumerate(inputs):
                term = x * ([float(weights[k, j]) * factor] * rows + pad)
                acc = term if acc is None else acc + term
        if acc is None:
            raise HEError("he.model_invalid", "the model's last layer has no inputs")
        scores.append(acc + ([float(bias[k])] * rows + pad))
    return scores
