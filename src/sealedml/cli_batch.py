"""``sealedml batch predict``: a whole file through the streaming batch endpoint, with a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sealedml.cli_common import (
    DEFAULT_POLICY,
    DEFAULT_URL,
    PolicyOpt,
    TokenOpt,
    UrlOpt,
    err,
    make_client,
    run_action,
)

batch_app = typer.Typer(
    help="Large files: sharded, streaming, in-order batch predictions.", no_args_is_help=True
)


@batch_app.command("predict")
def batch_predict(
    data: Annotated[Path, typer.Argument(help="CSV or Parquet file with the model's input columns.")],
    model: Annotated[str, typer.Option("--model", help="Model name or id.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Predictions file (.parquet or .csv).")],
    shard_rows: Annotated[int, typer.Option(help="Rows per sealed shard.")] = 10_000,
    window: Annotated[int, typer.Option(help="Shards the platform may hold in flight (1..64).")] = 4,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    policy: PolicyOpt = DEFAULT_POLICY,
) -> None:
    """Seal each shard of DATA to the attested enclave (or enclave cluster), stream them, and write
    the predictions in input order; every shard's receipt is verified before its rows are written."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sealedml.client._batch import predict_batch
    from sealedml.client._data import count_rows

    def action() -> None:
        with make_client(url, token, policy) as client:
            attestation = client.attest()
            if attestation.claims.simulated:
                err.print("[bold yellow]SIMULATED TEE[/]: this enclave offers NO protection from the host.")
            total = count_rows(data) if data.is_file() else None
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            ) as bar:
                upload = bar.add_task("sealed and sent", total=total)
                task = bar.add_task("scored and verified", total=total)
                result = predict_batch(
                    client,
                    model,
                    data,
                    output,
                    shard_rows=shard_rows,
                    window=window,
                    progress=lambda done, _total: bar.update(task, completed=done),
                    sent=lambda done, _total: bar.update(upload, completed=done),
                )
        err.print(
            f"[bold green]done[/]: {result.rows} row(s) in {result.shards} sealed shard(s), "
            f"every receipt verified; predictions in {output}"
        )

    run_action(action)
