"""The server's view of a client's CKKS context: public and evaluation keys only, never a secret key.

:func:`load_public_context` is the one door through which an uploaded context enters the server.
It refuses anything that is not a TenSEAL CKKS context within our accepted parameters, and refuses
(without keeping or logging it) a context that carries its secret key.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import tenseal as ts
import tenseal.sealapi

from sealedml.errors import HEError, InputError
from sealedml.he.params import HEParams, check_params

__all__ = [
    "DEFAULT_MAX_CONTEXT_BYTES",
    "PublicContext",
    "context_params",
    "load_public_context",
    "load_vector",
]

DEFAULT_MAX_CONTEXT_BYTES = 64 * 2**20


@dataclass(frozen=True)
class PublicContext:
    """A loaded public CKKS context: its fingerprint, parameters, size and which evaluation keys it has.

    ``tenseal`` is the live TenSEAL context the evaluator computes with; it holds no secret key.
    """

    fingerprint: str
    params: HEParams
    size: int
    has_relin_keys: bool
    has_galois_keys: bool
    tenseal: Any = field(repr=False, compare=False)

    def describe(self) -> dict[str, Any]:
        """Return the JSON answer of a context upload: fingerprint, parameters, size, keys present."""
        return {
            "context": self.fingerprint,
            "params": self.params.to_dict(),
            "size": self.size,
            "relin_keys": self.has_relin_keys,
            "galois_keys": self.has_galois_keys,
        }


def context_params(context: Any) -> HEParams:
    """Read the CKKS parameters of a TenSEAL context; ``he.params_unsupported`` if not CKKS or unscaled."""
    try:
        seal = context.seal_context().data
        parms = seal.key_context_data().parms()
        scheme = parms.scheme()
        degree = int(parms.poly_modulus_degree())
        chain = tuple(int(m.bit_count()) for m in parms.coeff_modulus())
    except (RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise HEError("he.context_invalid", "the context's encryption parameters cannot be read") from exc
    if scheme.name != "CKKS":
        raise HEError("he.params_unsupported", f"the context uses scheme {scheme.name}, not CKKS")
    try:
        scale = float(context.global_scale)
    except ValueError as exc:
        raise HEError("he.params_unsupported", "the context has no global scale set") from exc
    scale_bits = round(_log2(scale))
    if scale <= 0 or float(2**scale_bits) != scale:
        raise HEError("he.params_unsupported", "the context's global scale is not a power of two")
    return HEParams(degree, chain, scale_bits)


def _log2(value: float) -> float:
    return math.log2(value) if value > 0 and math.isfinite(value) else 0.0


def load_public_context(data: bytes, *, max_bytes: int = DEFAULT_MAX_CONTEXT_BYTES) -> PublicContext:
    """Load an uploaded public context, refusing anything the server must not hold or cannot use.

    Guarantees on return: ``data`` is at most ``max_bytes``, is a TenSEAL CKKS context without a
    secret key, its parameters pass :func:`check_params`, its automatic relinearization, rescaling
    and modulus switching are on, and ``fingerprint`` is the SHA-256 of ``data``.
    Raises ``input.too_large``, ``he.context_invalid``, ``he.context_has_secret_key`` or
    ``he.params_unsupported``. A context carrying a secret key is dropped at once, never stored.
    """
    if len(data) > max_bytes:
        raise InputError("input.too_large", f"context is {len(data)} bytes (max {max_bytes})")
    if not data:
        raise HEError("he.context_invalid", "the context is empty")
    try:
        context = ts.context_from(bytes(data), n_threads=1)
    except (ValueError, RuntimeError, TypeError, MemoryError) as exc:
        if "parameters are not set correctly" in str(exc):
            raise HEError(
                "he.params_unsupported",
                "the context's parameters are not valid or not 128-bit secure (SEAL refused them)",
            ) from exc
        raise HEError("he.context_invalid", "not a serialized TenSEAL context") from exc
    if context.is_private() or context.has_secret_key():
        del context
        raise HEError(
            "he.context_has_secret_key",
            "the context carries its secret key; upload the public context only (it was not stored)",
        )
    params = context_params(context)
    check_params(params)
    context.auto_relin = True
    context.auto_rescale = True
    context.auto_mod_switch = True
    return PublicContext(
        fingerprint=hashlib.sha256(data).hexdigest(),
        params=params,
        size=len(data),
        has_relin_keys=bool(context.has_relin_keys()),
        has_galois_keys=bool(context.has_galois_keys()),
        tenseal=context,
    )


def load_vector(context: PublicContext, data: bytes, *, size: int, index: int) -> Any:
    """Deserialize one fresh CKKS vector of exactly ``size`` values under ``context``.

    Guarantees on return: a single-chunk TenSEAL CKKSVector of ``size`` values, at the context's
    top level, of size 2 (fresh, relinearized) and at the context's scale. Raises
    ``he.ciphertext_invalid`` (unparseable, another parameter set, altered, wrong level or scale) or
    ``he.shape_mismatch`` (declared vector size differs from ``size``).
    """
    try:
        vector = ts.ckks_vector_from(context.tenseal, data)
        chunks = vector.ciphertext()
        actual = int(vector.size())
    except (ValueError, RuntimeError, TypeError, MemoryError) as exc:
        raise HEError(
            "he.ciphertext_invalid",
            f"ciphertext {index} is not a CKKS vector valid under context {context.fingerprint[:16]} "
            "(unparseable, made under other parameters, or altered)",
        ) from exc
    if len(chunks) != 1:
        raise HEError("he.shape_mismatch", f"ciphertext {index} spans {len(chunks)} chunks (max 1)")
    if actual != size:
        raise HEError("he.shape_mismatch", f"ciphertext {index} holds {actual} values, expected {size}")
    seal = context.tenseal.seal_context().data
    chunk = chunks[0]
    if chunk.parms_id() != seal.first_parms_id() or chunk.size() != 2:
        raise HEError(
            "he.ciphertext_invalid", f"ciphertext {index} is not a fresh ciphertext of this context"
        )
    if float(chunk.scale) != context.params.scale:
        raise HEError("he.ciphertext_invalid", f"ciphertext {index} is not at the context's scale")
    return vector
