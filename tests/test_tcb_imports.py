"""The enclave is the trusted computing base: it must not import the host's code or libraries."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import sealedml

PACKAGE = Path(sealedml.__file__).parent
FORBIDDEN = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "httpx", "typer", "rich", "pandas")
FORBIDDEN_OWN = ("sealedml.platform", "sealedml.market", "sealedml.client", "sealedml.tee", "sealedml.cli")
ALLOWED_OWN = (
    "sealedml.enclave",
    "sealedml.crypto",
    "sealedml.errors",
    "sealedml.attestation.report_data",
    "sealedml.attestation.measurement",
    "sealedml.attestation.producers",
    "sealedml.attestation.evidence.bundle",
    # enclave/peers.py verifies a peer's evidence inside the enclave (imported per TEE type on use)
    "sealedml.attestation.claims",
    "sealedml.attestation.evidence.simulated",
    "sealedml.attestation.evidence.snp",
    "sealedml.attestation.evidence.dcap",
    "sealedml.training_spec",
    "sealedml.safejson",
)


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_enclave_sources_import_only_the_tcb() -> None:
    offenders = []
    for path in sorted((PACKAGE / "enclave").rglob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in FORBIDDEN or name.startswith(FORBIDDEN_OWN):
                offenders.append(f"{path.name}: {name}")
            elif name.startswith("sealedml") and not name.startswith(ALLOWED_OWN) and name != "sealedml":
                offenders.append(f"{path.name}: {name}")
    assert offenders == []


def test_running_enclave_loads_no_host_module() -> None:
    """Import the enclave entry point in a fresh interpreter and list what actually got loaded."""
    code = (
        "import sys, json, sealedml.enclave.__main__, sealedml.enclave.runtime, "
        "sealedml.enclave.platforms; print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    bad = [m for m in loaded if m.split(".")[0] in FORBIDDEN or m.startswith(FORBIDDEN_OWN)]
    assert bad == []
