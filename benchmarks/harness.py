"""The comparison harness behind ops/bench: our figures beside baselines measured in the same run.

    python -m benchmarks.harness --generate   # generate and cache the 1M-event registry, then stop
    python -m benchmarks.harness --quick      # 100k-event registry, every workload sized down
    python -m benchmarks.harness              # 1M-event registry (generated first if missing)

Prints one table and writes benchmarks/results/latest.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import BENCH_DIR, PG_URL, RESULTS_DIR, Row, ensure_registry, fmt_int, say
from ledger.runtime import tune_collector

FULL_EVENTS = 1_000_000
QUICK_EVENTS = 100_000
WORKLOADS = ("single", "signing", "batch", "http", "http-scaling", "refusals", "rebuild", "audit",
             "merkle", "asof")


@dataclass
class Sizes:
    """How big each workload is; --quick shrinks them so the whole run takes about 2 minutes."""

    events: int
    rounds: int  # interleaved rounds of single transfers (ours, plain, raw) per backend
    single_per_round: int  # transfers per contender per round (SQLite)
    pg_single_per_round: int
    batch_rounds: int
    batches_per_round: dict[int, int]  # batch size -> batches per contender per round
    http_seconds: float
    http_procs: int
    http_threads: int
    merkle_samples: int
    generate_timeout_s: float
    lanes: int  # lanes (ticket + two holders) per fresh registry of the write workloads
    audit_budget_s: float  # 0: audit the whole registry; else stop after this long (partial)
    audit_runs: int  # full audits, each in a child process of its own: the median is reported


QUICK = Sizes(events=QUICK_EVENTS, rounds=3, single_per_round=60, pg_single_per_round=60,
              batch_rounds=3, batches_per_round={100: 2, 1000: 1}, http_seconds=5.0,
              http_procs=2, http_threads=4, merkle_samples=300, generate_timeout_s=600, lanes=4,
              audit_budget_s=15, audit_runs=1)
FULL = Sizes(events=FULL_EVENTS, rounds=5, single_per_round=200, pg_single_per_round=200,
             batch_rounds=5, batches_per_round={100: 5, 1000: 2}, http_seconds=10.0,
             http_procs=2, http_threads=4, merkle_samples=2000, generate_timeout_s=3600, lanes=8,
             audit_budget_s=0, audit_runs=3)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ops/bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generate", action="store_true",
                   help="generate and cache the 1M-event registry (skipped if present), then stop")
    p.add_argument("--quick", action="store_true",
                   help="a 100k-event registry and every workload sized down (about 2 minutes)")
    p.add_argument("--only", default="", help=f"comma-separated workloads among {','.join(WORKLOADS)}")
    p.add_argument("--skip", default="", help="comma-separated workloads to leave out")
    p.add_argument("--pg", default=PG_URL, help="a PostgreSQL server to create scratch databases "
                   "on (default %(default)s; set CARBON_LEDGER_BENCH_PG); 'none' to skip")
    p.add_argument("--http-workers", type=int, default=None,
                   help="uvicorn workers for the HTTP workload (default: a sweep over 1 and 2)")
    p.add_argument("--out", default=str(RESULTS_DIR / "latest.json"), help="where to write the JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # As the server and the CLI run (ledger.runtime); ours and the baselines share this process.
    tune_collector()
    started = time.perf_counter()
    if args.generate:
        db, stats = ensure_registry(FULL_EVENTS, timeout_s=FULL.generate_timeout_s)
        if stats is None:
            say(f"{db} is present; nothing to generate (delete it to generate it again)")
        return 0
    sizes = QUICK if args.quick else FULL
    chosen = [w for w in (args.only.split(",") if args.only else WORKLOADS) if w]
    skipped = {w for w in args.skip.split(",") if w}
    unknown = set(chosen) | skipped
    unknown -= set(WORKLOADS)
    if unknown:
        raise SystemExit(f"unknown workloads: {', '.join(sorted(unknown))}")
    chosen = [w for w in chosen if w not in skipped]

    from benchmarks import workloads as W

    header = machine_header(args, sizes)
    rows: list[Row] = []
    db = None
    if {"rebuild", "audit", "merkle", "asof"} & set(chosen):
        t = time.perf_counter()
        db, stats = ensure_registry(sizes.events, timeout_s=sizes.generate_timeout_s)
        header["registry"] = {"path": str(db), "events_target": sizes.events}
        if stats is not None:
            header["registry"]["generated"] = {k: stats.get(k) for k in
                                               ("events", "commands", "seconds")}
            header["registry"]["generate_wall_s"] = round(time.perf_counter() - t, 1)
    found = None if args.pg == "none" else W.pg_available(args.pg)
    header["postgres"] = found["version"] if found else "not available"
    pg = W.PgScratch(args.pg) if found else None
    try:
        for name in chosen:
            say(f"workload {name}")
            t = time.perf_counter()
            try:
                if name == "single":
                    rows += W.single_transfers(sizes, pg)
                elif name == "batch":
                    rows += W.batch_transfers(sizes, pg)
                elif name == "http":
                    rows += W.http_load(sizes, args.http_workers)
                elif name == "signing":
                    rows += W.signing_overhead(sizes)
                elif name == "http-scaling":
                    rows += W.http_scaling(sizes, pg)
                elif name == "refusals":
                    rows += W.refusals(sizes, pg)
                elif name == "rebuild":
                    rows += W.rebuild(db, sizes)
                elif name == "audit":
                    rows += W.audit(db, sizes)
                elif name == "merkle":
                    rows += W.merkle_proofs(db, sizes)
                elif name == "asof":
                    rows += W.as_of_query(db, sizes)
            except Exception as e:  # one broken workload must not hide the others
                say(f"workload {name} failed: {type(e).__name__}: {e}")
                rows.append(Row(f"{name} (failed)", None, "", notes=f"{type(e).__name__}: {e}"))
            say(f"workload {name} took {time.perf_counter() - t:.1f} s")
    finally:
        if pg is not None:
            pg.drop()
        shutil.rmtree(BENCH_DIR / "tmp", ignore_errors=True)
    header["seconds"] = round(time.perf_counter() - started, 1)
    print_table(rows, header)
    write_json(Path(args.out), rows, header)
    return 0


def machine_header(args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    return {"mode": "quick" if args.quick else "full",
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                        "date": dt.datetime.now(dt.UTC).date().isoformat(),
                        "platform": platform.platform(), "processor": _cpu_model()},
            "sizes": {k: v for k, v in vars(sizes).items()}}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _num(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    if unit in ("µs", "s", "ms"):
        return f"{v:,.3f}" if v < 10 else f"{v:,.1f}"
    return fmt_int(v) if abs(v) >= 100 else f"{v:,.2f}"


def print_table(rows: list[Row], header: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    m = header["machine"]
    title = (f"carbon-ledger benchmarks ({header['mode']}, {m['cpu_count']} CPUs, Python "
             f"{m['python']}, {header['date']}, {header['seconds']} s)")
    table = Table(title=title, show_lines=False)
    for col, kw in (("workload", {}), ("ours", {"justify": "right"}), ("unit", {}),
                    ("comparison", {"justify": "right"}), ("vs", {}),
                    ("ratio", {"justify": "right"}), ("target", {}), ("result", {})):
        table.add_column(col, **kw)
    for r in rows:
        result = {True: "[green]pass[/]", False: "[red]MISS[/]", None: "report"}[r.passed]
        table.add_row(r.name, _num(r.ours, r.unit), r.unit, _num(r.baseline, r.unit),
                      r.baseline_name or "—", "—" if r.ratio is None else f"{r.ratio:.2f}",
                      r.target or "—", result)
    console = Console(width=max(Console().width, 160))
    console.print(table)
    for r in rows:
        if r.notes:
            console.print(f"[dim]{r.name}: {r.notes}[/]")


def write_json(path: Path, rows: list[Row], header: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"header": header, "rows": [r.to_json() for r in rows]},
                              indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    say(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
