"""RFC 9162 Merkle algorithms: known-answer vectors, exhaustive small trees, and properties.

The known answers are the Certificate Transparency reference vectors published with
transparency-dev/merkle (testonly/constants.go, testonly/reference_test.go, proof/verify_test.go):
the 8-leaf tree with leaf inputs "", 00, 10, 2021, 3031, 40414243, 5051525354555657,
606162636465666768696a6b6c6d6e6f. They are data, written here as hex literals.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sealedml.errors import LedgerError, SealedMLError
from sealedml.ledger.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    consistency_proof,
    consistency_proof_nodes,
    frontier_nodes,
    inclusion_proof,
    inclusion_proof_nodes,
    leaf_hash,
    node_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

h = bytes.fromhex

LEAVES = [
    h(""),
    h("00"),
    h("10"),
    h("2021"),
    h("3031"),
    h("40414243"),
    h("5051525354555657"),
    h("606162636465666768696a6b6c6d6e6f"),
]

# Root of the first n leaves, n = 0..8 (testonly/constants.go RootHashes).
ROOTS = [
    h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]

# Hashes of every complete subtree of the 8-leaf tree, by level (testonly/constants.go NodeHashes).
NODES = [
    [
        h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
        h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
        h("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
        h("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
        h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        h("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
        h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
        h("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
    ],
    [
        h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
        h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
        h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
    ],
    [
        h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ],
    [h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")],
]

# (leaf index from 0, tree size, expected audit path): reference_test.go and verify_test.go.
INCLUSION_VECTORS = [
    (0, 1, []),
    (0, 2, [h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7")]),
    (1, 2, [h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")]),
    (2, 3, [h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (
        1,
        5,
        [
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        0,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        5,
        8,
        [
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]

# (first size, second size, expected proof): reference_test.go and verify_test.go.
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (
        1,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        2,
        5,
        [
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        6,
        8,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        6,
        7,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]

SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")


def code_of(fn, *args) -> str:
    with pytest.raises(SealedMLError) as info:
        fn(*args)
    return info.value.code


# -- an independent reference: RFC 9162 §2.1 definitions, written directly as recursions -----------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(data: list[bytes]) -> bytes:
    if not data:
        return hashlib.sha256(b"").digest()
    if len(data) == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = _k(len(data))
    return hashlib.sha256(b"\x01" + ref_mth(data[:k]) + ref_mth(data[k:])).digest()


def ref_path(m: int, data: list[bytes]) -> list[bytes]:
    n = len(data)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, data[:k]), ref_mth(data[k:])]
    return [*ref_path(m - k, data[k:]), ref_mth(data[:k])]


def ref_sides(m: int, n: int) -> list[bool]:
    """For PATH(m, D[n]): whether each proof element is hashed in on the right (leaf side first)."""
    if n == 1:
        return []
    k = _k(n)
    return [*ref_sides(m, k), True] if m < k else [*ref_sides(m - k, n - k), False]


def ref_subproof(m: int, data: list[bytes], b: bool) -> list[bytes]:
    n = len(data)
    if m == n:
        return [] if b else [ref_mth(data)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, data[:k], b), ref_mth(data[k:])]
    return [*ref_subproof(m - k, data[k:], False), ref_mth(data[:k])]


def ref_proof(m: int, data: list[bytes]) -> list[bytes]:
    return ref_subproof(m, data, True) if 0 < m < len(data) else []


def leaves(n: int) -> list[bytes]:
    return [b"leaf %d" % i for i in range(n)]


# -- known answers ----------------------------------------------------------------------------------


def test_hashing_known_answers() -> None:
    assert EMPTY_ROOT == ROOTS[0]
    for i, leaf in enumerate(LEAVES):
        assert leaf_hash(leaf) == NODES[0][i]
    for level in range(1, 4):
        for i, value in enumerate(NODES[level]):
            assert node_hash(NODES[level - 1][2 * i], NODES[level - 1][2 * i + 1]) == value


@pytest.mark.parametrize("size", range(9))
def test_root_known_answers(size: int) -> None:
    assert root_hash(LEAVES[:size]) == ROOTS[size]
    assert MemoryTree(LEAVES).root(size) == ROOTS[size]
    assert MemoryTree(LEAVES[:size]).root() == ROOTS[size]


def test_memory_tree_stores_the_reference_node_hashes() -> None:
    tree = MemoryTree(LEAVES)
    ids = [(level, i) for level in range(4) for i in range(8 >> level)]
    assert tree.read_nodes(ids) == {(level, i): NODES[level][i] for level, i in ids}
    assert tree.read_nodes([(4, 0), (0, 8), (1, 4)]) == {}


@pytest.mark.parametrize(("index", "size", "expected"), INCLUSION_VECTORS)
def test_inclusion_known_answers(index: int, size: int, expected: list[bytes]) -> None:
    tree = MemoryTree(LEAVES)
    assert tree.inclusion_proof(index, size) == expected
    verify_inclusion(leaf_hash(LEAVES[index]), index, size, expected, ROOTS[size])


@pytest.mark.parametrize(("first", "second", "expected"), CONSISTENCY_VECTORS)
def test_consistency_known_answers(first: int, second: int, expected: list[bytes]) -> None:
    tree = MemoryTree(LEAVES)
    assert tree.consistency_proof(first, second) == expected
    verify_consistency(first, second, ROOTS[first], ROOTS[second], expected)


def test_all_proofs_of_the_reference_tree_verify() -> None:
    tree = MemoryTree(LEAVES)
    for size in range(1, 9):
        for index in range(size):
            verify_inclusion(NODES[0][index], index, size, tree.inclusion_proof(index, size), ROOTS[size])
        for first in range(size + 1):
            verify_consistency(first, size, ROOTS[first], ROOTS[size], tree.consistency_proof(first, size))


def test_edge_cases_from_the_reference_suite() -> None:
    # transparency-dev/merkle proof/verify_test.go TestVerifyConsistency (roots of 32 bytes here).
    r1, r2 = hashlib.sha256(b"don't care 1").digest(), hashlib.sha256(b"don't care 2").digest()
    bad = [
        (0, 0, r1, r2, []),
        (1, 1, r1, r2, []),
        (1, 0, r1, r2, []),
        (2, 1, r1, r2, []),
        (1, 2, r1, r2, []),
        (0, 0, EMPTY_ROOT, r2, []),
        (1, 1, EMPTY_ROOT, r2, []),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]),
        (0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]),
        (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]),
    ]
    for first, second, a, b, proof in bad:
        assert code_of(verify_consistency, first, second, a, b, proof) == "ledger.consistency_invalid"
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(1, 1, r2, r2, [])
    verify_consistency(0, 1, EMPTY_ROOT, r2, [])  # any tree extends the empty tree
    # Stricter than the reference: a size-0 head must carry the empty-tree root.
    assert code_of(verify_consistency, 0, 1, r1, r2, []) == "ledger.consistency_invalid"
    # TestVerifyInclusion: sizes/indexes that can never verify with an empty proof.
    for index, size in [(0, 0), (1, 0), (2, 1)]:
        assert code_of(verify_inclusion, SOME_HASH, index, size, [], EMPTY_ROOT) == "ledger.inclusion_invalid"
    # TestVerifyInclusionSingleEntry: a one-leaf tree's root is its leaf hash, the proof empty.
    single = leaf_hash(b"data")
    verify_inclusion(single, 0, 1, [], single)
    assert code_of(verify_inclusion, single, 0, 1, [], SOME_HASH) == "ledger.inclusion_invalid"


# -- exhaustive small trees -------------------------------------------------------------------------

MAX_N = 64
ALL_BITS_UP_TO = 16  # every single-bit flip of every element for trees up to this size


def _flips(size: int, value: bytes, position: int) -> list[bytes]:
    """Every single-bit flip of ``value`` for small trees, else 8 flips covering each bit position."""
    bits = range(256) if size <= ALL_BITS_UP_TO else [8 * ((7 * k + position) % 32) + k for k in range(8)]
    out = []
    for bit in bits:
        flipped = bytearray(value)
        flipped[bit // 8] ^= 1 << (bit % 8)
        out.append(bytes(flipped))
    return out


def _mutations(size: int, proof: list[bytes], root: bytes) -> list[tuple[str, list[bytes]]]:
    out: list[tuple[str, list[bytes]]] = []
    for i, value in enumerate(proof):
        out += [(f"flip in [{i}]", [*proof[:i], f, *proof[i + 1 :]]) for f in _flips(size, value, i)]
        out.append((f"drop [{i}]", proof[:i] + proof[i + 1 :]))
    for i in range(len(proof) + 1):
        for extra in (SOME_HASH, root, EMPTY_ROOT, *(proof[i - 1 : i] if i else [])):
            out.append((f"extra at {i}", [*proof[:i], extra, *proof[i:]]))
    for i in range(len(proof) - 1):
        if proof[i] != proof[i + 1]:
            out.append((f"swap {i},{i + 1}", [*proof[:i], proof[i + 1], proof[i], *proof[i + 2 :]]))
    if len(proof) > 2:
        out.append(("reversed", proof[::-1]))
    return out


@pytest.mark.parametrize("size", range(1, MAX_N + 1))
def test_every_inclusion_proof_verifies_and_every_corruption_fails(size: int) -> None:
    data = leaves(size)
    tree = MemoryTree(data)
    root = tree.root()
    assert root == ref_mth(data)
    for index in range(size):
        proof = tree.inclusion_proof(index, size)
        assert proof == ref_path(index, data)
        leaf = leaf_hash(data[index])
        verify_inclusion(leaf, index, size, proof, root)
        for what, bad in _mutations(size, proof, root):
            code = code_of(verify_inclusion, leaf, index, size, bad, root)
            assert code == "ledger.inclusion_invalid", (index, size, what)
        for other in range(size):
            if other != index:
                assert code_of(verify_inclusion, leaf, other, size, proof, root) == "ledger.inclusion_invalid"
        for other_size in {size - 1, size + 1, 2 * size, size // 2} - {size}:
            if index < other_size and ref_sides(index, other_size) == ref_sides(index, size):
                continue  # RFC 9162 paths of the same shape: only the signed tree size tells them apart
            assert (
                code_of(verify_inclusion, leaf, index, other_size, proof, root) == "ledger.inclusion_invalid"
            )
        assert (
            code_of(verify_inclusion, leaf_hash(b"other"), index, size, proof, root)
            == "ledger.inclusion_invalid"
        )
        assert code_of(verify_inclusion, leaf, index, size, proof, SOME_HASH) == "ledger.inclusion_invalid"
        assert code_of(verify_inclusion, data[index].ljust(32, b"\0"), index, size, proof, root) == (
            "ledger.inclusion_invalid"
        )


@pytest.mark.parametrize("second", range(1, MAX_N + 1))
def test_every_consistency_proof_verifies_and_every_corruption_fails(second: int) -> None:
    data = leaves(second)
    tree = MemoryTree(data)
    roots = [tree.root(size) for size in range(second + 1)]
    assert roots[second] == ref_mth(data)
    for first in range(second + 1):
        proof = tree.consistency_proof(first, second)
        assert proof == ref_proof(first, data)
        verify_consistency(first, second, roots[first], roots[second], proof)
        for what, bad in _mutations(second, proof, roots[second]):
            if first in (0, second) and not bad:
                continue  # an empty proof is the right proof for these sizes
            code = code_of(verify_consistency, first, second, roots[first], roots[second], bad)
            assert code == "ledger.consistency_invalid", (first, second, what)
        # The same proof for a neighbouring pair of sizes fails, unless it is that pair's proof too.
        for f, s in {(first - 1, second), (first + 1, second), (first, second + 1), (first, second - 1)}:
            if not 0 <= f <= s or (not proof and f in (0, s)):
                continue  # an empty proof is right for (0, s) and (s, s)
            if s <= second and proof == ref_proof(f, data[:s]):
                continue
            r_f = roots[f] if f <= second else SOME_HASH
            r_s = roots[s] if s <= second else SOME_HASH
            code = code_of(verify_consistency, f, s, r_f, r_s, proof)
            assert code == "ledger.consistency_invalid", (first, second, f, s)
        if 0 < first < second:
            for r1, r2 in [
                (SOME_HASH, roots[second]),
                (roots[first], SOME_HASH),
                (roots[second], roots[first]),
            ]:
                assert (
                    code_of(verify_consistency, first, second, r1, r2, proof) == "ledger.consistency_invalid"
                )
            # A proof for the neighbouring first size does not prove this one.
            if first + 1 < second:
                other = tree.consistency_proof(first + 1, second)
                if other != proof:
                    assert (
                        code_of(verify_consistency, first, second, roots[first], roots[second], other)
                        == "ledger.consistency_invalid"
                    )


def test_proofs_read_logarithmically_many_nodes() -> None:
    for size in (1, 2, 3, 1000, 1 << 20, 10**6, 2**40 + 12345, 2**63 - 1):
        levels = size.bit_length()
        assert len(frontier_nodes(size)) == bin(size).count("1")
        for index in {0, size // 3, size - 1}:
            assert len(inclusion_proof_nodes(index, size)) <= 2 * levels
        for first in {1, size // 2, size - 1}:
            if 0 < first <= size:
                assert len(consistency_proof_nodes(first, size)) <= 3 * levels


def test_node_ids_cover_complete_subtrees_only() -> None:
    for size in range(1, 130):
        ids = frontier_nodes(size)
        covered = sum(1 << level for level, _ in ids)
        assert covered == size
        for index in range(0, size, 7):
            for level, i in inclusion_proof_nodes(index, size):
                assert (i + 1) << level <= size  # complete, so a store has it


# -- malformed input: typed errors only -------------------------------------------------------------


def test_malformed_arguments_raise_typed_errors() -> None:
    good = leaf_hash(b"x")
    for bad_hash in (b"", b"\0" * 31, b"\0" * 33, "00" * 32, None, bytearray(32)):
        assert code_of(verify_inclusion, bad_hash, 0, 1, [], good) == "ledger.malformed"
        assert code_of(verify_inclusion, good, 0, 1, [], bad_hash) == "ledger.malformed"
        assert code_of(verify_inclusion, good, 0, 2, [bad_hash], good) == "ledger.malformed"
        assert code_of(verify_consistency, 1, 2, bad_hash, good, [good]) == "ledger.malformed"
        assert code_of(verify_consistency, 1, 2, good, good, [bad_hash]) == "ledger.malformed"
    for bad_int in (-1, 2**63, 1.0, "1", True, None):
        assert code_of(verify_inclusion, good, bad_int, 2, [good], good) == "ledger.malformed"
        assert code_of(verify_inclusion, good, 0, bad_int, [good], good) == "ledger.malformed"
        assert code_of(verify_consistency, bad_int, 2, good, good, [good]) == "ledger.malformed"
        assert code_of(frontier_nodes, bad_int) == "ledger.malformed"
    for bad_path in (good, "ab", None, 5, [good] * 129):
        assert code_of(verify_inclusion, good, 0, 2, bad_path, good) == "ledger.malformed"
        assert code_of(verify_consistency, 1, 2, good, good, bad_path) == "ledger.malformed"


def test_generation_rejects_out_of_range_requests() -> None:
    tree = MemoryTree(leaves(5))
    assert code_of(tree.inclusion_proof, 5, 5) == "ledger.index_out_of_range"
    assert code_of(tree.inclusion_proof, 0, 0) == "ledger.index_out_of_range"
    assert code_of(tree.inclusion_proof, 0, 6) == "ledger.index_out_of_range"
    assert code_of(tree.consistency_proof, 3, 2) == "ledger.index_out_of_range"
    assert code_of(tree.consistency_proof, 1, 6) == "ledger.index_out_of_range"
    assert code_of(tree.root, 6) == "ledger.index_out_of_range"


def test_a_store_missing_a_node_is_reported() -> None:
    tree = MemoryTree(leaves(8))

    class Holes:
        def read_nodes(self, ids):
            return {k: v for k, v in tree.read_nodes(ids).items() if k != (1, 0)}

    assert code_of(inclusion_proof, 2, 8, Holes()) == "ledger.node_missing"
    assert code_of(consistency_proof, 3, 8, Holes()) == "ledger.node_missing"


def test_errors_rebuild_from_the_wire_as_ledger_errors() -> None:
    from sealedml.errors import error_from_dict

    try:
        verify_inclusion(leaf_hash(b"x"), 0, 1, [], SOME_HASH)
    except LedgerError as exc:
        again = error_from_dict(exc.to_dict())
        assert isinstance(again, LedgerError) and again.code == "ledger.inclusion_invalid"
    else:
        pytest.fail("verify_inclusion accepted a wrong root")


# -- properties -------------------------------------------------------------------------------------

FAST = settings(max_examples=150, deadline=None)
leaf_lists = st.lists(st.binary(max_size=40), min_size=1, max_size=300)


@FAST
@given(leaf_lists, st.data())
def test_inclusion_matches_the_reference_and_verifies(data_leaves: list[bytes], data: st.DataObject) -> None:
    tree = MemoryTree(data_leaves)
    size = data.draw(st.integers(1, len(data_leaves)))
    index = data.draw(st.integers(0, size - 1))
    proof = tree.inclusion_proof(index, size)
    assert proof == ref_path(index, data_leaves[:size])
    assert tree.root(size) == ref_mth(data_leaves[:size]) == root_hash(data_leaves[:size])
    verify_inclusion(leaf_hash(data_leaves[index]), index, size, proof, tree.root(size))


@FAST
@given(leaf_lists, st.data())
def test_consistency_matches_the_reference_and_verifies(
    data_leaves: list[bytes], data: st.DataObject
) -> None:
    tree = MemoryTree(data_leaves)
    second = data.draw(st.integers(0, len(data_leaves)))
    first = data.draw(st.integers(0, second))
    proof = tree.consistency_proof(first, second)
    assert proof == ref_proof(first, data_leaves[:second])
    verify_consistency(first, second, tree.root(first), tree.root(second), proof)


@FAST
@given(leaf_lists, st.data())
def test_a_changed_leaf_breaks_every_proof_that_spans_it(
    data_leaves: list[bytes], data: st.DataObject
) -> None:
    size = len(data_leaves)
    victim = data.draw(st.integers(0, size - 1))
    forged = list(data_leaves)
    forged[victim] = forged[victim] + b"!"
    honest, rewritten = MemoryTree(data_leaves), MemoryTree(forged)
    first = data.draw(st.integers(victim + 1, size))
    # The rewritten log cannot prove that it extends a head issued before the change.
    code = code_of(
        verify_consistency,
        first,
        size,
        honest.root(first),
        rewritten.root(size),
        rewritten.consistency_proof(first, size),
    )
    assert code == "ledger.consistency_invalid"
    # Nor that the entry it now serves is in the head the client already holds.
    code = code_of(
        verify_inclusion,
        leaf_hash(forged[victim]),
        victim,
        first,
        rewritten.inclusion_proof(victim, first),
        honest.root(first),
    )
    assert code == "ledger.inclusion_invalid"


@FAST
@given(
    st.binary(min_size=32, max_size=32),
    st.integers(0, 2**63 - 1),
    st.integers(0, 2**63 - 1),
    st.lists(st.binary(min_size=32, max_size=32), max_size=70),
    st.binary(min_size=32, max_size=32),
)
def test_random_inputs_never_verify_and_never_crash(leaf, index, size, proof, root) -> None:
    assume(leaf != root and leaf != EMPTY_ROOT)  # equal roots or the empty tree are trivially consistent
    with pytest.raises(LedgerError) as info:
        verify_inclusion(leaf, index, size, proof, root)
    assert info.value.code == "ledger.inclusion_invalid"
    with pytest.raises(LedgerError) as info:
        verify_consistency(min(index, size), max(index, size), leaf, root, proof)
    assert info.value.code in ("ledger.consistency_invalid",)
