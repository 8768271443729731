"""Tests for ledger.merkle: CT reference vectors, a naive RFC 9162 model, corrupted proofs."""

import doctest
import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import merkle
from ledger.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

# --- Naive reference model ---------------------------------------------------------------
# Written straight from the recursive definitions in RFC 9162 §2.1 (MTH, PATH,
# PROOF/SUBPROOF) over raw entries, using hashlib directly, so it shares no code
# with ledger.merkle.  Slow on purpose: clarity is the point.


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def ref_k(n: int) -> int:
    """Largest power of two strictly smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(entries: list[bytes]) -> bytes:
    n = len(entries)
    if n == 0:
        return _sha256(b"")
    if n == 1:
        return _sha256(b"\x00" + entries[0])
    k = ref_k(n)
    return _sha256(b"\x01" + ref_mth(entries[:k]) + ref_mth(entries[k:]))


def ref_path(m: int, entries: list[bytes]) -> list[bytes]:
    n = len(entries)
    if n == 1:
        return []
    k = ref_k(n)
    if m < k:
        return ref_path(m, entries[:k]) + [ref_mth(entries[k:])]
    return ref_path(m - k, entries[k:]) + [ref_mth(entries[:k])]


def ref_subproof(m: int, entries: list[bytes], b: bool) -> list[bytes]:
    n = len(entries)
    if m == n:
        return [] if b else [ref_mth(entries)]
    k = ref_k(n)
    if m <= k:
        return ref_subproof(m, entries[:k], b) + [ref_mth(entries[k:])]
    return ref_subproof(m - k, entries[k:], False) + [ref_mth(entries[:k])]


def ref_proof(m: int, entries: list[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) for 0 < m < n; empty for m == 0 and m == n by this module's convention."""
    if m == 0 or m == len(entries):
        return []
    return ref_subproof(m, entries, True)


def ref_sides(m: int, n: int) -> list[str]:
    """Which side each sibling of PATH(m, D[n]) is on, from the leaf up ("L" or "R")."""
    if n == 1:
        return []
    k = ref_k(n)
    if m < k:
        return ref_sides(m, k) + ["R"]
    return ref_sides(m - k, n - k) + ["L"]


def ref_proof_len(m: int, n: int) -> int:
    """len(PROOF(m, D[n])) from the recursion on sizes alone."""
    if m == 0 or m == n:
        return 0

    def sub(m: int, n: int, b: bool) -> int:
        if m == n:
            return 0 if b else 1
        k = ref_k(n)
        return 1 + (sub(m, k, b) if m <= k else sub(m - k, n - k, False))

    return sub(m, n, True)


# --- Reference vectors -------------------------------------------------------------------
# From transparency-dev/merkle proof/verify_test.go (the Certificate Transparency
# reference data); indices below are 0-based, the Go file's leaf numbers are 1-based.

LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
LEAF_HASHES = [_sha256(b"\x00" + e) for e in LEAVES]

ROOTS = {
    size: bytes.fromhex(h)
    for size, h in enumerate(
        (
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ),
        start=1,
    )
}


def _hx(*hashes: str) -> list[bytes]:
    return [bytes.fromhex(h) for h in hashes]


INCLUSION_VECTORS = [  # (index, size, proof)
    (0, 1, []),
    (
        0,
        8,
        _hx(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        5,
        8,
        _hx(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (2, 3, _hx("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        1,
        5,
        _hx(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
]

CONSISTENCY_VECTORS = [  # (size1, size2, proof)
    (1, 1, []),
    (
        1,
        8,
        _hx(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _hx(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        _hx(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        _hx(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]

SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


# --- Helpers -----------------------------------------------------------------------------


def entries_for(n: int, salt: bytes) -> list[bytes]:
    """n distinct entries; distinctness keeps sibling hashes distinct in the shape tests."""
    return [salt + i.to_bytes(4, "big") for i in range(n)]


def flip(value: bytes, bit: int) -> bytes:
    out = bytearray(value)
    out[(bit // 8) % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


def proof_corruptions(proof: list[bytes], bit: int, extras: list[bytes]):
    """Yield (description, corrupted proof) pairs that no verifier may accept."""
    for extra in [b"", SOME_HASH, *extras]:
        yield f"trailing {extra[:4].hex()}", [*proof, extra]
        yield f"preceding {extra[:4].hex()}", [extra, *proof]
    for i, element in enumerate(proof):
        yield f"proof[{i}] bit {bit} flipped", proof[:i] + [flip(element, bit)] + proof[i + 1 :]
        yield f"proof[{i}] bit 0 flipped", proof[:i] + [flip(element, 0)] + proof[i + 1 :]
        yield f"proof[{i}] removed", proof[:i] + proof[i + 1 :]
        yield f"inserted at {i}", proof[:i] + [SOME_HASH] + proof[i:]
        yield f"proof[{i}] duplicated", proof[: i + 1] + proof[i:]
        yield f"proof[{i}] truncated", proof[:i] + [element[:-1]] + proof[i + 1 :]
        yield f"proof[{i}] padded", proof[:i] + [element + b"\x00"] + proof[i + 1 :]
        yield f"proof[{i}] as bytearray", proof[:i] + [bytearray(element)] + proof[i + 1 :]
        yield f"proof[{i}] as hex str", proof[:i] + [element.hex()] + proof[i + 1 :]
        yield f"proof[{i}] None", proof[:i] + [None] + proof[i + 1 :]
        if i + 1 < len(proof) and proof[i] != proof[i + 1]:
            swapped = list(proof)
            swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
            yield f"proof[{i}] swapped with next", swapped
    if proof:
        yield "empty proof", []
        yield "proof as one bytes blob", b"".join(proof)
        yield "proof as iterator", iter(proof)


def inclusion_probes(leaf: bytes, index: int, size: int, proof: list[bytes], head: bytes, bit: int):
    """Yield (description, args) for verify_inclusion that must all be rejected."""
    yield "index - 1", (leaf, index - 1, size, proof, head)
    yield "index + 1", (leaf, index + 1, size, proof, head)
    yield "index ^ 2", (leaf, index ^ 2, size, proof, head)
    yield "index = size", (leaf, size, size, proof, head)
    yield "size = index", (leaf, index, index, proof, head)
    yield "negative size", (leaf, index, -size, proof, head)
    yield "leaf bit flipped", (flip(leaf, bit), index, size, proof, head)
    yield "root bit flipped", (leaf, index, size, proof, flip(head, bit))
    yield "wrong leaf", (b"WrongLeaf", index, size, proof, head)
    yield "empty root", (leaf, index, size, proof, EMPTY_ROOT)
    yield "random root", (leaf, index, size, proof, SOME_HASH)
    if size > 1:  # a one-leaf tree's root is its leaf
        yield "root is leaf", (leaf, index, size, proof, leaf)
    yield "truncated root", (leaf, index, size, proof, head[:-1])
    yield "leaf as bytearray", (bytearray(leaf), index, size, proof, head)
    for desc, bad in proof_corruptions(proof, bit, [head, leaf]):
        yield desc, (leaf, index, size, bad, head)


def consistency_probes(size1: int, size2: int, proof: list[bytes], r1: bytes, r2: bytes, bit: int):
    """Yield (description, args) for verify_consistency that must all be rejected."""
    yield "size1 > size2", (size2 + 1, size2, proof, r1, r2)
    yield "negative size1", (-size1 - 1, size2, proof, r1, r2)
    yield "negative size2", (size1, -size2 - 1, proof, r1, r2)
    yield "wrong root1", (size1, size2, proof, b"WrongRoot", r2)
    yield "wrong root2", (size1, size2, proof, r1, b"WrongRoot")
    yield "root1 bit flipped", (size1, size2, proof, flip(r1, bit), r2)
    yield "root2 bit flipped", (size1, size2, proof, r1, flip(r2, bit))
    if r1 != r2:
        yield "swapped roots", (size1, size2, proof, r2, r1)
    for desc, bad in proof_corruptions(proof, bit, [r1, r2]):
        yield desc, (size1, size2, bad, r1, r2)


def assert_all_rejected(verify, probes) -> None:
    accepted = [desc for desc, args in probes if verify(*args) is not False]
    assert not accepted, f"incorrectly verified: {accepted}"


SLOW = settings(deadline=None, max_examples=60)
sizes = st.integers(min_value=1, max_value=300)
salts = st.binary(min_size=0, max_size=8)


# --- Primitives --------------------------------------------------------------------------


def test_leaf_and_node_hash_use_rfc_domain_separation() -> None:
    a, b = _sha256(b"a"), _sha256(b"b")
    assert leaf_hash(b"") == ROOTS[1]
    assert leaf_hash(b"entry") == _sha256(b"\x00entry")
    assert leaf_hash(bytearray(b"entry")) == leaf_hash(memoryview(b"entry")) == leaf_hash(b"entry")
    assert node_hash(a, b) == _sha256(b"\x01" + a + b)
    assert node_hash(a, b) != node_hash(b, a)  # pairs are never sorted
    assert node_hash(a, b) != leaf_hash(a + b)
    with pytest.raises(TypeError):
        leaf_hash("entry")  # type: ignore[arg-type]


def test_empty_tree() -> None:
    assert root([]) == EMPTY_ROOT == _sha256(b"") == ref_mth([])
    tree = MerkleTree()
    assert tree.size == len(tree) == 0
    assert tree.root_at() == tree.root_at(0) == EMPTY_ROOT
    assert consistency_proof([], 0) == []


@pytest.mark.parametrize("size", range(1, 9))
def test_reference_roots(size: int) -> None:
    assert root(LEAF_HASHES[:size]) == ROOTS[size]
    assert ref_mth(LEAVES[:size]) == ROOTS[size]
    assert MerkleTree(LEAF_HASHES).root_at(size) == ROOTS[size]
    assert MerkleTree(LEAF_HASHES[:size]).root_at() == ROOTS[size]


def test_no_odd_node_duplication() -> None:
    # A tree that duplicated the odd last leaf (Bitcoin-style) would give size 3 == size 4' root.
    h = LEAF_HASHES
    assert root(h[:3]) == node_hash(node_hash(h[0], h[1]), h[2])
    assert root(h[:3]) != root([h[0], h[1], h[2], h[2]])


@pytest.mark.parametrize(("index", "size", "expected"), INCLUSION_VECTORS)
def test_reference_inclusion_proofs(index: int, size: int, expected: list[bytes]) -> None:
    leaves = LEAF_HASHES[:size]
    assert inclusion_proof(leaves, index) == expected
    assert MerkleTree(LEAF_HASHES).inclusion_proof(index, size) == expected
    assert ref_path(index, LEAVES[:size]) == expected
    assert verify_inclusion(LEAF_HASHES[index], index, size, expected, ROOTS[size])
    assert verify_inclusion(LEAF_HASHES[index], index, size, tuple(expected), ROOTS[size])
    probes = list(inclusion_probes(LEAF_HASHES[index], index, size, expected, ROOTS[size], 3))
    probes += [  # the tree-size probes of the reference suite
        ("size * 2", (LEAF_HASHES[index], index, size * 2, expected, ROOTS[size])),
        ("size // 2", (LEAF_HASHES[index], index, size // 2, expected, ROOTS[size])),
    ]
    assert_all_rejected(verify_inclusion, probes)


@pytest.mark.parametrize(("size1", "size2", "expected"), CONSISTENCY_VECTORS)
def test_reference_consistency_proofs(size1: int, size2: int, expected: list[bytes]) -> None:
    assert consistency_proof(LEAF_HASHES[:size2], size1) == expected
    assert MerkleTree(LEAF_HASHES).consistency_proof(size1, size2) == expected
    assert ref_proof(size1, LEAVES[:size2]) == expected
    r1, r2 = ROOTS[size1], ROOTS[size2]
    assert verify_consistency(size1, size2, expected, r1, r2)
    if not expected:
        return
    probes = list(consistency_probes(size1, size2, expected, r1, r2, 4))
    probes += [  # the size probes of the reference suite
        ("size1 - 1", (size1 - 1, size2, expected, r1, r2)),
        ("size1 + 1", (size1 + 1, size2, expected, r1, r2)),
        ("size1 ^ 2", (size1 ^ 2, size2, expected, r1, r2)),
        ("size2 * 2", (size1, size2 * 2, expected, r1, r2)),
        ("size2 // 2", (size1, size2 // 2, expected, r1, r2)),
        ("preceding proof[0]", (size1, size2, [expected[0], *expected], r1, r2)),
    ]
    assert_all_rejected(verify_consistency, probes)


@pytest.mark.parametrize(
    ("size1", "size2", "root1", "root2", "proof", "ok"),
    [
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [], True),
        (0, 1, EMPTY_ROOT, ROOTS[1], [], True),
        (0, 8, EMPTY_ROOT, ROOTS[8], [], True),
        (1, 1, ROOTS[1], ROOTS[1], [], True),
        (8, 8, ROOTS[8], ROOTS[8], [], True),
        # Equal sizes need equal roots and an empty proof.
        (1, 1, ROOTS[1], ROOTS[2], [], False),
        (0, 0, EMPTY_ROOT, ROOTS[1], [], False),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        (1, 1, ROOTS[1], ROOTS[1], [EMPTY_ROOT], False),
        # The empty tree: only an empty proof, and root1 must be the empty-tree hash.
        (0, 1, EMPTY_ROOT, ROOTS[1], [EMPTY_ROOT], False),
        (0, 1, ROOTS[2], ROOTS[1], [], False),
        (0, 0, ROOTS[1], ROOTS[1], [], False),
        # Time travel to the past.
        (1, 0, ROOTS[1], EMPTY_ROOT, [], False),
        (2, 1, ROOTS[2], ROOTS[1], [], False),
        # 0 < size1 < size2 needs a non-empty proof.
        (1, 2, ROOTS[1], ROOTS[2], [], False),
        # Malformed roots even where no hashing is needed.
        (0, 0, b"", b"", [], False),
        (1, 1, b"don't care", b"don't care", [], False),
    ],
)
def test_trivial_consistency_cases(size1, size2, root1, root2, proof, ok) -> None:
    assert verify_consistency(size1, size2, proof, root1, root2) is ok


@pytest.mark.parametrize(("index", "size"), [(0, 0), (0, 1), (1, 0), (2, 1), (1, 1)])
def test_inclusion_with_empty_proof_and_bad_shape(index: int, size: int) -> None:
    for leaf, head in [(SOME_HASH, b""), (b"", EMPTY_ROOT), (SOME_HASH, EMPTY_ROOT)]:
        assert verify_inclusion(leaf, index, size, [], head) is False


def test_single_entry_tree() -> None:
    h = leaf_hash(b"data")
    assert verify_inclusion(h, 0, 1, [], h)
    assert not verify_inclusion(h, 0, 1, [], b"")
    assert not verify_inclusion(b"", 0, 1, [], h)
    assert not verify_inclusion(b"", 0, 1, [], b"")
    assert not verify_inclusion(h, 0, 1, [h], h)


# --- Exhaustive small trees against the naive model --------------------------------------


def test_roots_match_naive_model_for_small_sizes() -> None:
    entries = entries_for(140, b"roots")
    hashes = [leaf_hash(e) for e in entries]
    tree = MerkleTree(hashes)
    for n in range(141):
        expected = ref_mth(entries[:n])
        assert root(hashes[:n]) == expected
        assert tree.root_at(n) == expected


def test_all_inclusion_proofs_match_naive_model_up_to_40() -> None:
    entries = entries_for(40, b"incl")
    hashes = [leaf_hash(e) for e in entries]
    tree = MerkleTree(hashes)
    for n in range(1, 41):
        head = ref_mth(entries[:n])
        for i in range(n):
            expected = ref_path(i, entries[:n])
            assert tree.inclusion_proof(i, n) == expected
            assert len(expected) == merkle._inclusion_proof_len(i, n)
            assert verify_inclusion(hashes[i], i, n, expected, head)
        assert inclusion_proof(hashes[:n], n - 1) == ref_path(n - 1, entries[:n])


def test_all_consistency_proofs_match_naive_model_up_to_40() -> None:
    entries = entries_for(40, b"cons")
    hashes = [leaf_hash(e) for e in entries]
    tree = MerkleTree(hashes)
    roots = [ref_mth(entries[:n]) for n in range(41)]
    for n in range(41):
        for m in range(n + 1):
            expected = ref_proof(m, entries[:n])
            assert tree.consistency_proof(m, n) == expected
            assert len(expected) == ref_proof_len(m, n)
            if 0 < m < n:
                assert len(expected) == merkle._consistency_proof_len(m, n)
            assert verify_consistency(m, n, expected, roots[m], roots[n])
        assert consistency_proof(hashes[:n], n // 2) == ref_proof(n // 2, entries[:n])


# --- Property tests ----------------------------------------------------------------------


@SLOW
@given(n=sizes, salt=salts)
def test_every_inclusion_proof_verifies(n: int, salt: bytes) -> None:
    hashes = [leaf_hash(e) for e in entries_for(n, salt)]
    tree = MerkleTree(hashes)
    head = root(hashes)
    assert tree.root_at() == head
    for i in range(n):
        proof = tree.inclusion_proof(i)
        assert len(proof) == len(ref_sides(i, n))
        assert verify_inclusion(hashes[i], i, n, proof, head)


@SLOW
@given(n=sizes, salt=salts, data=st.data())
def test_inclusion_proofs_match_naive_model(n: int, salt: bytes, data: st.DataObject) -> None:
    entries = entries_for(n, salt)
    hashes = [leaf_hash(e) for e in entries]
    index = data.draw(st.integers(0, n - 1), label="index")
    expected = ref_path(index, entries)
    assert inclusion_proof(hashes, index) == expected
    assert MerkleTree(hashes).inclusion_proof(index) == expected
    assert verify_inclusion(hashes[index], index, n, expected, ref_mth(entries))


@SLOW
@given(n=sizes, salt=salts, data=st.data())
def test_consistency_proofs_match_naive_model_and_verify(
    n: int, salt: bytes, data: st.DataObject
) -> None:
    entries = entries_for(n, salt)
    hashes = [leaf_hash(e) for e in entries]
    m = data.draw(st.integers(0, n), label="size1")
    expected = ref_proof(m, entries)
    assert consistency_proof(hashes, m) == expected
    assert MerkleTree(hashes).consistency_proof(m, n) == expected
    assert verify_consistency(m, n, expected, ref_mth(entries[:m]), ref_mth(entries))


@SLOW
@given(n=sizes, salt=salts, data=st.data())
def test_incremental_tree_matches_module_functions(
    n: int, salt: bytes, data: st.DataObject
) -> None:
    hashes = [leaf_hash(e) for e in entries_for(n, salt)]
    tree = MerkleTree()
    for i, h in enumerate(hashes):
        assert tree.append(h) == i
        assert tree.root_at() == root(hashes[: i + 1])
    # Every earlier size is still served from the stored levels.
    for size in range(n + 1):
        assert tree.root_at(size) == root(hashes[:size])
    # Bulk loading in arbitrary chunks stores exactly the same levels.
    chunked = MerkleTree()
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=6), label="cuts"))
    for lo, hi in zip([0, *cuts], [*cuts, n], strict=True):
        chunked.extend(hashes[lo:hi])
    assert chunked._levels == tree._levels == merkle._build_levels(list(hashes))
    for height, level in enumerate(tree._levels[1:], start=1):
        assert len(level) == len(tree._levels[height - 1]) // 2
    size2 = data.draw(st.integers(1, n), label="size2")
    index = data.draw(st.integers(0, size2 - 1), label="index")
    size1 = data.draw(st.integers(0, size2), label="size1")
    assert tree.inclusion_proof(index, size2) == inclusion_proof(hashes[:size2], index)
    assert tree.consistency_proof(size1, size2) == consistency_proof(hashes[:size2], size1)
    assert tree.root_at(size2) == root(hashes[:size2])


@SLOW
@given(n=sizes, salt=salts, data=st.data())
def test_corrupted_inclusion_proofs_are_rejected(n: int, salt: bytes, data: st.DataObject) -> None:
    hashes = [leaf_hash(e) for e in entries_for(n, salt)]
    tree = MerkleTree(hashes)
    head = tree.root_at()
    index = data.draw(st.integers(0, n - 1), label="index")
    bit = data.draw(st.integers(0, 255), label="bit")
    proof = tree.inclusion_proof(index)
    assert verify_inclusion(hashes[index], index, n, proof, head)
    assert_all_rejected(
        verify_inclusion, inclusion_probes(hashes[index], index, n, proof, head, bit)
    )
    # The proof is for exactly one position: every other index fails.
    for other in range(n):
        if other != index:
            assert not verify_inclusion(hashes[index], other, n, proof, head)
        if hashes[other] != hashes[index]:
            assert not verify_inclusion(hashes[other], index, n, proof, head)
    # A wrong size is rejected unless it gives the identical path shape, in which case
    # the very same hashes are computed (see the tree-size test below).
    for other_size in range(1, 2 * n + 3):
        if other_size != n:
            same_shape = index < other_size and ref_sides(index, other_size) == ref_sides(index, n)
            assert verify_inclusion(hashes[index], index, other_size, proof, head) is same_shape


@SLOW
@given(n=st.integers(2, 300), salt=salts, data=st.data())
def test_corrupted_consistency_proofs_are_rejected(
    n: int, salt: bytes, data: st.DataObject
) -> None:
    hashes = [leaf_hash(e) for e in entries_for(n, salt)]
    tree = MerkleTree(hashes)
    m = data.draw(st.integers(1, n - 1), label="size1")
    bit = data.draw(st.integers(0, 255), label="bit")
    proof = tree.consistency_proof(m, n)
    r1, r2 = tree.root_at(m), tree.root_at(n)
    assert verify_consistency(m, n, proof, r1, r2)
    assert_all_rejected(verify_consistency, consistency_probes(m, n, proof, r1, r2, bit))
    # Roots of other sizes of the same tree are not interchangeable.
    for other in range(n + 1):
        if other != m:
            assert not verify_consistency(m, n, proof, tree.root_at(other), r2)
        if other != n:
            assert not verify_consistency(m, n, proof, r1, tree.root_at(other))
    # Sizes whose proofs have another length are rejected by the exact length check.
    for m2, n2 in [(m - 1, n), (m + 1, n), (m ^ 2, n), (m, n + 1), (m, n - 1), (m, 2 * n)]:
        if 0 < m2 < n2 and ref_proof_len(m2, n2) != len(proof):
            assert not verify_consistency(m2, n2, proof, r1, r2)


def test_tree_size_is_bound_by_the_checkpoint_not_by_the_proof() -> None:
    """RFC 9162 proofs carry no size: a proof also fits sizes with the same path shape.

    That is why (size, root) must be taken from a signed checkpoint as a pair.
    """
    h = LEAF_HASHES
    proof = inclusion_proof(h[:4], 0)
    assert ref_sides(0, 3) == ref_sides(0, 4)
    assert verify_inclusion(h[0], 0, 3, proof, ROOTS[4])
    assert not verify_inclusion(h[0], 0, 3, proof, ROOTS[3])
    assert verify_consistency(2, 3, consistency_proof(h[:2], 1), ROOTS[1], ROOTS[2])


# --- Malformed input: verifiers answer False, never raise --------------------------------

_H5 = LEAF_HASHES[:5]
_GOOD_INCLUSION = (LEAF_HASHES[2], 2, 5, inclusion_proof(_H5, 2), ROOTS[5])
_GOOD_CONSISTENCY = (3, 8, consistency_proof(LEAF_HASHES, 3), ROOTS[3], ROOTS[8])


class _BrokenSequence(list):
    def __len__(self) -> int:
        raise RuntimeError("boom")


def _value_id(value: object) -> str:
    """Stable test ids: some reprs embed memory addresses."""
    if type(value) in (object, memoryview):
        return type(value).__name__
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:20]}..."


BAD_HASHES = [
    None,
    b"",
    b"\x00" * 31,
    b"\x00" * 33,
    "a" * 32,
    bytearray(32),
    memoryview(bytes(32)),
    0,
    [0] * 32,
    object(),
]
BAD_INTS = [-1, -(2**70), None, 1.0, 2.0, "2", b"\x02", True, False, 2**64, 2**64 + 2, 10**40, [2]]
BAD_PROOFS = [
    None,
    b"",
    "",
    b"\x00" * 32,
    5,
    {SOME_HASH},
    {0: SOME_HASH},
    [None],
    [b""],
    [SOME_HASH] * 70,
    _BrokenSequence([SOME_HASH]),
    range(3),
]


def test_good_inputs_are_accepted() -> None:
    assert verify_inclusion(*_GOOD_INCLUSION)
    assert verify_consistency(*_GOOD_CONSISTENCY)


@pytest.mark.parametrize("position", [0, 4])
@pytest.mark.parametrize("bad", BAD_HASHES, ids=_value_id)
def test_inclusion_rejects_malformed_hashes(position: int, bad: object) -> None:
    args = list(_GOOD_INCLUSION)
    args[position] = bad
    assert verify_inclusion(*args) is False


@pytest.mark.parametrize("position", [1, 2])
@pytest.mark.parametrize("bad", BAD_INTS, ids=_value_id)
def test_inclusion_rejects_malformed_index_and_size(position: int, bad: object) -> None:
    args = list(_GOOD_INCLUSION)
    args[position] = bad
    assert verify_inclusion(*args) is False


@pytest.mark.parametrize("bad", BAD_PROOFS, ids=_value_id)
def test_inclusion_rejects_malformed_proofs(bad: object) -> None:
    args = list(_GOOD_INCLUSION)
    args[3] = bad
    assert verify_inclusion(*args) is False


@pytest.mark.parametrize("position", [3, 4])
@pytest.mark.parametrize("bad", BAD_HASHES, ids=_value_id)
def test_consistency_rejects_malformed_roots(position: int, bad: object) -> None:
    args = list(_GOOD_CONSISTENCY)
    args[position] = bad
    assert verify_consistency(*args) is False


@pytest.mark.parametrize("position", [0, 1])
@pytest.mark.parametrize("bad", BAD_INTS, ids=_value_id)
def test_consistency_rejects_malformed_sizes(position: int, bad: object) -> None:
    args = list(_GOOD_CONSISTENCY)
    args[position] = bad
    assert verify_consistency(*args) is False


@pytest.mark.parametrize("bad", BAD_PROOFS, ids=_value_id)
def test_consistency_rejects_malformed_proofs(bad: object) -> None:
    args = list(_GOOD_CONSISTENCY)
    args[2] = bad
    assert verify_consistency(*args) is False


def test_verifiers_reject_missing_arguments_without_raising() -> None:
    assert verify_inclusion(None, None, None, None, None) is False  # type: ignore[arg-type]
    assert verify_consistency(None, None, None, None, None) is False  # type: ignore[arg-type]


def test_bools_are_not_indices_or_sizes() -> None:
    h = LEAF_HASHES[:2]
    proof = inclusion_proof(h, 1)
    assert verify_inclusion(h[1], 1, 2, proof, ROOTS[2])
    assert verify_inclusion(h[1], True, 2, proof, ROOTS[2]) is False
    assert verify_inclusion(h[0], False, True, [], ROOTS[1]) is False
    assert verify_consistency(True, 2, consistency_proof(h, 1), ROOTS[1], ROOTS[2]) is False
    assert verify_consistency(False, 2, [], EMPTY_ROOT, ROOTS[2]) is False
    assert verify_consistency(True, True, [], ROOTS[1], ROOTS[1]) is False


def test_huge_sizes_are_cheap_and_rejected() -> None:
    big = 2**64 - 1
    fake = [SOME_HASH] * 64
    assert verify_inclusion(SOME_HASH, big - 1, big, fake, SOME_HASH) is False
    assert verify_consistency(big - 1, big, fake, SOME_HASH, SOME_HASH) is False
    assert verify_consistency(3, 2**64, fake, SOME_HASH, SOME_HASH) is False


anything = st.one_of(
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.binary(max_size=40),
    st.text(max_size=40),
    st.lists(st.binary(min_size=32, max_size=32), max_size=5),
    st.lists(st.one_of(st.none(), st.integers(), st.binary(max_size=33)), max_size=5),
)


@settings(deadline=None, max_examples=300)
@given(args=st.tuples(anything, anything, anything, anything, anything))
def test_verifiers_never_raise(args: tuple) -> None:
    assert verify_inclusion(*args) in (True, False)
    assert verify_consistency(*args) in (True, False)


# --- Generators reject invalid arguments -------------------------------------------------


def test_generators_raise_on_invalid_arguments() -> None:
    h = LEAF_HASHES
    with pytest.raises(ValueError):
        inclusion_proof([], 0)
    for index in (-1, 8, 100):
        with pytest.raises(ValueError):
            inclusion_proof(h, index)
    for size1 in (-1, 9):
        with pytest.raises(ValueError):
            consistency_proof(h, size1)
    for bad_index in ("1", 1.0, None, True):
        with pytest.raises(TypeError):
            inclusion_proof(h, bad_index)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            consistency_proof(h, bad_index)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        root([*h[:3], b"\x00" * 31])
    with pytest.raises(TypeError):
        root([*h[:3], "x" * 32])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        root(b"\x00" * 32)  # a single hash is not a list of them


def test_tree_rejects_invalid_arguments_without_changing_state() -> None:
    tree = MerkleTree(LEAF_HASHES[:5])
    before = [list(level) for level in tree._levels]
    with pytest.raises(ValueError):
        tree.append(b"\x00" * 31)
    with pytest.raises(TypeError):
        tree.append("x" * 32)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        tree.extend([LEAF_HASHES[5], b"short", LEAF_HASHES[6]])
    assert tree._levels == before
    for call in (
        lambda: tree.root_at(6),
        lambda: tree.root_at(-1),
        lambda: tree.inclusion_proof(5),
        lambda: tree.inclusion_proof(0, 0),
        lambda: tree.inclusion_proof(3, 3),
        lambda: tree.inclusion_proof(0, 6),
        lambda: tree.consistency_proof(4, 3),
        lambda: tree.consistency_proof(0, 6),
        lambda: tree.consistency_proof(-1),
    ):
        with pytest.raises(ValueError):
            call()


# --- Documentation and scale -------------------------------------------------------------


def test_module_docstring_example() -> None:
    result = doctest.testmod(merkle)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.slow
def test_large_tree_agrees_across_code_paths() -> None:
    hashes = [os.urandom(32) for _ in range(100_003)]
    tree = MerkleTree()
    for h in hashes[:50_000]:
        tree.append(h)
    tree.extend(hashes[50_000:])
    head = root(hashes)
    assert tree.root_at() == head
    assert tree.root_at(65_536) == root(hashes[:65_536])
    for index in (0, 65_535, 65_536, 100_002):
        proof = tree.inclusion_proof(index)
        assert len(proof) <= 17
        assert verify_inclusion(hashes[index], index, len(hashes), proof, head)
    for size1 in (1, 4_097, 65_536, 99_999):
        proof = tree.consistency_proof(size1)
        assert verify_consistency(size1, len(hashes), proof, tree.root_at(size1), head)
    assert consistency_proof(hashes, 4_097) == tree.consistency_proof(4_097)
