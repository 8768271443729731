"""RFC 9162 Merkle hash trees (SHA-256) for the carbon-ticket registry log.

The registry appends every event (issuance, transfer, pledge, retirement of a
forestry carbon ticket) to an append-only log and publishes signed checkpoints
``(size, root)``.  The root is the Merkle Tree Hash defined by RFC 9162
(Certificate Transparency v2), section 2.1:

* a leaf is ``SHA-256(0x00 || entry)`` and an interior node is
  ``SHA-256(0x01 || left || right)``; the distinct prefixes stop a leaf from
  being passed off as a node (second-preimage attacks);
* a tree of ``n > 1`` leaves is split at the largest power of two strictly
  smaller than ``n``; odd nodes are never duplicated and pairs are never
  sorted, so the tree commits to both the entries and their order;
* the empty tree hashes to ``SHA-256("")``.

Two kinds of proof come with it, each only ``O(log n)`` hashes long:

* an *inclusion proof* (RFC 9162 §2.1.3) shows that one entry sits at a given
  index of the tree behind a checkpoint;
* a *consistency proof* (RFC 9162 §2.1.4) shows that a later checkpoint
  extends an earlier one, i.e. the log was only appended to, never rewritten.

What a bank uses it for: before accepting a carbon ticket as collateral, or
buying the credits it represents, a bank asks the registry for the ticket's
events plus inclusion proofs against a signed checkpoint, and checks them
with :func:`verify_inclusion` - no access to, or trust in, the registry's
database is needed.  The bank keeps the checkpoints it has seen; whenever it
receives a newer one it checks :func:`verify_consistency`, so a registry that
quietly dropped a recorded pledge or retirement (say, to sell the same
credits twice) would be caught.  The ``(size, root)`` pair must come from a
signed checkpoint: a proof shows membership in *that* tree, it does not by
itself authenticate the size.

Verifiers return ``False`` (never raise) on any malformed input; generators
raise ``TypeError``/``ValueError`` on invalid arguments.  :class:`MerkleTree`
keeps every complete subtree hash, so the registry can serve proofs for the
current or any earlier size without rebuilding the tree.

Example:

>>> from ledger import merkle
>>> leaves = [merkle.leaf_hash(e) for e in (b"issue T-1", b"pledge T-1", b"retire T-2")]
>>> head = merkle.root(leaves)
>>> proof = merkle.inclusion_proof(leaves, 1)
>>> merkle.verify_inclusion(leaves[1], 1, 3, proof, head)
True
>>> merkle.verify_inclusion(leaves[1], 2, 3, proof, head)
False
>>> old_head = merkle.root(leaves[:2])
>>> merkle.verify_consistency(2, 3, merkle.consistency_proof(leaves, 2), old_head, head)
True
>>> tree = merkle.MerkleTree(leaves)
>>> tree.root_at(2) == old_head and tree.inclusion_proof(1) == proof
True
"""

import hashlib
from collections.abc import Iterable, Sequence
from typing import TypeGuard

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "MerkleTree",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
#: RFC 9162 encodes tree sizes and indices as uint64.
MAX_TREE_SIZE = 2**64 - 1
#: Merkle Tree Hash of the empty tree, SHA-256 of the empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256
_LEAF_PREFIX = b"\x00"
# Copying a hasher already primed with the prefix beats hashing 0x01 afresh for every node.
_NODE_HASHER = _sha256(b"\x01")
_SINGLE_VALUES = (bytes, bytearray, memoryview, str)


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 9162 leaf hash SHA-256(0x00 || data) of one log entry."""
    hasher = _sha256(_LEAF_PREFIX)
    hasher.update(data)
    return hasher.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 interior node hash SHA-256(0x01 || left || right)."""
    hasher = _NODE_HASHER.copy()
    hasher.update(left)
    hasher.update(right)
    return hasher.digest()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the Merkle Tree Hash of the given leaf hashes (EMPTY_ROOT for none)."""
    level = _checked_leaf_hashes(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        parents = _pair_up(level)
        if len(level) & 1:
            # Carrying the odd node up unchanged is exactly RFC 9162's split at the
            # largest power of two below n: that node is the right edge of every split.
            parents.append(level[-1])
        level = parents
    return level[0]


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Return the RFC 9162 inclusion proof PATH(index, D[n]) for the leaf at ``index``."""
    hashes = _checked_leaf_hashes(leaf_hashes)
    _check_int("index", index, 0, len(hashes) - 1)
    return _inclusion_path(_build_levels(hashes), index, len(hashes))


def consistency_proof(leaf_hashes: Sequence[bytes], size1: int) -> list[bytes]:
    """Return the RFC 9162 consistency proof from the first ``size1`` leaves to all of them.

    The proof is empty when ``size1`` is 0 or equals the number of leaves.
    """
    hashes = _checked_leaf_hashes(leaf_hashes)
    _check_int("size1", size1, 0, len(hashes))
    return _consistency_path(_build_levels(hashes), size1, len(hashes))


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    Implements RFC 9162 §2.1.3.2 with an exact proof-length check; never raises.
    """
    try:
        return _verify_inclusion(leaf_hash, index, size, proof, root)
    except Exception:  # fail closed: a verifier must answer, whatever odd object it is handed
        return False


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> bool:
    """Check that the tree (size2, root2) extends the tree (size1, root1).

    Implements RFC 9162 §2.1.4.2 with an exact proof-length check; never raises.
    Equal sizes need an empty proof and equal roots; size1 == 0 needs an empty
    proof and root1 == EMPTY_ROOT.
    """
    try:
        return _verify_consistency(size1, size2, proof, root1, root2)
    except Exception:  # fail closed, as in verify_inclusion
        return False


class MerkleTree:
    """Append-only RFC 9162 tree that stores every complete subtree hash.

    ``_levels[k][j]`` is the hash of the complete subtree over leaves
    ``[j * 2**k, (j + 1) * 2**k)``; an odd last node is left out of the level
    above and folded in on demand.  Stored hashes never change once written,
    which is why roots and proofs for any earlier size can be served from them.
    Not synchronised: callers must serialise ``append``/``extend``.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        """Create a tree, optionally bulk-loaded with ``leaf_hashes``."""
        self._levels: list[list[bytes]] = [[]]
        self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        """Number of leaves in the tree."""
        return len(self._levels[0])

    def __len__(self) -> int:
        return len(self._levels[0])

    def append(self, leaf_hash: bytes) -> int:
        """Append one leaf hash and return its index (amortised O(1), worst case O(log n))."""
        _require_hash(leaf_hash, "leaf hash")
        levels = self._levels
        level = levels[0]
        level.append(leaf_hash)
        index = len(level) - 1
        height = 0
        while not len(level) & 1:
            parent = node_hash(level[-2], level[-1])
            height += 1
            if height == len(levels):
                levels.append([])
            level = levels[height]
            level.append(parent)
        return index

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append many leaf hashes, hashing level by level (faster than repeated append)."""
        new = _checked_leaf_hashes(leaf_hashes)
        levels = self._levels
        levels[0].extend(new)
        height = 0
        while len(levels[height]) > 1:
            if height + 1 == len(levels):
                levels.append([])
            below, above = levels[height], levels[height + 1]
            start = 2 * len(above)
            if start + 1 >= len(below):
                break  # nothing new paired here, so nothing changes further up either
            above.extend(_pair_up(below, start))
            height += 1

    def root_at(self, size: int | None = None) -> bytes:
        """Return the root of the first ``size`` leaves (default: all) in O(log n)."""
        size = self._check_size("size", size)
        return _range_hash(self._levels, 0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Return the inclusion proof of leaf ``index`` in the tree of the first ``size`` leaves."""
        size = self._check_size("size", size)
        _check_int("index", index, 0, size - 1)
        return _inclusion_path(self._levels, index, size)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """Return the consistency proof from the first ``size1`` to the first ``size2`` leaves."""
        size2 = self._check_size("size2", size2)
        _check_int("size1", size1, 0, size2)
        return _consistency_path(self._levels, size1, size2)

    def _check_size(self, name: str, size: int | None) -> int:
        if size is None:
            return self.size
        _check_int(name, size, 0, self.size)
        return size


# --- helpers -----------------------------------------------------------------------------


def _is_hash(value: object) -> TypeGuard[bytes]:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _is_uint64(value: object) -> TypeGuard[int]:
    # bool is an int subclass; True as a leaf index is a caller bug, not index 1.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TREE_SIZE


def _require_hash(value: object, what: str) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    if len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name}={value} is out of range {low}..{high}")


def _checked_leaf_hashes(leaf_hashes: Iterable[bytes]) -> list[bytes]:
    # A bare bytes object is iterable too; hashing its ints would be a silent bug.
    if isinstance(leaf_hashes, _SINGLE_VALUES):
        raise TypeError("leaf_hashes must be a sequence of 32-byte hashes, not a single value")
    hashes = list(leaf_hashes)
    if not all(map(_is_hash, hashes)):
        for position, value in enumerate(hashes):
            _require_hash(value, f"leaf hash #{position}")
    return hashes


def _pair_up(nodes: Sequence[bytes], start: int = 0) -> list[bytes]:
    """Hash nodes[start], nodes[start+1], ... pairwise; a trailing odd node is dropped."""
    base = _NODE_HASHER
    parents: list[bytes] = []
    add = parents.append
    # strict=False: an odd trailing node has no partner and is deliberately left out.
    for left, right in zip(nodes[start::2], nodes[start + 1 :: 2], strict=False):
        hasher = base.copy()
        hasher.update(left + right)
        add(hasher.digest())
    return parents


def _build_levels(leaf_hashes: list[bytes]) -> list[list[bytes]]:
    """Return the MerkleTree level layout for ``leaf_hashes``."""
    levels = [leaf_hashes]
    while len(levels[-1]) > 1:
        levels.append(_pair_up(levels[-1]))
    return levels


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _range_hash(levels: list[list[bytes]], start: int, size: int) -> bytes:
    """MTH of leaves [start, start + size), size > 0, from stored complete subtrees.

    ``start`` must be a multiple of the largest power of two in ``size``, which
    holds for every range the RFC recursion visits; then the range is a run of
    aligned complete subtrees of decreasing size, folded from the right.
    """
    peaks: list[bytes] = []
    while size:
        height = size.bit_length() - 1
        peaks.append(levels[height][start >> height])
        start += 1 << height
        size -= 1 << height
    acc = peaks.pop()
    while peaks:
        acc = node_hash(peaks.pop(), acc)
    return acc


def _inclusion_path(levels: list[list[bytes]], index: int, size: int) -> list[bytes]:
    """RFC 9162 PATH(index, D[0:size]), walking down from the root; O(log^2 n)."""
    path: list[bytes] = []
    offset = 0
    while size > 1:
        k = _split(size)
        if index < k:
            path.append(_range_hash(levels, offset + k, size - k))
            size = k
        else:
            path.append(_range_hash(levels, offset, k))
            offset += k
            index -= k
            size -= k
    path.reverse()  # the RFC lists siblings from the leaf upwards
    return path


def _consistency_path(levels: list[list[bytes]], size1: int, size2: int) -> list[bytes]:
    """RFC 9162 PROOF(size1, D[0:size2]) = SUBPROOF(size1, D[0:size2], true); O(log^2 n)."""
    if size1 == 0 or size1 == size2:
        return []
    path: list[bytes] = []
    offset = 0
    whole_old_tree = True  # SUBPROOF's b: the old root itself is known to the verifier
    while size1 != size2:
        k = _split(size2)
        if size1 <= k:
            path.append(_range_hash(levels, offset + k, size2 - k))
            size2 = k
        else:
            path.append(_range_hash(levels, offset, k))
            offset += k
            size1 -= k
            size2 -= k
            whole_old_tree = False
    if not whole_old_tree:
        path.append(_range_hash(levels, offset, size2))
    path.reverse()
    return path


def _inclusion_proof_len(index: int, size: int) -> int:
    # Below the level where index and size-1 part ways every level costs a hash;
    # above it, only levels where the path has a left sibling do.
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def _consistency_proof_len(size1: int, size2: int) -> int:
    """Length of PROOF(size1, D[size2]) for 0 < size1 < size2, mirroring _consistency_path."""
    length = 0
    whole_old_tree = True
    while size1 != size2:
        k = _split(size2)
        if size1 <= k:
            size2 = k
        else:
            size1 -= k
            size2 -= k
            whole_old_tree = False
        length += 1
    return length + (not whole_old_tree)


def _checked_proof(proof: object, expected_len: int) -> list[bytes] | None:
    """Return the proof as a list if it is a sequence of exactly expected_len hashes."""
    if not isinstance(proof, Sequence) or isinstance(proof, _SINGLE_VALUES):
        return None
    if len(proof) != expected_len:  # before copying, so a huge bogus proof costs nothing
        return None
    items = list(proof)
    if len(items) != expected_len or not all(map(_is_hash, items)):
        return None
    return items


def _verify_inclusion(
    leaf: object, index: object, size: object, proof: object, expected_root: object
) -> bool:
    if not (_is_hash(leaf) and _is_hash(expected_root) and _is_uint64(index) and _is_uint64(size)):
        return False
    if index >= size:
        return False
    path = _checked_proof(proof, _inclusion_proof_len(index, size))
    if path is None:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def _verify_consistency(
    size1: object, size2: object, proof: object, root1: object, root2: object
) -> bool:
    if not (_is_uint64(size1) and _is_uint64(size2) and _is_hash(root1) and _is_hash(root2)):
        return False
    if size1 > size2:
        return False
    if size1 == 0:
        # RFC 9162 only defines proofs for 0 < size1 < size2.  The empty tree is a
        # prefix of every tree, so the proof is empty and root1 must be its known hash.
        return (
            _checked_proof(proof, 0) is not None
            and root1 == EMPTY_ROOT
            and (size2 > 0 or root2 == EMPTY_ROOT)
        )
    if size1 == size2:
        return _checked_proof(proof, 0) is not None and root1 == root2
    path = _checked_proof(proof, _consistency_proof_len(size1, size2))
    if path is None:
        return False
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)  # the old tree is one complete subtree the proof omits
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == root1 and sr == root2
