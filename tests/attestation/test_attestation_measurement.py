"""The simulated enclave measurement: deterministic, and sensitive to exactly the TCB."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sealedml
from sealedml.attestation import measurement
from sealedml.attestation.measurement import compute_measurement, tcb_files, tcb_manifest
from sealedml.errors import ConfigError

PACKAGE_DIR = Path(sealedml.__file__).resolve().parent


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    target = tmp_path / "sealedml"
    shutil.copytree(PACKAGE_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def _subprocess_measurement() -> str:
    code = "from sealedml.attestation.measurement import compute_measurement; print(compute_measurement())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_measurement_is_sha384_hex():
    value = compute_measurement()
    assert len(value) == 96 and value == value.lower()
    bytes.fromhex(value)


def test_measurement_deterministic_across_processes():
    first, second = _subprocess_measurement(), _subprocess_measurement()
    assert first == second == compute_measurement()


def test_copy_of_package_measures_the_same(package_copy):
    assert compute_measurement(package_copy) == compute_measurement(PACKAGE_DIR)


@pytest.mark.parametrize(
    "relative",
    [
        "errors.py",
        "__init__.py",
        "attestation/__init__.py",
        "attestation/report_data.py",
        "attestation/measurement.py",
        "attestation/producers/simulated.py",
        "attestation/evidence/__init__.py",
        "attestation/evidence/bundle.py",
    ],
)
def test_editing_a_tcb_file_changes_measurement(package_copy, relative):
    before = compute_measurement(package_copy)
    path = package_copy / relative
    path.write_bytes(path.read_bytes() + b"\n# edited\n")
    assert compute_measurement(package_copy) != before


@pytest.mark.parametrize("directory", ["enclave", "crypto", "attestation/producers"])
def test_adding_a_module_to_a_tcb_directory_changes_measurement(package_copy, directory):
    before = compute_measurement(package_copy)
    (package_copy / directory).mkdir(parents=True, exist_ok=True)
    (package_copy / directory / "zz_injected.py").write_text("import os\n")
    assert compute_measurement(package_copy) != before


def test_renaming_a_tcb_file_changes_measurement(package_copy):
    before = compute_measurement(package_copy)
    (package_copy / "attestation/report_data.py").rename(package_copy / "attestation/report_data2.py")
    assert compute_measurement(package_copy) != before


def test_encoding_is_unambiguous(package_copy, tmp_path):
    """Two trees whose paths and contents concatenate to the same bytes measure differently.

    Without length prefixes both would hash ``crypto/zz_a.py crypto/zz_b.py crypto/zz_c.py`` (same
    file count too), so this fails if the encoding ever loses its prefixes.
    """
    other = tmp_path / "other" / "sealedml"
    shutil.copytree(package_copy, other)
    (package_copy / "crypto").mkdir(exist_ok=True)
    (other / "crypto").mkdir(exist_ok=True)
    (package_copy / "crypto" / "zz_a.py").write_text("crypto/zz_b.py")
    (package_copy / "crypto" / "zz_c.py").write_text("")
    (other / "crypto" / "zz_a.py").write_text("")
    (other / "crypto" / "zz_b.py").write_text("crypto/zz_c.py")
    assert len(tcb_files(package_copy)) == len(tcb_files(other))
    assert compute_measurement(package_copy) != compute_measurement(other)


@pytest.mark.parametrize(
    "relative",
    ["attestation/policy.py", "attestation/verifier.py", "attestation/appraisal.py", "py.typed"],
)
def test_files_outside_the_tcb_do_not_change_measurement(package_copy, relative):
    before = compute_measurement(package_copy)
    path = package_copy / relative
    path.write_bytes(path.read_bytes() + b"\n# edited\n")
    (package_copy / "crypto" / "NOTES.txt").write_text("not python\n")
    assert compute_measurement(package_copy) == before


def test_runtime_version_changes_measurement(monkeypatch):
    before = compute_measurement()
    real_version = measurement.metadata.version

    def fake_version(name: str) -> str:
        return "0.0.0-patched" if name == "numpy" else real_version(name)

    monkeypatch.setattr(measurement.metadata, "version", fake_version)
    assert "numpy==0.0.0-patched" in measurement.runtime_versions()
    assert compute_measurement() != before


def test_missing_runtime_distribution_is_recorded(monkeypatch):
    def missing(name: str) -> str:
        raise measurement.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(measurement.metadata, "version", missing)
    assert "onnxruntime==not-installed" in measurement.runtime_versions()


def test_manifest_lists_every_measured_file_and_runtime_pin():
    manifest = tcb_manifest()
    files = [(path, digest) for path, digest in manifest if not path.startswith("runtime:")]
    runtime = [path for path, _ in manifest if path.startswith("runtime:")]
    assert [path for path, _ in files] == sorted(path for path, _ in files)
    for path, digest in files:
        assert path.endswith(".py")
        assert hashlib.sha384((PACKAGE_DIR / path).read_bytes()).hexdigest() == digest
    paths = {path for path, _ in files}
    assert {"__init__.py", "errors.py", "attestation/report_data.py", "attestation/measurement.py"} <= paths
    assert "attestation/producers/simulated.py" in paths
    # Peer attestation inside the enclave uses the evidence verifiers, never the client-side
    # policy machinery.
    assert "attestation/evidence/simulated.py" in paths
    assert not paths & {"attestation/policy.py", "attestation/verifier.py", "attestation/appraisal.py"}
    assert any(path.startswith("crypto/") for path in paths)
    assert runtime == sorted(runtime)
    assert {entry.split("==")[0] for entry in runtime} == {
        "runtime:python",
        "runtime:numpy",
        "runtime:onnxruntime",
        "runtime:cryptography",
        "runtime:onnx",
        "runtime:scikit-learn",
        "runtime:scipy",
        "runtime:skl2onnx",
        "runtime:diffprivlib",
        "runtime:pyarrow",
        "runtime:dcap-qvl",
    }
    assert "training_spec.py" in paths


def test_not_a_package_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        compute_measurement(tmp_path)
    assert info.value.code == "config.invalid"


ENCLAVE_SIDE_IMPORTS = """
import json, sys
import sealedml.attestation
import sealedml.attestation.report_data
import sealedml.attestation.measurement
import sealedml.attestation.producers
import sealedml.attestation.producers.simulated
import sealedml.attestation.evidence.bundle
print(json.dumps({name: getattr(module, "__file__", None) for name, module in sys.modules.items()}))
"""


def test_enclave_side_imports_stay_inside_the_measured_tcb():
    """What the enclave imports from attestation/ is measured and pulls in only stdlib + cryptography."""
    out = subprocess.run(
        [sys.executable, "-c", ENCLAVE_SIDE_IMPORTS], capture_output=True, text=True, check=True
    )
    modules: dict[str, str | None] = json.loads(out.stdout)
    measured = {path for path, _ in tcb_files()}
    loaded_sealedml = {name: file for name, file in modules.items() if name.split(".")[0] == "sealedml"}
    assert "sealedml.attestation.report_data" in loaded_sealedml
    for name, file in loaded_sealedml.items():
        assert file is not None, name
        assert Path(file).resolve().relative_to(PACKAGE_DIR).as_posix() in measured, name
    for verifier_side in ("policy", "verifier", "claims", "evidence.simulated"):
        assert f"sealedml.attestation.{verifier_side}" not in modules
    allowed = set(sys.stdlib_module_names) | {"sealedml", "cryptography", "_cffi_backend", "cffi"}
    third_party = {name.split(".")[0] for name in modules} - allowed
    assert not {name for name in third_party if not name.startswith("_")}, third_party


def test_python_files_anywhere_under_a_tcb_directory_are_measured(package_copy):
    before = compute_measurement(package_copy)
    (package_copy / "crypto" / "NOTES.txt").write_text("not python\n")
    (package_copy / "crypto" / "compiled.pyc").write_bytes(b"\x00")
    assert compute_measurement(package_copy) == before
    cache = package_copy / "crypto" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "hidden.py").write_text("")
    assert "crypto/__pycache__/hidden.py" in {rel for rel, _ in tcb_files(package_copy)}
    assert compute_measurement(package_copy) != before


def test_symlinked_directory_inside_the_tcb_is_measured_and_cycles_end(package_copy, tmp_path):
    before = compute_measurement(package_copy)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "payload.py").write_text("print('hi')\n")
    (outside / "loop").symlink_to(outside)
    (package_copy / "enclave").mkdir(exist_ok=True)
    (package_copy / "enclave" / "linked").symlink_to(outside)
    assert "enclave/linked/payload.py" in {rel for rel, _ in tcb_files(package_copy)}
    assert compute_measurement(package_copy) != before
