"""As-of reads: a log position, or a date or time, turned into the log position to answer at.

Every read that looks back (`--as-of` on the command line, `as_of=` over HTTP) takes either

* a log position, 0 to the head: the state after every command recorded at or before it; or
* an ISO 8601 date or date-time: the state after the last command recorded at or before that
  moment. A date alone means the end of that day, and a time without an offset is China
  Standard Time (UTC+08:00), where the registry's participants are: `2023-12-31` is
  `2023-12-31T23:59:59.999999+08:00`.

A command is dated by its command record (the last record it writes, where it commits). The
log is in time order as written by one process; commands decided in the same instant by several
server processes may be a few milliseconds out of order, and then a moment between them
answers with the first of them in the log. Either way, the answer names its position, and
asking by that position gives the same answer.

A date is found with one indexed query per halving of the log (about twenty for a million
records), never by reading the log through.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, NamedTuple

import msgpack
from eventsourcing.utils import get_topic

from domain.command import CommandRecord
from domain.errors import DomainError
from ledger.transcoder import MsgpackTranscoder

CHINA = timezone(timedelta(hours=8), "UTC+08:00")
RECORD_TOPIC = get_topic(CommandRecord.Accepted)
MAX_AS_OF_LEN = 64  # longer than any position or ISO 8601 date-time
_POSITION = re.compile(r"[0-9]{1,20}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
FORMS = "a log position, or an ISO 8601 date or date-time (2023-12-31, 2023-12-31T23:59:59+08:00)"


class Resolved(NamedTuple):
    """The position an as-of value answers at; for a moment, the moment and the time of the
    command record at that position."""

    position: int
    moment: datetime | None = None
    recorded_at: datetime | None = None


def moment_of(value: str) -> datetime | None:
    """The moment an ISO 8601 date or date-time stands for (see the module's docstring), or None
    when the value is not one."""
    try:
        if _DATE.fullmatch(value):
            return datetime.combine(date.fromisoformat(value), time.max, CHINA)
        if "T" not in value and " " not in value:
            return None  # a bare number or word: not a date-time (fromisoformat would take 20231231)
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=CHINA)


def resolve(recorder: Any, value: int | str | None) -> Resolved | None:
    """The position to answer at for an as-of value (None: now); DomainError invalid_argument
    for a value that is neither form, a position beyond the head, or a moment before the
    registry's first record."""
    if value is None:
        return None
    head = recorder.max_notification_id() or 0
    text = str(value).strip()
    if type(value) is int or _POSITION.fullmatch(text):
        position = int(text)
        if position > head:
            hint = " (a date is written with its dashes: 2023-12-31)" if len(text) == 8 else ""
            raise DomainError("invalid_argument", f"as_of {position:,} is beyond the end of the "
                              f"log, which holds {head:,} records: give a position from 0 to "
                              f"{head:,}{hint}", field="as_of", head=head)
        if position < 0:
            raise DomainError("invalid_argument", f"as_of must be {FORMS}; a position is 0 to "
                              f"{head:,}, not {position}", field="as_of", head=head)
        return Resolved(position)
    moment = moment_of(text) if len(text) <= MAX_AS_OF_LEN else None
    if moment is None:
        raise DomainError("invalid_argument", f"as_of must be {FORMS}, not {str(value)[:80]!r}; "
                          f"the log holds positions 0 to {head:,}", field="as_of", head=head)
    return _at_moment(recorder, moment, text, head)


def position(recorder: Any, value: int | str | None) -> int | None:
    """resolve()'s position alone."""
    found = resolve(recorder, value)
    return None if found is None else found.position


def _at_moment(recorder: Any, moment: datetime, text: str, head: int) -> Resolved:
    first = _record_from(recorder, 1)
    if first is None:
        raise DomainError("invalid_argument", f"as_of {text}: the registry holds no record yet",
                          field="as_of", head=head)
    if moment < first[1]:
        raise DomainError("invalid_argument", f"as_of {text} ({_china(moment)}) is before the "
                          f"registry began: its first command was recorded at "
                          f"{_china(first[1])}", field="as_of", genesis=_china(first[1]))
    last = _record_from(recorder, head)
    if last is not None and last[1] <= moment:
        return Resolved(*last[:1], moment, last[1])
    # The command record at `lo` is dated at or before the moment; every record from
    # `hi` on is dated after it (or is not there). Each step halves what lies between.
    lo, lo_time = first
    hi = last[0] if last is not None else head + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        found = _record_from(recorder, mid)
        if found is not None and found[0] < hi and found[1] <= moment:
            lo, lo_time = found
        else:  # no record in mid..hi-1 is dated at or before the moment, or none is there
            hi = mid
    return Resolved(lo, moment, lo_time)


def _record_from(recorder: Any, start: int) -> tuple[int, datetime] | None:
    """The first command record at `start` or after: its position and time."""
    found = recorder.first_of_topic(RECORD_TOPIC, start)
    if found is None:
        return None
    at, head = found
    return at, _time_of(recorder, at, head)


def _time_of(recorder: Any, at: int, head: bytes) -> datetime:
    """A record's time, from the first bytes of its state (where the transcoder writes it)."""
    try:
        unpacker = msgpack.Unpacker(raw=False, timestamp=3)
        unpacker.feed(head)
        unpacker.read_map_header()
        if unpacker.unpack() == "timestamp":
            when = unpacker.unpack()
            if isinstance(when, datetime):
                return when
    except Exception:  # noqa: BLE001 - laid out otherwise: read the whole state below
        pass
    rows = recorder.select_raw(at, 1, stop=at)
    try:
        when = MsgpackTranscoder().decode(bytes(rows[0][4]))["timestamp"]
        if isinstance(when, datetime):
            return when
    except Exception:  # noqa: BLE001 - reported as below
        pass
    raise DomainError("invalid_argument", f"the command record at position {at:,} has no "
                      "readable time; run `carbon-ledger verify`", position=at)


def _china(moment: datetime) -> str:
    return moment.astimezone(CHINA).isoformat(timespec="seconds")


