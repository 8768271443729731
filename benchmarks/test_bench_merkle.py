"""Merkle proofs at 100k leaves (RFC 9162): generation and verification from the in-memory tree.

    .venv/bin/pytest benchmarks --benchmark-enable
"""

from __future__ import annotations

import hashlib
import random

import pytest

from ledger import merkle

SIZE = 100_000


@pytest.fixture(scope="module")
def tree() -> merkle.MerkleTree:
    return merkle.MerkleTree(hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(SIZE))


@pytest.fixture(scope="module")
def leaves(tree: merkle.MerkleTree) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(SIZE)]


@pytest.mark.benchmark(group="merkle")
def test_inclusion_proof(benchmark, tree: merkle.MerkleTree) -> None:
    rng = random.Random(1)
    proof = benchmark(lambda: tree.inclusion_proof(rng.randrange(SIZE)))
    assert len(proof) == 17


@pytest.mark.benchmark(group="merkle")
def test_verify_inclusion(benchmark, tree: merkle.MerkleTree, leaves: list[bytes]) -> None:
    root = tree.root_at()
    i = 54_321
    proof = tree.inclusion_proof(i)
    assert benchmark(merkle.verify_inclusion, leaves[i], i, SIZE, proof, root)


@pytest.mark.benchmark(group="merkle")
def test_consistency_proof(benchmark, tree: merkle.MerkleTree) -> None:
    rng = random.Random(2)
    benchmark(lambda: tree.consistency_proof(rng.randrange(1, SIZE)))


@pytest.mark.benchmark(group="merkle")
def test_verify_consistency(benchmark, tree: merkle.MerkleTree) -> None:
    m = 77_777
    proof = tree.consistency_proof(m)
    root1, root2 = tree.root_at(m), tree.root_at()
    assert benchmark(merkle.verify_consistency, m, SIZE, proof, root1, root2)


@pytest.mark.benchmark(group="merkle")
def test_root_at(benchmark, tree: merkle.MerkleTree) -> None:
    benchmark(tree.root_at, SIZE - 12_345)


@pytest.mark.benchmark(group="merkle-append")
def test_append_1000_leaves(benchmark) -> None:
    hashes = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(1000)]

    def append() -> None:
        t = merkle.MerkleTree()
        for h in hashes:
            t.append(h)

    benchmark(append)
