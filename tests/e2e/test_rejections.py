"""Every rejection of the confidential-inference path, through the real server and enclave.

Each case checks the stable error code and that nothing stored changed.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest

from sealedml.attestation.policy import AppraisalPolicy
from sealedml.attestation.verifier import verify_evidence
from sealedml.client import prepare_onnx
from sealedml.crypto.request import seal_request
from sealedml.crypto.stream import encrypt_bytes, new_data_key
from sealedml.enclave import payload
from sealedml.errors import SealedMLError


def stored_state(data_dir: Path) -> tuple[object, ...]:
    """Everything the platform keeps about models and jobs: rows and blob digests."""
    with sqlite3.connect(data_dir / "sealedml.db") as db:
        tables = tuple(
            tuple(sorted(map(repr, db.execute(f"SELECT * FROM {t}").fetchall())))
            for t in ("models", "jobs", "model_usage")
        )
    blobs = tuple(
        sorted(
            (str(p.relative_to(data_dir)), hashlib.sha256(p.read_bytes()).hexdigest())
            for p in (data_dir / "blobs").rglob("*")
            if p.is_file()
        )
    )
    return tables, blobs


def expect(code: str, action, data_dir: Path) -> SealedMLError:
    before = stored_state(data_dir)
    with pytest.raises(SealedMLError) as info:
        action()
    assert info.value.code == code, info.value.diagnostics()
    assert stored_state(data_dir) == before, "a rejected input changed stored data"
    return info.value


@pytest.fixture(scope="module")
def world(platform, cancer):
    """A provider with a published model and a data owner who has one job."""
    provider = platform.account(f"rej-provider-{os.getpid()}", "provider")
    owner = platform.account(f"rej-owner-{os.getpid()}", "data_owner")
    with platform.client(provider) as prov:
        model = prov.publish_model(f"rej-model-{os.getpid()}", cancer.prepared).model
    with platform.client(owner) as client:
        job = client.predict(model.id, cancer.test.iloc[:5]).job_id
    return {"provider": provider, "owner": owner, "model": model, "job": job}


def raw_post(platform, token: str, path: str, body: bytes) -> httpx.Response:
    return httpx.post(platform.url + path, content=body, headers={"Authorization": f"Bearer {token}"})


def sealed_predict(platform, model_id: str, columns: list[str], rows: np.ndarray):
    info = httpx.get(platform.url + "/v1/enclave").json()
    body = payload.pack({"columns": columns}, {"features": rows.astype(np.float32)})
    return seal_request(
        enclave_public_key=bytes.fromhex(info["hpke_public_key"]),
        op="predict",
        model=model_id,
        payload=body,
        rows=len(rows),
    )


def api_error(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


# -- ciphertext ------------------------------------------------------------------------------------


def test_tampered_request_ciphertext(platform, world, cancer) -> None:
    sealed = sealed_predict(
        platform, world["model"].id, cancer.features, cancer.test[cancer.features].to_numpy()[:3]
    )
    tampered = bytearray(sealed.envelope)
    tampered[-20] ^= 0x01
    before = stored_state(platform.data_dir)
    response = raw_post(platform, world["owner"], f"/v1/models/{world['model'].id}/predict", bytes(tampered))
    assert (response.status_code, api_error(response)) == (400, "crypto.auth_failed")
    assert stored_state(platform.data_dir) == before


def test_truncated_request_ciphertext(platform, world, cancer) -> None:
    sealed = sealed_predict(
        platform, world["model"].id, cancer.features, cancer.test[cancer.features].to_numpy()[:3]
    )
    before = stored_state(platform.data_dir)
    for cut in (len(sealed.envelope) - 1, len(sealed.envelope) // 2, 6):
        response = raw_post(
            platform, world["owner"], f"/v1/models/{world['model'].id}/predict", sealed.envelope[:cut]
        )
        assert response.status_code == 400
        assert api_error(response) in ("crypto.auth_failed", "crypto.malformed")
    assert stored_state(platform.data_dir) == before


def test_truncated_model_ciphertext_is_refused_at_provisioning(platform, cancer, unique) -> None:
    provider = platform.account(unique("provider"), "provider")
    key = new_data_key()
    blob = encrypt_bytes(key, cancer.prepared.onnx_bytes, content_type="model/onnx", chunk_size=1024)
    truncated = blob[: len(blob) - (len(blob) % 1040 or 1040)]  # cut at a chunk boundary
    with platform.client(provider) as prov:
        model = prov._json(
            "POST", "/v1/models", json={"name": unique("trunc"), "input_columns": cancer.features}
        )
        prov._request("PUT", f"/v1/models/{model['id']}/blob", content=truncated)
        expect(
            "crypto.auth_failed",
            lambda: prov.provision_model(
                model["id"],
                key,
                blob_sha256=hashlib.sha256(truncated).hexdigest(),
                model_sha256=hashlib.sha256(cancer.prepared.onnx_bytes).hexdigest(),
                input_columns=cancer.features,
            ),
            platform.data_dir,
        )
        assert prov.get_model(model["id"]).status == "uploaded"


def test_wrong_model_key_is_refused(platform, cancer, unique) -> None:
    provider = platform.account(unique("provider"), "provider")
    blob = encrypt_bytes(new_data_key(), cancer.prepared.onnx_bytes, content_type="model/onnx")
    with platform.client(provider) as prov:
        model = prov._json(
            "POST", "/v1/models", json={"name": unique("wrongkey"), "input_columns": cancer.features}
        )
        prov._request("PUT", f"/v1/models/{model['id']}/blob", content=blob)
        expect(
            "crypto.auth_failed",
            lambda: prov.provision_model(
                model["id"],
                new_data_key(),
                blob_sha256=hashlib.sha256(blob).hexdigest(),
                model_sha256="0" * 64,
                input_columns=cancer.features,
            ),
            platform.data_dir,
        )


def test_malformed_onnx_is_refused(platform, cancer, unique) -> None:
    provider = platform.account(unique("provider"), "provider")
    key = new_data_key()
    blob = encrypt_bytes(key, b"this is not an ONNX model" * 10, content_type="model/onnx")
    with platform.client(provider) as prov:
        model = prov._json("POST", "/v1/models", json={"name": unique("junk"), "input_columns": ["a", "b"]})
        prov._request("PUT", f"/v1/models/{model['id']}/blob", content=blob)
        expect(
            "model.invalid_onnx",
            lambda: prov.provision_model(
                model["id"],
                key,
                blob_sha256=hashlib.sha256(blob).hexdigest(),
                model_sha256="0" * 64,
                input_columns=["a", "b"],
            ),
            platform.data_dir,
        )
    # The SDK refuses it before anything leaves the provider's machine, too.
    with pytest.raises(SealedMLError) as info:
        prepare_onnx(b"\x08\x01garbage")
    assert info.value.code == "model.invalid_onnx"


def test_blob_that_is_not_an_envelope(platform, cancer, unique) -> None:
    provider = platform.account(unique("provider"), "provider")
    with platform.client(provider) as prov:
        model = prov._json(
            "POST", "/v1/models", json={"name": unique("plain"), "input_columns": cancer.features}
        )
        expect(
            "crypto.malformed",
            lambda: prov._request(
                "PUT", f"/v1/models/{model['id']}/blob", content=cancer.prepared.onnx_bytes
            ),
            platform.data_dir,
        )


# -- replay and freshness ---------------------------------------------------------------------------


def test_replayed_request(platform, world, cancer) -> None:
    sealed = sealed_predict(
        platform, world["model"].id, cancer.features, cancer.test[cancer.features].to_numpy()[:3]
    )
    path = f"/v1/models/{world['model'].id}/predict"
    assert raw_post(platform, world["owner"], path, sealed.envelope).status_code == 200
    before = stored_state(platform.data_dir)
    response = raw_post(platform, world["owner"], path, sealed.envelope)
    assert (response.status_code, api_error(response)) == (409, "request.replayed")
    assert stored_state(platform.data_dir) == before


def test_request_for_another_model_is_refused(platform, world, cancer) -> None:
    sealed = sealed_predict(
        platform, "some-other-model", cancer.features, cancer.test[cancer.features].to_numpy()[:3]
    )
    response = raw_post(platform, world["owner"], f"/v1/models/{world['model'].id}/predict", sealed.envelope)
    assert (response.status_code, api_error(response)) == (400, "request.invalid")


def test_declared_rows_must_match_the_payload(platform, world, cancer) -> None:
    """The platform meters the declared row count; the enclave refuses a request that lies about it."""
    info = httpx.get(platform.url + "/v1/enclave").json()
    features = cancer.test[cancer.features].to_numpy(np.float32)[:3]
    body = payload.pack({"columns": cancer.features}, {"features": features})
    path = f"/v1/models/{world['model'].id}/predict"
    before = stored_state(platform.data_dir)
    for rows, code in ((1, "request.invalid"), (None, "request.invalid")):
        sealed = seal_request(
            enclave_public_key=bytes.fromhex(info["hpke_public_key"]),
            op="predict",
            model=world["model"].id,
            payload=body,
            rows=rows,
        )
        response = raw_post(platform, world["owner"], path, sealed.envelope)
        assert (response.status_code, api_error(response)) == (400, code)
    assert stored_state(platform.data_dir) == before


def test_stale_request_is_refused(platform, world, cancer) -> None:
    info = httpx.get(platform.url + "/v1/enclave").json()
    body = payload.pack(
        {"columns": cancer.features}, {"features": cancer.test[cancer.features].to_numpy(np.float32)[:2]}
    )
    sealed = seal_request(
        enclave_public_key=bytes.fromhex(info["hpke_public_key"]),
        op="predict",
        model=world["model"].id,
        payload=body,
        now=int(datetime.now(UTC).timestamp()) - 3600,
        rows=2,
    )
    before = stored_state(platform.data_dir)
    response = raw_post(platform, world["owner"], f"/v1/models/{world['model'].id}/predict", sealed.envelope)
    assert (response.status_code, api_error(response)) == (409, "request.expired")
    assert stored_state(platform.data_dir) == before


# -- attestation ------------------------------------------------------------------------------------


def _policy(platform, **changes) -> AppraisalPolicy:
    base = platform.policy
    fields = {
        "allow_simulated": base.allow_simulated,
        "reference_measurements": base.reference_measurements,
        "max_evidence_age_seconds": base.max_evidence_age_seconds,
        "simulated_roots": base.simulated_roots,
    }
    fields.update(changes)
    return AppraisalPolicy(**fields)


def test_wrong_measurement(platform, world) -> None:
    with platform.client(world["owner"], _policy(platform, reference_measurements=("ab" * 48,))) as client:
        expect("attestation.measurement_mismatch", client.attest, platform.data_dir)


def test_simulated_evidence_under_strict_policy(platform, world) -> None:
    with platform.client(world["owner"], _policy(platform, allow_simulated=False)) as client:
        expect("attestation.simulated_not_allowed", client.attest, platform.data_dir)


def test_unpinned_simulated_root(platform, world) -> None:
    with platform.client(world["owner"], _policy(platform, simulated_roots=("cd" * 32,))) as client:
        expect("attestation.untrusted_root", client.attest, platform.data_dir)


def test_stale_nonce(platform) -> None:
    with platform.client(None) as client:
        bundle = client.fetch_evidence(os.urandom(32))
    with pytest.raises(SealedMLError) as info:
        verify_evidence(bundle, nonce=os.urandom(32), policy=platform.policy, now=datetime.now(UTC))
    assert info.value.code == "attestation.nonce_mismatch"


def test_expired_evidence(platform) -> None:
    nonce = os.urandom(32)
    with platform.client(None) as client:
        bundle = client.fetch_evidence(nonce)
    later = datetime.now(UTC) + timedelta(seconds=platform.policy.max_evidence_age_seconds + 5)
    with pytest.raises(SealedMLError) as info:
        verify_evidence(bundle, nonce=nonce, policy=platform.policy, now=later)
    assert info.value.code == "attestation.expired"


def test_bad_nonce_parameter(platform) -> None:
    response = httpx.get(platform.url + "/v1/attestation", params={"nonce": "zz"})
    assert response.status_code in (400, 422) and api_error(response) == "input.malformed"


# -- inputs -----------------------------------------------------------------------------------------


def test_csv_columns_do_not_match(platform, world, cancer, tmp_path: Path) -> None:
    frame = cancer.test.drop(columns=[cancer.features[3]])
    path = tmp_path / "patients.csv"
    frame.to_csv(path, index=False)
    with platform.client(world["owner"]) as client:
        expect(
            "input.schema_mismatch",
            lambda: list(client.predict_file(world["model"].id, path)),
            platform.data_dir,
        )


def test_enclave_checks_columns_itself(platform, world, cancer) -> None:
    """A client that bypasses the SDK's check still meets the enclave's."""
    shuffled = list(reversed(cancer.features))
    sealed = sealed_predict(platform, world["model"].id, shuffled, cancer.test[shuffled].to_numpy()[:3])
    before = stored_state(platform.data_dir)
    response = raw_post(platform, world["owner"], f"/v1/models/{world['model'].id}/predict", sealed.envelope)
    assert (response.status_code, api_error(response)) == (422, "input.schema_mismatch")
    assert stored_state(platform.data_dir) == before


def test_oversized_upload_and_request(new_platform, tmp_path: Path, cancer) -> None:
    for small in new_platform(tmp_path / "small", max_model_bytes=512, max_request_bytes=4096):
        provider = small.account("big-provider", "provider")
        owner = small.account("big-owner", "data_owner")
        with small.client(provider) as prov:
            expect("input.too_large", lambda: prov.publish_model("too-big", cancer.prepared), small.data_dir)
        sealed = sealed_predict(small, "any", cancer.features, np.zeros((100, 30)))
        before = stored_state(small.data_dir)
        response = raw_post(small, owner, "/v1/models/any/predict", sealed.envelope)
        assert (response.status_code, api_error(response)) == (413, "input.too_large")
        assert stored_state(small.data_dir) == before


# -- accounts and tenants ---------------------------------------------------------------------------


def test_missing_and_wrong_token(platform, world) -> None:
    with platform.client(None) as client:
        expect("auth.missing_token", client.list_models, platform.data_dir)
    with platform.client("sml_not-a-real-token") as client:
        expect("auth.invalid_token", client.list_models, platform.data_dir)


def test_roles_are_enforced(platform, world, cancer) -> None:
    with platform.client(world["owner"]) as owner:
        expect(
            "auth.forbidden", lambda: owner.publish_model("owner-model", cancer.prepared), platform.data_dir
        )
    sealed = sealed_predict(
        platform, world["model"].id, cancer.features, cancer.test[cancer.features].to_numpy()[:2]
    )
    response = raw_post(
        platform, world["provider"], f"/v1/models/{world['model'].id}/predict", sealed.envelope
    )
    assert (response.status_code, api_error(response)) == (403, "auth.forbidden")


def test_provider_cannot_touch_another_providers_model(platform, world, cancer, unique) -> None:
    intruder = platform.account(unique("intruder"), "provider")
    model_id = world["model"].id
    blob = encrypt_bytes(new_data_key(), cancer.prepared.onnx_bytes, content_type="model/onnx")
    with platform.client(intruder) as client:
        expect(
            "auth.forbidden",
            lambda: client._request("PUT", f"/v1/models/{model_id}/blob", content=blob),
            platform.data_dir,
        )
        expect(
            "auth.forbidden", lambda: client._request("DELETE", f"/v1/models/{model_id}"), platform.data_dir
        )
        expect(
            "auth.forbidden",
            lambda: client.provision_model(
                model_id,
                new_data_key(),
                blob_sha256="0" * 64,
                model_sha256="0" * 64,
                input_columns=cancer.features,
            ),
            platform.data_dir,
        )


def test_data_owner_cannot_read_another_owners_results(platform, world, unique) -> None:
    other = platform.account(unique("other-hospital"), "data_owner")
    with platform.client(other) as client:
        expect("not_found.job", lambda: client.get_job(world["job"]), platform.data_dir)
        expect(
            "not_found.job", lambda: client._json("GET", f"/v1/jobs/{world['job']}/result"), platform.data_dir
        )
        assert client.list_jobs() == []
    with platform.client(world["owner"]) as owner:
        assert owner.get_job(world["job"])["id"] == world["job"]


def test_blob_other_than_the_provisioned_one_is_refused(platform, cancer, unique) -> None:
    """The provider seals the blob's digest with its key; another blob is refused by the enclave."""
    provider = platform.account(unique("provider"), "provider")
    key = new_data_key()
    blob = encrypt_bytes(key, cancer.prepared.onnx_bytes, content_type="model/onnx")
    with platform.client(provider) as prov:
        model = prov._json(
            "POST", "/v1/models", json={"name": unique("swap"), "input_columns": cancer.features}
        )
        prov._request("PUT", f"/v1/models/{model['id']}/blob", content=blob)
        expect(
            "model.key_mismatch",
            lambda: prov.provision_model(
                model["id"],
                key,
                blob_sha256=hashlib.sha256(b"another blob").hexdigest(),
                model_sha256=hashlib.sha256(cancer.prepared.onnx_bytes).hexdigest(),
                input_columns=cancer.features,
            ),
            platform.data_dir,
        )


def test_receipt_for_other_bytes_is_refused(platform, world, cancer) -> None:
    from sealedml.client._receipts import check_job

    with platform.client(world["owner"]) as client:
        prediction = client.predict(world["model"].id, cancer.test.iloc[:3])
    receipt = prediction.receipt.receipt
    with pytest.raises(SealedMLError) as info:
        check_job(receipt, request=b"other request", response=b"other response")
    assert info.value.code == "receipt.mismatch"
    forged = dict(receipt, measurement="00" * 48)
    with pytest.raises(SealedMLError) as info:
        prediction.receipt.__class__(
            forged, prediction.receipt.signature, prediction.receipt.evidence
        ).verify(platform.policy)
    assert info.value.code == "crypto.signature_invalid"
