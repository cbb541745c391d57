"""``sealedml dataset|train|approve|jobs|model fetch``: confidential training from the command line.

Keys stay in the keys dir (``SEALEDML_KEYS_DIR``, files mode 0600): each dataset's data key and
Ed25519 approval key, this user's X25519 recipient key, and for each job the key that opens the
enclave's answer (submitter) or the evidence of the enclave an approval went to (owner). Metrics
are formatted and charted here, never in the enclave.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from sealedml.cli_common import (
    DEFAULT_POLICY,
    DEFAULT_URL,
    JsonOpt,
    PolicyOpt,
    TokenOpt,
    UrlOpt,
    err,
    keys_dir,
    make_client,
    print_json,
    run_action,
)
from sealedml.errors import InputError

dataset_app = typer.Typer(
    help="Encrypted training datasets: upload (encrypted here), list, delete.", no_args_is_help=True
)
jobs_app = typer.Typer(
    help="List jobs; show, wait for or cancel a training job.", invoke_without_command=True
)

__all__ = ["approve", "dataset_app", "jobs_app", "model_fetch", "recipient_key", "register", "train"]


def keystore() -> Any:
    """The CLI's :class:`~sealedml.client._training.KeyStore` (in the keys dir)."""
    from sealedml.client._training import KeyStore

    return KeyStore(keys_dir())


def _simulated_warning(attestation: Any) -> None:
    from sealedml.cli import warn_if_simulated

    warn_if_simulated(attestation)


# -- datasets -------------------------------------------------------------------------------------


@dataset_app.command("upload")
def dataset_upload(
    data: Annotated[Path, typer.Argument(help="CSV or Parquet file (it is encrypted here, in chunks).")],
    name: Annotated[str, typer.Option("--name", help="Dataset name (public).")],
    epsilon_total: Annotated[
        float | None,
        typer.Option(help="Privacy budget: only differentially private jobs may then use the dataset."),
    ] = None,
    description: Annotated[str, typer.Option()] = "",
    offer: Annotated[
        bool, typer.Option(help="Also list it on the market (publishes its column names and row count).")
    ] = False,
    price: Annotated[int, typer.Option(help="With --offer: credits per training job.")] = 0,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    policy: PolicyOpt = DEFAULT_POLICY,
    as_json: JsonOpt = False,
) -> None:
    """Encrypt a dataset locally, stream the ciphertext up, and release its key to the attested enclave.

    The schema travels inside the ciphertext; the data key and your approval key's public half go
    only to the enclave. Both private keys stay in the keys dir.
    """
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from sealedml.client._training import content_type_for

    def action() -> dict[str, Any]:
        content_type = content_type_for(data)
        store = keystore()
        approval_key = ed25519.Ed25519PrivateKey.generate()
        with make_client(url, token, policy) as client:
            attestation = client.attest()
            _simulated_warning(attestation)
            err.print(f"encrypting {escape(str(data))} locally (AES-256-GCM, chunked) …", highlight=False)
            with Progress(
                TextColumn("uploading ciphertext"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=err,
                transient=True,
            ) as bar:
                task = bar.add_task("upload", total=None)
                uploaded = client.training.upload_file(
                    data,
                    name,
                    approval_key=approval_key,
                    epsilon_total=epsilon_total,
                    description=description,
                    progress=lambda sent, total: bar.update(task, completed=sent, total=total),
                )
            key_file = store.save_dataset(uploaded, content_type=content_type)
            listed = None
            if offer:
                from sealedml.client._data import table_schema

                columns, rows = table_schema(data)
                listed = client.training.offer(
                    uploaded.info.id, columns=columns, rows=rows, price=price, description=description
                )
        confirmation = uploaded.confirmation
        err.print(
            f"uploaded {uploaded.info.blob_size:,} bytes of ciphertext "
            f"(sha256 {str(uploaded.info.blob_sha256)[:16]}…); the enclave decrypted "
            f"{confirmation.get('rows')} rows x {confirmation.get('columns')} columns and confirmed the "
            "schema digest",
            highlight=False,
        )
        return {
            "id": uploaded.info.id,
            "name": uploaded.info.name,
            "status": uploaded.info.status,
            "rows": confirmation.get("rows"),
            "columns": confirmation.get("columns"),
            "schema_sha256": uploaded.schema_sha256,
            "blob_sha256": uploaded.info.blob_sha256,
            "epsilon_total": uploaded.info.epsilon_total,
            "listing_id": listed.listing_id if listed else None,
            "key_file": str(key_file),
        }

    summary = run_action(action)
    if as_json:
        print_json(summary)
    else:
        budget = f", privacy budget epsilon {summary['epsilon_total']}" if summary["epsilon_total"] else ""
        listed = f", listed on the market at {price} credits per job" if summary["listing_id"] else ""
        err.print(
            f"[bold green]dataset ready[/] {escape(summary['name'])} ({summary['id']}){budget}{listed}; "
            f"keys saved to {escape(summary['key_file'])}",
            highlight=False,
        )


@dataset_app.command("list")
def dataset_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List your datasets with their ciphertext size and privacy budget."""

    def action() -> list[Any]:
        with make_client(url, token) as client:
            return client.training.list_datasets()

    datasets = run_action(action)
    if as_json:
        print_json([d.raw for d in datasets])
        return
    table = Table(title=f"Datasets ({len(datasets)})")
    for column in ("name", "id", "status", "ciphertext", "epsilon spent / total", "listed"):
        table.add_column(column)
    for d in datasets:
        budget = "—" if d.epsilon_total is None else f"{d.epsilon_spent:.3g} / {d.epsilon_total:.3g}"
        table.add_row(
            escape(d.name),
            d.id,
            d.status,
            f"{(d.blob_size or 0) / 1e6:.2f} MB",
            budget,
            "yes" if d.listing_id else "no",
        )
    err.print(table)


@dataset_app.command("delete")
def dataset_delete(
    ref: Annotated[str, typer.Argument(help="Dataset name or id.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Delete one of your datasets: its ciphertext, sealed state and copy in the enclave."""

    def action() -> str:
        with make_client(url, token) as client:
            dataset = client.training.dataset(ref)
            client.training.delete_dataset(dataset.id)
            return dataset.id

    deleted = run_action(action)
    err.print(f"deleted dataset {escape(ref)} ({deleted})", highlight=False)


# -- training -------------------------------------------------------------------------------------


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """Turn ``k=v`` pairs into hyper-parameters; values are parsed as JSON when they can be
    (``C=0.5``, ``hidden_layer_sizes=[32]``), else kept as text (``activation=tanh``)."""
    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise InputError("input.spec_invalid", f"--param takes key=value, got {pair!r}")
        params[key.strip()] = _value(raw.strip())
    return params


def _load_bounds(path: Path | None) -> dict[str, list[float]] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError("input.malformed", f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise InputError("input.malformed", f"{path} is not JSON: {{feature: [low, high], ...}}") from exc
    if not isinstance(data, dict):
        raise InputError("input.malformed", f"{path} must map feature names to [low, high]")
    return data


def _classes(text: str | None) -> list[int | str] | None:
    if text is None:
        return None
    values = [v.strip() for v in text.split(",") if v.strip()]
    try:
        return [int(v) for v in values]
    except ValueError:
        return list(values)


def _features(
    explicit: str | None,
    bounds: dict[str, list[float]] | None,
    label: str,
    local_columns: list[str] | None,
    needed: bool,
) -> list[str] | None:
    if explicit:
        return [c.strip() for c in explicit.split(",") if c.strip()]
    if not needed:
        return None
    if local_columns:
        chosen = [c for c in local_columns if c != label]
        return [c for c in chosen if c in bounds] if bounds else chosen
    if bounds:
        return list(bounds)
    raise InputError(
        "input.spec_invalid",
        "--publish needs the feature columns (they become the model's public inputs): pass --features",
    )


def _state_line(job: Any) -> str:
    where = f"{job.phase}, {job.progress}%" if job.progress is not None else str(job.phase)
    line = f"job {job.id[:12]}…: [bold]{job.status}[/] ({escape(where)})"
    if job.status == "awaiting_approval" and job.waiting_for:
        line += f" — waiting for the owners of {', '.join(d[:12] + '…' for d in job.waiting_for)} to approve"
    elif job.error_code and job.status != "done":
        line += f" — {escape(job.error_code)}"
    return line


def show_outcome(outcome: Any, *, title: str = "Released metrics") -> None:
    """Print a finished job's metrics, phases, budgets, and what was verified."""
    from sealedml.client._training_report import metric_rows

    table = Table(title=title, show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    for name, value in metric_rows(outcome.metrics):
        table.add_row(escape(name), escape(value))
    err.print(table)
    if outcome.phases:
        phases = Table(title="Enclave phases")
        phases.add_column("phase")
        phases.add_column("seconds", justify="right")
        for phase in outcome.phases:
            phases.add_row(str(phase.get("phase")), f"{float(phase.get('seconds') or 0):.3f}")
        err.print(phases)
    for budget in outcome.budgets:
        if budget.get("epsilon_total") is not None:
            err.print(
                f"dataset {budget['dataset'][:12]}…: epsilon spent {budget['epsilon_spent']:.3g} of "
                f"{budget['epsilon_total']:.3g} (generation {budget['generation']})",
                highlight=False,
            )
    ledger = outcome.ledger or {}
    err.print(
        "[bold green]receipt verified[/]: kind train, signed by the attested enclave "
        f"{str(outcome.receipt.get('enclave_key'))[:16]}…, "
        f"spec {str(outcome.receipt.get('spec_sha256'))[:16]}…"
        + (f"; logged as entry {ledger.get('leaf_index')} of the transparency log" if ledger else ""),
        highlight=False,
    )


def train(
    dataset: Annotated[
        list[str], typer.Option("--dataset", help="Dataset name or id (repeat for joint jobs).")
    ],
    label: Annotated[str, typer.Option(help="The label column.")],
    algorithm: Annotated[
        str, typer.Option(help="logistic_regression, gradient_boosting, random_forest, mlp or naive_bayes.")
    ],
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Hyper-parameter key=value (repeatable).")
    ] = None,
    features: Annotated[str | None, typer.Option(help="Comma-separated feature columns.")] = None,
    dp_epsilon: Annotated[
        float | None, typer.Option(help="Train with differential privacy at this epsilon.")
    ] = None,
    feature_bounds: Annotated[
        Path | None, typer.Option(help="JSON {feature: [low, high]}: public bounds (needed with DP).")
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="Comma-separated label values (needed with DP).")
    ] = None,
    recipient: Annotated[
        list[str] | None,
        typer.Option("--recipient", help="'me' or an X25519 public key (hex) that receives the model key."),
    ] = None,
    publish: Annotated[
        str | None, typer.Option(help="Publish the model to the catalog under this name (servable).")
    ] = None,
    output_policy: Annotated[str, typer.Option(help="With --publish: probabilities, rounded or label.")] = (
        "probabilities"
    ),
    query_budget: Annotated[
        int | None, typer.Option(help="With --publish: rows each client may score.")
    ] = None,
    validation_fraction: Annotated[float | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    wait: Annotated[
        bool, typer.Option(help="Wait for approvals and training, then show the metrics.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 3600.0,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    policy: PolicyOpt = DEFAULT_POLICY,
    as_json: JsonOpt = False,
) -> None:
    """Train a model on encrypted datasets inside the attested enclave.

    The spec is validated here, sealed to the enclave and queued; your own datasets are approved at
    once, other owners run `sealedml approve JOB`. Only the recipients can open the model key.
    """

    def action() -> dict[str, Any]:
        from sealedml.client._training import public_hex

        store = keystore()
        with make_client(url, token, policy) as client:
            attestation = client.attest()
            _simulated_warning(attestation)
            refs = [client.training.resolve(ref) for ref in dataset]
            ids = [str(ref["id"]) for ref in refs]
            recipients = [
                public_hex(store.recipient_key()) if r == "me" else r for r in (recipient or ["me"])
            ]
            bounds = _load_bounds(feature_bounds)
            local = next((store.dataset(i) for i in ids if store.dataset(i) is not None), None)
            chosen = _features(
                features, bounds, label, list(local["columns"]) if local else None, publish is not None
            )
            serving = {"output_policy": {"mode": output_policy, "decimals": 3}, "query_budget": query_budget}
            spec = client.training.build_spec(
                ids,
                label=label,
                algorithm=algorithm,
                recipients=recipients,
                params=parse_params(param),
                features=chosen,
                dp_epsilon=dp_epsilon,
                feature_bounds=bounds,
                classes=_classes(classes),
                publish=publish is not None,
                serving=serving if publish is not None else None,
                validation_fraction=validation_fraction,
                seed=seed,
            )
            submission, job = client.training.submit(spec, publish_name=publish)
            store.save_job(job.id, submission.to_dict())
            err.print(
                f"submitted training job [bold]{job.id}[/] (spec sha256 {submission.spec_sha256}) "
                f"on {len(ids)} dataset(s)",
                highlight=False,
            )
            own = {d: key for d, key in store.approval_keys().items() if d in ids}
            if own:
                approvals = client.training.approve(job.id, own)
                err.print(f"approved it for your dataset(s) {', '.join(a.dataset for a in approvals)}")
            summary: dict[str, Any] = {
                "job": job.id,
                "spec_sha256": submission.spec_sha256,
                "status": job.status,
            }
            if not wait:
                err.print(
                    f"the job runs once every owner approved: `sealedml approve {job.id}`; follow it with "
                    f"`sealedml jobs wait {job.id}`"
                )
                return summary
            latest = [submission]

            def refreshed(new: Any) -> None:
                latest[0] = new
                store.save_job(new.job_id, new.to_dict())

            final = client.training.wait(
                job.id,
                submission=submission,
                on_update=lambda j: err.print(_state_line(j), highlight=False),
                on_refresh=refreshed,
                timeout=timeout,
            )
            if final.status != "done":
                summary["status"] = final.status
                return summary
            outcome = client.training.outcome(latest[0], final)
        show_outcome(outcome)
        if publish is not None:
            err.print(
                f"[bold green]published[/] {escape(publish)} ({final.model_id}): others can predict with it"
            )
        summary.update(status="done", model=final.model_id, metrics=outcome.metrics, receipt=outcome.receipt)
        return summary

    summary = run_action(action)
    if as_json:
        print_json(summary)


def approve(
    ref: Annotated[str, typer.Argument(help="Job id, or the job's spec digest (SHA-256 hex).")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    policy: PolicyOpt = DEFAULT_POLICY,
    as_json: JsonOpt = False,
) -> None:
    """Approve a training job for your datasets: sign its exact spec digest with your approval key.

    The digest is recomputed here from the spec the platform shows; the enclave checks the
    signature against the key you provisioned and confirms in a response only you can open.
    """

    def action() -> list[Any]:
        store = keystore()
        with make_client(url, token, policy) as client:
            attestation = client.attest()
            _simulated_warning(attestation)
            job = client.training.find_job(ref)
            spec = job.spec
            err.print(
                f"job {job.id}: {spec.get('algorithm')} on {len(spec.get('datasets', []))} dataset(s), label "
                f"{escape(str(spec.get('label')))}, "
                + (f"DP epsilon {spec.get('dp_epsilon')}, " if spec.get("dp_epsilon") else "")
                + f"{len(spec.get('recipients', []))} recipient(s), publish={spec.get('publish')}",
                highlight=False,
            )
            approvals = client.training.approve(
                job, store.approval_keys(), expected_sha256=ref if len(ref) == 64 else None
            )
            saved = store.job(job.id)
            if (saved is None or saved.get("role") != "submitter") and client.training.last_evidence:
                evidence, attested_at = client.training.last_evidence
                store.save_job(job.id, {"role": "owner", "evidence": evidence, "attested_at": attested_at})
        return approvals

    approvals = run_action(action)
    if as_json:
        print_json([a.__dict__ for a in approvals])
        return
    for a in approvals:
        err.print(
            f"[bold green]approved[/] job {a.job_id} for dataset {a.dataset} (spec {a.spec_sha256[:16]}…): "
            f"the enclave confirmed it; the job is now {a.status}",
            highlight=False,
        )


# -- jobs -----------------------------------------------------------------------------------------


@jobs_app.callback()
def jobs(
    ctx: typer.Context, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """List this account's jobs: predictions, and training jobs it submitted or holds data for."""
    if ctx.invoked_subcommand is not None:
        return

    def action() -> list[dict[str, Any]]:
        with make_client(url, token) as client:
            return client.list_jobs()

    listing = run_action(action)
    if as_json:
        print_json(listing)
        return
    table = Table(title="Jobs")
    for col in ("id", "kind", "model", "status", "phase", "progress", "rows", "created"):
        table.add_column(col)
    for job in listing:
        progress = job.get("progress")
        table.add_row(
            str(job.get("id")),
            str(job.get("kind", "predict")),
            str(job.get("model_id")),
            str(job.get("status")),
            str(job.get("phase") or ""),
            f"{progress}%" if progress is not None else "",
            str(job.get("rows")),
            str(job.get("created_at")),
        )
    err.print(table)


def _released(client: Any, store: Any, job: Any) -> Any:
    """The job's released metrics as this user may read them: the submitter's sealed answer, or a
    recipient's grant; ``None`` if neither is here."""
    from sealedml.client._training import Submission

    saved = store.job(job.id) or {}
    if saved.get("role") == "submitter":
        return client.training.outcome(Submission.from_dict(saved), job)
    evidence = (saved["evidence"], float(saved["attested_at"])) if "evidence" in saved else None
    try:
        key = store.recipient_key(create=False)
    except InputError:
        return None
    from sealedml.client._training import public_hex

    if public_hex(key) not in job.grants:
        return None
    return client.training.grant_outcome(job, key, evidence=evidence)


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[str, typer.Argument(help="Training job id.")],
    chart: Annotated[Path | None, typer.Option(help="Write the metrics as a PNG chart.")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    policy: PolicyOpt = DEFAULT_POLICY,
    as_json: JsonOpt = False,
) -> None:
    """Show a training job: state, approvals, and (when done) its released metrics, verified."""

    def action() -> tuple[Any, Any]:
        store = keystore()
        with make_client(url, token, policy if policy.is_file() else None) as client:
            job = client.training.job(job_id)
            outcome = _released(client, store, job) if job.status == "done" else None
        return job, outcome

    job, outcome = run_action(action)
    if as_json:
        print_json({"job": job.raw, "metrics": outcome.metrics if outcome else None})
        return
    table = Table(title=f"Training job {job.id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    spec = job.spec
    for name, value in (
        ("status", job.status),
        ("phase", f"{job.phase} ({job.progress}%)" if job.progress is not None else str(job.phase)),
        ("algorithm", f"{spec.get('algorithm')} {json.dumps(spec.get('params'))}"),
        ("label", str(spec.get("label"))),
        ("differential privacy", f"epsilon {spec.get('dp_epsilon')}" if spec.get("dp_epsilon") else "no"),
        ("spec sha256", job.spec_sha256),
        ("model", job.model_id + (" (published)" if spec.get("publish") else "")),
        ("recipients", ", ".join(r[:16] + "…" for r in spec.get("recipients", []))),
    ):
        table.add_row(name, escape(value))
    for entry in job.datasets:
        table.add_row(
            f"dataset {entry['position']}",
            f"{entry['dataset']} — {'approved' if entry['approved'] else 'NOT approved yet'}",
        )
    if job.error_code:
        table.add_row(
            "error" if job.status == "failed" else "waiting",
            escape(f"[{job.error_code}] {job.error_message}"),
        )
    err.print(table)
    if outcome is not None:
        show_outcome(outcome)
        if chart is not None:
            from sealedml.client._training_report import write_metrics_chart

            run_action(
                lambda: write_metrics_chart(outcome.metrics, outcome.phases, chart, title=f"job {job.id}")
            )
            err.print(f"chart written to {escape(str(chart))}", highlight=False)
    elif job.status == "done":
        err.print("the metrics are released only to the submitter and the recipients of the model key")


@jobs_app.command("wait")
def jobs_wait(
    job_id: Annotated[str, typer.Argument(help="Training job id.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 3600.0,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    policy: PolicyOpt = DEFAULT_POLICY,
) -> None:
    """Follow a training job until it ends; as its submitter, keep its sealed request fresh."""
    from sealedml.client._training import Submission

    def action() -> Any:
        store = keystore()
        saved = store.job(job_id) or {}
        submission = Submission.from_dict(saved) if saved.get("role") == "submitter" else None
        latest = [submission]

        def refreshed(new: Any) -> None:
            latest[0] = new
            store.save_job(new.job_id, new.to_dict())

        with make_client(url, token, policy) as client:
            final = client.training.wait(
                job_id,
                submission=submission,
                on_update=lambda j: err.print(_state_line(j), highlight=False),
                on_refresh=refreshed,
                timeout=timeout,
            )
            if final.status == "done" and latest[0] is not None:
                return client.training.outcome(latest[0], final)
        return None

    outcome = run_action(action)
    if outcome is not None:
        show_outcome(outcome)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: Annotated[str, typer.Argument(help="Training job id.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Cancel a training job you submitted, before it runs (its price is refunded)."""

    def action() -> Any:
        with make_client(url, token) as client:
            return client.training.cancel(job_id)

    job = run_action(action)
    err.print(f"job {job.id} is {job.status}", highlight=False)


# -- models ---------------------------------------------------------------------------------------


def model_fetch(
    job_id: Annotated[str, typer.Argument(help="The training job that produced the model.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the decrypted ONNX model.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    policy: PolicyOpt = DEFAULT_POLICY,
    as_json: JsonOpt = False,
) -> None:
    """Download a trained model you are a recipient of and decrypt it here with your grant."""

    def action() -> Any:
        store = keystore()
        key = store.recipient_key(create=False)
        saved = store.job(job_id) or {}
        evidence = (saved["evidence"], float(saved["attested_at"])) if "evidence" in saved else None
        with make_client(url, token, policy) as client:
            fetched = client.training.fetch_model(job_id, key, evidence=evidence)
        output.write_bytes(fetched.onnx_bytes)
        return fetched

    fetched = run_action(action)
    summary = {
        "job": fetched.job_id,
        "model": fetched.model_id,
        "model_sha256": fetched.model_sha256,
        "input_columns": list(fetched.input_columns),
        "accuracy": fetched.metrics.get("accuracy"),
        "output": str(output),
    }
    if as_json:
        print_json(summary)
    else:
        err.print(
            f"[bold green]model decrypted[/] to {escape(str(output))} ({len(fetched.onnx_bytes):,} bytes, "
            f"sha256 {fetched.model_sha256[:16]}…, {len(fetched.input_columns)} inputs); the receipt and the "
            "grant agree on every digest",
            highlight=False,
        )


def recipient_key(as_json: JsonOpt = False) -> None:
    """Print your X25519 recipient public key (made on first use): share it to receive model keys."""
    from sealedml.client._training import public_hex

    key = public_hex(run_action(lambda: keystore().recipient_key()))
    if as_json:
        print_json({"recipient": key})
    else:
        typer.echo(key)


def register(app: typer.Typer, model_app: typer.Typer) -> None:
    """Add the training commands to the ``sealedml`` app and its ``model`` group."""
    app.add_typer(dataset_app, name="dataset")
    app.add_typer(jobs_app, name="jobs")
    app.command("train")(train)
    app.command("approve")(approve)
    app.command("recipient-key")(recipient_key)
    model_app.command("fetch")(model_fetch)
