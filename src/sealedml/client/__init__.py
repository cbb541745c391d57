"""The SealedML client SDK: the plain Python API the CLI is built on.

Typical use::

    policy = AppraisalPolicy.load(Path("policy.toml"))
    with SealedMLClient(url, token, policy=policy) as client:
        client.attest()
        prediction = client.predict("cancer-screen", frame)
"""

from sealedml.client._data import iter_table, select_features, write_predictions
from sealedml.client._models import PreparedModel, from_estimator, prepare_model_file, prepare_onnx
from sealedml.client._receipts import ReceiptBundle, verify_receipt
from sealedml.client._sdk import ModelInfo, Prediction, PublishedModel, SealedMLClient
from sealedml.client._training import (
    DatasetInfo,
    FetchedModel,
    KeyStore,
    Submission,
    TrainingAPI,
    TrainingJob,
    TrainingOutcome,
    UploadedDataset,
    public_hex,
)

__all__ = [
    "DatasetInfo",
    "FetchedModel",
    "KeyStore",
    "ModelInfo",
    "Prediction",
    "PreparedModel",
    "PublishedModel",
    "ReceiptBundle",
    "SealedMLClient",
    "Submission",
    "TrainingAPI",
    "TrainingJob",
    "TrainingOutcome",
    "UploadedDataset",
    "from_estimator",
    "iter_table",
    "prepare_model_file",
    "prepare_onnx",
    "public_hex",
    "select_features",
    "verify_receipt",
    "write_predictions",
]
