"""The one error hierarchy of SealedML.

Every rejection carries a *stable* code (``crypto.auth_failed``), an HTTP status that fits, and a
message a person can act on. Codes are part of the public interface: the HTTP API returns them in
the JSON body, the enclave returns them across its message protocol, and the CLI prints them.
Messages never contain plaintext data or key material.

    SealedMLError
    ├── CryptoError          crypto.*        ciphertext failed to authenticate, malformed envelope
    ├── AttestationError     attestation.*   evidence rejected by a named check
    ├── RequestError         request.*       replay, expiry, wrong recipient
    ├── InputError           input.*         oversized, malformed, schema mismatch
    ├── ModelError           model.*         invalid ONNX, not provisioned, budget exhausted
    ├── AuthError            auth.*          missing/invalid token, forbidden role or tenant
    ├── NotFoundError        not_found.*     unknown model, job (also used for other tenants' objects)
    ├── EnclaveError         enclave.*       enclave unavailable or protocol violation
    ├── ReceiptError         receipt.*       a receipt does not match the job or the attested enclave
    ├── NetworkError         network.*       the platform could not be reached
    └── ConfigError          config.*        bad policy file, bad settings
"""

from __future__ import annotations

from typing import ClassVar


class SealedMLError(Exception):
    """Base of every SealedML error: a stable ``code``, an HTTP ``status`` and a message."""

    prefix: ClassVar[str] = "error"
    default_status: ClassVar[int] = 400

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        if not code.startswith(self.prefix + ".") and self.prefix != "error":
            raise ValueError(f"code {code!r} does not belong to {type(self).__name__}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else STATUS_BY_CODE.get(code, self.default_status)

    def diagnostics(self) -> str:
        """Return a paragraph a person can act on: the code, what failed, and the hint if any."""
        hint = HINTS.get(self.code)
        text = f"[{self.code}] {self.message}"
        return f"{text}\n  hint: {hint}" if hint else text

    def to_dict(self) -> dict[str, str]:
        """Return the wire form ``{"code": ..., "message": ...}`` used by the API and the enclave."""
        return {"code": self.code, "message": self.message}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class CryptoError(SealedMLError):
    """A ciphertext or envelope was rejected. Authentication failures are deliberately uniform."""

    prefix = "crypto"


class AttestationError(SealedMLError):
    """Evidence was rejected; ``code`` names the check that failed."""

    prefix = "attestation"
    default_status = 422


class RequestError(SealedMLError):
    """A sealed request was rejected as a replay, as expired, or as meant for another enclave."""

    prefix = "request"
    default_status = 409


class InputError(SealedMLError):
    """The caller's input is malformed, too large, or does not fit the model."""

    prefix = "input"


class ModelError(SealedMLError):
    """A model could not be loaded, is not ready, or refuses more queries."""

    prefix = "model"
    default_status = 422


class AuthError(SealedMLError):
    """The caller is not authenticated, or not allowed to do this."""

    prefix = "auth"
    default_status = 401


class NotFoundError(SealedMLError):
    """The object does not exist *for this caller* (other tenants' objects look the same)."""

    prefix = "not_found"
    default_status = 404


class EnclaveError(SealedMLError):
    """The enclave could not be reached, or it broke the message protocol."""

    prefix = "enclave"
    default_status = 503


class ReceiptError(SealedMLError):
    """A receipt does not describe this job, or was not signed by the attested enclave."""

    prefix = "receipt"
    default_status = 422


class BillingError(SealedMLError):
    """A charge cannot be made: not enough credit, or a bad amount."""

    prefix = "billing"
    default_status = 402


class LedgerError(SealedMLError):
    """The transparency log or its chain anchor does not prove what it should."""

    prefix = "ledger"
    default_status = 422


class NetworkError(SealedMLError):
    """The platform could not be reached or did not answer in time."""

    prefix = "network"
    default_status = 503


class ConfigError(SealedMLError):
    """A configuration or policy file is invalid."""

    prefix = "config"


class HEError(SealedMLError):
    """A homomorphic-encryption context, ciphertext or model was refused (encrypted-ML mode)."""

    prefix = "he"
    default_status = 400


class ClusterError(SealedMLError):
    """A distributed enclave worker could not be started, attested, joined or reached."""

    prefix = "cluster"
    default_status = 503


STATUS_BY_CODE: dict[str, int] = {
    "crypto.auth_failed": 400,
    "crypto.malformed": 400,
    "crypto.unsupported_version": 400,
    "crypto.signature_invalid": 400,
    "attestation.malformed": 400,
    "request.replayed": 409,
    "request.expired": 409,
    "request.wrong_recipient": 409,
    "request.invalid": 400,
    "input.too_large": 413,
    "input.malformed": 400,
    "input.schema_mismatch": 422,
    "input.conflict": 409,
    "input.method_not_allowed": 405,
    "model.invalid_onnx": 422,
    "model.not_provisioned": 409,
    "model.budget_exhausted": 429,
    "model.key_mismatch": 422,
    "model.not_uploaded": 409,
    "auth.missing_token": 401,
    "auth.invalid_token": 401,
    "auth.forbidden": 403,
    "not_found.model": 404,
    "not_found.job": 404,
    "not_found.account": 404,
    "not_found.route": 404,
    "not_found.listing": 404,
    "not_found.entry": 404,
    "billing.insufficient_credit": 402,
    "ledger.anchor_not_found": 404,
    "ledger.duplicate_entry": 409,
    "ledger.index_out_of_range": 404,
    "ledger.node_missing": 500,
    "ledger.audit_failed": 500,
    "ledger.storage_unavailable": 503,
    "ledger.append_conflict": 503,
    "ledger.anchor_unconfirmed": 409,
    "ledger.anchor_timeout": 504,
    "ledger.chain_unavailable": 503,
    "billing.invalid_amount": 400,
    "enclave.unavailable": 503,
    "enclave.protocol": 502,
    "enclave.internal": 500,
    "config.invalid": 400,
    # confidential training
    "input.spec_invalid": 400,
    "input.blob_mismatch": 422,
    "input.dataset_not_provisioned": 409,
    "input.insufficient_data": 422,
    "input.dp_required": 403,
    "input.privacy_budget_exhausted": 429,
    "request.approvals_missing": 409,
    "request.approval_invalid": 400,
    "request.stale_state": 409,
    "model.training_failed": 422,
    "model.export_failed": 422,
    "model.export_mismatch": 422,
    "enclave.busy": 503,
    "not_found.dataset": 404,
    "he.context_invalid": 400,
    "he.context_has_secret_key": 400,
    "he.params_unsupported": 422,
    "he.context_mismatch": 400,
    "he.context_unknown": 404,
    "he.ciphertext_invalid": 400,
    "he.shape_mismatch": 422,
    "he.model_invalid": 422,
    "he.model_unsupported": 422,
    "he.depth_exceeded": 422,
    "he.wire_malformed": 400,
    # data-parallel training on an enclave cluster
    "input.parallel_unsupported": 400,
    "request.ptrain_unknown": 409,
    "request.round_mismatch": 409,
    "request.update_foreign": 400,
    "request.shard_duplicated": 409,
    "request.shards_incomplete": 409,
    "request.task_mismatch": 400,
    "request.shard_not_loaded": 409,
    "cluster.coordinator_lost": 503,
    "cluster.peer_rejected": 422,
    "cluster.challenge_unknown": 409,
    "cluster.worker_lost": 503,
    "cluster.no_workers": 503,
    "cluster.unreachable": 503,
}

HINTS: dict[str, str] = {
    "crypto.auth_failed": "the ciphertext was altered, truncated, reordered, or opened with the wrong key",
    "attestation.simulated_not_allowed": (
        "the server runs the SIMULATED TEE, which protects nothing from the host; set "
        "allow_simulated = true in your policy only for development"
    ),
    "attestation.measurement_mismatch": (
        "the enclave runs code you have not pinned: compare `sealedml measure` with your policy's "
        "reference_measurements"
    ),
    "attestation.nonce_mismatch": "the evidence answers another challenge: it is stale or replayed",
    "attestation.expired": "the evidence is older than max_evidence_age_seconds: attest again",
    "attestation.not_yet_valid": "the evidence is dated in the future: check the client and platform clocks",
    "attestation.untrusted_root": (
        "the evidence chains to a root you have not pinned; for the simulated TEE, pin the SHA-256 of "
        "the platform's root-ca.pem (DER) in simulated_roots"
    ),
    "attestation.certificate_expired": (
        "a certificate in the evidence chain is outside its validity window: check the clocks, or "
        "renew the platform certificates"
    ),
    "attestation.report_data_mismatch": (
        "the public keys served are not the ones the enclave attested: do not use them (the host may "
        "be interposing)"
    ),
    "attestation.debug_not_allowed": (
        "a debug enclave's memory is readable by the host; set allow_debug = true only for development"
    ),
    "attestation.tcb_mismatch": (
        "the platform's TCB does not match its certificate or any TCB level in the vendor collateral: "
        "update the firmware/microcode, or fetch current collateral"
    ),
    "attestation.tcb_too_low": "the platform's TCB is below your policy's minimum: the host must update it",
    "attestation.tcb_status_not_allowed": (
        "the vendor rates this platform's TCB below UpToDate; accept that status and its named "
        "advisories explicitly in your policy only after reading them"
    ),
    "attestation.collateral_expired": (
        "the vendor collateral (TCB info, QE identity, CRL) is outside its validity window: fetch fresh "
        "collateral from the PCS/PCCS"
    ),
    "attestation.collateral_invalid": "the vendor collateral is malformed or not signed by the vendor",
    "attestation.collateral_missing": (
        "DCAP evidence needs collateral (TCB info, QE identity, CRLs) to evaluate the platform's TCB"
    ),
    "attestation.revoked": "a certificate in the evidence chain is revoked: do not trust this platform",
    "attestation.platform_mismatch": (
        "the report and its signing certificate name different chips or products"
    ),
    "attestation.policy_mismatch": (
        "a signed field (host data, signer, product id, RTMR, ...) differs from your policy's "
        "reference values"
    ),
    "attestation.td_attributes_not_allowed": (
        "the TD's attributes weaken its isolation (SEPT_VE_DISABLE clear, migratable, SERVTD_EXT or "
        "reserved bits): relaunch the TD with the default attributes"
    ),
    "attestation.no_reference_values": (
        "your policy has no reference values for this TEE type, and policies deny by default"
    ),
    "request.replayed": "each sealed request may be used once; the SDK makes a fresh one per call",
    "request.wrong_recipient": "the enclave restarted with a new key: attest again and resend",
    "input.too_large": "split the input into smaller batches",
    "input.schema_mismatch": "the columns must match the model's published input schema",
    "model.not_provisioned": "the provider must provision the model key to the attested enclave",
    "model.not_uploaded": "upload the encrypted model (PUT /v1/models/{id}/blob) before provisioning",
    "auth.missing_token": "pass --token or set SEALEDML_TOKEN",
    "enclave.unavailable": "the enclave process is not running; check the server log",
    "enclave.platform_unavailable": (
        "the TEE interface is missing or belongs to another TEE: check --tee, Linux 6.7+ configfs-tsm, "
        "or Gramine with DCAP (docs/deploy-real-tee.md)"
    ),
    "enclave.platform_busy": "another process kept writing the configfs-tsm entry; retry",
    "billing.insufficient_credit": "ask the platform operator for credits (`sealedml market credit`)",
    "not_found.listing": "list what is on offer with `sealedml market models|datasets|resources`",
    "ledger.inclusion_invalid": (
        "the log cannot prove it holds this receipt: the host may have dropped or altered it"
    ),
    "ledger.consistency_invalid": (
        "the log's new tree head does not extend the old one: the host rewrote history (a fork)"
    ),
    "ledger.sth_signature_invalid": "the tree head is not signed by the log key you pinned",
    "ledger.audit_failed": (
        "the stored log does not hash to the tree heads it signed: the database was altered"
    ),
    "ledger.duplicate_entry": "this job's receipt is logged already; each receipt is logged once",
    "ledger.fork_detected": (
        "the chain holds two different histories of the same log: the log operator equivocated"
    ),
    "ledger.anchor_mismatch": "the anchor record does not match what the chain holds",
    "ledger.chain_unavailable": "the chain node cannot be reached: check the JSON-RPC URL",
    "input.spec_invalid": "fix the named field of the job spec (`docs/training.md` lists every parameter)",
    "input.blob_mismatch": (
        "the stored dataset ciphertext is not the one its owner provisioned: the host altered or "
        "replaced it; the owner uploads and provisions it again"
    ),
    "input.dataset_not_provisioned": "the owner provisions the dataset key (`sealedml dataset upload`)",
    "input.insufficient_data": "use more rows, or check that the label has at least two classes",
    "input.dp_required": (
        "this dataset has a privacy budget: train with --dp-epsilon and --feature-bounds"
    ),
    "input.privacy_budget_exhausted": (
        "the dataset's privacy budget does not cover this job: use a smaller --dp-epsilon, or ask "
        "its owner for a new dataset budget"
    ),
    "request.approvals_missing": (
        "every dataset owner must approve this exact job: `sealedml approve JOB` with each owner's token"
    ),
    "request.approval_invalid": (
        "the approval is not signed with the dataset's approval key: only its owner can approve"
    ),
    "request.stale_state": "hand the enclave the latest sealed dataset state",
    "model.training_failed": "check the algorithm's parameters, or try another algorithm",
    "model.export_mismatch": "the exported ONNX model disagrees with the trained one: try another algorithm",
    "enclave.busy": "the enclave holds too many pending approvals: retry later",
    "not_found.dataset": "list your datasets with `sealedml dataset list`; other owners' datasets are hidden",
    "input.parallel_unsupported": (
        "only non-DP logistic_regression (with intercept) and mlp train data-parallel: submit it as a "
        "single-enclave job"
    ),
    "request.ptrain_unknown": (
        "the coordinator no longer runs this parallel job (finished, aborted, expired or restarted): "
        "submit the job again"
    ),
    "request.round_mismatch": "send the weights and updates of the round the job is at",
    "request.update_foreign": (
        "an update, task or weights belong to another job or shard: route each job's messages only to it"
    ),
    "request.shard_duplicated": "send each shard's update exactly once per round",
    "request.shards_incomplete": "every shard's update of the round is needed: redo the missing shards",
    "request.task_mismatch": "route each task with its own shard index",
    "request.shard_not_loaded": (
        "hand this worker the dataset blobs with the round (its first round, or after eviction)"
    ),
    "cluster.coordinator_lost": (
        "the coordinator enclave was lost mid-job: deliver the approvals to the new coordinator and "
        "submit the job again"
    ),
    "cluster.peer_rejected": (
        "the peer enclave runs other code, another TEE type, under another root, or in debug mode, or "
        "already serves another cluster identity: start a fresh worker of the same build"
    ),
    "cluster.challenge_unknown": (
        "a peer answered a nonce that was never issued, was already used, or expired (60 s): rerun the join"
    ),
    "cluster.worker_lost": (
        "an enclave worker (Ray actor) died; the platform replaces it and retries the shard"
    ),
    "cluster.unreachable": (
        "start the Ray head first (`ray start --head --port ...`) and pass its HOST:PORT; on a cluster "
        "with token authentication, export RAY_AUTH_MODE=token and the token before `sealedml serve`"
    ),
    "cluster.no_workers": (
        "no worker passed attestation, or every worker was lost: check the rejected workers in the log "
        "and restart the cluster"
    ),
    "he.context_invalid": "send the public context the SDK serializes (HEKeys.public_context())",
    "he.context_has_secret_key": (
        "never upload a context holding the secret key: send HEKeys.public_context() (nothing was stored)"
    ),
    "he.params_unsupported": "generate keys from a preset (`sealedml he keys generate PRESET`)",
    "he.context_mismatch": (
        "encrypt with the keys whose public context you name (?context=FINGERPRINT), and decrypt the "
        "answer with the same keys"
    ),
    "he.context_unknown": "upload your public context first (PUT /v1/he/context; the SDK does it once)",
    "he.ciphertext_invalid": "the ciphertext was altered or corrupted in transit: encrypt and send it again",
    "he.shape_mismatch": "encrypt exactly the model's input columns, with the row count the header declares",
    "he.model_invalid": "export the model with HEModel.to_json() (or publish the scikit-learn estimator)",
    "he.model_unsupported": (
        "encrypted-ML mode evaluates linear and logistic models and PolyMLPClassifier networks"
    ),
    "he.depth_exceeded": "use the preset the model names (ModelOut.preset): its modulus chain is long enough",
    "he.wire_malformed": "send messages framed by sealedml.he.wire.encode_message (the SDK does)",
}

_CLASS_BY_PREFIX: dict[str, type[SealedMLError]] = {
    cls.prefix: cls
    for cls in (
        CryptoError,
        AttestationError,
        RequestError,
        InputError,
        ModelError,
        AuthError,
        NotFoundError,
        EnclaveError,
        ReceiptError,
        NetworkError,
        ConfigError,
        BillingError,
        LedgerError,
        HEError,
        ClusterError,
    )
}


def error_from_dict(data: object, *, status: int | None = None) -> SealedMLError:
    """Rebuild the most specific error from its wire form; unknown shapes become a protocol error."""
    if isinstance(data, dict):
        code, message = data.get("code"), data.get("message")
        if isinstance(code, str) and isinstance(message, str) and "." in code:
            cls = _CLASS_BY_PREFIX.get(code.split(".", 1)[0])
            if cls is not None:
                return cls(code, message, status=status)
    return EnclaveError("enclave.protocol", "peer sent an error in an unknown shape", status=status)
