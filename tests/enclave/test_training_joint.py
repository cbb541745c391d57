"""Joint training across two hospitals' encrypted genomics cohorts, gated by both owners' approvals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from enclave.test_training_kit import (
    Owner,
    Recipient,
    approve_and_train,
    digest_of,
    enclave_key,
    job_spec,
    new_enclave,
    onnx_labels,
    recipient_model,
    train,
    validation_rows,
    verify_receipt,
)
from sealedml.crypto.request import RecipientKey
from sealedml.datasets.genomics import LABEL, CohortParameters, generate_cohort
from sealedml.enclave.training import open_model_grant
from sealedml.errors import InputError, RequestError


@pytest.fixture(scope="module")
def hospitals() -> tuple[Owner, Owner, tuple]:
    cohort = generate_cohort(CohortParameters(n_genes=2000, n_patients=300, seed=11))
    a, b = cohort.hospitals
    return (
        Owner.create("hospital-a", a.to_table()),
        Owner.create("hospital-b", b.to_table()),
        cohort.hospitals,
    )


@pytest.fixture
def small_hospitals() -> tuple[Owner, Owner]:
    cohort = generate_cohort(CohortParameters(n_genes=50, n_patients=120, n_informative=5, seed=3))
    a, b = cohort.hospitals
    return Owner.create("hospital-a", a.to_table()), Owner.create("hospital-b", b.to_table())


def genomics_spec(owners: list[Owner], recipients: list[Recipient], **fields: object) -> dict[str, object]:
    return job_spec(
        [o.dataset_id for o in owners],
        recipients,
        label=LABEL,
        algorithm="logistic_regression",
        params={"C": 0.05},
        **fields,
    )


def test_joint_training_on_two_hospitals_needs_and_uses_both_approvals(tmp_path: Path, hospitals) -> None:
    a, b, cohorts = hospitals
    enclave = new_enclave(tmp_path)
    for owner in (a, b):
        owner.provision(enclave)
    researcher, hospital_a_analyst = Recipient(), Recipient()
    spec = genomics_spec([a, b], [researcher, hospital_a_analyst])
    digest = digest_of(spec)

    with pytest.raises(RequestError) as none:
        train(enclave, spec, [a.dataset.blob, b.dataset.blob])
    assert none.value.code == "request.approvals_missing"
    assert "hospital-a" in none.value.message and "hospital-b" in none.value.message

    a.approve(enclave, digest)
    with pytest.raises(RequestError) as one:
        train(enclave, spec, [a.dataset.blob, b.dataset.blob])
    assert one.value.code == "request.approvals_missing"
    assert "hospital-b" in one.value.message and "hospital-a" not in one.value.message

    b.approve(enclave, digest)
    trained = train(enclave, spec, [a.dataset.blob, b.dataset.blob])
    metrics = trained.answer["metrics"]
    assert metrics["rows_used"] == 300  # both hospitals' rows, concatenated
    assert metrics["features"] == 2000 and metrics["classes"] == [0, 1]
    assert metrics["accuracy"] > 0.6 and metrics["roc_auc"] > 0.65

    # Each listed recipient opens its own grant and gets a model that reproduces the metrics.
    rows = np.vstack([c.expression for c in cohorts])
    responses = np.concatenate([c.response for c in cohorts])
    x_val, y_val = validation_rows(rows, responses)
    for recipient in (researcher, hospital_a_analyst):
        labels, _ = onnx_labels(recipient_model(trained, recipient), x_val)
        assert float(np.mean(labels == y_val)) == pytest.approx(metrics["accuracy"], abs=1e-12)

    receipt = verify_receipt(enclave, trained.reply)
    assert [d["dataset"] for d in receipt["datasets"]] == ["hospital-a", "hospital-b"]
    assert receipt["spec_sha256"] == digest

    # The approvals were for one run: the same spec does not run again.
    with pytest.raises(RequestError) as again:
        train(enclave, spec, [a.dataset.blob, b.dataset.blob])
    assert again.value.code == "request.replayed"


def test_the_model_key_opens_only_for_listed_recipients(tmp_path: Path, small_hospitals) -> None:
    a, b = small_hospitals
    enclave = new_enclave(tmp_path)
    for owner in (a, b):
        owner.provision(enclave)
    listed, outsider = Recipient(), Recipient()
    trained = approve_and_train(enclave, [a, b], genomics_spec([a, b], [listed]))
    grants = trained.reply.header["grants"]
    assert [g["recipient"] for g in grants] == [listed.public_hex]
    sealed = bytes.fromhex(grants[0]["grant"])
    assert open_model_grant(sealed, listed.key).model_key
    with pytest.raises(RequestError) as caught:
        open_model_grant(sealed, outsider.key)
    assert caught.value.code == "request.wrong_recipient"
    # The enclave's own key (the only other party that could hold it) is not a recipient either.
    with pytest.raises(RequestError):
        RecipientKey.generate().open_request(sealed)


def test_wrong_digest_wrong_key_and_replayed_approvals_are_refused(tmp_path: Path, small_hospitals) -> None:
    a, b = small_hospitals
    enclave = new_enclave(tmp_path)
    for owner in (a, b):
        owner.provision(enclave)
    recipient = Recipient()
    spec = genomics_spec([a, b], [recipient])
    digest = digest_of(spec)

    # hospital-b approves a *different* spec (another recipient): it does not count for this one.
    other = genomics_spec([a, b], [Recipient()], job=spec["job"])
    a.approve(enclave, digest)
    b.approve(enclave, digest_of(other))
    with pytest.raises(RequestError) as wrong_digest:
        train(enclave, spec, [a.dataset.blob, b.dataset.blob])
    assert (
        wrong_digest.value.code == "request.approvals_missing" and "hospital-b" in wrong_digest.value.message
    )

    # An approval signed by anyone but the owner's approval key is refused on arrival.
    with pytest.raises(RequestError) as wrong_key:
        b.approve(enclave, digest, signer=ed25519.Ed25519PrivateKey.generate())
    assert wrong_key.value.code == "request.approval_invalid"
    # So is hospital-a's key signing for hospital-b's dataset.
    with pytest.raises(RequestError) as other_owner:
        b.approve(enclave, digest, signer=a.approval_key)
    assert other_owner.value.code == "request.approval_invalid"

    # The host replaying an owner's sealed approval gets nothing.
    approval = b.approval_request(enclave_key(enclave), digest)
    enclave.handle("approve", {"dataset": b.dataset_id}, [approval.envelope])
    with pytest.raises(RequestError) as replayed:
        enclave.handle("approve", {"dataset": b.dataset_id}, [approval.envelope])
    assert replayed.value.code == "request.replayed"
    # Nor can it move hospital-b's approval onto hospital-a's dataset id.
    with pytest.raises(RequestError) as moved:
        enclave.handle(
            "approve", {"dataset": a.dataset_id}, [b.approval_request(enclave_key(enclave), digest).envelope]
        )
    assert moved.value.code == "request.invalid"

    trained = train(enclave, spec, [a.dataset.blob, b.dataset.blob])
    assert trained.answer["metrics"]["rows_used"] == 120


def test_parties_with_different_schemas_cannot_train_jointly(tmp_path: Path, small_hospitals) -> None:
    a, b = small_hospitals
    cohort = generate_cohort(CohortParameters(n_genes=50, n_patients=120, n_informative=5, seed=3))
    table_b = cohort.hospitals[1].to_table()
    renamed = table_b.rename_columns(["GENE_X" if n == "G0007" else n for n in table_b.column_names])
    b_other = Owner.create("hospital-b", renamed)
    enclave = new_enclave(tmp_path)
    a.provision(enclave)
    b_other.provision(enclave)
    spec = genomics_spec([a, b_other], [Recipient()])
    with pytest.raises(InputError) as caught:
        approve_and_train(enclave, [a, b_other], spec)
    assert caught.value.code == "input.schema_mismatch"
    assert "G0007" not in caught.value.message and "position 6" in caught.value.message

    retyped = table_b.set_column(
        table_b.column_names.index("G0003"),
        "G0003",
        pa.array([str(v) for v in cohort.hospitals[1].expression[:, 2]]),
    )
    b_strings = Owner.create("hospital-b", retyped)
    b_strings.provision(enclave)  # replaces the dataset: the owner's own act
    with pytest.raises(InputError) as typed:
        approve_and_train(enclave, [a, b_strings], genomics_spec([a, b_strings], [Recipient()]))
    assert typed.value.code == "input.schema_mismatch"

    # With the matching file back in place, the same two parties train.
    b.provision(enclave)
    joint = approve_and_train(enclave, [a, b], genomics_spec([a, b], [Recipient()]))
    assert joint.answer["metrics"]["rows_used"] == 120
