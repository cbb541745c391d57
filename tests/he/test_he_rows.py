"""The rows layout: several whole rows per ciphertext, rotations under Galois keys, exact masking."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as sealapi
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sealedml.errors import HEError
from sealedml.he import HEModel, PolyMLPClassifier, evaluate_batch, he_model_from_sklearn
from sealedml.he.context import load_public_context
from sealedml.he.evaluate import check_batch, check_vectors
from sealedml.he.keys import HEKeyring, HEKeys
from sealedml.he.packing import choose_layout, rows_capacity, rows_groups
from sealedml.he.wire import decode_message, encode_message

LIMITS = {"max_bytes": 2**31, "max_rows": 100_000}


def _rows(model, keys, ctx, features):
    message = keys.encrypt_batch(features, list(model.input_columns), layout="rows")
    decoded = decode_message(message, expected_kind="he-batch", max_bytes=2**31)
    scores_message, rows = evaluate_batch(model, ctx, message, **LIMITS)
    assert rows == features.shape[0]
    assert decode_message(scores_message, max_bytes=2**31).layout == "rows"
    return keys.decrypt_scores(scores_message), decoded


def _reframe(message: bytes, **changes) -> bytes:
    decoded = decode_message(message, max_bytes=2**31)
    header = {k: v for k, v in decoded.header.items() if k not in ("kind", "count", "sha256")}
    ciphertexts = changes.pop("ciphertexts", decoded.ciphertexts)
    header.update(changes)
    return encode_message(decoded.kind, header, ciphertexts)


def _all_slots(keys: HEKeys, ciphertext: bytes) -> np.ndarray:
    """Decrypt EVERY slot of a score ciphertext, as a curious client holding the secret key can."""
    context = keys.tenseal
    vector = __import__("tenseal").ckks_vector_from(context, ciphertext)
    plain = sealapi.Plaintext()
    seal = context.seal_context().data
    sealapi.Decryptor(seal, context.secret_key().data).decrypt(vector.ciphertext()[0], plain)
    return np.asarray(sealapi.CKKSEncoder(seal).decode_double(plain))


@pytest.fixture(scope="module")
def logistic(cancer):
    x_train, _, y_train, _, columns = cancer
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_train, y_train)
    return pipe, he_model_from_sklearn(pipe, columns)


def test_rows_logistic_binary_agrees_in_one_ciphertext_per_128_rows(
    cancer, logistic, linear_galois_keys, linear_galois_ctx
):
    x_train, x_test, _, _, _ = cancer
    pipe, model = logistic
    assert rows_capacity(30, 4096) == 128
    for features, ciphertexts in ((x_test[:1], 1), (x_test, 1), (x_train, 4)):
        scores, batch = _rows(model, linear_galois_keys, linear_galois_ctx, features)
        assert len(batch.ciphertexts) == ciphertexts and batch.header["capacity"] == 128
        np.testing.assert_allclose(scores, model.clear_scores(features), atol=1e-3)
        labels, probs = model.finalize(scores)
        assert np.mean(labels == pipe.predict(features)) >= 0.995
        np.testing.assert_allclose(probs, pipe.predict_proba(features), atol=1e-4)


def test_rows_multiclass_iris_agrees(linear_galois_keys, linear_galois_ctx):
    data = load_iris()
    x_train, x_test, y_train, _ = train_test_split(data.data, data.target, test_size=0.3, random_state=0)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_train, y_train)
    model = HEModel.from_json(he_model_from_sklearn(pipe, ["a", "b", "c", "d"]).to_json())
    assert model.outputs == 3 and model.output == "softmax"
    features = np.vstack([x_test, x_train])
    scores, batch = _rows(model, linear_galois_keys, linear_galois_ctx, features)
    assert len(batch.ciphertexts) == 1  # 150 rows x 4 features fit one 4096-slot ciphertext
    np.testing.assert_allclose(scores, model.clear_scores(features), atol=1e-3)
    labels, _ = model.finalize(scores)
    assert np.mean(labels == pipe.predict(features)) >= 0.995


def test_rows_poly_mlp_agrees_within_the_mlp_preset(cancer):
    x_train, x_test, y_train, _, columns = cancer
    pipe = make_pipeline(StandardScaler(), PolyMLPClassifier(hidden=6, epochs=300)).fit(x_train, y_train)
    model = he_model_from_sklearn(pipe, columns)
    assert model.depth_for("rows") == 3 == model.depth
    keys = HEKeys.generate("mlp", galois=True)
    ctx = load_public_context(keys.public_context(), max_bytes=256 * 2**20)
    scores, batch = _rows(model, keys, ctx, x_test)
    assert len(batch.ciphertexts) == 1
    np.testing.assert_allclose(scores, model.clear_scores(x_test), atol=1e-2)
    labels, _ = model.finalize(scores)
    assert np.mean(labels == pipe.predict(x_test)) >= 0.995
    # every slot beyond the declared rows is masked by the last layer's weight vectors
    answer, _ = evaluate_batch(model, ctx, keys.encrypt_batch(x_test[:3], columns, layout="rows"), **LIMITS)
    slots = _all_slots(keys, decode_message(answer, max_bytes=2**31).ciphertexts[0])
    assert np.abs(slots[3:]).max() < 1e-2


def test_a_client_cannot_get_more_rows_or_partial_sums_than_it_declares(
    cancer, logistic, linear_galois_keys, linear_galois_ctx
):
    _, x_test, _, _, columns = cancer
    _, model = logistic
    # declare 3 rows (width 4) but fill the 4th row's slots too, and junk in the padding features
    block = np.zeros((32, 4))
    block[:30, :4] = x_test[:4].T
    block[30:, :] = 1e3
    ciphertext = linear_galois_keys.encrypt_vector(block.ravel())
    message = encode_message(
        "he-batch",
        {
            "context": linear_galois_keys.fingerprint,
            "rows": 3,
            "columns": columns,
            "layout": "rows",
            "groups": 1,
            "capacity": 128,
        },
        [ciphertext],
    )
    answer, rows = evaluate_batch(model, linear_galois_ctx, message, **LIMITS)
    assert rows == 3
    slots = _all_slots(linear_galois_keys, decode_message(answer, max_bytes=2**31).ciphertexts[0])
    np.testing.assert_allclose(slots[:3], model.clear_scores(x_test[:3])[:, 0], atol=1e-3)
    # the undeclared 4th row and every other slot (where the rotations left partial sums) are ~0
    assert np.abs(slots[3:]).max() < 1e-3
    assert abs(model.clear_scores(x_test[3:4])[0, 0]) > 0.1


def test_a_vector_longer_than_its_rows_is_refused(cancer, logistic, linear_galois_keys, linear_galois_ctx):
    _, x_test, _, _, columns = cancer
    _, model = logistic
    one = linear_galois_keys.encrypt_batch(x_test[:1], columns, layout="rows")
    two_rows = np.zeros((32, 2))
    two_rows[:30, :] = x_test[:2].T
    for values in (two_rows.ravel(), x_test[0], np.concatenate([x_test[0], x_test[1]])):
        forged = _reframe(one, ciphertexts=[linear_galois_keys.encrypt_vector(values)])
        decoded = check_batch(model, linear_galois_ctx, forged, **LIMITS)
        with pytest.raises(HEError) as caught:
            check_vectors(model, linear_galois_ctx, decoded)
        assert caught.value.code == "he.shape_mismatch"
        with pytest.raises(HEError) as caught:
            evaluate_batch(model, linear_galois_ctx, forged, **LIMITS)
        assert caught.value.code == "he.shape_mismatch"


def test_rows_batches_with_the_wrong_count_or_header_are_refused(
    cancer, logistic, linear_galois_keys, linear_galois_ctx
):
    x_train, _, _, _, columns = cancer
    _, model = logistic
    message = linear_galois_keys.encrypt_batch(x_train[:200], columns, layout="rows")
    cts = decode_message(message, max_bytes=2**31).ciphertexts
    assert len(cts) == 2
    for changes in (
        {"ciphertexts": cts[:1]},
        {"ciphertexts": [*cts, cts[0]], "groups": 3},
        {"ciphertexts": cts[:1], "groups": 1},
        {"capacity": 256},
        {"capacity": None},
        {"rows": 300},
    ):
        with pytest.raises(HEError) as caught:
            check_batch(model, linear_galois_ctx, _reframe(message, **changes), **LIMITS)
        assert caught.value.code == "he.shape_mismatch", changes


def test_rows_need_galois_keys(cancer, logistic, linear_keys, linear_ctx, linear_galois_keys):
    _, x_test, _, _, columns = cancer
    _, model = logistic
    with pytest.raises(HEError) as caught:
        linear_keys.encrypt_batch(x_test[:1], columns, layout="rows")
    assert caught.value.code == "he.context_invalid" and "Galois" in caught.value.message
    # a rows batch naming a context without Galois keys is refused before any ciphertext is read
    forged = _reframe(
        linear_galois_keys.encrypt_batch(x_test[:1], columns, layout="rows"), context=linear_ctx.fingerprint
    )
    with pytest.raises(HEError) as caught:
        evaluate_batch(model, linear_ctx, forged, **LIMITS)
    assert caught.value.code == "he.context_invalid" and "Galois keys" in caught.value.message


def test_rows_layout_checks_the_depth_it_needs(cancer, logistic):
    import tenseal as ts

    _, x_test, _, _, columns = cancer
    _, model = logistic
    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    context.global_scale = 2**40
    context.generate_galois_keys()
    public = context.serialize(save_secret_key=False, save_galois_keys=True, save_relin_keys=True)
    ctx = load_public_context(public)
    assert ctx.params.depth == 1 and model.depth_for("columns") == 1 and model.depth_for("rows") == 2
    keys = HEKeys(context, public, "shallow", ctx.params)
    with pytest.raises(HEError) as caught:
        evaluate_batch(model, ctx, keys.encrypt_batch(x_test[:2], columns, layout="rows"), **LIMITS)
    assert caught.value.code == "he.depth_exceeded"
    answer, _ = evaluate_batch(model, ctx, keys.encrypt_batch(x_test[:2], columns), **LIMITS)
    np.testing.assert_allclose(keys.decrypt_scores(answer), model.clear_scores(x_test[:2]), atol=1e-3)


def test_choose_layout_and_groups():
    assert choose_layout(1, 30, 1, 4096, preset="linear") == "rows"
    assert choose_layout(64, 30, 1, 4096, preset="linear") == "rows"
    assert choose_layout(4096, 30, 1, 4096, preset="linear") == "columns"
    assert choose_layout(1, 30, 1, 8192, preset="mlp", two_layers=True) == "columns"
    assert choose_layout(1, 5000, 1, 4096, preset="linear") == "columns"  # a row wider than a ciphertext
    groups = rows_groups(300, 30, 4096)
    assert [(g.start, g.rows, g.width, g.size) for g in groups] == [
        (0, 128, 128, 4096),
        (128, 128, 128, 4096),
        (256, 44, 64, 2048),
    ]


def test_training_messages_cannot_claim_the_rows_layout(linear_keys):
    for kind in ("he-train-data", "he-train-weights", "he-train-gradient"):
        message = encode_message(kind, {"context": linear_keys.fingerprint, "rows": 1, "layout": "rows"}, [])
        with pytest.raises(HEError) as caught:
            decode_message(message, max_bytes=2**20)
        assert caught.value.code == "he.wire_malformed"
    message = encode_message(
        "he-batch", {"context": linear_keys.fingerprint, "rows": 1, "layout": "diag"}, []
    )
    with pytest.raises(HEError):
        decode_message(message, max_bytes=2**20)


def test_keyring_keeps_one_file_per_preset_and_galois(tmp_path):
    ring = HEKeyring(tmp_path / "he")
    plain, created = ring.get("linear")
    assert created and not plain.has_galois_keys
    galois, created = ring.get("linear", galois=True)
    assert created and galois.has_galois_keys and galois.fingerprint != plain.fingerprint
    assert ring.path("linear", galois=True).name == "linear-galois.hekeys"
    assert ring.path("linear", galois=True).stat().st_mode & 0o777 == 0o600
    again, created = HEKeyring(tmp_path / "he").get("linear", galois=True)
    assert not created and again.fingerprint == galois.fingerprint
    ring.path("linear").replace(ring.path("linear", galois=True))
    with pytest.raises(HEError) as caught:
        HEKeyring(tmp_path / "he").get("linear", galois=True)
    assert caught.value.code == "he.context_invalid"
