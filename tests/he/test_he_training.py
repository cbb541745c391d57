"""Encrypted logistic-regression training on breast cancer gets close to scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sealedml.errors import HEError, InputError
from sealedml.he import HEKeys, evaluate_batch, load_public_context
from sealedml.he.training import (
    TRAIN_LIMITS,
    EncryptedLogisticRegression,
    encrypt_training_data,
    gradient_step,
)
from sealedml.he.wire import decode_message


@pytest.fixture(scope="module")
def train_keys():
    return HEKeys.generate("train")


@pytest.fixture(scope="module")
def train_ctx(train_keys):
    return load_public_context(train_keys.public_context())


def test_encrypted_training_close_to_sklearn(cancer, train_keys, train_ctx, linear_keys, linear_ctx):
    x_train, x_test, y_train, y_test, columns = cancer
    data = encrypt_training_data(train_keys, x_train, y_train)
    seen: list[bytes] = []

    def step(weights: bytes) -> bytes:
        seen.append(weights)
        return gradient_step(train_ctx, data, weights, max_bytes=2**30)

    progress: list[tuple[int, int]] = []
    model = EncryptedLogisticRegression(train_keys, epochs=6).fit(
        x_train, y_train, step, data_id="ds1", progress=lambda a, b: progress.append((a, b))
    )
    assert progress[-1] == (6, 6) and len(seen) == 6
    weights_msg = decode_message(seen[0], max_bytes=2**30)
    assert weights_msg.header["data"] == "ds1" and len(weights_msg.ciphertexts) == x_train.shape[1] + 1
    reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_train, y_train)
    accuracy = np.mean(model.predict(x_test) == y_test)
    assert accuracy >= reference.score(x_test, y_test) - 0.06
    # the trained weights publish as an HE model and evaluate under HE like any other
    he_model = model.to_he_model(columns)
    scores, _ = evaluate_batch(
        he_model, linear_ctx, linear_keys.encrypt_batch(x_test, columns), max_bytes=2**30, max_rows=1000
    )
    labels, _ = he_model.finalize(linear_keys.decrypt_scores(scores))
    assert np.mean(labels == model.predict(x_test)) >= 0.995


def test_gradient_matches_clear_computation(cancer, train_keys, train_ctx):
    x_train, _, y_train, _, _ = cancer
    x, y = x_train[:50, :5], y_train[:50]
    data = encrypt_training_data(train_keys, x, y)
    captured = {}

    def step(weights: bytes) -> bytes:
        answer = gradient_step(train_ctx, data, weights, max_bytes=2**30)
        captured["g"] = np.array(
            [
                train_keys.decrypt_vector(ct).sum()
                for ct in decode_message(answer, max_bytes=2**30).ciphertexts
            ]
        )
        return answer

    EncryptedLogisticRegression(train_keys, epochs=1).fit(x, y, step)
    from sealedml.he.training import SIGMOID_POLY, TrainingScaler

    scaled = np.column_stack([TrainingScaler.fit(x).transform(x), np.ones(len(x))])
    c0, c1, c3 = SIGMOID_POLY
    z = np.zeros(len(x))  # first epoch: zero weights
    expected = scaled.T @ (c0 + c1 * z + c3 * z**3 - y)
    np.testing.assert_allclose(captured["g"], expected, atol=1e-2, rtol=1e-3)


def test_training_refusals(cancer, train_keys, train_ctx, linear_keys, linear_ctx):
    x_train, _, y_train, _, _ = cancer
    x, y = x_train[:40, :4], y_train[:40]
    data = encrypt_training_data(train_keys, x, y)
    other_data = encrypt_training_data(train_keys, x[:30], y[:30])
    with pytest.raises(HEError) as err:
        encrypt_training_data(linear_keys, x, y)
    assert err.value.code == "he.depth_exceeded"
    with pytest.raises(InputError) as err:
        encrypt_training_data(
            train_keys, np.ones((TRAIN_LIMITS["rows"] + 1, 2)), np.zeros(TRAIN_LIMITS["rows"] + 1)
        )
    assert err.value.code == "input.too_large"
    with pytest.raises(InputError):
        encrypt_training_data(train_keys, x, y + 2)

    def mismatched(weights: bytes) -> bytes:
        return gradient_step(train_ctx, other_data, weights, max_bytes=2**30)

    with pytest.raises(HEError) as err:
        EncryptedLogisticRegression(train_keys, epochs=1).fit(x, y, mismatched)
    assert err.value.code == "he.shape_mismatch"

    def foreign(weights: bytes) -> bytes:
        return gradient_step(linear_ctx, data, weights, max_bytes=2**30)

    with pytest.raises(HEError) as err:
        EncryptedLogisticRegression(train_keys, epochs=1).fit(x, y, foreign)
    assert err.value.code == "he.context_mismatch"
