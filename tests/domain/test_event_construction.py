"""LedgerAggregate makes its events without the library's keyword handling; they must be the
events the library would make: the same fields in the same order, so the same stored bytes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.domain import Aggregate

from domain.base import LedgerAggregate
from domain.ticket import Ticket
from domain.trade import Trade
from ledger import demo
from ledger.application import Registry
from ledger.keys import Keyring
from ledger.transcoder import MsgpackTranscoder

WHEN = datetime(2021, 11, 18, 9, 30, tzinfo=UTC)


def _library_path(m: pytest.MonkeyPatch) -> None:
    """LedgerAggregate with the library's own _create and trigger_event (forks still copied on
    their first change)."""
    def trigger(self: Any, event_class: type[Any], given: dict[str, Any]) -> None:
        self._own_containers()
        Aggregate.trigger_event(self, event_class, **given)

    m.setattr(LedgerAggregate, "_trigger", trigger)  # under trigger_event and _emit
    m.setattr(LedgerAggregate, "_create", classmethod(
        lambda cls, event_class, **kw: Aggregate._create.__func__(cls, event_class, **kw)))


def _trade_and_ticket() -> tuple[list[Any], list[Any]]:
    trade = Trade.settle(actor="ex", command_id="c-1", exchange="ex", trade_id="T-1", seller="a",
                         buyer="b", ticket_no="SM-0000001", quantity_t=3, ranges=[[1, 3]],
                         price_fen=1500, mode="negotiated", batch_id="", timestamp=WHEN)
    ticket = Ticket._create(Ticket.Issued, id=Ticket.id_for("SM-0000001"), actor="forestry",
                            command_id="c-0", timestamp=WHEN, **_issue_fields())
    ticket.collect_events()
    ticket.trigger_event(Ticket.Transferred, actor="ex", command_id="c-1", trade_id="T-1",
                         exchange="ex", seller="a", buyer="b", ranges=[[1, 3]], timestamp=WHEN)
    return trade.collect_events(), ticket.collect_events()


def _issue_fields() -> dict[str, Any]:
    names = [f for f in Ticket.Issued.__dataclass_fields__ if f not in (
        "originator_id", "originator_version", "timestamp", "originator_topic", "actor",
        "command_id")]
    values = {"ticket_no": "SM-0000001", "project_id": "P-1", "standard": "SMCER",
              "owner": "a", "quantity_t": 10, "period_start": "2020-01-01",
              "period_end": "2020-12-31"}
    return {n: values.get(n, "x") for n in names}


def _as_items(events: list[Any]) -> list[list[tuple[str, Any]]]:
    return [list(vars(e).items()) for e in events]


def test_fast_events_equal_the_librarys(monkeypatch: pytest.MonkeyPatch) -> None:
    ours = [_as_items(evs) for evs in _trade_and_ticket()]
    with monkeypatch.context() as m:
        _library_path(m)
        theirs = [_as_items(evs) for evs in _trade_and_ticket()]
    assert ours == theirs
    transcoder = MsgpackTranscoder()
    for mine, lib in zip(ours, theirs, strict=True):
        for a, b in zip(mine, lib, strict=True):
            strip = {"originator_id", "originator_version"}
            assert (transcoder.encode({k: v for k, v in a if k not in strip})
                    == transcoder.encode({k: v for k, v in b if k not in strip}))


def test_missing_or_unknown_fields_are_refused_like_the_library() -> None:
    with pytest.raises(TypeError):
        Trade._create(Trade.Settled, id=Trade.id_for("ex", "T-2"), actor="ex", command_id="c")
    with pytest.raises(TypeError):
        Trade.settle(actor="ex", command_id="c-1", exchange="ex", trade_id="T-3", seller="a",
                     buyer="b", ticket_no="SM-0000001", quantity_t=3, ranges=[[1, 3]],
                     price_fen=1500, mode="negotiated", batch_id="", colour="blue")


def _run_demo(app: Registry) -> None:
    for name, actor, command_id, args in demo.story():
        try:
            app.submit(name, actor, command_id, args)
        except Exception:  # noqa: BLE001 - the story's expected refusals
            pass


def _shapes(tmp_path: Path) -> list[tuple[int, str, list[str]]]:
    app = Registry(f"sqlite:///{tmp_path}/r.db", keyring=Keyring(tmp_path / "keys"))
    try:
        _run_demo(app)
        transcoder = MsgpackTranscoder()
        return [(r.originator_version, r.topic, list(transcoder.decode(r.state)))
                for r in app.recorder.select_records(1, 100_000)]
    finally:
        app.close()


def test_the_demo_story_stores_the_same_fields_in_the_same_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours = _shapes(tmp_path / "ours")
    _library_path(monkeypatch)
    theirs = _shapes(tmp_path / "theirs")
    assert len(ours) > 50
    assert ours == theirs


def test_aggregates_built_from_created_events_equal_the_librarys(tmp_path: Path) -> None:
    """Every kind of aggregate the demo creates, rebuilt from its stored events, has the same
    attributes in the same order whether its created event is mutated our way or the library's."""
    app = Registry(f"sqlite:///{tmp_path}/r.db", keyring=Keyring(tmp_path / "keys"))
    try:
        _run_demo(app)
        created = [app.mapper.to_domain_event(s) for s in _stored_firsts(app)]
        kinds = {type(e) for e in created}
        assert len(kinds) >= 8
        for event in created:
            ours = event.mutate(None)
            theirs = Aggregate.Created.mutate(event, None)
            assert type(ours) is type(theirs)
            assert list(vars(ours).items()) == list(vars(theirs).items())
    finally:
        app.close()


def test_aggregates_replayed_from_every_event_equal_the_librarys(tmp_path: Path) -> None:
    """Every aggregate of the demo, replayed from all its stored events: our mutate and the
    library's give the same attributes in the same order, and refuse the same wrong events."""
    from eventsourcing.domain import (
        CanInitAggregate,
        CanMutateAggregate,
        OriginatorIDError,
        OriginatorVersionError,
    )
    from eventsourcing.persistence import StoredEvent

    app = Registry(f"sqlite:///{tmp_path}/r.db", keyring=Keyring(tmp_path / "keys"))
    try:
        _run_demo(app)
        ours: dict[Any, Any] = {}
        theirs: dict[Any, Any] = {}
        later = 0
        for r in app.recorder.select_records(1, 100_000):
            event = app.mapper.to_domain_event(StoredEvent(r.originator_id, r.originator_version,
                                                           r.topic, r.state))
            oid = event.originator_id
            if r.originator_version == 1:
                ours[oid] = event.mutate(None)
                theirs[oid] = CanInitAggregate.mutate(event, None)
            else:
                later += 1
                ours[oid] = event.mutate(ours[oid])
                theirs[oid] = CanMutateAggregate.mutate(event, theirs[oid])
                # (another aggregate, once there is one: the genesis's second event, its rules
                # edition, comes before any other aggregate)
                others = [a for k, a in ours.items() if k != oid][:1]
                for wrong, error in ((ours[oid], OriginatorVersionError),
                                     *((a, OriginatorIDError) for a in others)):
                    with pytest.raises(error):
                        event.mutate(wrong)
            assert list(vars(ours[oid]).items()) == list(vars(theirs[oid]).items())
        assert later > 10
    finally:
        app.close()


def _stored_firsts(app: Registry) -> list[Any]:
    from eventsourcing.persistence import StoredEvent

    return [StoredEvent(r.originator_id, r.originator_version, r.topic, r.state)
            for r in app.recorder.select_records(1, 100_000) if r.originator_version == 1]


def test_records_are_stored_as_the_library_maps_them(tmp_path: Path) -> None:
    app = Registry(f"sqlite:///{tmp_path}/r.db", keyring=Keyring(tmp_path / "keys"))
    try:
        _run_demo(app)
        from eventsourcing.persistence import StoredEvent

        events = [app.mapper.to_domain_event(StoredEvent(r.originator_id, r.originator_version,
                                                         r.topic, r.state))
                  for r in app.recorder.select_records(1, 100_000)]
        assert len(events) > 20
        assert app.to_stored(events) == [app.mapper.to_stored_event(e) for e in events]
    finally:
        app.close()


def test_an_event_without_a_time_is_dated_as_the_library_dates_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Now, in the library's time zone (eventsourcing.domain.TZINFO, read at each event); an
    event class with a create_timestamp of its own is dated by it."""
    import eventsourcing.domain as library

    before = datetime.now(UTC)
    trade = Trade.settle(actor="ex", command_id="c-1", exchange="ex", trade_id="T-1", seller="a",
                         buyer="b", ticket_no="SM-0000001", quantity_t=3, ranges=[[1, 3]],
                         price_fen=1500, mode="negotiated", batch_id="")
    (event,) = trade.collect_events()
    assert event.timestamp.tzinfo is library.TZINFO and before <= event.timestamp <= datetime.now(UTC)

    from datetime import timedelta, timezone
    east = timezone(timedelta(hours=8))
    monkeypatch.setattr(library, "TZINFO", east)
    (event,) = Trade.settle(actor="ex", command_id="c-2", exchange="ex", trade_id="T-2",
                            seller="a", buyer="b", ticket_no="SM-0000001", quantity_t=3,
                            ranges=[[1, 3]], price_fen=1500, mode="negotiated",
                            batch_id="").collect_events()
    assert event.timestamp.tzinfo is east

    monkeypatch.setattr(Trade.Settled, "create_timestamp", staticmethod(lambda: WHEN))
    (event,) = Trade.settle(actor="ex", command_id="c-3", exchange="ex", trade_id="T-3",
                            seller="a", buyer="b", ticket_no="SM-0000001", quantity_t=3,
                            ranges=[[1, 3]], price_fen=1500, mode="negotiated",
                            batch_id="").collect_events()
    assert event.timestamp == WHEN


def test_a_unit_of_work_adds_only_an_aggregate_that_does_not_exist() -> None:
    """UnitOfWork.add refuses an aggregate whose id exists, whether the unit of work has looked
    it up before or not; one found absent (as a handler's absent() leaves it) is added without
    asking the store again."""
    from ledger.handlers import UnitOfWork

    def trade(trade_id: str) -> Trade:
        return Trade.settle(actor="ex", command_id="c-1", exchange="ex", trade_id=trade_id,
                            seller="s", buyer="b", ticket_no="T-1", quantity_t=1,
                            ranges=[[1, 1]], price_fen=100, mode="listing", batch_id="")

    stored = trade("T-1")
    asked: list[UUID] = []

    def load(agg_id: UUID) -> Trade | None:
        asked.append(agg_id)
        return stored if agg_id == stored.id else None

    with pytest.raises(AssertionError, match="exists"):
        UnitOfWork(load).add(trade("T-1"))  # not looked up before
    uow = UnitOfWork(load)
    assert uow.find(Trade, stored.id) is stored
    with pytest.raises(AssertionError, match="exists"):
        uow.add(trade("T-1"))  # looked up before
    uow = UnitOfWork(load)
    new = trade("T-2")
    uow.absent(Trade, new.id, "trade T-2")
    asked.clear()
    assert uow.add(new) is new and asked == [] and uow.created == [new]
    assert uow.find(Trade, new.id) is new
