"""The HTTP API: FastAPI over the registry, every write an RFC 9421-signed command.

A write's body is the command itself — {"command", "actor", "command_id", "args"} in canonical
JSON — so the request's signature is the command's actor signature in the log, and an auditor
re-checks it from the log alone. Each resource path accepts the commands that belong to it
(POST /v1/transfers takes "transfer"; POST /v1/pledges/{id}/release takes "release_pledge" for
that id). Reads are signed the same way (or not at all, for the public registry).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive, Scope, Send

from api import access_log
from api import http_signatures as H
from api.problems import domain_error_handler, from_domain, problem, responses
from api.routes import PARAM_ARG, WRITES, WriteRoute
from api.web import site
from domain import commands as C
from domain.errors import DomainError
from domain.trade import Trade
from domain.values import yuan
from ledger import as_of as as_of_values
from ledger.application import Registry
from ledger.checkpoints import b64, checkpoint_json, unb64, verify_cosignature
from ledger.keys import Keyring, default_keys_dir, verify
from ledger.proofs import bundle as proof_bundle
from ledger.proofs import certificate as retirement_certificate
from ledger.runtime import freeze_heap, tune_collector
from ledger.signing import (
    ACTOR_TAG,
    CONSENT_TAG,
    MAX_BODY_BYTES,
    WINDOW_FUTURE_S,
    WINDOW_PAST_S,
    Signature,
    SignedCommand,
    parse_base,
    parse_canonical,
)
from ledger.store import db_url

ENV_KEYS = "CARBON_LEDGER_KEYS"
ENV_ALLOW_EMPTY = "CARBON_LEDGER_ALLOW_EMPTY"  # serve --allow-empty: may open a store with no registry
MAX_LOG_PAGE = 1000
MAX_POSITION = 2**53  # far beyond any log; bounds every position a query may name
NONCE_MEMORY = 100_000
# A cosignature body is {"witness", "key_id", "signature"}: about 200 bytes.
MAX_COSIGNATURE_BYTES = 16 * 1024
CHECKPOINT_POLL_S = 0.5
FOLLOW_POLL_S = 1.0
FOLLOW_COALESCE_S = 0.05  # notifications that arrive this close together: one catch-up
# Threads that run Registry.execute: commands that wait in them together are committed together
# (group commit), so there are more of them than cores.
WRITE_THREADS = 40
# The status counted in /metrics for a request whose client went away before it was answered
# (nginx's 499): nothing is sent.
CLIENT_GONE = 499


_COMMAND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["command", "actor", "command_id", "args"],
    "additionalProperties": False,
    "properties": {
        "command": {"type": "string", "enum": list(C.COMMAND_NAMES)},
        "actor": {"type": "string", "pattern": "^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"},
        "command_id": {"type": "string", "maxLength": 128},
        "args": {"type": "object"},
    },
}
_OUTCOME_SCHEMA: dict[str, Any] = {"type": "object", "additionalProperties": True}
_SIGNATURE_HEADERS = [
    {"name": "Signature-Input", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "RFC 9421 signature parameters (see docs/api.md)"},
    {"name": "Signature", "in": "header", "required": False, "schema": {"type": "string"}},
    {"name": "Content-Digest", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "RFC 9530 digest of the body, sha-256=:…:"},
]


@dataclass
class Caller:
    participant_id: str | None = None
    role: str | None = None

    @property
    def regulator(self) -> bool:
        return self.role in ("regulator", "operator")


class NonceMemory:
    """Nonces seen on signed reads inside the signature window, so a replayed read is refused.

    Each is kept as a 16-byte digest of its key id and nonce, so the memory holds `size` entries
    of a fixed size (about 200 bytes each, 20 MB at the default size) however long the nonces a
    client signs: kept whole, 3,000 reads with 64 KB nonces held 376 MB."""

    def __init__(self, size: int = NONCE_MEMORY) -> None:
        self.seen: OrderedDict[bytes, float] = OrderedDict()
        self.size = size
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.seen)

    def check(self, key_id: str, nonce: str, now: float) -> None:
        seen = hashlib.blake2b(f"{key_id}\x00{nonce}".encode("utf-8", "surrogatepass"),
                               digest_size=16).digest()
        with self.lock:
            horizon = now - WINDOW_PAST_S - WINDOW_FUTURE_S
            while self.seen and next(iter(self.seen.values())) < horizon:
                self.seen.popitem(last=False)
            if seen in self.seen:
                raise DomainError("replay", "this signed request was received before (nonce reused)")
            self.seen[seen] = now
            if len(self.seen) > self.size:
                self.seen.popitem(last=False)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests_total", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.commands = Counter("ledger_commands_total", "Commands by outcome",
                                ["command", "outcome"], registry=self.registry)
        self.position = Gauge("ledger_log_position", "Records in the log", registry=self.registry)
        self.checkpoint = Gauge("ledger_checkpoint_size", "Size of the latest checkpoint",
                                registry=self.registry)
        # Labelled children by their labels: .labels() validates and locks on every call.
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}
        self._outcomes: dict[tuple[str, str], Any] = {}

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        counted = self._counted.get((method, route, status))
        if counted is None:
            counted = self._counted[(method, route, status)] = self.requests.labels(
                method, route, str(status))
        counted.inc()
        timed = self._timed.get((method, route))
        if timed is None:
            timed = self._timed[(method, route)] = self.latency.labels(method, route)
        timed.observe(seconds)

    def command(self, name: str, outcome: str) -> None:
        counted = self._outcomes.get((name, outcome))
        if counted is None:
            counted = self._outcomes[(name, outcome)] = self.commands.labels(name, outcome)
        counted.inc()


class WriteThreads:
    """The threads that run Registry.execute for the event loop. Commands that wait in them
    together are committed together (group commit), so there are more threads than cores.

    What asyncio's run_in_executor does, with less on the way: a queue put, and one
    call_soon_threadsafe back with the outcome. Threads start as they are needed (when none is
    idle), up to `size`; `stop()` ends them after the work queued before it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.idle = threading.Semaphore(0)
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def run(self, fn: Callable[[Any], Any], arg: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        # in the request's context, so that what fn notes reaches the request's log line
        self.queue.put((loop, future, fn, arg, contextvars.copy_context()))
        if not self.idle.acquire(blocking=False):
            with self.lock:
                if len(self.threads) < self.size:
                    thread = threading.Thread(target=self._work, daemon=True,
                                              name=f"write-{len(self.threads)}")
                    self.threads.append(thread)
                    thread.start()
        return future

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            loop, future, fn, arg, context = item
            try:
                result, error = context.run(fn, arg), None
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting request
                result, error = None, e
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass
            del item, loop, future, result, error, context
            self.idle.release()

    def stop(self) -> None:
        with self.lock:
            threads, self.threads = self.threads, []
        for _ in threads:
            self.queue.put(None)
        for thread in threads:
            thread.join()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class RegistryApp(FastAPI):
    """FastAPI, with the writes on fixed paths (POST /v1/transfers and the like) answered before
    its middleware stack, routing, dependency solving and Request objects, which cost more than
    the rest of the HTTP side of a write. Every other request goes through FastAPI as usual.
    Every request is timed for /metrics here (as a pure ASGI wrapper: Starlette's
    BaseHTTPMiddleware runs each request in a task group of its own)."""

    metrics: Metrics
    access_log: access_log.AccessLog | None = None
    fast_writes: dict[tuple[str, str], tuple[str, Callable[[Scope, Receive, Send], Awaitable[int]]]]
    # GET /v1/tickets/{ticket_no} without a query (the public registry's most read page): the
    # handler given the ticket number
    fast_ticket: Callable[[str], Callable[[Scope, Receive, Send], Awaitable[int]]] | None = None

    def _fast_read(self, path: str) -> tuple[str, Callable[[Scope, Receive, Send], Awaitable[int]]] | None:
        if self.fast_ticket is None or not path.startswith("/v1/tickets/"):
            return None
        ticket_no = path[len("/v1/tickets/"):]
        if not ticket_no or "/" in ticket_no:
            return None
        return "/v1/tickets/{ticket_no}", self.fast_ticket(ticket_no)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"]
        log = self.access_log
        if log is not None:
            noted, token = access_log.start()
        status = 500
        try:
            fast = (None if self.root_path or scope.get("root_path")
                    else self.fast_writes.get((method, scope["path"])))
            if fast is None and method == "GET" and not scope.get("query_string"):
                fast = self._fast_read(scope["path"])
            if fast is not None:
                name, handle = fast
                status = await handle(scope, receive, send)
            else:
                async def send_and_see(message: Message) -> None:
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = message["status"]
                    await send(message)

                await super().__call__(scope, receive, send_and_see)
                name = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.request(method, name, status, time.perf_counter() - started)
        finally:
            if log is not None:
                access_log.finish(token)
                log.emit(method, scope["path"], status, time.perf_counter() - started,
                         scope.get("client"), noted)


# Refusals given before the actor's signature is known to verify: their log line names no actor.
_UNAUTHENTICATED = frozenset({
    "payload_too_large", "non_canonical", "invalid_argument", "batch_too_large", "same_party",
    "unsigned", "bad_signature", "unknown_participant", "unknown_key", "revoked_key",
    "key_not_yet_valid", "stale_signature", "replay", "not_authorized", "consent_missing",
    "nesting_too_deep"})

_WANTED_HEADERS = {b"content-length": "content-length", b"content-digest": "content-digest",
                   b"signature-input": "signature-input", b"signature": "signature"}


def _headers_of(scope: Scope) -> dict[str, str]:
    """The request headers a write reads (the first of each, as Starlette's Headers.get gives),
    with a signed header that came twice named under H.REPEATED (the signature check refuses it)."""
    out: dict[str, str] = {}
    for key, value in scope["headers"]:
        name = _WANTED_HEADERS.get(key)
        if name is None:
            name = _WANTED_HEADERS.get(key.lower())
        if name is None:
            continue
        if name not in out:
            out[name] = value.decode("latin-1")
        elif name in H.SIGNED_HEADERS:
            out.setdefault(H.REPEATED, name)
    return out


class _TooLarge(Exception):
    """A body that grew past its cap while it was read."""

    def __init__(self, cap: int) -> None:
        self.cap = cap


async def _read_body(receive: Receive, cap: int) -> bytes:
    """The request's body, read as it arrives; _TooLarge as soon as it grows past `cap` (what
    else the client sends is not read), ClientDisconnect if the client goes away."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()  # as Request.body() does
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise _TooLarge(cap)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(declared: str | int | None, cap: int = MAX_BODY_BYTES) -> JSONResponse | None:
    """The refusal of a body over the cap (`declared`: its length, or a Content-Length), if it is."""
    if isinstance(declared, str):
        declared = int(declared) if declared.isdigit() else None
    if declared is None or declared <= cap:
        return None
    return _refusal_of_size(f"{declared} bytes", cap)


def _grew_too_large(cap: int = MAX_BODY_BYTES) -> JSONResponse:
    return _refusal_of_size(f"more than {cap} bytes", cap)


def _refusal_of_size(size: str, cap: int) -> JSONResponse:
    # It closes the connection: the rest of the body is not read, so the connection cannot carry
    # another request.
    refusal = problem("payload_too_large", f"the body is {size}; at most {cap} are accepted")
    refusal.headers["Connection"] = "close"
    return refusal


def _json_body(content: Any) -> bytes:
    """Exactly what Starlette's JSONResponse renders."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None,
                      separators=(",", ":")).encode("utf-8")


class _RawResponse(Response):
    """A response whose status, raw headers and body are already made."""

    def __init__(self, status: int, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status_code = status
        self.body = body
        self.raw_headers = raw_headers
        self.background = None


def create_app(registry: Registry | None = None) -> FastAPI:
    """The application; with no registry given, one is opened from the environment."""
    state: dict[str, Any] = {"registry": registry}
    metrics = Metrics()
    nonces = NonceMemory()
    writers = WriteThreads(WRITE_THREADS)

    def reg() -> Registry:
        app_registry = state["registry"]
        assert app_registry is not None
        return app_registry

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if state["registry"] is None:
            url = db_url(None)
            keys = (FilePath(os.environ[ENV_KEYS]) if os.environ.get(ENV_KEYS)
                    else default_keys_dir(url))
            state["registry"] = Registry(url, keyring=Keyring(keys), auto_checkpoint=False,
                                         create=os.environ.get(ENV_ALLOW_EMPTY) == "1")
            state["owned"] = True
        if state.get("owned"):  # a server process (not an app built around a given registry)
            # Load what every request needs before the first one; keep the collector off it.
            reg().projection()
            reg().log_tree()
            tune_collector()
            freeze_heap()
        stop = threading.Event()
        threads = [threading.Thread(target=_checkpoint_loop, args=(reg(), stop), daemon=True,
                                    name="checkpointer"),
                   threading.Thread(target=_follow_loop, args=(reg(), stop), daemon=True,
                                    name="projection-follower")]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=5)
            writers.stop()
            if state.get("owned"):
                reg().close()

    app = RegistryApp(
        title="carbon-ledger",
        version="0.1.0",
        summary="A verifiable registry of forestry carbon tickets (林业碳票)",
        description="Every write is a command signed with RFC 9421 HTTP message signatures "
        "(Ed25519) over @method, @path and the RFC 9530 Content-Digest of its canonical JSON "
        "body. See docs/api.md for the signature base and examples.",
        lifespan=lifespan,
        docs_url=None, redoc_url=None,  # served by api.web, from the package's own assets
    )
    app.add_exception_handler(DomainError, domain_error_handler)
    site.install(app, reg)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return problem("invalid_argument", f"{where}: {first.get('msg', 'invalid')}")

    app.metrics = metrics
    app.access_log = access_log.from_environment()
    app.fast_writes = {}

    # Authentication ------------------------------------------------------------------------

    def caller_of(request: Request) -> Caller:
        """Who signed a read (anonymous when unsigned)."""
        wire = H.parse_headers(request.headers)
        if not wire:
            return Caller()
        if len(wire) != 1 or wire[0].tag != H.READ_TAG or wire[0].covered != H.READ_COMPONENTS:
            raise DomainError("bad_signature", "a read is signed once, over @method, @path and @query "
                              f"with tag {H.READ_TAG}")
        sig = wire[0]

        def signer(projection: Any) -> tuple[str, str, str]:
            owner = projection.key_owner.get(sig.keyid)
            if owner is None:
                raise DomainError("unknown_key", f"key {sig.keyid} is not registered")
            participant = projection.participants[owner]
            return owner, participant.role, participant.active_key(sig.keyid)

        owner, role, public = reg().view(signer)
        base = H.base_for(sig, method=request.method, path=request.url.path,
                          query=request.url.query, digest_header=None)
        params = parse_base(base).params
        now = reg().clock()
        created = params.get("created")
        if not isinstance(created, int) or not params.get("nonce"):
            raise DomainError("bad_signature", "a signed read needs integer created and a nonce")
        if not now - WINDOW_PAST_S <= created <= now + WINDOW_FUTURE_S:
            raise DomainError("stale_signature", "the read's signature is outside the accepted window")
        if not verify(public, sig.signature, base.encode()):
            raise DomainError("bad_signature", f"the read's signature by {owner} does not verify")
        nonces.check(sig.keyid, str(params.get("nonce", "")), now)
        access_log.note(actor=owner, key_id=sig.keyid)
        return Caller(owner, role)

    def require(caller: Caller, allowed: bool, what: str) -> None:
        if allowed:
            return
        if caller.participant_id is None:
            raise DomainError("unsigned", f"{what} is not public: sign the request")
        raise DomainError("not_authorized", f"{caller.participant_id} may not read {what}")

    # Writes --------------------------------------------------------------------------------

    async def decide(route: WriteRoute, method: str, path: str, path_params: Mapping[str, str],
                     headers: Mapping[str, str], body: bytes
                     ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """A write's status, raw headers and body.

        Registry.execute parses and checks the body in full (in a write thread), so on the way
        there a plain json.loads is enough to check the route and to label the signatures.
        Whenever a check here refuses, the body is first parsed in full, so that every request
        gets the refusal it got when the server parsed it first: a malformed body is refused
        as such before a missing or bad signature, and before a route that does not take it.
        """
        refused = _too_large(len(body))
        if refused is not None:
            return _problem_parts(refused)

        def full_parse() -> C.Command:
            command = C.parse(parse_canonical(body))
            if command.name not in route.commands:
                raise DomainError("invalid_argument", f"{route.method} {route.path} takes "
                                  f"{' or '.join(route.commands[:3])} commands, not {command.name}")
            access_log.note(command=command.name, command_id=command.command_id)
            for param in route.path_params:
                if command.get(PARAM_ARG[param]) != path_params[param]:
                    raise DomainError("invalid_argument", f"the path says {param} "
                                      f"{path_params[param]!r}, the command says "
                                      f"{command.get(PARAM_ARG[param])!r}")
            return command

        name = ""
        actor: Any = None
        signed: SignedCommand | None = None
        try:
            data = quick_look(route, body)
            if data is not None:
                name, actor, args = data
                try:
                    signed = signed_command(method, path, headers, body, name, actor, args)
                except DomainError:
                    full_parse()  # a malformed body is refused first, as it would be below
                    raise
            else:
                command = full_parse()
                name, actor = command.name, command.actor
                signed = signed_command(method, path, headers, body, name, command.actor,
                                        command.fields)
            outcome = await writers.run(reg().execute, signed)
        except DomainError as e:
            metrics.command(route.commands[0] if len(route.commands) == 1 else "any", e.code)
            if e.code not in _UNAUTHENTICATED:
                note_signer(signed, actor)
            return _problem_parts(from_domain(e))
        metrics.command(name, "accepted")
        replayed = bool(outcome.pop("replayed", False))
        position = outcome.pop("position", None)
        note_signer(signed, actor)
        access_log.note(position=position, replayed=replayed)
        raw = [(b"idempotent-replayed", b"true" if replayed else b"false")]
        if position is not None:
            raw.append((b"x-log-position", str(position).encode("latin-1")))
        content = _json_body(outcome)
        raw.append((b"content-length", str(len(content)).encode("latin-1")))
        raw.append((b"content-type", b"application/json"))
        return (201 if route.created else 200), raw, content

    def note_signer(signed: SignedCommand | None, actor: Any) -> None:
        """The actor and the key it signed with, for the request's log line."""
        if signed is not None:
            key_id = next((s.key_id for s in signed.signatures if s.signer == actor), None)
            access_log.note(actor=actor, key_id=key_id)

    def quick_look(route: WriteRoute, body: bytes) -> tuple[str, Any, dict[str, Any]] | None:
        """(command, actor, args) by a plain parse, when the route takes this command and has
        no path parameters to compare (their checks need the parsed command); else None."""
        if route.path_params:
            return None
        try:
            data = json.loads(body)
        except Exception:  # noqa: BLE001 - the full parse says what is wrong
            return None
        if type(data) is not dict:
            return None
        name, args = data.get("command"), data.get("args")
        if type(name) is not str or name not in route.commands or type(args) is not dict:
            return None
        access_log.note(command=name, command_id=data.get("command_id"))
        return name, data.get("actor"), args

    def add_write(route: WriteRoute) -> None:
        created = 201 if route.created else 200

        async def endpoint(request: Request) -> Response:
            refused = _too_large(request.headers.get("content-length"))
            if refused is not None:
                return refused
            try:
                body = await _read_body(request.receive, MAX_BODY_BYTES)
            except _TooLarge:
                return _grew_too_large()
            except ClientDisconnect:
                return Response(status_code=CLIENT_GONE)  # nobody to send it to
            status, raw, content = await decide(route, request.method, request.url.path,
                                                request.path_params, request.headers, body)
            return _RawResponse(status, raw, content)

        async def fast(scope: Scope, receive: Receive, send: Send) -> int:
            """The same write, straight from ASGI (its path has no parameters)."""
            async def answer() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
                headers = _headers_of(scope)
                refused = _too_large(headers.get("content-length"))
                if refused is None:
                    try:
                        body = await _read_body(receive, MAX_BODY_BYTES)
                    except _TooLarge:
                        refused = _grew_too_large()
                if refused is not None:
                    return _problem_parts(refused)
                return await decide(route, scope["method"], scope["path"], {}, headers, body)

            try:
                return await _send_parts(scope, receive, send, answer())
            except ClientDisconnect:  # gone before its body arrived: nothing to answer
                return CLIENT_GONE

        if not route.path_params:
            app.fast_writes[(route.method, route.path)] = (route.path, fast)
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                  for p in route.path_params]
        example = _examples().get(route.commands[0]) if len(route.commands) == 1 else None
        content: dict[str, Any] = {"schema": _COMMAND_SCHEMA}
        if example:
            content["example"] = example
        app.add_api_route(
            route.path, endpoint, methods=[route.method], summary=route.summary,
            name=f"{route.method.lower()}_{route.path}",
            status_code=created,
            responses={**responses(400, 401, 403, 404, 409, 413, 422),
                       created: {
                           "description": "the command's outcome",
                           "content": {"application/json": {"schema": _OUTCOME_SCHEMA}}}},
            openapi_extra={"parameters": params + _SIGNATURE_HEADERS,
                           "requestBody": {"required": True,
                                           "content": {"application/json": content}}},
        )

    def signed_command(method: str, path: str, headers: Mapping[str, str], body: bytes,
                       name: str, actor: Any, args: Mapping[str, Any]) -> SignedCommand:
        wire = H.parse_headers(headers)
        if not wire:
            raise DomainError("unsigned", "the request carries no signature; sign it with RFC 9421")
        digest = headers.get("content-digest")
        sigs = []
        for w in wire:
            base = H.base_for(w, method=method, path=path, query="", digest_header=digest)
            if w.tag == ACTOR_TAG:
                signer = actor
            elif w.tag == CONSENT_TAG:
                signer = reg().key_owner(w.keyid) or ""
                if name == "rotate_key":  # the new key is not registered yet
                    signer = args.get("participant_id")
            else:
                raise DomainError("bad_signature", f"unknown signature tag {w.tag!r}")
            sigs.append(Signature(signer, w.keyid, base, w.signature))
        return SignedCommand(body=body, signatures=tuple(sigs), method=method, path=path)

    for route in WRITES:
        add_write(route)

    # Reads ---------------------------------------------------------------------------------

    ok = {200: {"description": "the resource", "content": {"application/json": {"schema": _OUTCOME_SCHEMA}}}}
    read_responses = {**responses(400, 401, 403, 404), **ok}
    # the reads that answer a list (documented as one, so that generated clients expect it)
    list_responses = {**responses(400, 401, 403, 404), 200: {
        "description": "the resources",
        "content": {"application/json": {"schema": {"type": "array", "items": _OUTCOME_SCHEMA}}}}}

    def as_of_position(as_of: str | None = Query(
            None, description="answer as of a log position, or an ISO 8601 date or date-time "
            "(2023-12-31 is the end of that day; without an offset, UTC+08:00)",
            examples=["40", "2021-12-31", "2022-03-01T12:00:00+08:00"],
            # the forms, for clients and generated tests; ledger.as_of refuses any other value
            # with a sentence that names the head (a pattern here would refuse it without one)
            json_schema_extra={"pattern": r"^([0-9]{1,20}|[0-9]{4}-[0-9]{2}-[0-9]{2}([T ].+)?)$",
                               "maxLength": as_of_values.MAX_AS_OF_LEN})) -> int | None:
        """The as_of of every read that looks back, resolved by ledger.as_of."""
        return as_of_values.position(reg().recorder, as_of)

    @app.get("/healthz", summary="Liveness and log position", responses=ok)
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "position": reg().log_position(), "worker": os.getpid()}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def metrics_text() -> Response:
        metrics.position.set(reg().log_position())
        latest = reg().recorder.latest_checkpoint()
        metrics.checkpoint.set(latest[0] if latest else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/participants/{participant_id}", summary="A participant, its role and keys",
             responses=read_responses)
    def get_participant(participant_id: str) -> dict[str, Any]:
        view = reg().view(lambda p: p.participant(participant_id))
        view.pop("mandates")
        return view

    @app.get("/v1/projects/{project_id}", summary="A project", responses=read_responses)
    def get_project(project_id: str) -> dict[str, Any]:
        return reg().view(lambda p: p.project(project_id))

    @app.get("/v1/tickets/{ticket_no}", summary="A ticket's supply and serial blocks (public)",
             responses=read_responses)
    def get_ticket(ticket_no: str, as_of: int | None = Depends(as_of_position)) -> dict[str, Any]:
        return reg().view(lambda p: p.ticket(ticket_no), as_of=as_of)

    def ticket_parts(ticket_no: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        try:
            view = reg().view(lambda p: p.ticket(ticket_no))
        except DomainError as e:
            return _problem_parts(from_domain(e))
        content = _json_body(view)
        return 200, [(b"content-length", str(len(content)).encode("latin-1")),
                     (b"content-type", b"application/json")], content

    def fast_ticket(ticket_no: str) -> Callable[[Scope, Receive, Send], Awaitable[int]]:
        async def handle(scope: Scope, receive: Receive, send: Send) -> int:
            """get_ticket without FastAPI's layers: the same status, headers and body."""
            return await _send_parts(scope, receive, send, writers.run(ticket_parts, ticket_no))

        return handle

    app.fast_ticket = fast_ticket

    @app.get("/v1/tickets/{ticket_no}/history", summary="Every event of a ticket (public)",
             responses=list_responses)
    def get_ticket_history(ticket_no: str) -> list[dict[str, Any]]:
        return reg().view(lambda p: p.history(ticket=ticket_no))

    @app.get("/v1/transfers/{trade_id}", summary="A settled trade (its exchange, parties, regulator)",
             responses=read_responses)
    def get_transfer(request: Request, trade_id: str,
                     exchange: str | None = Query(None, description="the posting exchange "
                                                  "(default: the caller)")) -> dict[str, Any]:
        caller = caller_of(request)
        exchange = exchange or caller.participant_id
        if exchange is None:
            raise DomainError("unsigned", "a trade is not public: sign the request")
        trade = reg().get_aggregate(Trade, Trade.id_for(exchange, trade_id))
        if trade is None:
            raise DomainError("unknown_trade", f"{exchange} has settled no trade {trade_id}")
        require(caller, caller.regulator or caller.participant_id in (
            trade.exchange, trade.seller, trade.buyer), f"trade {trade_id}")
        return {"trade_id": trade.trade_id, "exchange": trade.exchange, "seller": trade.seller,
                "buyer": trade.buyer, "ticket_no": trade.ticket_no, "quantity_t": trade.quantity_t,
                "price": yuan(trade.price_fen), "mode": trade.mode, "batch_id": trade.batch_id,
                "serials": [{"first_serial": f"{trade.ticket_no}-{a:07d}",
                             "last_serial": f"{trade.ticket_no}-{b:07d}"} for a, b in trade.ranges]}

    @app.get("/v1/accounts/{holder}/balances", summary="A holder's balances",
             responses=read_responses)
    def get_balances(request: Request, holder: str,
                     as_of: int | None = Depends(as_of_position)) -> dict[str, Any]:
        caller = caller_of(request)

        def read(projection: Any) -> tuple[dict[str, Any], set[str], set[str]]:
            view = projection.balances(holder)
            pledged_to_caller = {p.pledge_id for p in projection.pledges.values()
                                 if p.pledgee == caller.participant_id and p.pledgor == holder
                                 } if caller.role == "bank" else set()
            return view, set(projection.participants[holder].mandates), pledged_to_caller

        view, mandates, pledges = reg().view(read, as_of=as_of)
        if caller.regulator or caller.participant_id == holder:
            return view
        if caller.role == "exchange" and caller.participant_id in mandates:
            return view  # a member of this exchange
        if caller.role == "bank":
            for t in view["tickets"]:
                t["blocks"] = [b for b in t["blocks"] if b.get("pledge_id") in pledges]
            view["tickets"] = [t for t in view["tickets"] if t["blocks"]]
            for t in view["tickets"]:
                t.update(available_t=0, retired_t=0, cancelled_t=0,
                         pledged_t=sum(b["quantity_t"] for b in t["blocks"]))
            view["totals"] = {"available_t": 0, "retired_t": 0, "cancelled_t": 0,
                              "pledged_t": sum(t["pledged_t"] for t in view["tickets"])}
            view["scope"] = f"units pledged to {caller.participant_id}"
            return view
        require(caller, False, f"{holder}'s balances")
        return view

    @app.get("/v1/pledges", summary="The pledge register (a bank: its own; regulators: all)",
             responses=list_responses)
    def list_pledges(request: Request, bank: str | None = Query(None),
                     as_of: int | None = Depends(as_of_position)) -> list[dict[str, Any]]:
        caller = caller_of(request)
        if not caller.regulator:
            require(caller, caller.role == "bank" and bank in (None, caller.participant_id),
                    "the pledge register")
            bank = caller.participant_id
        return reg().view(lambda p: p.pledge_register(bank), as_of=as_of)

    @app.get("/v1/pledges/{pledge_id}", summary="A pledge (its bank, its pledgor, regulators)",
             responses=read_responses)
    def get_pledge(request: Request, pledge_id: str) -> dict[str, Any]:
        return readable_pledge(request, pledge_id)

    @app.get("/v1/pledges/{pledge_id}/proof", summary="A pledge's proof bundle",
             responses=read_responses)
    def get_pledge_proof(request: Request, pledge_id: str) -> dict[str, Any]:
        readable_pledge(request, pledge_id)
        return proof_bundle(reg(), "pledge", pledge_id)

    def readable_pledge(request: Request, pledge_id: str) -> dict[str, Any]:
        """The pledge, for its bank, its pledgor and regulators (unsigned callers learn nothing)."""
        caller = caller_of(request)
        require(caller, caller.participant_id is not None, "a pledge")
        view = reg().view(lambda p: p.pledge(pledge_id))
        require(caller, caller.regulator or caller.participant_id in (view["pledgee"], view["pledgor"]),
                f"pledge {pledge_id}")
        return view

    @app.get("/v1/policies/{policy_id}", summary="A policy and its claims", responses=read_responses)
    def get_policy(request: Request, policy_id: str) -> dict[str, Any]:
        caller = caller_of(request)
        require(caller, caller.participant_id is not None, "a policy")
        view = reg().view(lambda p: p.policy(policy_id))
        require(caller, caller.regulator or caller.participant_id in (
            view["insurer"], view["insured"], view["loss_payee"]), f"policy {policy_id}")
        return view

    @app.get("/v1/claims/{claim_id}", summary="A claim", responses=read_responses)
    def get_claim(request: Request, claim_id: str) -> dict[str, Any]:
        caller = caller_of(request)
        require(caller, caller.participant_id is not None, "a claim")
        view, policy, issuers = reg().view(lambda p: (
            p.claim(claim_id), p.policies[p.claims[claim_id].policy_id],
            {p.tickets[t].issuer for t, _ in p.policies[p.claims[claim_id].policy_id].lines}))
        # (the tickets' issuer reads the claims whose loss it is asked to confirm)
        require(caller, caller.regulator or caller.participant_id in (
            policy.insurer, policy.insured, policy.loss_payee, *issuers), f"claim {claim_id}")
        return view

    @app.get("/v1/retirements/{retirement_id}", summary="A retirement (public)",
             responses=read_responses)
    def get_retirement(retirement_id: str) -> dict[str, Any]:
        return reg().view(lambda p: p.retirement(retirement_id))

    @app.get("/v1/retirements/{retirement_id}/certificate",
             summary="A retirement certificate with its proof (public)", responses=read_responses)
    def get_certificate(retirement_id: str) -> dict[str, Any]:
        return retirement_certificate(reg(), retirement_id)

    @app.get("/v1/compliance/{entity}/{scheme}/{period}", summary="Offset usage and headroom",
             responses=read_responses)
    def get_compliance(request: Request, entity: str, scheme: str, period: str,
                       as_of: int | None = Depends(as_of_position)) -> dict[str, Any]:
        caller = caller_of(request)
        require(caller, caller.regulator or caller.participant_id == entity,
                f"{entity}'s compliance account")
        return reg().view(lambda p: p.compliance_view(entity, scheme, period), as_of=as_of)

    @app.get("/v1/log", summary="Log records with their chain values (regulators)",
             responses=read_responses)
    def get_log(request: Request, after: int = Query(0, ge=0, le=MAX_POSITION),
                limit: int = Query(100, ge=1, le=MAX_LOG_PAGE)) -> dict[str, Any]:
        caller = caller_of(request)
        require(caller, caller.regulator, "the log")
        app_registry = reg()
        records = app_registry.recorder.select_records(after + 1, limit)
        projection = app_registry.projection()
        items = []
        for r in records:
            n = app_registry.recorder.select_notifications(r.position, 1, stop=r.position)[0]
            described = projection.describe(n)
            items.append({**_jsonable(described), "chain": b64(r.chain), "leaf": b64(r.leaf_hash())})
        return {"after": after, "records": items,
                "next": records[-1].position if records else after}

    @app.get("/v1/checkpoints/latest", summary="The latest signed checkpoint (public)",
             responses=read_responses)
    def get_checkpoint() -> dict[str, Any]:
        return checkpoint_json(reg())

    @app.get("/v1/proofs/inclusion", summary="RFC 9162 inclusion proof of a record (public)",
             responses=read_responses)
    def get_inclusion(position: int = Query(..., ge=1, le=MAX_POSITION),
                      size: int = Query(..., ge=1, le=MAX_POSITION)) -> dict[str, Any]:
        if position > size:
            raise DomainError("invalid_argument", f"position {position} is beyond size {size}")
        tree = reg().log_tree(size)
        record = reg().recorder.select_records(position, 1, stop=position)[0]
        return {"position": position, "size": size, "leaf": b64(record.leaf_hash()),
                "record": b64(record.canonical_bytes()), "root": b64(tree.root_at(size)),
                "proof": [b64(h) for h in tree.inclusion_proof(position - 1, size)]}

    @app.get("/v1/proofs/consistency", summary="RFC 9162 consistency proof (public)",
             responses=read_responses)
    def get_consistency(first: int = Query(..., ge=0, le=MAX_POSITION),
                        second: int = Query(..., ge=1, le=MAX_POSITION)) -> dict[str, Any]:
        if first > second:
            raise DomainError("invalid_argument", f"first ({first}) is beyond second ({second})")
        tree = reg().log_tree(second)
        return {"first": first, "second": second, "first_root": b64(tree.root_at(first)),
                "second_root": b64(tree.root_at(second)),
                "proof": [b64(h) for h in tree.consistency_proof(first, second)]}

    @app.post("/v1/checkpoints/{size}/cosignatures", summary="Upload a witness cosignature",
              responses={**responses(400, 401, 403, 404, 409, 413), **ok})
    async def post_cosignature(request: Request,
                               size: int = Path(..., ge=1, le=MAX_POSITION)) -> Any:
        refused = _too_large(request.headers.get("content-length"), MAX_COSIGNATURE_BYTES)
        if refused is not None:
            return refused
        try:
            body = await _read_body(request.receive, MAX_COSIGNATURE_BYTES)
        except _TooLarge:
            return _grew_too_large(MAX_COSIGNATURE_BYTES)
        except ClientDisconnect:
            return Response(status_code=CLIENT_GONE)
        data = parse_canonical(body)
        if not isinstance(data, dict) or set(data) != {"witness", "key_id", "signature"}:
            raise DomainError("invalid_argument", "the body is {\"witness\", \"key_id\", \"signature\"}")
        cp = checkpoint_json(reg(), size)
        projection = reg().projection()
        witness = projection.participants.get(str(data["witness"]))
        if witness is None or witness.role != "regulator":
            raise DomainError("not_authorized", "only a registered regulator cosigns checkpoints")
        public = witness.active_key(str(data["key_id"]))
        try:
            signature = unb64(str(data["signature"]))
        except ValueError:
            raise DomainError("bad_signature", "the cosignature is not base64") from None
        if not verify_cosignature(public, signature, cp["body"].encode()):
            raise DomainError("bad_signature", "the cosignature does not verify")
        reg().recorder.insert_cosignature(size, witness.participant_id, str(data["key_id"]),
                                          signature)
        return {"size": size, "witness": witness.participant_id, "stored": True}

    return app


async def _send_parts(scope: Scope, receive: Receive, send: Send,
                      parts: Awaitable[tuple[int, list[tuple[bytes, bytes]], bytes]]) -> int:
    """Send (status, raw headers, body) once made; a plain 500 if making them fails, as
    Starlette's ServerErrorMiddleware answers for the routes behind it."""
    started = False
    try:
        status, raw, content = await parts
        started = True
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": content})
        return status
    except ClientDisconnect:  # nobody to answer
        raise
    except Exception:
        if not started:
            await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
        raise


def _problem_parts(response: Response) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return response.status_code, response.raw_headers, bytes(response.body)


def _checkpoint_loop(registry: Registry, stop: threading.Event) -> None:
    """Sign a checkpoint at least every second while writes happen (when this process can)."""
    while not stop.wait(CHECKPOINT_POLL_S):
        try:
            registry.maybe_checkpoint()
        except Exception:  # noqa: BLE001 - a failed checkpoint is retried at the next tick
            time.sleep(CHECKPOINT_POLL_S)


def _follow_loop(registry: Registry, stop: threading.Event) -> None:
    """Keep this worker's projections caught up with writes from every worker.

    On PostgreSQL it LISTENs for the store's notifications; a NOTIFY can be lost, so it also
    polls every FOLLOW_POLL_S. Reads catch up by themselves too: this only keeps them fast.
    """
    recorder = registry.recorder
    channel = getattr(recorder, "channel_name", None)
    while not stop.is_set():
        try:
            if channel is not None:
                with recorder.datastore.get_connection() as conn:  # autocommit, as pooled
                    conn.execute(f'LISTEN "{channel}"')
                    try:
                        while not stop.is_set():
                            for _ in conn.notifies(timeout=FOLLOW_POLL_S, stop_after=1):
                                pass
                            # Under load every write notifies: let them gather for a moment and
                            # catch up once for all of them.
                            if stop.wait(FOLLOW_COALESCE_S):
                                break
                            for _ in conn.notifies(timeout=0):
                                pass
                            registry.projection()
                    finally:
                        conn.execute(f'UNLISTEN "{channel}"')
            else:
                while not stop.wait(FOLLOW_POLL_S):
                    registry.projection()
        except Exception:  # noqa: BLE001 - the store went away for a moment: try again
            stop.wait(FOLLOW_POLL_S)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return b64(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _examples() -> dict[str, dict[str, Any]]:
    """One example body per command, from the demo story."""
    from ledger.demo import story

    out: dict[str, dict[str, Any]] = {}
    for name, actor, command_id, args in story():
        out.setdefault(name, {"command": name, "actor": actor, "command_id": command_id, "args": args})
    return out

