"""Encrypted-ML mode: homomorphic inference and training on CKKS ciphertexts (TenSEAL).

The client holds the only secret key (:class:`HEKeys`, kept per preset by :class:`HEKeyring`); the
server loads the public context (:func:`load_public_context`) and evaluates published models
(:class:`HEModel`) on column- or row-packed ciphertexts (:func:`evaluate_batch`;
:func:`choose_layout` picks the cheaper layout). See ``docs/he.md`` for what this mode guarantees.
"""

from sealedml.he.context import PublicContext, load_public_context
from sealedml.he.evaluate import evaluate_batch
from sealedml.he.keys import HEKeyring, HEKeys
from sealedml.he.models import HEModel, PolyMLPClassifier, he_model_from_sklearn
from sealedml.he.packing import choose_layout
from sealedml.he.params import PRESETS, HEParams, check_params
from sealedml.he.wire import HEMessage, decode_message, encode_message

__all__ = [
    "PRESETS",
    "HEKeyring",
    "HEKeys",
    "HEMessage",
    "HEModel",
    "HEParams",
    "PolyMLPClassifier",
    "PublicContext",
    "check_params",
    "choose_layout",
    "decode_message",
    "encode_message",
    "evaluate_batch",
    "he_model_from_sklearn",
    "load_public_context",
]
