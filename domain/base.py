"""The base aggregate: every event records who asked (actor) and under which command id."""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

NAMESPACE = uuid5(NAMESPACE_URL, "urn:carbon-ledger:registry")


def aggregate_id(kind: str, *key: str) -> UUID:
    """Deterministic aggregate ids, so that a natural key maps to one stream and duplicates collide."""
    return uuid5(NAMESPACE, "/".join((kind, *key)))


class LedgerAggregate(Aggregate):
    class Event(Aggregate.Event):
        actor: str
        command_id: str

    class Created(Event, Aggregate.Created):
        pass

    def check_invariants(self) -> None:
        """Raise AssertionError when the aggregate's state breaks a rule that must always hold."""

    def _emit(self, event_class: type[Any], actor: str, command_id: str, **fields: Any) -> None:
        self.trigger_event(event_class, actor=actor, command_id=command_id, **fields)
