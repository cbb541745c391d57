"""What every ``sealedml`` sub-command shares: the console, options, policy loading, error exit."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from sealedml.errors import ConfigError, SealedMLError

T = TypeVar("T")

err = Console(stderr=True)

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_POLICY = Path("sealedml-policy.toml")
SIMULATED_BANNER = (
    "[bold yellow]SIMULATED TEE[/]: this enclave is an ordinary process. It offers [bold]NO[/] "
    "protection from the host. Accepted only because your policy sets allow_simulated = true."
)

UrlOpt = Annotated[str, typer.Option("--url", envvar="SEALEDML_URL", help="Platform URL.")]
TokenOpt = Annotated[
    str | None, typer.Option("--token", envvar="SEALEDML_TOKEN", help="API token.", show_default=False)
]
PolicyOpt = Annotated[
    Path, typer.Option("--policy", envvar="SEALEDML_POLICY", help="Appraisal policy (TOML).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def keys_dir() -> Path:
    """Where the CLI keeps model keys and receipts (``SEALEDML_KEYS_DIR`` or the XDG config dir)."""
    base = os.environ.get("SEALEDML_KEYS_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "sealedml" / "keys"


def load_policy(path: Path) -> Any:
    """Load an appraisal policy; a missing file is ``config.invalid`` with a hint."""
    from sealedml.attestation.policy import AppraisalPolicy

    if not path.is_file():
        raise ConfigError(
            "config.invalid",
            f"no policy file at {path}: write one with `sealedml policy init` or pass --policy",
        )
    return AppraisalPolicy.load(path)


def ledger_state_path(url: str) -> Path:
    """Where the CLI keeps the pinned log key and last verified tree head of the platform at ``url``."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return keys_dir() / "ledger" / f"{parts.hostname or 'local'}_{parts.port or 0}.json"


def make_client(
    url: str, token: str | None, policy: Path | None = None, *, log_key: bytes | None = None
) -> Any:
    """Return an SDK client for ``url`` (with the policy at ``policy`` when given).

    The client pins the platform's log key and remembers the last verified tree head in the keys
    dir, so every run checks that the log only grew since the previous one.
    """
    from sealedml.client import SealedMLClient

    return SealedMLClient(
        url,
        token,
        policy=load_policy(policy) if policy is not None else None,
        log_public_key=log_key,
        ledger_state=ledger_state_path(url),
    )


def print_json(data: object) -> None:
    """Print ``data`` as indented JSON on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def run_action(action: Callable[[], T]) -> T:
    """Run ``action``; a ``SealedMLError`` prints its code and hint and exits with status 1."""
    try:
        return action()
    except SealedMLError as exc:
        err.print(f"[bold red]rejected[/] {escape(exc.diagnostics())}", highlight=False)
        raise typer.Exit(1) from None
