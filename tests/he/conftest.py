"""Shared fixtures for the HE tests: real datasets and keys generated once per session."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from sealedml.he.context import load_public_context
from sealedml.he.keys import HEKeys


@pytest.fixture(scope="session")
def cancer():
    data = load_breast_cancer()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.2, random_state=0, stratify=data.target
    )
    columns = [name.replace(" ", "_") for name in data.feature_names]
    return x_train, x_test, y_train, y_test, columns


@pytest.fixture(scope="session")
def linear_keys() -> HEKeys:
    return HEKeys.generate("linear")


@pytest.fixture(scope="session")
def linear_ctx(linear_keys):
    return load_public_context(linear_keys.public_context())


@pytest.fixture(scope="session")
def mlp_keys() -> HEKeys:
    return HEKeys.generate("mlp")


@pytest.fixture(scope="session")
def mlp_ctx(mlp_keys):
    return load_public_context(mlp_keys.public_context())


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def linear_galois_keys() -> HEKeys:
    return HEKeys.generate("linear", galois=True)


@pytest.fixture(scope="session")
def linear_galois_ctx(linear_galois_keys):
    return load_public_context(linear_galois_keys.public_context())
