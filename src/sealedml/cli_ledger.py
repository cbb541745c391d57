"""``sealedml ledger ...``: check that receipts are in the transparency log and that it only grew."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

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
from sealedml.errors import InputError, LedgerError

ledger_app = typer.Typer(
    help="The transparency log of receipts: tree heads, proofs, chain anchors.", no_args_is_help=True
)

LogKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--log-key", envvar="SEALEDML_LOG_KEY", help="Pinned log public key (hex); default: first use."
    ),
]


def _client(url: str, token: str | None, log_key: str | None) -> Any:
    key = None
    if log_key:
        try:
            key = bytes.fromhex(log_key)
        except ValueError:
            raise InputError("input.malformed", "--log-key must be hex") from None
    return make_client(url, token, log_key=key)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError("input.malformed", f"cannot read {what} {path}: {exc}") from None


@ledger_app.command("sth")
def ledger_sth(
    save: Annotated[Path | None, typer.Option(help="Write the verified tree head to this file.")] = None,
    url: UrlOpt = DEFAULT_URL,
    log_key: LogKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch the latest signed tree head, verify it, and check it extends the last one you saw."""

    def action() -> Any:
        with _client(url, None, log_key) as client:
            previous = client.ledger.last
            head = client.ledger.observe(client._json("GET", "/v1/ledger/sth"))
            return previous, head

    previous, head = run_action(action)
    if save is not None:
        save.write_text(head.to_json(), encoding="utf-8")
    if as_json:
        print_json(head.to_dict())
        return
    err.print(f"tree head: {head.tree_size} entries, root {head.root_hash.hex()}, log {head.log_id[:16]}…")
    if previous is not None:
        err.print(f"[bold green]consistent[/] with the head of {previous.tree_size} entries seen before")


@ledger_app.command("verify")
def ledger_verify(
    receipt_file: Annotated[
        Path | None, typer.Argument(help="A receipt saved by `sealedml predict --receipts`.")
    ] = None,
    old_sth: Annotated[
        Path | None, typer.Option(help="A tree head saved earlier (`ledger sth --save`).")
    ] = None,
    new_sth: Annotated[
        Path | None, typer.Option(help="A later tree head; default: the log's latest.")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    log_key: LogKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a receipt's inclusion (as saved, and in the log now) and the log's consistency.

    With RECEIPT_FILE: its saved inclusion proof is checked offline, then the log is asked again
    and must still include it under a head consistent with every head seen before. With --old-sth
    (and optionally --new-sth): the log must prove the newer tree extends the older one.
    """
    from sealedml.client._receipts import ReceiptBundle
    from sealedml.ledger.log import check_consistency, check_inclusion, receipt_entry
    from sealedml.ledger.sth import SignedTreeHead

    if receipt_file is None and old_sth is None:
        raise typer.BadParameter("give a RECEIPT_FILE, or --old-sth (and --new-sth)")

    def action() -> dict[str, Any]:
        report: dict[str, Any] = {}
        with _client(url, token, log_key) as client:
            key = client.ledger.public_key
            if receipt_file is not None:
                bundle = ReceiptBundle.load(receipt_file)
                if bundle.ledger is None:
                    raise LedgerError("ledger.inclusion_invalid", f"{receipt_file} carries no ledger proof")
                saved = SignedTreeHead.from_dict(bundle.ledger["sth"])
                index = check_inclusion(
                    receipt_entry(bundle.receipt, bundle.signature), bundle.ledger["inclusion"], saved, key
                )
                client.ledger.observe(saved)
                now = client.ledger.recheck(bundle.receipt, bundle.signature)
                report["receipt"] = {
                    "job": bundle.receipt.get("job"),
                    "leaf_index": index,
                    "saved_tree_size": saved.tree_size,
                    "current_tree_size": now.sth.tree_size,
                }
            if old_sth is not None:
                old = SignedTreeHead.from_dict(_read_json(old_sth, "tree head"))
                if new_sth is not None:
                    new = SignedTreeHead.from_dict(_read_json(new_sth, "tree head"))
                else:
                    new = SignedTreeHead.from_dict(client._json("GET", "/v1/ledger/sth"))
                proof = client._json(
                    "GET", "/v1/ledger/consistency", params={"first": old.tree_size, "second": new.tree_size}
                )
                check_consistency(old, new, proof, key)
                report["consistency"] = {"old_tree_size": old.tree_size, "new_tree_size": new.tree_size}
        return report

    report = run_action(action)
    if as_json:
        print_json({"verified": True, **report})
        return
    if "receipt" in report:
        r = report["receipt"]
        err.print(
            f"[bold green]included[/]: receipt of job {escape(str(r['job']))} is entry {r['leaf_index']} "
            f"(saved head: {r['saved_tree_size']} entries; "
            f"the log still proves it at {r['current_tree_size']})"
        )
    if "consistency" in report:
        c = report["consistency"]
        err.print(
            f"[bold green]consistent[/]: the tree of {c['new_tree_size']} entries "
            f"extends that of {c['old_tree_size']}"
        )


@ledger_app.command("anchors")
def ledger_anchors(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """List the chain anchors of the log's tree heads."""

    def action() -> list[dict[str, Any]]:
        with _client(url, None, None) as client:
            return list(client._json("GET", "/v1/ledger/anchors"))

    anchors = run_action(action)
    if as_json:
        print_json(anchors)
        return
    if not anchors:
        err.print("no anchors (anchoring is off, or nothing was anchored yet)")
    for a in anchors:
        err.print(
            f"tree size {a['tree_size']}: root {a['root_hash'][:16]}… "
            f"in block {a['block_number']}, tx {a['tx_hash']}"
        )
