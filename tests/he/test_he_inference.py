"""HE inference agrees with the clear model on real data (breast cancer, iris, diabetes)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge, SGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from sealedml.errors import HEError
from sealedml.he import HEModel, PolyMLPClassifier, evaluate_batch, he_model_from_sklearn

LIMITS = {"max_bytes": 2**30, "max_rows": 100_000}


def _run(model, keys, ctx, features):
    message = keys.encrypt_batch(features, list(model.input_columns))
    scores_message, rows = evaluate_batch(model, ctx, message, **LIMITS)
    assert rows == features.shape[0]
    return keys.decrypt_scores(scores_message)


@pytest.fixture(scope="module")
def logistic(cancer):
    x_train, _, y_train, _, columns = cancer
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_train, y_train)
    return pipe, HEModel.from_json(he_model_from_sklearn(pipe, columns).to_json())


def test_logistic_agreement_and_scores(cancer, logistic, linear_keys, linear_ctx):
    _, x_test, _, y_test, _ = cancer
    pipe, model = logistic
    assert model.preset == "linear" and model.outputs == 1
    scores = _run(model, linear_keys, linear_ctx, x_test)
    np.testing.assert_allclose(scores, model.clear_scores(x_test), atol=1e-3)
    np.testing.assert_allclose(scores[:, 0], pipe.decision_function(x_test), atol=1e-3)
    labels, probs = model.finalize(scores)
    assert np.mean(labels == pipe.predict(x_test)) >= 0.995
    np.testing.assert_allclose(probs, pipe.predict_proba(x_test), atol=1e-4)
    assert np.mean(labels == y_test) > 0.95


def test_poly_mlp_agreement(cancer, mlp_keys, mlp_ctx):
    x_train, x_test, y_train, _, columns = cancer
    pipe = make_pipeline(StandardScaler(), PolyMLPClassifier(hidden=6, epochs=300)).fit(x_train, y_train)
    model = he_model_from_sklearn(pipe, columns)
    assert model.kind == "poly_mlp" and model.preset == "mlp" and model.depth == 3
    scores = _run(model, mlp_keys, mlp_ctx, x_test)
    np.testing.assert_allclose(scores[:, 0], pipe[-1].decision_function(pipe[0].transform(x_test)), atol=1e-2)
    labels, probs = model.finalize(scores)
    assert np.mean(labels == pipe.predict(x_test)) >= 0.995
    np.testing.assert_allclose(probs, pipe.predict_proba(x_test), atol=1e-3)


def test_polymlp_is_deterministic_and_sklearn_compatible(cancer):
    x_train, x_test, y_train, y_test, _ = cancer
    scaler = StandardScaler().fit(x_train)
    a = PolyMLPClassifier(epochs=50, random_state=3).fit(scaler.transform(x_train), y_train)
    b = PolyMLPClassifier(epochs=50, random_state=3).fit(scaler.transform(x_train), y_train)
    np.testing.assert_array_equal(a.coefs_[0], b.coefs_[0])
    assert list(a.classes_) == [0, 1]
    assert a.predict_proba(scaler.transform(x_test)).shape == (len(x_test), 2)
    assert a.score(scaler.transform(x_test), y_test) > 0.9
    assert a.get_params()["hidden"] == 8


def test_multiclass_iris(linear_keys, linear_ctx):
    data = load_iris()
    x_train, x_test, y_train, _ = train_test_split(data.data, data.target, test_size=0.3, random_state=1)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train, y_train)
    model = he_model_from_sklearn(pipe, ["sl", "sw", "pl", "pw"])
    assert model.outputs == 3 and model.output == "softmax"
    scores = _run(model, linear_keys, linear_ctx, x_test)
    labels, probs = model.finalize(scores)
    assert np.mean(labels == pipe.predict(x_test)) >= 0.995
    np.testing.assert_allclose(probs, pipe.predict_proba(x_test), atol=1e-4)


def test_multiclass_poly_mlp_iris(mlp_keys, mlp_ctx):
    data = load_iris()
    pipe = make_pipeline(StandardScaler(), PolyMLPClassifier(hidden=4, epochs=200)).fit(
        data.data, data.target
    )
    model = he_model_from_sklearn(pipe, ["sl", "sw", "pl", "pw"])
    labels, _ = model.finalize(_run(model, mlp_keys, mlp_ctx, data.data))
    assert np.mean(labels == pipe.predict(data.data)) >= 0.995


@pytest.mark.parametrize("estimator", [LinearRegression(), Ridge(alpha=1.0)])
def test_linear_regression_diabetes(estimator, linear_keys, linear_ctx):
    x, y = load_diabetes(return_X_y=True)
    fitted = estimator.fit(x, y)
    model = he_model_from_sklearn(fitted, [f"x{i}" for i in range(x.shape[1])])
    values, probs = model.finalize(_run(model, linear_keys, linear_ctx, x[:200]))
    assert probs is None
    np.testing.assert_allclose(values, fitted.predict(x[:200]), atol=1e-3)


def test_sgd_classifier_and_multigroup(cancer, linear_keys, linear_ctx):
    x_train, _, y_train, _, columns = cancer
    scaler = StandardScaler().fit(x_train)
    sgd = SGDClassifier(loss="log_loss", random_state=0).fit(scaler.transform(x_train), y_train)
    model = he_model_from_sklearn(sgd, columns)
    # more rows than one ciphertext holds (4096 slots): two groups
    tiled = scaler.transform(np.tile(x_train, (10, 1))[:4200])
    scores = _run(model, linear_keys, linear_ctx, tiled)
    assert scores.shape == (4200, 1)
    np.testing.assert_allclose(scores[:, 0], sgd.decision_function(tiled), atol=1e-3)


def test_unsupported_estimators(cancer):
    x_train, _, y_train, _, columns = cancer
    tree = DecisionTreeClassifier(max_depth=2).fit(x_train, y_train)
    with pytest.raises(HEError) as err:
        he_model_from_sklearn(tree, columns)
    assert err.value.code == "he.model_unsupported"
    hinge = SGDClassifier(loss="hinge", max_iter=5000).fit(x_train, y_train)
    with pytest.raises(HEError) as err:
        he_model_from_sklearn(hinge, columns)
    assert err.value.code == "he.model_unsupported"
    with pytest.raises(HEError) as err:
        he_model_from_sklearn(LogisticRegression(max_iter=5000).fit(x_train, y_train), columns[:5])
    assert err.value.code == "he.model_invalid"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(format="other"),
        lambda d: d.update(layers=[]),
        lambda d: d["layers"][0].update(bias=[1.0, 2.0]),
        lambda d: d["layers"][0]["weights"][0].__setitem__(0, 1e12),
        lambda d: d.update(classes=None),
        lambda d: d.update(input_columns=["a"] * 30),
        lambda d: d.update(activation=[1.0, 2.0, 3.0]),
        lambda d: d.update(output="relu"),
    ],
)
def test_model_json_rejects_bad_documents(logistic, mutate):
    import json

    doc = json.loads(logistic[1].to_json())
    mutate(doc)
    with pytest.raises(HEError) as err:
        HEModel.from_json(json.dumps(doc).encode())
    assert err.value.code == "he.model_invalid"


def test_model_json_garbage_and_size(logistic):
    for raw in (b"", b"[", b"null", b'{"format": 1}', b"[" * 100_000):
        with pytest.raises(HEError) as err:
            HEModel.from_json(raw)
        assert err.value.code == "he.model_invalid"
    with pytest.raises(HEError):
        HEModel.from_json(logistic[1].to_json(), max_bytes=100)
