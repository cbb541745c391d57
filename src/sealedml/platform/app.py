"""The platform's HTTP API (FastAPI): an untrusted relay of ciphertext between clients and the enclave.

The service authenticates callers, keeps the catalog, stores encrypted blobs and relays sealed
requests. It never decrypts anything and never logs a request or response body. Every error
leaves as ``{"error": {"code", "message"}}`` with the status that fits the code.
"""

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sealedml import __version__, safejson
from sealedml.errors import InputError, SealedMLError
from sealedml.platform.auth import Authenticator, Principal, bearer_token, ensure_admin
from sealedml.platform.catalog import Catalog, JobRecord, ModelRecord
from sealedml.platform.collateral import CollateralSource, pccs_fetcher
from sealedml.platform.dashboard import install_dashboard
from sealedml.platform.db import Database
from sealedml.platform.enclave_manager import EnclaveSupervisor, Relauncher
from sealedml.platform.ledger_api import anchor_loop, install_ledger_routes
from sealedml.platform.ledger_service import PlatformLedger
from sealedml.platform.market import Market
from sealedml.platform.market_api import install_market_routes
from sealedml.platform.schemas import (
    AccountBalanceOut,
    AccountCreate,
    AccountCreated,
    CreditGrant,
    CreditOut,
    EnclaveInfoOut,
    ErrorBody,
    Health,
    JobOut,
    JobResultOut,
    ModelCreate,
    ModelOut,
    ModelUpdate,
    PredictOut,
    ProvisionOut,
    TrainingOut,
)
from sealedml.platform.service import PlatformService
from sealedml.platform.settings import Settings
from sealedml.platform.storage import BlobStore

if TYPE_CHECKING:
    from sealedml.attestation.policy import AppraisalPolicy
    from sealedml.platform.training import TrainingSettings
    from sealedml.tee.client import EnclaveClient

log = logging.getLogger(__name__)

MIN_NONCE_BYTES = 16
MAX_NONCE_BYTES = 64

TAGS: list[dict[str, Any]] = [
    {"name": "system", "description": "Liveness and the enclave's identity and attestation evidence."},
    {"name": "accounts", "description": "Tenants and their bearer tokens."},
    {"name": "models", "description": "Encrypted models: register, upload, provision the key, delete."},
    {"name": "predictions", "description": "Sealed prediction requests relayed to the enclave."},
    {
        "name": "jobs",
        "description": "Jobs: predictions and training jobs, their state, signed receipts and results.",
    },
    {"name": "datasets", "description": "Encrypted training datasets: register, upload, provision the key."},
    {
        "name": "training",
        "description": "Training jobs: submit a spec, owners' approvals, the encrypted model and its grants.",
    },
    {"name": "ledger", "description": "The transparency log of receipts: tree heads, proofs, chain anchors."},
    {"name": "market", "description": "Listings of models, datasets and TEE resources; the usage report."},
    {
        "name": "he",
        "description": "Encrypted-ML mode without a TEE: CKKS public contexts, HE models, predictions and "
        "encrypted training steps computed on the client's ciphertexts.",
    },
]

OCTET_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting the error body for each of ``statuses``."""
    return {status: {"model": ErrorBody} for status in statuses}


def b64(data: bytes) -> str:
    """Return ``data`` as standard base64 text (how ciphertext travels in JSON answers)."""
    return base64.b64encode(data).decode("ascii")


def _error_response(code: str, message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def model_out(model: ModelRecord) -> ModelOut:
    """Return the public API form of a model record (never its sealed key or blob path)."""
    return ModelOut(
        id=model.id,
        owner_id=model.owner_id,
        name=model.name,
        description=model.description,
        input_columns=model.input_columns,
        output_policy=model.output_policy,
        status=model.status,  # type: ignore[arg-type]
        blob_sha256=model.blob_sha256,
        blob_size=model.blob_size,
        model_sha256=model.model_sha256,
        measurement=model.measurement,
        created_at=model.created_at,
        version=model.version,
        price_per_row=model.price_per_row,
        allowed_measurements=list(model.allowed_measurements),
        mode=model.mode,  # type: ignore[arg-type]
        preset=model.he_preset,
    )


def job_out(job: JobRecord, training: TrainingOut | None = None) -> JobOut:
    """Return the public API form of a job record (with the training side of a training job)."""
    return JobOut(
        id=job.id,
        model_id=job.model_id,
        request_id=job.request_id,
        status=job.status,
        rows=job.rows,
        receipt=job.receipt,
        signature=job.signature,
        created_at=job.created_at,
        kind=job.kind,  # type: ignore[arg-type]
        phase=job.phase,
        progress=job.progress,
        error_code=job.error_code,
        error_message=job.error_message,
        updated_at=job.updated_at,
        training=training,
    )


def declared_size(request: Request) -> int | None:
    """Return the request's declared ``Content-Length`` (``None`` if absent); ``input.malformed``
    if it is not a non-negative number."""
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    try:
        size = int(raw)
    except ValueError:
        raise InputError("input.malformed", "Content-Length is not a number") from None
    if size < 0:
        raise InputError("input.malformed", "Content-Length is negative")
    return size


async def body_stream(request: Request) -> AsyncIterator[bytes]:
    """Yield the request body as it arrives; a client that hangs up becomes ``input.malformed``."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise InputError("input.malformed", "the client disconnected before the body was complete") from None


async def read_limited_body(request: Request, limit: int) -> bytes:
    """Read the request body, refusing more than ``limit`` bytes with ``input.too_large``.

    The declared ``Content-Length`` is checked before anything is read.
    """
    declared = declared_size(request)
    if declared is not None and declared > limit:
        raise InputError("input.too_large", f"the body exceeds the limit of {limit} bytes")
    parts: list[bytes] = []
    size = 0
    async for chunk in body_stream(request):
        size += len(chunk)
        if size > limit:
            raise InputError("input.too_large", f"the body exceeds the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


class CatchAllMiddleware:
    """Turn any unhandled exception into a bare ``internal`` 500; the detail goes to the server log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the wrapped app; if it raises before responding, answer 500 ``internal``."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            """Forward ``message``, noting whether the response has started."""
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await _error_response("internal", "internal server error", 500)(scope, receive, send)


MAX_JSON_BODY = 1024 * 1024
MAX_JSON_BODY_DEPTH = 64


class JsonBodyGuard:
    """Refuse JSON request bodies that are too large or nest too deep, before any decoder sees them.

    The standard JSON decoder only guards its recursion with the interpreter's recursion limit,
    which libraries in this process may raise (the chain libraries set it to 100,000); a deeply
    nested body would then overflow the C stack and kill the server. Bodies of other content types
    (ciphertext) pass through untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Buffer and check a JSON body, then replay it to the app; answer 400/413 if it is refused."""
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if b"json" not in headers.get(b"content-type", b"").lower():
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            if len(body) > MAX_JSON_BODY:
                await _error_response(
                    "input.too_large", f"JSON bodies are limited to {MAX_JSON_BODY} bytes", 413
                )(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        try:
            safejson.check_depth(body.decode("utf-8"), MAX_JSON_BODY_DEPTH)
        except ValueError as exc:
            reason = "is not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
            await _error_response("input.malformed", f"the JSON body {reason}", 400)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _install_error_handlers(app: FastAPI) -> None:
    async def sealedml_error(_request: Request, exc: Exception) -> Response:
        """Answer with the error's stable code and status."""
        assert isinstance(exc, SealedMLError)
        if exc.status >= 500:
            log.warning("request failed: %s (%s)", exc.code, exc.message)
        return _error_response(exc.code, exc.message, exc.status)

    async def validation_error(_request: Request, exc: Exception) -> Response:
        """Answer ``input.malformed`` (422) naming where the request is invalid, never echoing input."""
        assert isinstance(exc, RequestValidationError)
        details = []
        for error in list(exc.errors())[:5]:
            where = ".".join(str(part) for part in error.get("loc", ()))
            details.append(f"{where}: {error.get('msg', 'invalid')}")
        return _error_response("input.malformed", "; ".join(details) or "invalid request", 422)

    async def http_error(_request: Request, exc: Exception) -> Response:
        """Give routing errors (unknown path, wrong method) the same error shape."""
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found.route", 405: "input.method_not_allowed"}.get(
            exc.status_code, "input.malformed"
        )
        response = _error_response(code, str(exc.detail), exc.status_code)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    app.add_exception_handler(SealedMLError, sealedml_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_middleware(JsonBodyGuard)
    app.add_middleware(CatchAllMiddleware)


def create_app(
    settings: Settings,
    enclave: "EnclaveClient | None",
    *,
    relauncher: Relauncher | None = None,
    appraisal_policy: "AppraisalPolicy | None" = None,
    training_settings: "TrainingSettings | None" = None,
    supervisor: EnclaveSupervisor | None = None,
) -> FastAPI:
    """Build the platform API over ``settings`` and a running enclave client.

    Guarantees: the data folder, database schema and blob folders exist when this returns; on a
    fresh database an ``admin`` account exists and its token is in ``settings.admin_token_path``
    (mode 0600). The database is disposed on shutdown. The enclave client is not closed by the
    app; with a ``relauncher`` a dead enclave is replaced by a new one (see
    :class:`EnclaveSupervisor`), and the owner then closes ``app.state.service.enclave.client``.
    A ready-made ``supervisor`` (e.g. a pool of enclave workers on Ray with the same interface)
    replaces ``enclave``; its owner closes it.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database_url)
    auth = Authenticator(db)
    ensure_admin(auth, db, settings.admin_token_path)
    if supervisor is None:
        if enclave is None:
            raise ValueError("create_app needs an enclave client or a supervisor")
        supervisor = EnclaveSupervisor(enclave, hello_ttl=settings.hello_ttl_seconds, relauncher=relauncher)
    catalog = Catalog(db)
    ledger = PlatformLedger.open(
        settings.ledger_database_url, settings.ledger_key_path, anchor=settings.anchor
    )
    ledger.reconcile(catalog)
    service = PlatformService(settings, catalog, BlobStore(settings.blob_dir), auth, supervisor, ledger)
    released = service.billing.release_stale_holds()
    if released:
        log.warning("refunded %d charges held by jobs that did not finish before the last stop", released)
    from sealedml.platform.training import TrainingService, TrainingSettings

    training_settings = training_settings or TrainingSettings.from_settings(settings)
    training: TrainingService | None = None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        """Anchor tree heads and run training jobs while serving; dispose of the databases when stopping."""
        anchoring = asyncio.create_task(anchor_loop(ledger, settings.anchor_interval_seconds))
        assert training is not None
        await training.start()
        try:
            yield
        finally:
            await training.stop()
            anchoring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await anchoring
            db.dispose()
            ledger.log.store.dispose()

    app = FastAPI(
        title="SealedML platform",
        version=__version__,
        description=(
            "The untrusted host of SealedML. It stores and relays ciphertext only: models are "
            "encrypted by their providers, requests are sealed to the attested enclave, and responses "
            "can be opened only by whoever sent the request."
        ),
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    market = Market(
        db,
        supervisor,
        appraisal_policy if appraisal_policy is not None else settings.appraisal_policy(),
        resource_name=settings.resource_name,
        price_per_hour=settings.resource_price_per_hour,
        ttl_seconds=settings.attestation_ttl_seconds,
    )
    training = TrainingService(service, market, training_settings)
    failed = training.fail_unfinished()
    if failed:
        log.warning("failed %d training jobs that could not survive the restart", failed)
    collateral = CollateralSource(pccs_fetcher(settings.pccs_url) if settings.pccs_url else None)
    app.state.service = service
    app.state.collateral = collateral
    app.state.market = market
    app.state.training = training
    _install_error_handlers(app)
    bearer = HTTPBearer(auto_error=False, description="Bearer token `sml_...`")

    async def principal(
        request: Request, _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Principal:
        """Authenticate the caller (``HTTPBearer`` only documents the scheme in OpenAPI)."""
        token = bearer_token(request.headers.get("authorization"))
        return await service.authenticate(token)

    Caller = Annotated[Principal, Depends(principal)]
    auth_errors = error_responses(401, 403)

    install_market_routes(app, market, principal, auth_errors)
    install_ledger_routes(app, service, principal, auth_errors)
    install_dashboard(app, service=service, market=market)
    from sealedml.platform.training_api import install_training_routes, job_detail

    install_training_routes(app, training, principal, auth_errors, settings.max_request_bytes)
    from sealedml.platform.batch_api import install_batch_routes

    install_batch_routes(app, service, principal, auth_errors)
    from sealedml.platform.he_api import install_he_routes

    install_he_routes(app, service, principal, auth_errors)

    # -- system -------------------------------------------------------------------------------
    @app.get("/healthz", tags=["system"], response_model=Health)
    async def healthz() -> Health:
        """Liveness: the HTTP service is up (says nothing about the enclave)."""
        return Health()

    @app.get(
        "/v1/enclave", tags=["system"], response_model=EnclaveInfoOut, responses=error_responses(502, 503)
    )
    async def enclave_info() -> EnclaveInfoOut:
        """The enclave's public identity. Verify it with `/v1/attestation` before trusting the keys."""
        info = await supervisor.info()
        return EnclaveInfoOut(
            tee=info.tee,
            simulated=info.simulated,
            measurement=info.measurement,
            hpke_public_key=info.hpke_public_key.hex(),
            signing_public_key=info.signing_public_key.hex(),
            instance_id=info.instance_id,
            protocol=info.protocol,
        )

    @app.get(
        "/v1/attestation",
        tags=["system"],
        response_class=Response,
        responses={200: {"content": {"application/json": {}}, "description": "EvidenceBundle JSON"}}
        | error_responses(400, 502, 503),
    )
    async def attestation(
        nonce: Annotated[str | None, Query(description="client challenge, 16..64 bytes in hex")] = None,
    ) -> Response:
        """Fresh evidence from the enclave binding its keys to the caller's nonce."""
        try:
            raw = bytes.fromhex(nonce or "")
        except ValueError:
            raise InputError("input.malformed", "nonce must be hex") from None
        if not MIN_NONCE_BYTES <= len(raw) <= MAX_NONCE_BYTES:
            raise InputError("input.malformed", f"nonce must be {MIN_NONCE_BYTES}..{MAX_NONCE_BYTES} bytes")
        evidence = await collateral.attach(await supervisor.evidence(raw))
        return Response(content=evidence, media_type="application/json")

    # -- accounts -----------------------------------------------------------------------------
    @app.post(
        "/v1/accounts",
        tags=["accounts"],
        status_code=201,
        response_model=AccountCreated,
        responses=auth_errors | error_responses(409, 422),
    )
    async def create_account(body: AccountCreate, caller: Caller) -> AccountCreated:
        """Create an account (admin only). The token is returned once and stored only as a hash."""
        account, token = await service.create_account(caller, body.name, body.role)
        return AccountCreated(id=account.id, name=account.name, role=account.role, token=token)  # type: ignore[arg-type]

    @app.get("/v1/me", tags=["accounts"], response_model=AccountBalanceOut, responses=auth_errors)
    async def me(caller: Caller) -> AccountBalanceOut:
        """The authenticated account and its credit balance."""
        balance = await service.balance(caller)
        return AccountBalanceOut(id=caller.id, name=caller.name, role=caller.role, balance=balance)  # type: ignore[arg-type]

    @app.post(
        "/v1/accounts/{account_id}/credits",
        tags=["accounts"],
        response_model=CreditOut,
        responses=auth_errors | error_responses(400, 404),
    )
    async def grant_credits(account_id: str, body: CreditGrant, caller: Caller) -> CreditOut:
        """Add credits to an account (admin only)."""
        balance = await service.grant_credits(caller, account_id, body.amount)
        return CreditOut(account_id=account_id, balance=balance)

    # -- models -------------------------------------------------------------------------------
    @app.post(
        "/v1/models",
        tags=["models"],
        status_code=201,
        response_model=ModelOut,
        responses=auth_errors | error_responses(409, 422),
    )
    async def create_model(body: ModelCreate, caller: Caller) -> ModelOut:
        """Register a model (provider only); upload its encrypted weights next."""
        model = await service.create_model(
            caller,
            name=body.name,
            description=body.description,
            input_columns=body.input_columns,
            output_policy=body.output_policy.model_dump() if body.output_policy else None,
            version=body.version,
            price_per_row=body.price_per_row,
            allowed_measurements=tuple(body.allowed_measurements),
            mode=body.mode,
        )
        return model_out(model)

    @app.patch(
        "/v1/models/{model_id}",
        tags=["models"],
        response_model=ModelOut,
        responses=auth_errors | error_responses(400, 404, 422),
    )
    async def update_model(model_id: str, body: ModelUpdate, caller: Caller) -> ModelOut:
        """Change the caller's model listing: description, version, price, allowed measurements."""
        changes = body.model_dump(exclude_none=True)
        return model_out(await service.update_listing(caller, model_id, changes))

    @app.get("/v1/models", tags=["models"], response_model=list[ModelOut], responses=auth_errors)
    async def list_models(caller: Caller) -> list[ModelOut]:
        """Ready models, plus the caller's own models in any status."""
        return [model_out(model) for model in await service.list_models(caller)]

    @app.get(
        "/v1/models/{model_id}",
        tags=["models"],
        response_model=ModelOut,
        responses=auth_errors | error_responses(404),
    )
    async def get_model(model_id: str, caller: Caller) -> ModelOut:
        """One model, if it is ready or the caller owns it."""
        return model_out(await service.visible_model(caller, model_id))

    @app.put(
        "/v1/models/{model_id}/blob",
        tags=["models"],
        response_model=ModelOut,
        responses=auth_errors | error_responses(400, 404, 413),
        openapi_extra=OCTET_BODY,
    )
    async def upload_blob(model_id: str, request: Request, caller: Caller) -> ModelOut:
        """Upload (or replace) the model's encrypted ONNX: a `model/onnx` stream envelope, streamed.

        Replacing the blob resets the model to `uploaded`: the provider provisions its key again.
        """
        model = await service.upload_blob(
            caller, model_id, body_stream(request), declared_size=declared_size(request)
        )
        return model_out(model)

    @app.post(
        "/v1/models/{model_id}/provision",
        tags=["models"],
        response_model=ProvisionOut,
        responses=auth_errors | error_responses(400, 404, 409, 413, 422, 502, 503),
        openapi_extra=OCTET_BODY,
    )
    async def provision(model_id: str, request: Request, caller: Caller) -> ProvisionOut:
        """Relay the provider's sealed model key to the enclave; stores the sealed key it returns."""
        body = await read_limited_body(request, settings.max_request_bytes)
        outcome = await service.provision(caller, model_id, body)
        return ProvisionOut(
            model=model_out(outcome.model),
            response=b64(outcome.result.response),
            receipt=outcome.result.receipt,
            signature=outcome.result.signature,
            ledger=outcome.ledger,
        )

    @app.delete(
        "/v1/models/{model_id}",
        tags=["models"],
        status_code=204,
        response_class=Response,
        responses=auth_errors | error_responses(404),
    )
    async def delete_model(model_id: str, caller: Caller) -> Response:
        """Delete the caller's model, its encrypted blob and its copy in the enclave."""
        await service.delete_model(caller, model_id)
        return Response(status_code=204)

    # -- predictions and jobs -----------------------------------------------------------------
    @app.post(
        "/v1/models/{model_id}/predict",
        tags=["predictions"],
        response_model=PredictOut,
        responses=auth_errors | error_responses(400, 404, 409, 413, 422, 429, 502, 503),
        openapi_extra=OCTET_BODY,
    )
    async def predict(model_id: str, request: Request, caller: Caller) -> Response:
        """Relay a sealed prediction request; only the requester can open the response."""
        body = await read_limited_body(request, settings.max_request_bytes)
        outcome = await service.predict(caller, model_id, body)
        result = outcome.result
        out = PredictOut(
            job_id=outcome.job.id,
            response=b64(result.response),
            receipt=result.receipt,
            signature=result.signature,
            rows=result.rows,
            ledger=outcome.ledger,
        )
        return Response(content=out.model_dump_json(), media_type="application/json")

    @app.get("/v1/jobs", tags=["jobs"], response_model=list[JobOut], responses=auth_errors)
    async def list_jobs(caller: Caller, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[JobOut]:
        """The caller's jobs, newest first: those it submitted, and training jobs using its datasets."""
        return [job_out(job) for job in await service.list_jobs(caller, limit=limit)]

    @app.get(
        "/v1/jobs/{job_id}",
        tags=["jobs"],
        response_model=JobOut,
        responses=auth_errors | error_responses(404),
    )
    async def get_job(job_id: str, caller: Caller) -> JobOut:
        """One of the caller's jobs; a training job with its spec, approvals, progress and results."""
        return await job_detail(training, caller, await service.get_job(caller, job_id))

    @app.get(
        "/v1/jobs/{job_id}/result",
        tags=["jobs"],
        response_model=JobResultOut,
        responses=auth_errors | error_responses(404),
    )
    async def job_result(job_id: str, caller: Caller) -> JobResultOut:
        """The stored response envelope of one of the caller's jobs."""
        job, data = await service.job_result(caller, job_id)
        return JobResultOut(job_id=job.id, response=b64(data))

    return app
