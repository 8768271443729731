"""The request log of a real `carbon-ledger serve`: one line per request on standard error, with
who signed, which command, where it landed or why it was refused, and never a secret."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.client import ApiError, Client
from ledger.keys import Keyring, key_id, public_text

EXCHANGE, HOLDER, FARM = "shaxian-exchange", "jinsen-carbon", "longyan-farm"


class Recorded:
    """What the clients sent: every request, and the header values and body fields that must
    never reach the log."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.secrets: set[str] = set()

    def hook(self, request: httpx.Request) -> None:
        self.requests.append((request.method, request.url.path))
        for name in ("signature", "signature-input", "content-digest"):
            value = request.headers.get(name)
            if value:
                self.secrets.add(value)
                self.secrets.update(re.findall(r':([A-Za-z0-9+/=]{20,}):', value))
                self.secrets.update(re.findall(r'nonce="([^"]+)"', value))


def client(base_url: str, recorded: Recorded, who: str | None = None,
           keys: Keyring | None = None) -> Client:
    c = Client(base_url, who, keys.get(who) if who and keys else None, timeout_s=30)
    c.http.event_hooks["request"] = [recorded.hook]
    return c


def access_lines(text: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [line for line in lines if line["logger"] == "access"]


@pytest.fixture(scope="module")
def logged(serve: Callable[..., Any], demo_registry_files: Callable[[Path], None],
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A server logging JSON at info, a series of requests of every kind, then its log."""
    root = tmp_path_factory.mktemp("access-log") / "server"
    demo_registry_files(root)
    keys = Keyring(root / "keys")
    server = serve(root, None, "--log-level", "info", "--log-format", "json")
    base, recorded = server.base_url, Recorded()
    anyone = client(base, recorded)
    exchange = client(base, recorded, EXCHANGE, keys)
    holder = client(base, recorded, HOLDER, keys)
    farm = client(base, recorded, FARM, keys)
    trade = f"LOG-{secrets.token_hex(4)}"
    outcomes: dict[str, Any] = {}
    anyone.http.get("/")
    anyone.http.get("/healthz")
    anyone.http.get("/v1/no-such-thing")
    anyone.http.delete("/v1/pledges")
    outcomes["accepted"] = exchange.transfer(
        trade_id=trade, seller="tonghai-nickel", buyer=HOLDER, ticket_no="SM-0000001",
        quantity_t=3, price="15.00")
    outcomes["replayed"] = exchange.transfer(
        trade_id=trade, seller="tonghai-nickel", buyer=HOLDER, ticket_no="SM-0000001",
        quantity_t=3, price="15.00")
    with pytest.raises(ApiError) as refused:
        exchange.transfer(trade_id=f"{trade}-big", seller="tonghai-nickel", buyer=HOLDER,
                          ticket_no="SM-0000001", quantity_t=10**9, price="15.00")
    outcomes["refused"] = refused.value
    # a write on a path with parameters: answered by FastAPI's route, not the fast path
    outcomes["mandate"] = farm.command("revoke_mandate", {"holder": FARM, "exchange": EXCHANGE},
                                       f"log-mandate-{trade}")
    anyone.http.post("/v1/transfers", content=b'{"command":"transfer"}',
                     headers={"Content-Type": "application/json"})
    holder.balances(HOLDER)
    anyone.http.get(f"/v1/accounts/{HOLDER}/balances")
    anyone.http.get("/v1/tickets/SM-9999999")  # the fast read path
    for c in (anyone, exchange, holder, farm):
        c.close()
    server.stop()  # every line is out once the process has ended
    text = server.log_text()
    lines = access_lines(text)
    # before them: the fixture's GET /healthz, asked until the server answered
    ours = lines[len(lines) - len(recorded.requests):]
    assert all(line["path"] == "/healthz" for line in lines[:len(lines) - len(ours)])
    return {"text": text, "lines": ours, "recorded": recorded, "keys": keys,
            "root": root, "outcomes": outcomes, "trade": trade}


def test_every_line_on_standard_error_is_one_json_object(logged: dict[str, Any]) -> None:
    lines = [line for line in logged["text"].splitlines() if line.strip()]
    assert len(lines) > len(logged["lines"])  # uvicorn's start and stop lines too
    for line in lines:
        record = json.loads(line)
        assert {"time", "level", "logger", "pid"} <= set(record), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])


def test_every_request_produces_exactly_one_access_line(logged: dict[str, Any]) -> None:
    sent = logged["recorded"].requests
    assert len(sent) == 12
    assert [(line["method"], line["path"]) for line in logged["lines"]] == sent
    for line in logged["lines"]:
        assert line["duration_ms"] >= 0 and isinstance(line["status"], int)
        assert line["client"] == "127.0.0.1" and isinstance(line["pid"], int)


def test_an_accepted_write_names_its_signer_command_and_position(logged: dict[str, Any]) -> None:
    line = logged["lines"][4]
    keys = logged["keys"]
    assert line["path"] == "/v1/transfers" and line["status"] == 201
    assert line["actor"] == EXCHANGE
    assert line["key_id"] == key_id(public_text(keys.get(EXCHANGE)))
    assert line["command"] == "transfer"
    assert line["command_id"] == logged["outcomes"]["accepted"]["command_id"]
    assert isinstance(line["position"], int) and line["position"] > 88
    assert "replayed" not in line and "code" not in line
    replay = logged["lines"][5]
    assert replay["replayed"] is True and replay["position"] == line["position"]
    assert replay["command_id"] == line["command_id"]


def test_a_write_through_a_routed_path_is_logged_the_same(logged: dict[str, Any]) -> None:
    line = logged["lines"][7]
    assert line["path"] == f"/v1/accounts/{FARM}/mandates/{EXCHANGE}/revoke"
    assert line["status"] == 200
    assert (line["actor"], line["command"]) == (FARM, "revoke_mandate")
    assert line["command_id"] == f"log-mandate-{logged['trade']}"
    assert isinstance(line["position"], int)


def test_a_refusal_names_its_code(logged: dict[str, Any]) -> None:
    lines = logged["lines"]
    refused = lines[6]
    assert refused["status"] == 422 and refused["code"] == "insufficient_available"
    assert refused["code"] == logged["outcomes"]["refused"].code
    assert refused["actor"] == EXCHANGE and refused["command"] == "transfer"
    assert "position" not in refused
    assert (lines[2]["status"], lines[2]["code"]) == (404, "not_found")
    assert (lines[3]["status"], lines[3]["code"]) == (405, "method_not_allowed")
    malformed = lines[8]
    assert (malformed["status"], malformed["code"]) == (400, "invalid_argument")
    assert "actor" not in malformed  # nothing was verified: no name to give
    unsigned = lines[10]
    assert (unsigned["status"], unsigned["code"]) == (401, "unsigned")
    assert (lines[11]["status"], lines[11]["code"]) == (404, "unknown_ticket")


def test_a_signed_read_names_its_signer(logged: dict[str, Any]) -> None:
    line = logged["lines"][9]
    assert line["path"] == f"/v1/accounts/{HOLDER}/balances" and line["status"] == 200
    assert line["actor"] == HOLDER
    assert line["key_id"] == key_id(public_text(logged["keys"].get(HOLDER)))
    assert "command" not in line


def test_the_log_holds_no_signature_nonce_digest_key_or_body(logged: dict[str, Any]) -> None:
    text = logged["text"]
    found = sorted(s for s in logged["recorded"].secrets if s in text)
    assert logged["recorded"].secrets and not found, found
    for path in sorted((logged["root"] / "keys").glob("*.key")):
        private = path.read_text().strip()
        assert private and private not in text, path.name
        for part in re.findall(r"[A-Za-z0-9+/=]{30,}", private):
            assert part not in text, path.name
    assert "15.00" not in text and "SM-0000001" not in text   # the bodies' fields
    assert "signature" not in text.lower().replace('"logger"', "")


def test_text_format_and_a_quiet_level(serve: Callable[..., Any], demo_registry_files: Any,
                                        tmp_path: Path) -> None:
    demo_registry_files(tmp_path / "server")
    server = serve(tmp_path / "server", None, "--log-format", "text", "--log-level", "info")
    httpx.get(server.base_url + "/healthz", timeout=10)
    httpx.get(server.base_url + "/nothing", timeout=10)
    server.stop()
    lines = server.log_text().splitlines()
    assert not any(line.startswith("{") for line in lines)
    access = [line for line in lines if " GET /" in line][-2:]
    assert re.match(r"\S+Z info GET /healthz 200 \d+\.\dms pid=\d+ client=127\.0\.0\.1$", access[0])
    assert access[1].endswith("code=not_found")
    quiet = serve(tmp_path / "server", None, "--log-level", "warning")
    httpx.get(quiet.base_url + "/healthz", timeout=10)
    quiet.stop()
    assert '"logger":"access"' not in quiet.log_text()
