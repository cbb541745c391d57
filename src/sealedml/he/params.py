"""CKKS parameter sets SealedML accepts, and the 128-bit security check every context passes.

The security bound is the HomomorphicEncryption.org standard's table for 128-bit classical security
with a ternary secret (the default of Microsoft SEAL, which TenSEAL wraps): for a polynomial modulus
degree N, the total bit count of the coefficient modulus (including the special prime) must not
exceed ``MAX_MODULUS_BITS[N]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sealedml.errors import HEError

__all__ = [
    "MAX_MODULUS_BITS",
    "PRESETS",
    "SUPPORTED_DEGREES",
    "HEParams",
    "check_params",
    "params_from_dict",
    "preset",
]

#: 128-bit classical security, ternary secret (HomomorphicEncryption.org standard, Table 1).
MAX_MODULUS_BITS: dict[int, int] = {4096: 109, 8192: 218, 16384: 438, 32768: 881}
#: Degrees we accept: below 8192 a context holds too few slots and levels to be worth a round trip.
SUPPORTED_DEGREES: tuple[int, ...] = (8192, 16384, 32768)
_MIN_PRIME_BITS, _MAX_PRIME_BITS = 20, 60
_MIN_SCALE_BITS, _MAX_SCALE_BITS = 20, 50


@dataclass(frozen=True)
class HEParams:
    """A CKKS parameter set: ring degree, coefficient-modulus chain (bit sizes) and encoding scale."""

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    @property
    def slots(self) -> int:
        """Number of values one ciphertext packs (N/2)."""
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """Multiplicative levels available: one per middle prime (the first and special prime excluded)."""
        return max(len(self.coeff_mod_bit_sizes) - 2, 0)

    @property
    def total_bits(self) -> int:
        """Total bit count of the coefficient modulus, the quantity the security table bounds."""
        return sum(self.coeff_mod_bit_sizes)

    @property
    def scale(self) -> float:
        """The encoding scale 2**scale_bits."""
        return float(2**self.scale_bits)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form used in API answers and key files."""
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "scale_bits": self.scale_bits,
            "slots": self.slots,
            "depth": self.depth,
            "security_bits": 128,
        }


def params_from_dict(data: Any) -> HEParams:
    """Rebuild :class:`HEParams` from :meth:`HEParams.to_dict` output; ``he.params_unsupported`` if bad."""
    if not isinstance(data, dict):
        raise HEError("he.params_unsupported", "CKKS parameters must be a JSON object")
    degree, chain, scale = (
        data.get("poly_modulus_degree"),
        data.get("coeff_mod_bit_sizes"),
        data.get("scale_bits"),
    )
    if (
        not _is_int(degree)
        or not _is_int(scale)
        or not isinstance(chain, list)
        or not 0 < len(chain) <= 64
        or not all(_is_int(bits) for bits in chain)
    ):
        raise HEError("he.params_unsupported", "CKKS parameters are missing or not integers")
    params = HEParams(int(degree), tuple(int(bits) for bits in chain), int(scale))
    check_params(params)
    return params


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_params(params: HEParams) -> None:
    """Accept only parameter sets that are 128-bit secure and numerically sound for our evaluator.

    Guarantees on return: the degree is one of ``SUPPORTED_DEGREES``; the modulus totals at most
    the HomomorphicEncryption.org 128-bit bound for that degree; there is at least one level; every
    middle prime has exactly ``scale_bits`` bits (so rescaling keeps the scale stable); the first
    prime leaves at least 10 bits of integer precision; the special prime is the largest.
    Raises ``he.params_unsupported`` naming the violated rule otherwise.
    """
    degree, chain, scale = params.poly_modulus_degree, params.coeff_mod_bit_sizes, params.scale_bits
    if degree not in SUPPORTED_DEGREES:
        raise HEError(
            "he.params_unsupported",
            f"poly_modulus_degree {degree} is not supported (use one of {list(SUPPORTED_DEGREES)})",
        )
    bound = MAX_MODULUS_BITS[degree]
    if params.total_bits > bound:
        raise HEError(
            "he.params_unsupported",
            f"coefficient modulus of {params.total_bits} bits exceeds {bound} bits, the 128-bit security "
            f"bound for N={degree} (HomomorphicEncryption.org standard)",
        )
    if len(chain) < 3:
        raise HEError("he.params_unsupported", "the modulus chain needs at least 3 primes (one level)")
    if any(not _MIN_PRIME_BITS <= bits <= _MAX_PRIME_BITS for bits in chain):
        raise HEError(
            "he.params_unsupported", f"every prime must have {_MIN_PRIME_BITS}..{_MAX_PRIME_BITS} bits"
        )
    if not _MIN_SCALE_BITS <= scale <= _MAX_SCALE_BITS:
        raise HEError(
            "he.params_unsupported", f"scale_bits {scale} is outside {_MIN_SCALE_BITS}..{_MAX_SCALE_BITS}"
        )
    if any(bits != scale for bits in chain[1:-1]):
        raise HEError("he.params_unsupported", f"every middle prime must have scale_bits={scale} bits")
    if chain[0] < scale + 10:
        raise HEError(
            "he.params_unsupported", f"the first prime needs at least scale_bits + 10 = {scale + 10} bits"
        )
    if chain[-1] < max(chain[:-1]):
        raise HEError("he.params_unsupported", "the special (last) prime must be the largest")


#: Named parameter sets. ``linear`` evaluates linear/logistic models (depth 1 used, 2 available),
#: ``mlp`` a two-layer network with a quadratic activation (depth 3), ``train`` one step of
#: encrypted logistic-regression training with a degree-7 sigmoid (depth 5: 216 of 218 bits).
PRESETS: dict[str, HEParams] = {
    "linear": HEParams(8192, (60, 40, 40, 60), 40),
    "mlp": HEParams(16384, (60, 40, 40, 40, 60), 40),
    "train": HEParams(8192, (38, 28, 28, 28, 28, 28, 38), 28),
}


def preset(name: str) -> HEParams:
    """Return the preset ``name``; ``he.params_unsupported`` (listing the choices) if unknown."""
    try:
        return PRESETS[name]
    except KeyError:
        raise HEError(
            "he.params_unsupported", f"unknown HE preset {name!r} (choose one of {sorted(PRESETS)})"
        ) from None


for _name, _params in PRESETS.items():
    check_params(_params)
