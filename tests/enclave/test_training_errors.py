"""Refusals: each a clear, stable code, and none of them changes the enclave's state."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from enclave.test_training_kit import (
    CANCER_LABEL,
    Owner,
    Recipient,
    approve_and_train,
    breast_cancer_table,
    digest_of,
    job_spec,
    new_enclave,
    seal_job,
    train,
)
from sealedml.crypto.request import seal_request
from sealedml.crypto.stream import new_data_key
from sealedml.datasets.files import dataset_config_json, encrypt_table
from sealedml.enclave.datasets import TrainingLimits
from sealedml.enclave.runtime import Enclave
from sealedml.errors import CryptoError, EnclaveError, InputError, RequestError, SealedMLError


def refused(call, code: str) -> SealedMLError:
    with pytest.raises(SealedMLError) as caught:
        call()
    assert caught.value.code == code, caught.value
    return caught.value


def assert_not_provisioned(enclave: Enclave, owner: Owner) -> None:
    spec = job_spec([owner.dataset_id], [Recipient()])
    refused(lambda: owner.approve(enclave, digest_of(spec)), "input.dataset_not_provisioned")


@pytest.fixture(scope="module")
def owner() -> Owner:
    return Owner.create("wisconsin", breast_cancer_table())


def test_tampered_ciphertext_is_refused_and_nothing_is_registered(tmp_path: Path, owner: Owner) -> None:
    enclave = new_enclave(tmp_path)
    tampered = bytearray(owner.dataset.blob)
    tampered[len(tampered) // 2] ^= 0x40
    refused(lambda: owner.provision(enclave, blob=bytes(tampered)), "input.blob_mismatch")
    # A config that declares the tampered blob's digest still fails: the chunks do not authenticate.
    forged = Owner(
        owner.dataset_id,
        replace(owner.dataset, blob=bytes(tampered), blob_sha256=hashlib.sha256(tampered).hexdigest()),
        owner.approval_key,
    )
    refused(lambda: forged.provision(enclave), "crypto.auth_failed")
    assert_not_provisioned(enclave, owner)


def test_wrong_dataset_key_is_refused(tmp_path: Path, owner: Owner) -> None:
    enclave = new_enclave(tmp_path)
    wrong = dataset_config_json(
        replace(owner.dataset, key=new_data_key()),
        approval_public_key=owner.approval_public,
    )
    refused(lambda: owner.provision(enclave, config=wrong), "crypto.auth_failed")
    assert_not_provisioned(enclave, owner)


def test_a_declared_schema_that_does_not_match_the_file_is_refused(tmp_path: Path, owner: Owner) -> None:
    enclave = new_enclave(tmp_path)
    config = json.loads(owner.config())
    config["schema_sha256"] = "00" * 32
    error = refused(
        lambda: owner.provision(enclave, config=json.dumps(config).encode()), "input.schema_mismatch"
    )
    assert "mean radius" not in error.message
    assert_not_provisioned(enclave, owner)


def test_malformed_configs_are_refused(tmp_path: Path, owner: Owner) -> None:
    enclave = new_enclave(tmp_path)
    config = json.loads(owner.config())
    for change in ({"dataset_key": "zz"}, {"approval_public_key": "00"}, {"epsilon_total": -1}, {"extra": 1}):
        refused(
            lambda c=change: owner.provision(enclave, config=json.dumps({**config, **c}).encode()),
            "input.malformed",
        )
    refused(lambda: owner.provision(enclave, config=b"\xff"), "input.malformed")
    assert_not_provisioned(enclave, owner)


@pytest.mark.parametrize(
    ("limits", "what"),
    [
        (TrainingLimits(max_rows=500), "rows"),
        (TrainingLimits(max_plaintext_bytes=50_000), "bytes"),
        (TrainingLimits(max_cells=10_000), "cells"),
        (TrainingLimits(max_columns=20), "columns"),
    ],
)
def test_oversized_datasets_are_refused(
    tmp_path: Path, owner: Owner, limits: TrainingLimits, what: str
) -> None:
    enclave = new_enclave(tmp_path, limits)
    error = refused(lambda: owner.provision(enclave), "input.too_large")
    assert what in error.message and "569" not in error.message
    assert_not_provisioned(enclave, owner)


def test_two_datasets_together_may_exceed_the_row_limit(tmp_path: Path) -> None:
    table = breast_cancer_table()
    first, second = Owner.create("part-1", table.slice(0, 300)), Owner.create("part-2", table.slice(300))
    enclave = new_enclave(tmp_path, TrainingLimits(max_rows=400))
    first.provision(enclave)
    second.provision(enclave)
    spec = job_spec(["part-1", "part-2"], [Recipient()])
    refused(lambda: approve_and_train(enclave, [first, second], spec), "input.too_large")
    # Nothing was consumed: with one dataset the same parties can still train.
    approve_and_train(enclave, [first], job_spec(["part-1"], [Recipient()]))


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"algorithm": "xgboost"}, "unknown algorithm"),
        ({"algorithm": "random_forest", "params": {"n_jobs": -1}}, "n_jobs"),
        ({"algorithm": "random_forest", "params": {"n_estimators": 100_000}}, "n_estimators"),
        ({"algorithm": "mlp", "params": {"alpha": "lots"}}, "alpha"),
    ],
)
def test_invalid_specs_are_refused_inside_the_enclave_too(
    tmp_path: Path, owner: Owner, fields: dict, fragment: str
) -> None:
    enclave = new_enclave(tmp_path)
    owner.provision(enclave)
    spec = job_spec([owner.dataset_id], [Recipient()], **fields)
    error = refused(lambda: train(enclave, spec, [owner.dataset.blob]), "input.spec_invalid")
    assert fragment in error.message
    approve_and_train(enclave, [owner], job_spec([owner.dataset_id], [Recipient()]))  # still works


def test_a_blob_swapped_at_training_time_is_refused_and_the_job_can_rerun(
    tmp_path: Path, owner: Owner
) -> None:
    enclave = new_enclave(tmp_path)
    owner.provision(enclave, epsilon_total=2.0)
    other = encrypt_table(breast_cancer_table().slice(0, 100))
    spec = job_spec(
        [owner.dataset_id],
        [Recipient()],
        dp_epsilon=1.0,
        classes=[0, 1],
        feature_bounds={n: [0.0, 5000.0] for n in breast_cancer_table().column_names if n != CANCER_LABEL},
    )
    owner.approve(enclave, digest_of(spec))
    refused(lambda: train(enclave, spec, [other.blob]), "input.blob_mismatch")
    done = train(enclave, spec, [owner.dataset.blob])  # same approval, budget untouched by the refusal
    assert done.answer["datasets"][0]["epsilon_spent"] == 1.0


def test_schema_problems_in_the_spec_are_refused_without_naming_columns(tmp_path: Path, owner: Owner) -> None:
    enclave = new_enclave(tmp_path)
    owner.provision(enclave)
    error = refused(
        lambda: approve_and_train(
            enclave, [owner], job_spec([owner.dataset_id], [Recipient()], label="outcome")
        ),
        "input.schema_mismatch",
    )
    assert "outcome" not in error.message
    refused(
        lambda: approve_and_train(
            enclave,
            [owner],
            job_spec([owner.dataset_id], [Recipient()], features=["mean radius", "secret_col"]),
        ),
        "input.schema_mismatch",
    )
    float_label = job_spec([owner.dataset_id], [Recipient()], label="mean radius", features=["mean texture"])
    refused(lambda: approve_and_train(enclave, [owner], float_label), "input.schema_mismatch")
    declared = job_spec([owner.dataset_id], [Recipient()], classes=[0, 2])
    refused(lambda: approve_and_train(enclave, [owner], declared), "input.schema_mismatch")


def test_string_features_and_missing_values_are_refused(tmp_path: Path) -> None:
    table = breast_cancer_table()
    with_names = table.append_column("patient", pa.array([f"p{i}" for i in range(table.num_rows)]))
    holes = table.set_column(
        0, "mean radius", pa.array([None, *table.column(0).to_pylist()[1:]], pa.float64())
    )
    enclave = new_enclave(tmp_path)
    named, holed = Owner.create("named", with_names), Owner.create("holed", holes)
    named.provision(enclave)
    holed.provision(enclave)
    error = refused(
        lambda: approve_and_train(enclave, [named], job_spec(["named"], [Recipient()])),
        "input.schema_mismatch",
    )
    assert "patient" not in error.message and "string" in error.message
    refused(
        lambda: approve_and_train(enclave, [holed], job_spec(["holed"], [Recipient()])), "input.malformed"
    )


def test_training_needs_two_classes(tmp_path: Path) -> None:
    table = breast_cancer_table()
    one_class = table.filter(pc.equal(table.column(CANCER_LABEL), 1))
    lonely = Owner.create("lonely", one_class)
    enclave = new_enclave(tmp_path)
    lonely.provision(enclave)
    refused(
        lambda: approve_and_train(enclave, [lonely], job_spec(["lonely"], [Recipient()])),
        "input.insufficient_data",
    )


def test_routing_and_provisioning_errors(tmp_path: Path, owner: Owner) -> None:
    enclave = new_enclave(tmp_path)
    spec = job_spec([owner.dataset_id], [Recipient()])
    refused(lambda: train(enclave, spec, [owner.dataset.blob]), "input.dataset_not_provisioned")
    owner.provision(enclave)
    sealed = seal_job(enclave, spec)
    # The host claims other datasets than the sealed spec names.
    refused(
        lambda: enclave.handle(
            "train",
            {"model": spec["model"], "client": "c", "job": spec["job"], "datasets": ["elsewhere"]},
            [sealed.envelope, owner.dataset.blob],
        ),
        "request.invalid",
    )
    with pytest.raises(EnclaveError):
        enclave.handle(
            "train", {"model": spec["model"], "client": "c", "job": "j", "datasets": "x"}, [sealed.envelope]
        )
    # A provisioning request replayed onto another dataset id is refused.
    request = seal_request(
        enclave_public_key=bytes.fromhex(enclave.info()["hpke_public_key"]),
        op="provision_dataset",
        model=owner.dataset_id,
        payload=owner.config(),
    )
    with pytest.raises(RequestError):
        enclave.handle(
            "provision_dataset", {"dataset": "other", "client": "c"}, [request.envelope, owner.dataset.blob]
        )
    # A sealed state from another dataset id does not unseal as this one.
    provisioned, _ = owner.provision(enclave)
    with pytest.raises(CryptoError):
        enclave.handle("load_dataset", {"dataset": "other"}, [provisioned.parts[0], owner.dataset.blob])
    with pytest.raises(InputError) as blob:
        enclave.handle("load_dataset", {"dataset": owner.dataset_id}, [provisioned.parts[0], b"not the blob"])
    assert blob.value.code == "input.blob_mismatch"


def test_publishing_over_a_loaded_model_is_refused(tmp_path: Path, owner: Owner) -> None:
    enclave = new_enclave(tmp_path)
    owner.provision(enclave)
    first = approve_and_train(enclave, [owner], job_spec([owner.dataset_id], [Recipient()], publish=True))
    clash = job_spec([owner.dataset_id], [Recipient()], publish=True, model=first.answer["model"])
    refused(lambda: approve_and_train(enclave, [owner], clash), "input.conflict")


def test_approvals_expire_after_a_day_and_unloading_forgets_the_dataset(tmp_path: Path, owner: Owner) -> None:
    now = [time.time()]
    enclave = new_enclave(tmp_path, clock=lambda: now[0])
    owner.provision(enclave)
    spec = job_spec([owner.dataset_id], [Recipient()])
    owner.approve(enclave, digest_of(spec))
    now[0] += 24 * 3600 + 60
    late = seal_job(enclave, spec, now=int(now[0]))
    refused(lambda: train(enclave, spec, [owner.dataset.blob], request=late), "request.approvals_missing")
    owner.approve(enclave, digest_of(spec), now=int(now[0]))  # approving again lets it run
    assert train(enclave, spec, [owner.dataset.blob], request=seal_job(enclave, spec, now=int(now[0])))

    enclave.handle("unload_dataset", {"dataset": owner.dataset_id}, [])
    refused(lambda: owner.approve(enclave, digest_of(spec), now=int(now[0])), "input.dataset_not_provisioned")


def test_progress_is_reported_phase_by_phase(tmp_path: Path, owner: Owner) -> None:
    seen: list[tuple[str, str]] = []
    enclave = new_enclave(tmp_path, progress=lambda job, phase: seen.append((job, phase)))
    owner.provision(enclave)
    spec = job_spec([owner.dataset_id], [Recipient()])
    approve_and_train(enclave, [owner], spec)
    assert seen == [
        (spec["job"], phase)
        for phase in ("decrypting", "preparing", "training", "exporting", "evaluating", "encrypting")
    ]
