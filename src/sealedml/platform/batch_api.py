"""Streaming batch inference: ``POST /v1/models/{id}/batch``, shards in, results out, in order.

The body is a stream of frames (the enclave protocol's framing, :mod:`sealedml.enclave.framing`),
one per shard: header ``{"shard": i}`` (0, 1, 2, ...) and one part, a normal sealed ``predict``
request with its authenticated ``rows``. Each shard is a prediction job like
``POST /v1/models/{id}/predict``: single-use request id, price held then settled or refunded,
receipt in the transparency log. Shards run on the enclave workers with at most ``window`` held
at once (running, or done and waiting for an earlier shard), so memory is bounded by
``window`` x shard size; reading the body pauses while the window is full.

The answer is a stream of frames in shard order: ``{"shard", "job_id", "rows", "receipt",
"signature", "ledger"}`` with the sealed response as the one part; or ``{"shard", "error":
{code, message}}`` for the first shard that failed (no shard after it is run: later frames say
``{"shard", "skipped": true}``); then ``{"end": true, "shards", "rows", "failed"}``. HTTP/1.1
clients send the whole body before they read the answer, so finished frames are spooled to a
temporary file (ciphertext only) and streamed back once the body has been read.
"""


import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.responses import StreamingResponse

from sealedml.distributed.inference import Outcome, ordered_map
from sealedml.enclave.framing import decode_frame, encode_frame
from sealedml.errors import InputError, SealedMLError
from sealedml.platform.auth import Principal
from sealedml.platform.service import PlatformService, PredictOutcome, require_role, run_sync

__all__ = ["BATCH_MEDIA_TYPE", "DEFAULT_WINDOW", "MAX_WINDOW", "install_batch_routes", "read_shards"]

log = logging.getLogger(__name__)

BATCH_MEDIA_TYPE = "application/x-sealedml-frames"
DEFAULT_WINDOW = 4
MAX_WINDOW = 64
_FRAME_SLACK = 64 * 1024
_SPOOL_CHUNK = 1024 * 1024


async def read_shards(chunks: AsyncIterator[bytes], *, max_request_bytes: int) -> AsyncIterator[bytes]:
    """Yield the sealed request of each shard frame of a batch body, in order.

    Guarantees: never buffers more than one frame (at most ``max_request_bytes`` plus a small
    header); raises ``input.too_large`` for a bigger frame and ``input.malformed`` for a frame
    that is not ``{"shard": i}`` with exactly one part, out of sequence, or cut short.
    """
    buffer = bytearray()
    expected = 0
    limit = max_request_bytes + _FRAME_SLACK
    ended = False
    iterator = chunks.__aiter__()
    while True:
        while len(buffer) < 4 and not ended:
            try:
                buffer += await iterator.__anext__()
            except StopAsyncIteration:
                ended = True
        if not buffer and ended:
            return
        if len(buffer) < 4:
            raise InputError("input.malformed", f"the batch body ends inside the length of shard {expected}")
        size = int.from_bytes(buffer[:4], "big")
        if size > limit:
            raise InputError(
                "input.too_large", f"shard {expected} exceeds the limit of {max_request_bytes} bytes"
            )
        while len(buffer) < 4 + size and not ended:
            try:
                buffer += await iterator.__anext__()
            except StopAsyncIteration:
                ended = True
        if len(buffer) < 4 + size:
            raise InputError("input.malformed", f"the batch body ends inside shard {expected}")
        payload = bytes(buffer[4 : 4 + size])
        del buffer[: 4 + size]
        try:
            header, parts = decode_frame(payload)
        except SealedMLError:
            raise InputError("input.malformed", f"shard {expected} is not a valid frame") from None
        if header.get("shard") != expected or len(parts) != 1:
            raise InputError(
                "input.malformed", f"frame {expected} must be {{'shard': {expected}}} with one sealed request"
            )
        expected += 1
        yield parts[0]


def outcome_frame(outcome: Outcome[PredictOutcome]) -> bytes:
    """The answer frame of one shard (see the module docstring)."""
    if outcome.skipped:
        return encode_frame({"shard": outcome.index, "skipped": True})
    if outcome.error is not None:
        error = outcome.error
        if not isinstance(error, SealedMLError):
            log.error("shard %d failed: %s", outcome.index, type(error).__name__)
            body = {"code": "enclave.internal", "message": "internal error"}
        else:
            body = error.to_dict()
        return encode_frame({"shard": outcome.index, "error": body})
    assert outcome.value is not None
    result = outcome.value.result
    return encode_frame(
        {
            "shard": outcome.index,
            "job_id": outcome.value.job.id,
            "rows": result.rows,
            "receipt": result.receipt,
            "signature": result.signature,
            "ledger": outcome.value.ledger,
        },
        (result.response,),
    )


def _spool_chunks(spool: IO[bytes]) -> Iterator[bytes]:
    try:
        while chunk := spool.read(_SPOOL_CHUNK):
            yield chunk
    finally:
        spool.close()


def install_batch_routes(
    app: FastAPI,
    service: PlatformService,
    principal: Callable[..., Awaitable[Principal]],
    auth_errors: dict[int | str, dict[str, Any]],
    *,
    spool_dir: Path | None = None,
) -> None:
    """Add ``POST /v1/models/{model_id}/batch`` (see the module docstring) to ``app``.

    Guarantees: each shard is a ``predict`` job of ``service`` (billed once, receipt logged);
    answers come back complete and in shard order; at most ``window`` shards are held in memory.
    """
    Caller = Annotated[Principal, Depends(principal)]
    directory = spool_dir or service.settings.data_dir / "spool"

    @app.post(
        "/v1/models/{model_id}/batch",
        tags=["predictions"],
        response_class=StreamingResponse,
        responses={200: {"content": {BATCH_MEDIA_TYPE: {}}, "description": "result frames in shard order"}}
        | auth_errors
        | {404: {}, 413: {}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {BATCH_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def batch(
        model_id: str,
        request: Request,
        caller: Caller,
        window: Annotated[int, Query(ge=1, le=MAX_WINDOW)] = DEFAULT_WINDOW,
    ) -> Response:
        """Run a framed stream of sealed `predict` shards; stream the sealed results back in order."""
        from sealedml.platform.app import body_stream

        require_role(caller, "data_owner")
        await service.visible_model(caller, model_id)
        directory.mkdir(parents=True, exist_ok=True)
        spool = await run_sync(tempfile.TemporaryFile, dir=directory)
        shards = rows = failed = 0
        try:

            async def run(index: int, envelope: bytes) -> PredictOutcome:
                return await service.predict(caller, model_id, envelope)

            source = read_shards(body_stream(request), max_request_bytes=service.settings.max_request_bytes)
            async for outcome in ordered_map(source, run, window=window):
                shards += 1
                if outcome.value is not None:
                    rows += outcome.value.result.rows
                elif not outcome.skipped:
                    failed += 1
                await run_sync(spool.write, outcome_frame(outcome))
            await run_sync(
                spool.write, encode_frame({"end": True, "shards": shards, "rows": rows, "failed": failed})
            )
            await run_sync(spool.seek, 0)
        except BaseException:
            with contextlib.suppress(OSError):
                spool.close()
            raise
        log.info("batch on model %s: %d shard(s), %d row(s), %d failed", model_id, shards, rows, failed)
        return StreamingResponse(_spool_chunks(spool), media_type=BATCH_MEDIA_TYPE)
