"""The enclave measurement of the simulated TEE backend.

On hardware the CPU measures what it launches (SGX MRENCLAVE, SNP/TDX launch digest). The
simulated backend stands in for that with a SHA-384 over the trusted computing base: every
``*.py`` file the enclave process executes from the ``sealedml`` package, and the pinned versions
of the runtime it depends on. ``sealedml measure`` prints the same value, so a client can pin it
in ``reference_measurements`` before trusting an enclave.

Encoding (version 1), every item length-prefixed with an 8-byte big-endian length so that no two
different inputs share an encoding::

    SHA-384( lp("sealedml-measurement-v1")
             || lp("files")   || u64(n) || for each file, sorted by POSIX path: lp(path) || lp(content)
             || lp("runtime") || u64(m) || for each "name==version", sorted:  lp(entry) )

This module uses only the standard library; the enclave imports it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from importlib import metadata
from pathlib import Path

from sealedml.errors import ConfigError

__all__ = [
    "MEASUREMENT_CONTEXT",
    "RUNTIME_DISTRIBUTIONS",
    "TCB_PATHS",
    "compute_measurement",
    "runtime_versions",
    "tcb_files",
    "tcb_manifest",
]

MEASUREMENT_CONTEXT = b"sealedml-measurement-v1"

TCB_PATHS: tuple[str, ...] = (
    "__init__.py",
    "errors.py",
    "enclave/",
    "crypto/",
    "attestation/__init__.py",
    "attestation/report_data.py",
    "attestation/measurement.py",
    "attestation/producers/",
    "attestation/evidence/__init__.py",
    "attestation/evidence/bundle.py",
    # Peer attestation (enclave/peers.py) imports the verifier of its own TEE type on first use.
    "attestation/claims.py",
    "attestation/evidence/simulated.py",
    "attestation/evidence/snp.py",
    "attestation/evidence/snp_report.py",
    "attestation/evidence/dcap.py",
    "attestation/evidence/dcap_quote.py",
    "attestation/evidence/dcap_collateral.py",
    "training_spec.py",
    "safejson.py",
)
"""What the enclave process executes, relative to the ``sealedml`` package directory.

A trailing ``/`` means the directory, recursively (``*.py`` files only). Every module the enclave
imports must be covered, including the ``__init__.py`` of each package on the way, because Python
runs them on import; ``tests/attestation`` checks this against a real import.
"""

RUNTIME_DISTRIBUTIONS: tuple[str, ...] = (
    "cryptography",
    "numpy",
    "onnxruntime",
    "onnx",
    "scikit-learn",
    "scipy",
    "skl2onnx",
    "diffprivlib",
    "pyarrow",
    "dcap-qvl",
)
"""Third-party distributions whose versions are part of the measurement."""

_NOT_INSTALLED = "not-installed"


def _default_package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def _python_files(directory: Path) -> list[Path]:
    # Symlinked directories are followed (Python imports through them), each real directory once.
    # __pycache__ is walked too: a stray *.py placed there is measured, not hidden.
    found: list[Path] = []
    seen: set[str] = set()
    for root, dirs, files in os.walk(directory, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        found.extend(Path(root) / name for name in files if name.endswith(".py"))
    return found


def tcb_files(package_dir: Path | None = None) -> list[tuple[str, Path]]:
    """Return the measured files as ``(posix path relative to package_dir, absolute path)``.

    Guarantees: sorted by relative path, no duplicates, ``*.py`` files only. A listed file or
    directory that does not exist contributes nothing (its absence still changes the measurement,
    since the path list is hashed). Raises ``ConfigError("config.invalid")`` if ``package_dir`` is
    not a package directory (no ``__init__.py``).
    """
    base = (package_dir if package_dir is not None else _default_package_dir()).resolve()
    if not (base / "__init__.py").is_file():
        raise ConfigError("config.invalid", f"{base} is not a sealedml package directory (no __init__.py)")
    selected: dict[str, Path] = {}
    for entry in TCB_PATHS:
        target = base / entry.rstrip("/")
        if entry.endswith("/"):
            candidates = _python_files(target) if target.is_dir() else []
        else:
            candidates = [target] if target.is_file() else []
        for path in candidates:
            selected[path.relative_to(base).as_posix()] = path
    return sorted(selected.items())


def runtime_versions() -> list[str]:
    """Return the sorted ``name==version`` runtime pins: ``python==major.minor`` and each distribution.

    A distribution that is not installed is recorded as ``name==not-installed``, so the value is
    always defined and a different environment always yields a different measurement.
    """
    entries = [f"python=={sys.version_info.major}.{sys.version_info.minor}"]
    for name in RUNTIME_DISTRIBUTIONS:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = _NOT_INSTALLED
        entries.append(f"{name}=={version}")
    return sorted(entries)


def _read_files(package_dir: Path | None) -> list[tuple[str, bytes]]:
    return [(rel, path.read_bytes()) for rel, path in tcb_files(package_dir)]


def tcb_manifest(package_dir: Path | None = None) -> list[tuple[str, str]]:
    """Return what the measurement covers, for display (``sealedml measure --verbose``).

    Guarantees: one ``(relative path, sha384 hex of the file content)`` per measured file, in
    measurement order, followed by one ``("runtime:name==version", "")`` per runtime pin. The
    measurement is a function of exactly this list (see the module docstring for the encoding).
    """
    files = [(rel, hashlib.sha384(content).hexdigest()) for rel, content in _read_files(package_dir)]
    runtime = [(f"runtime:{entry}", "") for entry in runtime_versions()]
    return files + runtime


def compute_measurement(package_dir: Path | None = None) -> str:
    """Return the simulated enclave measurement: 96 lowercase hex characters (SHA-384).

    Guarantees: deterministic across processes and machines for the same TCB file contents,
    Python ``major.minor`` and runtime distribution versions; any change to a measured file's
    content or path, or to a pinned version, changes the value. ``package_dir`` defaults to the
    installed ``sealedml`` package (pass a copy to measure another tree).
    """
    files = _read_files(package_dir)
    runtime = runtime_versions()
    digest = hashlib.sha384(_lp(MEASUREMENT_CONTEXT))
    digest.update(_lp(b"files") + len(files).to_bytes(8, "big"))
    for rel, content in files:
        digest.update(_lp(rel.encode("utf-8", "surrogateescape")) + _lp(content))
    digest.update(_lp(b"runtime") + len(runtime).to_bytes(8, "big"))
    for entry in runtime:
        digest.update(_lp(entry.encode("utf-8")))
    return digest.hexdigest()
