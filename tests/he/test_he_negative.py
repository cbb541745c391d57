"""Bad contexts, foreign or tampered ciphertexts, wrong shapes and oversize input get typed errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tenseal as ts
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sealedml.errors import HEError, InputError, SealedMLError
from sealedml.he import (
    HEKeys,
    HEParams,
    check_params,
    evaluate_batch,
    he_model_from_sklearn,
    load_public_context,
)
from sealedml.he.models import PolyMLPClassifier
from sealedml.he.wire import decode_message, encode_message

LIMITS = {"max_bytes": 2**30, "max_rows": 10_000}


@pytest.fixture(scope="module")
def model(cancer):
    x_train, _, y_train, _, columns = cancer
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_train, y_train)
    return he_model_from_sklearn(pipe, columns)


@pytest.fixture(scope="module")
def batch(cancer, linear_keys, model):
    return linear_keys.encrypt_batch(cancer[1][:20], list(model.input_columns))


def _code(call) -> str:
    with pytest.raises(SealedMLError) as err:
        call()
    return err.value.code


def _reframe(message: bytes, **changes) -> bytes:
    decoded = decode_message(message, max_bytes=2**31)
    header = {k: v for k, v in decoded.header.items() if k not in ("kind", "count", "sha256")}
    cts = changes.pop("ciphertexts", decoded.ciphertexts)
    header.update(changes)
    return encode_message(decoded.kind, header, cts)


# --- contexts ---------------------------------------------------------------------------------


def test_public_context_loads(linear_keys, linear_ctx):
    assert linear_ctx.fingerprint == linear_keys.fingerprint
    assert linear_ctx.params == linear_keys.params
    assert linear_ctx.has_relin_keys and not linear_ctx.has_galois_keys
    assert not linear_ctx.tenseal.has_secret_key()


def test_context_with_secret_key_refused(linear_keys):
    private = linear_keys.tenseal.serialize(save_secret_key=True)
    assert _code(lambda: load_public_context(private)) == "he.context_has_secret_key"


def test_bfv_context_refused():
    bfv = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=8192, plain_modulus=1032193)
    assert _code(lambda: load_public_context(bfv.serialize())) == "he.params_unsupported"


def test_small_degree_context_refused():
    small = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=4096, coeff_mod_bit_sizes=[40, 20, 40])
    small.global_scale = 2**20
    assert _code(lambda: load_public_context(small.serialize())) == "he.params_unsupported"


def test_context_without_scale_refused():
    plain = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    assert _code(lambda: load_public_context(plain.serialize())) == "he.params_unsupported"


@pytest.mark.parametrize(
    "params",
    [
        HEParams(8192, (60, 40, 40, 40, 60), 40),  # 240 bits > 218: below 128-bit security
        HEParams(16384, (60,) * 8, 60),  # 480 bits > 438
        HEParams(4096, (40, 20, 40), 20),
        HEParams(8192, (60, 60), 40),  # no level
        HEParams(8192, (60, 30, 60), 40),  # middle prime != scale
        HEParams(8192, (40, 40, 60), 40),  # first prime leaves no integer bits
        HEParams(8192, (60, 40, 40), 40),  # special prime not the largest
    ],
)
def test_weak_or_unsound_params_refused(params):
    assert _code(lambda: check_params(params)) == "he.params_unsupported"


@pytest.mark.parametrize("data", [b"", b"\x00" * 100, os.urandom(4096), b"SMLHE"])
def test_garbage_context_refused(data):
    assert _code(lambda: load_public_context(data)) == "he.context_invalid"


def test_oversized_context_refused(linear_keys):
    assert (
        _code(lambda: load_public_context(linear_keys.public_context(), max_bytes=1000)) == "input.too_large"
    )


# --- keys -------------------------------------------------------------------------------------


def test_keys_roundtrip_file(tmp_path, linear_keys, linear_ctx, batch, model):
    path = tmp_path / "keys" / "linear.hekeys"
    linear_keys.save(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    again = HEKeys.load(path)
    assert again.fingerprint == linear_keys.fingerprint and again.params == linear_keys.params
    scores, _ = evaluate_batch(model, linear_ctx, batch, **LIMITS)
    np.testing.assert_allclose(again.decrypt_scores(scores), linear_keys.decrypt_scores(scores))
    assert [p.name for p in path.parent.iterdir()] == ["linear.hekeys"]


def test_keys_file_garbage(tmp_path, linear_keys):
    path = tmp_path / "bad"
    raw = linear_keys.to_bytes()
    for data in (b"", b"junk", raw[:-10], raw[:100]):
        path.write_bytes(data)
        assert _code(lambda: HEKeys.load(path)) == "he.context_invalid"
    assert _code(lambda: HEKeys.load(tmp_path / "missing")) == "he.context_invalid"


# --- ciphertexts and shapes -------------------------------------------------------------------


def test_other_keys_same_params_caught_by_fingerprint(cancer, model, linear_ctx):
    other = HEKeys.generate("linear")
    message = other.encrypt_batch(cancer[1][:5], list(model.input_columns))
    assert _code(lambda: evaluate_batch(model, linear_ctx, message, **LIMITS)) == "he.context_mismatch"


def test_scores_for_other_keys_refused(linear_keys, linear_ctx, model, batch):
    scores, _ = evaluate_batch(model, linear_ctx, batch, **LIMITS)
    other = HEKeys.generate("linear")
    assert _code(lambda: other.decrypt_scores(scores)) == "he.context_mismatch"


def test_other_params_ciphertexts_caught(cancer, model, linear_ctx, mlp_keys):
    foreign = mlp_keys.encrypt_batch(cancer[1][:5], list(model.input_columns))
    forged = _reframe(foreign, context=linear_ctx.fingerprint)  # even with a forged fingerprint
    assert _code(lambda: evaluate_batch(model, linear_ctx, forged, **LIMITS)) == "he.ciphertext_invalid"


def test_wrong_ciphertext_count(batch, model, linear_ctx):
    decoded = decode_message(batch, max_bytes=2**31)
    short = _reframe(batch, ciphertexts=decoded.ciphertexts[:-1])
    assert _code(lambda: evaluate_batch(model, linear_ctx, short, **LIMITS)) == "he.shape_mismatch"


def test_columns_must_match(cancer, linear_keys, model, linear_ctx):
    message = linear_keys.encrypt_batch(cancer[1][:5, :29], list(model.input_columns)[:29])
    assert _code(lambda: evaluate_batch(model, linear_ctx, message, **LIMITS)) == "input.schema_mismatch"


def test_vector_size_differs_from_declared_rows(batch, model, linear_ctx):
    assert (
        _code(lambda: evaluate_batch(model, linear_ctx, _reframe(batch, rows=7), **LIMITS))
        == "he.shape_mismatch"
    )


def test_too_many_rows_and_bytes(batch, model, linear_ctx):
    assert (
        _code(lambda: evaluate_batch(model, linear_ctx, batch, max_bytes=2**30, max_rows=10))
        == "input.too_large"
    )
    assert (
        _code(lambda: evaluate_batch(model, linear_ctx, batch, max_bytes=1000, max_rows=100))
        == "input.too_large"
    )


def test_tampered_ciphertext_digest_mismatch(batch, model, linear_ctx):
    tampered = bytearray(batch)
    tampered[-1000] ^= 0x01
    assert (
        _code(lambda: evaluate_batch(model, linear_ctx, bytes(tampered), **LIMITS)) == "he.ciphertext_invalid"
    )


def test_flipped_bytes_with_recomputed_digest(batch, model, linear_ctx, linear_keys, cancer):
    """CKKS is malleable: a flip in the compressed ciphertext is refused by SEAL's validity checks
    (he.ciphertext_invalid) or, if it still parses, yields scores that are garbage, never a crash."""
    decoded = decode_message(batch, max_bytes=2**31)
    clear = linear_keys.decrypt_scores(evaluate_batch(model, linear_ctx, batch, **LIMITS)[0])
    outcomes = set()
    for position in (20, 200, 5000, len(decoded.ciphertexts[0]) // 2, len(decoded.ciphertexts[0]) - 3):
        ct = bytearray(decoded.ciphertexts[0])
        ct[position] ^= 0x10
        message = _reframe(batch, ciphertexts=(bytes(ct), *decoded.ciphertexts[1:]))
        try:
            scores = linear_keys.decrypt_scores(evaluate_batch(model, linear_ctx, message, **LIMITS)[0])
        except HEError as exc:
            assert exc.code in {"he.ciphertext_invalid", "he.shape_mismatch"}
            outcomes.add(exc.code)
        else:
            outcomes.add("garbage" if not np.allclose(scores, clear, atol=1e-2) else "unchanged")
    assert "he.ciphertext_invalid" in outcomes


def test_masking_beyond_declared_rows(cancer, linear_keys, linear_ctx, model):
    """A client packing 100 rows but declaring (and paying for) 3 gets ~0 beyond row 3."""
    x = cancer[1][:100]
    full = linear_keys.encrypt_batch(x, list(model.input_columns))
    decoded = decode_message(full, max_bytes=2**31)
    assert all(ct[:3] == b"\x0a\x01\x64" for ct in decoded.ciphertexts)  # CKKSVectorProto sizes=[100]
    lying = [b"\x0a\x01\x03" + ct[3:] for ct in decoded.ciphertexts]
    message = _reframe(full, rows=3, ciphertexts=lying)
    scores_message, rows = evaluate_batch(model, linear_ctx, message, **LIMITS)
    assert rows == 3
    score_ct = decode_message(scores_message, max_bytes=2**31).ciphertexts[0]
    assert score_ct[:3] == b"\x0a\x01\x03"
    revealed = linear_keys.decrypt_vector(b"\x0a\x01\x64" + score_ct[3:])  # client lies again to read 100
    expected = model.clear_scores(x)[:, 0]
    np.testing.assert_allclose(revealed[:3], expected[:3], atol=1e-3)
    assert np.abs(revealed[3:]).max() < 1e-3
    assert np.abs(expected[3:]).max() > 1.0


def test_depth_exceeded(cancer, linear_keys, linear_ctx):
    x_train, x_test, y_train, _, columns = cancer
    pipe = make_pipeline(StandardScaler(), PolyMLPClassifier(hidden=2, epochs=20)).fit(x_train, y_train)
    mlp = he_model_from_sklearn(pipe, columns)
    message = linear_keys.encrypt_batch(x_test[:4], columns)
    assert _code(lambda: evaluate_batch(mlp, linear_ctx, message, **LIMITS)) == "he.depth_exceeded"


def test_scores_kind_required(batch, linear_keys):
    assert _code(lambda: linear_keys.decrypt_scores(batch)) == "he.wire_malformed"


def test_encrypt_batch_checks_input(linear_keys):
    with pytest.raises(InputError):
        linear_keys.encrypt_batch(np.ones((2, 3)), ["a", "b"])
    with pytest.raises(InputError):
        linear_keys.encrypt_batch(np.array([[np.nan, 1.0]]), ["a", "b"])
