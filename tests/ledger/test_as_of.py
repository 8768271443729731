"""As-of values (ledger.as_of): a log position or an ISO 8601 date or date-time, resolved to the
position to answer at, on SQLite and on PostgreSQL.

The demo story's records are dated when the test runs, a few milliseconds apart; the expected
answers come from reading every command record's time (what the resolution avoids doing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_projections import snapshot

from domain.errors import DomainError
from ledger.application import Registry
from ledger.as_of import CHINA, RECORD_TOPIC, resolve
from ledger.transcoder import MsgpackTranscoder


def command_times(app: Registry) -> list[tuple[int, datetime]]:
    """Every command record's position and time, read the long way."""
    decode = MsgpackTranscoder().decode
    rows = app.recorder.select_raw(1, 1_000_000)
    return [(r[0], decode(bytes(r[4]))["timestamp"]) for r in rows if r[3] == RECORD_TOPIC]


def expected(times: list[tuple[int, datetime]], moment: datetime) -> int | None:
    found = [p for p, t in times if t <= moment]
    return max(found) if found else None


def refusal(app: Registry, value: object) -> str:
    with pytest.raises(DomainError) as e:
        resolve(app.recorder, value)  # type: ignore[arg-type]
    assert e.value.code == "invalid_argument"
    return e.value.message


def test_positions_from_zero_to_the_head(demo_registry: Registry) -> None:
    head = demo_registry.log_position()
    assert resolve(demo_registry.recorder, None) is None
    for value in (0, "0", 1, str(head), head, f" {head} "):
        assert resolve(demo_registry.recorder, value).position == int(str(value))
    assert resolve(demo_registry.recorder, "42").moment is None


def test_a_position_beyond_the_head_is_refused_with_the_head(demo_registry: Registry) -> None:
    head = demo_registry.log_position()
    message = refusal(demo_registry, head + 1)
    assert message == (f"as_of {head + 1:,} is beyond the end of the log, which holds {head:,} "
                       f"records: give a position from 0 to {head:,}")
    assert "a date is written with its dashes" in refusal(demo_registry, "20231231")


def test_what_is_neither_a_position_nor_a_date_is_refused(demo_registry: Registry) -> None:
    head = demo_registry.log_position()
    for value in ("-1", -1, "yesterday", "2023-13-01", "2023-02-30", "", "12.5", "0x10",
                  "2023-12-31T25:00:00", "x" * 100, "2023-12-31 noon"):
        message = refusal(demo_registry, value)
        assert "a log position, or an ISO 8601 date or date-time" in message, value
        assert f"0 to {head:,}" in message, value


def test_each_command_is_found_at_its_own_time_in_every_zone(demo_registry: Registry) -> None:
    times = command_times(demo_registry)
    assert [t for _, t in times] == sorted(t for _, t in times)  # one process: in time order
    for i, (position, when) in enumerate(times):
        for text in (when.isoformat(), when.astimezone(CHINA).isoformat(),
                     when.isoformat().replace("+00:00", "Z"),
                     when.astimezone(CHINA).replace(tzinfo=None).isoformat()):  # no offset: +08:00
            found = resolve(demo_registry.recorder, text)
            assert (found.position, found.recorded_at) == (position, when), text
        just_before = (when - timedelta(microseconds=1)).isoformat()
        if i == 0:
            assert "before the registry began" in refusal(demo_registry, just_before)
        else:
            assert resolve(demo_registry.recorder, just_before).position == times[i - 1][0]


def test_a_date_is_the_end_of_that_day_in_china(demo_registry: Registry) -> None:
    times = command_times(demo_registry)
    first = times[0][1].astimezone(CHINA)
    day = first.date()
    end_of_day = datetime(day.year, day.month, day.day, 23, 59, 59, 999_999, CHINA)
    found = resolve(demo_registry.recorder, day.isoformat())
    assert found.moment == end_of_day
    assert found.position == expected(times, end_of_day)
    before = (day - timedelta(days=1)).isoformat()
    message = refusal(demo_registry, before)
    assert message.startswith(f"as_of {before} ({before}T23:59:59+08:00) is before the registry "
                              f"began: its first command was recorded at "
                              f"{first.isoformat(timespec='seconds')}")
    later = (day + timedelta(days=400)).isoformat()
    assert resolve(demo_registry.recorder, later).position == demo_registry.log_position()


def test_an_empty_registry_has_no_date_to_answer(registry: Registry) -> None:
    assert resolve(registry.recorder, 0).position == 0
    assert "holds no record yet" in refusal(registry, "2023-12-31")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset_us=st.integers(-2_000_000, 2_000_000), pick=st.integers(0, 10**6),
       zone_h=st.integers(-12, 14))
def test_a_moment_answers_as_the_position_it_resolves_to(demo_registry: Registry, offset_us: int,
                                                         pick: int, zone_h: int) -> None:
    times = command_times(demo_registry)
    base = times[pick % len(times)][1]
    moment = (base + timedelta(microseconds=offset_us)).astimezone(
        timezone(timedelta(hours=zone_h)))
    want = expected(times, moment)
    if want is None:
        assert "before the registry began" in refusal(demo_registry, moment.isoformat())
        return
    found = resolve(demo_registry.recorder, moment.isoformat())
    assert found.position == want and found.moment == moment
    assert found.recorded_at <= moment
    by_date = snapshot(demo_registry.projection(as_of=found.position), histories=False)
    assert by_date == snapshot(demo_registry.projection(as_of=want), histories=False)
    assert by_date["position"] == want


def test_the_resolution_reads_a_handful_of_records(demo_registry: Registry,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    first_of_topic = demo_registry.recorder.first_of_topic

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return first_of_topic(*args, **kwargs)

    monkeypatch.setattr(demo_registry.recorder, "first_of_topic", counted)
    times = command_times(demo_registry)
    resolve(demo_registry.recorder, times[len(times) // 3][1].astimezone(UTC).isoformat())
    head = demo_registry.log_position()
    assert len(calls) <= head.bit_length() + 2  # one per halving, and the two ends
