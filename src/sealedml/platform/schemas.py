"""Pydantic models of the platform's JSON API (requests, responses, errors).

These are the wire contract the SDK is written against; every field here is public metadata,
an opaque ciphertext (base64) or a signed receipt.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

NAME_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
VERSION_PATTERN = r"^[A-Za-z0-9._+-]{1,32}$"
MEASUREMENT_PATTERN = r"^[0-9a-f]{64}$|^[0-9a-f]{96}$"
MAX_ALLOWED_MEASUREMENTS = 64
MAX_COLUMNS = 100_000
MAX_COLUMN_NAME = 256
OUTPUT_MODES = ("probabilities", "rounded", "label")

Role = Literal["admin", "provider", "data_owner"]
ModelStatus = Literal["created", "uploaded", "ready"]
ModelMode = Literal["tee", "he"]
JobKind = Literal["predict", "train", "he-predict"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    """A stable error code and a message a person can act on."""

    code: str = Field(examples=["auth.forbidden"])
    message: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class Health(BaseModel):
    """Liveness answer."""

    status: Literal["ok"] = "ok"


class EnclaveInfoOut(BaseModel):
    """The enclave's public identity. Trust it only after verifying ``/v1/attestation``."""

    tee: str
    simulated: bool
    measurement: str
    hpke_public_key: str = Field(description="X25519 public key, hex")
    signing_public_key: str = Field(description="Ed25519 public key, hex")
    instance_id: str
    protocol: int


class AccountCreate(_Strict):
    """Request to create an account (admin only)."""

    name: str = Field(pattern=NAME_PATTERN)
    role: Role


class AccountOut(BaseModel):
    """An account as its owner sees it."""

    id: str
    name: str
    role: Role


class AccountBalanceOut(AccountOut):
    """An account with its credit balance."""

    balance: int


class CreditGrant(_Strict):
    """Credits to add to an account (admin only). Validated by the service: 1..10^15."""

    amount: StrictInt


class CreditOut(BaseModel):
    """An account's balance after a grant."""

    account_id: str
    balance: int


class AccountCreated(AccountOut):
    """A new account and its bearer token: shown once, stored nowhere in clear."""

    token: str


class OutputPolicyIn(_Strict):
    """Public copy of the output policy the provider seals to the enclave (display only)."""

    mode: Literal["probabilities", "rounded", "label"] = "probabilities"
    decimals: int = Field(default=2, ge=0, le=6)


class ModelCreate(_Strict):
    """Request to register a model (provider only); the weights come later, encrypted."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(default="", max_length=4096)
    input_columns: list[str] = Field(min_length=1, max_length=MAX_COLUMNS)
    output_policy: OutputPolicyIn | None = None
    version: str = Field(default="1", pattern=VERSION_PATTERN)
    price_per_row: StrictInt = Field(
        default=0, description="credits per predicted row (validated by the service)"
    )
    allowed_measurements: list[Annotated[str, Field(pattern=MEASUREMENT_PATTERN)]] = Field(
        default_factory=list,
        max_length=MAX_ALLOWED_MEASUREMENTS,
        description="enclave measurements allowed to run the model (empty: the one it was provisioned to)",
    )
    mode: ModelMode = Field(
        default="tee",
        description="tee: encrypted ONNX run in the attested enclave; he: weights evaluated by the host "
        "on the client's CKKS ciphertexts (upload them with PUT /v1/models/{id}/he-model)",
    )

    @field_validator("input_columns")
    @classmethod
    def _columns(cls, value: list[str]) -> list[str]:
        for column in value:
            if not column or len(column) > MAX_COLUMN_NAME or not column.isprintable():
                raise ValueError(f"column names must be 1..{MAX_COLUMN_NAME} printable characters")
        if len(set(value)) != len(value):
            raise ValueError("column names must be distinct")
        return value


class ModelUpdate(_Strict):
    """Changes to a model's public listing (owner only); absent fields stay as they are."""

    description: str | None = Field(default=None, max_length=4096)
    version: str | None = Field(default=None, pattern=VERSION_PATTERN)
    price_per_row: StrictInt | None = None
    allowed_measurements: list[Annotated[str, Field(pattern=MEASUREMENT_PATTERN)]] | None = Field(
        default=None, max_length=MAX_ALLOWED_MEASUREMENTS
    )


class ModelOut(BaseModel):
    """A model's public record. ``blob_sha256`` is the digest of the *ciphertext*."""

    id: str
    owner_id: str
    name: str
    description: str
    input_columns: list[str]
    output_policy: dict[str, Any] | None
    status: ModelStatus
    blob_sha256: str | None
    blob_size: int | None
    model_sha256: str | None = Field(description="digest of the plaintext ONNX, reported by the enclave")
    measurement: str | None = Field(description="measurement of the enclave that sealed the key")
    created_at: datetime
    version: str = "1"
    price_per_row: int = 0
    allowed_measurements: list[str] = Field(default_factory=list)
    mode: ModelMode = "tee"
    preset: str | None = Field(default=None, description="for HE models: the CKKS preset a client must use")


class ProvisionOut(BaseModel):
    """Result of key provisioning: the enclave's sealed answer and its signed receipt."""

    model: ModelOut
    response: str = Field(description="response envelope for the provider, base64")
    receipt: dict[str, Any]
    signature: str
    ledger: dict[str, Any] | None = None


class PredictOut(BaseModel):
    """Result of a prediction: only the data owner can open ``response``."""

    job_id: str
    response: str = Field(description="response envelope for the data owner, base64")
    receipt: dict[str, Any]
    signature: str
    rows: int
    ledger: dict[str, Any] | None = Field(
        default=None, description="leaf index, signed tree head and inclusion proof of the receipt"
    )


class JobDatasetOut(BaseModel):
    """One dataset of a training job and whether its owner approved it (on the current enclave)."""

    dataset: str
    position: int
    owner_id: str
    approved: bool
    approved_at: datetime | None


class GrantOut(BaseModel):
    """A model-key grant: HPKE-sealed to one recipient's X25519 key, readable by nobody else."""

    recipient: str = Field(description="X25519 public key, hex")
    grant: str = Field(description="sealed grant envelope, hex")


class TrainingOut(BaseModel):
    """The training side of a job: spec, approvals, and (when done) what the enclave released."""

    spec: dict[str, Any] = Field(description="the normalised job spec every owner approves")
    spec_sha256: str
    datasets: list[JobDatasetOut]
    waiting_for: list[str] = Field(description="datasets whose owner has not approved yet")
    request_fresh: bool | None = Field(
        default=None, description="whether the sealed request can still run (else the submitter re-seals it)"
    )
    publish_model_id: str | None = None
    model_sha256: str | None = None
    model_blob_sha256: str | None = None
    grants: list[GrantOut] = Field(default_factory=list)
    phases: list[dict[str, Any]] = Field(default_factory=list, description="enclave phases and seconds")
    budgets: list[dict[str, Any]] = Field(default_factory=list, description="privacy budgets after the job")
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobOut(BaseModel):
    """A job's public record: a finished prediction, or a training job in any state."""

    id: str
    model_id: str
    request_id: str
    status: str
    rows: int
    receipt: dict[str, Any]
    signature: str
    created_at: datetime
    kind: JobKind = "predict"
    phase: str | None = None
    progress: int | None = Field(default=None, description="percent, for training jobs")
    error_code: str | None = Field(default=None, description="why a training job waits or failed")
    error_message: str | None = None
    updated_at: datetime | None = None
    training: TrainingOut | None = None


class DatasetCreate(_Strict):
    """Request to register a dataset (data owners); its ciphertext comes next."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(default="", max_length=4096)


class DatasetOut(BaseModel):
    """A dataset as its owner sees it: digests, sizes and the public privacy budget, never a row."""

    id: str
    owner_id: str
    name: str
    description: str
    status: Literal["created", "uploaded", "ready"]
    blob_sha256: str | None = Field(description="digest of the ciphertext")
    blob_size: int | None
    generation: int = Field(description="budget generation of the stored sealed state")
    epsilon_total: float | None
    epsilon_spent: float
    epsilon_remaining: float | None
    measurement: str | None = Field(description="measurement of the enclave that sealed the state")
    listing_id: str | None = Field(description="the market listing whose price training jobs pay")
    created_at: datetime


class DatasetRefOut(BaseModel):
    """A dataset a training job may name: the caller's own, or one listed on the market."""

    id: str
    name: str
    owner_id: str
    own: bool
    listing_id: str | None


class DatasetProvisionOut(BaseModel):
    """Result of provisioning a dataset key: the enclave's sealed answer for the owner."""

    dataset: DatasetOut
    response: str = Field(description="response envelope for the owner, base64")


class DatasetColumnIn(_Strict):
    """One column of a dataset's public schema, as its owner chooses to list it."""

    name: str = Field(min_length=1, max_length=MAX_COLUMN_NAME)
    type: str


class DatasetOfferIn(_Strict):
    """List a dataset on the market: the schema and size its owner publishes, and its price."""

    description: str = Field(default="", max_length=4096)
    columns: list[DatasetColumnIn] = Field(min_length=1, max_length=MAX_COLUMNS)
    rows: StrictInt
    price: StrictInt = Field(default=0, description="credits per training job that uses the dataset")


class TrainSubmit(_Strict):
    """A training job: the spec in clear (the host validates it) and the same spec sealed to the
    enclave (which validates it again and trusts only that copy)."""

    spec: dict[str, Any]
    request: str = Field(description="sealed `train` request envelope, base64")
    publish_name: str | None = Field(default=None, pattern=NAME_PATTERN)
    description: str = Field(default="", max_length=4096)


class ApprovalOut(BaseModel):
    """An approval the enclave accepted, with its sealed confirmation for the owner."""

    job: JobOut
    dataset: str
    spec_sha256: str
    response: str = Field(description="response envelope for the owner, base64")


class JobResultOut(BaseModel):
    """A job's stored response envelope (base64), readable only with the requester's key."""

    job_id: str
    response: str


class HEContextOut(BaseModel):
    """A public CKKS context the caller uploaded (evaluation keys only; the secret key never leaves
    the client)."""

    context: str = Field(description="fingerprint: SHA-256 of the serialized public context, hex")
    params: dict[str, Any]
    size: int
    created_at: datetime


class HEModelInfoOut(BaseModel):
    """What a client needs to use an HE model: its preset and the public shape of its output.

    The weights themselves stay with the platform (and are never returned by the API).
    """

    model: ModelOut
    kind: str = Field(description="linear | logistic | poly_mlp")
    preset: str
    params: dict[str, Any]
    input_columns: list[str]
    outputs: int = Field(description="scores per row the client decrypts")
    output: str = Field(description="final non-linearity the client applies: identity | sigmoid | softmax")
    classes: list[Any] | None = None
    depth: int = Field(description="multiplicative levels the evaluation uses")
    query_budget: int | None = None


class HEDatasetOut(BaseModel):
    """Encrypted training data stored for its owner: public sizes and the ciphertext digest only."""

    dataset: str
    context: str
    rows: int
    features: int
    size: int
    blob_sha256: str
    created_at: datetime
