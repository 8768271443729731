"""Concurrent writers on both stores: 8 processes race conflicting commands at one registry.

Each worker process ('spawn') opens its own Registry on the same database and loads the same
keys from a Keyring folder, then submits random commands that collide on purpose: transfers of
the very same serials between holders, double pledges of the same units by the bank, compliance
retirements racing for the last tonnes under the 10% cap, freezes and unfreezes racing the
transfers and pledges that read the frozen account, releases racing releases. Afterwards:

* conservation per ticket and one holder/state per unit; no unit under two pledges;
* the compliance cap holds and equals the acknowledged retirements;
* every acknowledged command id is in the log exactly once, no refused one is;
* refusals carry domain codes only ("conflict" exhaustion is tolerated and reported);
* the full audit re-executes the log in its own order and finds every event is what the rules
  give (the log is serialisable in its order).

The HTTP variant runs `carbon-ledger serve --workers 4` on PostgreSQL with 8 client processes
posting signed transfers (and a few freezes), then makes the same checks.

Two former bugs keep tests of their own: concurrent Registry() opens on one PostgreSQL schema
(test_concurrent_open_postgres) and checkpoints whose state commitment must be taken at their own
size even while other writers move the log on (test_checkpoint_commits_to_its_own_size).
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from pathlib import Path
from typing import Any

import pytest
from _load_workers import (  # type: ignore[import-not-found]
    HOLDERS,
    REGULATOR,
    Server,
    build_world,
    check_run,
    cli,
    http_worker,
    open_worker,
    registry_worker,
)

from ledger.application import Registry
from ledger.audit import audit_database
from ledger.keys import Keyring

pytestmark = pytest.mark.slow

WORKERS = 8
COMMANDS_PER_WORKER = 25
HTTP_COMMANDS_PER_WORKER = 15
WORKER_BUDGET_S = 60.0
JOIN_TIMEOUT_S = 120.0

# Small quantities, so that commands collide: 10 t of each ticket per holder.
QUANTITIES = {"SMCER": 60, "FFCER": 100, "CCER": 60}
SPREAD = {"SMCER": 10, "FFCER": 10, "CCER": 5}
EMITTER_T = {"FFCER": 30, "CCER": 20}
EMISSIONS_T = 250  # fujian_ets: FFCER <= 25 t, CCER <= 12 t, all offsets <= 25 t


def _race(target: Any, args: tuple[Any, ...], seeds: int) -> list[tuple[str, str, str, Any]]:
    """Run WORKERS processes of `target(*args, worker, count, seed, budget, barrier, results)`,
    all started together, and gather their results; every process is killed at the end."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    count = args[-1]
    procs = [ctx.Process(target=target, args=(*args[:-1], w, count, seeds * 100 + w,
                                              WORKER_BUDGET_S, barrier, results), daemon=True)
             for w in range(WORKERS)]
    gathered: dict[int, list[tuple[str, str, str, Any]]] = {}
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while len(gathered) < WORKERS and time.monotonic() < deadline:
            try:
                worker, out = results.get(timeout=1)
                gathered[worker] = out
            except queue.Empty:
                if all(not p.is_alive() for p in procs) and results.empty():
                    break
        for p in procs:
            p.join(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=10)
        results.close()
    assert len(gathered) == WORKERS, (
        f"only {len(gathered)} of {WORKERS} workers reported; exit codes "
        f"{[p.exitcode for p in procs]}")
    return [r for w in sorted(gathered) for r in gathered[w]]


def test_racing_commands_from_8_processes(store_url: str, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    operator_key = build_world(store_url, keys, quantities=QUANTITIES, spread=SPREAD,
                               emitter_t=EMITTER_T, emissions_t=EMISSIONS_T)
    results = _race(registry_worker, (store_url, str(keys), COMMANDS_PER_WORKER), seeds=1)
    summary = check_run(store_url, operator_key, results)
    # The workload did collide: some commands won, some lost on the very same units or cap.
    assert summary["acknowledged"] >= WORKERS
    assert summary["refusals"], "no command was refused: the workload did not collide"
    # ~30 compliance retirements of 1 to 8 t race for a 25 t cap: some win, the cap stops others.
    assert any(r[1] == "retire" and r[2] == "ok" for r in results), "no retirement got through"
    assert summary["refusals"].get("cap_exceeded"), "the cap never refused a retirement"


def test_racing_http_transfers_4_server_workers_postgres(pg_url: str, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    operator_key = build_world(pg_url, keys, quantities=QUANTITIES, spread=SPREAD,
                               emitter_t=EMITTER_T, emissions_t=EMISSIONS_T)
    # The server holds the operator key: its workers sign checkpoints while the load runs.
    server = Server(pg_url, keys, workers=4, log=tmp_path / "server.log")
    try:
        server.start()
        results = _race(http_worker, (server.base_url, str(keys), HTTP_COMMANDS_PER_WORKER),
                        seeds=2)
        position = server.position()
    finally:
        server.stop()
    if server.failed_starts:
        print(f"NOTE: `serve --workers 4` failed to start {len(server.failed_starts)} time(s) "
              "(a worker's Registry() hit 'tuple concurrently updated'; see "
              "test_concurrent_open_postgres):\n" + server.failed_starts[0][-600:])
    summary = check_run(pg_url, operator_key, results)
    assert summary["log_size"] == position
    assert summary["acknowledged"] >= WORKERS
    assert any(r[2] == "refused" and r[3] == "units_unavailable" for r in results), \
        "no transfer lost a race for the same serials"
    verify = cli("verify", "--db", pg_url, "--keys", str(keys), "--workers", "1", cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr


OPEN_ROUNDS = 2


def test_concurrent_open_postgres(pg_url: str) -> None:
    """8 processes opening a Registry on one (already created) PostgreSQL schema at once."""
    Registry(pg_url).close()  # the schema and its tables exist before the race
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    procs = [ctx.Process(target=open_worker, args=(pg_url, OPEN_ROUNDS, barrier, results),
                         daemon=True) for _ in range(WORKERS)]
    try:
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=JOIN_TIMEOUT_S) for _ in range(OPEN_ROUNDS * WORKERS)]
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=10)
        results.close()
    failures = [o for o in outcomes if o != "ok"]
    assert not failures, (f"{len(failures)} of {OPEN_ROUNDS * WORKERS} concurrent opens failed: "
                          f"{sorted(set(failures))}")


def test_checkpoint_commits_to_its_own_size(store_url: str, tmp_path: Path) -> None:
    """A write by another process (and a catch-up of the projection, as the server's other
    threads do) between the checkpointer reading the size and signing it."""
    keys = tmp_path / "keys"
    operator_key = build_world(store_url, keys, quantities=QUANTITIES, spread=SPREAD)
    app = Registry(store_url, keyring=Keyring(keys), auto_checkpoint=False)
    other = Registry(store_url, keyring=Keyring(keys), auto_checkpoint=False)
    try:
        app.projection()
        checkpointer = app.operator_checkpointer()
        assert checkpointer is not None
        log_tree = app.log_tree
        interleaved: list[int] = []

        def log_tree_with_a_concurrent_writer(size: int | None = None) -> Any:
            if not interleaved:  # once: another process writes, this process catches up
                other.submit("freeze", REGULATOR, "cp-race-freeze",
                             {"holder": HOLDERS[0], "reason": "written while checkpointing"})
                interleaved.append(app.projection().position)
            return log_tree(size)

        app.log_tree = log_tree_with_a_concurrent_writer  # type: ignore[method-assign]
        made = checkpointer.make()
        assert made is not None and interleaved
        cp, _ = made
        assert interleaved[0] > cp.size  # the write landed after the size was read
        assert cp.state_root == app.projection(as_of=cp.size).commitment.root(), (
            f"the checkpoint at size {cp.size} commits to the state of a later size")
        report = audit_database(app.recorder, operator_key, workers=1)
        assert report.ok, report.failure
    finally:
        app.close()
        other.close()
