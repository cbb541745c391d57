"""Encrypted-ML mode through the real HTTP server: publish, predict, billing, and every refusal.

Each refusal asserts its stable code AND that nothing stored changed: balances, the caller's jobs,
its uploaded contexts and the blob folder.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from sealedml.client import SealedMLClient
from sealedml.errors import SealedMLError
from sealedml.he.keys import HEKeys
from sealedml.he.wire import decode_message, encode_message

PRICE = 3


@pytest.fixture(scope="module")
def linear_keys() -> HEKeys:
    return HEKeys.generate("linear")


@pytest.fixture(scope="module")
def other_keys() -> HEKeys:
    return HEKeys.generate("linear")


@pytest.fixture(scope="module")
def estimator(cancer):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
        cancer.train[cancer.features], cancer.train["target"]
    )


class Parties:
    def __init__(self, platform, unique, estimator, cancer, *, price: int = PRICE, budget: int | None = None):
        self.platform = platform
        self.provider = platform.account(unique("he-provider"), "provider")
        self.owner = platform.account(unique("he-owner"), "data_owner")
        self.name = unique("he-logistic")
        with SealedMLClient(platform.url, platform.admin_token) as admin:
            self.owner_id = _me(platform, self.owner)["id"]
            admin.market.grant(self.owner_id, 100_000)
        with SealedMLClient(platform.url, self.provider) as client:
            self.model = client.he.publish(
                self.name,
                estimator,
                input_columns=cancer.features,
                price_per_row=price,
                query_budget=budget,
            )

    def client(self, token: str | None = None) -> SealedMLClient:
        return SealedMLClient(self.platform.url, token or self.owner)

    def snapshot(self) -> dict:
        with self.client() as owner:
            jobs = [(job["id"], job["status"]) for job in owner.list_jobs()]
            contexts = sorted(c["context"] for c in owner.he.contexts())
        blobs = sorted(
            str(path.relative_to(self.platform.data_dir))
            for path in (self.platform.data_dir / "blobs").rglob("*")
            if path.is_file()
        )
        return {
            "owner": _me(self.platform, self.owner)["balance"],
            "provider": _me(self.platform, self.provider)["balance"],
            "jobs": jobs,
            "contexts": contexts,
            "blobs": blobs,
        }


def _me(platform, token: str) -> dict:
    with SealedMLClient(platform.url, token) as client:
        return client.me()


@pytest.fixture
def parties(platform, unique, estimator, cancer) -> Parties:
    return Parties(platform, unique, estimator, cancer)


def _post_batch(parties: Parties, message: bytes, context: str, token: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{parties.platform.url}/v1/models/{parties.model.id}/he/predict",
        params={"context": context},
        content=message,
        headers={
            "Authorization": f"Bearer {token or parties.owner}",
            "Content-Type": "application/octet-stream",
        },
        timeout=120,
    )


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


def test_publish_predict_agrees_and_bills_rows_times_price(parties, linear_keys, cancer, estimator) -> None:
    with parties.client(parties.provider) as provider:
        info = provider._json("GET", f"/v1/models/{parties.model.id}/he")
    assert info["model"]["mode"] == "he" and info["model"]["preset"] == "linear"
    assert info["model"]["status"] == "ready" and info["output"] == "sigmoid" and info["outputs"] == 1
    assert "layers" not in info and "weights" not in str(info)  # the weights are never served
    before = parties.snapshot()
    with parties.client() as owner:
        result = owner.he.predict_detailed(parties.name, cancer.test, keys=linear_keys)
    rows = len(cancer.test)
    clear = estimator.predict(cancer.test[cancer.features])
    agreement = float(np.mean(result.labels.astype(int) == clear))
    assert agreement >= 0.995, agreement
    proba = estimator.predict_proba(cancer.test[cancer.features])
    assert np.max(np.abs(result.probabilities - proba)) < 1e-3
    after = parties.snapshot()
    assert after["owner"] == before["owner"] - rows * PRICE
    assert after["provider"] == before["provider"] + rows * PRICE
    (batch,) = result.batches
    with parties.client() as owner:
        job = owner.get_job(batch.job_id)
    assert (job["kind"], job["rows"], job["status"]) == ("he-predict", rows, "done")
    assert job["receipt"]["context"] == linear_keys.fingerprint and job["receipt"]["mode"] == "he"
    with parties.client() as owner:
        stored = owner._json("GET", f"/v1/jobs/{batch.job_id}/result")
    import base64
    import hashlib

    scores = base64.b64decode(stored["response"])
    assert hashlib.sha256(scores).hexdigest() == job["receipt"]["response_sha256"]
    assert np.allclose(linear_keys.decrypt_scores(scores), result.scores)


def test_poly_mlp_in_he_mode_agrees_with_the_clear_model(platform, unique, cancer) -> None:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sealedml.he.models import PolyMLPClassifier

    mlp = make_pipeline(StandardScaler(), PolyMLPClassifier(random_state=0)).fit(
        cancer.train[cancer.features], cancer.train["target"]
    )
    parties = Parties(platform, unique, mlp, cancer, price=0)
    keys = HEKeys.generate("mlp")
    with parties.client() as owner:
        assert owner.he.model(parties.name).preset == "mlp"
        frame = owner.he.predict(parties.name, cancer.test, keys=keys)
    clear = mlp.predict(cancer.test[cancer.features])
    assert float(np.mean(frame["prediction"].astype(int).to_numpy() == clear)) >= 0.995


def test_the_context_is_uploaded_once_and_reused(parties, linear_keys, cancer) -> None:
    rows = cancer.test.head(5)
    with parties.client() as first:
        first.he.predict(parties.name, rows, keys=linear_keys)
    blobs = parties.snapshot()["blobs"]
    contexts = [b for b in blobs if "he-context-" in b]
    with parties.client() as second:  # a new process-like client asks before sending megabytes
        second.he.predict(parties.name, rows, keys=linear_keys)
        listed = second.he.contexts()
    after = parties.snapshot()["blobs"]
    assert [b for b in after if "he-context-" in b] == contexts
    assert [c["context"] for c in listed] == [linear_keys.fingerprint]
    again = httpx.put(
        f"{parties.platform.url}/v1/he/context",
        content=linear_keys.public_context(),
        headers={"Authorization": f"Bearer {parties.owner}", "Content-Type": "application/octet-stream"},
    )
    assert again.status_code == 200 and again.json()["context"] == linear_keys.fingerprint
    assert [b for b in parties.snapshot()["blobs"] if "he-context-" in b] == contexts


def test_another_accounts_context_is_unknown(parties, platform, unique, linear_keys, cancer) -> None:
    with parties.client() as owner:
        owner.he.upload_context(linear_keys)
    stranger = platform.account(unique("he-stranger"), "data_owner")
    message = linear_keys.encrypt_batch(cancer.test[cancer.features].to_numpy()[:4], cancer.features)
    before = parties.snapshot()
    _refused(_post_batch(parties, message, linear_keys.fingerprint, stranger), 404, "he.context_unknown")
    lookup = httpx.get(
        f"{platform.url}/v1/he/contexts/{linear_keys.fingerprint}",
        headers={"Authorization": f"Bearer {stranger}"},
    )
    _refused(lookup, 404, "he.context_unknown")
    assert _me(platform, stranger)["balance"] == 0
    assert parties.snapshot() == before


def test_a_context_with_its_secret_key_is_refused_and_not_stored(parties) -> None:
    keys = HEKeys.generate("linear")
    secret = keys.tenseal.serialize(save_secret_key=True)
    before = parties.snapshot()
    response = httpx.put(
        f"{parties.platform.url}/v1/he/context",
        content=secret,
        headers={"Authorization": f"Bearer {parties.owner}", "Content-Type": "application/octet-stream"},
    )
    _refused(response, 400, "he.context_has_secret_key")
    assert parties.snapshot() == before
    garbage = httpx.put(
        f"{parties.platform.url}/v1/he/context",
        content=b"not a context" * 10,
        headers={"Authorization": f"Bearer {parties.owner}", "Content-Type": "application/octet-stream"},
    )
    _refused(garbage, 400, "he.context_invalid")
    assert parties.snapshot() == before


def test_bad_batches_are_refused_and_change_nothing(parties, linear_keys, other_keys, cancer) -> None:
    features = cancer.test[cancer.features].to_numpy()[:10]
    with parties.client() as owner:
        owner.he.upload_context(linear_keys)
        owner.he.upload_context(other_keys)
    good = linear_keys.encrypt_batch(features, cancer.features, model=parties.model.id)
    decoded = decode_message(good, max_bytes=2**30)
    before = parties.snapshot()

    # Wrong key context: the batch names the context it was made under, the request another one.
    _refused(_post_batch(parties, good, other_keys.fingerprint), 400, "he.context_mismatch")

    # Ciphertexts of another parameter set, relabelled as made under the named context.
    mlp_keys = HEKeys.generate("mlp")
    foreign = decode_message(mlp_keys.encrypt_batch(features, cancer.features), max_bytes=2**30)
    header = {k: v for k, v in foreign.header.items() if k not in ("kind", "count", "sha256")}
    header["context"] = linear_keys.fingerprint
    relabelled = encode_message("he-batch", header, foreign.ciphertexts)
    _refused(_post_batch(parties, relabelled, linear_keys.fingerprint), 400, "he.ciphertext_invalid")

    # Mismatched vector sizes: 12 values per vector, 10 rows declared.
    longer = decode_message(
        linear_keys.encrypt_batch(np.vstack([features, features[:2]]), cancer.features), max_bytes=2**30
    )
    header = {k: v for k, v in longer.header.items() if k not in ("kind", "count", "sha256")}
    header["rows"] = 10
    _refused(
        _post_batch(parties, encode_message("he-batch", header, longer.ciphertexts), linear_keys.fingerprint),
        422,
        "he.shape_mismatch",
    )

    # One ciphertext too few for the model's columns.
    header = {k: v for k, v in decoded.header.items() if k not in ("kind", "count", "sha256")}
    short = encode_message("he-batch", header, decoded.ciphertexts[:-1])
    _refused(_post_batch(parties, short, linear_keys.fingerprint), 422, "he.shape_mismatch")

    # Tampered ciphertext: one byte flipped in transit.
    tampered = bytearray(good)
    tampered[-100] ^= 0x01
    _refused(_post_batch(parties, bytes(tampered), linear_keys.fingerprint), 400, "he.ciphertext_invalid")

    # Columns of another schema.
    renamed = linear_keys.encrypt_batch(features, [f"c{i}" for i in range(len(cancer.features))])
    _refused(_post_batch(parties, renamed, linear_keys.fingerprint), 422, "input.schema_mismatch")

    # Not an HE message at all.
    _refused(_post_batch(parties, b"\x00" * 64, linear_keys.fingerprint), 400, "he.wire_malformed")

    assert parties.snapshot() == before


def test_an_oversized_payload_is_refused_before_it_is_read(parties, linear_keys) -> None:
    with parties.client() as owner:
        owner.he.upload_context(linear_keys)
    before = parties.snapshot()
    limit = 64 * 2**20  # the platform's max_request_bytes
    _refused(_post_batch(parties, b"\x00" * (limit + 1), linear_keys.fingerprint), 413, "input.too_large")
    assert parties.snapshot() == before


def test_modes_do_not_mix(parties, platform, unique, cancer, linear_keys) -> None:
    # An HE model on the TEE route.
    with SealedMLClient(platform.url, parties.owner, policy=platform.policy) as owner:
        with pytest.raises(SealedMLError) as refused:
            owner.predict(parties.name, cancer.test.head(3))
    assert refused.value.code == "request.invalid"
    # A TEE model on the HE routes.
    provider = platform.account(unique("tee-provider"), "provider")
    with SealedMLClient(platform.url, provider, policy=platform.policy) as client:
        tee = client.publish_model(unique("tee-model"), cancer.prepared).model
    with parties.client() as owner:
        owner.he.upload_context(linear_keys)
    before = parties.snapshot()
    message = linear_keys.encrypt_batch(cancer.test[cancer.features].to_numpy()[:3], cancer.features)
    response = httpx.post(
        f"{platform.url}/v1/models/{tee.id}/he/predict",
        params={"context": linear_keys.fingerprint},
        content=message,
        headers={"Authorization": f"Bearer {parties.owner}"},
    )
    _refused(response, 400, "request.invalid")
    # An HE model takes no enclave blob.
    blob = httpx.put(
        f"{platform.url}/v1/models/{parties.model.id}/blob",
        content=b"SML" + b"\x00" * 64,
        headers={"Authorization": f"Bearer {parties.provider}"},
    )
    assert blob.status_code >= 400
    assert parties.snapshot() == before


def test_no_credit_no_evaluation(platform, unique, estimator, cancer, linear_keys) -> None:
    parties = Parties(platform, unique, estimator, cancer)
    poor = platform.account(unique("he-poor"), "data_owner")
    with parties.client(poor) as client:
        client.he.upload_context(linear_keys)
        with pytest.raises(SealedMLError) as refused:
            client.he.predict(parties.name, cancer.test.head(5), keys=linear_keys)
        assert client.list_jobs() == []
    assert refused.value.code == "billing.insufficient_credit"
    assert _me(platform, poor)["balance"] == 0


def test_the_query_budget_is_enforced(platform, unique, estimator, cancer, linear_keys) -> None:
    parties = Parties(platform, unique, estimator, cancer, budget=150)
    with parties.client() as owner:
        owner.he.predict(parties.name, cancer.test.head(100), keys=linear_keys)
        before = parties.snapshot()
        with pytest.raises(SealedMLError) as refused:
            owner.he.predict(parties.name, cancer.test.head(60), keys=linear_keys)
    assert refused.value.code == "model.budget_exhausted"
    assert parties.snapshot() == before


# -- the rows layout (small batches: whole rows per ciphertext, Galois keys) ------------------------


@pytest.fixture(scope="module")
def galois_keys() -> HEKeys:
    return HEKeys.generate("linear", galois=True)


def _header(message: bytes) -> tuple[dict, tuple[bytes, ...]]:
    decoded = decode_message(message, max_bytes=2**30)
    header = {k: v for k, v in decoded.header.items() if k not in ("kind", "count", "sha256")}
    return header, decoded.ciphertexts


def test_one_patient_goes_in_the_rows_layout_and_a_keyring_uploads_one_galois_context(
    parties, cancer, estimator, tmp_path
) -> None:
    from sealedml.he.keys import HEKeyring

    ring = HEKeyring(tmp_path / "he")
    before = parties.snapshot()
    with parties.client() as owner:
        one = owner.he.predict_detailed(parties.name, cancer.test.head(1), keys=ring)
        many = owner.he.predict_detailed(parties.name, cancer.test, keys=ring)
        columns = owner.he.predict_detailed(parties.name, cancer.test.head(1), keys=ring, layout="columns")
        listed = owner.he.contexts()
    assert [b.layout for b in (*one.batches, *many.batches, *columns.batches)] == ["rows", "rows", "columns"]
    assert ring.path("linear", galois=True) in ring.created and ring.path("linear") in ring.created
    galois, _ = ring.get("linear", galois=True)
    assert galois.has_galois_keys and len(galois.public_context()) > 16 * 2**20
    # each key set's context is stored once, however many predictions used it
    plain, _ = ring.get("linear")
    assert sorted(c["context"] for c in listed) == sorted({galois.fingerprint, plain.fingerprint})
    assert one.request_bytes * 10 < columns.request_bytes  # 1 ciphertext instead of 30
    assert many.request_bytes < 1.1 * one.request_bytes  # 114 rows still fit one ciphertext
    clear = estimator.predict(cancer.test[cancer.features])
    assert float(np.mean(many.labels.astype(int) == clear)) >= 0.995
    assert one.labels.astype(int)[0] == clear[0] == columns.labels.astype(int)[0]
    rows = 1 + len(cancer.test) + 1
    after = parties.snapshot()
    assert after["owner"] == before["owner"] - rows * PRICE
    with parties.client() as owner:
        job = owner.get_job(one.batches[0].job_id)
    assert (job["rows"], job["receipt"]["context"]) == (1, galois.fingerprint)


def test_rows_batches_are_refused_without_galois_keys_or_with_a_bad_shape(
    parties, linear_keys, galois_keys, cancer
) -> None:
    features = cancer.test[cancer.features].to_numpy()[:3]
    with parties.client() as owner:
        owner.he.upload_context(linear_keys)
        owner.he.upload_context(galois_keys)
        with pytest.raises(SealedMLError) as refused:  # the SDK refuses before sending anything
            owner.he.predict(parties.name, cancer.test.head(1), keys=linear_keys, layout="rows")
        assert refused.value.code == "he.context_invalid"
    good = galois_keys.encrypt_batch(features, cancer.features, model=parties.model.id, layout="rows")
    header, cts = _header(good)
    before = parties.snapshot()

    # A rows batch named under a context without Galois keys.
    relabelled = encode_message("he-batch", {**header, "context": linear_keys.fingerprint}, cts)
    response = _post_batch(parties, relabelled, linear_keys.fingerprint)
    _refused(response, 400, "he.context_invalid")
    assert "Galois keys" in response.json()["error"]["message"]

    # Ciphertext count other than the rows need (one per 128 rows here).
    doubled = encode_message("he-batch", {**header, "groups": 2}, [*cts, *cts])
    _refused(_post_batch(parties, doubled, galois_keys.fingerprint), 422, "he.shape_mismatch")
    # 300 rows declared but one ciphertext (128 rows) sent.
    short = encode_message("he-batch", {**header, "rows": 300}, cts)
    _refused(_post_batch(parties, short, galois_keys.fingerprint), 422, "he.shape_mismatch")
    # One row declared, a vector holding two rows (twice one row's slots) sent.
    two = galois_keys.encrypt_batch(features[:2], cancer.features, layout="rows")
    _, two_cts = _header(two)
    longer = encode_message("he-batch", {**header, "rows": 1}, two_cts)
    _refused(_post_batch(parties, longer, galois_keys.fingerprint), 422, "he.shape_mismatch")
    # TenSEAL's tutorial layout (a vector of exactly the 30 features) is not ours: refused, not misread.
    tutorial = encode_message("he-batch", {**header, "rows": 1}, [galois_keys.encrypt_vector(features[0])])
    _refused(_post_batch(parties, tutorial, galois_keys.fingerprint), 422, "he.shape_mismatch")

    assert parties.snapshot() == before
    ok = _post_batch(parties, good, galois_keys.fingerprint)
    assert ok.status_code == 200 and ok.headers["X-SealedML-Rows"] == "3"
    scores = galois_keys.decrypt_scores(ok.content)
    assert scores.shape == (3, 1)
