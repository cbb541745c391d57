"""HTTP routes of encrypted-ML mode (CKKS): ``/v1/he/...`` and the HE side of ``/v1/models/{id}``.

Bodies are TenSEAL public contexts, HE messages (:mod:`sealedml.he.wire`) or an HE model's JSON;
answers are HE messages only the client can decrypt, or public metadata. A context or dataset is
visible to its owner only: anyone else gets ``he.context_unknown``/``not_found.dataset`` exactly as
for one that does not exist.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse

from sealedml.platform.app import OCTET_BODY, error_responses, model_out, read_limited_body
from sealedml.platform.auth import Principal
from sealedml.platform.catalog import ModelRecord
from sealedml.platform.he_service import HEContextRecord, HEDatasetRecord, HEService
from sealedml.platform.schemas import HEContextOut, HEDatasetOut, HEModelInfoOut, ModelOut
from sealedml.platform.service import PlatformService

__all__ = ["he_model_out", "install_he_routes"]

FINGERPRINT = r"^[0-9a-f]{64}$"
OCTET_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "an HE message (binary)"}
}


def he_model_out(model: ModelRecord) -> ModelOut:
    """Return the public form of a model with its mode and, for HE models, the preset clients use."""
    return model_out(model).model_copy(update={"mode": model.mode, "preset": model.he_preset})


def context_out(record: HEContextRecord) -> HEContextOut:
    """Return the owner's view of an uploaded public context."""
    return HEContextOut(
        context=record.fingerprint, params=record.params, size=record.size, created_at=record.created_at
    )


def dataset_out(record: HEDatasetRecord) -> HEDatasetOut:
    """Return the owner's view of encrypted training data."""
    return HEDatasetOut(
        dataset=record.id,
        context=record.fingerprint,
        rows=record.rows,
        features=record.features,
        size=record.size,
        blob_sha256=record.blob_sha256,
        created_at=record.created_at,
    )


def install_he_routes(
    app: FastAPI,
    service: PlatformService,
    principal: Callable[..., Awaitable[Principal]],
    auth_errors: dict[int | str, dict[str, Any]],
) -> HEService:
    """Add the encrypted-ML routes (tag ``he``) to ``app``; returns the :class:`HEService` behind them
    (also kept as ``app.state.he``)."""
    he = HEService(service)
    app.state.he = he
    Caller = Annotated[Principal, Depends(principal)]
    Fingerprint = Annotated[
        str, Query(pattern=FINGERPRINT, description="fingerprint of the caller's uploaded public context")
    ]
    body_limit = service.settings.max_request_bytes

    @app.put(
        "/v1/he/context",
        tags=["he"],
        status_code=201,
        response_model=HEContextOut,
        responses={200: {"model": HEContextOut, "description": "already uploaded (nothing stored)"}}
        | auth_errors
        | error_responses(400, 413, 422),
        openapi_extra=OCTET_BODY,
    )
    async def upload_context(request: Request, caller: Caller) -> Response:
        """Upload a public CKKS context (evaluation keys; never the secret key), once per key set.

        201 when stored, 200 when this account had uploaded it already. A context carrying its
        secret key is refused (`he.context_has_secret_key`) and not kept.
        """
        data = await read_limited_body(request, he.max_context_bytes)
        record, created = await he.upload_context(caller, data)
        return JSONResponse(context_out(record).model_dump(mode="json"), status_code=201 if created else 200)

    @app.get("/v1/he/contexts", tags=["he"], response_model=list[HEContextOut], responses=auth_errors)
    async def list_contexts(caller: Caller) -> list[HEContextOut]:
        """The public contexts this account uploaded."""
        return [context_out(record) for record in await he.list_contexts(caller)]

    @app.get(
        "/v1/he/contexts/{fingerprint}",
        tags=["he"],
        response_model=HEContextOut,
        responses=auth_errors | error_responses(404),
    )
    async def get_context(fingerprint: str, caller: Caller) -> HEContextOut:
        """Whether this account uploaded the context (clients check this before uploading megabytes)."""
        return context_out(await he.context_of(caller, fingerprint))

    @app.put(
        "/v1/models/{model_id}/he-model",
        tags=["he"],
        response_model=ModelOut,
        responses=auth_errors | error_responses(400, 404, 413, 422),
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
        },
    )
    async def upload_he_model(
        model_id: str,
        request: Request,
        caller: Caller,
        query_budget: Annotated[
            int | None, Query(ge=0, description="rows each client may score (counted by the host)")
        ] = None,
    ) -> ModelOut:
        """Upload an HE model's weights (`HEModel.to_json()`); the model becomes `ready` in mode `he`.

        The platform holds these weights in clear to compute on ciphertexts: publish in this mode
        only what you accept the host to see (docs/he.md).
        """
        data = await read_limited_body(request, he.max_model_bytes)
        return he_model_out(await he.upload_model(caller, model_id, data, query_budget=query_budget))

    @app.get(
        "/v1/models/{model_id}/he",
        tags=["he"],
        response_model=HEModelInfoOut,
        responses=auth_errors | error_responses(400, 404, 409),
    )
    async def he_model_info(model_id: str, caller: Caller) -> HEModelInfoOut:
        """What a client needs to use an HE model: preset, parameters, outputs and final activation."""
        from sealedml.he.params import preset

        record, model = await he.he_model(caller, model_id)
        return HEModelInfoOut(
            model=he_model_out(record),
            kind=model.kind,
            preset=model.preset,
            params=preset(model.preset).to_dict(),
            input_columns=list(model.input_columns),
            outputs=model.outputs,
            output=model.output,
            classes=None if model.classes is None else list(model.classes),
            depth=model.depth,
            query_budget=record.he_query_budget,
        )

    @app.post(
        "/v1/models/{model_id}/he/predict",
        tags=["he"],
        response_class=Response,
        responses=OCTET_ANSWER | auth_errors | error_responses(400, 402, 404, 409, 413, 422, 429),
        openapi_extra=OCTET_BODY,
    )
    async def he_predict(model_id: str, context: Fingerprint, request: Request, caller: Caller) -> Response:
        """Evaluate an HE model on an encrypted `he-batch`; answers an `he-scores` message.

        Billed rows x price like any prediction and recorded as a job of kind `he-predict`
        (headers `X-SealedML-Job`, `X-SealedML-Rows`). A refused batch costs and changes nothing.
        """
        body = await read_limited_body(request, body_limit)
        outcome = await he.predict(caller, model_id, context, body)
        return Response(
            content=outcome.scores,
            media_type="application/octet-stream",
            headers={"X-SealedML-Job": outcome.job.id, "X-SealedML-Rows": str(outcome.rows)},
        )

    @app.put(
        "/v1/he/datasets",
        tags=["he"],
        status_code=201,
        response_model=HEDatasetOut,
        responses=auth_errors | error_responses(400, 404, 413, 422),
        openapi_extra=OCTET_BODY,
    )
    async def upload_dataset(request: Request, caller: Caller) -> HEDatasetOut:
        """Store encrypted training data (`he-train-data`, its context named in the header)."""
        body = await read_limited_body(request, body_limit)
        return dataset_out(await he.upload_dataset(caller, body))

    @app.get("/v1/he/datasets", tags=["he"], response_model=list[HEDatasetOut], responses=auth_errors)
    async def list_datasets(caller: Caller) -> list[HEDatasetOut]:
        """This account's encrypted training datasets."""
        return [dataset_out(record) for record in await he.list_datasets(caller)]

    @app.delete(
        "/v1/he/datasets/{dataset_id}",
        tags=["he"],
        status_code=204,
        response_class=Response,
        responses=auth_errors | error_responses(404),
    )
    async def delete_dataset(dataset_id: str, caller: Caller) -> Response:
        """Delete one of this account's encrypted training datasets and its ciphertext."""
        await he.delete_dataset(caller, dataset_id)
        return Response(status_code=204)

    @app.post(
        "/v1/he/datasets/{dataset_id}/gradient",
        tags=["he"],
        response_class=Response,
        responses=OCTET_ANSWER | auth_errors | error_responses(400, 404, 413, 422),
        openapi_extra=OCTET_BODY,
    )
    async def gradient(dataset_id: str, request: Request, caller: Caller) -> Response:
        """One encrypted gradient step: `he-train-weights` in, `he-train-gradient` out (owner only)."""
        body = await read_limited_body(request, body_limit)
        return Response(
            content=await he.gradient(caller, dataset_id, body), media_type="application/octet-stream"
        )

    return he
