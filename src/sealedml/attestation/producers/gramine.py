"""Intel SGX through Gramine: DCAP quotes from ``/dev/attestation``, the manifest, and SIGSTRUCT.

Inside a Gramine-SGX enclave (``sgx.remote_attestation = "dcap"``) the LibOS offers pseudo-files
(Gramine documentation, "Attestation and Secret Provisioning"):

- ``/dev/attestation/attestation_type``: ``none``, ``epid`` or ``dcap``;
- ``/dev/attestation/user_report_data``: write the 64-byte REPORTDATA, then
- ``/dev/attestation/quote``: read the quote (SGX quote v3) that embeds it and the PCK chain;
- ``/dev/attestation/keys/_sgx_mrenclave``: the 16-byte SGX sealing key bound to MRENCLAVE
  (and to this CPU).

The same ``_sgx_mrenclave`` key encrypts the state directory mount of the manifest below, so the
application must not use it directly (Gramine's manifest documentation asks for a KDF): the
sealing secret handed to the enclave is ``HKDF-SHA256(key, salt="sealedml-gramine-sealing-v1")``.

Host side: :func:`gramine_manifest` writes the manifest template for the enclave worker, and
:func:`read_sigstruct` reads what ``gramine-sgx-sign`` produced (Intel SDM vol. 3D, "SIGSTRUCT"),
so a client can learn the MRENCLAVE and MRSIGNER to pin.

This module uses the standard library and ``cryptography``; the enclave imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import sys
import sysconfig
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealedml.attestation.measurement import RUNTIME_DISTRIBUTIONS, tcb_files
from sealedml.attestation.producers.device_files import malformed, read_bounded, unavailable
from sealedml.errors import ConfigError

__all__ = [
    "ATTESTATION_ROOT",
    "MAX_QUOTE_SIZE",
    "SIGSTRUCT_SIZE",
    "STATE_MOUNT",
    "GramineAttestation",
    "Sigstruct",
    "check_sgx_quote",
    "gramine_manifest",
    "read_sigstruct",
    "read_sigstruct_mrenclave",
]

ATTESTATION_ROOT = Path("/dev/attestation")
MAX_QUOTE_SIZE = 64 * 1024
REPORT_DATA_SIZE = 64
SEALING_KEY_NAME = "_sgx_mrenclave"
SEALING_KEY_SIZE = 16
_SEALING_SALT = b"sealedml-gramine-sealing-v1"
_SEALING_INFO = b"sealedml platform sealing secret"

STATE_MOUNT = "/sealedml-state"
"""Where the encrypted state directory appears inside the enclave (``--platform-dir``)."""

_ECDSA_P256 = 2
_SGX_TEE_TYPE = 0
_QUOTE_HEADER = struct.Struct("<HHI")
_SGX_SIGNATURE_LEN_AT = 48 + 384


def check_sgx_quote(quote: bytes) -> bytes:
    """Return ``quote`` if it has the shape of an SGX DCAP quote (v3/v4, ECDSA P-256, TEE type 0).

    Guarantees: the header, the 384-byte report body and the signature data all lie inside
    ``quote`` (trailing padding is allowed). Raises ``attestation.malformed`` otherwise; no
    signature is checked here.
    """
    if len(quote) < _SGX_SIGNATURE_LEN_AT + 4:
        raise malformed(f"the SGX quote is truncated ({len(quote)} bytes)")
    version, key_type, tee_type = _QUOTE_HEADER.unpack_from(quote)
    if version not in (3, 4) or key_type != _ECDSA_P256 or tee_type != _SGX_TEE_TYPE:
        raise malformed(
            f"not an SGX ECDSA quote (version {version}, key type {key_type}, TEE type {tee_type:#x})"
        )
    signature_length = int.from_bytes(quote[_SGX_SIGNATURE_LEN_AT : _SGX_SIGNATURE_LEN_AT + 4], "little")
    if _SGX_SIGNATURE_LEN_AT + 4 + signature_length > len(quote):
        raise malformed(
            f"the SGX quote is truncated: its signature data needs {signature_length} bytes, "
            f"only {len(quote) - _SGX_SIGNATURE_LEN_AT - 4} are present"
        )
    return quote


class GramineAttestation:
    """Gramine's ``/dev/attestation`` under ``root`` (a fake tree in tests), for DCAP only.

    Construct with :meth:`open`. Quote requests are serialised: the pseudo-files hold one
    REPORTDATA per process, so two threads must not interleave write and read.
    """

    def __init__(self, root: Path) -> None:
        """Wrap an already-checked ``root``; use :meth:`open` instead."""
        self.root = Path(root)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, root: Path = ATTESTATION_ROOT) -> GramineAttestation:
        """Open ``root`` after checking that Gramine offers DCAP attestation there.

        Raises ``enclave.platform_unavailable`` when ``root`` is missing (not inside Gramine-SGX,
        or a manifest without ``sgx.remote_attestation``) or the attestation type is not ``dcap``.
        """
        root = Path(root)
        type_path = root / "attestation_type"
        if not type_path.is_file():
            raise unavailable(
                f"{type_path} does not exist: this process is not running inside Gramine-SGX with "
                'sgx.remote_attestation = "dcap" in its manifest'
            )
        kind = (
            read_bounded(type_path, 64, "attestation_type").decode("ascii", "replace").strip().strip("\x00")
        )
        if kind != "dcap":
            raise unavailable(
                f'Gramine reports attestation type {kind!r}, not "dcap": set sgx.remote_attestation = '
                '"dcap" in the manifest and install the DCAP quote provider library (QPL)'
            )
        return cls(root)

    def quote(self, report_data: bytes) -> bytes:
        """Return a DCAP quote whose REPORTDATA is ``report_data`` (exactly 64 bytes).

        Guarantees: ``report_data`` was written to ``user_report_data`` immediately before the
        quote was read, with no other quote request in this process in between; the result has
        the shape of an SGX quote (:func:`check_sgx_quote`). Raises
        ``enclave.platform_unavailable`` on I/O errors and ``attestation.malformed`` on a bad quote.
        """
        if not isinstance(report_data, bytes) or len(report_data) != REPORT_DATA_SIZE:
            raise ValueError(f"report_data must be {REPORT_DATA_SIZE} bytes")
        with self._lock:
            target = self.root / "user_report_data"
            try:
                fd = os.open(target, os.O_WRONLY)
                try:
                    written = os.write(fd, report_data)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise unavailable(f"writing {target} failed: {exc.strerror or type(exc).__name__}") from None
            if written != REPORT_DATA_SIZE:
                raise unavailable(f"{target} accepted {written} of {REPORT_DATA_SIZE} bytes")
            quote = read_bounded(self.root / "quote", MAX_QUOTE_SIZE, "quote")
        return check_sgx_quote(quote)

    def sealing_key(self) -> bytes:
        """Return the raw 16-byte ``_sgx_mrenclave`` key (bound to MRENCLAVE and this CPU)."""
        key = read_bounded(
            self.root / "keys" / SEALING_KEY_NAME, SEALING_KEY_SIZE, "the MRENCLAVE sealing key"
        )
        if len(key) != SEALING_KEY_SIZE:
            raise malformed(f"the MRENCLAVE sealing key must be {SEALING_KEY_SIZE} bytes, got {len(key)}")
        return key

    def sealing_secret(self) -> bytes:
        """Return the 32-byte sealing secret: HKDF-SHA256 of the MRENCLAVE key (never the key itself).

        Guarantees: the same enclave (MRENCLAVE) on the same CPU always gets the same value; any
        other enclave or CPU gets an unrelated one.
        """
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SEALING_SALT, info=_SEALING_INFO).derive(
            self.sealing_key()
        )


# -- SIGSTRUCT --------------------------------------------------------------------------------------------

SIGSTRUCT_SIZE = 1808
_SIGSTRUCT_HEADER1 = bytes.fromhex("06000000e10000000000010000000000")
_SIGSTRUCT_HEADER2 = bytes.fromhex("01010000600000006000000001000000")
_SIGSTRUCT_VENDORS = (0x0000, 0x8086)
_SIGSTRUCT_EXPONENT = 3
_ATTRIBUTE_DEBUG = 0x2
# Offsets from the Intel SDM SIGSTRUCT table (and Linux arch/x86/include/asm/sgx.h).
_VENDOR_AT = 16
_DATE_AT = 20
_HEADER2_AT = 24
_MODULUS_AT, _MODULUS_SIZE = 128, 384
_EXPONENT_AT = 512
_MISCSELECT_AT = 900
_ATTRIBUTES_AT = 928
_ENCLAVEHASH_AT = 960
_ISVPRODID_AT = 1024
_ISVSVN_AT = 1026


@dataclass(frozen=True)
class Sigstruct:
    """The identity fields of a SIGSTRUCT, as the CPU will report them for this enclave.

    - ``mr_enclave``: ENCLAVEHASH, 64 lowercase hex characters (what the quote's MRENCLAVE will be);
    - ``mr_signer``: SHA-256 of the signer's RSA modulus as stored, 64 hex (the quote's MRSIGNER);
    - ``isv_prod_id``, ``isv_svn``: the product id and security version the signer chose;
    - ``debug``: the DEBUG attribute is requested (the host could read enclave memory);
    - ``vendor``, ``date``: header fields (``date`` as YYYY-MM-DD).
    """

    mr_enclave: str
    mr_signer: str
    isv_prod_id: int
    isv_svn: int
    debug: bool
    vendor: int
    date: str


def read_sigstruct(sig: bytes) -> Sigstruct:
    """Parse a ``.sig`` file (a 1808-byte SIGSTRUCT) from ``gramine-sgx-sign``.

    Guarantees: returns only if the size, both header constants, the vendor (0 or 0x8086) and
    the RSA exponent (3) are those the Intel SDM requires; otherwise raises
    ``AttestationError("attestation.malformed")`` naming the field, never another error. The
    signature itself is not verified (the CPU does that at EINIT).
    """
    if not isinstance(sig, bytes) or len(sig) != SIGSTRUCT_SIZE:
        size = len(sig) if isinstance(sig, bytes) else type(sig).__name__
        raise malformed(
            f"a SIGSTRUCT is {SIGSTRUCT_SIZE} bytes, got {size}: pass the .sig file gramine-sgx-sign wrote"
        )
    if sig[0:16] != _SIGSTRUCT_HEADER1 or sig[_HEADER2_AT : _HEADER2_AT + 16] != _SIGSTRUCT_HEADER2:
        raise malformed("the SIGSTRUCT header constants are wrong: this is not a SIGSTRUCT")
    vendor = int.from_bytes(sig[_VENDOR_AT : _VENDOR_AT + 4], "little")
    if vendor not in _SIGSTRUCT_VENDORS:
        raise malformed(f"SIGSTRUCT vendor {vendor:#x} is neither 0 nor 0x8086")
    exponent = int.from_bytes(sig[_EXPONENT_AT : _EXPONENT_AT + 4], "little")
    if exponent != _SIGSTRUCT_EXPONENT:
        raise malformed(f"SIGSTRUCT RSA exponent is {exponent}; SGX requires 3")
    date_bcd = sig[_DATE_AT : _DATE_AT + 4][::-1].hex()
    attributes = int.from_bytes(sig[_ATTRIBUTES_AT : _ATTRIBUTES_AT + 8], "little")
    return Sigstruct(
        mr_enclave=sig[_ENCLAVEHASH_AT : _ENCLAVEHASH_AT + 32].hex(),
        mr_signer=hashlib.sha256(sig[_MODULUS_AT : _MODULUS_AT + _MODULUS_SIZE]).hexdigest(),
        isv_prod_id=int.from_bytes(sig[_ISVPRODID_AT : _ISVPRODID_AT + 2], "little"),
        isv_svn=int.from_bytes(sig[_ISVSVN_AT : _ISVSVN_AT + 2], "little"),
        debug=bool(attributes & _ATTRIBUTE_DEBUG),
        vendor=vendor,
        date=f"{date_bcd[0:4]}-{date_bcd[4:6]}-{date_bcd[6:8]}",
    )


def read_sigstruct_mrenclave(sig: bytes) -> str:
    """Return the MRENCLAVE (64 lowercase hex) a ``gramine-sgx-sign`` ``.sig`` file commits to.

    This is the value to pin as ``mr_enclave`` in ``[attestation.sgx]``. Raises
    ``attestation.malformed`` for anything that is not a valid SIGSTRUCT (see :func:`read_sigstruct`).
    """
    return read_sigstruct(sig).mr_enclave


# -- manifest ---------------------------------------------------------------------------------------------

_DEFAULT_ARCH_LIBDIR = "/lib/x86_64-linux-gnu"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SIZE_RE = re.compile(r"[1-9][0-9]{0,5}[KMG]")


def _toml_string(text: str) -> str:
    # JSON string escaping is valid TOML basic-string escaping for the characters json emits.
    return json.dumps(text, ensure_ascii=False)


def _mount(path: str, uri: str) -> str:
    return f"  {{ path = {_toml_string(path)}, uri = {_toml_string('file:' + uri)} }},"


def _trusted(uri: str, sha256: str | None = None) -> str:
    pinned = f', sha256 = "{sha256}"' if sha256 is not None else ""
    return f"  {{ uri = {_toml_string('file:' + uri)}{pinned} }},"


def _requirement_names(dist: metadata.Distribution) -> list[str]:
    names = []
    for line in dist.requires or []:
        requirement, _, marker = line.partition(";")
        if "extra" in marker:
            continue
        match = _NAME_RE.match(requirement.strip())
        if match:
            names.append(match.group(0))
    return names


def _distribution_paths(names: Iterable[str]) -> tuple[list[Path], list[Path]]:
    """Return (site directories, installed top-level paths) of ``names`` and their dependencies."""
    pending, done = list(names), set()
    sites: set[Path] = set()
    paths: set[Path] = set()
    while pending:
        name = pending.pop()
        key = name.lower().replace("_", "-")
        if key in done:
            continue
        done.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        site = Path(str(dist.locate_file(""))).resolve()
        sites.add(site)
        for file in dist.files or []:
            parts = Path(str(file)).parts
            if not parts or parts[0] in ("..", "__pycache__") or parts[0].startswith("/"):
                continue
            top = (site / parts[0]).resolve()
            if top.exists():
                paths.add(top)
        pending.extend(_requirement_names(dist))
    return sorted(sites), sorted(paths)


def gramine_manifest(
    *,
    state_dir: Path,
    package_dir: Path | None = None,
    distributions: Sequence[str] = RUNTIME_DISTRIBUTIONS,
    enclave_size: str = "4G",
    max_threads: int = 32,
    workers: int = 4,
    isv_prod_id: int = 0,
    isv_svn: int = 0,
    arch_libdir: str = _DEFAULT_ARCH_LIBDIR,
) -> str:
    """Return the Gramine manifest template (TOML + ``gramine-manifest`` Jinja expressions) of the enclave.

    Guarantees, for the interpreter running this function (symlinks resolved, virtualenvs seen
    through):

    - ``libos.entrypoint`` is that interpreter, and ``loader.argv`` is fixed to
      ``python3 -S -m sealedml.enclave --tee sgx --platform-dir /sealedml-state --workers N``, so
      the untrusted host cannot change the arguments (they are part of MRENCLAVE);
    - every sealedml file measured by :func:`~sealedml.attestation.measurement.tcb_files` is a
      trusted file *with its SHA-256 pinned now*; the Python standard library, the installed
      distributions in ``distributions`` and their dependencies, Gramine's runtime and the
      system libraries are trusted files hashed by ``gramine-sgx-sign``; nothing else can be
      opened (``sgx.file_check_policy = "strict"``, no allowed files);
    - ``state_dir`` is mounted at ``/sealedml-state`` as *encrypted* files under the
      ``_sgx_mrenclave`` key, so only this enclave on this CPU can read what it writes there;
    - ``sgx.remote_attestation = "dcap"``, ``sgx.debug = false``, and the given
      ``sgx.enclave_size``, ``sgx.max_threads``, ``sgx.isvprodid``, ``sgx.isvsvn``.

    The text parses as TOML (Jinja expressions only appear inside strings). Render it with
    ``gramine-manifest``, then sign it with ``gramine-sgx-sign`` (see docs/deploy-real-tee.md).
    Raises ``ConfigError("config.invalid")`` for out-of-range numbers or a missing interpreter.
    """
    for name, value, low, high in (
        ("max_threads", max_threads, 4, 4096),
        ("workers", workers, 1, 256),
        ("isv_prod_id", isv_prod_id, 0, 0xFFFF),
        ("isv_svn", isv_svn, 0, 0xFFFF),
    ):
        if type(value) is not int or not low <= value <= high:
            raise ConfigError("config.invalid", f"{name} must be an integer in {low}..{high}")
    if workers + 4 > max_threads:
        raise ConfigError(
            "config.invalid", f"max_threads must leave 4 threads to Gramine beyond the {workers} workers"
        )
    if not isinstance(enclave_size, str) or not _SIZE_RE.fullmatch(enclave_size):
        raise ConfigError("config.invalid", 'enclave_size must look like "512M" or "4G"')
    interpreter = Path(sys.executable).resolve()
    if not interpreter.is_file():
        raise ConfigError("config.invalid", f"Python interpreter {interpreter} does not exist")
    state = Path(state_dir).resolve()
    if any(mark in str(state) for mark in ("{{", "{%", "{#")):
        raise ConfigError("config.invalid", f"state_dir {state} contains a Jinja delimiter")

    tcb = tcb_files(package_dir)
    first_rel, first_path = tcb[0]
    package_root = first_path.parents[len(Path(first_rel).parts) - 1]
    import_root = package_root.parent

    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    runtime_dirs = [stdlib]
    dynload = sysconfig.get_config_var("DESTSHARED")
    if dynload and not Path(dynload).resolve().is_relative_to(stdlib):
        runtime_dirs.append(Path(dynload).resolve())
    runtime_files = [interpreter]
    library_path = ["/lib", arch_libdir, "/usr" + arch_libdir]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
        if libdir and soname and (Path(libdir) / soname).is_file():
            runtime_files.append(Path(libdir).resolve() / soname)
            library_path.append(str(Path(libdir).resolve()))
    sites, dist_paths = _distribution_paths(distributions)
    python_path = [import_root, *[site for site in sites if site != import_root]]

    mount_dirs: list[str] = []
    for directory in (*runtime_dirs, import_root, *sites):
        text = str(directory)
        if text not in mount_dirs and not any(text.startswith(m + "/") for m in mount_dirs):
            mount_dirs.append(text)
    usr_libdir = "/usr" + arch_libdir
    mounts = [
        _mount("/lib", "{{ gramine.runtimedir() }}"),
        _mount(arch_libdir, arch_libdir),
        _mount(usr_libdir, usr_libdir),
        *(_mount(str(f), str(f)) for f in runtime_files),
        *(_mount(d, d) for d in mount_dirs),
        '  { type = "tmpfs", path = "/tmp" },',
        f'  {{ type = "encrypted", path = "{STATE_MOUNT}", uri = {_toml_string("file:" + str(state))}, '
        f'key_name = "{SEALING_KEY_NAME}" }},',
    ]

    trusted: list[str] = [
        _trusted("{{ gramine.libos }}"),
        _trusted("{{ gramine.runtimedir() }}/"),
        _trusted(arch_libdir + "/"),
        _trusted(usr_libdir + "/"),
        *(_trusted(str(f)) for f in runtime_files),
        *(_trusted(str(d) + "/") for d in runtime_dirs),
        *(_trusted(str(p) + ("/" if p.is_dir() else "")) for p in dist_paths),
    ]
    for _rel, path in tcb:
        trusted.append(_trusted(str(path), hashlib.sha256(path.read_bytes()).hexdigest()))

    argv = ["python3", "-S", "-m", "sealedml.enclave", "--tee", "sgx", "--platform-dir", STATE_MOUNT]
    argv += ["--workers", str(workers)]
    lines = [
        "# SealedML enclave worker for Gramine-SGX. Generated by sealedml.attestation.producers.gramine.",
        "# Render: gramine-manifest sealedml-enclave.manifest.template sealedml-enclave.manifest",
        "# Sign:   gramine-sgx-sign --manifest sealedml-enclave.manifest \\",
        "#                          --output sealedml-enclave.manifest.sgx",
        "# Pin:    gramine-sgx-sigstruct-view sealedml-enclave.sig  (mr_enclave, mr_signer)",
        "",
        'loader.entrypoint.uri = "file:{{ gramine.libos }}"',
        f"libos.entrypoint = {_toml_string(str(interpreter))}",
        'loader.log_level = "error"',
        "loader.argv = [" + ", ".join(_toml_string(a) for a in argv) + "]",
        f"loader.env.LD_LIBRARY_PATH = {_toml_string(':'.join(library_path))}",
        f"loader.env.PYTHONPATH = {_toml_string(':'.join(str(p) for p in python_path))}",
        'loader.env.PYTHONDONTWRITEBYTECODE = "1"',
        'loader.env.PYTHONNOUSERSITE = "1"',
        'loader.env.OMP_NUM_THREADS = "1"',
        "",
        "fs.mounts = [",
        *mounts,
        "]",
        "",
        "sgx.debug = false",
        'sgx.remote_attestation = "dcap"',
        f"sgx.enclave_size = {_toml_string(enclave_size)}",
        f"sgx.max_threads = {max_threads}",
        f"sgx.isvprodid = {isv_prod_id}",
        f"sgx.isvsvn = {isv_svn}",
        'sgx.file_check_policy = "strict"',
        "sgx.trusted_files = [",
        *trusted,
        "]",
        "",
    ]
    return "\n".join(lines)
