"""A refusal is final only when it holds at the store's head, and a refused signature is spent.

Two Registry objects on one store stand for two workers (or hosts). `app` has just written, so
it decides its next command without asking the store what is new; `other` writes meanwhile.
Before this was fixed, `app` refused commands that depended on what `other` had written
("no participant … is registered", "no ticket …"), and those refusals were reported as final.

A refused command's signature is recorded in the store (`spent_signatures`, beside the log):
the very same signed request sent again later, to any process, is a `replay`, even when the
state has changed so that the command would now be accepted (issue 19, item 5).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_group_commit import Step, together, transfer  # type: ignore[import-not-found]
from test_group_commit import _setup as setup_cast  # type: ignore[import-not-found]

from domain import commands as C
from domain.errors import DomainError
from ledger.application import Registry, _Pending
from ledger.audit import audit_database
from ledger.keys import Keyring
from ledger.operations import backup, migrate, restore
from ledger.signing import (
    WINDOW_FUTURE_S,
    WINDOW_PAST_S,
    SignedCommand,
    parse_canonical,
    sign_with_keyring,
)
from ledger.store import is_postgres


class Clock:
    """The ledger's clock, moved on by hand (the audit checks signatures against record times,
    so it starts at the real time)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(store_url: str, tmp_path: Path, clock: Clock) -> Iterator[Registry]:
    registry = Registry(store_url, keyring=Keyring(tmp_path / "keys"), clock=clock)
    setup_cast(registry)
    yield registry
    registry.close()


@pytest.fixture
def other(app: Registry, clock: Clock) -> Iterator[Registry]:
    """A second process on the same store."""
    registry = Registry(app.url, keyring=app.keyring, clock=clock)
    yield registry
    registry.close()


def signed(app: Registry, step: Step) -> SignedCommand:
    assert app.keyring is not None
    name, actor, command_id, args = step
    return sign_with_keyring(app.keyring, name, actor, command_id, args, int(app.clock()))


def code_of(app: Registry, command: SignedCommand) -> str:
    with pytest.raises(DomainError) as refused:
        app.execute(command)
    return refused.value.code


def new_participant(pid: str, role: str = "holder") -> Step:
    return ("register_participant", "registry", f"s-{pid}",
            {"participant_id": pid, "name": pid, "role": role})


def new_ticket(ticket_no: str, quantity_t: int = 50) -> Step:
    return ("issue_ticket", "forestry", f"s-{ticket_no}", {
        "ticket_no": ticket_no, "project_id": "P-SM", "standard": "SMCER",
        "period_start": "2021-01-01", "period_end": "2021-12-31", "quantity_t": quantity_t})


# A refusal decided on a state that is behind is decided again -----------------------------------

def test_an_actor_registered_by_another_process_is_not_refused(app: Registry,
                                                                other: Registry) -> None:
    app.submit(*transfer("T-0", 1))  # app wrote last: it decides the next command at once
    other.submit(*new_participant("dave"))
    out = app.submit("grant_mandate", "dave", "c-dave", {"holder": "dave", "exchange": "exch"})
    assert out["holder"] == "dave"


def test_a_ticket_issued_by_another_process_is_not_refused(app: Registry, other: Registry) -> None:
    app.view(lambda p: p.position)  # a read also lets the next decision go without a query
    other.submit(*new_ticket("SM-0000002"))
    out = app.submit("transfer", "exch", "c-t2", {
        "trade_id": "T-2", "seller": "alice", "buyer": "bob", "ticket_no": "SM-0000002",
        "quantity_t": 5, "price": "1.00", "mode": "negotiated"})
    assert out["quantity_t"] == 5


def test_units_received_through_another_process_can_be_sold_at_once(app: Registry,
                                                                     other: Registry) -> None:
    app.submit(*transfer("T-0", 100))  # alice has nothing left, as app sees it
    other.submit(*transfer("T-back", 30, seller="bob", buyer="alice"))
    assert app.submit(*transfer("T-again", 30))["quantity_t"] == 30


def test_in_a_group_each_refusal_is_decided_again_at_head(app: Registry, other: Registry) -> None:
    app.submit(*transfer("T-0", 1))
    other.submit(*new_participant("dave"))
    other.submit(*new_ticket("SM-0000003"))
    results = together(app, [
        ("grant_mandate", "dave", "g-dave", {"holder": "dave", "exchange": "exch"}),
        transfer("T-1", 2),
        ("transfer", "exch", "g-t3", {"trade_id": "T-3", "seller": "alice", "buyer": "bob",
                                      "ticket_no": "SM-0000003", "quantity_t": 5, "price": "1.00",
                                      "mode": "negotiated"}),
        transfer("T-too-much", 1_000),  # refused at head too: that refusal stands
    ])
    assert [r[0] for r in results] == ["ok", "ok", "ok", "insufficient_available"]
    assert audit_database(app.recorder).ok


def test_the_refusals_of_a_group_are_confirmed_together(app: Registry) -> None:
    """Accepted commands are committed together; so are the refusals of the same group
    confirmed (and their signatures stored): one transaction, not one per refusal."""
    calls: list[int] = []
    inner = app.recorder.confirm_refusals

    def counting(refusals: Any, **kwargs: Any) -> Any:
        calls.append(len(refusals))
        return inner(refusals, **kwargs)

    app.recorder.confirm_refusals = counting  # type: ignore[method-assign]
    results = together(app, [transfer("T-1", 1), transfer("T-big-1", 1_000),
                             transfer("T-2", 2), transfer("T-big-2", 2_000),
                             ("freeze", "eco", "g-freeze", {"holder": "nobody", "reason": "r"})])
    assert [r[0] for r in results] == ["ok", "insufficient_available", "ok",
                                       "insufficient_available", "unknown_participant"]
    assert calls == [3]
    assert sorted(row[3] for row in app.recorder.select_spent()) == [
        "exch/T-big-1", "exch/T-big-2", "g-freeze"]


def test_a_refusal_that_holds_at_head_writes_nothing(app: Registry) -> None:
    calls: list[int] = []
    inner = app.recorder.insert_events
    app.recorder.insert_events = lambda *a, **k: calls.append(1) or inner(*a, **k)  # type: ignore[method-assign]
    size = app.log_position()
    assert code_of(app, signed(app, transfer("T-big", 1_000))) == "insufficient_available"
    assert calls == [] and app.log_position() == size


def test_a_retry_of_a_command_that_commits_during_the_refusal_gets_its_outcome(
        app: Registry, other: Registry) -> None:
    """A refusal rests on the command id being free: if the first copy commits (elsewhere)
    before the refusal is confirmed, the retry answers with the first outcome."""
    step = transfer("T-race", 60)
    first = signed(app, step)
    app.submit(*transfer("T-0", 50))  # app: alice has 50, so 60 is refused
    confirm = app.recorder.confirm_refusals
    ran: list[bool] = []

    def first_copy_commits_first(*args: Any, **kwargs: Any) -> Any:
        if not ran:
            ran.append(True)
            other.submit(*transfer("T-back", 50, seller="bob", buyer="alice"))
            other.execute(first)  # the first copy, signed before, now succeeds elsewhere
        return confirm(*args, **kwargs)

    app.recorder.confirm_refusals = first_copy_commits_first  # type: ignore[method-assign]
    out = app.submit(*step)
    assert out["replayed"] is True and out["quantity_t"] == 60


def test_a_refusal_that_keeps_moving_is_confirmed_in_an_exclusive_turn(app: Registry) -> None:
    """After two refusals that did not hold, the command is decided and its refusal confirmed
    while no other process may write (the write lock held since before the decision)."""
    inner = app.recorder.confirm_refusals
    exclusive = app.recorder.exclusive
    calls: list[bool] = []
    turns: list[int] = []

    def moving(refusals: Any, **kwargs: Any) -> Any:
        calls.append(True)
        return ["moved"] * len(refusals) if len(calls) <= 2 else inner(refusals, **kwargs)

    def counted() -> Any:
        turns.append(1)
        return exclusive()

    app.recorder.confirm_refusals = moving  # type: ignore[method-assign]
    app.recorder.exclusive = counted  # type: ignore[method-assign]
    assert code_of(app, signed(app, transfer("T-big", 1_000))) == "insufficient_available"
    assert (len(calls), turns) == (3, [1])
    assert [row[3] for row in app.recorder.select_spent()] == ["exch/T-big"]
    assert app.submit(*transfer("T-after", 1))["quantity_t"] == 1  # the lock was let go


# A refused signature is spent --------------------------------------------------------------------

def test_a_refused_request_sent_again_after_the_state_changed_is_a_replay(
        app: Registry, other: Registry) -> None:
    later = transfer("T-later", 60, seller="bob", buyer="alice")
    request = signed(app, later)  # bob has nothing
    assert code_of(app, request) == "insufficient_available"
    other.submit(*transfer("T-give", 100))  # now bob has 100
    # the very same bytes, to this process and to the other one: refused, nothing written
    size = app.log_position()
    assert code_of(app, request) == "replay"
    assert code_of(other, request) == "replay"
    assert app.log_position() == size
    # the same command signed anew is a new request, and is decided afresh
    assert app.submit(*later)["quantity_t"] == 60
    assert audit_database(app.recorder).ok


def test_a_refused_request_sent_again_unchanged_is_a_replay(app: Registry) -> None:
    request = signed(app, transfer("T-big", 1_000))
    assert code_of(app, request) == "insufficient_available"
    assert code_of(app, request) == "replay"


def test_a_replay_in_a_group_refuses_only_itself(app: Registry) -> None:
    request = signed(app, transfer("T-later", 60, seller="bob", buyer="alice"))
    assert code_of(app, request) == "insufficient_available"
    app.submit(*transfer("T-give", 50))
    group = [_Pending(C.parse(parse_canonical(s.body)), s) for s in (
        signed(app, transfer("T-c", 1)), request, signed(app, transfer("T-d", 1)))]
    app._run_group(group)  # as if the three had arrived together
    assert [p.error.code if isinstance(p.error, DomainError) else p.error for p in group] == [
        None, "replay", None]
    assert [app._record_of(f"exch/{t}") is not None for t in ("T-c", "T-later", "T-d")] == [
        True, False, True]
    assert audit_database(app.recorder).ok


def test_a_request_refused_before_its_signature_verifies_is_not_spent(app: Registry) -> None:
    assert app.keyring is not None
    app.keyring.create("nobody")
    unknown = signed(app, ("grant_mandate", "nobody", "c-x", {"holder": "nobody",
                                                             "exchange": "exch"}))
    assert code_of(app, unknown) == "unknown_participant"
    forged = SignedCommand(body=unknown.body.replace(b"nobody", b"alice"),
                           signatures=unknown.signatures, method=unknown.method, path=unknown.path)
    assert code_of(app, forged) in ("bad_signature", "unknown_key")
    assert app.recorder.select_spent() == []


def test_a_request_refused_for_its_role_is_spent_once_its_signature_verifies(
        app: Registry) -> None:
    """not_authorized is decided before the signature is checked; the refusal checks it then."""
    _, _, command_id, args = new_ticket("SM-0000009")
    request = signed(app, ("issue_ticket", "alice", command_id, args))
    assert code_of(app, request) == "not_authorized"
    assert [row[3] for row in app.recorder.select_spent()] == ["s-SM-0000009"]


def test_spent_signatures_are_forgotten_after_the_signature_window(app: Registry,
                                                                   clock: Clock) -> None:
    first = signed(app, transfer("T-big-1", 1_000))
    assert code_of(app, first) == "insufficient_available"
    assert len(app.recorder.select_spent()) == 1
    clock.now += WINDOW_PAST_S + WINDOW_FUTURE_S + 1
    assert code_of(app, first) == "stale_signature"  # and the window protects it from now on
    second = signed(app, transfer("T-big-2", 1_000))
    assert code_of(app, second) == "insufficient_available"
    assert [row[3] for row in app.recorder.select_spent()] == ["exch/T-big-2"]


def test_spent_signatures_are_not_part_of_the_audit_and_migrate_with_the_log(
        app: Registry, tmp_path: Path) -> None:
    assert code_of(app, signed(app, transfer("T-big", 1_000))) == "insufficient_available"
    report = audit_database(app.recorder)
    assert report.ok
    target = Registry(f"sqlite:///{tmp_path / 'migrated.db'}", clock=app.clock)
    try:
        result = migrate(app, target)
        assert result["spent_signatures"] == 1
        assert target.recorder.select_spent() == app.recorder.select_spent()
    finally:
        target.close()


def test_backup_and_restore_keep_spent_signatures(app: Registry, tmp_path: Path) -> None:
    """A restored registry refuses the refused requests of the original as replays (while
    their signatures are young), and verifies: the table rides along, outside the audit."""
    request = signed(app, transfer("T-big", 1_000))
    assert code_of(app, request) == "insufficient_available"
    backup(app.url, tmp_path / "registry.bak")
    if is_postgres(app.url):
        import psycopg

        # a database beside the test session's, with the same schema name
        session_db, schema = app.url.split("?", 1)
        name = f"carbon_ledger_restore_{secrets.token_hex(4)}"
        with psycopg.connect(session_db, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        target_url = f"{session_db.rsplit('/', 1)[0]}/{name}?{schema}"
    else:
        name, target_url = "", f"sqlite:///{tmp_path / 'restored.db'}"
    try:
        restore(tmp_path / "registry.bak", target_url)
        target = Registry(target_url, clock=app.clock)
        try:
            assert target.recorder.select_spent() == app.recorder.select_spent() != []
            assert audit_database(target.recorder).ok
            assert code_of(target, request) == "replay"
        finally:
            target.close()
    finally:
        if name:
            with psycopg.connect(session_db, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
