"""The HTTP edge in-process: what a hostile request may make the server read, hold or answer.

Each rule here has an end-to-end twin against a real uvicorn process (tests/e2e/test_hostile_clients.py)
that measures the process's memory; these pin the answers exactly, route by route:

- a body is read only up to the cap, whether its length is declared or it comes in chunks, on
  every route that reads one (the fast write path, the FastAPI write endpoints, the cosignature
  upload), and refused with 413 payload_too_large and `Connection: close`;
- a body nested too deep is a 400 nesting_too_deep problem on every write route;
- a second Signature, Signature-Input or Content-Digest header is refused, never ignored;
- nonces, key ids and signature headers have a length limit, checked before anything is kept;
- the nonces of signed reads are remembered in a bounded number of bytes, however long they are.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_http_write_path import refused

from api import http_signatures as H
from api.routes import WRITES
from api.server import MAX_COSIGNATURE_BYTES, NonceMemory, create_app
from domain.errors import DomainError
from ledger.application import Registry
from ledger.demo import load as load_demo
from ledger.keys import Keyring
from ledger.signing import MAX_BODY_BYTES, MAX_DEPTH, canonical_json

EXCHANGE, REGULATOR = "shaxian-exchange", "fujian-eco"
PROBLEM = "application/problem+json"
CHUNK = 64 * 1024


def open_demo(root: Path) -> Registry:
    app = Registry(f"sqlite:///{root / 'registry.db'}", keyring=Keyring(root / "keys"),
                   auto_checkpoint=False)
    load_demo(app)
    return app


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """The demo story on an SQLite file, for this module (not both stores, as tests/conftest.py's)."""
    app = open_demo(tmp_path_factory.mktemp("edge"))
    yield app
    app.close()


@pytest.fixture(scope="module")
def app(registry: Registry) -> Any:
    return create_app(registry)


@pytest.fixture(scope="module")
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def a_transfer_body(**extra_args: Any) -> bytes:
    args = {"trade_id": f"EDGE-{secrets.token_hex(4)}", "seller": "tonghai-nickel",
            "buyer": "changkou-village", "ticket_no": "SM-0000001", "quantity_t": 1,
            "price": "15.00", "mode": "negotiated", **extra_args}
    return canonical_json({"command": "transfer", "actor": EXCHANGE,
                           "command_id": f"edge/{secrets.token_hex(6)}", "args": args})


def signed(registry: Registry, signer: str, *, method: str, path: str, body: bytes | None = None,
           query: str = "") -> dict[str, str]:
    assert registry.keyring is not None
    return H.sign_request(registry.keyring.get(signer), method=method, path=path, query=query,
                          body=body, created=int(time.time()))


def concrete(path: str) -> str:
    return re.sub(r"\{[a-z_]+\}", "X", path)


# Calling the ASGI application directly, with a body that arrives chunk by chunk ---------------

class Exchange:
    """One request handed to the app as ASGI messages: how much of the body it asked for, and
    what it answered."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = iter(chunks)
        self.read = 0  # body bytes the app received
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        chunk = next(self.chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        self.read += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return {k.lower(): v for k, v in self.sent[0]["headers"]}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])


def call(app: Any, method: str, path: str, chunks: Iterable[bytes],
         headers: list[tuple[bytes, bytes]] | None = None) -> Exchange:
    exchange = Exchange(chunks)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "scheme": "http", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
             "headers": [(b"content-type", b"application/json"), *(headers or [])]}
    asyncio.run(app(scope, exchange.receive, exchange.send))
    return exchange


def endless(chunk: bytes = b" " * CHUNK, limit_bytes: int = 64 * 1024 * 1024) -> Iterator[bytes]:
    """A body that goes on far past the cap (bounded, so that a test of a broken server ends)."""
    for _ in range(limit_bytes // len(chunk)):
        yield chunk


BODY_ROUTES = [("POST", "/v1/transfers"), ("POST", "/v1/commands"),
               ("POST", "/v1/pledges/PL-2021-001/release"),
               ("PUT", "/v1/compliance/tonghai-nickel/fujian_ets/2021/emissions"),
               ("POST", "/v1/checkpoints/1/cosignatures")]


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
def test_a_streamed_body_is_read_only_up_to_the_cap(app: Any, method: str, path: str) -> None:
    cap = MAX_COSIGNATURE_BYTES if path.endswith("/cosignatures") else MAX_BODY_BYTES
    exchange = call(app, method, path, endless())
    assert exchange.status == 413
    assert exchange.headers[b"content-type"] == PROBLEM.encode()
    assert exchange.headers[b"connection"] == b"close"  # the rest is not read
    assert b'"code":"payload_too_large"' in exchange.body
    assert f"at most {cap} are accepted".encode() in exchange.body
    assert cap < exchange.read <= cap + CHUNK


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
def test_a_declared_length_over_the_cap_is_refused_unread_and_the_connection_closed(
        app: Any, method: str, path: str) -> None:
    exchange = call(app, method, path, endless(),
                    headers=[(b"content-length", str(MAX_BODY_BYTES + 1).encode())])
    assert exchange.status == 413
    assert exchange.headers[b"connection"] == b"close"
    assert exchange.read == 0


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
def test_a_body_at_the_cap_is_read_whole(app: Any, method: str, path: str) -> None:
    cap = MAX_COSIGNATURE_BYTES if path.endswith("/cosignatures") else MAX_BODY_BYTES
    exchange = call(app, method, path, endless(b" " * 1024, cap))
    assert exchange.read == cap
    assert exchange.status == 400  # all white space: not JSON, but not too large either


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
def test_a_client_that_goes_away_mid_body_gets_nothing_and_raises_nothing(
        app: Any, method: str, path: str) -> None:
    exchange = Exchange([b"{"])

    async def receive() -> dict[str, Any]:
        if exchange.read:
            return {"type": "http.disconnect"}
        return await Exchange.receive(exchange)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "scheme": "http", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
             "headers": []}
    asyncio.run(app(scope, receive, exchange.send))  # no ClientDisconnect escapes to uvicorn
    # The fast path sends nothing; FastAPI's routes hand back a response uvicorn drops.
    assert all(m.get("status") not in (500, 200, 201) for m in exchange.sent), exchange.sent


def test_an_oversized_cosignature_is_413_not_400(client: TestClient) -> None:
    body = b'{"key_id":"k","signature":"' + b"A" * MAX_COSIGNATURE_BYTES + b'","witness":"w"}'
    problem = refused(client.post("/v1/checkpoints/1/cosignatures", content=body), 413,
                      "payload_too_large")
    assert f"the body is {len(body)} bytes" in problem["detail"]


# Nesting -------------------------------------------------------------------------------------

def deep_body(depth: int) -> bytes:
    """A transfer with one more argument ("a", sorted first) nested `depth` levels deep."""
    return a_transfer_body().replace(b'"args":{', b'"args":{"a":' + b"[" * depth + b"]" * depth + b",")


@pytest.mark.parametrize("depth", [MAX_DEPTH + 8, 50_000])
@pytest.mark.parametrize("route", WRITES, ids=lambda r: f"{r.method} {r.path}")
def test_a_deeply_nested_body_is_a_400_problem_on_every_write_route(
        client: TestClient, registry: Registry, route: Any, depth: int) -> None:
    path = concrete(route.path)
    body = deep_body(depth)
    headers = signed(registry, EXCHANGE, method=route.method, path=path, body=body)
    problem = refused(client.request(route.method, path, content=body, headers=headers), 400,
                      "nesting_too_deep")
    assert f"more than {MAX_DEPTH} levels deep" in problem["detail"]


def test_a_deeply_nested_cosignature_is_a_400_problem(client: TestClient) -> None:
    refused(client.post("/v1/checkpoints/1/cosignatures", content=b"[" * 5000 + b"]" * 5000), 400,
            "nesting_too_deep")


def test_a_signed_deep_body_that_reaches_the_registry_is_refused_there(
        client: TestClient, registry: Registry) -> None:
    body = deep_body(MAX_DEPTH + 1)
    before = registry.log_position()
    headers = signed(registry, EXCHANGE, method="POST", path="/v1/transfers", body=body)
    refused(client.post("/v1/transfers", content=body, headers=headers), 400, "nesting_too_deep")
    assert registry.log_position() == before


# Signature headers ---------------------------------------------------------------------------

def test_the_signature_headers_of_a_write_are_accepted_once(client: TestClient,
                                                            registry: Registry) -> None:
    body = a_transfer_body()
    headers = signed(registry, EXCHANGE, method="POST", path="/v1/transfers", body=body)
    response = client.post("/v1/transfers", content=body, headers=headers)
    assert response.status_code == 201, response.text


SIGNED_HEADERS = ["Signature", "Signature-Input", "Content-Digest"]


@pytest.mark.parametrize("path", ["/v1/transfers", "/v1/commands"])
@pytest.mark.parametrize("twice", SIGNED_HEADERS)
@pytest.mark.parametrize("which", ["same", "other"])
def test_a_signature_header_sent_twice_on_a_write_is_refused(
        client: TestClient, registry: Registry, path: str, twice: str, which: str) -> None:
    body = a_transfer_body()
    headers = signed(registry, EXCHANGE, method="POST", path=path, body=body)
    other = signed(registry, EXCHANGE, method="POST", path=path, body=a_transfer_body())
    extra = headers[twice] if which == "same" else other[twice]
    before = registry.log_position()
    response = client.post(path, content=body,
                           headers=[*headers.items(), (twice, extra)])
    problem = refused(response, 401, "bad_signature")
    assert f"{twice} header twice" in problem["detail"]
    assert registry.log_position() == before


@pytest.mark.parametrize("twice", SIGNED_HEADERS)
def test_a_signature_header_sent_twice_on_a_path_with_parameters_is_refused(
        client: TestClient, registry: Registry, twice: str) -> None:
    body = canonical_json({"command": "release_pledge", "actor": "cib-sanming",
                           "command_id": f"edge/{secrets.token_hex(6)}",
                           "args": {"pledge_id": "PL-2021-001"}})
    path = "/v1/pledges/PL-2021-001/release"
    headers = signed(registry, "cib-sanming", method="POST", path=path, body=body)
    problem = refused(client.post(path, content=body, headers=[*headers.items(),
                                                              (twice, headers[twice])]),
                      401, "bad_signature")
    assert f"{twice} header twice" in problem["detail"]


@pytest.mark.parametrize("twice", ["Signature", "Signature-Input"])
def test_a_signature_header_sent_twice_on_a_read_is_refused(client: TestClient, registry: Registry,
                                                            twice: str) -> None:
    path = "/v1/accounts/tonghai-nickel/balances"
    headers = signed(registry, REGULATOR, method="GET", path=path)
    assert client.get(path, headers=headers).status_code == 200
    headers = signed(registry, REGULATOR, method="GET", path=path)
    problem = refused(client.get(path, headers=[*headers.items(), (twice, headers[twice])]), 401,
                      "bad_signature")
    assert f"{twice} header twice" in problem["detail"]


def with_nonce(headers: dict[str, str], nonce: str) -> dict[str, str]:
    out = dict(headers)
    out["Signature-Input"] = re.sub(r'nonce="[^"]*"', f'nonce="{nonce}"', headers["Signature-Input"])
    return out


@pytest.mark.parametrize("length", [H.MAX_NONCE_CHARS + 1, 3000])
def test_a_long_nonce_is_refused_before_anything_else_is_looked_at(
        client: TestClient, registry: Registry, length: int) -> None:
    path = "/v1/accounts/tonghai-nickel/balances"
    headers = with_nonce(signed(registry, REGULATOR, method="GET", path=path), "n" * length)
    problem = refused(client.get(path, headers=headers), 401, "bad_signature")
    assert problem["detail"] == (f"the nonce of signature sig1 is {length} characters long; at "
                                 f"most {H.MAX_NONCE_CHARS} are accepted")
    body = a_transfer_body()
    headers = with_nonce(signed(registry, EXCHANGE, method="POST", path="/v1/transfers", body=body),
                         "n" * length)
    refused(client.post("/v1/transfers", content=body, headers=headers), 401, "bad_signature")


def test_the_longest_nonce_is_accepted(client: TestClient, registry: Registry) -> None:
    path = "/v1/accounts/tonghai-nickel/balances"
    headers = signed(registry, REGULATOR, method="GET", path=path)
    # a nonce is signed: sign one of the longest length
    assert registry.keyring is not None
    key = registry.keyring.get(REGULATOR)
    from ledger.keys import signing_key_id
    from ledger.signing import signature_base, signature_params
    params = signature_params(H.READ_COMPONENTS, created=int(time.time()),
                              keyid=signing_key_id(key), nonce="n" * H.MAX_NONCE_CHARS,
                              tag=H.READ_TAG)
    base = signature_base({"@method": "GET", "@path": path, "@query": "?"}, params)
    import base64
    headers = {"Signature-Input": f"sig1={params}",
               "Signature": f"sig1=:{base64.b64encode(key.sign(base.encode())).decode()}:"}
    assert client.get(path, headers=headers).status_code == 200


def test_a_long_key_id_is_refused(client: TestClient, registry: Registry) -> None:
    path = "/v1/accounts/tonghai-nickel/balances"
    headers = signed(registry, REGULATOR, method="GET", path=path)
    headers["Signature-Input"] = re.sub(r'keyid="[^"]*"', 'keyid="' + "k" * 2000 + '"',
                                        headers["Signature-Input"])
    problem = refused(client.get(path, headers=headers), 401, "bad_signature")
    assert "key id of signature sig1 is 2000 characters long" in problem["detail"]


@pytest.mark.parametrize("header", ["Signature-Input", "Signature"])
def test_an_oversized_signature_header_is_refused_unparsed(header: str) -> None:
    headers = {"signature-input": 'sig1=("@method");created=1;keyid="k";nonce="n";alg="ed25519";tag="t"',
               "signature": "sig1=:AAAA:"}
    headers[header.lower()] += ", " + ", ".join(f"x{i}=:AAAA:" for i in range(1000))
    with pytest.raises(DomainError) as e:
        H.parse_headers(headers)
    assert e.value.code == "bad_signature"
    assert e.value.message.startswith(f"the {header} header is ")
    assert f"at most {H.MAX_SIGNATURE_HEADER_CHARS} are accepted" in e.value.message


# The nonces of signed reads --------------------------------------------------------------------

def test_nonce_memory_refuses_a_replay_inside_the_window_and_forgets_after_it() -> None:
    memory = NonceMemory()
    memory.check("key", "n1", 1000.0)
    with pytest.raises(DomainError) as e:
        memory.check("key", "n1", 1001.0)
    assert e.value.code == "replay"
    memory.check("other-key", "n1", 1001.0)  # another key's nonce is another nonce
    memory.check("key", "n2", 1001.0)
    memory.check("key", "n1", 1000.0 + 361 + 1)  # past the whole window: forgotten


def test_nonce_memory_keeps_at_most_its_size() -> None:
    memory = NonceMemory(size=100)
    for i in range(1000):
        memory.check("key", f"n{i}", 1000.0)
    assert len(memory) == 100
    memory.check("key", "n0", 1000.0)  # the oldest went first


def test_nonce_memory_holds_few_bytes_per_nonce_however_long_the_nonces() -> None:
    memory = NonceMemory()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(2000):
            memory.check("k" * 32, f"{i}-" + "n" * 32_000, 1000.0)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(memory) == 2000
    # Kept whole, 2,000 nonces of 32 KB are 64 MB; a fixed-size digest each, a few hundred bytes.
    assert (after - before) / 2000 < 400, f"{(after - before) / 2000:.0f} bytes per nonce"


# Methods ---------------------------------------------------------------------------------------

def test_a_wrong_method_on_a_fast_write_path_is_answered_as_on_any_write_path(
        client: TestClient) -> None:
    fast = client.put("/v1/transfers", content=b"{}")
    general = client.put("/v1/pledges/PL-2021-001/release", content=b"{}")
    assert (fast.status_code, general.status_code) == (405, 405)
    assert fast.headers["content-type"] == general.headers["content-type"]
    assert fast.json()["code"] == general.json()["code"]
    assert ("allow" in fast.headers) == ("allow" in general.headers)
