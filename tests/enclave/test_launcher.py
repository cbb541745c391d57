"""Choosing the enclave backend: launcher arguments, `sealedml measure --tee`, `serve --tee` errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sealedml.cli import app
from sealedml.errors import ConfigError, EnclaveError
from sealedml.tee.launcher import launch_enclave

runner = CliRunner()


@pytest.mark.parametrize(
    ("tee", "command"),
    [("keystone", None), ("sgx", None), ("sgx", ()), ("sev-snp", ["gramine-sgx", "x"]), ("simulated", ["x"])],
)
def test_bad_backend_choices_are_config_errors(tmp_path: Path, tee: str, command) -> None:
    with pytest.raises(ConfigError) as info:
        launch_enclave(tmp_path, tee=tee, command=command)
    assert info.value.code == "config.invalid"


def test_cvm_backend_without_the_tee_interface_fails_cleanly(tmp_path: Path) -> None:
    """On this machine there is no configfs-tsm: the enclave exits and the first call says so."""
    client = launch_enclave(tmp_path, tee="sev-snp")
    try:
        import asyncio

        with pytest.raises(EnclaveError) as info:
            asyncio.run(client.hello())
        assert info.value.code == "enclave.unavailable"
    finally:
        client.close()


@pytest.mark.parametrize("tee", ["sgx", "snp", "sev-snp", "tdx"])
def test_measure_tee_says_what_to_compute_on_the_target(tee: str) -> None:
    result = runner.invoke(app, ["measure", "--tee", tee, "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["complete"] is False
    assert any(value["value"] is None and value["commands"] for value in answer["values"])


def test_measure_simulated_pins_the_software_measurement() -> None:
    from sealedml.attestation.measurement import compute_measurement

    result = runner.invoke(app, ["measure", "--tee", "simulated", "--json"])
    assert result.exit_code == 0, result.output
    assert compute_measurement() in result.stdout


def test_measure_unknown_tee_is_refused() -> None:
    result = runner.invoke(app, ["measure", "--tee", "keystone"])
    assert result.exit_code == 1 and "config.invalid" in result.stderr
