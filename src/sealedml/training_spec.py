"""Training job specifications: validation that needs no data, shared by the host and the enclave.

A job spec says *what* to train — which datasets, which label, which algorithm with which
hyper-parameters, with or without differential privacy, who receives the model key — and nothing
here ever touches a row of data. The host imports this module to reject a bad spec before it
schedules anything; the enclave imports the same code and validates again, because it trusts
nothing the host did. Only the standard library and :mod:`sealedml.errors` are imported, so the
module is part of both the host's code and the enclave's trusted computing base.

Every hyper-parameter is checked against an allow-list per algorithm (type, bounds, choices):
arbitrary keyword arguments never reach scikit-learn. The *canonical* form of a spec (defaults
filled in, keys sorted) hashes to :func:`spec_digest`, the value every dataset owner signs to
approve a job (:func:`approval_message`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sealedml import safejson
from sealedml.errors import InputError

SPEC_VERSION = 1
ALGORITHMS = ("logistic_regression", "gradient_boosting", "random_forest", "mlp", "naive_bayes")
DP_ALGORITHMS = ("logistic_regression", "random_forest", "naive_bayes")
"""Algorithms with a differentially private implementation (IBM diffprivlib)."""

MAX_ID = 128
MAX_DATASETS = 16
MAX_RECIPIENTS = 16
MAX_FEATURES = 20_000
MAX_CLASSES = 100
MAX_DP_EPSILON = 20.0
MAX_BOUND = 1e15
OUTPUT_MODES = ("probabilities", "rounded", "label")
APPROVAL_PURPOSE = "sealedml-train-approval-v1"
SCHEMA_PURPOSE = "sealedml-dataset-schema-v1"
CANONICAL_TYPES = ("integer", "float", "boolean", "string", "other")
NUMERIC_TYPES = ("integer", "float", "boolean")

_HEX_KEY = re.compile(r"^[0-9a-f]{64}$")
_HEX_DIGEST = _HEX_KEY


def canonical_json(obj: Any) -> bytes:
    """Encode ``obj`` as canonical JSON (sorted keys, no spaces, UTF-8): one encoding per value.

    Byte-for-byte the same as :func:`sealedml.crypto.envelope.canonical_json`.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


MAX_JSON_DEPTH = 32
_JSON_SPECIAL = re.compile(r'[\[\]{}"\\]')


def loads_json(raw: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode UTF-8 JSON whose arrays/objects nest at most ``max_depth`` deep (see :mod:`sealedml.safejson`).

    Raises ``ValueError`` (including ``UnicodeDecodeError``) on bad UTF-8, excessive nesting or
    invalid JSON.
    """
    return safejson.loads(raw, max_depth=max_depth)


def _fail(message: str) -> InputError:
    return InputError("input.spec_invalid", message)


# -- hyper-parameter allow-list ---------------------------------------------------------------------


@dataclass(frozen=True)
class ParamRule:
    """One allowed hyper-parameter: its kind, default, bounds or choices, and whether DP supports it."""

    kind: str
    """``int``, ``float``, ``bool``, ``choice`` or ``int_list``."""
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    nullable: bool = False
    dp: bool = False
    """Whether the parameter is accepted when the job uses differential privacy."""
    max_len: int = 0

    def check(self, name: str, value: Any) -> Any:
        """Return ``value`` normalised (floats as float) if allowed; raise ``input.spec_invalid``."""
        if value is None:
            if self.nullable:
                return None
            raise _fail(f"parameter {name!r} may not be null")
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise _fail(f"parameter {name!r} must be true or false")
            return value
        if self.kind == "choice":
            if isinstance(value, bool) or value not in self.choices:
                raise _fail(f"parameter {name!r} must be one of {list(self.choices)}")
            return value
        if self.kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise _fail(f"parameter {name!r} must be an integer")
            self._bounds(name, value)
            return value
        if self.kind == "float":
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise _fail(f"parameter {name!r} must be a finite number")
            self._bounds(name, value)
            return float(value)
        if self.kind == "int_list":
            if (
                not isinstance(value, list)
                or not 1 <= len(value) <= self.max_len
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            ):
                raise _fail(f"parameter {name!r} must be a list of 1..{self.max_len} integers")
            for item in value:
                self._bounds(name, item)
            return list(value)
        raise AssertionError(f"unknown rule kind {self.kind}")  # pragma: no cover - table is static

    def _bounds(self, name: str, value: float) -> None:
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise _fail(f"parameter {name!r} must be within [{self.low}, {self.high}], got {value}")


PARAMS: dict[str, dict[str, ParamRule]] = {
    "logistic_regression": {
        "C": ParamRule("float", 1.0, low=1e-4, high=1e4, dp=True),
        "max_iter": ParamRule("int", 1000, low=10, high=10_000, dp=True),
        "fit_intercept": ParamRule("bool", True, dp=True),
        "class_weight": ParamRule("choice", None, choices=(None, "balanced"), nullable=True),
    },
    "gradient_boosting": {
        "n_estimators": ParamRule("int", 100, low=1, high=1000),
        "learning_rate": ParamRule("float", 0.1, low=1e-3, high=1.0),
        "max_depth": ParamRule("int", 3, low=1, high=16),
        "subsample": ParamRule("float", 1.0, low=0.1, high=1.0),
        "min_samples_leaf": ParamRule("int", 1, low=1, high=10_000),
    },
    "random_forest": {
        "n_estimators": ParamRule("int", 100, low=1, high=500, dp=True),
        "max_depth": ParamRule("int", None, low=1, high=64, nullable=True, dp=True),
        "min_samples_leaf": ParamRule("int", 1, low=1, high=10_000),
        "max_features": ParamRule("choice", "sqrt", choices=("sqrt", "log2", "all")),
        "class_weight": ParamRule("choice", None, choices=(None, "balanced"), nullable=True),
    },
    "mlp": {
        "hidden_layer_sizes": ParamRule("int_list", [64], low=1, high=512, max_len=3),
        "activation": ParamRule("choice", "relu", choices=("relu", "tanh", "logistic")),
        "alpha": ParamRule("float", 1e-4, low=0.0, high=10.0),
        "learning_rate_init": ParamRule("float", 1e-3, low=1e-5, high=1.0),
        "max_iter": ParamRule("int", 200, low=10, high=2000),
    },
    "naive_bayes": {
        "var_smoothing": ParamRule("float", 1e-9, low=1e-12, high=1.0),
    },
}

DP_DEFAULTS: dict[str, dict[str, Any]] = {
    "random_forest": {"n_estimators": 10, "max_depth": 5},
}
"""Defaults that differ when the job is differentially private (diffprivlib's own defaults)."""


def validate_params(algorithm: str, params: object, *, dp: bool) -> dict[str, Any]:
    """Return the full, normalised parameter set for ``algorithm`` (defaults filled in).

    Guarantees every key is in the allow-list of ``algorithm`` and every value has the allowed
    type and lies within bounds; with ``dp`` only parameters the private implementation honours
    may be set. Raises ``input.spec_invalid`` naming the offending parameter otherwise.
    """
    if algorithm not in PARAMS:
        raise _fail(f"unknown algorithm {algorithm!r}: choose one of {list(ALGORITHMS)}")
    if dp and algorithm not in DP_ALGORITHMS:
        raise _fail(
            f"algorithm {algorithm!r} has no differentially private implementation: "
            f"use one of {list(DP_ALGORITHMS)} with dp_epsilon"
        )
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise _fail("params must be an object of hyper-parameters")
    rules = PARAMS[algorithm]
    unknown = sorted(str(k) for k in params if k not in rules)
    if unknown:
        raise _fail(f"unknown parameter(s) {unknown} for {algorithm}: allowed are {sorted(rules)}")
    out: dict[str, Any] = {}
    for name, rule in rules.items():
        if dp and not rule.dp:
            if name in params:
                raise _fail(f"parameter {name!r} is not supported with dp_epsilon for {algorithm}")
            continue
        default = DP_DEFAULTS.get(algorithm, {}).get(name, rule.default) if dp else rule.default
        out[name] = rule.check(name, params[name]) if name in params else default
    return out


# -- the job spec -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """A validated training job. Its canonical dict (:meth:`to_dict`) is what owners approve."""

    job: str
    model: str
    datasets: tuple[str, ...]
    label: str
    algorithm: str
    params: dict[str, Any]
    recipients: tuple[str, ...]
    features: tuple[str, ...] | None = None
    validation_fraction: float = 0.25
    seed: int = 0
    dp_epsilon: float | None = None
    dp_metrics_fraction: float = 0.2
    feature_bounds: dict[str, tuple[float, float]] | None = None
    classes: tuple[int | str, ...] | None = None
    publish: bool = False
    serving: dict[str, Any] = field(default_factory=dict)

    @property
    def dp(self) -> bool:
        """Whether the job trains with differential privacy."""
        return self.dp_epsilon is not None

    def to_dict(self) -> dict[str, Any]:
        """Return the canonical JSON form (every field, defaults filled in)."""
        return {
            "v": SPEC_VERSION,
            "job": self.job,
            "model": self.model,
            "datasets": list(self.datasets),
            "label": self.label,
            "features": None if self.features is None else list(self.features),
            "algorithm": self.algorithm,
            "params": dict(self.params),
            "validation_fraction": self.validation_fraction,
            "seed": self.seed,
            "dp_epsilon": self.dp_epsilon,
            "dp_metrics_fraction": self.dp_metrics_fraction,
            "feature_bounds": None
            if self.feature_bounds is None
            else {k: [lo, hi] for k, (lo, hi) in self.feature_bounds.items()},
            "classes": None if self.classes is None else list(self.classes),
            "recipients": list(self.recipients),
            "publish": self.publish,
            "serving": dict(self.serving),
        }

    def to_json(self) -> bytes:
        """Return the canonical JSON bytes of :meth:`to_dict`."""
        return canonical_json(self.to_dict())


def spec_digest(spec: JobSpec) -> str:
    """Return the SHA-256 (hex) of the spec's canonical JSON: the value owners sign to approve it."""
    return hashlib.sha256(spec.to_json()).hexdigest()


def approval_message(dataset_id: str, spec_sha256: str) -> bytes:
    """Return the exact bytes a dataset owner signs (Ed25519) to approve one job on one dataset."""
    if not _HEX_DIGEST.match(spec_sha256):
        raise _fail("spec_sha256 must be a SHA-256 hex digest")
    _check_id("dataset", dataset_id)
    return canonical_json({"dataset": dataset_id, "purpose": APPROVAL_PURPOSE, "spec_sha256": spec_sha256})


def _check_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID or not value.isprintable():
        raise _fail(f"{name} must be 1..{MAX_ID} printable characters")
    return value


def _number(name: str, value: object, low: float, high: float, *, open_low: bool = False) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise _fail(f"{name} must be a finite number")
    if value > high or value < low or (open_low and value <= low):
        bracket = "(" if open_low else "["
        raise _fail(f"{name} must be within {bracket}{low}, {high}], got {value}")
    return float(value)


def _names(name: str, value: object, limit: int) -> tuple[str, ...]:
    if not isinstance(value, list) or not 0 < len(value) <= limit:
        raise _fail(f"{name} must be a list of 1..{limit} names")
    out = tuple(_check_id(name, v) for v in value)
    if len(set(out)) != len(out):
        raise _fail(f"{name} must not repeat a name")
    return out


def _bounds(value: object) -> dict[str, tuple[float, float]]:
    if not isinstance(value, dict) or not 0 < len(value) <= MAX_FEATURES:
        raise _fail(f"feature_bounds must map 1..{MAX_FEATURES} feature names to [low, high]")
    out: dict[str, tuple[float, float]] = {}
    for key, pair in value.items():
        _check_id("feature_bounds key", key)
        if not isinstance(pair, list) or len(pair) != 2:
            raise _fail("each feature bound must be [low, high]")
        low = _number("feature bound", pair[0], -MAX_BOUND, MAX_BOUND)
        high = _number("feature bound", pair[1], -MAX_BOUND, MAX_BOUND)
        if not low < high:
            raise _fail("each feature bound needs low < high")
        out[key] = (low, high)
    return out


def _classes(value: object) -> tuple[int | str, ...]:
    if not isinstance(value, list) or not 2 <= len(value) <= MAX_CLASSES:
        raise _fail(f"classes must list 2..{MAX_CLASSES} label values")
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    strs = all(isinstance(v, str) and 0 < len(v) <= MAX_ID for v in value)
    if not (ints or strs):
        raise _fail("classes must be all integers or all non-empty strings")
    if len(set(value)) != len(value):
        raise _fail("classes must not repeat a value")
    return tuple(sorted(value))  # type: ignore[type-var]


def _serving(value: object, publish: bool) -> dict[str, Any]:
    if value is None or value == {}:
        return {}
    if not publish:
        raise _fail("serving settings only apply to a published model (publish: true)")
    if not isinstance(value, dict) or set(value) - {"output_policy", "query_budget"}:
        raise _fail("serving must be {output_policy, query_budget}")
    out: dict[str, Any] = {}
    if "output_policy" in value:
        policy = value["output_policy"]
        if not isinstance(policy, dict) or set(policy) - {"mode", "decimals"}:
            raise _fail("serving.output_policy must be {mode, decimals}")
        mode = policy.get("mode", "probabilities")
        decimals = policy.get("decimals", 2)
        if mode not in OUTPUT_MODES:
            raise _fail(f"serving.output_policy.mode must be one of {list(OUTPUT_MODES)}")
        if not isinstance(decimals, int) or isinstance(decimals, bool) or not 0 <= decimals <= 6:
            raise _fail("serving.output_policy.decimals must be 0..6")
        out["output_policy"] = {"mode": mode, "decimals": decimals}
    if "query_budget" in value:
        budget = value["query_budget"]
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 0):
            raise _fail("serving.query_budget must be a non-negative integer or null")
        out["query_budget"] = budget
    return out


_FIELDS = frozenset(
    {
        "v",
        "job",
        "model",
        "datasets",
        "label",
        "features",
        "algorithm",
        "params",
        "validation_fraction",
        "seed",
        "dp_epsilon",
        "dp_metrics_fraction",
        "feature_bounds",
        "classes",
        "recipients",
        "publish",
        "serving",
    }
)


def parse_job_spec(data: object) -> JobSpec:
    """Validate a job spec given as a JSON-decoded object; return it in canonical form.

    Guarantees: every field is of the allowed type and within bounds; the algorithm and each
    hyper-parameter are on the allow-list; a DP job (``dp_epsilon`` set) uses an algorithm with a
    private implementation and declares public ``feature_bounds`` and ``classes`` (bounds are never
    learnt from the private data). Raises ``input.spec_invalid`` with the offending field named.
    """
    if not isinstance(data, dict):
        raise _fail("a job spec must be a JSON object")
    unknown = sorted(str(k) for k in data if k not in _FIELDS)
    if unknown:
        raise _fail(f"unknown spec field(s) {unknown}")
    if data.get("v", SPEC_VERSION) != SPEC_VERSION:
        raise _fail(f"unsupported spec version (this enclave speaks v{SPEC_VERSION})")
    for required in ("job", "model", "datasets", "label", "algorithm", "recipients"):
        if required not in data:
            raise _fail(f"missing required field {required!r}")
    job = _check_id("job", data["job"])
    model = _check_id("model", data["model"])
    datasets = _names("datasets", data["datasets"], MAX_DATASETS)
    label = _check_id("label", data["label"])
    algorithm = data["algorithm"]
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise _fail(f"unknown algorithm {algorithm!r}: choose one of {list(ALGORITHMS)}")
    features = None if data.get("features") is None else _names("features", data["features"], MAX_FEATURES)
    if features is not None and label in features:
        raise _fail("the label may not also be a feature")

    dp_epsilon = data.get("dp_epsilon")
    if dp_epsilon is not None:
        dp_epsilon = _number("dp_epsilon", dp_epsilon, 0.0, MAX_DP_EPSILON, open_low=True)
    dp = dp_epsilon is not None
    params = validate_params(algorithm, data.get("params"), dp=dp)
    validation_fraction = _number("validation_fraction", data.get("validation_fraction", 0.25), 0.05, 0.5)
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise _fail("seed must be an integer in [0, 2**32)")
    dp_metrics_fraction = _number("dp_metrics_fraction", data.get("dp_metrics_fraction", 0.2), 0.05, 0.5)

    bounds = None if data.get("feature_bounds") is None else _bounds(data["feature_bounds"])
    classes = None if data.get("classes") is None else _classes(data["classes"])
    if dp:
        if bounds is None:
            raise _fail(
                "dp_epsilon needs feature_bounds: a public [low, high] per feature "
                "(bounds learnt from the private data would leak it)"
            )
        if classes is None:
            raise _fail("dp_epsilon needs classes: the public list of label values")
        if features is not None and set(features) != set(bounds):
            raise _fail("with dp_epsilon, feature_bounds must name exactly the features")
    if bounds is not None and label in bounds:
        raise _fail("feature_bounds may not name the label")

    recipients = _names("recipients", data["recipients"], MAX_RECIPIENTS)
    for key in recipients:
        if not _HEX_KEY.match(key):
            raise _fail("each recipient must be an X25519 public key: 64 lowercase hex characters")
    publish = data.get("publish", False)
    if not isinstance(publish, bool):
        raise _fail("publish must be true or false")
    serving = _serving(data.get("serving"), publish)
    return JobSpec(
        job=job,
        model=model,
        datasets=datasets,
        label=label,
        algorithm=algorithm,
        params=params,
        recipients=recipients,
        features=features,
        validation_fraction=validation_fraction,
        seed=seed,
        dp_epsilon=dp_epsilon,
        dp_metrics_fraction=dp_metrics_fraction,
        feature_bounds=bounds,
        classes=classes,
        publish=publish,
        serving=serving,
    )


def parse_job_spec_json(raw: bytes) -> JobSpec:
    """Parse and validate a job spec from JSON bytes; raises ``input.spec_invalid`` on any defect."""
    if len(raw) > 4 * 1024 * 1024:
        raise _fail("a job spec is at most 4 MiB")
    try:
        data = loads_json(raw)
    except (ValueError, RecursionError) as exc:
        raise _fail(f"the job spec is not valid JSON of at most {MAX_JSON_DEPTH} nesting levels") from exc
    return parse_job_spec(data)


# -- dataset schemas --------------------------------------------------------------------------------

_INTEGER = re.compile(r"^u?int(8|16|32|64)$")
_FLOAT = ("halffloat", "float", "double", "float16", "float32", "float64")
_STRING = ("string", "large_string", "utf8", "large_utf8")


def canonical_type(arrow_type: str) -> str:
    """Map an Apache Arrow type name (``str(pyarrow type)``) to a canonical schema type.

    ``integer`` (any signed/unsigned width), ``float`` (any width), ``boolean``, ``string``,
    else ``other``. Files written with other widths of the same kind thus share a schema.
    """
    if _INTEGER.match(arrow_type):
        return "integer"
    if arrow_type in _FLOAT:
        return "float"
    if arrow_type == "bool":
        return "boolean"
    if arrow_type in _STRING:
        return "string"
    return "other"


def schema_digest(columns: Sequence[tuple[str, str]]) -> str:
    """Return the SHA-256 (hex) of a dataset schema: ordered ``(name, canonical type)`` pairs.

    This is the ``schema_sha256`` a data owner declares in its dataset config; the enclave checks
    that the decrypted file has exactly this schema.
    """
    listing = []
    for name, kind in columns:
        if kind not in CANONICAL_TYPES:
            raise _fail(f"unknown canonical column type {kind!r}")
        listing.append([name, kind])
    return hashlib.sha256(canonical_json({"columns": listing, "purpose": SCHEMA_PURPOSE})).hexdigest()


def feature_order(spec: JobSpec, columns: Sequence[str], types: Mapping[str, str]) -> tuple[str, ...]:
    """Return the feature columns of a job for a dataset with ``columns`` (no data needed).

    Guarantees: the label is present, every feature exists and has a numeric canonical type, and
    with DP every feature has a declared bound. Messages name positions, never column names: the
    schema is confidential and errors travel through the host. Raises ``input.schema_mismatch``.
    """
    if spec.label not in types:
        raise InputError("input.schema_mismatch", "the label column named in the spec is not in the dataset")
    if spec.features is not None:
        features = spec.features
        missing = [i for i, name in enumerate(features) if name not in types]
        if missing:
            raise InputError(
                "input.schema_mismatch",
                f"{len(missing)} feature(s) named in the spec are not in the dataset "
                f"(spec positions {missing[:5]})",
            )
    elif spec.feature_bounds is not None and spec.dp:
        features = tuple(c for c in columns if c != spec.label)
        unbounded = [i for i, name in enumerate(features) if name not in spec.feature_bounds]
        if unbounded:
            raise InputError(
                "input.schema_mismatch",
                f"{len(unbounded)} dataset column(s) have no declared feature bound "
                f"(feature positions {unbounded[:5]}): list the features or bound them all",
            )
    else:
        features = tuple(c for c in columns if c != spec.label)
    if not features:
        raise InputError("input.schema_mismatch", "the job has no feature columns")
    if len(features) > MAX_FEATURES:
        raise InputError("input.too_large", f"at most {MAX_FEATURES} features per job")
    bad = [(i, types[name]) for i, name in enumerate(features) if types[name] not in NUMERIC_TYPES]
    if bad:
        position, kind = bad[0]
        raise InputError(
            "input.schema_mismatch",
            f"{len(bad)} feature column(s) are not numeric (first at feature position {position}, "
            f"type {kind}): features must be integer, float or boolean",
        )
    return tuple(features)


__all__ = [
    "ALGORITHMS",
    "DP_ALGORITHMS",
    "PARAMS",
    "JobSpec",
    "ParamRule",
    "approval_message",
    "canonical_json",
    "canonical_type",
    "feature_order",
    "loads_json",
    "parse_job_spec",
    "parse_job_spec_json",
    "schema_digest",
    "spec_digest",
    "validate_params",
]
