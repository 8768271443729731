"""Serial blocks: a ticket's units 1..quantity partitioned into runs of one holder and one state.

A block is a tuple (first, last, holder, state, ref); `ref` names the pledge, the retirement or
the cancellation reason that put the units in their state ('' for available units). Blocks are
kept sorted, contiguous, and merged when neighbours agree, so the list is the ticket's compact
and canonical state.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from operator import itemgetter
from sys import intern
from typing import Any

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
    The blocks of other holders are skipped in C, by list.index over the blocks' holders: the
    list a `WatchedBlocks` keeps beside its blocks (nothing of the other blocks is read then),
    or one made of the blocks. The holder's own blocks are read until enough units are found.
    """
    out: list[Range] = []
    need = quantity
    if not need:
        return out
    holders = getattr(blocks, "holders", None)
    if holders is None or len(holders) != len(blocks):
        holders = list(map(_HOLDER, blocks))
    index = holders.index
    i = -1
    while True:
        try:
            i = index(holder, i + 1)
        except ValueError:
            break
        first, last, h, s, r = blocks[i]
        if h == holder and s == state and r == ref:
            take = min(need, last - first + 1)
            out.append((first, first + take - 1))
            need -= take
            if need == 0:
                break
    # One range (the common case: the holder's first block had enough) is normalised already.
    return out if len(out) == 1 else normalise(out)


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


class WatchedBlocks(list):  # type: ignore[type-arg]
    """A block list that notes where it is changed, and keeps the list of its blocks' holders.

    The audit holds each ticket's blocks in one. An assignment to an index or to a slice (the
    only way this module changes a list) is noted as (lo, hi, n): the items lo..hi-1 were
    replaced by n items. Any other change (append, insert, delete, sort, ...) only marks the
    list as changed somewhere unknown. So the blocks outside the noted spans are the ones there
    were when the list was last sealed, without comparing them.

    `holders` is the holder of every block, in order, kept with each assignment (None after a
    change of unknown place, until the next seal): `select` finds a holder's blocks in it
    without reading the other blocks."""

    __slots__ = ("spans", "unknown", "holders")

    def __init__(self, blocks: Iterable[Block] = ()) -> None:
        super().__init__(blocks)
        self.spans: list[tuple[int, int, int]] = []
        self.unknown = False
        self.holders: list[str] | None = None
        self._derive()

    def _derive(self) -> None:
        """Make the holders from the blocks; None where they are not blocks."""
        try:
            self.holders = list(map(_HOLDER, self))
        except Exception:  # not blocks: select reads the blocks then
            self.holders = None

    def __setitem__(self, key: Any, value: Any) -> None:
        if type(key) is int:
            at = key + len(self) if key < 0 else key
            list.__setitem__(self, key, value)  # an IndexError as a list's
            self._note(at, at + 1, [value])
        elif type(key) is slice and key.step is None:
            lo, hi, _ = key.indices(len(self))
            if type(value) is not list:
                value = list(value)
            list.__setitem__(self, key, value)
            self._note(lo, max(hi, lo), value)
        else:
            self._lose_track()
            list.__setitem__(self, key, value)

    def _note(self, lo: int, hi: int, items: list[Any]) -> None:
        """items replaced the blocks lo..hi-1: note the span, and keep the holders."""
        self.spans.append((lo, hi, len(items)))
        if self.holders is not None:
            try:
                self.holders[lo:hi] = map(_HOLDER, items)
            except Exception:  # not blocks
                self.holders = None

    def _lose_track(self) -> None:
        self.unknown = True
        self.holders = None

    @property
    def sealed(self) -> bool:
        """Whether the blocks are the ones of the last seal (nothing noted since)."""
        return not self.spans and not self.unknown

    def touched(self) -> tuple[int, int] | None:
        """The span lo..hi-1 of the current list outside which every item is an item of the list
        as it was when last sealed (those before lo at the same index, those from hi on shifted
        by the change in length); None for a change of unknown place."""
        if self.unknown:
            return None
        lo = hi = -1
        for a, b, n in self.spans:
            if lo < 0:
                lo, hi = a, a + n
                continue
            if hi <= a:  # the span so far lies before this assignment
                pass
            elif hi >= b:  # ... or ends after it: its end moves with the items after b
                hi += n - (b - a)
            else:  # ... or ends inside it
                hi = a + n
            lo, hi = min(lo, a), max(hi, a + n)
        return (lo, hi) if lo >= 0 else (0, 0)

    def seal(self) -> None:
        """Take the current items as the ones to note changes from."""
        self.spans.clear()
        if self.unknown or self.holders is None:
            self._derive()
        self.unknown = False


def _unknown_change(name: str) -> Any:
    def method(self: WatchedBlocks, *args: Any, **kwargs: Any) -> Any:
        self._lose_track()
        return getattr(list, name)(self, *args, **kwargs)

    method.__name__ = name
    return method


for _name in ("__delitem__", "__iadd__", "__imul__", "append", "extend", "insert", "pop",
              "remove", "clear", "sort", "reverse"):
    setattr(WatchedBlocks, _name, _unknown_change(_name))
