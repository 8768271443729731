"""The base aggregate: every event records who asked (actor) and under which command id."""

from __future__ import annotations

import dataclasses
from functools import cache, lru_cache
from hashlib import sha1
from typing import Any
from uuid import NAMESPACE_URL, UUID, SafeUUID, uuid5

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

NAMESPACE = uuid5(NAMESPACE_URL, "urn:carbon-ledger:registry")


@lru_cache(maxsize=100_000)
def aggregate_id(kind: str, *key: str) -> UUID:
    """Deterministic aggregate ids, so that a natural key maps to one stream and duplicates collide."""
    return name_uuid("/".join((kind, *key)))


_NAMESPACE_BYTES = NAMESPACE.bytes
_VERSION_5 = 5 << 76  # the version field: 0101 in bits 76-79
_VARIANT_RFC = 0x8000 << 48  # the variant field: 10 in bits 62-63
_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_new = object.__new__
_set = object.__setattr__


def name_uuid(name: str) -> UUID:
    """uuid.uuid5(NAMESPACE, name), made without UUID.__init__'s argument checks (half the
    time; a trade id is a new name for every trade)."""
    digest = sha1(_NAMESPACE_BYTES + name.encode()).digest()
    value = (int.from_bytes(digest[:16], "big") & _CLEAR) | _VERSION_5 | _VARIANT_RFC
    made = _new(UUID)
    _set(made, "int", value)
    _set(made, "is_safe", SafeUUID.unknown)
    return made


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


@cache
def _fields(event_class: type[Any]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(event_class))


def _new_event(event_class: type[Any], fixed: dict[str, Any], given: dict[str, Any]) -> Any:
    """An event of `event_class` with the fields in its dataclass order, as its __init__ sets
    them; TypeError for a missing or an unknown field, as __init__ would raise."""
    state = {}
    n = 0
    for name in _fields(event_class):
        if name in fixed:
            state[name] = fixed[name]
        elif name in given:
            state[name] = given[name]
            n += 1
        elif name == "timestamp":
            state[name] = event_class.create_timestamp()
        else:
            raise TypeError(f"{event_class.__qualname__} needs the field {name!r}")
    if n != len(given):
        unknown = sorted(set(given) - set(_fields(event_class)))
        raise TypeError(f"{event_class.__qualname__} has no field {', '.join(unknown)}")
    event = object.__new__(event_class)
    object.__setattr__(event, "__dict__", state)
    return event


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

    def _own_containers(self) -> None:
        """A fork's first change: clone the containers it shares with its original."""
        if self.__dict__.pop("_shared", False):
            state = self.__dict__
            for key, value in state.items():
                if key != "_pending_events":
                    state[key] = _clone(value)

    def trigger_event(self, event_class: type[Any], **kwargs: Any) -> None:
        self._own_containers()
        # What the library's trigger_event does, without its keyword juggling and dataclass
        # __init__: the same event, its fields in the same order (so the same stored bytes).
        event = _new_event(event_class, {"originator_id": self._id,
                                         "originator_version": self._version + 1}, kwargs)
        event.mutate(self)
        self._pending_events.append(event)

    @classmethod
    def _create(cls, event_class: type[Any], *, id: Any = None, **kwargs: Any) -> Any:  # noqa: A002
        """The library's _create for an aggregate with a given id, made the same way as
        trigger_event above."""
        if id is None:
            return super()._create(event_class, **kwargs)
        event = _new_event(event_class, {"originator_id": id, "originator_version": 1,
                                         "originator_topic": get_topic(cls)}, kwargs)
        agg = event.mutate(None)
        agg._pending_events.append(event)
        return agg

    def check_invariants(self) -> None:
        """Raise AssertionError when the aggregate's state breaks a rule that must always hold."""

    def _emit(self, event_class: type[Any], actor: str, command_id: str, **fields: Any) -> None:
        self.trigger_event(event_class, actor=actor, command_id=command_id, **fields)
