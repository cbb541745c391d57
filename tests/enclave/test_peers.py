"""Enclave-to-enclave mutual attestation and cluster-identity transfer, on in-process enclaves.

Each enclave runs on a real simulated platform. Two platform directories with their own roots are
two vendors; :func:`simulated_machine` makes separate machines (own platform key and sealing
secret) under one shared simulated root, as the Ray workers are.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import pytest

from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.attestation.measurement import compute_measurement
from sealedml.crypto.request import seal_request
from sealedml.crypto.sealing import unseal
from sealedml.crypto.stream import encrypt_bytes, new_data_key
from sealedml.distributed.worker import simulated_machine
from sealedml.enclave import payload, peers
from sealedml.enclave.platforms import SimulatedTEE
from sealedml.enclave.runtime import Enclave
from sealedml.errors import SealedMLError

MEASUREMENT = compute_measurement()


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    import time

    c = Clock()
    c.now = time.time()
    return c


def make(
    directory: Path, clock: Clock, *, measurement: str = MEASUREMENT, root: Path | None = None
) -> Enclave:
    if root is not None:
        simulated_machine(root, directory)
    return Enclave(platform=SimulatedTEE.open(directory), measurement=measurement, clock=clock)


@pytest.fixture
def machines(tmp_path: Path, clock: Clock) -> tuple[Enclave, Enclave, Enclave]:
    """Three machines under one simulated root: A (the root's own platform), B and C."""
    root = tmp_path / "root"
    a = make(root, clock)
    b = make(tmp_path / "b", clock, root=root)
    c = make(tmp_path / "c", clock, root=root)
    return a, b, c


def call(enclave: Enclave, op: str, header: dict | None = None, parts: list[bytes] | None = None):
    reply = enclave.handle(op, header or {}, parts or [])
    return reply.header, list(reply.parts)


def code_of(fn, *args, **kwargs) -> str:
    with pytest.raises(SealedMLError) as info:
        fn(*args, **kwargs)
    return info.value.code


def join(member: Enclave, joiner: Enclave) -> tuple[dict, list[bytes]]:
    """The four steps, relayed like the host does."""
    challenge, _ = call(member, "peer_challenge")
    request, (evidence,) = call(joiner, "peer_request", {"nonce": challenge["nonce"]})
    export, (transfer, member_evidence) = call(member, "peer_export", {"nonce": request["nonce"]}, [evidence])
    return call(joiner, "peer_import", {"signature": export["signature"]}, [transfer, member_evidence])


@functools.cache
def _prepared():
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sealedml.client import from_estimator

    data = load_breast_cancer(as_frame=True).frame
    features = [c for c in data.columns if c != "target"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return from_estimator(model.fit(data[features], data["target"]))


def provision_model(enclave: Enclave, model_id: str) -> bytes:
    """Provision a real ONNX model (logistic regression) through a sealed request; return its blob."""
    prepared = _prepared()
    key = new_data_key()
    blob = encrypt_bytes(key, prepared.onnx_bytes, content_type="model/onnx")
    config = json.dumps(
        {
            "model_key": key.hex(),
            "model_blob_sha256": hashlib.sha256(blob).hexdigest(),
            "input_columns": list(prepared.input_columns),
            "output_policy": {"mode": "probabilities", "decimals": 2},
            "query_budget": None,
        }
    ).encode()
    info = enclave.info()
    sealed = seal_request(
        enclave_public_key=bytes.fromhex(info["hpke_public_key"]),
        op="provision",
        model=model_id,
        payload=config,
    )
    call(enclave, "provision", {"model": model_id, "client": "provider"}, [sealed.envelope, blob])
    return blob


def predict(enclave_key: bytes, enclave: Enclave, model_id: str, rows: int = 3) -> dict:
    import numpy as np

    from sealedml.crypto.request import open_response

    features = np.random.default_rng(1).normal(size=(rows, 30)).astype(np.float32)
    loaded = enclave._models[model_id]
    columns = list(loaded.config.input_columns)
    body = payload.pack({"columns": columns}, {"features": features})
    sealed = seal_request(
        enclave_public_key=enclave_key, op="predict", model=model_id, payload=body, rows=rows
    )
    head, (response,) = call(
        enclave, "predict", {"model": model_id, "client": "owner", "job": "j1"}, [sealed.envelope]
    )
    _meta, arrays = payload.unpack(
        open_response(response, response_key=sealed.response_key, request_id=sealed.header.request_id)
    )
    assert arrays["label"].shape[0] == rows
    return head


# -- the happy path --------------------------------------------------------------------------------


def test_a_joiner_takes_over_the_cluster_identity_and_models(machines, tmp_path):
    a, b, _ = machines
    blob = provision_model(a, "m1")
    before_b = b.info()
    header, sealed_configs = join(a, b)
    cluster = a.info()
    assert header["hpke_public_key"] == cluster["hpke_public_key"] != before_b["hpke_public_key"]
    assert b.info()["signing_public_key"] == cluster["signing_public_key"]
    assert b.info()["joined"] and a.info()["joined"]
    assert header["models"] == ["m1"] and len(sealed_configs) == 1
    # The config comes back sealed to B's own machine: A's sealing secret cannot open it.
    b_secret = SimulatedTEE.open(tmp_path / "b").sealing_secret
    a_secret = SimulatedTEE.open(tmp_path / "root").sealing_secret
    assert b_secret != a_secret
    unseal(platform_secret=b_secret, measurement=MEASUREMENT, label="model:m1", blob=sealed_configs[0])
    with pytest.raises(SealedMLError):
        unseal(platform_secret=a_secret, measurement=MEASUREMENT, label="model:m1", blob=sealed_configs[0])
    call(b, "load", {"model": "m1"}, [sealed_configs[0], blob])
    # A request sealed to the cluster key runs on B, and B's receipt is signed by the cluster key.
    head = predict(bytes.fromhex(cluster["hpke_public_key"]), b, "m1")
    assert head["receipt"]["enclave_key"] == cluster["signing_public_key"]
    # B's evidence now binds the cluster keys.
    nonce = os.urandom(32)
    _, (raw,) = call(b, "evidence", {"nonce": nonce.hex()})
    bundle = EvidenceBundle.from_json(raw)
    assert bundle.hpke_public_key.hex() == cluster["hpke_public_key"]


def test_a_member_can_send_new_models_to_a_joined_peer_but_a_foreign_cluster_is_refused(machines):
    a, b, c = machines
    join(a, b)
    provision_model(a, "m2")
    header, parts = join(a, b)  # same cluster identity: accepted, carries the new model
    assert header["models"] == ["m2"] and len(parts) == 1
    # C never exported nor imported: a fresh enclave may still join A's cluster.
    join(a, c)
    assert c.info()["hpke_public_key"] == a.info()["hpke_public_key"]


def test_an_enclave_bound_to_one_cluster_refuses_another(tmp_path, clock):
    root = tmp_path / "root"
    a = make(root, clock)
    b = make(tmp_path / "b", clock, root=root)
    c = make(tmp_path / "c", clock, root=root)
    join(a, b)  # A and B: cluster 1
    with pytest.raises(SealedMLError) as info:
        join(c, b)  # C's own identity is another cluster
    assert info.value.code == "cluster.peer_rejected"
    assert b.info()["hpke_public_key"] == a.info()["hpke_public_key"]


# -- rejections ------------------------------------------------------------------------------------


def test_wrong_measurement_is_rejected_both_ways(tmp_path, clock):
    root = tmp_path / "root"
    a = make(root, clock)
    other = make(tmp_path / "b", clock, root=root, measurement="ab" * 48)
    challenge, _ = call(a, "peer_challenge")
    _, (evidence,) = call(other, "peer_request", {"nonce": challenge["nonce"]})
    assert code_of(call, a, "peer_export", {"nonce": "00" * 32}, [evidence]) == "cluster.peer_rejected"
    # And the other way round: the odd build refuses A's transfer as well.
    challenge, _ = call(other, "peer_challenge")
    request, (evidence,) = call(a, "peer_request", {"nonce": challenge["nonce"]})
    assert (
        code_of(call, other, "peer_export", {"nonce": request["nonce"]}, [evidence])
        == "cluster.peer_rejected"
    )


def test_a_machine_under_another_simulated_root_cannot_peer(tmp_path, clock):
    a = make(tmp_path / "vendor1", clock)
    b = make(tmp_path / "vendor2", clock)  # its own root: another (simulated) vendor
    challenge, _ = call(a, "peer_challenge")
    request, (evidence,) = call(b, "peer_request", {"nonce": challenge["nonce"]})
    assert code_of(call, a, "peer_export", {"nonce": request["nonce"]}, [evidence]) == "cluster.peer_rejected"
    assert b.info()["joined"] is False and a.info()["joined"] is False


def test_nonces_are_single_use_known_and_fresh(machines, clock):
    a, b, _ = machines
    challenge, _ = call(a, "peer_challenge")
    request, (evidence,) = call(b, "peer_request", {"nonce": challenge["nonce"]})
    export, (transfer, member_evidence) = call(a, "peer_export", {"nonce": request["nonce"]}, [evidence])
    # Replayed: the same evidence a second time.
    assert (
        code_of(call, a, "peer_export", {"nonce": request["nonce"]}, [evidence])
        == "cluster.challenge_unknown"
    )
    # Unknown: evidence answering a nonce A never issued.
    _, (stray,) = call(b, "peer_request", {"nonce": os.urandom(32).hex()})
    assert (
        code_of(call, a, "peer_export", {"nonce": request["nonce"]}, [stray]) == "cluster.challenge_unknown"
    )
    # Expired: a challenge answered after more than 60 s.
    late, _ = call(a, "peer_challenge")
    _, (late_evidence,) = call(b, "peer_request", {"nonce": late["nonce"]})
    clock.now += peers.CHALLENGE_TTL_SECONDS + 1
    assert (
        code_of(call, a, "peer_export", {"nonce": "00" * 32}, [late_evidence]) == "cluster.challenge_unknown"
    )
    # B's nonce has expired too by now: the transfer A made for it is refused.
    header = {"signature": export["signature"]}
    assert code_of(call, b, "peer_import", header, [transfer, member_evidence]) == "cluster.challenge_unknown"


def test_an_import_is_accepted_once(machines):
    a, b, _ = machines
    challenge, _ = call(a, "peer_challenge")
    request, (evidence,) = call(b, "peer_request", {"nonce": challenge["nonce"]})
    export, (transfer, member_evidence) = call(a, "peer_export", {"nonce": request["nonce"]}, [evidence])
    call(b, "peer_import", {"signature": export["signature"]}, [transfer, member_evidence])
    again = code_of(call, b, "peer_import", {"signature": export["signature"]}, [transfer, member_evidence])
    assert again == "cluster.challenge_unknown"


def _exported(a: Enclave, b: Enclave) -> tuple[dict, bytes, bytes, dict]:
    challenge, _ = call(a, "peer_challenge")
    request, (evidence,) = call(b, "peer_request", {"nonce": challenge["nonce"]})
    export, (transfer, member_evidence) = call(a, "peer_export", {"nonce": request["nonce"]}, [evidence])
    return export, transfer, member_evidence, request


def test_a_tampered_transfer_fails_authentication(machines):
    a, b, _ = machines
    export, transfer, member_evidence, _ = _exported(a, b)
    flipped = bytearray(transfer)
    flipped[-5] ^= 1
    header = {"signature": export["signature"]}
    assert code_of(call, b, "peer_import", header, [bytes(flipped), member_evidence]) == "crypto.auth_failed"
    assert b.info()["joined"] is False


def test_a_signature_that_does_not_match_fails_authentication(machines):
    a, b, _ = machines
    export, transfer, member_evidence, _ = _exported(a, b)
    bad = bytearray(bytes.fromhex(export["signature"]))
    bad[0] ^= 1
    header = {"signature": bad.hex()}
    assert code_of(call, b, "peer_import", header, [transfer, member_evidence]) == "crypto.auth_failed"


def test_a_transfer_sealed_for_another_peer_is_useless(machines):
    a, b, c = machines
    export, transfer, member_evidence, _ = _exported(a, c)  # made for C
    # Relayed to B: A's evidence answers C's nonce, which B never issued.
    header = {"signature": export["signature"]}
    assert code_of(call, b, "peer_import", header, [transfer, member_evidence]) == "cluster.challenge_unknown"
    # And the ciphertext itself opens only with C's instance key and C's nonce.
    nonce = EvidenceBundle.from_json(member_evidence).nonce
    with pytest.raises(SealedMLError) as info:
        peers.open_transfer(transfer, instance=b._instance, nonce=nonce)
    assert info.value.code == "crypto.auth_failed"
    assert (
        peers.open_transfer(transfer, instance=c._instance, nonce=nonce).identity.public == a._identity.public
    )


def test_evidence_of_a_replayed_to_b_is_refused(machines):
    a, b, c = machines
    # B pends a nonce; the host replays A's earlier evidence (made for C) with a transfer for B.
    _, _transfer_for_c, evidence_for_c, _ = _exported(a, c)
    export_b, transfer_b, evidence_b, _ = _exported(a, b)
    header = {"signature": export_b["signature"]}
    assert (
        code_of(call, b, "peer_import", header, [transfer_b, evidence_for_c]) == "cluster.challenge_unknown"
    )
    # Evidence whose echoed nonce is B's but whose report binds another nonce: report_data mismatch.
    bundle = EvidenceBundle.from_json(evidence_for_c)
    forged = EvidenceBundle(
        tee=bundle.tee,
        report=bundle.report,
        signature=bundle.signature,
        certificates=bundle.certificates,
        hpke_public_key=bundle.hpke_public_key,
        signing_public_key=bundle.signing_public_key,
        nonce=EvidenceBundle.from_json(evidence_b).nonce,
    )
    code = code_of(call, b, "peer_import", header, [transfer_b, forged.to_json().encode()])
    assert code == "attestation.report_data_mismatch"


def test_an_enclave_own_evidence_of_the_joiner_cannot_stand_in_for_the_member(machines):
    """A host that answers B's nonce with B's own evidence (a reflection) gets nothing: B's
    instance signature over a transfer it did not make does not exist."""
    a, b, _ = machines
    export, transfer, _, request = _exported(a, b)
    pending, _ = call(b, "peer_challenge")
    _, (reflected,) = call(b, "peer_request", {"nonce": request["nonce"]})
    header = {"signature": export["signature"]}
    assert code_of(call, b, "peer_import", header, [transfer, reflected]) == "crypto.auth_failed"
    assert pending["nonce"]
