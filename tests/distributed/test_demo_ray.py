"""`sealedml demo ray` end to end: the demo's own results are checked, not its printout."""

from __future__ import annotations

import pandas as pd
import pytest
import ray
from rich.console import Console

from sealedml.demo_ray import run_ray_demo


@pytest.mark.ray_heavy
def test_the_ray_demo_rejects_another_build_survives_a_killed_worker_and_trains(tmp_path):
    was_initialized = ray.is_initialized()
    console = Console(record=True, width=140)
    results = run_ray_demo(console, tmp_path)

    # Attestation: three workers of this build serve one cluster identity; the other build never joined.
    assert results["workers"] == ["worker-0", "worker-1", "worker-2"]
    assert results["rejected"] == [("worker-3", "attestation.measurement_mismatch")]
    assert results["cluster_keys"] == 1

    # The batch: complete, in order, one job and one settled charge per shard, despite the kill.
    batch = results["batch"]
    assert batch["rows"] == 200_000 and batch["shards"] == batch["expected_shards"] == 40
    assert batch["distinct_jobs"] == batch["shards"]
    assert batch["in_order"] is True and batch["accuracy"] >= 0.9
    assert batch["billed_once"] is True and batch["paid"] == 200_000
    assert len(pd.read_parquet(tmp_path / "predictions.parquet")) == 200_000
    assert len(batch["killed"]) == 1 and batch["killed"][0] != "worker-0"
    (replacement,) = batch["replacements"]
    assert replacement.startswith(batch["killed"][0] + ".")

    # Data-parallel training across the three workers; the receipt checked and logged; paid once.
    training = results["training"]
    assert training["status"] == "done" and training["accuracy"] >= 0.9
    assert training["parallel"]["shards"] == 3 and training["parallel"]["rounds"] >= 10
    assert training["progress_steps"], "no round progress between 30 % and 90 % was seen"
    assert training["receipt_key_is_cluster_key"] is True and training["logged"] is True
    assert training["paid"] == 7

    text = console.export_text()
    assert "SIMULATED TEE" in text and "REJECTED" in text and "billed exactly once per shard" in text
    if not was_initialized:  # the demo stops the Ray runtime it started
        assert not ray.is_initialized()
