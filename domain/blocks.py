"""Serial blocks: a ticket's units 1..quantity partitioned into runs of one holder and one state.

A block is a tuple (first, last, holder, state, ref); `ref` names the pledge, the retirement or
the cancellation reason that put the units in their state ('' for available units). Blocks are
kept sorted, contiguous, and merged when neighbours agree, so the list is the ticket's compact
and canonical state.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from itertools import compress, repeat
from itertools import count as count_from
from operator import eq, itemgetter
from sys import intern

Block = tuple[int, int, str, str, str]
Range = tuple[int, int]
_HOLDER = itemgetter(2)


def interned(name: str) -> str:
    """The one shared copy of a holder's name (see reassign_in_place)."""
    return intern(name) if type(name) is str else name


def size(ranges: Iterable[Sequence[int]]) -> int:
    return sum(r[1] - r[0] + 1 for r in ranges)


def normalise(ranges: Iterable[Sequence[int]]) -> list[Range]:
    """Sorted, non-overlapping, merged ranges; raises ValueError on overlap or an empty range."""
    out: list[Range] = []
    for a, b in sorted((int(r[0]), int(r[1])) for r in ranges):
        if b < a:
            raise ValueError(f"range {a}..{b} is empty")
        if out and a <= out[-1][1]:
            raise ValueError(f"ranges overlap at serial {a}")
        if out and a == out[-1][1] + 1:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def select(blocks: Sequence[Block], holder: str, state: str, ref: str, quantity: int) -> list[Range]:
    """The lowest serials held by `holder` in (`state`, `ref`), `quantity` of them, as ranges.

    Returns fewer than asked when there are not enough; the caller decides what that means.
    The blocks of other holders are skipped in C (their holder is compared, nothing else of
    them is read), and the holder's own blocks are read until enough units are found.
    """
    out: list[Range] = []
    need = quantity
    if need:
        for i in compress(count_from(), map(eq, map(_HOLDER, blocks), repeat(holder))):
            first, last, _, s, r = blocks[i]
            if s == state and r == ref:
                take = min(need, last - first + 1)
                out.append((first, first + take - 1))
                need -= take
                if need == 0:
                    break
    return normalise(out)


def count(blocks: Sequence[Block], holder: str | None = None, state: str | None = None,
          ref: str | None = None) -> int:
    return sum(
        last - first + 1
        for first, last, h, s, r in blocks
        if (holder is None or h == holder) and (state is None or s == state) and (ref is None or r == ref)
    )


def covered_by(blocks: Sequence[Block], ranges: Sequence[Range], holder: str, state: str, ref: str) -> int:
    """How many units of `ranges` are held by `holder` in (`state`, `ref`)."""
    n = 0
    for a, b in ranges:
        for first, last, h, s, r in overlapping(blocks, a, b):
            if h == holder and s == state and r == ref:
                n += min(last, b) - max(first, a) + 1
    return n


def overlapping(blocks: Sequence[Block], a: int, b: int) -> list[Block]:
    """Blocks that share at least one serial with a..b (blocks are sorted and contiguous)."""
    i = max(bisect_right(blocks, (a, 1 << 62)) - 1, 0)
    out = []
    while i < len(blocks) and blocks[i][0] <= b:
        if blocks[i][1] >= a:
            out.append(blocks[i])
        i += 1
    return out


def reassign(blocks: list[Block], ranges: Sequence[Range], holder: str, state: str, ref: str) -> list[Block]:
    """A new block list in which every unit of `ranges` has the given holder and state."""
    return reassign_in_place(list(blocks), ranges, holder, state, ref)


def reassign_in_place(out: list[Block], ranges: Sequence[Range], holder: str, state: str,
                      ref: str) -> list[Block]:
    """Give every unit of `ranges` the holder and state, changing `out` (and returning it).

    Only the blocks around each range are touched and merged, so an event costs O(log n) plus
    the blocks it changes, not O(n) in the ticket's blocks. The holder's name is interned: the
    blocks of every ticket then share one string per holder, which saves memory and keeps
    the strings a scan over the blocks compares in the processor's cache.
    """
    holder = interned(holder)
    for a, b in ranges:
        i = max(bisect_right(out, (a, 1 << 62)) - 1, 0)
        blk = out[i] if out else None
        if blk is not None and blk[0] <= a and b <= blk[1]:
            _within_one_block(out, i, blk, a, b, holder, state, ref)
            continue
        j = i
        pieces: list[Block] = []
        while j < len(out) and out[j][0] <= b:
            first, last, h, s, r = out[j]
            if last >= a:
                if first < a:
                    pieces.append((first, a - 1, h, s, r))
                if last > b:
                    pieces.append((max(first, a), b, holder, state, ref))
                    pieces.append((b + 1, last, h, s, r))
                else:
                    pieces.append((max(first, a), last, holder, state, ref))
            else:
                pieces.append(out[j])
            j += 1
        out[i:j] = pieces
        lo, hi = max(i - 1, 0), min(i + len(pieces) + 1, len(out))
        out[lo:hi] = merge(out[lo:hi])
    return out


def _within_one_block(out: list[Block], i: int, blk: Block, a: int, b: int, holder: str,
                      state: str, ref: str) -> None:
    """reassign_in_place's common case: a..b lies inside the block out[i] (blocks canonical)."""
    first, last, h, s, r = blk
    if h == holder and s == state and r == ref:
        return  # nothing changes
    pieces: list[Block] = []
    if first < a:
        pieces.append((first, a - 1, h, s, r))
    new_first, new_last = a, b
    lo, hi = i, i + 1  # the slice of `out` the pieces replace
    if first == a and i > 0:  # the new block may join its left neighbour
        left = out[i - 1]
        if left[1] + 1 == a and left[2] == holder and left[3] == state and left[4] == ref:
            new_first, lo = left[0], i - 1
    if b == last and i + 1 < len(out):  # ... and its right neighbour
        right = out[i + 1]
        if right[0] == b + 1 and right[2] == holder and right[3] == state and right[4] == ref:
            new_last, hi = right[1], i + 2
    pieces.append((new_first, new_last, holder, state, ref))
    if b < last:
        pieces.append((b + 1, last, h, s, r))
    out[lo:hi] = pieces


def merge(blocks: Sequence[Block]) -> list[Block]:
    out: list[Block] = []
    for blk in blocks:
        if out:
            prev = out[-1]
            if prev[1] + 1 == blk[0] and prev[2:] == blk[2:]:
                out[-1] = (prev[0], blk[1], *blk[2:])
                continue
        out.append(blk)
    return out


def check_partition(blocks: Sequence[Block], quantity: int) -> None:
    """Assert that blocks cover 1..quantity exactly once, in order (the conservation invariant)."""
    expected = 1
    for first, last, *_ in blocks:
        if first != expected or last < first:
            raise AssertionError(f"blocks break at serial {expected}: found block {first}..{last}")
        expected = last + 1
    if expected != quantity + 1:
        raise AssertionError(f"blocks cover {expected - 1} units, the ticket has {quantity}")


def covered_by_state(blocks: Sequence[Block], ranges: Sequence[Range], holder: str, state: str) -> int:
    """How many units of `ranges` are held by `holder` in `state`, whatever their ref."""
    n = 0
    for a, b in ranges:
        for first, last, h, s, _ in overlapping(blocks, a, b):
            if h == holder and s == state:
                n += min(last, b) - max(first, a) + 1
    return n
