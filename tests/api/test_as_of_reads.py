"""`--as-of` on the command line and `as_of=` over HTTP: a log position or an ISO 8601 date or
date-time, resolved alike (ledger.as_of), refused alike, and answering as of the position."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_cli_audit import CLI, cli, demo_cli, demo_template  # noqa: F401 - fixtures

from api import http_signatures as H
from api.server import create_app
from ledger.application import Registry
from ledger.as_of import CHINA, RECORD_TOPIC
from ledger.keys import Keyring
from ledger.transcoder import MsgpackTranscoder


def command_times(db: str) -> list[tuple[int, datetime]]:
    app = Registry(db)
    try:
        decode = MsgpackTranscoder().decode
        return [(r[0], decode(bytes(r[4]))["timestamp"]) for r in app.recorder.select_raw(1, 10**6)
                if r[3] == RECORD_TOPIC]
    finally:
        app.close()


def between(times: list[tuple[int, datetime]], i: int) -> str:
    """A moment after command i and before command i + 1, in China time without an offset."""
    a, b = times[i][1], times[i + 1][1]
    return (a + (b - a) / 2).astimezone(CHINA).replace(tzinfo=None).isoformat()


def test_cli_reads_as_of_a_date_a_time_and_a_position(demo_cli: CLI) -> None:  # noqa: F811
    times = command_times(demo_cli.db)
    head = times[-1][0]
    today = times[0][1].astimezone(CHINA).date().isoformat()
    result = demo_cli("balances", "jinsen-carbon", "--as-of", today, "--json")
    assert result.code == 0, result
    assert json.loads(result.out)["as_of"] == head
    assert f"as of {today} ({today}T23:59:59.999999+08:00): log position {head:,}" in result.err
    for i in (3, len(times) // 2, len(times) - 2):
        moment = between(times, i)
        for read in (["balances", "changkou-village"], ["ticket", "SM-0000001"],
                     ["pledges"], ["compliance", "tonghai-nickel", "fujian_ets", "2021"],
                     ["history", "--holder", "changkou-village"]):
            by_date = demo_cli(*read, "--as-of", moment, "--json")
            by_position = demo_cli(*read, "--as-of", str(times[i][0]), "--json")
            if by_position.code:  # not there yet: the same refusal either way
                assert by_date.code == by_position.code and by_date.out == by_position.out
                continue
            assert json.loads(by_date.out) == json.loads(by_position.out), (read, moment)
            if isinstance(json.loads(by_date.out), dict):
                assert json.loads(by_date.out)["as_of"] == times[i][0]


@pytest.mark.parametrize("value, sentence", [
    ("99999", "as_of 99,999 is beyond the end of the log, which holds {head:,} records: give a "
              "position from 0 to {head:,}"),
    ("next-week", "as_of must be a log position, or an ISO 8601 date or date-time (2023-12-31, "
                  "2023-12-31T23:59:59+08:00), not 'next-week'"),
    ("2000-01-01", "as_of 2000-01-01 (2000-01-01T23:59:59+08:00) is before the registry began"),
])
def test_cli_refuses_an_as_of_it_cannot_answer(demo_cli: CLI, value: str,  # noqa: F811
                                                sentence: str) -> None:
    head = command_times(demo_cli.db)[-1][0]
    result = demo_cli("balances", "jinsen-carbon", "--as-of", value)
    assert result.code == 1, result
    assert "Traceback" not in result.err
    assert f"error invalid_argument: {sentence.format(head=head)}" in " ".join(result.err.split())


@pytest.fixture
def http(demo_cli: CLI) -> Any:  # noqa: F811
    app = Registry(demo_cli.db, keyring=Keyring(demo_cli.keys), auto_checkpoint=False)
    with TestClient(create_app(app), raise_server_exceptions=False) as client:
        yield client, app
    app.close()


def signed_get(client: TestClient, app: Registry, signer: str, path: str, query: str) -> Any:
    assert app.keyring is not None
    headers = H.sign_request(app.keyring.get(signer), method="GET", path=path, query=query,
                             created=int(time.time()))
    return client.get(f"{path}?{query}", headers=headers)


def test_http_reads_as_of_a_date_equal_the_reads_as_of_its_position(http: Any,
                                                                     demo_cli: CLI) -> None:  # noqa: F811
    client, app = http
    times = command_times(demo_cli.db)
    i = len(times) // 2
    position = times[i][0]
    moment = between(times, i)
    utc = datetime.fromisoformat(moment).replace(tzinfo=CHINA).astimezone(UTC).isoformat()
    for value in (moment, utc):
        by_date = client.get("/v1/tickets/SM-0000001", params={"as_of": value})
        assert by_date.status_code == 200, by_date.text
        assert by_date.json() == client.get(f"/v1/tickets/SM-0000001?as_of={position}").json()
        assert by_date.json()["as_of"] == position
    for path in ("/v1/accounts/jinsen-carbon/balances", "/v1/pledges",
                 "/v1/compliance/tonghai-nickel/fujian_ets/2021"):
        by_date = signed_get(client, app, "fujian-eco", path, f"as_of={moment}")
        by_position = signed_get(client, app, "fujian-eco", path, f"as_of={position}")
        assert (by_date.status_code, by_date.json()) == (by_position.status_code,
                                                         by_position.json()), path


@pytest.mark.parametrize("value, words", [
    ("99999", "is beyond the end of the log, which holds"),
    ("-1", "the log holds positions 0 to"),
    ("soon", "as_of must be a log position, or an ISO 8601 date"),
    ("2000-01-01T08:00:00Z", "is before the registry began: its first command was recorded at"),
])
def test_http_refuses_an_as_of_it_cannot_answer(http: Any, value: str, words: str) -> None:
    client, _ = http
    response = client.get("/v1/tickets/SM-0000001", params={"as_of": value})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "invalid_argument" and words in body["detail"]
