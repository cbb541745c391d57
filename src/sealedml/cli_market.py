"""``sealedml market ...``: browse listings, offer datasets, set prices, grant credits, report usage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from sealedml.cli_common import (
    DEFAULT_URL,
    JsonOpt,
    TokenOpt,
    UrlOpt,
    err,
    make_client,
    print_json,
    run_action,
)
from sealedml.errors import InputError

market_app = typer.Typer(
    help="The marketplace: models, datasets, TEE resources, credits, usage.", no_args_is_help=True
)


def _badge(passing: bool) -> str:
    return "[bold green]PASS[/]" if passing else "[bold red]FAIL[/]"


@market_app.command("models")
def market_models(
    query: Annotated[str | None, typer.Option("--query", "-q", help="Text in name or description.")] = None,
    max_price: Annotated[int | None, typer.Option(help="Highest price per row, in credits.")] = None,
    tee: Annotated[str | None, typer.Option(help="Only models served by this TEE type.")] = None,
    passing: Annotated[
        bool | None,
        typer.Option("--passing/--failing", help="Only listings whose enclave passes (or fails)."),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search the model catalog; each listing shows whether its enclave passes attestation now."""

    def action() -> list[dict[str, Any]]:
        with make_client(url, token) as client:
            return client.market.models(query=query, max_price=max_price, tee=tee, passing=passing)

    listings = run_action(action)
    if as_json:
        print_json(listings)
        return
    table = Table(title=f"Models ({len(listings)})")
    for column in ("name", "version", "owner", "price/row", "inputs", "output", "TEE", "attestation", "uses"):
        table.add_column(column)
    for m in listings:
        table.add_row(
            escape(m["name"]),
            escape(m["version"]),
            escape(m["owner"]),
            str(m["price_per_row"]),
            str(len(m["input_columns"])),
            str((m["output_policy"] or {}).get("mode", "")),
            escape(m["tee"] or ""),
            _badge(m["attestation_passing"]),
            str(m["uses"]),
        )
    err.print(table)
    for m in listings:
        if not m["attestation_passing"]:
            err.print(f"[red]{escape(m['name'])}[/]: {escape(m['attestation_reason'])}", highlight=False)


@market_app.command("datasets")
def market_datasets(
    query: Annotated[str | None, typer.Option("--query", "-q")] = None,
    max_price: Annotated[int | None, typer.Option()] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List datasets offered for training collaborations (schema and size only, never rows)."""

    def action() -> list[dict[str, Any]]:
        with make_client(url, token) as client:
            return client.market.datasets(query=query, max_price=max_price)

    datasets = run_action(action)
    if as_json:
        print_json(datasets)
        return
    table = Table(title=f"Datasets ({len(datasets)})")
    for column in ("name", "owner", "rows", "columns", "size", "price", "description"):
        table.add_column(column)
    for d in datasets:
        table.add_row(
            escape(d["name"]),
            escape(d["owner"]),
            str(d["rows"]),
            str(len(d["columns"])),
            f"{d['size_bytes'] / 1e6:.1f} MB",
            str(d["price"]),
            escape(d["description"][:60]),
        )
    err.print(table)


@market_app.command("offer")
def market_offer(
    name: str,
    data: Annotated[Path, typer.Option(help="CSV or Parquet file: only its schema and size are sent.")],
    description: Annotated[str, typer.Option()] = "",
    price: Annotated[int, typer.Option(help="Credits per training job.")] = 0,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Offer a dataset for training collaborations: reads the file locally, lists schema and size only."""
    from sealedml.client._data import table_schema

    def action() -> dict[str, Any]:
        columns, rows = table_schema(data)
        with make_client(url, token) as client:
            return client.market.offer_dataset(
                name,
                columns=columns,
                rows=rows,
                size_bytes=data.stat().st_size,
                description=description,
                price=price,
            )

    offered = run_action(action)
    if as_json:
        print_json(offered)
    else:
        err.print(
            f"listed dataset {escape(offered['name'])}: {offered['rows']} rows, "
            f"{len(offered['columns'])} columns (no row left this machine)"
        )


@market_app.command("resources")
def market_resources(
    refresh: Annotated[bool, typer.Option(help="Re-attest the enclave now.")] = False,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List TEE resources with their last verified attestation claims."""

    def action() -> list[dict[str, Any]]:
        with make_client(url, token) as client:
            return client.market.resources(refresh=refresh)

    resources = run_action(action)
    if as_json:
        print_json(resources)
        return
    table = Table(title="TEE resources")
    for column in ("name", "TEE", "measurement", "price/hour", "attestation", "checked", "reason"):
        table.add_column(column, overflow="fold")
    for r in resources:
        tee = r["tee"] + (" [yellow](SIMULATED)[/]" if r["simulated"] else "")
        age = r.get("evidence_age_seconds")
        table.add_row(
            escape(r["name"]),
            tee,
            r["measurement"][:16] + "…",
            str(r["price_per_hour"]),
            _badge(r["passing"]),
            f"{age:.0f} s ago" if age is not None else "never",
            escape(r["error_code"] or ""),
        )
    err.print(table)


@market_app.command("price")
def market_price(
    model: str,
    price_per_row: int,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Set the price per predicted row of one of your models (credits, 0 for free)."""

    def action() -> dict[str, Any]:
        with make_client(url, token) as client:
            return client.market.set_price(client.get_model(model).id, price_per_row)

    updated = run_action(action)
    err.print(f"{escape(updated['name'])} now costs {updated['price_per_row']} credits per row")


@market_app.command("credit")
def market_credit(
    account_id: str,
    amount: int,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Grant credits to an account (admin)."""

    def action() -> int:
        with make_client(url, token) as client:
            return client.market.grant(account_id, amount)

    balance = run_action(action)
    err.print(f"account {escape(account_id)} now has {balance} credits")


@market_app.command("report")
def market_report(
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write every charge as CSV.")] = None,
    chart: Annotated[Path | None, typer.Option(help="Draw credits per model and party as PNG.")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Uses, rows and credits per model and per party, with the jobs (receipts) behind them."""
    from sealedml.client._market import report_summary, write_report_chart, write_report_csv

    def action() -> list[dict[str, Any]]:
        if chart is not None and chart.suffix.lower() != ".png":
            raise InputError("input.malformed", f"--chart writes PNG: {chart} should end in .png")
        with make_client(url, token) as client:
            rows = client.market.report()
        if csv_path is not None:
            write_report_csv(rows, csv_path)
        if chart is not None:
            write_report_chart(rows, chart)
        return rows

    rows = run_action(action)
    summary = report_summary(rows)
    if as_json:
        print_json({"charges": rows, "summary": summary})
        return
    for key, title in (
        ("model", "Per model"),
        ("provider", "Per provider (revenue)"),
        ("payer", "Per payer"),
    ):
        table = Table(title=title)
        for column in (key, "uses", "rows", "credits"):
            table.add_column(column)
        for name, entry in sorted(summary[key].items()):
            table.add_row(escape(name), str(entry["uses"]), str(entry["rows"]), str(entry["credits"]))
        err.print(table)
    receipts = Table(title=f"Charges and the jobs behind them ({len(rows)})")
    for column in ("job", "model", "payer", "rows", "credits", "settled"):
        receipts.add_column(column)
    for row in rows[-50:]:
        receipts.add_row(
            row["job_id"][:12],
            escape(row["model"]),
            escape(row["payer"]),
            str(row["rows"]),
            str(row["amount"]),
            row["settled_at"][:19],
        )
    err.print(receipts)
    for path in (csv_path, chart):
        if path is not None:
            err.print(f"wrote {path}")
