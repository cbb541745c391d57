"""HTTP routes of the transparency log: ``/v1/ledger/...``.

Tree heads, consistency proofs and chain anchors are public: anyone may audit the log. Inclusion
proofs by job id and raw entries are for the job's owner (and admins), since a receipt names its
client and model.
"""

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Response

from sealedml.errors import NotFoundError, SealedMLError
from sealedml.platform.auth import Principal
from sealedml.platform.ledger_service import PlatformLedger
from sealedml.platform.service import PlatformService, require_role, run_sync

log = logging.getLogger(__name__)


async def anchor_loop(ledger: PlatformLedger, interval: float) -> None:
    """Anchor the latest tree head every ``interval`` seconds (when anchoring is on); never raises."""
    if ledger.anchor_mode == "none" or interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        try:
            await run_sync(ledger.anchor_now)
        except SealedMLError as exc:
            log.error("anchoring the tree head failed: [%s] %s", exc.code, exc.message)


def install_ledger_routes(
    app: FastAPI,
    service: PlatformService,
    principal: Callable[..., Awaitable[Principal]],
    auth_errors: dict[int, Any],
) -> None:
    """Add the ``/v1/ledger`` routes to ``app``."""
    ledger = service.ledger
    assert ledger is not None
    Caller = Annotated[Principal, Depends(principal)]

    @app.get("/v1/ledger/public-key", tags=["ledger"])
    async def ledger_public_key() -> dict[str, str]:
        """The log's id and Ed25519 public key: pin it, then check every tree head against it."""
        return {"log_id": ledger.log.log_id, "public_key": ledger.public_key.hex()}

    @app.get("/v1/ledger/sth", tags=["ledger"])
    async def ledger_sth() -> dict[str, Any]:
        """A freshly signed head of the whole log."""
        return (await run_sync(ledger.sth)).to_dict()

    @app.get("/v1/ledger/consistency", tags=["ledger"])
    async def ledger_consistency(
        first: Annotated[int, Query(ge=0)], second: Annotated[int | None, Query(ge=0)] = None
    ) -> dict[str, Any]:
        """RFC 9162 consistency proof that the tree of ``second`` entries extends that of ``first``."""
        return await run_sync(ledger.log.consistency, first, second)

    @app.get("/v1/ledger/inclusion", tags=["ledger"], responses=auth_errors)
    async def ledger_inclusion(
        caller: Caller,
        job_id: Annotated[str, Query(min_length=1, max_length=128)],
        tree_size: Annotated[int | None, Query(ge=1)] = None,
    ) -> dict[str, Any]:
        """Inclusion proof of one of the caller's receipts, with the signed head it is proven against."""
        if caller.role != "admin":
            await service.get_job(caller, job_id)  # not_found.job for other tenants' jobs
        sth = await run_sync(ledger.sth)
        size = tree_size if tree_size is not None else sth.tree_size
        proof = await run_sync(ledger.log.inclusion_by_id, job_id, size)
        return {"inclusion": proof, "sth": sth.to_dict()}

    @app.get("/v1/ledger/entries/{index}", tags=["ledger"], responses=auth_errors)
    async def ledger_entry(index: int, caller: Caller) -> dict[str, Any]:
        """One logged entry (the receipt and its signature): admins, or the receipt's client."""
        entry = await run_sync(ledger.log.entry, index)
        if caller.role != "admin":
            body = json.loads(base64.b64decode(entry["entry"]))
            if body.get("receipt", {}).get("client") != caller.id:
                raise NotFoundError("not_found.entry", f"no entry {index} visible to this account")
        return entry

    @app.get("/v1/ledger/anchors", tags=["ledger"])
    async def ledger_anchors() -> list[dict[str, Any]]:
        """Chain anchors of this log's tree heads, read back from the chain (empty when anchoring is off)."""
        return await run_sync(ledger.anchors)

    @app.post("/v1/ledger/anchor", tags=["ledger"], responses=auth_errors)
    async def ledger_anchor(caller: Caller) -> Response:
        """Anchor the current tree head now (admin); 204 if it is anchored already or anchoring is off."""
        require_role(caller, "admin")
        record = await run_sync(ledger.anchor_now)
        if record is None:
            return Response(status_code=204)
        return Response(content=json.dumps(record), media_type="application/json")
