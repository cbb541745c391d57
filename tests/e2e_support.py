"""Parties on a dedicated platform (for tests that start their own server)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from sealedml.attestation.measurement import compute_measurement
from sealedml.attestation.policy import AppraisalPolicy
from sealedml.client import SealedMLClient


def policy_for(url: str) -> AppraisalPolicy:
    """The development policy for a local simulated platform (its root pinned on first use)."""
    with SealedMLClient(url) as anonymous:
        root = hashlib.sha256(anonymous.fetch_evidence(os.urandom(32)).certificates[-1]).hexdigest()
    return AppraisalPolicy(
        allow_simulated=True, reference_measurements=(compute_measurement(),), simulated_roots=(root,)
    )


def start_parties(url: str, data_dir: Path, cancer: Any) -> tuple[SealedMLClient, str]:
    """Create a provider who publishes the cancer model and a data owner; return the owner's client."""
    admin_token = (data_dir / "admin-token").read_text().strip()
    policy = policy_for(url)
    with SealedMLClient(url, admin_token) as admin:
        provider = admin.create_account("provider", "provider")["token"]
        owner = admin.create_account("owner", "data_owner")["token"]
    with SealedMLClient(url, provider, policy=policy) as client:
        model_id = client.publish_model("model", cancer.prepared).model.id
    return SealedMLClient(url, owner, policy=policy), model_id


def invoke_cli(args: list[str], env: dict[str, str], token: str | None = None) -> Any:
    """Run the ``sealedml`` CLI in-process with only the ``SEALEDML_*`` entries of ``env`` (and
    ``token`` as SEALEDML_TOKEN); returns typer's result (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from sealedml.cli import app

    environment = {k: v for k, v in env.items() if k.startswith("SEALEDML_")}
    if token:
        environment["SEALEDML_TOKEN"] = token
    return CliRunner().invoke(app, args, env=environment)
