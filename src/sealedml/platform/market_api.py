"""HTTP routes of the marketplace: ``/v1/market/...`` (listings, TEE resources, usage report)."""

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from sealedml.errors import AuthError, NotFoundError
from sealedml.platform.auth import Principal
from sealedml.platform.market import COLUMN_TYPES, DatasetRecord, Market, ModelListing
from sealedml.platform.service import run_sync

NAME_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetColumn(_Strict):
    """One column of a dataset's public schema."""

    name: str = Field(min_length=1, max_length=256)
    type: str = Field(description=f"one of {', '.join(COLUMN_TYPES)}")


class DatasetOffer(_Strict):
    """A dataset offered for training collaborations: schema and size only, never rows."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(default="", max_length=4096)
    columns: list[DatasetColumn] = Field(min_length=1)
    rows: StrictInt
    size_bytes: StrictInt
    price: StrictInt = 0


class ResourceOut(BaseModel):
    """A TEE resource (enclave worker) and its last attestation verdict."""

    id: str
    name: str
    tee: str
    simulated: bool
    measurement: str
    instance_id: str
    price_per_hour: int
    passing: bool
    claims: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    verified_at: datetime | None
    evidence_age_seconds: float | None


class UsageRow(BaseModel):
    """One settled charge in the usage report."""

    job_id: str
    model_id: str
    model: str
    provider: str
    payer: str
    rows: int
    amount: int
    settled_at: str


def install_market_routes(
    app: FastAPI, market: Market, principal: Callable[..., Awaitable[Principal]], auth_errors: dict[int, Any]
) -> None:
    """Add the ``/v1/market`` routes to ``app``; every route needs a valid token."""
    Caller = Annotated[Principal, Depends(principal)]

    def resource_out(record: Any) -> ResourceOut:
        age = None
        if record.verified_at is not None:
            age = max(0.0, (datetime.now(record.verified_at.tzinfo) - record.verified_at).total_seconds())
        return ResourceOut(**record.__dict__, evidence_age_seconds=age)

    @app.get(
        "/v1/market/models", tags=["market"], response_model=list[ModelListing], responses=auth_errors
    )
    async def market_models(
        _caller: Caller,
        q: Annotated[str | None, Query(max_length=128, description="text in name or description")] = None,
        max_price: Annotated[int | None, Query(ge=0)] = None,
        tee: Annotated[str | None, Query(max_length=32)] = None,
        passing: bool | None = None,
    ) -> list[ModelListing]:
        """Search ready models; each shows whether its enclave passes attestation right now."""
        resource = await market.check_enclave()
        listings = await run_sync(
            market.models, resource, query=q, max_price=max_price, tee=tee, passing=passing
        )
        return listings

    @app.get(
        "/v1/market/models/{model_id}",
        tags=["market"],
        response_model=ModelListing,
        responses=auth_errors | {404: {"description": "no such listing"}},
    )
    async def market_model(model_id: str, _caller: Caller) -> ModelListing:
        """One model listing."""
        resource = await market.check_enclave()
        for listing in await run_sync(market.models, resource):
            if listing.id == model_id:
                return listing
        raise NotFoundError("not_found.listing", f"no ready model {model_id!r} is listed")

    @app.get(
        "/v1/market/datasets", tags=["market"], response_model=list[DatasetRecord], responses=auth_errors
    )
    async def market_datasets(
        _caller: Caller,
        q: Annotated[str | None, Query(max_length=128)] = None,
        max_price: Annotated[int | None, Query(ge=0)] = None,
    ) -> list[DatasetRecord]:
        """Datasets offered for training collaborations (schema and size only)."""
        return await run_sync(market.datasets, query=q, max_price=max_price)

    @app.post(
        "/v1/market/datasets",
        tags=["market"],
        status_code=201,
        response_model=DatasetRecord,
        responses=auth_errors | {409: {"description": "name taken"}},
    )
    async def offer_dataset(body: DatasetOffer, caller: Caller) -> DatasetRecord:
        """Offer a dataset's schema and size for training collaborations (data owners only)."""
        if caller.role != "data_owner":
            raise AuthError("auth.forbidden", "only data owners offer datasets")
        record = await run_sync(
            market.offer_dataset,
            owner_id=caller.id,
            name=body.name,
            description=body.description,
            columns=[column.model_dump() for column in body.columns],
            rows=body.rows,
            size_bytes=body.size_bytes,
            price=body.price,
        )
        return record

    @app.get(
        "/v1/market/datasets/{dataset_id}",
        tags=["market"],
        response_model=DatasetRecord,
        responses=auth_errors | {404: {"description": "no such listing"}},
    )
    async def market_dataset(dataset_id: str, _caller: Caller) -> DatasetRecord:
        """One dataset listing."""
        return await run_sync(market.dataset, dataset_id)

    @app.get("/v1/market/resources", tags=["market"], response_model=list[ResourceOut], responses=auth_errors)
    async def market_resources(
        _caller: Caller,
        tee: Annotated[str | None, Query(max_length=32)] = None,
        passing: bool | None = None,
        refresh: bool = False,
    ) -> list[ResourceOut]:
        """TEE resources with their last verified claims (``refresh`` re-attests now)."""
        await market.check_enclave(force=refresh)
        return [resource_out(r) for r in await run_sync(market.resources, tee=tee, passing=passing)]

    @app.get("/v1/market/report", tags=["market"], response_model=list[UsageRow], responses=auth_errors)
    async def market_report(caller: Caller) -> list[UsageRow]:
        """Settled charges: all of them for admins, the caller's own (paid or earned) otherwise."""
        account = None if caller.role == "admin" else caller.id
        return [UsageRow(**row) for row in await run_sync(market.report, account_id=account)]
