"""A real platform server on loopback with a real simulated enclave process, and its parties."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from sealedml.attestation.measurement import compute_measurement
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.client import PreparedModel, SealedMLClient, from_estimator
from sealedml.platform.launch import platform_in_background
from sealedml.platform.server import BackgroundServer
from sealedml.platform.settings import Settings


@dataclass
class Platform:
    server: BackgroundServer
    data_dir: Path
    admin_token: str
    policy: AppraisalPolicy

    @property
    def url(self) -> str:
        return self.server.url

    def account(self, name: str, role: str) -> str:
        with SealedMLClient(self.url, self.admin_token) as admin:
            return str(admin.create_account(name, role)["token"])

    def client(self, token: str | None, policy: AppraisalPolicy | None = None) -> SealedMLClient:
        return SealedMLClient(self.url, token, policy=policy or self.policy)


def start_platform(data_dir: Path, **settings: int) -> Iterator[Platform]:
    with platform_in_background(Settings(data_dir=data_dir, **settings)) as server:
        with SealedMLClient(server.url) as anonymous:
            root = hashlib.sha256(anonymous.fetch_evidence(os.urandom(32)).certificates[-1]).hexdigest()
        policy = AppraisalPolicy(
            allow_simulated=True,
            reference_measurements=(compute_measurement(),),
            max_evidence_age_seconds=300,
            simulated_roots=(root,),
        )
        token = (data_dir / "admin-token").read_text().strip()
        yield Platform(server, data_dir, token, policy)


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("platform"))


@dataclass(frozen=True)
class CancerData:
    train: pd.DataFrame
    test: pd.DataFrame
    features: list[str]
    prepared: PreparedModel


@pytest.fixture(scope="session")
def cancer() -> CancerData:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = load_breast_cancer(as_frame=True).frame
    train, test = train_test_split(frame, test_size=0.2, random_state=3, stratify=frame["target"])
    features = [c for c in frame.columns if c != "target"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
        train[features], train["target"]
    )
    return CancerData(train, test, features, from_estimator(model))


_counter = iter(range(1_000_000))


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names that never collide across tests sharing the session server."""
    return lambda prefix: f"{prefix}-{os.getpid()}-{next(_counter)}"


@pytest.fixture
def new_platform() -> Callable[[Path], Iterator[Platform]]:
    """Start a dedicated platform (for tests that kill enclaves or scan storage)."""
    return start_platform
