"""What a client should pin for each launch path, and how to obtain what cannot be computed here.

:func:`reference_values` answers, per TEE type:

- ``simulated``: the software measurement of the code installed here (:func:`compute_measurement`);
- ``sgx``: MRENCLAVE, MRSIGNER, ISVPRODID and ISVSVN read from the SIGSTRUCT ``gramine-sgx-sign``
  wrote (``sigstruct=``), or the commands that produce it;
- ``sev-snp``: the launch measurement, which only the exact firmware, kernel, initrd, command line,
  vCPU count and type of the target VM determine: the commands that compute it, and what
  ``host_data`` and ``id_key_digests`` mean;
- ``tdx``: MRTD (TD firmware) and RTMR0..3 (boot chain): the commands that compute them.

The result is structured (:class:`ReferenceValues`): values known here, instructions for values
to compute on the target, and a policy TOML snippet. A snippet with an unknown value holds a
``<REPLACE: ...>`` placeholder, which :class:`~sealedml.attestation.policy.AppraisalPolicy` refuses
(``config.invalid``), so an unfinished policy fails closed instead of trusting anything.

Host/client side only: the enclave never imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealedml.attestation.measurement import compute_measurement
from sealedml.attestation.producers.gramine import Sigstruct, read_sigstruct
from sealedml.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_COLLATERAL_AGE_SECONDS",
    "TEE_TYPES",
    "ReferenceValue",
    "ReferenceValues",
    "reference_values",
]

TEE_TYPES = ("simulated", "sgx", "sev-snp", "tdx")
DEFAULT_MAX_COLLATERAL_AGE_SECONDS = 30 * 24 * 3600
_MAX_SIGSTRUCT_FILE = 64 * 1024


def _placeholder(what: str) -> str:
    return f"<REPLACE: {what}>"


@dataclass(frozen=True)
class ReferenceValue:
    """One value to pin under ``key`` in the policy.

    ``value`` is the lowercase hex (or decimal, for numbers) when it is known here, ``None`` when
    it must be computed on or for the target; ``source`` says where it comes from or what it
    means; ``commands`` are the exact commands that produce it.
    """

    key: str
    value: str | None
    source: str
    commands: tuple[str, ...] = ()

    @property
    def known(self) -> bool:
        """True when ``value`` was determined here."""
        return self.value is not None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return {"key": self.key, "value": self.value, "source": self.source, "commands": list(self.commands)}


@dataclass(frozen=True)
class ReferenceValues:
    """Reference values for one TEE type.

    - ``tee``: the TEE type (a policy table name, or ``simulated``);
    - ``values``: every value the policy table can pin, known or to compute;
    - ``notes``: what the values do and do not prove, in plain words;
    - ``policy_toml``: a snippet for the client's policy file (placeholders where unknown).
    """

    tee: str
    values: tuple[ReferenceValue, ...]
    policy_toml: str
    notes: tuple[str, ...] = field(default=())

    def known(self) -> dict[str, str]:
        """Return ``{key: value}`` for the values determined here."""
        return {v.key: v.value for v in self.values if v.value is not None}

    def to_compute(self) -> tuple[ReferenceValue, ...]:
        """Return the values that must be computed on (or for) the target, with their commands."""
        return tuple(v for v in self.values if v.value is None)

    @property
    def complete(self) -> bool:
        """True when the policy snippet has no placeholder left."""
        return "<REPLACE:" not in self.policy_toml

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form (for ``sealedml measure --tee ... --json``)."""
        return {
            "tee": self.tee,
            "values": [v.to_dict() for v in self.values],
            "notes": list(self.notes),
            "policy_toml": self.policy_toml,
            "complete": self.complete,
        }

    def render(self) -> str:
        """Return a human-readable report: known values, values to compute with commands, notes, snippet."""
        lines = [f"Reference values for {self.tee}:"]
        for value in self.values:
            shown = value.value if value.value is not None else "(not known here: see below)"
            lines.append(f"  {value.key} = {shown}")
            lines.append(f"      {value.source}")
            lines.extend(f"      $ {command}" for command in value.commands)
        if self.notes:
            lines.append("")
            lines.extend(f"Note: {note}" for note in self.notes)
        lines += ["", "Policy snippet:", self.policy_toml]
        return "\n".join(lines)


def _dcap_acceptance() -> list[str]:
    return [
        'accepted_tcb_statuses = ["UpToDate"]   # add others only after reading the advisories they name',
        "accepted_advisories = []",
        f"max_collateral_age_seconds = {DEFAULT_MAX_COLLATERAL_AGE_SECONDS}",
        "allow_debug = false",
    ]


# -- simulated ---------------------------------------------------------------------------------------


def _simulated() -> ReferenceValues:
    measurement = compute_measurement()
    root_command = "openssl x509 -in DATA_DIR/platform/root-ca.pem -outform DER | sha256sum"
    values = (
        ReferenceValue(
            "reference_measurements",
            measurement,
            "SHA-384 over the enclave's Python files and runtime versions installed here "
            "(sealedml.attestation.measurement); `sealedml measure --verbose` lists them",
            ("sealedml measure",),
        ),
        ReferenceValue(
            "simulated_roots",
            None,
            "SHA-256 of the simulated platform's root certificate (DER), created by the server on first "
            "start in DATA_DIR/platform/root-ca.pem; trust on first use",
            (root_command,),
        ),
    )
    snippet = "\n".join(
        [
            "[attestation]",
            "allow_simulated = true   # the simulated TEE protects NOTHING from the host: development only",
            f'reference_measurements = ["{measurement}"]',
            f'simulated_roots = ["{_placeholder("sha256 of root-ca.pem DER")}"]',
            "max_evidence_age_seconds = 300",
            "allow_debug = false",
            "",
        ]
    )
    notes = (
        "The simulated TEE has no hardware isolation: its keys are files the host can read. "
        "Never use it for real data.",
    )
    return ReferenceValues("simulated", values, snippet, notes)


# -- SGX ---------------------------------------------------------------------------------------------

_SGX_BUILD = (
    'python -c "from pathlib import Path; '
    "from sealedml.attestation.producers.gramine import gramine_manifest as m; "
    "Path('sealedml-enclave.manifest.template').write_text("
    "m(state_dir=Path('/var/lib/sealedml/enclave-state')))\"",
    "gramine-manifest sealedml-enclave.manifest.template sealedml-enclave.manifest",
    "gramine-sgx-sign --manifest sealedml-enclave.manifest --output sealedml-enclave.manifest.sgx",
    "gramine-sgx-sigstruct-view --verbose sealedml-enclave.sig",
    "sealedml measure --tee sgx --sigstruct sealedml-enclave.sig",
)


def _load_sigstruct(path: Path) -> Sigstruct:
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_SIGSTRUCT_FILE + 1)
    except OSError as exc:
        raise ConfigError(
            "config.invalid", f"cannot read SIGSTRUCT file {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    return read_sigstruct(data)


def _sgx(sigstruct: Path | None) -> ReferenceValues:
    sig = _load_sigstruct(sigstruct) if sigstruct is not None else None
    from_sig = f"read from the SIGSTRUCT {sigstruct}" if sig is not None else ""
    values = (
        ReferenceValue(
            "mr_enclave",
            sig.mr_enclave if sig else None,
            from_sig
            or "MRENCLAVE is the hash of the signed enclave (Gramine, the manifest, every trusted file "
            "and their SHA-256): only `gramine-sgx-sign` on the exact build computes it",
            () if sig else _SGX_BUILD,
        ),
        ReferenceValue(
            "mr_signer",
            sig.mr_signer if sig else None,
            (from_sig + "; " if sig else "")
            + "MRSIGNER is SHA-256 of the signing key's RSA modulus: pinning it (with isv_prod_id) accepts "
            "every enclave that key signs, including future versions",
            () if sig else ("gramine-sgx-sigstruct-view --verbose sealedml-enclave.sig",),
        ),
        ReferenceValue(
            "isv_prod_id",
            str(sig.isv_prod_id) if sig else None,
            (from_sig + "; " if sig else "")
            + "ISVPRODID (sgx.isvprodid in the manifest) names the product among those one signer signs; "
            "required with mr_signer",
        ),
        ReferenceValue(
            "min_isv_svn",
            str(sig.isv_svn) if sig else None,
            (from_sig + "; " if sig else "")
            + "ISVSVN (sgx.isvsvn) is the security version; raise the floor after a security fix so "
            "older, vulnerable builds are refused",
        ),
    )
    lines = ["[attestation.sgx]"]
    if sig:
        lines += [
            f'mr_enclave = ["{sig.mr_enclave}"]',
            f'mr_signer = ["{sig.mr_signer}"]',
            f"isv_prod_id = {sig.isv_prod_id}",
            f"min_isv_svn = {sig.isv_svn}",
        ]
    else:
        lines += [
            f'mr_enclave = ["{_placeholder("MRENCLAVE from gramine-sgx-sigstruct-view")}"]',
            f'# mr_signer = ["{_placeholder("MRSIGNER")}"]   # with isv_prod_id: any build by that key',
            "# isv_prod_id = 0",
            "min_isv_svn = 0",
        ]
    lines += [*_dcap_acceptance(), ""]
    notes = [
        "MRENCLAVE covers the manifest, which pins the SHA-256 of every sealedml file the enclave runs: "
        "the same files `sealedml measure` hashes.",
        "The quote's TCB status comes from Intel collateral (TCB info, QE identity, CRLs) that the "
        "verifier needs; a platform below UpToDate is refused unless you accept its status and advisories.",
    ]
    if sig is not None and sig.debug:
        notes.insert(
            0,
            "THIS SIGSTRUCT ALLOWS DEBUG: the host can read the enclave's memory. Rebuild with "
            "sgx.debug = false; the policy below keeps allow_debug = false and will refuse it.",
        )
    return ReferenceValues("sgx", values, "\n".join(lines), tuple(notes))


# -- SEV-SNP -----------------------------------------------------------------------------------------

_SNP_MEASURE = (
    "pip install sev-snp-measure",
    "sev-snp-measure --mode snp --vcpus=4 --vcpu-type=EPYC-v4 --ovmf=OVMF.fd --kernel=vmlinuz "
    '--initrd=initrd.img --append="console=ttyS0 root=/dev/vda1"',
)
_SNP_GCE = (
    "go install github.com/google/gce-tcb-verifier/gcetcbendorsement@latest",
    "gcetcbendorsement extract --out=endorsement.binarypb   # inside the VM",
    "gcetcbendorsement verify endorsement.binarypb",
    "gcetcbendorsement inspect mask endorsement.binarypb --path=sev_snp.measurements[4] --bytesform=hex",
)


def _sev_snp() -> ReferenceValues:
    values = (
        ReferenceValue(
            "measurements",
            None,
            "the SNP launch MEASUREMENT (48 bytes) covers the initial guest memory and vCPU state: the "
            "exact OVMF build, and with direct boot the kernel, initrd and command line hashes, the number "
            "and type of vCPUs and the VMM. Compute it for the target's exact artefacts (self-hosted QEMU, "
            "direct boot), or take the cloud's signed firmware endorsement (GCP: measurements[N] for N "
            "vCPUs)",
            _SNP_MEASURE + _SNP_GCE,
        ),
        ReferenceValue(
            "host_data",
            None,
            "HOST_DATA: 32 bytes the VMM sets at launch (QEMU -object sev-snp-guest,host-data=<base64>) and "
            "the guest cannot change; pin it when you launch the VM yourself, e.g. to a hash of its config. "
            "Clouds leave it zero",
        ),
        ReferenceValue(
            "id_key_digests",
            None,
            "ID_KEY_DIGEST: SHA-384 of the public ID key that signed the launch's ID block (the block "
            "commits to the expected measurement, family/image ids and policy). Pin it to accept any "
            "image signed by your ID key; zero when no ID block was used",
            ("snp-create-id-block --measurement <base64 launch digest> --idkey id_key.pem",),
        ),
        ReferenceValue(
            "min_tcb",
            None,
            "lowest acceptable platform TCB { bootloader, tee, snp, microcode } (reported_tcb); take the "
            "values AMD lists in its latest security bulletin for your processor generation",
        ),
        ReferenceValue("min_guest_svn", None, "GUEST_SVN from the ID block; 0 without one"),
    )
    snippet = "\n".join(
        [
            "[attestation.sev-snp]",
            f'measurements = ["{_placeholder("96 hex: launch measurement for the target VM")}"]',
            f'# host_data = ["{_placeholder("64 hex HOST_DATA")}"]',
            f'# id_key_digests = ["{_placeholder("96 hex ID key digest")}"]',
            f"# min_tcb = {{ bootloader = {_placeholder('n')}, tee = 0, snp = 0, microcode = 0 }}",
            "min_guest_svn = 0",
            "allow_debug = false",
            "",
        ]
    )
    notes = (
        "The launch measurement only covers what the firmware loaded at launch. On clouds that boot the "
        "guest from its disk (GCP, Azure) it measures the cloud's firmware, NOT the enclave's code: the OS "
        "disk and the sealedml files in it are not in the report. Self-hosted QEMU with direct boot "
        "(kernel, initrd with the enclave, command line) puts them in the measurement.",
        "The report binds the enclave's keys (REPORT_DATA); the verifier checks the VCEK/VLEK chain to AMD's "
        "ARK and the TCB in the VCEK.",
        "Azure confidential VMs run a paravisor: the guest has no configfs-tsm SEV interface, so --tee "
        "sev-snp does not start there (see docs/deploy-real-tee.md).",
    )
    return ReferenceValues("sev-snp", values, snippet, notes)


# -- TDX ---------------------------------------------------------------------------------------------

_TDX_MEASURE = (
    "cargo install --git https://github.com/virtee/tdx-measure",
    "tdx-measure metadata.json --json   # metadata: cpus, memory, OVMF.fd, ACPI tables, kernel, initrd, "
    "cmdline",
)
_TDX_GCE = (
    "gcloud storage cp gs://gce_tcb_integrity/ovmf_x64_csm/tdx/<MRTD hex>.binarypb endorsement.binarypb",
    "gcetcbendorsement verify endorsement.binarypb",
)


def _tdx() -> ReferenceValues:
    values = (
        ReferenceValue(
            "mr_td",
            None,
            "MRTD: the measurement of the TD firmware (TDVF/OVMF) and initial TD memory, fixed by the "
            "exact firmware build and TD configuration; compute it from the OVMF binary, or check that the "
            "MRTD your TD reports is one the cloud signed (GCP publishes an endorsement per MRTD)",
            _TDX_MEASURE + _TDX_GCE,
        ),
        ReferenceValue(
            "rtmr0",
            None,
            "RTMR0: firmware configuration (TD HOB, ACPI tables, UEFI variables), extended by TDVF",
            _TDX_MEASURE,
        ),
        ReferenceValue(
            "rtmr1",
            None,
            "RTMR1: the boot loader and kernel image (EFI boot services), extended by TDVF",
            _TDX_MEASURE,
        ),
        ReferenceValue(
            "rtmr2",
            None,
            "RTMR2: kernel command line and initrd, extended by the boot loader/kernel",
            _TDX_MEASURE,
        ),
        ReferenceValue(
            "rtmr3",
            None,
            "RTMR3: runtime extensions (none by default: all zeros unless the OS extends it)",
        ),
        ReferenceValue(
            "mr_seam",
            None,
            "MRSEAM: the Intel TDX module; pin it only to restrict module versions (Intel publishes them); "
            "the collateral's TCB status already rates the module",
        ),
    )
    snippet = "\n".join(
        [
            "[attestation.tdx]",
            f'mr_td = ["{_placeholder("96 hex MRTD")}"]',
            f'rtmr0 = ["{_placeholder("96 hex RTMR0")}"]',
            f'rtmr1 = ["{_placeholder("96 hex RTMR1")}"]',
            f'rtmr2 = ["{_placeholder("96 hex RTMR2")}"]',
            f'# rtmr3 = ["{"0" * 96}"]',
            f'# mr_seam = ["{_placeholder("96 hex MRSEAM")}"]',
            *_dcap_acceptance(),
            "",
        ]
    )
    notes = (
        "MRTD alone only identifies the firmware. The enclave's code is covered only through RTMR1/RTMR2 "
        "(kernel, initrd, command line); with a boot from disk, files loaded after boot (the sealedml "
        "package on the root file system) are not measured unless the image uses a verified root "
        "(dm-verity hash on the measured command line).",
        "Verification needs Intel collateral (TCB info, QE identity, CRLs) from the PCS or a PCCS.",
    )
    return ReferenceValues("tdx", values, snippet, notes)


def reference_values(tee: str, *, sigstruct: Path | None = None) -> ReferenceValues:
    """Return what a client should pin for ``tee`` ("simulated", "sgx", "sev-snp" or "tdx").

    Guarantees: values are marked known only when determined here (the simulated measurement of
    the installed code; for SGX, the fields of ``sigstruct``); everything else comes with the
    commands that compute it on or for the target, never a guessed value. The policy snippet
    parses as TOML; it is a valid policy only when :attr:`ReferenceValues.complete`.
    Raises ``ConfigError("config.invalid")`` for an unknown TEE, a ``sigstruct`` given for
    another TEE or an unreadable file, and ``AttestationError("attestation.malformed")`` for a
    file that is not a SIGSTRUCT.
    """
    if tee not in TEE_TYPES:
        raise ConfigError("config.invalid", f"unknown TEE {tee!r} (choose from {', '.join(TEE_TYPES)})")
    if sigstruct is not None and tee != "sgx":
        raise ConfigError("config.invalid", "a SIGSTRUCT only identifies SGX enclaves (use --tee sgx)")
    if tee == "simulated":
        return _simulated()
    if tee == "sgx":
        return _sgx(sigstruct)
    if tee == "sev-snp":
        return _sev_snp()
    return _tdx()
