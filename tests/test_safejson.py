"""Deeply nested JSON never crashes a parser, even when a library raised the recursion limit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealedml import safejson

PROBE = r"""
import sys, json, struct
sys.setrecursionlimit(10**6)   # what eth/web3 packages do on import
deep = b"[" * 300_000 + b"]" * 300_000
from sealedml import safejson
from sealedml.enclave import framing, payload
from sealedml.enclave.models import ModelConfig
from sealedml.crypto.envelope import parse, Kind
from sealedml.attestation.evidence.bundle import EvidenceBundle
from sealedml.training_spec import parse_job_spec_json
from sealedml.errors import SealedMLError
results = {}
def attempt(name, fn):
    try:
        fn()
        results[name] = "accepted"
    except (SealedMLError, ValueError) as exc:
        results[name] = type(exc).__name__
attempt("safejson", lambda: safejson.loads(deep))
attempt("bundle", lambda: EvidenceBundle.from_json(deep))
attempt("model_config", lambda: ModelConfig.from_json(deep))
attempt("payload", lambda: payload.unpack(struct.pack(">I", len(deep)) + deep))
attempt("job_spec", lambda: parse_job_spec_json(deep))
header = deep[:60_000] + deep[-60_000:]
envelope = b"SML" + bytes([1, int(Kind.REQUEST)]) + struct.pack(">I", len(header)) + header
attempt("envelope", lambda: parse(envelope, Kind.REQUEST))
print(json.dumps(results))
"""


def test_deep_nesting_is_a_typed_error_in_every_parser() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"parser process died ({done.returncode}): {done.stderr[-2000:]}"
    results = json.loads(done.stdout)
    assert set(results) == {"safejson", "bundle", "model_config", "payload", "job_spec", "envelope"}
    assert "accepted" not in results.values(), results


@pytest.mark.parametrize(
    ("text", "depth"),
    [('"[[[[["', 0), ('["\\"[[[["]', 1), ('{"a": [{"b": []}]}', 4), ("[]" * 50, 1)],
)
def test_depth_ignores_brackets_inside_strings(text: str, depth: int) -> None:
    safejson.check_depth(text, max_depth=depth)
    if depth:
        with pytest.raises(ValueError):
            safejson.check_depth(text, max_depth=depth - 1)


@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=5), lambda c: st.lists(c, max_size=3), max_leaves=30
    )
)
def test_loads_matches_json_within_the_limit(value: object) -> None:
    text = json.dumps(value)
    assert safejson.loads(text, max_depth=1000) == json.loads(text)
