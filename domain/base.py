"""The base aggregate: every event records who asked (actor) and under which command id."""

from __future__ import annotations

import dataclasses
import inspect
import keyword
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from functools import cache, lru_cache
from hashlib import sha1
from typing import Any
from uuid import NAMESPACE_URL, UUID, SafeUUID, uuid5

from eventsourcing import domain as _library
from eventsourcing.domain import (
    Aggregate,
    OriginatorIDError,
    OriginatorVersionError,
    _init_mentions_id,
)
from eventsourcing.utils import get_topic, resolve_topic

NAMESPACE = uuid5(NAMESPACE_URL, "urn:carbon-ledger:registry")
_LIBRARY_TIMESTAMP = Aggregate.Event.create_timestamp  # (a staticmethod: the function itself)
_datetime_now = datetime.now

# The time every event made in this context is dated with (see dated); None: now, as made.
_EVENT_TIME: ContextVar[datetime | None] = ContextVar("carbon_ledger_event_time", default=None)
_event_time = _EVENT_TIME.get


@contextmanager
def dated(when: datetime) -> Iterator[None]:
    """Date every event made inside (by a class dated the library's way) with `when`: the events
    a command yields and its record are one decision, made at one time, the time the registry
    checked the command's signatures against."""
    token = _EVENT_TIME.set(when)
    try:
        yield
    finally:
        _EVENT_TIME.reset(token)


def _now_or_dated() -> datetime:
    return _event_time() or _datetime_now(_library.TZINFO)


def id_memo(kind: str) -> Any:
    """aggregate_id(kind, key) for one kind of aggregate keyed by one string, memoised in a plain
    dict (a lookup of the key's cached hash, against lru_cache's tuple of the arguments): the
    ids of participants and tickets are asked for several times per trade. The memo is emptied
    when it grows past 100,000 keys."""
    memo: dict[str, UUID] = {}

    def id_for(key: str) -> UUID:
        found = memo.get(key)
        if found is None:
            if len(memo) >= 100_000:
                memo.clear()
            found = memo[key] = new_aggregate_id(kind, key)
        return found

    return id_for


def new_aggregate_id(kind: str, *key: str) -> UUID:
    """Deterministic aggregate ids, so that a natural key maps to one stream and duplicates
    collide; made anew each time (see aggregate_id)."""
    return name_uuid("/".join((kind, *key)))


# the ids asked for again and again (participants, tickets, pledges ...), memoised
aggregate_id = lru_cache(maxsize=100_000)(new_aggregate_id)


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
    return uuid_of_int((int.from_bytes(digest[:16], "big") & _CLEAR) | _VERSION_5 | _VARIANT_RFC)


def uuid_of_int(value: int) -> UUID:
    """UUID(int=value) for 0 <= value < 2**128, made without UUID.__init__'s argument checks."""
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


_FIXED = ("originator_id", "originator_version", "originator_topic")  # given by position
_NOW = object()  # a maker's timestamp when none is given: the class's own is made


def _maker(event_class: type[Any]) -> Callable[..., Any]:
    """make(originator_id, originator_version[, originator_topic], **fields): an event of the
    class with its fields in dataclass order, as its __init__ sets them, dated as the class
    dates its events unless `timestamp` is given; TypeError for a field missing, unknown or
    given twice. Made once per class from its field names, so Python binds the keywords: no
    dicts are merged or walked per event."""
    names = _fields(event_class)
    if not all(name.isidentifier() and not keyword.iskeyword(name) for name in names):
        raise TypeError(f"{event_class.__qualname__} has a field that is not a name")
    fixed = [name for name in _FIXED if name in names]
    rest = [name for name in names if name not in fixed and name != "timestamp"]
    keywords = rest + (["timestamp=_NOW"] if "timestamp" in names else [])
    params = ", ".join(fixed) + (", /" if fixed else "") + (
        (", *, " if fixed else "*, ") + ", ".join(keywords) if keywords else "")
    source = (f"def make({params}):\n"
              # the class's create_timestamp, looked up per event as the library does: the
              # library's own is datetime.now in its time zone (or the time `dated` gives)
              + ("    if timestamp is _NOW:\n"
                 "        timestamp = (_dated() or _now(_library.TZINFO)\n"
                 "                     if cls.create_timestamp is _LIBRARY\n"
                 "                     else cls.create_timestamp())\n"
                 if "timestamp" in names else "")
              + "    event = _new(cls)\n"
              + f"    _set(event, '__dict__', {{{', '.join(f'{name!r}: {name}' for name in names)}}})\n"
              + "    return event\n")
    space: dict[str, Any] = {"_NOW": _NOW, "_now": _datetime_now, "_library": _library,
                             "_dated": _event_time,
                             "_LIBRARY": _LIBRARY_TIMESTAMP,
                             "_new": object.__new__, "_set": object.__setattr__,
                             "cls": event_class}
    exec(source, space)  # noqa: S102 - the source is made of the class's own field names
    make = _makers[event_class] = space["make"]
    return make


_makers: dict[type[Any], Callable[..., Any]] = {}


def _new_event(event_class: type[Any], fixed: tuple[Any, ...], given: dict[str, Any]) -> Any:
    """An event of `event_class` from its originator id, version (and topic, for a created
    event) and its other fields: see _maker. TypeError for a missing or an unknown field, as
    __init__ would raise."""
    make = _makers.get(event_class) or _maker(event_class)
    try:
        return make(*fixed, **given)
    except TypeError:  # a field missing, unknown or given twice: named as __init__ names it
        return _new_event_checked(event_class, dict(zip(_FIXED, fixed, strict=False)), given)


def _new_event_checked(event_class: type[Any], fixed: dict[str, Any], given: dict[str, Any]) -> Any:
    """_new_event's way for a call whose fields do not match the class's: field by field, to
    name what is missing or unknown."""
    state = {}
    n = 0
    for name in _fields(event_class):
        if name in fixed:
            state[name] = fixed[name]
        elif name in given:
            state[name] = given[name]
            n += 1
        elif name == "timestamp":
            state[name] = (_now_or_dated() if event_class.create_timestamp is _LIBRARY_TIMESTAMP
                           else event_class.create_timestamp())
        else:
            raise TypeError(f"{event_class.__qualname__} needs the field {name!r}")
    if n != len(given):
        unknown = sorted(set(given) - set(_fields(event_class)))
        raise TypeError(f"{event_class.__qualname__} has no field {', '.join(unknown)}")
    event = object.__new__(event_class)
    object.__setattr__(event, "__dict__", state)
    return event


@cache
def _init_names(aggregate_class: type[Any]) -> frozenset[str]:
    """The parameter names of an aggregate class's __init__ (as the library filters them)."""
    return frozenset(inspect.signature(aggregate_class.__init__).parameters)


class LedgerAggregate(Aggregate):
    class Event(Aggregate.Event):
        actor: str
        command_id: str

        def mutate(self, aggregate: Any) -> Any:
            """The library's CanMutateAggregate.mutate (the same checks, the same changes), with
            the aggregate's attributes read and set directly rather than through its properties."""
            state = aggregate.__dict__
            originator_id = self.originator_id
            # (the same object, for an event the aggregate triggered: no UUID.__eq__ call)
            if originator_id is not state["_id"] and originator_id != state["_id"]:
                raise OriginatorIDError(originator_id, state["_id"])
            if self.originator_version != state["_version"] + 1:
                raise OriginatorVersionError(self.originator_version, state["_version"] + 1)
            self.apply(aggregate)
            state["_version"] = self.originator_version
            state["_modified_on"] = self.timestamp
            return aggregate

    class Created(Event, Aggregate.Created):
        def mutate(self, aggregate: Any) -> Any:
            """The library's CanInitAggregate.mutate, with the names the aggregate's __init__
            takes looked up once per class."""
            assert aggregate is None
            cls = resolve_topic(self.originator_topic)  # the library keeps topics resolved
            agg = cls.__new__(cls)
            fields = self.__dict__
            agg.__base_init__(fields["originator_id"], fields["originator_version"],
                              fields["timestamp"])
            names = _init_names(cls)
            kwargs = {k: v for k, v in fields.items() if k in names}
            if cls in _init_mentions_id:
                kwargs["id"] = fields["originator_id"]
            agg.__init__(**kwargs)
            self.apply(agg)
            return agg

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
        self._trigger(event_class, kwargs)

    def _trigger(self, event_class: type[Any], given: dict[str, Any]) -> None:
        # What the library's trigger_event does, without its keyword juggling and dataclass
        # __init__: the same event, its fields in the same order (so the same stored bytes).
        state = self.__dict__
        if "_shared" in state:
            self._own_containers()
        event = _new_event(event_class, (state["_id"], state["_version"] + 1), given)
        event.mutate(self)
        state["_pending_events"].append(event)

    @classmethod
    def _create(cls, event_class: type[Any], *, id: Any = None, **kwargs: Any) -> Any:  # noqa: A002
        """The library's _create for an aggregate with a given id, made the same way as
        trigger_event above."""
        if id is None:
            return super()._create(event_class, **kwargs)
        return cls._create_with(event_class, id, kwargs)

    @classmethod
    def _create_with(cls, event_class: type[Any], id: Any, given: dict[str, Any]) -> Any:  # noqa: A002
        """_create with the event's fields (but the id) in a dict of the caller's own, which
        becomes no one else's: the same aggregate, one dict fewer (a trade per transfer)."""
        event = _new_event(event_class, (id, 1, get_topic(cls)), given)
        agg = event.mutate(None)
        agg._pending_events.append(event)
        return agg

    def check_invariants(self) -> None:
        """Raise AssertionError when the aggregate's state breaks a rule that must always hold."""

    def _emit(self, event_class: type[Any], actor: str, command_id: str, **fields: Any) -> None:
        fields["actor"] = actor
        fields["command_id"] = command_id
        self._trigger(event_class, fields)
