"""Shared pieces of the comparison harness: paths, progress lines, timing and statistics."""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(os.environ.get("ROOT") or Path(__file__).resolve().parent.parent)
BENCH_DIR = ROOT / "var" / "bench"
RESULTS_DIR = ROOT / "benchmarks" / "results"
PG_URL = os.environ.get("CARBON_LEDGER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

_T0 = time.perf_counter()


def say(message: str) -> None:
    """A progress line on stderr, stamped with the seconds since the harness started."""
    print(f"[bench {time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def fmt_int(n: float) -> str:
    return f"{n:,.0f}"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


@dataclass
class Row:
    """One line of the table (and of latest.json)."""

    name: str
    ours: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""  # e.g. ">= 0.5 x plain", ">= 100,000 events/s", "" for report-only
    passed: bool | None = None  # None: no target (reported only) or not measured
    higher_is_better: bool = True
    ratio: float | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ratio is None and self.ours is not None and self.baseline:
            self.ratio = self.ours / self.baseline

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ours": self.ours, "unit": self.unit, "baseline": self.baseline,
                "baseline_name": self.baseline_name, "ratio": self.ratio, "target": self.target,
                "passed": self.passed, "higher_is_better": self.higher_is_better,
                "notes": self.notes, **({"extra": self.extra} if self.extra else {})}


# Cached registries -----------------------------------------------------------------------------

def registry_path(events: int) -> Path:
    label = f"{events // 1_000_000}m" if events % 1_000_000 == 0 else f"{events // 1000}k"
    return BENCH_DIR / f"registry-{label}.db"


def keys_path(db: Path) -> Path:
    """The keys folder beside a SQLite registry (ledger.keys.default_keys_dir's convention)."""
    return Path(str(db) + ".keys")


def sqlite_url(db: Path) -> str:
    return f"sqlite:///{db}"


_SIDE_FILES = ("-wal", "-shm", ".signer.lock", ".write.lock")  # SQLite's and the registry's


def _remove_db(db: Path) -> None:
    for p in (db, *(Path(f"{db}{suffix}") for suffix in _SIDE_FILES)):
        p.unlink(missing_ok=True)
    shutil.rmtree(keys_path(db), ignore_errors=True)


def ensure_registry(events: int, *, timeout_s: float) -> tuple[Path, dict[str, Any] | None]:
    """The cached registry of `events` events, generated (in a child process) when missing.

    Generation writes to a `.partial` name and renames when complete, so an interrupted run
    never leaves a registry that looks finished. Returns (path, generation stats or None).
    """
    db = registry_path(events)
    if db.exists() and keys_path(db).is_dir():
        return db, None
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    partial = db.with_name(db.name + ".partial")
    _remove_db(partial)
    _remove_db(db)
    say(f"generating a {fmt_int(events)}-event registry at {db} (benchmarks.generate, "
        f"at most {timeout_s / 60:.0f} min)")
    from benchmarks._child import run_child

    stats = run_child(["generate", str(events), str(partial), str(timeout_s)],
                      timeout_s=timeout_s + 120)
    if not stats.get("ok"):
        _remove_db(partial)
        raise RuntimeError(f"generation failed: {stats.get('error')}")
    # Fold the WAL back into the file before renaming (the app closed its connections).
    con = sqlite3.connect(partial)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    for suffix in _SIDE_FILES:
        Path(f"{partial}{suffix}").unlink(missing_ok=True)
    keys_path(partial).rename(keys_path(db))
    partial.rename(db)
    say(f"generated {fmt_int(stats['events'])} events in {stats['seconds']:.1f} s "
        f"({fmt_int(stats['events'] / stats['seconds'])} events/s, {stats['commands']} commands)")
    return db, stats


def scratch_dir(name: str) -> Path:
    """A fresh folder on the same disk as the cached registries (fsync costs alike)."""
    path = BENCH_DIR / "tmp" / f"{name}-{os.getpid()}-{time.monotonic_ns()}"
    path.mkdir(parents=True)
    return path


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
