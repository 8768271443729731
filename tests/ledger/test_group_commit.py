"""Group commit: commands that arrive together from several threads are decided one after
another and recorded in one transaction. Each keeps its own outcome, refusal and log position,
later commands see what earlier ones in the group changed, and a conflict with another writer
makes every command of the group be decided again on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent

from domain.errors import DomainError
from ledger.application import Registry
from ledger.audit import audit_database
from ledger.keys import Keyring

Step = tuple[str, str, str, dict[str, Any]]


def _setup(app: Registry) -> None:
    cast = [("forestry", "issuer"), ("eco", "regulator"), ("exch", "exchange"),
            ("alice", "holder"), ("bob", "holder"), ("carol", "holder")]
    app.submit("initialise", "registry", "s-init",
               {"origin": "test/group", "operator_id": "registry", "name": "op"})
    for p, r in cast:
        app.submit("register_participant", "registry", f"s-{p}",
                   {"participant_id": p, "name": p, "role": r})
    app.submit("register_project", "forestry", "s-P", {
        "project_id": "P-SM", "name": "n", "owner": "alice", "county": "c", "area_mu": 1,
        "standard": "SMCER"})
    app.submit("issue_ticket", "forestry", "s-SM", {
        "ticket_no": "SM-0000001", "project_id": "P-SM", "standard": "SMCER",
        "period_start": "2020-01-01", "period_end": "2020-12-31", "quantity_t": 100})
    for h in ("alice", "bob"):
        app.submit("grant_mandate", h, f"s-mandate-{h}", {"holder": h, "exchange": "exch"})


@pytest.fixture
def app(store_url: str, tmp_path: Path) -> Iterator[Registry]:
    registry = Registry(store_url, keyring=Keyring(tmp_path / "keys"))
    _setup(registry)
    yield registry
    registry.close()


def transfer(trade_id: str, qty: int, seller: str = "alice", buyer: str = "bob") -> Step:
    return ("transfer", "exch", f"exch/{trade_id}", {
        "trade_id": trade_id, "seller": seller, "buyer": buyer, "ticket_no": "SM-0000001",
        "quantity_t": qty, "price": "10.00", "mode": "negotiated"})


class Writes:
    """Counts the store's write transactions."""

    def __init__(self, app: Registry, fail_first: bool = False) -> None:
        self.calls = 0
        self.fail_first = fail_first
        inner = app.recorder.insert_events

        def counting(stored: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.fail_first and self.calls == 1:
                raise IntegrityError("another writer came first (simulated)")
            return inner(stored, **kwargs)

        app.recorder.insert_events = counting  # type: ignore[method-assign]


def together(app: Registry, steps: list[Step]) -> list[tuple[str, Any]]:
    """Submit every step from its own thread, all queued before any is decided, so that they
    make one group; each step's ("ok", outcome), (error code, None) or ("!Exception", None)."""
    results: list[tuple[str, Any]] = [("", None)] * len(steps)
    signed = []
    assert app.keyring is not None
    from ledger.signing import sign_with_keyring
    for name, actor, command_id, args in steps:
        signed.append(sign_with_keyring(app.keyring, name, actor, command_id, args,
                                        int(app.clock())))

    def run(i: int) -> None:
        try:
            results[i] = ("ok", app.execute(signed[i]))
        except DomainError as e:
            results[i] = (e.code, None)
        except Exception as e:  # noqa: BLE001 - reported as the step's result
            results[i] = (f"!{type(e).__name__}", None)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(steps))]
    with app._commit_lock:  # hold the leader's seat until everything is queued
        for i, t in enumerate(threads):
            t.start()
            deadline = time.monotonic() + 10
            while len(app._queue) < i + 1 and time.monotonic() < deadline:
                time.sleep(0.001)
        assert len(app._queue) == len(steps)
    for t in threads:
        t.join(timeout=30)
    return results


def test_a_group_is_one_transaction_with_a_position_per_command(app: Registry) -> None:
    writes = Writes(app)
    results = together(app, [transfer(f"T-{i}", 1) for i in range(8)])
    assert writes.calls == 1
    assert [code for code, _ in results] == ["ok"] * 8
    positions = [outcome["position"] for _, outcome in results]
    assert positions == sorted(positions) and len(set(positions)) == 8
    assert positions[-1] == app.log_position()
    view = app.projection()
    assert view.balances("bob")["totals"]["available_t"] == 8
    for outcome in results:  # each position is that command's record: a retry answers with it
        again = app.submit(*transfer(outcome[1]["command_id"].split("/")[1], 1))
        assert again["replayed"] and again["position"] == outcome[1]["position"]
    assert audit_database(app.recorder).ok


def test_a_refusal_in_a_group_refuses_only_that_command(app: Registry) -> None:
    app.submit(*transfer("T-warm", 95))  # alice keeps 5 t
    before = app.log_position()
    writes = Writes(app)
    results = together(app, [transfer("T-1", 3), transfer("T-2", 3), transfer("T-3", 2),
                             transfer("T-4", 1)])
    assert [code for code, _ in results] == ["ok", "insufficient_available", "ok",
                                              "insufficient_available"]
    assert writes.calls == 1
    assert app.projection().balances("bob")["totals"]["available_t"] == 100
    records = app.recorder.select_records(before + 1, 100)
    assert sum(1 for r in records if r.topic.startswith("domain.command:")) == 2
    assert audit_database(app.recorder).ok


def test_later_commands_in_a_group_see_what_earlier_ones_changed(app: Registry) -> None:
    writes = Writes(app)
    results = together(app, [
        transfer("T-1", 60),                                # alice -> bob
        transfer("T-2", 50, seller="bob", buyer="alice"),   # bob sells what he just got
        ("freeze", "eco", "c-freeze", {"holder": "alice", "reason": "order"}),
        transfer("T-3", 1),                                 # alice is frozen by now
    ])
    assert [code for code, _ in results] == ["ok", "ok", "ok", "account_frozen"]
    assert writes.calls == 1  # reading alice before the freeze does not spoil the group
    view = app.projection()
    assert view.balances("alice")["totals"]["available_t"] == 90
    assert view.balances("bob")["totals"]["available_t"] == 10
    assert audit_database(app.recorder).ok


def test_the_same_command_twice_in_the_queue_is_recorded_once(app: Registry) -> None:
    step = transfer("T-1", 5)
    results = together(app, [step, step])
    assert [code for code, _ in results] == ["ok", "ok"]
    first, second = results[0][1], results[1][1]
    assert not first.get("replayed") and second["replayed"]
    assert first["position"] == second["position"]
    assert app.projection().balances("bob")["totals"]["available_t"] == 5


def test_a_conflicting_group_is_decided_again_command_by_command(app: Registry) -> None:
    writes = Writes(app, fail_first=True)
    results = together(app, [transfer(f"T-{i}", 1) for i in range(5)])
    assert [code for code, _ in results] == ["ok"] * 5
    assert writes.calls == 1 + 5  # the failed group, then one transaction per command
    assert app.projection().balances("bob")["totals"]["available_t"] == 5
    assert audit_database(app.recorder).ok


def test_a_store_failure_refuses_every_command_of_the_group(app: Registry) -> None:
    before = app.log_position()

    def broken(stored: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    app.recorder.insert_events = broken  # type: ignore[method-assign]
    results = together(app, [transfer(f"T-{i}", 1) for i in range(3)])
    assert [code for code, _ in results] == ["!RuntimeError"] * 3  # each caller got the error
    assert app._queue == []
    del app.recorder.insert_events
    assert app.log_position() == before
    assert app.submit(*transfer("T-9", 1))["position"] > before


def test_many_threads_writing_at_once_share_transactions(app: Registry) -> None:
    writes = Writes(app)
    n_threads, per_thread = 8, 10
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            for i in range(per_thread):
                app.submit(*transfer(f"T-{t}-{i}", 1))
        except BaseException as e:  # pragma: no cover - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert app.projection().balances("bob")["totals"]["available_t"] == n_threads * per_thread
    assert writes.calls <= n_threads * per_thread
    assert audit_database(app.recorder).ok


def test_a_view_sees_what_another_process_wrote(app: Registry, store_url: str) -> None:
    """Read-your-writes across processes: a second registry on the same store writes; the
    first one's next view shows it, and its next decision is made against it."""
    other = Registry(store_url, keyring=app.keyring)
    try:
        assert app.view(lambda p: p.balances("bob")["totals"]["available_t"]) == 0
        other.submit(*transfer("T-other", 7))
        assert app.view(lambda p: p.balances("bob")["totals"]["available_t"]) == 7
        app.submit(*transfer("T-mine", 93))  # exactly what alice has left
        with pytest.raises(DomainError) as refused:
            other.submit(*transfer("T-late", 1))
        assert refused.value.code == "insufficient_available"
    finally:
        other.close()


def test_a_stale_decision_is_caught_and_decided_again(app: Registry, store_url: str) -> None:
    """This process wrote last and decides without asking the store; another process has
    written since. The version checks catch the stale decision, and the retry catches up."""
    app.submit(*transfer("T-first", 1))  # this process wrote last: its next decision is at once
    other = Registry(store_url, keyring=app.keyring)
    try:
        other.submit(*transfer("T-other", 98))  # alice keeps 1 t, unseen by `app` so far
        writes = Writes(app)
        with pytest.raises(DomainError) as refused:
            app.submit(*transfer("T-stale", 2))
        assert refused.value.code == "insufficient_available"
        assert writes.calls == 1  # the stale attempt conflicted; the retry refused
        assert app.submit(*transfer("T-last", 1))["position"] == app.log_position()
    finally:
        other.close()
    assert audit_database(app.recorder).ok


def test_written_records_taken_into_the_projection_equal_a_rebuild(app: Registry) -> None:
    together(app, [transfer(f"T-{i}", 1 + i % 3) for i in range(6)])
    app.submit("freeze", "eco", "c-freeze", {"holder": "bob", "reason": "check"})
    live = app.projection()
    fresh = Registry(app.url, keyring=app.keyring) if not app.url.endswith(":memory:") else None
    rebuilt = (fresh or app).rebuild()
    try:
        for holder in ("alice", "bob", "carol"):
            assert live.balances(holder) == rebuilt.balances(holder)
            assert live.history(holder=holder) == rebuilt.history(holder=holder)
        assert live.ticket("SM-0000001") == rebuilt.ticket("SM-0000001")
        assert live.commitment.root() == rebuilt.commitment.root()
        assert live.position == rebuilt.position
    finally:
        if fresh is not None:
            fresh.close()


def test_an_sqlite_writer_waits_for_another_processs_write_then_gives_up(
        db_url: str, tmp_path: Path) -> None:
    import fcntl

    from ledger.store import sqlite_path

    app = Registry(db_url, keyring=Keyring(tmp_path / "keys"))
    try:
        _setup(app)
        before = app.log_position()
        app.recorder.WRITER_WAIT_S = 0.2
        with open(f"{sqlite_path(db_url)}.write.lock", "a+") as held:  # another writer's turn
            fcntl.flock(held.fileno(), fcntl.LOCK_EX)
            started = time.monotonic()
            with pytest.raises(DomainError, match="writing for more than") as refused:
                app.submit(*transfer("T-1", 1))
            assert refused.value.code == "store_unavailable"
            assert 0.2 <= time.monotonic() - started < 5
            fcntl.flock(held.fileno(), fcntl.LOCK_UN)
        assert app.log_position() == before
        assert app.submit(*transfer("T-1", 1))["position"] > before  # its turn came
    finally:
        app.close()


def test_a_group_stops_taking_commands_once_it_holds_many_records(
        app: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    import ledger.application as application

    monkeypatch.setattr(application, "MAX_GROUP_EVENTS", 6)  # two transfers' records
    writes = Writes(app)
    results = together(app, [transfer(f"T-{i}", 1) for i in range(5)])
    assert [code for code, _ in results] == ["ok"] * 5
    assert writes.calls == 3  # 2 + 2 + 1 commands
    positions = [outcome["position"] for _, outcome in results]
    assert positions == sorted(positions)  # still in arrival order
    assert app._queue == []
    assert audit_database(app.recorder).ok


def test_in_an_exclusive_turn_other_processes_wait_and_the_turn_writes(
        store_url: str, tmp_path: Path) -> None:
    """After two lost races a command is decided and written in an exclusive turn (the writers'
    lock file on SQLite, the table lock in an open transaction on PostgreSQL). Another
    registry's write waits for the turn; the write inside does not wait for itself."""
    app = Registry(store_url, keyring=Keyring(tmp_path / "keys"))
    other = Registry(store_url, keyring=app.keyring)
    try:
        _setup(app)
        done: list[int] = []
        worker = threading.Thread(
            target=lambda: done.append(other.submit(*transfer("T-other", 1))["position"]))
        with app.recorder.exclusive():
            worker.start()
            time.sleep(0.3)
            assert not done  # the other registry's write waits for this turn
            mine = app.submit(*transfer("T-mine", 1))["position"]
        worker.join(timeout=20)
        assert done and done[0] > mine
        with app.recorder.exclusive():  # a turn with nothing written lets the lock go
            pass
        assert app.submit(*transfer("T-after", 1))["position"] == app.log_position()
        assert audit_database(app.recorder).ok
    finally:
        other.close()
        app.close()


def test_after_two_lost_races_a_command_takes_an_exclusive_turn(app: Registry) -> None:
    lost = {"n": 0}
    turns = {"n": 0}
    insert, exclusive = app.recorder.insert_events, app.recorder.exclusive

    def losing(stored: Any, **kwargs: Any) -> Any:
        if lost["n"] < 2:
            lost["n"] += 1
            raise IntegrityError("another writer came first (simulated)")
        return insert(stored, **kwargs)

    def counted() -> Any:
        turns["n"] += 1
        return exclusive()

    app.recorder.insert_events = losing  # type: ignore[method-assign]
    app.recorder.exclusive = counted  # type: ignore[method-assign]
    outcome = app.submit(*transfer("T-1", 1))
    assert lost["n"] == 2 and turns["n"] == 1
    assert outcome["position"] == app.log_position()
    del app.recorder.insert_events, app.recorder.exclusive
    assert audit_database(app.recorder).ok


def test_the_read_set_is_checked_only_when_the_log_grew_since_the_decision(app: Registry) -> None:
    """A decision made at log size n: if the log is still n when its records are written, no
    version can have moved, and the store skips the query; otherwise every version is checked."""
    from domain.participant import Participant

    alice = Participant.id_for("alice")
    version = app.projection().aggregates[alice].version
    size = app.log_position()
    wrong = [(alice, version + 5)]  # a version alice never had: any check would refuse it
    record = next(r for r in app.recorder.select_records(size, 1))
    stored = StoredEvent(Participant.id_for("nobody-1"), 1, record.topic, record.state)
    with pytest.raises(IntegrityError):
        app.recorder.insert_events([stored], read_set=wrong, decided_at=size - 1)
    with pytest.raises(IntegrityError):
        app.recorder.insert_events([stored], read_set=wrong)
    assert app.log_position() == size  # nothing was written by the refused attempts
    assert app.recorder.insert_events([stored], read_set=wrong, decided_at=size) == [size + 1]
