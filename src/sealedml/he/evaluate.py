"""Server-side evaluation of an :class:`HEModel` on a column-packed ``he-batch``; no secret key involved.

For each group of up to ``slots`` rows the client sends one ciphertext per feature column. The
server computes every score column as a sum of ciphertext x plaintext products, so one ciphertext
carries one score for every row of the group. The LAST layer's plaintext weights and biases are
encoded as vectors exactly as long as the group's declared rows, i.e. zero in every other slot:
whatever a client packs beyond the rows it declares (and pays for) comes back as ~0. This masking
costs no extra multiplicative level.
"""

from __future__ import annotations

import math
from typing import Any

from sealedml.errors import HEError, InputError
from sealedml.he.context import PublicContext, load_vector
from sealedml.he.models import HEModel
from sealedml.he.wire import HEMessage, decode_message, encode_message

__all__ = ["check_batch", "evaluate_batch", "evaluate_vectors"]


def check_batch(
    model: HEModel, context: PublicContext, message: bytes, *, max_bytes: int, max_rows: int
) -> HEMessage:
    """Decode an ``he-batch`` and check it fits ``model`` and ``context`` before any computation.

    Guarantees on return: the message names ``context``, declares 1..``max_rows`` rows, lists
    exactly ``model.input_columns``, holds ``groups x features`` ciphertexts, and the context has
    the depth and keys the model needs. Errors: the wire errors, ``he.context_mismatch``,
    ``input.too_large``, ``input.schema_mismatch``, ``he.shape_mismatch``, ``he.depth_exceeded``.
    """
    features = len(model.input_columns)
    slots = context.params.slots
    limit = max(1, math.ceil(max_rows / slots)) * features
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
    groups = math.ceil(rows / slots)
    if decoded.header.get("groups", groups) != groups or len(decoded.ciphertexts) != groups * features:
        raise HEError(
            "he.shape_mismatch",
            f"{len(decoded.ciphertexts)} ciphertexts for {rows} rows x {features} features "
            f"(expected {groups} group(s) of {features} at {slots} slots per ciphertext)",
        )
    if context.params.depth < model.depth:
        raise HEError(
            "he.depth_exceeded",
            f"the model needs {model.depth} multiplicative levels, the context has {context.params.depth} "
            f"(generate keys with preset {model.preset!r})",
        )
    if model.needs_relin_keys and not context.has_relin_keys:
        raise HEError("he.context_invalid", "the model multiplies ciphertexts: upload relinearization keys")
    return decoded


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
    groups = math.ceil(rows / slots)
    out: list[bytes] = []
    for g in range(groups):
        count = min(slots, rows - g * slots)
        vectors = [
            load_vector(context, decoded.ciphertexts[g * features + j], size=count, index=g * features + j)
            for j in range(features)
        ]
        out.extend(v.serialize() for v in evaluate_vectors(model, vectors, count))
    header: dict[str, Any] = {
        "context": context.fingerprint,
        "rows": rows,
        "outputs": model.outputs,
        "groups": groups,
    }
    if isinstance(decoded.header.get("model"), str):
        header["model"] = decoded.header["model"]
    return encode_message("he-scores", header, out), rows


def evaluate_vectors(model: HEModel, vectors: list[Any], rows: int) -> list[Any]:
    """Compute the model's score vectors from one group's feature vectors (each of ``rows`` values).

    Inner layers use scalar weights (cheap; values in undeclared slots are still garbage there);
    the last layer multiplies by weight vectors of exactly ``rows`` values (zero elsewhere), which
    masks every undeclared slot.
    """
    try:
        if len(model.layers) == 1:
            return _last_layer(model.layers[0].weights, model.layers[0].bias, [(vectors, 1.0)], rows)
        first, last = model.layers
        c0, c1, c2 = model.activation or (0.0, 0.0, 0.0)
        hidden = []
        for i in range(first.weights.shape[0]):
            acc = None
            for j, x in enumerate(vectors):
                term = x * float(first.weights[i, j])
                acc = term if acc is None else acc + term
            hidden.append(acc + float(first.bias[i]))
        terms: list[tuple[list[Any], float]] = []
        if c1 != 0.0:
            terms.append((hidden, c1))
        if c2 != 0.0:
            terms.append(([h.square() for h in hidden], c2))
        bias = last.bias + c0 * last.weights.sum(axis=1)
        return _last_layer(last.weights, bias, terms, rows)
    except (ValueError, RuntimeError) as exc:
        text = str(exc)
        if "scale out of bounds" in text or "end of modulus switching chain" in text:
            raise HEError(
                "he.depth_exceeded", "the ciphertexts ran out of multiplicative levels for this model"
            ) from exc
        raise HEError("he.ciphertext_invalid", "the ciphertexts could not be evaluated") from exc


def _last_layer(weights: Any, bias: Any, terms: list[tuple[list[Any], float]], rows: int) -> list[Any]:
    scores = []
    for k in range(weights.shape[0]):
        acc = None
        for inputs, factor in terms:
            for j, x in enumerate(inputs):
                term = x * ([float(weights[k, j]) * factor] * rows)
                acc = term if acc is None else acc + term
        if acc is None:
            raise HEError("he.model_invalid", "the model's last layer has no inputs")
        scores.append(acc + ([float(bias[k])] * rows))
    return scores
