"""The base aggregate: every event records who asked (actor) and under which command id."""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

NAMESPACE = uuid5(NAMESPACE_URL, "urn:carbon-ledger:registry")


@lru_cache(maxsize=100_000)
def aggregate_id(kind: str, *key: str) -> UUID:
    """Deterministic aggregate ids, so that a natural key maps to one stream and duplicates collide."""
    return uuid5(NAMESPACE, "/".join((kind, *key)))


def _clone(value: Any) -> Any:
    if isinstance(value, list):
        if value and isinstance(value[0], tuple):
            return list(value)
        return [_clone(v) for v in value]
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, set):
        return set(value)
    return value


class LedgerAggregate(Aggregate):
    class Event(Aggregate.Event):
        actor: str
        command_id: str

    class Created(Event, Aggregate.Created):
        pass

    def fork(self) -> LedgerAggregate:
        """A copy that a command may change without touching this one.

        Copy on write: the copy shares this aggregate's containers until its first event, which
        clones them (values are str/int/bool or containers of them; tuples are immutable). A
        command reads many aggregates and changes few, and state changes only by events
        (`trigger_event`), so most copies are never cloned."""
        twin = object.__new__(type(self))
        state = dict(self.__dict__)
        state["_pending_events"] = []
        state["_shared"] = True
        twin.__dict__ = state
        return twin

    def trigger_event(self, *args: Any, **kwargs: Any) -> None:
        if self.__dict__.pop("_shared", False):  # a fork's first change: own its containers
            state = self.__dict__
            for key, value in state.items():
                if key != "_pending_events":
                    state[key] = _clone(value)
        super().trigger_event(*args, **kwargs)

    def check_invariants(self) -> None:
        """Raise AssertionError when the aggregate's state breaks a rule that must always hold."""

    def _emit(self, event_class: type[Any], actor: str, command_id: str, **fields: Any) -> None:
        self.trigger_event(event_class, actor=actor, command_id=command_id, **fields)
