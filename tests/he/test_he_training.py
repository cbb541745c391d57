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
    SIGMOID_POLY,
    SIGMOID_RANGE,
    TRAIN_DEPTH,
    TRAIN_LIMITS,
    EncryptedLogisticRegression,
    TrainingScaler,
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
    model = EncryptedLogisticRegression(train_keys).fit(  # the defaults: 10 epochs, Nesterov
        x_train, y_train, step, data_id="ds1", progress=lambda a, b: progress.append((a, b))
    )
    assert progress[-1] == (10, 10) and len(seen) == 10
    weights_msg = decode_message(seen[0], max_bytes=2**30)
    assert weights_msg.header["data"] == "ds1" and len(weights_msg.ciphertexts) == x_train.shape[1] + 1
    reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_train, y_train)
    accuracy = np.mean(model.predict(x_test) == y_test)
    # measured 0.974 against 0.982 (one test row of 114); the margin allows one more row either way
    assert accuracy >= reference.score(x_test, y_test) - 0.02, accuracy
    # every point the server evaluated kept the owner's logits inside the sigmoid's range
    design = np.column_stack([TrainingScaler.fit(x_train).transform(x_train), np.ones(len(x_train))])
    for message in seen:
        sent = np.array(
            [train_keys.decrypt_vector(ct)[0] for ct in decode_message(message, max_bytes=2**30).ciphertexts]
        )
        assert np.abs(design @ sent).max() <= 1.0 + 1e-3
    # the trained weights publish as an HE model and evaluate under HE like any other
    he_model = model.to_he_model(columns)
    scores, _ = evaluate_batch(
        he_model, linear_ctx, linear_keys.encrypt_batch(x_test, columns), max_bytes=2**30, max_rows=1000
    )
    labels, _ = he_model.finalize(linear_keys.decrypt_scores(scores))
    assert np.mean(labels == model.predict(x_test)) >= 0.995


def test_nesterov_beats_plain_gradient_descent(cancer, train_keys, train_ctx):
    """Plain gradient descent through the same encrypted steps stays ~3 points lower after 5 epochs."""
    x_train, x_test, y_train, y_test, _ = cancer
    data = encrypt_training_data(train_keys, x_train, y_train)

    def step(weights: bytes) -> bytes:
        return gradient_step(train_ctx, data, weights, max_bytes=2**30)

    plain = EncryptedLogisticRegression(train_keys, epochs=5, momentum=0.0, learning_rate=4.0)
    nesterov = EncryptedLogisticRegression(train_keys, epochs=5)
    plain_accuracy = np.mean(plain.fit(x_train, y_train, step).predict(x_test) == y_test)
    nesterov_accuracy = np.mean(nesterov.fit(x_train, y_train, step).predict(x_test) == y_test)
    assert nesterov_accuracy > plain_accuracy, (nesterov_accuracy, plain_accuracy)


def test_sigmoid_polynomial_is_the_least_squares_fit():
    z = np.linspace(-SIGMOID_RANGE, SIGMOID_RANGE, 4001)
    sigmoid = 1 / (1 + np.exp(-z))
    fit = np.polynomial.Polynomial.fit(z / SIGMOID_RANGE, sigmoid, 7, domain=[-1, 1], window=[-1, 1])
    expected = np.where(np.arange(8) % 2 == 1, fit.coef, 0.0)
    expected[0] = 0.5
    np.testing.assert_allclose(SIGMOID_POLY, expected, atol=1e-6)
    approx = np.polynomial.polynomial.polyval(z / SIGMOID_RANGE, SIGMOID_POLY)
    assert np.abs(approx - sigmoid).max() < 0.145
    # odd around 1/2, so sigma~(-z) = 1 - sigma~(z): no class is favoured
    np.testing.assert_allclose(approx + approx[::-1], 1.0, atol=1e-12)
    assert TRAIN_DEPTH <= HEKeys.generate("train").params.depth


def test_gradient_matches_clear_computation(cancer, train_keys, train_ctx):
    x_train, _, y_train, _, _ = cancer
    x, y = x_train[:50, :5], y_train[:50]
    data = encrypt_training_data(train_keys, x, y)
    scaled = np.column_stack([TrainingScaler.fit(x).transform(x), np.ones(len(x))])
    checked: list[float] = []

    def step(weights: bytes) -> bytes:
        answer = gradient_step(train_ctx, data, weights, max_bytes=2**30)
        sent = np.array(
            [train_keys.decrypt_vector(ct)[0] for ct in decode_message(weights, max_bytes=2**30).ciphertexts]
        )
        got = np.array(
            [
                train_keys.decrypt_vector(ct).sum()
                for ct in decode_message(answer, max_bytes=2**30).ciphertexts
            ]
        )
        u = scaled @ sent
        expected = scaled.T @ (np.polynomial.polynomial.polyval(u, SIGMOID_POLY) - y)
        np.testing.assert_allclose(got, expected, atol=2e-2, rtol=1e-3)
        checked.append(float(np.abs(u).max()))
        return answer

    EncryptedLogisticRegression(train_keys, epochs=4).fit(x, y, step)
    # the first step is at zero weights, the later ones evaluate the degree-7 polynomial away from 0
    # (|u| up to ~0.5, i.e. logits up to ~10), where every power of u contributes
    assert len(checked) == 4 and checked[0] < 1e-3 and max(checked) > 0.3


def test_training_options_are_checked(train_keys):
    for options in ({"epochs": 0}, {"learning_rate": 0.0}, {"momentum": 1.0}, {"l2": -1.0}):
        with pytest.raises(InputError) as err:
            EncryptedLogisticRegression(train_keys, **options)
        assert err.value.code == "input.malformed"


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
