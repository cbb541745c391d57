"""The client's CKKS keys: the only place in SealedML where an HE secret key exists.

A keys file holds the full (secret) TenSEAL context and the exact public-context bytes uploaded to
the server, so the fingerprint stays the same every time the file is loaded. Layout::

    magic b"SMLHEK" | version u8 = 1 | header length u32 BE | canonical JSON header
    | secret context (header["secret_size"] bytes) | public context (header["public_size"] bytes)
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts

from sealedml import safejson
from sealedml.crypto.envelope import canonical_json
from sealedml.errors import HEError, InputError
from sealedml.he.context import context_params
from sealedml.he.packing import next_pow2, rows_groups
from sealedml.he.params import HEParams, check_params, params_from_dict, preset
from sealedml.he.wire import LAYOUTS, decode_message, encode_message
from sealedml.secretfile import write_secret_file

__all__ = ["MAX_BATCH_ROWS", "MAX_KEYS_FILE", "HEKeyring", "HEKeys"]

_MAGIC = b"SMLHEK"
_FIXED = struct.Struct(">6sBI")
MAX_KEYS_FILE = 2 * 2**30
MAX_BATCH_ROWS = 1_000_000


class HEKeys:
    """A CKKS key set (secret, public, relinearization and optionally Galois keys) for one preset.

    Guarantees: :meth:`public_context` never contains the secret key; :attr:`fingerprint` is the
    SHA-256 of exactly those bytes and is stable across :meth:`save`/:meth:`load`.
    """

    def __init__(self, context: Any, public: bytes, preset_name: str, params: HEParams) -> None:
        self._context = context
        self._public = public
        self.preset = preset_name
        self.params = params
        self._fingerprint = hashlib.sha256(public).hexdigest()

    @classmethod
    def generate(cls, preset: str = "linear", *, galois: bool = False) -> HEKeys:
        """Generate fresh keys for the named preset (relinearization keys always, Galois keys if asked)."""
        params = _preset(preset)
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        )
        context.global_scale = params.scale
        if not context.has_relin_keys():
            context.generate_relin_keys()
        if galois:
            context.generate_galois_keys()
        public = context.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=galois, save_relin_keys=True
        )
        return cls(context, public, preset, params)

    @classmethod
    def load(cls, path: Path) -> HEKeys:
        """Load a keys file written by :meth:`save`; ``he.context_invalid`` if it is not one."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise HEError("he.context_invalid", f"cannot read HE keys file {path}: {exc.strerror}") from exc
        return cls.from_bytes(data)

    @classmethod
    def from_bytes(cls, data: bytes) -> HEKeys:
        """Parse the keys-file format; ``he.context_invalid`` for anything else."""
        if len(data) > MAX_KEYS_FILE or len(data) < _FIXED.size:
            raise HEError("he.context_invalid", "not a SealedML HE keys file (size)")
        magic, version, hlen = _FIXED.unpack_from(data)
        if magic != _MAGIC or version != 1 or len(data) < _FIXED.size + hlen:
            raise HEError("he.context_invalid", "not a SealedML HE keys file (bad magic or version)")
        try:
            header = safejson.loads(data[_FIXED.size : _FIXED.size + hlen])
        except ValueError as exc:
            raise HEError("he.context_invalid", "HE keys file header is not JSON") from exc
        if not isinstance(header, dict):
            raise HEError("he.context_invalid", "HE keys file header is not an object")
        secret_size, public_size, name = (
            header.get("secret_size"),
            header.get("public_size"),
            header.get("preset"),
        )
        body = data[_FIXED.size + hlen :]
        if (
            not isinstance(secret_size, int)
            or not isinstance(public_size, int)
            or not isinstance(name, str)
            or secret_size <= 0
            or public_size <= 0
            or secret_size + public_size != len(body)
        ):
            raise HEError("he.context_invalid", "HE keys file is truncated or its sizes are inconsistent")
        public = body[secret_size:]
        if hashlib.sha256(public).hexdigest() != header.get("fingerprint"):
            raise HEError(
                "he.context_invalid", "HE keys file's public context does not match its fingerprint"
            )
        try:
            context = ts.context_from(body[:secret_size])
        except (ValueError, RuntimeError, TypeError) as exc:
            raise HEError("he.context_invalid", "HE keys file holds no readable TenSEAL context") from exc
        if not context.has_secret_key():
            raise HEError("he.context_invalid", "HE keys file holds no secret key")
        try:
            params = params_from_dict(header.get("params"))
        except HEError as exc:
            raise HEError("he.context_invalid", f"HE keys file parameters: {exc.message}") from exc
        if context_params(context) != params:
            raise HEError("he.context_invalid", "HE keys file parameters disagree with its context")
        return cls(context, public, name, params)

    def to_bytes(self) -> bytes:
        """Serialize the key set (WITH the secret key) in the keys-file format."""
        secret = self._context.serialize(
            save_public_key=True, save_secret_key=True, save_galois_keys=True, save_relin_keys=True
        )
        header = canonical_json(
            {
                "fingerprint": self._fingerprint,
                "params": self.params.to_dict(),
                "preset": self.preset,
                "public_size": len(self._public),
                "secret_size": len(secret),
            }
        )
        return _FIXED.pack(_MAGIC, 1, len(header)) + header + secret + self._public

    def save(self, path: Path) -> None:
        """Write the keys file atomically (temp file + rename in the same directory) with mode 0600."""
        write_secret_file(Path(path), self.to_bytes())

    def public_context(self) -> bytes:
        """Return the context to upload: public key and relinearization (and Galois) keys, no secret key."""
        return self._public

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex of :meth:`public_context`: names this key set on the server."""
        return self._fingerprint

    @property
    def has_galois_keys(self) -> bool:
        """Whether this key set (and so its public context) holds Galois keys (needed by the rows layout)."""
        return bool(self._context.has_galois_keys())

    @property
    def tenseal(self) -> Any:
        """The live TenSEAL context, secret key included (never send it anywhere)."""
        return self._context

    def encrypt_vector(self, values: np.ndarray) -> bytes:
        """Encrypt ``values`` (at most ``params.slots``) as one serialized CKKS vector."""
        return ts.ckks_vector(self._context, [float(v) for v in values]).serialize()

    def decrypt_vector(self, data: bytes, *, index: int = 0) -> np.ndarray:
        """Decrypt one serialized CKKS vector made under this key set; ``he.ciphertext_invalid`` if not."""
        try:
            vector = ts.ckks_vector_from(self._context, data)
            return np.asarray(vector.decrypt(), dtype=np.float64)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise HEError(
                "he.ciphertext_invalid", f"ciphertext {index} cannot be decrypted with these keys"
            ) from exc

    def encrypt_batch(
        self,
        features: np.ndarray,
        columns: Sequence[str],
        *,
        model: str | None = None,
        layout: str = "columns",
    ) -> bytes:
        """Encrypt a table into an ``he-batch`` message in ``layout`` ("columns" or "rows").

        columns: rows are split in groups of ``params.slots``; for each group, column j is one CKKS
        vector holding that group's values of feature j (ciphertexts group-major, then column).
        rows: see :mod:`sealedml.he.packing`; one ciphertext per ``capacity`` rows, which needs
        Galois keys on the server (``he.context_invalid`` here if this key set has none).
        """
        matrix = _as_matrix(features, len(columns))
        rows = matrix.shape[0]
        if rows > MAX_BATCH_ROWS:
            raise InputError("input.too_large", f"{rows} rows in one batch (max {MAX_BATCH_ROWS})")
        if layout not in LAYOUTS:
            raise HEError("he.wire_malformed", f"unknown layout {layout!r} (use one of {list(LAYOUTS)})")
        slots = self.params.slots
        header: dict[str, Any] = {"context": self.fingerprint, "rows": rows, "columns": list(columns)}
        if layout == "rows":
            if not self.has_galois_keys:
                raise HEError(
                    "he.context_invalid",
                    "the rows layout needs Galois keys and this key set has none: "
                    "use HEKeys.generate(preset, galois=True) or the columns layout",
                )
            groups = rows_groups(rows, matrix.shape[1], slots)
            ciphertexts = []
            for group in groups:
                block = np.zeros((group.block, group.width))
                block[: matrix.shape[1], : group.rows] = matrix[group.start : group.start + group.rows].T
                ciphertexts.append(self.encrypt_vector(block.ravel()))
            header.update(layout="rows", groups=len(groups), capacity=slots // groups[0].block)
        else:
            count_groups = math.ceil(rows / slots)
            ciphertexts = [
                self.encrypt_vector(matrix[g * slots : (g + 1) * slots, j])
                for g in range(count_groups)
                for j in range(matrix.shape[1])
            ]
            header.update(groups=count_groups)
        if model is not None:
            header["model"] = model
        return encode_message("he-batch", header, ciphertexts)

    def decrypt_scores(self, message: bytes, *, max_bytes: int = 2**31) -> np.ndarray:
        """Decrypt an ``he-scores`` message (either layout) into a float array of shape (rows, outputs).

        Raises ``he.context_mismatch`` if the message names another key set, ``he.shape_mismatch``
        if its ciphertexts do not match its declared layout/rows/outputs, and the wire errors of
        :func:`decode_message`.
        """
        decoded = decode_message(message, expected_kind="he-scores", max_bytes=max_bytes)
        if decoded.context != self.fingerprint:
            raise HEError(
                "he.context_mismatch",
                f"the scores are under context {decoded.context[:16]}, "
                f"these keys are {self.fingerprint[:16]}",
            )
        outputs = decoded.int_field("outputs", minimum=1, maximum=100_000)
        rows, slots = decoded.rows, self.params.slots
        if decoded.layout == "rows":
            capacity = decoded.int_field("capacity", minimum=1, maximum=slots)
        else:
            capacity = slots
        groups = math.ceil(rows / capacity)
        if len(decoded.ciphertexts) != groups * outputs:
            raise HEError(
                "he.shape_mismatch",
                f"{len(decoded.ciphertexts)} score ciphertexts for {rows} rows x {outputs} outputs",
            )
        scores = np.empty((rows, outputs), dtype=np.float64)
        for g in range(groups):
            count = min(capacity, rows - g * capacity)
            size = next_pow2(count) if decoded.layout == "rows" else count
            for k in range(outputs):
                index = g * outputs + k
                values = self.decrypt_vector(decoded.ciphertexts[index], index=index)
                if values.shape[0] != size:
                    raise HEError(
                        "he.shape_mismatch", f"score ciphertext {index} holds {values.shape[0]} values"
                    )
                scores[g * capacity : g * capacity + count, k] = values[:count]
        return scores


class HEKeyring:
    """A folder of the client's key sets: ``<preset>.hekeys`` and, for the rows layout,
    ``<preset>-galois.hekeys`` (the same preset with Galois keys).

    Guarantees: :meth:`get` returns the same key set (same fingerprint, so the server keeps one
    context per file) every time, creating and saving it (mode 0600) only the first time; a key set
    without Galois keys is never replaced by one with them or vice versa.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._loaded: dict[tuple[str, bool], HEKeys] = {}
        #: Key files this keyring generated (callers may tell the user where the new secret key is).
        self.created: list[Path] = []

    def path(self, preset_name: str, *, galois: bool = False) -> Path:
        """Where the key set of ``preset_name`` (with or without Galois keys) is kept."""
        return self.directory / f"{preset_name}{'-galois' if galois else ''}.hekeys"

    def get(self, preset_name: str, *, galois: bool = False) -> tuple[HEKeys, bool]:
        """Return the key set and whether it was generated now; ``he.params_unsupported`` for an
        unknown preset, ``he.context_invalid`` if the stored file is not a key set of that kind."""
        known = self._loaded.get((preset_name, galois))
        if known is not None:
            return known, False
        _preset(preset_name)
        path = self.path(preset_name, galois=galois)
        created = False
        if path.is_file():
            keys = HEKeys.load(path)
            if keys.preset != preset_name or keys.has_galois_keys != galois:
                raise HEError(
                    "he.context_invalid",
                    f"{path} holds a {keys.preset!r} key set "
                    f"{'with' if keys.has_galois_keys else 'without'} Galois keys, not what its name says",
                )
        else:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            keys = HEKeys.generate(preset_name, galois=galois)
            keys.save(path)
            self.created.append(path)
            created = True
        self._loaded[(preset_name, galois)] = keys
        return keys, created


def _preset(name: str) -> HEParams:
    params = preset(name)
    check_params(params)
    return params


def _as_matrix(features: Any, width: int) -> np.ndarray:
    try:
        matrix = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError("input.malformed", "features must be numeric") from exc
    if matrix.ndim != 2 or matrix.shape[1] != width or matrix.shape[0] == 0:
        raise InputError(
            "input.schema_mismatch", f"features have shape {matrix.shape}, expected (rows >= 1, {width})"
        )
    if not np.all(np.isfinite(matrix)):
        raise InputError("input.malformed", "features contain NaN or infinity")
    return matrix
