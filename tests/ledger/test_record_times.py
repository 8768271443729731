"""Record times: each record is dated within its command's signature window, and (rules edition
2) never before the record before it. Checked live and by `verify`, on both stores.

A command's events and its record are one decision: they are dated with the one time the
registry checked the command's signatures against, never before a record this process decided
to write or the store showed it. What registries written before held instead (records of one
command dated a few microseconds apart, in the order of their aggregates rather than of their
making; and, with several writers, commands dated milliseconds before the one before them) is
shown on the fixture and on main's code in the report of this change.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _forge import Forger, open_demo  # type: ignore[import-not-found]

from domain.errors import DomainError
from ledger import demo
from ledger.application import Registry
from ledger.audit import audit_database
from ledger.keys import Keyring
from ledger.records import state_time_ns

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "edition1"
NS = 1_000_000_000
TEN_YEARS_NS = 10 * 365 * 86_400 * NS


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def times(url: str) -> list[tuple[int, str, int]]:
    """(position, topic, time in ns) of every record."""
    with Forger(url) as f:
        rows = f.execute(f"SELECT {f.pos}, topic, state FROM {f.t(f.events)} "
                         f"ORDER BY {f.pos}")
    out = []
    for position, topic, state in rows:
        ns = state_time_ns(bytes(state))
        assert ns is not None
        out.append((position, topic, ns))
    return out


def assert_never_back(url: str) -> None:
    seen = times(url)
    back = [(a[0], b[0]) for a, b in zip(seen, seen[1:], strict=False) if b[2] < a[2]]
    assert not back, f"records dated before the one before them: {back[:5]}"


@pytest.fixture
def demo_app(store_url: str) -> Iterator[tuple[Registry, str]]:
    app = open_demo(store_url)
    yield app, store_url
    app.close()


def audit(app: Registry) -> Any:
    return audit_database(app.recorder, workers=1)


# Live ---------------------------------------------------------------------------------------------

def test_a_commands_records_share_its_decision_time(demo_app: tuple[Registry, str]) -> None:
    app, url = demo_app
    seen = times(url)
    group: list[int] = []
    for position, topic, ns in seen:
        group.append(ns)
        if topic.endswith("CommandRecord.Accepted"):
            assert len(set(group)) == 1, f"the command ending at {position} has several times"
            group = []
    assert_never_back(url)
    assert audit(app).ok


def test_two_writers_never_date_a_record_before_the_one_before_it(store_url: str) -> None:
    """Two registries on one store (as two server processes): each decides at its own time,
    and the one that writes after the other's later-dated records decides again."""
    keyring = Keyring()
    first = Registry(store_url, keyring=keyring, auto_checkpoint=False)
    demo.load(first)
    second = Registry(store_url, keyring=keyring, auto_checkpoint=False)
    errors: list[BaseException] = []

    def work(app: Registry, tag: str) -> None:
        try:
            for i in range(40):
                app.submit("register_participant", "registry", f"{tag}-{i}",
                           {"participant_id": f"{tag}-{i}", "name": tag, "role": "holder"})
        except BaseException as e:  # pragma: no cover - surfaced below
            errors.append(e)

    try:
        threads = [threading.Thread(target=work, args=(a, t))
                   for a, t in ((first, "pa"), (second, "pb"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert len(first.projection().participants) == len(demo.PARTICIPANTS) + 1 + 80
        assert_never_back(store_url)
        report = audit(first)
        assert report.ok, report.failure
    finally:
        first.close()
        second.close()


def test_a_clock_that_goes_back_does_not_date_records_back(tmp_path: Path) -> None:
    clock = Clock(1_900_000_000.0)
    app = Registry(f"sqlite:///{tmp_path / 'r.db'}", keyring=Keyring(), clock=clock,
                   auto_checkpoint=False)
    try:
        demo.load(app)
        last = times(app.url)[-1][2]
        clock.now -= 100  # an NTP step back, say
        out = app.submit("freeze", "fujian-eco", "back-freeze", {"holder": "tonghai-nickel",
                                                                 "reason": "r"})
        assert times(app.url)[-1][2] == last  # dated with the last record's time, not before
        assert out["position"] == app.log_position()
        assert audit(app).ok
    finally:
        app.close()


def test_a_process_behind_the_log_dates_its_records_after_it(store_url: str) -> None:
    """Another host's clock runs 120 s ahead: this one's first write meets the later-dated
    records under the write lock, is decided again, and is dated after them."""
    keyring = Keyring()
    ahead = Registry(store_url, keyring=keyring, clock=Clock(1_900_000_120.0),
                     auto_checkpoint=False)
    behind = Registry(store_url, keyring=keyring, clock=Clock(1_900_000_000.0),
                      auto_checkpoint=False)
    try:
        demo.load(ahead)
        last = times(store_url)[-1][2]
        behind.submit("freeze", "fujian-eco", "behind-freeze", {"holder": "tonghai-nickel",
                                                                "reason": "r"})
        assert times(store_url)[-1][2] >= last
        assert_never_back(store_url)
        assert audit(behind).ok
    finally:
        ahead.close()
        behind.close()


# Forged times: verify ---------------------------------------------------------------------------

def _move(url: str, position: int, by_ns: int) -> None:
    """Date the record at `position` `by_ns` later (earlier if negative); recompute the chain."""
    with Forger(url) as f:
        state = f.state(position)
        from datetime import timedelta

        state["timestamp"] = state["timestamp"] + timedelta(microseconds=by_ns // 1000)
        f.set_state(position, state)
        f.recompute_chain()


def moved(app: Registry, url: str, position: int, by_ns: int) -> str:
    """The audit's failure after the record at `position` was dated `by_ns` otherwise: it must
    be named at that position."""
    _move(url, position, by_ns)
    report = audit(app)
    assert not report.ok and report.failure is not None
    assert report.failure.position == position, report.failure
    return report.failure.what


def first_event_after_the_last_checkpoint(app: Registry, url: str) -> int:
    with Forger(url) as f:
        sizes = f.checkpoint_sizes()
        transfers = f.positions("Ticket.Transferred")
    after = sizes[-1] if sizes else 0
    return next(p for p in transfers if p > after)


def test_an_event_moved_ten_years_is_named(demo_app: tuple[Registry, str]) -> None:
    app, url = demo_app
    app.operator_checkpointer().make()
    checkpoint = app.log_position()
    app.submit("transfer", "shaxian-exchange", "late-trade", {
        "trade_id": "SX-2024-0001", "seller": "tonghai-nickel", "buyer": "jinsen-carbon",
        "ticket_no": "SM-0000001", "quantity_t": 1, "price": "15.00", "mode": "negotiated"})
    position = first_event_after_the_last_checkpoint(app, url)
    assert position > checkpoint
    what = moved(app, url, position, TEN_YEARS_NS)
    assert f"record {position} is dated 20" in what
    assert "after the signature of its command late-trade" in what


def test_an_event_moved_before_its_signature_is_named(demo_app: tuple[Registry, str]) -> None:
    app, url = demo_app
    with Forger(url) as f:
        position = f.positions("Pledge.Created")[0]
    what = moved(app, url, position, -61 * NS)
    assert "61 s before the signature of its command pledge/PL-2021-001" in what


def test_a_command_record_moved_ten_years_is_a_stale_signature(
        demo_app: tuple[Registry, str]) -> None:
    app, url = demo_app
    with Forger(url) as f:
        position = f.positions("CommandRecord.Accepted")[-1]
    assert "stale_signature" in moved(app, url, position, TEN_YEARS_NS)


def test_a_record_dated_before_the_one_before_it_is_named_under_edition_2(
        demo_app: tuple[Registry, str]) -> None:
    """Within the window, but a second before the record before it."""
    app, url = demo_app
    assert app.projection().genesis.rules_edition == 2
    with Forger(url) as f:  # the pledge's record, after its events (dated as it is)
        pledge = f.positions("Pledge.Created")[0]
        position = next(p for p in f.positions("CommandRecord.Accepted") if p > pledge)
    what = moved(app, url, position, -NS)
    assert f"record {position} is dated" in what
    assert "1.000000 s before the record before it" in what and "rules edition 2" in what


@pytest.fixture
def old_url(tmp_path: Path) -> str:
    shutil.copytree(FIXTURE, tmp_path / "old")
    return f"sqlite:///{tmp_path / 'old' / 'registry.db'}"


def test_a_registry_written_before_edition_2_holds_records_dated_back_and_verifies(
        old_url: str) -> None:
    """Why edition 2 alone refuses them: the code before it dated each event when it was
    made and wrote a command's events in the order of their aggregates, so a transfer's trade
    (made after the ticket's event) came first with the later time."""
    seen = times(old_url)
    back = [b for a, b in zip(seen, seen[1:], strict=False) if b[2] < a[2]]
    assert back and all(a[2] - b[2] < NS // 100 for a, b in zip(seen, seen[1:], strict=False)
                        if b[2] < a[2])
    app = Registry(old_url, auto_checkpoint=False)
    try:
        assert audit(app).ok
    finally:
        app.close()


def test_the_window_rule_holds_for_a_registry_written_before_editions(old_url: str) -> None:
    with Forger(old_url) as f:
        position = f.positions("Ticket.Transferred")[0]
    app = Registry(old_url, auto_checkpoint=False)
    try:
        assert "after the signature of its command" in moved(app, old_url, position,
                                                             TEN_YEARS_NS)
    finally:
        app.close()


def test_an_edited_time_cannot_be_written_after(demo_app: tuple[Registry, str]) -> None:
    """A last record dated ten years ahead (with the chain recomputed) does not pull the
    registry's clock along: the next command, dated after it, is refused as stale rather than
    written with a time the audit would refuse."""
    app, url = demo_app
    with Forger(url) as f:
        position = f.positions("CommandRecord.Accepted")[-1]
    _move(url, position, TEN_YEARS_NS)
    app = Registry(url, keyring=app.keyring, auto_checkpoint=False)
    try:
        before = app.log_position()
        with pytest.raises(DomainError) as info:
            app.submit("freeze", "fujian-eco", "after-forged", {"holder": "tonghai-nickel",
                                                                "reason": "r"})
        assert info.value.code == "stale_signature"
        assert app.log_position() == before
    finally:
        app.close()
