"""Collector settings for long-lived registry processes (ledger.runtime)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ledger import runtime


@pytest.fixture
def restored() -> Iterator[None]:
    before = gc.get_threshold()
    enabled = gc.isenabled()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()
    if enabled:
        gc.enable()


@pytest.mark.usefixtures("restored")
def test_young_passes_are_made_rarer_but_the_collector_stays_on() -> None:
    gc.set_threshold(700, 10, 10)
    runtime.tune_collector()
    assert gc.get_threshold() == (runtime.GC_YOUNG_THRESHOLD, 10, 10)
    assert gc.isenabled()
    gc.set_threshold(0, 10, 10)  # a process that chose to turn it off keeps its choice
    runtime.tune_collector()
    assert gc.get_threshold()[0] == 0
    gc.set_threshold(10 * runtime.GC_YOUNG_THRESHOLD, 10, 10)  # and a higher one stays
    runtime.tune_collector()
    assert gc.get_threshold()[0] == 10 * runtime.GC_YOUNG_THRESHOLD


@pytest.mark.usefixtures("restored")
def test_freezing_exempts_what_lives_now_and_cycles_are_still_freed() -> None:
    class Node:
        pass

    kept = [Node() for _ in range(100)]
    runtime.freeze_heap()
    assert gc.get_freeze_count() >= len(kept)
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle made after the freeze
    del a, b
    assert gc.collect() >= 2
