"""The server's fast write path, in-process: the same answers as the general path, for less.

Writes on fixed paths (POST /v1/transfers, /v1/transfers/batch, /v1/commands, ...) are answered
by api.server before FastAPI's routing; the body is parsed in full once, by Registry.execute, and
before that only looked at with a plain json.loads. These tests pin what must not change: which
refusal a bad request gets (a malformed body is refused as such before a missing or bad
signature), the response's headers and body, /metrics, and a 500 for an unexpected failure.
The end-to-end suites (tests/e2e) run the same requests against a real uvicorn process.
"""

from __future__ import annotations

import json
import random
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import http_signatures as H
from api.server import WriteThreads, create_app
from domain.errors import DomainError
from ledger import demo
from ledger.application import Registry
from ledger.keys import Keyring, generate
from ledger.signing import canonical_json

EXCHANGE = "shaxian-exchange"
PROBLEM = "application/problem+json"
_seq = iter(range(1, 1_000_000))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    root: Path = tmp_path_factory.mktemp("fast-writes")
    app = Registry(f"sqlite:///{root / 'registry.db'}", keyring=Keyring(root / "keys"),
                   auto_checkpoint=False)
    demo.load(app)
    yield app
    app.close()


@pytest.fixture(scope="module")
def client(registry: Registry) -> Iterator[TestClient]:
    with TestClient(create_app(registry), raise_server_exceptions=False) as c:
        yield c


def a_transfer(**overrides: Any) -> dict[str, Any]:
    args = {"trade_id": f"FAST-{next(_seq):06d}", "seller": "tonghai-nickel",
            "buyer": "changkou-village", "ticket_no": "SM-0000001", "quantity_t": 1,
            "price": "15.00", "mode": "negotiated"}
    args.update(overrides)
    return args


def body_of(name: str, args: dict[str, Any], actor: str = EXCHANGE,
            command_id: str | None = None) -> bytes:
    return canonical_json({"command": name, "actor": actor,
                           "command_id": command_id or f"fast/{secrets.token_hex(6)}",
                           "args": args})


def post(client: TestClient, registry: Registry, body: bytes, *, path: str = "/v1/transfers",
         signer: str | None = EXCHANGE, sign_path: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if signer is not None:
        assert registry.keyring is not None
        headers.update(H.sign_request(registry.keyring.get(signer), method="POST",
                                      path=sign_path or path, body=body,
                                      created=int(time.time())))
    return client.post(path, content=body, headers=headers)


def refused(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["code"] == code, problem
    return problem


# Answers -------------------------------------------------------------------------------------

def test_a_signed_transfer_is_created_with_its_position(client: TestClient,
                                                        registry: Registry) -> None:
    before = registry.log_position()
    response = post(client, registry, body_of("transfer", a_transfer()))
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["idempotent-replayed"] == "false"
    assert int(response.headers["x-log-position"]) > before
    assert int(response.headers["content-length"]) == len(response.content)
    outcome = response.json()
    assert outcome["command"] == "transfer" and outcome["seller"] == "tonghai-nickel"
    # Rendered exactly as Starlette's JSONResponse renders it.
    assert response.content == json.dumps(outcome, ensure_ascii=False, separators=(",", ":")).encode()


def test_a_resigned_retry_is_answered_as_a_replay(client: TestClient, registry: Registry) -> None:
    body = body_of("transfer", a_transfer())
    first = post(client, registry, body)
    again = post(client, registry, body)  # the same command, signed anew (another nonce)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-log-position"] == first.headers["x-log-position"]
    assert again.json() == first.json()


def test_any_command_goes_through_the_commands_path(client: TestClient, registry: Registry) -> None:
    response = post(client, registry, body_of("transfer", a_transfer()), path="/v1/commands")
    assert response.status_code == 200, response.text


def test_a_batch_settles_on_its_path(client: TestClient, registry: Registry) -> None:
    items = [a_transfer(), a_transfer(seller="changkou-village", buyer="tonghai-nickel")]
    batch_id = f"FAST-B-{next(_seq)}"
    response = post(client, registry, body_of("settle_batch", {"batch_id": batch_id,
                                                               "transfers": items}),
                    path="/v1/transfers/batch")
    assert response.status_code == 201, response.text
    assert response.json()["command"] == "settle_batch"


# Refusals, in the order the registry checks ------------------------------------------------------

def _float_body() -> bytes:
    return body_of("transfer", a_transfer()).replace(b'"quantity_t":1', b'"quantity_t":1.5')


@pytest.mark.parametrize(("body", "signer", "status", "code"), [
    pytest.param(_float_body(), EXCHANGE, 400, "non_canonical", id="fractional tonnes, signed"),
    pytest.param(_float_body(), None, 400, "non_canonical", id="fractional tonnes, unsigned"),
    pytest.param(b"not json", None, 400, "invalid_argument", id="not JSON, unsigned"),
    pytest.param(b'{"b":1,"a":2}', None, 400, "non_canonical", id="unsorted keys, unsigned"),
    pytest.param(body_of("transfer", a_transfer()).replace(b'"ticket_no":"', b'"ticket_no":"\\ud800'),
                 EXCHANGE, 400, "non_canonical", id="a lone surrogate, signed"),
    pytest.param(body_of("transfer", a_transfer(fee="1.00")), None, 400, "invalid_argument",
                 id="unknown argument, unsigned"),
    pytest.param(body_of("transfer", a_transfer(quantity_t=0)), None, 400, "invalid_argument",
                 id="zero tonnes, unsigned"),
    pytest.param(body_of("transfer", a_transfer(), actor="Not A Slug"), None, 400,
                 "invalid_argument", id="actor not a slug, unsigned"),
    pytest.param(body_of("settle_batch", {"batch_id": "x", "transfers": [a_transfer()]}), None,
                 400, "invalid_argument", id="a batch on the single path, unsigned"),
    pytest.param(body_of("transfer", a_transfer()), None, 401, "unsigned", id="unsigned"),
    pytest.param(body_of("transfer", a_transfer(), actor="tonghai-nickel"), EXCHANGE, 401,
                 "unknown_key", id="signed with another participant's key"),
])
def test_a_bad_request_gets_the_refusal_the_registry_gives(
        client: TestClient, registry: Registry, body: bytes, signer: str | None, status: int,
        code: str) -> None:
    before = registry.log_position()
    refused(post(client, registry, body, signer=signer), status, code)
    assert registry.log_position() == before


def test_a_malformed_body_is_refused_before_malformed_signature_headers(
        client: TestClient) -> None:
    headers = {"Signature-Input": "garbage", "Signature": "garbage"}
    refused(client.post("/v1/transfers", content=_float_body(), headers=headers), 400,
            "non_canonical")
    refused(client.post("/v1/transfers", content=body_of("transfer", a_transfer()),
                        headers=headers), 401, "bad_signature")


def test_a_command_on_another_path_is_refused(client: TestClient, registry: Registry) -> None:
    problem = refused(post(client, registry, body_of("transfer", a_transfer()),
                           path="/v1/retirements"), 400, "invalid_argument")
    assert "takes retire commands, not transfer" in problem["detail"]


def test_a_signature_over_another_path_is_refused(client: TestClient, registry: Registry) -> None:
    refused(post(client, registry, body_of("transfer", a_transfer()), sign_path="/v1/commands"),
            401, "bad_signature")


def test_an_unsigned_write_asks_for_a_signature(client: TestClient, registry: Registry) -> None:
    response = post(client, registry, body_of("transfer", a_transfer()), signer=None)
    assert response.headers["www-authenticate"].startswith("Signature")


def test_a_declared_length_over_the_cap_is_refused_unread(client: TestClient) -> None:
    response = client.post("/v1/transfers", content=b"{}",
                           headers={"Content-Length": str(64 * 1024 * 1024)})
    refused(response, 413, "payload_too_large")


def test_paths_with_parameters_still_compare_path_and_body(client: TestClient,
                                                           registry: Registry) -> None:
    body = body_of("release_pledge", {"pledge_id": "PL-2021-001"}, actor="cib-sanming")
    problem = refused(post(client, registry, body, path="/v1/pledges/PL-OTHER/release",
                           signer="cib-sanming"), 400, "invalid_argument")
    assert "the path says pledge_id 'PL-OTHER'" in problem["detail"]


def test_an_unexpected_failure_is_a_plain_500(registry: Registry,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_: Any) -> Any:
        raise RuntimeError("the disk went away")

    app = create_app(registry)
    monkeypatch.setattr(registry, "execute", broken)
    with TestClient(app, raise_server_exceptions=False) as c:
        response = post(c, registry, body_of("transfer", a_transfer()))
    assert response.status_code == 500
    assert response.text == "Internal Server Error"


# Metrics ---------------------------------------------------------------------------------------

def test_fast_writes_and_other_requests_are_counted(client: TestClient, registry: Registry) -> None:
    post(client, registry, body_of("transfer", a_transfer()))
    post(client, registry, body_of("transfer", a_transfer()), signer=None)
    client.get("/v1/tickets/SM-0000001")
    client.get("/no/such/path")
    text = client.get("/metrics").text
    assert 'http_requests_total{method="POST",route="/v1/transfers",status="201"}' in text
    assert 'http_requests_total{method="POST",route="/v1/transfers",status="401"}' in text
    assert 'http_requests_total{method="GET",route="/v1/tickets/{ticket_no}",status="200"}' in text
    assert 'http_requests_total{method="GET",route="unmatched",status="404"}' in text
    assert 'http_request_duration_seconds_count{method="POST",route="/v1/transfers"}' in text
    assert 'ledger_commands_total{command="transfer",outcome="accepted"}' in text
    assert 'ledger_commands_total{command="transfer",outcome="unsigned"}' in text


# The write threads -----------------------------------------------------------------------------

def test_write_threads_run_calls_concurrently_and_hand_back_errors() -> None:
    import asyncio

    threads = WriteThreads(4)
    both = threading.Barrier(2, timeout=5)

    def meet(x: int) -> int:
        both.wait()  # returns only when two calls run at once, on two threads
        return x * 2

    def refuse(_: Any) -> Any:
        raise DomainError("conflict", "no")

    async def main() -> None:
        assert await asyncio.gather(threads.run(meet, 1), threads.run(meet, 2)) == [2, 4]
        with pytest.raises(DomainError):
            await threads.run(refuse, None)

    asyncio.run(main())
    assert 2 <= len(threads.threads) <= 4
    threads.stop()
    assert threads.threads == []


# The signature headers -------------------------------------------------------------------------

def test_the_one_signature_shortcut_parses_as_the_general_parser_does() -> None:
    """Signed headers, mutated at random: the shortcut either declines or agrees exactly."""
    rng = random.Random(20211118)
    keys = [generate(), generate()]
    alphabet = ' ,;=()":abc@-_sig1/+AZ09\\'

    def general(i: str, s: str) -> Any:
        try:
            return [tuple(vars(w).values()) for w in H._parse_general(i, s)]
        except DomainError as e:
            return (e.code, e.message)

    agreed = 0
    for _ in range(3000):
        headers = H.sign_request(keys[0], method="POST", path="/v1/transfers", body=b"{}",
                                 created=1700000000,
                                 consents=[keys[1]] if rng.random() < 0.2 else None)
        values = [headers["Signature-Input"], headers["Signature"]]
        for n, v in enumerate(values):
            for _ in range(rng.randint(0, 2)):
                pos = rng.randrange(len(v) + 1)
                v = v[:pos] + rng.choice(alphabet) + v[pos + rng.randint(0, 1):]
            values[n] = v
        one = H._parse_one(*values)
        if one is not None:
            assert [tuple(vars(w).values()) for w in one] == general(*values)
            agreed += 1
    assert agreed > 500  # the shortcut does take the usual case


# The public ticket page, answered before FastAPI too ------------------------------------------

@pytest.mark.parametrize("ticket_no", ["SM-0000001", "SM-0000002", "NO-SUCH-TICKET", "SM 0000001"])
def test_the_ticket_page_is_the_same_without_fastapis_layers(client: TestClient,
                                                           ticket_no: str) -> None:
    app = client.app
    fast = client.get(f"/v1/tickets/{ticket_no}")
    handler, app.fast_ticket = app.fast_ticket, None  # type: ignore[attr-defined]
    try:
        general = client.get(f"/v1/tickets/{ticket_no}")
    finally:
        app.fast_ticket = handler  # type: ignore[attr-defined]
    assert fast.status_code == general.status_code
    assert fast.content == general.content
    assert fast.headers["content-type"] == general.headers["content-type"]
    assert fast.headers["content-length"] == general.headers["content-length"]
    if ticket_no == "NO-SUCH-TICKET":
        assert fast.status_code == 404 and fast.json()["code"] == "unknown_ticket"


def test_a_ticket_page_with_a_query_or_a_sub_path_goes_through_fastapi(client: TestClient) -> None:
    assert client.get("/v1/tickets/SM-0000001?as_of=0").status_code == 404  # not issued yet
    assert client.get("/v1/tickets/SM-0000001?as_of=-1").status_code == 400  # invalid_argument
    assert client.get("/v1/tickets/SM-0000001/history").status_code == 200
    metrics = client.get("/metrics").text
    assert 'route="/v1/tickets/{ticket_no}"' in metrics
