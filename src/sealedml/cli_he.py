"""``sealedml he ...``: the client's CKKS keys and encrypted training, and the helpers ``predict --mode he``
and ``model publish --mode he`` share.

HE keys live in the CLI keys dir (``he/<preset>.hekeys``, mode 0600), one key set per preset; the
secret key never leaves this machine. Only the public context is uploaded, once per key set.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from sealedml.cli_common import DEFAULT_URL, JsonOpt, TokenOpt, UrlOpt, err, keys_dir, make_client, print_json
from sealedml.cli_common import run_action as _run
from sealedml.errors import InputError

if TYPE_CHECKING:
    from sealedml.he.keys import HEKeys
    from sealedml.he.models import HEModel

he_app = typer.Typer(
    help="Encrypted-ML mode (CKKS): your HE keys and encrypted training.", no_args_is_help=True
)
keys_app = typer.Typer(
    help="The HE keys kept in the CLI keys dir (one key set per preset).", no_args_is_help=True
)
he_app.add_typer(keys_app, name="keys")

HE_WARNING = (
    "[bold yellow]HE mode[/]: the platform holds this model's weights [bold]in plaintext[/] to compute on "
    "encrypted inputs (clients learn raw scores; see docs/he.md for what is revealed)."
)
MAX_PICKLE_FILE = 1024 * 1024 * 1024


def he_keys_path(preset: str) -> Path:
    """Where the CLI keeps the HE key set of ``preset``."""
    return keys_dir() / "he" / f"{preset}.hekeys"


def load_or_create_keys(preset: str) -> tuple[HEKeys, bool]:
    """Return the CLI's key set for ``preset`` and whether it was generated now (saved 0600)."""
    from sealedml.he.keys import HEKeyring

    return HEKeyring(he_keys_path(preset).parent).get(preset)


def load_he_model(path: Path, columns: list[str] | None) -> HEModel:
    """Load an HE model from ``.he.json`` or convert a pickled scikit-learn estimator/Pipeline.

    Pickles execute code when loaded: only load your own. Columns come from ``columns``, the
    estimator's ``feature_names_in_``, or ``x0..xN``.
    """
    from sealedml.he.models import HEModel, he_model_from_sklearn

    if not path.is_file():
        raise InputError("input.malformed", f"no such model file: {path}")
    if path.stat().st_size > MAX_PICKLE_FILE:
        raise InputError("input.too_large", "model file is larger than 1 GiB")
    if path.name.lower().endswith(".json"):
        model = HEModel.from_json(path.read_bytes())
        if columns and list(columns) != list(model.input_columns):
            raise InputError("input.schema_mismatch", "--columns differ from the HE model's input columns")
        return model
    suffix = path.suffix.lower()
    if suffix not in (".pkl", ".pickle", ".joblib"):
        raise InputError(
            "input.malformed", "HE mode takes a .he.json model or a pickled scikit-learn estimator"
        )
    try:
        if suffix == ".joblib":
            import joblib

            estimator = joblib.load(path)
        else:
            with path.open("rb") as handle:
                estimator = pickle.load(handle)  # noqa: S301 - the provider's own model file
    except Exception as exc:
        raise InputError("input.malformed", f"cannot unpickle {path.name}: {type(exc).__name__}") from exc
    names = list(columns or [str(c) for c in getattr(estimator, "feature_names_in_", [])])
    if not names:
        names = [f"x{i}" for i in range(int(getattr(estimator, "n_features_in_", 0)))]
    return he_model_from_sklearn(estimator, names)


def publish_he(
    model_file: Path,
    *,
    name: str,
    columns: list[str] | None,
    description: str,
    price_per_row: int,
    query_budget: int | None,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Publish a model in HE mode and print what was published (``model publish --mode he``)."""
    model = load_he_model(model_file, columns)
    err.print(HE_WARNING)
    with make_client(url, token) as client:
        info = client.he.publish(
            name,
            model,
            description=description,
            price_per_row=price_per_row,
            query_budget=query_budget,
        )
    summary = {
        "id": info.id,
        "name": info.name,
        "status": info.status,
        "mode": "he",
        "kind": model.kind,
        "preset": model.preset,
        "input_columns": list(model.input_columns),
        "outputs": model.outputs,
    }
    if as_json:
        print_json(summary)
    else:
        err.print(
            f"[bold green]published[/] {escape(info.name)} ({info.id}) in HE mode: {model.kind}, "
            f"{len(model.input_columns)} inputs, clients use the {model.preset!r} preset",
            highlight=False,
        )


def predict_he(
    data: Path, *, model: str, output: Path | None, batch_rows: int | None, url: str, token: str | None
) -> None:
    """Predict a file in HE mode (``predict --mode he``): encrypt here, decrypt here, write the result."""
    import numpy as np

    from sealedml.client import write_predictions
    from sealedml.client._data import count_rows, prediction_records

    if batch_rows is not None and batch_rows <= 0:
        raise InputError("input.malformed", "--batch-rows must be positive")
    from sealedml.he.keys import HEKeyring

    total = count_rows(data) if data.is_file() else None
    # One key set per preset, plus one with Galois keys generated the first time a small batch
    # uses the rows layout; each public context is uploaded to the platform once.
    ring = HEKeyring(he_keys_path("linear").parent)
    with make_client(url, token) as client:
        spec = client.he.model(model)
        records: list[dict[str, Any]] = []
        rows = sent = received = batches = 0
        seconds = 0.0
        layouts: set[str] = set()
        first = True
        with Progress(
            TextColumn("encrypted scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        ) as bar:
            task = bar.add_task("rows", total=total)
            for batch in client.he.predict_file(spec.id, data, keys=ring, batch_rows=batch_rows):
                for path in ring.created:
                    bar.console.print(f"generated HE keys in {path} (0600; the secret key stays here)")
                ring.created.clear()
                layouts.add(batch.layout)
                batches += 1
                rows += batch.rows
                sent += batch.request_bytes
                received += batch.response_bytes
                seconds += batch.seconds
                if output is not None:
                    write_predictions(output, batch.labels, batch.probabilities, append=not first)
                else:
                    records.extend(prediction_records(np.asarray(batch.labels), batch.probabilities))
                first = False
                bar.advance(task, batch.rows)
    if output is None:
        print_json(records)
    per_row = seconds / rows * 1000 if rows else 0.0
    err.print(
        f"[bold green]done[/]: {rows} rows in {batches} encrypted request(s) "
        f"({' and '.join(sorted(layouts)) or 'no'} layout), {seconds:.2f} s ({per_row:.2f} ms/row); "
        f"sent {sent / 2**20:.2f} MiB of ciphertext, received {received / 2**20:.2f} MiB"
        + (f"; predictions in {output}" if output else ""),
        highlight=False,
    )


@keys_app.command("generate")
def keys_generate(
    preset: Annotated[str, typer.Argument(help="linear, mlp or train.")] = "linear",
    force: Annotated[
        bool, typer.Option(help="Replace an existing key set (its context is then unusable).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate the HE key set of a preset in the keys dir (the secret key stays here, mode 0600)."""
    from sealedml.he.keys import HEKeys
    from sealedml.he.params import preset as check_preset

    def action() -> dict[str, Any]:
        check_preset(preset)
        path = he_keys_path(preset)
        if path.exists() and not force:
            raise InputError("input.conflict", f"{path} exists: pass --force to replace it")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys = HEKeys.generate(preset)
        keys.save(path)
        return {"preset": preset, "path": str(path), "fingerprint": keys.fingerprint}

    info = _run(action)
    if as_json:
        print_json(info)
    else:
        err.print(f"HE keys for {preset!r} in {info['path']}; fingerprint {info['fingerprint']}")


@keys_app.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    """List the HE key sets in the keys dir with their fingerprints and public-context sizes."""
    from sealedml.he.keys import HEKeys

    def action() -> list[dict[str, Any]]:
        found = []
        for path in sorted((keys_dir() / "he").glob("*.hekeys")):
            keys = HEKeys.load(path)
            found.append(
                {
                    "preset": keys.preset,
                    "path": str(path),
                    "fingerprint": keys.fingerprint,
                    "public_context_bytes": len(keys.public_context()),
                }
            )
        return found

    found = _run(action)
    if as_json:
        print_json(found)
        return
    table = Table(title="HE key sets (secret keys stay here)")
    for column in ("preset", "fingerprint", "public context", "path"):
        table.add_column(column)
    for entry in found:
        table.add_row(
            entry["preset"],
            entry["fingerprint"][:16] + "…",
            f"{entry['public_context_bytes'] / 2**20:.1f} MiB",
            entry["path"],
        )
    err.print(table)


@he_app.command("train")
def he_train(
    data: Annotated[Path, typer.Argument(help="CSV with numeric feature columns and a 0/1 label.")],
    label: Annotated[str, typer.Option("--label", help="Label column (0/1).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the trained model here (.he.json).")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Gradient-descent epochs (one server round trip each).")] = 5,
    learning_rate: Annotated[float | None, typer.Option(help="Step size (default: the library's).")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a logistic regression on your data encrypted: the platform only sees ciphertexts.

    Standardize the features first (encrypted training approximates the sigmoid on a bounded range).
    """
    import pandas as pd

    def action() -> dict[str, Any]:
        if not data.is_file():
            raise InputError("input.malformed", f"no such file: {data}")
        try:
            frame = pd.read_csv(data)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise InputError("input.malformed", f"cannot parse {data.name} as CSV: {exc}") from exc
        keys, created = load_or_create_keys("train")
        if created:
            err.print(f"generated HE keys for the 'train' preset in {he_keys_path('train')} (0600)")
        with (
            make_client(url, token) as client,
            Progress(
                TextColumn("encrypted training"),
                BarColumn(),
                MofNCompleteColumn(),
                console=err,
                transient=True,
            ) as bar,
        ):
            task = bar.add_task("steps", total=epochs)
            result = client.he.train(
                frame,
                label,
                keys=keys,
                epochs=epochs,
                learning_rate=learning_rate,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        model = result.to_he_model()
        if output is not None:
            output.write_bytes(model.to_json())
        return {
            "dataset": result.dataset_id,
            "rows": result.rows,
            "features": list(result.features),
            "steps": result.steps,
            "seconds": round(result.seconds, 3),
            "ciphertext_bytes": result.data_bytes,
            "coef": [float(c) for c in result.estimator.coef_.ravel()],
            "intercept": float(result.estimator.intercept_),
            "model_file": str(output) if output else None,
        }

    summary = _run(action)
    if as_json:
        print_json(summary)
    else:
        err.print(
            f"[bold green]trained[/] on {summary['rows']} encrypted rows x "
            f"{len(summary['features'])} features "
            f"in {summary['steps']} encrypted gradient steps ({summary['seconds']} s; "
            f"{summary['ciphertext_bytes'] / 2**20:.1f} MiB of ciphertext stored)"
            + (f"; model in {summary['model_file']}" if summary["model_file"] else ""),
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    """Add ``sealedml he`` to the main CLI."""
    app.add_typer(he_app, name="he")
