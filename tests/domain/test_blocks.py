"""Serial blocks: a ticket's units partitioned into runs of one holder and one state."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import blocks as B

A, P, R, X = "available", "pledged", "retired", "cancelled"


def units(blocks: list[B.Block]) -> list[tuple[str, str, str]]:
    """The naive model: one (holder, state, ref) per serial, serial 1 first."""
    out = []
    for first, last, *attrs in blocks:
        out.extend([tuple(attrs)] * (last - first + 1))
    return out


def blocks_of(model: list[tuple[str, str, str]]) -> list[B.Block]:
    """The canonical block list of a per-unit model: maximal runs of equal attributes."""
    out: list[B.Block] = []
    for n, attrs in enumerate(model, 1):
        if out and out[-1][2:] == attrs:
            out[-1] = (out[-1][0], n, *attrs)
        else:
            out.append((n, n, *attrs))
    return out


# select -------------------------------------------------------------------------------------------

def test_select_takes_the_lowest_serials_of_the_holder_in_that_state() -> None:
    blocks = [(1, 10, "bob", A, ""), (11, 20, "alice", A, ""), (21, 30, "alice", P, "PL-1"),
              (31, 40, "alice", A, ""), (41, 50, "bob", A, "")]
    assert B.select(blocks, "alice", A, "", 15) == [(11, 20), (31, 35)]
    assert B.select(blocks, "alice", P, "PL-1", 3) == [(21, 23)]
    assert B.select(blocks, "bob", A, "", 10) == [(1, 10)]


def test_select_returns_fewer_when_there_are_not_enough() -> None:
    blocks = [(1, 10, "alice", A, ""), (11, 20, "bob", A, "")]
    assert B.select(blocks, "alice", A, "", 25) == [(1, 10)]
    assert B.select(blocks, "carol", A, "", 1) == []
    assert B.select(blocks, "alice", P, "PL-1", 1) == []


def test_select_distinguishes_refs() -> None:
    blocks = [(1, 10, "alice", P, "PL-1"), (11, 20, "alice", P, "PL-2")]
    assert B.select(blocks, "alice", P, "PL-2", 5) == [(11, 15)]


# reassign ----------------------------------------------------------------------------------------

def test_reassign_a_middle_range_splits_a_block_in_three() -> None:
    blocks = [(1, 100, "alice", A, "")]
    assert B.reassign(blocks, [(11, 20)], "bob", A, "") == [
        (1, 10, "alice", A, ""), (11, 20, "bob", A, ""), (21, 100, "alice", A, "")]


def test_reassign_the_head_or_the_tail_splits_in_two() -> None:
    blocks = [(1, 100, "alice", A, "")]
    assert B.reassign(blocks, [(1, 30)], "bob", A, "") == [
        (1, 30, "bob", A, ""), (31, 100, "alice", A, "")]
    assert B.reassign(blocks, [(71, 100)], "bob", A, "") == [
        (1, 70, "alice", A, ""), (71, 100, "bob", A, "")]


def test_reassign_merges_neighbours_that_agree() -> None:
    blocks = [(1, 10, "alice", A, ""), (11, 20, "bob", A, ""), (21, 30, "alice", A, "")]
    assert B.reassign(blocks, [(11, 20)], "alice", A, "") == [(1, 30, "alice", A, "")]


def test_reassign_spanning_several_blocks() -> None:
    blocks = [(1, 10, "alice", A, ""), (11, 20, "bob", A, ""), (21, 30, "carol", A, "")]
    assert B.reassign(blocks, [(5, 25)], "dave", R, "RT-1") == [
        (1, 4, "alice", A, ""), (5, 25, "dave", R, "RT-1"), (26, 30, "carol", A, "")]


def test_reassign_several_ranges_at_once() -> None:
    blocks = [(1, 100, "alice", A, "")]
    assert B.reassign(blocks, [(1, 10), (51, 60)], "alice", P, "PL-1") == [
        (1, 10, "alice", P, "PL-1"), (11, 50, "alice", A, ""), (51, 60, "alice", P, "PL-1"),
        (61, 100, "alice", A, "")]


def test_reassign_keeps_the_state_ref_apart() -> None:
    blocks = [(1, 10, "alice", P, "PL-1"), (11, 20, "alice", A, "")]
    assert B.reassign(blocks, [(11, 20)], "alice", P, "PL-2") == [
        (1, 10, "alice", P, "PL-1"), (11, 20, "alice", P, "PL-2")]


def test_reassign_does_not_mutate_its_input() -> None:
    blocks = [(1, 100, "alice", A, "")]
    B.reassign(blocks, [(1, 10)], "bob", A, "")
    assert blocks == [(1, 100, "alice", A, "")]


def test_reassign_of_a_single_unit_ticket() -> None:
    assert B.reassign([(1, 1, "alice", A, "")], [(1, 1)], "bob", A, "") == [(1, 1, "bob", A, "")]


# normalise, size, count, covered_by, overlapping ---------------------------------------------------

def test_normalise_sorts_and_merges_adjacent_ranges() -> None:
    assert B.normalise([(11, 20), (1, 10), (30, 30)]) == [(1, 20), (30, 30)]
    assert B.size([(1, 20), (30, 30)]) == 21


@pytest.mark.parametrize("ranges", [[(1, 10), (10, 20)], [(5, 6), (1, 10)], [(3, 2)]])
def test_normalise_refuses_overlaps_and_empty_ranges(ranges) -> None:
    with pytest.raises(ValueError):
        B.normalise(ranges)


def test_counting_units_by_holder_state_and_ref() -> None:
    blocks = [(1, 10, "alice", A, ""), (11, 15, "alice", P, "PL-1"), (16, 30, "bob", A, ""),
              (31, 33, "alice", P, "PL-2")]
    assert B.count(blocks) == 33
    assert B.count(blocks, "alice") == 18
    assert B.count(blocks, "alice", P) == 8
    assert B.count(blocks, "alice", P, "PL-2") == 3
    assert B.count(blocks, state=A) == 25


def test_covered_by_counts_the_units_of_a_range_in_a_state() -> None:
    blocks = [(1, 10, "alice", A, ""), (11, 15, "alice", P, "PL-1"), (16, 30, "bob", A, "")]
    assert B.covered_by(blocks, [(5, 20)], "alice", A, "") == 6
    assert B.covered_by(blocks, [(5, 20)], "alice", P, "PL-1") == 5
    assert B.covered_by(blocks, [(5, 20)], "bob", A, "") == 5
    assert B.covered_by_state(blocks, [(1, 30)], "alice", P) == 5


def test_overlapping_finds_every_block_sharing_a_serial() -> None:
    blocks = [(1, 10, "a", A, ""), (11, 20, "b", A, ""), (21, 30, "c", A, "")]
    assert B.overlapping(blocks, 10, 11) == blocks[:2]
    assert B.overlapping(blocks, 15, 15) == [blocks[1]]
    assert B.overlapping(blocks, 1, 30) == blocks
    assert B.overlapping(blocks, 31, 40) == []


# The partition check --------------------------------------------------------------------------------

def test_check_partition_accepts_an_exact_cover() -> None:
    B.check_partition([(1, 10, "a", A, ""), (11, 30, "b", A, "")], 30)


@pytest.mark.parametrize(("blocks", "quantity", "says"), [
    ([(1, 10, "a", A, ""), (12, 30, "b", A, "")], 30, "11"),  # a gap at 11
    ([(1, 10, "a", A, ""), (10, 30, "b", A, "")], 30, "11"),  # 10 twice
    ([(2, 30, "a", A, "")], 30, "1"),  # serial 1 missing
    ([(1, 29, "a", A, "")], 30, "29"),  # short
    ([(1, 31, "a", A, "")], 30, "31"),  # long
    ([(1, 10, "a", A, ""), (11, 5, "b", A, "")], 30, "11"),  # an empty block
    ([], 30, "0"),
])
def test_check_partition_catches_gaps_overlaps_and_wrong_totals(blocks, quantity, says) -> None:
    with pytest.raises(AssertionError) as info:
        B.check_partition(blocks, quantity)
    assert says in str(info.value)


# Properties ---------------------------------------------------------------------------------------

HOLDERS = st.sampled_from(["alice", "bob", "carol"])
STATES = st.sampled_from([(A, ""), (P, "PL-1"), (P, "PL-2"), (R, "RT-1"), (X, "reversal:C-1")])


@st.composite
def reassignments(draw):
    quantity = draw(st.integers(1, 60))
    ops = []
    for _ in range(draw(st.integers(0, 25))):
        cuts = sorted(draw(st.lists(st.integers(1, quantity), min_size=2, max_size=6)))
        # disjoint ranges from pairs of cut points
        ranges = []
        for a, b in zip(cuts[::2], cuts[1::2], strict=False):
            if not ranges or a > ranges[-1][1]:
                ranges.append((a, b))
        state, ref = draw(STATES)
        ops.append((ranges, draw(HOLDERS), state, ref))
    return quantity, ops


@settings(max_examples=100, deadline=None)
@given(reassignments())
def test_random_reassignments_keep_a_canonical_partition_and_conserve_units(case) -> None:
    quantity, ops = case
    blocks: list[B.Block] = [(1, quantity, "alice", A, "")]
    model = units(blocks)
    for ranges, holder, state, ref in ops:
        blocks = B.reassign(blocks, ranges, holder, state, ref)
        for a, b in ranges:
            model[a - 1:b] = [(holder, state, ref)] * (b - a + 1)
        B.check_partition(blocks, quantity)
        assert units(blocks) == model
        assert blocks == blocks_of(model)  # merged: no two neighbours agree
        assert sum(B.count(blocks, state=s) for s in (A, P, R, X)) == quantity
        for h in ("alice", "bob", "carol"):
            assert B.count(blocks, h) == sum(1 for u in model if u[0] == h)


@settings(max_examples=60, deadline=None)
@given(reassignments(), HOLDERS, STATES, st.integers(1, 70))
def test_select_returns_the_lowest_matching_serials(case, holder, state_ref, quantity) -> None:
    total, ops = case
    blocks: list[B.Block] = [(1, total, "alice", A, "")]
    for ranges, h, s, r in ops:
        blocks = B.reassign(blocks, ranges, h, s, r)
    model = units(blocks)
    state, ref = state_ref
    matching = [n for n, u in enumerate(model, 1) if u == (holder, state, ref)]
    picked = B.select(blocks, holder, state, ref, quantity)
    assert [n for a, b in picked for n in range(a, b + 1)] == matching[:quantity]
    assert picked == B.normalise(picked)


@settings(max_examples=100, deadline=None)
@given(reassignments(), HOLDERS, STATES, st.integers(1, 70))
def test_watched_blocks_keep_their_holders_and_select_as_a_plain_list(
        case, holder, state_ref, quantity) -> None:
    """A WatchedBlocks list changed in place keeps the holder of every block beside it, and
    select over it (which searches the holders) picks what select over a plain list picks."""
    total, ops = case
    plain: list[B.Block] = [(1, total, "alice", A, "")]
    watched = B.WatchedBlocks(plain)
    state, ref = state_ref
    for ranges, h, s, r in ops:
        plain = B.reassign(plain, ranges, h, s, r)
        B.reassign_in_place(watched, ranges, h, s, r)
        assert watched == plain
        assert watched.holders == [b[2] for b in plain]
        assert B.select(watched, holder, state, ref, quantity) == B.select(
            plain, holder, state, ref, quantity)


def test_a_change_of_unknown_place_drops_the_holders_until_sealed() -> None:
    watched = B.WatchedBlocks([(1, 5, "alice", A, ""), (6, 9, "bob", A, "")])
    watched.insert(0, (0, 0, "carol", A, ""))
    assert watched.holders is None and watched.touched() is None
    assert B.select(watched, "carol", A, "", 1) == [(0, 0)]  # read from the blocks then
    watched.seal()
    assert watched.holders == ["carol", "alice", "bob"] and watched.touched() == (0, 0)
    watched[1:2] = [7]
    assert watched.holders is None  # select reads the blocks themselves
    assert watched.touched() == (1, 2)


_assignment = st.tuples(st.integers(-12, 12), st.integers(-12, 12), st.integers(0, 4),
                        st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10), st.lists(_assignment, max_size=6))
def test_watched_blocks_name_a_span_outside_which_nothing_changed(
        size: int, changes: list[tuple[int, int, int, bool]]) -> None:
    """Outside the span the list reports, its items are the items it had when sealed: the same
    before the span, and after it the same ones shifted by the change in length."""
    original = [object() for _ in range(size)]
    watched = B.WatchedBlocks(original)
    watched.seal()
    for a, b, n, by_index in changes:
        if by_index:
            if -len(watched) <= a < len(watched):
                watched[a] = object()
        else:
            watched[a:b] = [object() for _ in range(n)]
    span = watched.touched()
    assert span is not None
    lo, hi = span
    shift = len(watched) - size
    assert 0 <= lo <= hi <= len(watched)
    assert all(x is y for x, y in zip(watched[:lo], original[:lo], strict=True))
    assert all(x is y for x, y in zip(watched[hi:], original[hi - shift:], strict=True))
    if not changes or all(by_index and not -size <= a < size for a, _, _, by_index in changes):
        assert lo == hi
