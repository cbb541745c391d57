"""The ``sealedml`` command line, a thin layer over the SDK (:mod:`sealedml.client`).

Exit codes: 0 success, 1 rejected (any ``SealedMLError``: the code and a hint go to stderr),
2 usage error. Human-readable summaries go to stderr; ``--json`` puts machine-readable output on
stdout. Every option has a ``SEALEDML_*`` environment variable.
"""

from __future__ import annotations

import enum
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from sealedml.cli_common import (
    DEFAULT_POLICY,
    DEFAULT_URL,
    SIMULATED_BANNER,
    JsonOpt,
    PolicyOpt,
    TokenOpt,
    UrlOpt,
    err,
)
from sealedml.cli_common import keys_dir as _keys_dir
from sealedml.cli_common import load_policy as _load_policy
from sealedml.cli_common import make_client as _client
from sealedml.cli_common import print_json as _print_json
from sealedml.cli_common import run_action as _run
from sealedml.errors import InputError

app = typer.Typer(
    name="sealedml",
    help="Confidential machine learning as a service: attested enclaves, encrypted models and data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
model_app = typer.Typer(help="Publish and list models.", no_args_is_help=True)
account_app = typer.Typer(help="Manage accounts (admin).", no_args_is_help=True)
receipt_app = typer.Typer(help="Check execution receipts.", no_args_is_help=True)
policy_app = typer.Typer(help="Write appraisal policies.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(account_app, name="account")
app.add_typer(receipt_app, name="receipt")
app.add_typer(policy_app, name="policy")

T = TypeVar("T")


class Role(enum.StrEnum):
    """Account roles."""

    provider = "provider"
    data_owner = "data_owner"
    admin = "admin"


class ServingMode(enum.StrEnum):
    """Where a model runs: in the attested enclave, or on the client's CKKS ciphertexts."""

    tee = "tee"
    he = "he"


class OutputMode(enum.StrEnum):
    """What a model releases to its clients."""

    probabilities = "probabilities"
    rounded = "rounded"
    label = "label"


def claims_table(result: Any) -> Table:
    """Render verified attestation claims as a table."""
    claims = result.claims
    table = Table(title="Verified attestation claims", show_header=False)
    table.add_column("claim", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("TEE", claims.tee + (" [yellow](SIMULATED)[/]" if claims.simulated else ""))
    table.add_row("measurement", claims.measurement)
    table.add_row("debug", str(claims.debug))
    table.add_row("platform id", claims.platform_id)
    table.add_row("issued at", claims.issued_at.isoformat())
    table.add_row("root (sha256)", claims.root_fingerprint)
    table.add_row("enclave HPKE key", result.hpke_public_key.hex())
    table.add_row("enclave signing key", result.signing_public_key.hex())
    return table


def receipt_table(receipt: dict[str, Any]) -> Table:
    """Render a receipt as a table."""
    table = Table(title="Execution receipt (signature verified)", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key in sorted(receipt):
        value = receipt[key]
        if key == "issued_at" and isinstance(value, int):
            value = datetime.fromtimestamp(value, tz=UTC).isoformat()
        table.add_row(key, str(value))
    return table


def warn_if_simulated(result: Any) -> None:
    """Say loudly when accepted evidence came from the simulated TEE."""
    if result.claims.simulated:
        err.print(Panel(SIMULATED_BANNER, border_style="yellow", title="WARNING"))


# -- server ---------------------------------------------------------------------------------------


@app.command()
def serve(
    data_dir: Annotated[
        Path, typer.Option(envvar="SEALEDML_DATA_DIR", help="Blobs, database, platform keys.")
    ] = Path("sealedml-data"),
    db: Annotated[
        str | None, typer.Option(envvar="SEALEDML_DB", help="SQLAlchemy URL (default: SQLite in data dir).")
    ] = None,
    host: Annotated[str, typer.Option(envvar="SEALEDML_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="SEALEDML_PORT")] = 8000,
    max_model_mb: Annotated[int, typer.Option(help="Largest accepted model upload (MiB).")] = 256,
    max_request_mb: Annotated[int, typer.Option(help="Largest accepted sealed request (MiB).")] = 64,
    tee: Annotated[
        str, typer.Option(envvar="SEALEDML_TEE", help="Enclave backend: simulated, sgx, sev-snp or tdx.")
    ] = "simulated",
    enclave_command: Annotated[
        str | None,
        typer.Option(
            envvar="SEALEDML_ENCLAVE_COMMAND", help="With --tee sgx: e.g. 'gramine-sgx sealedml-enclave'."
        ),
    ] = None,
    platform_policy: Annotated[
        Path | None,
        typer.Option(help="Policy the catalog's attestation badges are checked against (real TEEs)."),
    ] = None,
    anchor: Annotated[
        str,
        typer.Option(
            envvar="SEALEDML_ANCHOR",
            help="Anchor tree heads: 'embedded' (in-process test chain), 'none', or a JSON-RPC URL "
            "(key in SEALEDML_ANCHOR_KEY).",
        ),
    ] = "embedded",
    anchor_interval: Annotated[float, typer.Option(help="Seconds between anchors.")] = 60.0,
    pccs_url: Annotated[
        str | None,
        typer.Option(
            envvar="SEALEDML_PCCS_URL", help="With --tee sgx|tdx: PCCS/PCS to fetch DCAP collateral from."
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            envvar="SEALEDML_RAY",
            help="Serve from attested enclave workers on Ray: 'local' (a Ray runtime on this machine) "
            "or the address of a running Ray cluster.",
        ),
    ] = None,
    ray_workers: Annotated[
        int, typer.Option("--ray-workers", envvar="SEALEDML_RAY_WORKERS", help="Enclave workers with --ray.")
    ] = 2,
) -> None:
    """Run the platform service with its enclave (simulated by default: no hardware TEE here)."""
    import shlex

    from sealedml.platform.launch import run_platform
    from sealedml.platform.settings import Settings

    settings = Settings(
        data_dir=data_dir,
        db_url=db,
        host=host,
        port=port,
        max_model_bytes=max_model_mb * 1024 * 1024,
        max_request_bytes=max_request_mb * 1024 * 1024,
        tee=tee,
        enclave_command=tuple(shlex.split(enclave_command)) if enclave_command else (),
        policy_path=platform_policy,
        anchor=anchor,
        anchor_interval_seconds=anchor_interval,
        pccs_url=pccs_url,
        ray=ray,
        ray_workers=ray_workers,
    )
    if tee == "simulated":
        err.print(
            Panel(
                "Enclave backend: [bold yellow]SIMULATED TEE[/] — no protection from this host. "
                "Clients must opt in with allow_simulated = true.",
                border_style="yellow",
            )
        )
    else:
        err.print(f"Enclave backend: [bold]{escape(tee)}[/] (hardware TEE)")
    _run(lambda: run_platform(settings))


# -- attestation ----------------------------------------------------------------------------------


@app.command()
def measure(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List every measured file.")] = False,
    tee: Annotated[
        str | None,
        typer.Option(help="What to pin for a launch path: sgx, sev-snp (or snp) or tdx."),
    ] = None,
    sigstruct: Annotated[
        Path | None, typer.Option(help="With --tee sgx: the .sig file gramine-sgx-sign wrote.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the measurement of the enclave code installed here (pin it in your policy).

    With --tee, print what a client pins for that launch path, and say plainly which values can
    only be computed on the target (with the exact firmware, kernel or signed enclave).
    """
    from sealedml.attestation.measurement import compute_measurement, tcb_manifest

    if tee is not None:
        from sealedml.attestation.reference_values import reference_values

        kind = "sev-snp" if tee == "snp" else tee
        values = _run(lambda: reference_values(kind, sigstruct=sigstruct))
        if as_json:
            _print_json(values.to_dict())
        else:
            typer.echo(values.render())
        return
    value = compute_measurement()
    if as_json:
        _print_json({"measurement": value, "manifest": tcb_manifest() if verbose else None})
        return
    if verbose:
        for path, digest in tcb_manifest():
            err.print(f"  {digest[:16] + '…' if digest else '':17}  {path}", highlight=False)
    typer.echo(value)


attest_app = typer.Typer(
    help="Verify the platform's enclave, or any evidence file, under your policy.",
    invoke_without_command=True,
)
app.add_typer(attest_app, name="attest")


@attest_app.callback()
def attest(
    ctx: typer.Context,
    url: UrlOpt = DEFAULT_URL,
    policy: PolicyOpt = DEFAULT_POLICY,
    as_json: JsonOpt = False,
) -> None:
    """Verify the platform's enclave under your policy and print the claims."""
    if ctx.invoked_subcommand is not None:
        return

    def action() -> None:
        with _client(url, None, policy) as client:
            result = client.attest()
        warn_if_simulated(result)
        if as_json:
            _print_json(result.to_dict())
        else:
            err.print(claims_table(result))
            err.print("[bold green]attestation verified[/] under", str(policy))

    _run(action)


def _parse_time(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError("input.malformed", f"--at {text!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise InputError("input.malformed", f"--at {text!r} needs a timezone (e.g. 2025-07-01T00:00:00Z)")
    return value.astimezone(UTC)


def _hex_option(name: str, text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise InputError("input.malformed", f"{name} must be hex") from None


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError("input.malformed", f"cannot read {what} {path}: {exc.strerror}") from None


def appraisal_table(appraisal: Any) -> Table:
    """Render the claims of an offline appraisal (all TEE types) as a table."""
    claims = appraisal.claims
    table = Table(title=f"Evidence claims ({appraisal.format})", show_header=False)
    table.add_column("claim", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("TEE", claims.tee + (" [yellow](SIMULATED)[/]" if claims.simulated else ""))
    table.add_row("measurement", claims.measurement)
    table.add_row("report_data", claims.report_data.hex())
    table.add_row("debug", str(claims.debug))
    table.add_row("platform id", claims.platform_id)
    table.add_row("svn", str(claims.svn))
    table.add_row("root (sha256)", claims.root_fingerprint)
    if claims.tcb_status is not None:
        advisories = f" ({', '.join(claims.advisories)})" if claims.advisories else ""
        table.add_row("TCB status", claims.tcb_status + advisories)
    if claims.collateral_issued_at is not None:
        table.add_row("collateral issued", claims.collateral_issued_at.isoformat())
    for key in sorted(claims.raw):
        value = claims.raw[key]
        table.add_row(f"  {key}", escape(json.dumps(value) if isinstance(value, dict | list) else str(value)))
    table.add_row("report_data checked", appraisal.binding)
    return table


@attest_app.command("verify")
def attest_verify(
    evidence: Annotated[Path, typer.Argument(help="Evidence bundle (JSON), SEV-SNP report or DCAP quote.")],
    policy: PolicyOpt = DEFAULT_POLICY,
    cert: Annotated[
        list[Path] | None,
        typer.Option(
            "--cert", help="SEV-SNP certificates (PEM or DER; VCEK/VLEK, ASK/ASVK, ARK). Repeatable."
        ),
    ] = None,
    collateral: Annotated[
        Path | None, typer.Option(help="DCAP collateral JSON (TCB info, QE identity, CRLs).")
    ] = None,
    at: Annotated[
        str | None, typer.Option("--at", help="Verify as of this ISO 8601 time (default: now).")
    ] = None,
    nonce: Annotated[str | None, typer.Option(help="Challenge (hex) a bundle must answer.")] = None,
    report_data: Annotated[
        str | None, typer.Option("--report-data", help="Expected report_data (hex) of a raw report/quote.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify any evidence file (simulated, SEV-SNP, TDX, SGX) and print its claims and the verdict.

    Exit code 0 when the policy accepts it, 1 when anything is refused.
    """
    from sealedml.attestation.appraisal import appraise

    def action() -> Any:
        certificates: list[bytes] = []
        if cert:
            from sealedml.attestation.evidence.snp import load_certificates

            for path in cert:
                certificates.extend(load_certificates(_read_file(path, "certificate file")))
        return appraise(
            _read_file(evidence, "evidence file"),
            policy=_load_policy(policy),
            now=_parse_time(at),
            certificates=certificates,
            collateral=_read_file(collateral, "collateral file") if collateral else None,
            nonce=_hex_option("--nonce", nonce),
            expected_report_data=_hex_option("--report-data", report_data),
        )

    appraisal = _run(action)
    if as_json:
        _print_json(
            {
                "format": appraisal.format,
                "accepted": appraisal.accepted,
                "claims": appraisal.claims.to_dict() if appraisal.claims else None,
                "error": appraisal.error.to_dict() if appraisal.error else None,
                "report_data_checked": appraisal.binding,
            }
        )
    elif appraisal.claims is not None:
        err.print(appraisal_table(appraisal))
    if appraisal.accepted:
        if appraisal.claims.simulated:
            err.print(Panel(SIMULATED_BANNER, border_style="yellow", title="WARNING"))
        err.print("[bold green]ACCEPTED[/] under", escape(str(policy)), highlight=False)
        return
    err.print(f"[bold red]REJECTED[/] {escape(appraisal.error.diagnostics())}", highlight=False)
    raise typer.Exit(1)


@policy_app.command("init")
def policy_init(
    url: UrlOpt = DEFAULT_URL,
    output: Annotated[Path, typer.Option("--output", "-o", envvar="SEALEDML_POLICY")] = DEFAULT_POLICY,
    allow_simulated: Annotated[
        bool, typer.Option(help="Accept the SIMULATED TEE (development only).")
    ] = False,
    max_age: Annotated[int, typer.Option(help="Maximum evidence age in seconds.")] = 300,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a policy pinning the measurement of the enclave code installed *here*.

    With --allow-simulated it also pins the simulated platform root the server presents now
    (trust on first use: there is no vendor root for a simulation).
    """
    from sealedml.attestation.measurement import compute_measurement
    from sealedml.attestation.policy import AppraisalPolicy

    def action() -> None:
        if output.exists() and not force:
            raise InputError("input.malformed", f"{output} exists: pass --force to overwrite")
        roots: list[str] = []
        if allow_simulated:
            import hashlib

            with _client(url, None) as client:
                bundle = client.fetch_evidence(os.urandom(32))
            roots = [hashlib.sha256(bundle.certificates[-1]).hexdigest()]
            err.print(
                Panel(
                    f"Pinned the simulated root {roots[0][:16]}… presented by {url} (trust on first use).",
                    border_style="yellow",
                )
            )
        policy = AppraisalPolicy(
            allow_simulated=allow_simulated,
            reference_measurements=(compute_measurement(),),
            max_evidence_age_seconds=max_age,
            allow_debug=False,
            simulated_roots=tuple(roots),
        )
        output.write_text(policy.to_toml(), encoding="utf-8")
        err.print(f"wrote {output}")

    _run(action)


# -- accounts -------------------------------------------------------------------------------------


@account_app.command("create")
def account_create(
    name: str,
    role: Annotated[Role, typer.Option("--role")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an account (needs the admin token) and print its API token once."""

    def action() -> None:
        with _client(url, token) as client:
            created = client.create_account(name, role.value)
        if as_json:
            _print_json(created)
        else:
            err.print(f"created {created['role']} account {created['name']} ({created['id']})")
            typer.echo(created["token"])

    _run(action)


# -- models ---------------------------------------------------------------------------------------


@model_app.command("publish")
def model_publish(
    model_file: Annotated[
        Path,
        typer.Argument(help="MODEL.onnx, a pickled scikit-learn estimator, or (--mode he) a .he.json model."),
    ],
    name: Annotated[str | None, typer.Option(help="Catalog name (default: file stem).")] = None,
    mode: Annotated[
        ServingMode,
        typer.Option(
            help="tee: encrypted model run in the enclave; he: weights evaluated on CKKS ciphertexts."
        ),
    ] = ServingMode.tee,
    price_per_row: Annotated[int, typer.Option(help="Credits per predicted row.")] = 0,
    description: Annotated[str, typer.Option()] = "",
    columns: Annotated[str | None, typer.Option(help="Comma-separated input column names.")] = None,
    columns_from: Annotated[
        Path | None, typer.Option(help="Take input column names from this CSV header.")
    ] = None,
    label_column: Annotated[
        str | None, typer.Option(help="Drop this column from --columns-from (the label).")
    ] = None,
    output_policy: Annotated[
        OutputMode, typer.Option(help="What clients get back.")
    ] = OutputMode.probabilities,
    decimals: Annotated[int, typer.Option(help="Decimals kept by --output-policy rounded.")] = 2,
    query_budget: Annotated[
        int | None, typer.Option(help="Rows each client may score (extraction guard).")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    policy: PolicyOpt = DEFAULT_POLICY,
    as_json: JsonOpt = False,
) -> None:
    """Encrypt a model locally, upload the ciphertext, and release its key to the attested enclave.

    With --mode he the platform instead holds the weights in clear and computes on the clients'
    encrypted inputs (no enclave, no attestation).
    """
    from sealedml.client import prepare_model_file

    def action() -> None:
        names: list[str] | None = None
        if columns:
            names = [c.strip() for c in columns.split(",") if c.strip()]
        elif columns_from is not None:
            import pandas as pd

            header = list(pd.read_csv(columns_from, nrows=0).columns)
            names = [c for c in header if c != label_column]
        if mode is ServingMode.he:
            from sealedml.cli_he import publish_he

            stem = model_file.name.removesuffix(".json").removesuffix(".he")
            publish_he(
                model_file,
                name=name or Path(stem).stem,
                columns=names,
                description=description,
                price_per_row=price_per_row,
                query_budget=query_budget,
                url=url,
                token=token,
                as_json=as_json,
            )
            return
        prepared = prepare_model_file(model_file, names)
        with _client(url, token, policy) as client:
            attestation = client.attest()
            warn_if_simulated(attestation)
            published = client.publish_model(
                name or model_file.stem,
                prepared,
                description=description,
                output_policy={"mode": output_policy.value, "decimals": decimals},
                query_budget=query_budget,
                price_per_row=price_per_row,
            )
        from sealedml.secretfile import write_secret_file

        key_path = _keys_dir() / f"{published.model.id}.key.json"
        write_secret_file(
            key_path,
            json.dumps(
                {
                    "model_id": published.model.id,
                    "name": published.model.name,
                    "model_key": published.model_key.hex(),
                    "model_sha256": published.model_sha256,
                }
            ).encode("utf-8"),
        )
        summary = {
            "id": published.model.id,
            "name": published.model.name,
            "status": published.model.status,
            "model_sha256": published.model_sha256,
            "input_columns": list(published.model.input_columns),
            "key_file": str(key_path),
        }
        if as_json:
            _print_json(summary)
        else:
            err.print(
                f"[bold green]published[/] {published.model.name} ({published.model.id}), "
                f"{len(prepared.input_columns)} input columns; model key saved to {key_path}"
            )

    _run(action)


@model_app.command("list")
def model_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List the models this account can see."""

    def action() -> None:
        with _client(url, token) as client:
            models = client.list_models()
        if as_json:
            _print_json([m.raw for m in models])
            return
        table = Table(title="Models")
        for col in ("name", "id", "status", "inputs", "output policy", "description"):
            table.add_column(col)
        for m in models:
            table.add_row(
                m.name,
                m.id,
                m.status,
                str(len(m.input_columns)),
                str(m.output_policy.get("mode", "")),
                m.description,
            )
        err.print(table)

    _run(action)


# -- prediction -----------------------------------------------------------------------------------


@app.command()
def predict(
    data: Annotated[Path, typer.Argument(help="CSV or Parquet file with the model's input columns.")],
    model: Annotated[str, typer.Option("--model", help="Model name or id.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write predictions here (.csv or .json).")
    ] = None,
    receipts: Annotated[Path | None, typer.Option(help="Folder to save verified receipts in.")] = None,
    batch_rows: Annotated[
        int | None, typer.Option(help="Rows per request (default: 10000; --mode he: one ciphertext's slots).")
    ] = None,
    mode: Annotated[
        ServingMode,
        typer.Option(help="tee: sealed to the attested enclave; he: CKKS-encrypted with your local HE keys."),
    ] = ServingMode.tee,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    policy: PolicyOpt = DEFAULT_POLICY,
) -> None:
    """Predict on a file: rows are encrypted to the attested enclave, results only you can read.

    With --mode he rows are encrypted under your own CKKS keys (kept in the keys dir) and the
    platform computes on the ciphertexts; only you can decrypt the scores.
    """
    import numpy as np

    from sealedml.client import write_predictions
    from sealedml.client._data import count_rows, prediction_records

    if mode is ServingMode.he:
        from sealedml.cli_he import predict_he

        _run(
            lambda: predict_he(data, model=model, output=output, batch_rows=batch_rows, url=url, token=token)
        )
        return
    batch_rows = 10_000 if batch_rows is None else batch_rows

    def action() -> None:
        if batch_rows <= 0:
            raise InputError("input.malformed", "--batch-rows must be positive")
        total = count_rows(data) if data.is_file() else None
        with _client(url, token, policy) as client:
            attestation = client.attest()
            warn_if_simulated(attestation)
            if receipts is not None:
                receipts.mkdir(parents=True, exist_ok=True)
            records: list[dict[str, Any]] = []
            with Progress(
                TextColumn("scoring"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            ) as bar:
                task = bar.add_task("rows", total=total)
                first = True
                jobs = 0
                for pred in client.predict_file(
                    model, data, batch_rows=batch_rows, progress=lambda n: bar.advance(task, n)
                ):
                    jobs += 1
                    if receipts is not None:
                        (receipts / f"{pred.job_id}.receipt.json").write_text(pred.receipt.to_json())
                    if output is not None:
                        write_predictions(output, pred.labels, pred.probabilities, append=not first)
                    else:
                        records.extend(prediction_records(np.asarray(pred.labels), pred.probabilities))
                    first = False
        if output is None:
            _print_json(records)
        err.print(
            f"[bold green]done[/]: {jobs} sealed request(s), every receipt verified"
            + (f"; predictions in {output}" if output else "")
        )

    _run(action)


@receipt_app.command("verify")
def receipt_verify(
    receipt_file: Annotated[Path, typer.Argument(help="A receipt saved by `sealedml predict --receipts`.")],
    policy: PolicyOpt = DEFAULT_POLICY,
    as_json: JsonOpt = False,
) -> None:
    """Check a receipt: its enclave's evidence under your policy, and the enclave's signature."""
    from sealedml.client import ReceiptBundle

    def action() -> None:
        bundle = ReceiptBundle.load(receipt_file)
        result = bundle.verify(_load_policy(policy))
        warn_if_simulated(result)
        if as_json:
            _print_json({"verified": True, "receipt": bundle.receipt, "claims": result.to_dict()})
        else:
            err.print(receipt_table(bundle.receipt))
            err.print("[bold green]receipt verified[/]: signed by an enclave that satisfies", str(policy))

    _run(action)


# -- demo -----------------------------------------------------------------------------------------

demo_app = typer.Typer(
    help="Run a showcase end to end on loopback: inference (default), genomics, heart, he or ray.",
    invoke_without_command=True,
)
app.add_typer(demo_app, name="demo")


@demo_app.callback()
def demo(
    ctx: typer.Context,
    data_dir: Annotated[Path | None, typer.Option(help="Keep the demo's server state here.")] = None,
) -> None:
    """Run the whole confidential-inference path on real medical data, on loopback."""
    if ctx.invoked_subcommand is not None:
        return
    from sealedml.demo import run_demo

    _run(lambda: run_demo(err, data_dir))


@demo_app.command("genomics")
def demo_genomics(
    data_dir: Annotated[Path | None, typer.Option(help="Keep the demo's server state here.")] = None,
    genes: Annotated[int, typer.Option(help="Genes in the synthetic cohort.")] = 2000,
    patients: Annotated[int, typer.Option(help="Patients in the synthetic cohort.")] = 300,
) -> None:
    """Two hospitals train one model on their joint gene-expression data without sharing a row."""
    from sealedml.demo_genomics import run_genomics_demo

    _run(lambda: run_genomics_demo(err, data_dir, n_genes=genes, n_patients=patients))


@demo_app.command("heart")
def demo_heart(
    data_dir: Annotated[Path | None, typer.Option(help="Keep the demo's server state here.")] = None,
    epsilon: Annotated[
        float, typer.Option(help="Epsilon of the DP training job (the dataset's budget is one more).")
    ] = 3.0,
) -> None:
    """A clinic trains a differentially private heart-disease model, publishes it; a doctor predicts."""
    from sealedml.demo_heart import run_heart_demo

    _run(lambda: run_heart_demo(err, data_dir, epsilon=epsilon))


@demo_app.command("he")
def demo_he(
    data_dir: Annotated[Path | None, typer.Option(help="Keep the demo's server state here.")] = None,
) -> None:
    """Encrypted-ML mode end to end: models evaluated on ciphertexts, and encrypted training."""
    from sealedml.demo_he import run_he_demo

    _run(lambda: run_he_demo(err, data_dir))


@demo_app.command("ray")
def demo_ray(
    data_dir: Annotated[Path | None, typer.Option(help="Keep the demo's server state here.")] = None,
    workers: Annotated[int, typer.Option(help="Attested enclave workers (Ray actors).")] = 3,
    rows: Annotated[int, typer.Option(help="Rows in the sealed batch prediction.")] = 200_000,
) -> None:
    """Scale out on Ray: attested enclave workers, a sharded batch surviving a killed worker,
    and data-parallel training."""
    from sealedml.demo_ray import run_ray_demo

    _run(lambda: run_ray_demo(err, data_dir, workers=workers, rows=rows))


def _register_subcommands() -> None:
    from sealedml.cli_batch import batch_app
    from sealedml.cli_he import register as register_he
    from sealedml.cli_ledger import ledger_app
    from sealedml.cli_market import market_app
    from sealedml.cli_training import register as register_training

    app.add_typer(market_app, name="market")
    app.add_typer(ledger_app, name="ledger")
    app.add_typer(batch_app, name="batch")
    register_training(app, model_app)
    register_he(app)


_register_subcommands()


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
