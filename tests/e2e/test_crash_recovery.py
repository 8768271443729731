"""Crash recovery on both stores: SIGKILL in the middle of a load, then restart and finish.

(a) `carbon-ledger serve` takes a load of signed transfers from a thread that records every
    response; the server is killed with SIGKILL in the middle of the load and restarted on the
    same database; the load resends what was in flight (same command id, new signature) and
    finishes. Every acknowledged command must be in the log exactly once, nothing half-applied
    (the audit re-executes every command and checks the hash chain, so a half-written command
    fails it), and the log continues: the next command gets the next position and
    `carbon-ledger verify` exits 0.
(b) A batch import (settle_batch of 500 transfers, one after another, through Registry.submit in
    a subprocess) is killed with SIGKILL mid-way: each batch is then wholly present or wholly
    absent, every acknowledged batch is present, the audit and `carbon-ledger verify` pass, and
    the import can be finished (what was recorded replays, the rest is appended after the head).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from _load_workers import (  # type: ignore[import-not-found]
    EXCHANGE,
    HOLDERS,
    TICKETS,
    Server,
    batch_importer,
    batch_plan,
    build_world,
    check_units,
    cli,
    command_ids_in_log,
    events_by_command,
    post_signed,
    record_commands,
    replay_units,
    trades_by_batch,
)

from ledger.application import Registry
from ledger.audit import audit_database
from ledger.keys import Keyring

pytestmark = pytest.mark.slow

FF = TICKETS["FFCER"]
LOAD_COMMANDS = 60
KILL_AFTER_ACKS = 20
LOAD_BUDGET_S = 90.0
BATCHES = 20  # (each seller's 5,000 FFCER cover its 7 batches of 500)
BATCH_SIZE = 500
KILL_AFTER_BATCHES = 3
WAIT_S = 90.0

# Plenty of FFCER for every holder, so that the load's transfers are accepted.
WORLD_Q = {"SMCER": 60, "FFCER": 40_000, "CCER": 60}
WORLD_SPREAD = {"FFCER": 5_000}


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def _transfer(i: int, rng: random.Random) -> dict[str, Any]:
    seller, buyer = rng.sample(HOLDERS, 2)
    return {"trade_id": f"CR-{i:04d}", "seller": seller, "buyer": buyer, "ticket_no": FF,
            "quantity_t": rng.randint(1, 3), "price": "10.50", "mode": "negotiated"}


@dataclass
class Answer:
    command_id: str
    status: int
    body: dict[str, Any]
    replayed: bool
    position: int | None
    in_doubt: bool  # a request of this command may have reached the server before it died


class Load(threading.Thread):
    """Signed transfers, one at a time; a command whose request failed is resent (new signature,
    same command id) until it gets an answer, against whatever `base_url` is current."""

    def __init__(self, key: Any, count: int) -> None:
        super().__init__(name="crash-load", daemon=True)
        self.key = key
        self.count = count
        self.base_url = ""
        self.answers: dict[str, Answer] = {}
        self.unanswered: list[str] = []
        self.halt = threading.Event()
        self.in_flight = threading.Event()  # set while a request is on its way

    @property
    def acked(self) -> int:
        return sum(1 for a in list(self.answers.values()) if a.status in (200, 201))

    def run(self) -> None:
        rng = random.Random(7)
        deadline = time.monotonic() + LOAD_BUDGET_S
        for i in range(self.count):
            command_id = f"crash-load-{i:04d}"
            args = _transfer(i, rng)
            in_doubt = False
            while not self.halt.is_set() and time.monotonic() < deadline:
                self.in_flight.set()
                try:
                    r = post_signed(self.base_url, self.key, EXCHANGE, "transfer", args, command_id)
                except httpx.ConnectError:  # nothing was sent: the server is down
                    time.sleep(0.1)
                    continue
                except httpx.TransportError:  # sent, and the answer was lost
                    in_doubt = True
                    time.sleep(0.1)
                    continue
                finally:
                    self.in_flight.clear()
                if r.status_code >= 500:
                    in_doubt = True
                    time.sleep(0.1)
                    continue
                position = r.headers.get("X-Log-Position")
                self.answers[command_id] = Answer(
                    command_id, r.status_code, r.json(),
                    r.headers.get("Idempotent-Replayed") == "true",
                    int(position) if position else None, in_doubt)
                break
            else:
                self.unanswered.append(command_id)
                return


def test_server_killed_mid_load(store_url: str, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    operator_key = build_world(store_url, keys, quantities=WORLD_Q, spread=WORLD_SPREAD)
    # No operator key on the server: it signs no checkpoints (their thread races the request
    # threads, see test_concurrency_stores.py::test_checkpoint_commits_to_its_own_size).
    server_keys = tmp_path / "server-keys"
    server_keys.mkdir(mode=0o700)
    server = Server(store_url, server_keys, workers=1, log=tmp_path / "server.log")
    exchange_key = Keyring(keys).get(EXCHANGE)
    load = Load(exchange_key, LOAD_COMMANDS)
    try:
        server.start()
        load.base_url = server.base_url
        load.start()
        _wait_for(lambda: load.acked >= KILL_AFTER_ACKS or not load.is_alive(), WAIT_S,
                  f"{KILL_AFTER_ACKS} acknowledged transfers")
        assert load.is_alive(), "the load ended before the server was killed"
        load.in_flight.wait(timeout=10)  # aim at a request on its way, at a random moment
        time.sleep(random.Random().uniform(0.0, 0.015))
        server.kill9()  # in the middle of the load: no shutdown, no cleanup
        acked_before_restart = load.acked
        time.sleep(0.5)  # the load keeps knocking at the dead server
        server.start()
        load.base_url = server.base_url
        load.join(timeout=LOAD_BUDGET_S + 10)
        assert not load.is_alive(), "the load did not finish"

        # The log continues: the next command gets the next position.
        head = server.position()
        rng = random.Random(99)
        after = post_signed(server.base_url, exchange_key, EXCHANGE, "transfer",
                            {**_transfer(9999, rng), "trade_id": "CR-AFTER"}, "crash-after-restart")
        assert after.status_code == 201, after.text
        after_position = int(after.headers["X-Log-Position"])
        # A command acknowledged before the crash, sent again, is answered from the log.
        first = load.answers["crash-load-0000"]
        rng0 = random.Random(7)
        again = post_signed(server.base_url, exchange_key, EXCHANGE, "transfer",
                            _transfer(0, rng0), "crash-load-0000")
        assert again.status_code == 201, again.text
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert again.json() == first.body
    finally:
        load.halt.set()
        load.join(timeout=30)
        server.stop()

    answers = list(load.answers.values())
    in_doubt = [a for a in answers if a.in_doubt]
    print(f"\nload on {store_url.split(':')[0]}: {len(answers)} answered, {acked_before_restart} "
          f"acknowledged before the restart, {len(in_doubt)} in doubt at the crash "
          f"({sum(a.replayed for a in in_doubt)} of them found recorded after the restart)")
    assert not load.unanswered, load.unanswered
    assert len(answers) == LOAD_COMMANDS
    refused = {a.command_id: a.body.get("code") for a in answers if a.status not in (200, 201)}
    assert not refused, f"transfers refused: {refused}"
    assert all(a.body.get("command_id") == a.command_id for a in answers)
    assert 0 < acked_before_restart < LOAD_COMMANDS

    app = Registry(store_url)
    try:
        counts = command_ids_in_log(app)
        not_once = {a.command_id: counts.get(a.command_id, 0) for a in answers
                    if counts.get(a.command_id, 0) != 1}
        assert not not_once, f"acknowledged commands not in the log exactly once: {not_once}"
        assert counts.get("crash-after-restart") == 1
        fresh = [a.position for a in answers if not a.replayed]
        assert all(p is not None for p in fresh) and len(set(fresh)) == len(fresh)
        # the first command after the restart: records head+1 .. head+3 (ticket, trade, record)
        assert after_position == head + 3 == app.log_position()
        assert record_commands(app, head + 1, head + 3) == ["crash-after-restart"] * 3
        problems = check_units(app.projection()) + replay_units(app)
        assert not problems, problems
        report = audit_database(app.recorder, operator_key, workers=1)
        assert report.ok, f"the audit fails after the crash: {report.failure}"
    finally:
        app.close()
    verify = cli("verify", "--db", store_url, "--keys", str(keys), "--workers", "1", cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="ascii").splitlines()
    except OSError:
        return []


def test_batch_import_killed_mid_way(store_url: str, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    operator_key = build_world(store_url, keys, quantities=WORLD_Q, spread=WORLD_SPREAD)
    acks = tmp_path / "acks.txt"
    ctx = multiprocessing.get_context("spawn")
    importer = ctx.Process(target=batch_importer, daemon=True,
                           args=(store_url, str(keys), BATCHES, BATCH_SIZE, str(acks)))
    try:
        importer.start()
        _wait_for(lambda: len(_lines(acks)) >= KILL_AFTER_BATCHES or not importer.is_alive(),
                  WAIT_S, f"{KILL_AFTER_BATCHES} acknowledged batches")
        # somewhere inside the next batch or so: a batch of 500 takes a few tens of ms, and
        # the import must still be running when it is killed
        time.sleep(random.Random().uniform(0.0, 0.05))
        assert importer.is_alive(), f"the import ended before it was killed ({importer.exitcode})"
        os.kill(importer.pid, signal.SIGKILL)
        importer.join(timeout=30)
    finally:
        if importer.is_alive():
            importer.kill()
            importer.join(timeout=10)
    assert importer.exitcode == -signal.SIGKILL
    acked = [line.split()[0] for line in _lines(acks)]
    assert len(acked) < BATCHES

    app = Registry(store_url)
    try:
        trades, _ = trades_by_batch(app)
        records = events_by_command(app)
        commands = command_ids_in_log(app)
        present = []
        for k in range(BATCHES):
            batch_id = f"BATCH-{k:03d}"
            command_id = f"import/{batch_id}"
            n = trades.get(batch_id, 0)
            assert n in (0, BATCH_SIZE), f"{batch_id} is half present: {n} of {BATCH_SIZE} trades"
            assert records.get(command_id, 0) == (2 * BATCH_SIZE + 1 if n else 0), (
                f"{batch_id}: {records.get(command_id, 0)} records")
            assert commands.get(command_id, 0) == (1 if n else 0)
            if n:
                present.append(batch_id)
        assert present == [f"BATCH-{k:03d}" for k in range(len(present))], present
        assert present[:len(acked)] == acked, "an acknowledged batch is missing"
        assert len(present) in (len(acked), len(acked) + 1)
        print(f"\nimport on {store_url.split(':')[0]} killed after {len(acked)} acknowledged "
              f"batches; {len(present)} present (the one in flight "
              f"{'was' if len(present) > len(acked) else 'was not'} committed)")
        problems = check_units(app.projection()) + replay_units(app)
        assert not problems, problems
        report = audit_database(app.recorder, operator_key, workers=1)
        assert report.ok, f"the audit fails after the kill: {report.failure}"
    finally:
        app.close()
    verify = cli("verify", "--db", store_url, "--keys", str(keys), "--workers", "1", cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # Finish the import: what was recorded replays, the rest is appended after the head.
    app = Registry(store_url, keyring=Keyring(keys))
    try:
        head = app.log_position()
        first_new = None
        for k in range(BATCHES):
            batch_id, args = batch_plan(k, BATCH_SIZE)
            outcome = app.submit("settle_batch", EXCHANGE, f"import/{batch_id}", args)
            assert outcome["count"] == BATCH_SIZE
            assert bool(outcome.get("replayed")) == (batch_id in present), batch_id
            if first_new is None and not outcome.get("replayed"):
                first_new = (batch_id, outcome["position"])
        assert first_new is not None
        assert first_new[1] == head + 2 * BATCH_SIZE + 1
        assert set(record_commands(app, head + 1, first_new[1])) == {f"import/{first_new[0]}"}
        trades, _ = trades_by_batch(app)
        assert all(trades[f"BATCH-{k:03d}"] == BATCH_SIZE for k in range(BATCHES))
        assert all(v == 1 for v in command_ids_in_log(app).values())
        report = audit_database(app.recorder, operator_key, workers=1)
        assert report.ok, f"the audit fails after the import was finished: {report.failure}"
    finally:
        app.close()
