"""Job-spec validation: the data-free checks the host and the enclave both run."""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealedml.errors import InputError
from sealedml.training_spec import (
    PARAMS,
    approval_message,
    canonical_type,
    feature_order,
    loads_json,
    parse_job_spec,
    parse_job_spec_json,
    schema_digest,
    spec_digest,
    validate_params,
)

RECIPIENT = "ab" * 32


def base(**fields: object) -> dict[str, object]:
    spec: dict[str, object] = {
        "job": "job-1",
        "model": "model-1",
        "datasets": ["hospital-a"],
        "label": "response",
        "algorithm": "random_forest",
        "recipients": [RECIPIENT],
    }
    spec.update(fields)
    return spec


def rejected(spec: object) -> str:
    with pytest.raises(InputError) as caught:
        parse_job_spec(spec)
    assert caught.value.code == "input.spec_invalid"
    return caught.value.message


def test_defaults_are_filled_in_and_the_digest_is_stable() -> None:
    spec = parse_job_spec(base())
    assert spec.params == {
        "n_estimators": 100,
        "max_depth": None,
        "min_samples_leaf": 1,
        "max_features": "sqrt",
        "class_weight": None,
    }
    assert spec.validation_fraction == 0.25 and spec.seed == 0 and not spec.dp and not spec.publish
    explicit = parse_job_spec(base(params={"n_estimators": 100}, validation_fraction=0.25, publish=False))
    assert spec_digest(spec) == spec_digest(explicit)  # defaults spelled out: same job
    reordered = json.loads(json.dumps(base(), sort_keys=True))
    assert spec_digest(parse_job_spec(reordered)) == spec_digest(spec)


@pytest.mark.parametrize(
    "change",
    [
        {"job": "job-2"},
        {"model": "model-2"},
        {"datasets": ["hospital-a", "hospital-b"]},
        {"params": {"n_estimators": 99}},
        {"recipients": ["cd" * 32]},
        {"publish": True},
        {"seed": 1},
    ],
)
def test_any_change_changes_the_digest(change: dict[str, object]) -> None:
    assert spec_digest(parse_job_spec(base(**change))) != spec_digest(parse_job_spec(base()))


def test_unknown_algorithm_and_parameters_are_refused() -> None:
    assert "unknown algorithm" in rejected(base(algorithm="svm"))
    message = rejected(base(params={"n_estimators": 10, "criterion": "entropy"}))
    assert "criterion" in message and "allowed" in message
    assert "unknown spec field" in rejected(base(kwargs={"n_jobs": -1}))


@pytest.mark.parametrize(
    ("algorithm", "params", "fragment"),
    [
        ("random_forest", {"n_estimators": 0}, "n_estimators"),
        ("random_forest", {"n_estimators": 100_000}, "n_estimators"),
        ("random_forest", {"n_estimators": True}, "integer"),
        ("random_forest", {"n_estimators": 10.0}, "integer"),
        ("logistic_regression", {"C": -1.0}, "C"),
        ("logistic_regression", {"C": float("nan")}, "finite"),
        ("mlp", {"hidden_layer_sizes": [64, 64, 64, 64]}, "hidden_layer_sizes"),
        ("mlp", {"hidden_layer_sizes": [0]}, "hidden_layer_sizes"),
        ("mlp", {"activation": "softmax"}, "activation"),
        ("gradient_boosting", {"learning_rate": 5.0}, "learning_rate"),
        ("random_forest", {"max_features": 0.5}, "max_features"),
    ],
)
def test_parameters_out_of_bounds_or_of_the_wrong_type_are_refused(
    algorithm: str, params: dict[str, object], fragment: str
) -> None:
    assert fragment in rejected(base(algorithm=algorithm, params=params))


def test_every_algorithm_has_an_allow_list_with_valid_defaults() -> None:
    for algorithm, rules in PARAMS.items():
        filled = validate_params(algorithm, {}, dp=False)
        assert set(filled) == set(rules)
        for name, rule in rules.items():
            assert rule.check(name, rule.default) == rule.default


def test_dp_needs_a_private_algorithm_public_bounds_and_classes() -> None:
    dp = {"dp_epsilon": 1.0, "feature_bounds": {"g1": [0, 10]}, "classes": [0, 1]}
    assert parse_job_spec(base(**dp)).dp
    assert "no differentially private" in rejected(base(**{**dp, "algorithm": "gradient_boosting"}))
    assert "feature_bounds" in rejected(base(dp_epsilon=1.0, classes=[0, 1]))
    assert "classes" in rejected(base(dp_epsilon=1.0, feature_bounds={"g1": [0, 10]}))
    assert "not supported with dp_epsilon" in rejected(base(**dp, params={"min_samples_leaf": 3}))
    assert "dp_epsilon" in rejected(base(**{**dp, "dp_epsilon": 0}))
    assert "dp_epsilon" in rejected(base(**{**dp, "dp_epsilon": 1000}))
    assert "low < high" in rejected(base(**{**dp, "feature_bounds": {"g1": [3, 3]}}))
    assert "exactly the features" in rejected(base(**dp, features=["g1", "g2"]))
    assert parse_job_spec(base(**dp)).params["n_estimators"] == 10  # diffprivlib's default under DP


def test_other_fields_are_validated() -> None:
    assert "recipient" in rejected(base(recipients=["not-a-key"]))
    assert "recipients" in rejected(base(recipients=[]))
    assert "repeat" in rejected(base(datasets=["a", "a"]))
    assert "label" in rejected(base(features=["response"]))
    assert "validation_fraction" in rejected(base(validation_fraction=0.9))
    assert "serving" in rejected(base(serving={"query_budget": 10}))
    assert "decimals" in rejected(
        base(publish=True, serving={"output_policy": {"mode": "rounded", "decimals": 9}})
    )
    assert "missing required field 'label'" in rejected({k: v for k, v in base().items() if k != "label"})
    assert "version" in rejected(base(v=2))
    assert rejected([1, 2]) == "a job spec must be a JSON object"


def test_json_entry_point_refuses_garbage() -> None:
    for raw in (b"\xff\xfe", b"{", b"[" * 100_000, b'{"a":' * 50_000, b"null", b'"\\'):
        with pytest.raises(InputError) as caught:
            parse_job_spec_json(raw)
        assert caught.value.code == "input.spec_invalid"


def test_deep_nesting_is_refused_before_the_json_decoder_runs() -> None:
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(1_000_000)  # as some libraries do: the decoder's own guard is then too late
    try:
        with pytest.raises(ValueError, match="deeper"):
            loads_json(b"[" * 2_000_000)
    finally:
        sys.setrecursionlimit(old)
    assert loads_json(b"[" * 32 + b"]" * 32) is not None
    with pytest.raises(ValueError):
        loads_json(b"[" * 33 + b"]" * 33)
    # Brackets and escaped quotes inside strings do not count as nesting.
    assert loads_json(b'{"name": "[[[[\\"{{{{", "x": [1]}') == {"name": '[[[["{{{{', "x": [1]}
    assert loads_json(json.dumps(base()).encode()) == base()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    [
        "job",
        "model",
        "datasets",
        "label",
        "algorithm",
        "params",
        "recipients",
        "dp_epsilon",
        "feature_bounds",
        "classes",
        "features",
        "serving",
        "publish",
        "seed",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(FIELDS, JSON, max_size=10))
def test_arbitrary_specs_raise_only_typed_errors(data: dict[str, object]) -> None:
    try:
        parse_job_spec({**base(), **data})
    except InputError as exc:
        assert exc.code == "input.spec_invalid"


def test_approval_message_binds_dataset_and_digest() -> None:
    digest = "0f" * 32
    message = approval_message("hospital-a", digest)
    assert json.loads(message) == {
        "dataset": "hospital-a",
        "purpose": "sealedml-train-approval-v1",
        "spec_sha256": digest,
    }
    assert message != approval_message("hospital-b", digest)
    with pytest.raises(InputError):
        approval_message("hospital-a", "not-a-digest")


def test_schema_digest_uses_canonical_types() -> None:
    assert [
        canonical_type(t) for t in ("int8", "uint64", "float", "double", "bool", "string", "date32[day]")
    ] == [
        "integer",
        "integer",
        "float",
        "float",
        "boolean",
        "string",
        "other",
    ]
    narrow = schema_digest([("a", canonical_type("int32")), ("b", canonical_type("float"))])
    wide = schema_digest([("a", canonical_type("int64")), ("b", canonical_type("double"))])
    assert narrow == wide
    assert narrow != schema_digest([("b", "float"), ("a", "integer")])  # order matters


def test_feature_order_checks_label_features_and_types_without_naming_columns() -> None:
    types = {"secret_gene": "float", "patient_name": "string", "response": "integer"}
    columns = ("secret_gene", "patient_name", "response")
    spec = parse_job_spec(base(features=["secret_gene"]))
    assert feature_order(spec, columns, types) == ("secret_gene",)
    with pytest.raises(InputError) as caught:
        feature_order(parse_job_spec(base()), columns, types)
    assert caught.value.code == "input.schema_mismatch"
    assert "patient_name" not in caught.value.message and "not numeric" in caught.value.message
    with pytest.raises(InputError) as missing_label:
        feature_order(parse_job_spec(base(label="outcome")), columns, types)
    assert (
        missing_label.value.code == "input.schema_mismatch" and "outcome" not in missing_label.value.message
    )
