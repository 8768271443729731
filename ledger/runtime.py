"""Settings for processes that keep a registry in memory for a long time (servers, benchmarks).

Python's cyclic garbage collector runs a young-generation pass every 700 net allocations, and
now and then a full pass over every object in the process. A registry process allocates mostly
objects that live on (events, serial blocks, histories) and keeps millions of them: the frequent
passes find almost nothing to free, and a full pass over a large projection takes long enough to
show in request latencies. Two settings address this; neither turns the collector off, so
reference cycles are still freed:

- `tune_collector()` makes young passes rarer (every GC_YOUNG_THRESHOLD allocations);
- `freeze_heap()` moves the objects alive now (a loaded projection) out of the collector's
  sight, so that later full passes walk only what came after (gc.freeze).
"""

from __future__ import annotations

import gc

GC_YOUNG_THRESHOLD = 50_000


def tune_collector() -> None:
    young, middle, old = gc.get_threshold()
    if young and young < GC_YOUNG_THRESHOLD:  # 0 means disabled: leave that choice alone
        gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def freeze_heap() -> None:
    """Collect once, then exempt every surviving object from later passes."""
    gc.collect()
    gc.freeze()
