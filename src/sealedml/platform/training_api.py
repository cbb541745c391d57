"""HTTP routes of confidential training: ``/v1/datasets/...``, ``/v1/train`` and the training side of
``/v1/jobs/...``.

Every body is ciphertext (dataset streams, sealed requests) or public metadata (names, specs,
digests); every answer too. A dataset is visible to its owner only; a training job to its submitter
and the owners of its datasets; everyone else gets ``not_found`` exactly as for a missing object.
"""

import base64
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response

from sealedml.errors import InputError
from sealedml.platform.app import (
    OCTET_BODY,
    b64,
    body_stream,
    declared_size,
    error_responses,
    job_out,
    read_limited_body,
)
from sealedml.platform.auth import Principal
from sealedml.platform.catalog import JobRecord
from sealedml.platform.schemas import (
    ApprovalOut,
    DatasetCreate,
    DatasetOfferIn,
    DatasetOut,
    DatasetProvisionOut,
    DatasetRefOut,
    GrantOut,
    JobDatasetOut,
    JobOut,
    TrainingOut,
    TrainSubmit,
)
from sealedml.platform.training import TrainingService
from sealedml.platform.training_store import StoredDataset, TrainingJobRecord

__all__ = ["dataset_out", "install_training_routes", "job_detail", "training_job_out"]


def dataset_out(dataset: StoredDataset) -> DatasetOut:
    """Return the owner's API view of a dataset (never its sealed state or blob path)."""
    return DatasetOut(
        id=dataset.id,
        owner_id=dataset.owner_id,
        name=dataset.name,
        description=dataset.description,
        status=dataset.status,  # type: ignore[arg-type]
        blob_sha256=dataset.blob_sha256,
        blob_size=dataset.blob_size,
        generation=dataset.generation,
        epsilon_total=dataset.epsilon_total,
        epsilon_spent=dataset.epsilon_spent,
        epsilon_remaining=dataset.epsilon_remaining,
        measurement=dataset.measurement,
        listing_id=dataset.listing_id,
        created_at=dataset.created_at,
    )


async def training_job_out(training: TrainingService, record: TrainingJobRecord) -> JobOut:
    """Return a training job with its spec, approvals (as of the current enclave instance) and
    results; the request's freshness is reported while the job is pending."""
    info = await training.enclave.info()
    waiting = record.waiting_for(info.instance_id)
    pending = record.job.status in ("awaiting_approval", "queued")
    detail = TrainingOut(
        spec=record.spec,
        spec_sha256=record.spec_sha256,
        datasets=[
            JobDatasetOut(
                dataset=p.dataset_id,
                position=p.position,
                owner_id=p.owner_id,
                approved=p.dataset_id not in waiting,
                approved_at=p.approved_at,
            )
            for p in record.parties
        ],
        waiting_for=waiting if pending else [],
        request_fresh=await training.request_fresh(record, info) if pending else None,
        publish_model_id=record.publish_model_id,
        model_sha256=record.model_sha256,
        model_blob_sha256=record.model_blob_sha256,
        grants=[GrantOut(recipient=g["recipient"], grant=g["grant"]) for g in record.grants],
        phases=list(record.phases),
        budgets=list(record.budgets),
        started_at=record.started_at,
        finished_at=record.finished_at,
    )
    return job_out(record.job, detail)


async def job_detail(training: TrainingService, caller: Principal, job: JobRecord) -> JobOut:
    """The full API form of a job the caller may see (training jobs with their training side)."""
    if job.kind != "train":
        return job_out(job)
    return await training_job_out(training, await training.job(caller, job.id))


def install_training_routes(
    app: FastAPI,
    training: TrainingService,
    principal: Callable[..., Awaitable[Principal]],
    auth_errors: dict[int | str, dict[str, Any]],
    max_request_bytes: int,
) -> None:
    """Add the dataset and training routes to ``app``; every route needs a valid token."""
    Caller = Annotated[Principal, Depends(principal)]

    # -- datasets -----------------------------------------------------------------------------
    @app.post(
        "/v1/datasets",
        tags=["datasets"],
        status_code=201,
        response_model=DatasetOut,
        responses=auth_errors | error_responses(409, 422),
    )
    async def create_dataset(body: DatasetCreate, caller: Caller) -> DatasetOut:
        """Register a dataset (data owners); upload its ciphertext next. The name is public."""
        return dataset_out(
            await training.create_dataset(caller, name=body.name, description=body.description)
        )

    @app.get("/v1/datasets", tags=["datasets"], response_model=list[DatasetOut], responses=auth_errors)
    async def list_datasets(caller: Caller) -> list[DatasetOut]:
        """The caller's own datasets."""
        return [dataset_out(d) for d in await training.list_datasets(caller)]

    @app.get(
        "/v1/dataset-refs/{ref}",
        tags=["datasets"],
        response_model=DatasetRefOut,
        responses=auth_errors | error_responses(404),
    )
    async def dataset_ref(ref: str, caller: Caller) -> DatasetRefOut:
        """Resolve a dataset name for a job spec: the caller's own, or one listed on the market."""
        found = await training.lookup_dataset(caller, ref)
        return DatasetRefOut(
            id=found.id,
            name=found.name,
            owner_id=found.owner_id,
            own=found.owner_id == caller.id,
            listing_id=found.listing_id,
        )

    @app.get(
        "/v1/datasets/{dataset_id}",
        tags=["datasets"],
        response_model=DatasetOut,
        responses=auth_errors | error_responses(404),
    )
    async def get_dataset(dataset_id: str, caller: Caller) -> DatasetOut:
        """One of the caller's datasets."""
        return dataset_out(await training.owned_dataset(caller, dataset_id))

    @app.delete(
        "/v1/datasets/{dataset_id}",
        tags=["datasets"],
        status_code=204,
        response_class=Response,
        responses=auth_errors | error_responses(404, 409),
    )
    async def delete_dataset(dataset_id: str, caller: Caller) -> Response:
        """Delete the caller's dataset, its ciphertext and its copy in the enclave."""
        await training.delete_dataset(caller, dataset_id)
        return Response(status_code=204)

    @app.put(
        "/v1/datasets/{dataset_id}/blob",
        tags=["datasets"],
        response_model=DatasetOut,
        responses=auth_errors | error_responses(400, 404, 413),
        openapi_extra=OCTET_BODY,
    )
    async def upload_dataset(dataset_id: str, request: Request, caller: Caller) -> DatasetOut:
        """Upload (or replace) the dataset's ciphertext: a `dataset/parquet` or `dataset/csv` stream
        envelope, streamed to disk. Replacing it resets the dataset to `uploaded`."""
        dataset = await training.upload_dataset_blob(
            caller, dataset_id, body_stream(request), declared_size=declared_size(request)
        )
        return dataset_out(dataset)

    @app.post(
        "/v1/datasets/{dataset_id}/provision",
        tags=["datasets"],
        response_model=DatasetProvisionOut,
        responses=auth_errors | error_responses(400, 404, 409, 413, 422, 502, 503),
        openapi_extra=OCTET_BODY,
    )
    async def provision_dataset(dataset_id: str, request: Request, caller: Caller) -> DatasetProvisionOut:
        """Relay the owner's sealed dataset key to the enclave; stores the sealed state it returns."""
        body = await read_limited_body(request, max_request_bytes)
        dataset, result = await training.provision_dataset(caller, dataset_id, body)
        return DatasetProvisionOut(dataset=dataset_out(dataset), response=b64(result.response))

    @app.post(
        "/v1/datasets/{dataset_id}/offer",
        tags=["datasets"],
        response_model=DatasetOut,
        responses=auth_errors | error_responses(400, 404, 409),
    )
    async def offer_dataset(dataset_id: str, body: DatasetOfferIn, caller: Caller) -> DatasetOut:
        """List the caller's dataset on the market at a price per training job (schema and size as
        the owner publishes them; never a row)."""
        dataset, _listing = await training.offer_dataset(
            caller,
            dataset_id,
            description=body.description,
            columns=[c.model_dump() for c in body.columns],
            rows=body.rows,
            price=body.price,
        )
        return dataset_out(dataset)

    # -- training jobs ------------------------------------------------------------------------
    @app.post(
        "/v1/train",
        tags=["training"],
        status_code=201,
        response_model=JobOut,
        responses=auth_errors | error_responses(400, 402, 404, 409, 413, 429),
    )
    async def submit_training(body: TrainSubmit, caller: Caller) -> JobOut:
        """Submit a training job: validated here, queued until every dataset owner approved it, then
        trained by the enclave in the background (poll `GET /v1/jobs/{id}`)."""
        try:
            envelope = base64.b64decode(body.request, validate=True)
        except ValueError:
            raise InputError("input.malformed", "request must be base64") from None
        if len(envelope) > max_request_bytes:
            raise InputError("input.too_large", f"the sealed request exceeds {max_request_bytes} bytes")
        record = await training.submit(
            caller,
            spec=body.spec,
            envelope=envelope,
            publish_name=body.publish_name,
            description=body.description,
        )
        return await training_job_out(training, record)

    @app.post(
        "/v1/jobs/{job_id}/approvals/{dataset_id}",
        tags=["training"],
        response_model=ApprovalOut,
        responses=auth_errors | error_responses(400, 404, 409, 503),
        openapi_extra=OCTET_BODY,
    )
    async def approve(job_id: str, dataset_id: str, request: Request, caller: Caller) -> ApprovalOut:
        """Relay a dataset owner's sealed approval (an Ed25519 signature over the spec digest, checked
        by the enclave); the job is queued once every owner approved."""
        body = await read_limited_body(request, max_request_bytes)
        record, response = await training.approve(caller, job_id, dataset_id, body)
        return ApprovalOut(
            job=await training_job_out(training, record),
            dataset=dataset_id,
            spec_sha256=record.spec_sha256,
            response=b64(response),
        )

    @app.put(
        "/v1/jobs/{job_id}/request",
        tags=["training"],
        response_model=JobOut,
        responses=auth_errors | error_responses(400, 404, 409),
        openapi_extra=OCTET_BODY,
    )
    async def refresh_request(job_id: str, request: Request, caller: Caller) -> JobOut:
        """Replace a pending job's sealed request with a fresh one (its submitter only)."""
        body = await read_limited_body(request, max_request_bytes)
        return await training_job_out(training, await training.refresh_request(caller, job_id, body))

    @app.post(
        "/v1/jobs/{job_id}/cancel",
        tags=["training"],
        response_model=JobOut,
        responses=auth_errors | error_responses(404, 409),
    )
    async def cancel(job_id: str, caller: Caller) -> JobOut:
        """Cancel a training job before it runs (its submitter only); its price is refunded."""
        return await training_job_out(training, await training.cancel(caller, job_id))

    @app.get(
        "/v1/jobs/{job_id}/model",
        tags=["training"],
        response_class=Response,
        responses={200: {"content": {"application/octet-stream": {}}, "description": "encrypted model"}}
        | auth_errors
        | error_responses(404),
    )
    async def model_blob(job_id: str, caller: Caller) -> Response:
        """The encrypted model of a finished job (open it with your grant's model key)."""
        _record, blob = await training.model_blob(caller, job_id)
        return Response(content=blob, media_type="application/octet-stream")
