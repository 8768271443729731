"""Helpers for tests that talk to several workers and hosts of one registry.

- `Wire`: one signed request exactly as it goes on the wire, so that the very same bytes can be
  sent to any worker, to another host, or to the in-process oracle, once or again (a replay).
- `Channel`: one keep-alive connection to one worker of one server. Each answer says which
  worker gave it: when the connection was reopened (uvicorn closes an idle one after 5 s) the
  channel asks the new connection's worker before it says so.
- `Oracle`: a single in-process registry behind the same FastAPI app (`create_app`), the
  reference every multi-worker answer is compared with.
- `Cluster`: `carbon-ledger serve` processes on one database (one host with N workers, or
  several hosts), with an operator key, initialised over HTTP.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from _load_workers import Server  # type: ignore[import-not-found]
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from api.http_signatures import sign_request
from api.routes import path_for
from api.server import create_app
from ledger.application import Registry
from ledger.keys import generate, public_text, write_private
from ledger.signing import canonical_json

OPERATOR = "registry"
ORIGIN = "carbon-ledger.test/workers"
PIN_ATTEMPTS = 20


@dataclass(frozen=True)
class Wire:
    """A signed request as sent: method, path (with its query), body, headers."""

    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]
    label: str  # what it is, for a failing sequence's report

    @staticmethod
    def write(key: Ed25519PrivateKey, actor: str, name: str, args: dict[str, Any],
              command_id: str, consents: list[Ed25519PrivateKey] | None = None) -> Wire:
        body = canonical_json({"command": name, "actor": actor, "command_id": command_id,
                               "args": args})
        method, path = ("POST", "/v1/commands") if name == "initialise" else path_for(name, args)
        headers = sign_request(key, method=method, path=path, body=body,
                               created=int(time.time()), consents=consents)
        headers["Content-Type"] = "application/json"
        return Wire(method, path, body, headers, f"{name} {command_id} by {actor}")

    @staticmethod
    def read(key: Ed25519PrivateKey | None, path: str, params: dict[str, Any] | None = None,
             who: str = "anonymous") -> Wire:
        query = urlencode(params or {})
        headers = ({} if key is None else
                   sign_request(key, method="GET", path=path, query=query, created=int(time.time())))
        return Wire("GET", path + (f"?{query}" if query else ""), None, headers,
                    f"GET {path}{'?' + query if query else ''} by {who}")


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]
    worker: str  # "<port>/<pid>" of the worker that answered ("oracle" in process)

    @property
    def code(self) -> str | None:
        return self.body.get("code") if self.status >= 400 and isinstance(self.body, dict) else None


def _answer(response: httpx.Response, worker: str) -> Answer:
    try:
        body = response.json()
    except ValueError:
        body = {"unparsed": response.text[:300]}
    return Answer(response.status_code, body, {k.lower(): v for k, v in response.headers.items()},
                  worker)


class Channel:
    """One keep-alive connection to one worker (identified by the server's port and its pid)."""

    def __init__(self, base_url: str, timeout_s: float = 60.0) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=timeout_s,
                                 limits=httpx.Limits(max_connections=1,
                                                     max_keepalive_connections=1))
        self.local: Any = None  # the connection's local address, to see it reopened
        self.worker = ""
        self._learn()

    def _local(self, response: httpx.Response) -> Any:
        stream = response.extensions.get("network_stream")
        return stream.get_extra_info("client_addr") if stream is not None else None

    def _learn(self) -> None:
        response = self.http.get("/healthz")
        response.raise_for_status()
        self.local = self._local(response)
        self.worker = f"{self.base_url.rsplit(':', 1)[1]}/{response.json()['worker']}"

    def send(self, wire: Wire) -> Answer:
        response = self.http.request(wire.method, wire.path, content=wire.body,
                                     headers=wire.headers)
        if self._local(response) != self.local:  # reconnected: to which worker?
            self._learn()
        return _answer(response, self.worker)

    def close(self) -> None:
        self.http.close()


def pin_channels(base_url: str, workers: int) -> list[Channel]:
    """One channel on each of a server's `workers` workers (connections are handed out in turn)."""
    found: dict[str, Channel] = {}
    for _ in range(PIN_ATTEMPTS):
        channel = Channel(base_url)
        if channel.worker in found:
            channel.close()
        else:
            found[channel.worker] = channel
        if len(found) == workers:
            return list(found.values())
    for channel in found.values():
        channel.close()
    raise RuntimeError(f"could not reach {workers} workers at {base_url}: {sorted(found)}")


class Oracle:
    """The same requests answered by one registry in this process (SQLite in memory), through
    the same app, driven straight over ASGI on an event loop of its own (a test client's
    thread hand-offs cost as much as the real server's round trip)."""

    def __init__(self) -> None:
        self.registry = Registry("sqlite:///:memory:", auto_checkpoint=False)
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(self.registry)),
                                        base_url="http://oracle")

    def send(self, wire: Wire) -> Answer:
        response = self.loop.run_until_complete(self.client.request(
            wire.method, wire.path, content=wire.body, headers=wire.headers))
        return _answer(response, "oracle")

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()
        self.registry.close()


def database(request: Any, root: Path) -> str:
    """A new registry's URL for `request.param` ("sqlite" or "postgres"): a file under `root`,
    or a schema of its own in the test session's PostgreSQL database (for module fixtures)."""
    if request.param == "sqlite":
        return f"sqlite:///{root / 'registry.db'}"
    return f"{request.getfixturevalue('pg_database')}?schema=w_{secrets.token_hex(6)}"


@dataclass
class Cluster:
    """Servers on one database: `hosts` is the number of workers of each server."""

    db: str
    root: Path
    hosts: tuple[int, ...]
    operator_key: Ed25519PrivateKey = field(default_factory=generate)
    servers: list[Server] = field(default_factory=list)
    channels: list[Channel] = field(default_factory=list)

    def start(self) -> Cluster:
        keys = self.root / "keys"
        keys.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(keys / f"{OPERATOR}.key", self.operator_key)  # the servers checkpoint
        try:
            for n, workers in enumerate(self.hosts):
                server = Server(self.db, keys, workers, self.root / f"server-{n}.log")
                self.servers.append(server.start())
                self.channels += pin_channels(server.base_url, workers)
        except BaseException:
            self.stop()
            raise
        return self

    def initialise(self, *oracles: Oracle) -> None:
        wire = Wire.write(self.operator_key, OPERATOR, "initialise", {
            "origin": ORIGIN, "operator_id": OPERATOR, "name": "test operator",
            "public_key": public_text(self.operator_key)}, "init")
        for target in (self.channels[0], *oracles):
            answer = target.send(wire)
            assert answer.status == 200, answer

    def stop(self) -> None:
        for channel in self.channels:
            channel.close()
        self.channels.clear()
        for server in self.servers:
            server.stop()
        self.servers.clear()

    def log_text(self) -> str:
        return "\n".join(s.log_text() for s in self.servers)


def workers_of(answers: Iterable[Answer]) -> list[str]:
    return [a.worker for a in answers]
