"""The HTTP API: FastAPI over the registry, every write an RFC 9421-signed command.

A write's body is the command itself — {"command", "actor", "command_id", "args"} in canonical
JSON — so the request's signature is the command's actor signature in the log, and an auditor
re-checks it from the log alone. Each resource path accepts the commands that belong to it
(POST /v1/transfers takes "transfer"; POST /v1/pledges/{id}/release takes "release_pledge" for
that id). Reads are signed the same way (or not at all, for the public registry).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
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
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import http_signatures as H
from api.problems import domain_error_handler, from_domain, problem, responses
from api.routes import PARAM_ARG, WRITES, WriteRoute
from domain import commands as C
from domain.errors import DomainError
from domain.trade import Trade
from domain.values import yuan
from ledger.application import Registry
from ledger.checkpoints import b64, checkpoint_json, unb64, verify_cosignature
from ledger.keys import Keyring, default_keys_dir, verify
from ledger.proofs import bundle as proof_bundle
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
MAX_LOG_PAGE = 1000
MAX_POSITION = 2**53  # far beyond any log; bounds every position a query may name
NONCE_MEMORY = 100_000
CHECKPOINT_POLL_S = 0.5
FOLLOW_POLL_S = 1.0


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
    """Nonces seen on signed reads inside the signature window, so a replayed read is refused."""

    def __init__(self, size: int = NONCE_MEMORY) -> None:
        self.seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.size = size
        self.lock = threading.Lock()

    def check(self, key_id: str, nonce: str, now: float) -> None:
        with self.lock:
            horizon = now - WINDOW_PAST_S - WINDOW_FUTURE_S
            while self.seen and next(iter(self.seen.values())) < horizon:
                self.seen.popitem(last=False)
            if (key_id, nonce) in self.seen:
                raise DomainError("replay", "this signed request was received before (nonce reused)")
            self.seen[(key_id, nonce)] = now
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


def create_app(registry: Registry | None = None) -> FastAPI:
    """The application; with no registry given, one is opened from the environment."""
    state: dict[str, Any] = {"registry": registry}
    metrics = Metrics()
    nonces = NonceMemory()

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
            state["registry"] = Registry(url, keyring=Keyring(keys), auto_checkpoint=False)
            state["owned"] = True
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
            if state.get("owned"):
                reg().close()

    app = FastAPI(
        title="carbon-ledger",
        version="0.1.0",
        summary="A verifiable registry of forestry carbon tickets (林业碳票)",
        description="Every write is a command signed with RFC 9421 HTTP message signatures "
        "(Ed25519) over @method, @path and the RFC 9530 Content-Digest of its canonical JSON "
        "body. See docs/api.md for the signature base and examples.",
        lifespan=lifespan,
    )
    app.add_exception_handler(DomainError, domain_error_handler)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return problem("invalid_argument", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "invalid_argument" if exc.status_code < 500 else "operation_failed"
        return problem(code, str(exc.detail), status=exc.status_code)

    @app.middleware("http")
    async def _measure(request: Request, call_next: Callable[..., Any]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        metrics.requests.labels(request.method, name, str(response.status_code)).inc()
        metrics.latency.labels(request.method, name).observe(time.perf_counter() - started)
        return response

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
        projection = reg().projection()
        owner = projection.key_owner.get(sig.keyid)
        if owner is None:
            raise DomainError("unknown_key", f"key {sig.keyid} is not registered")
        participant = projection.participants[owner]
        public = participant.active_key(sig.keyid)
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
        return Caller(owner, participant.role)

    def require(caller: Caller, allowed: bool, what: str) -> None:
        if allowed:
            return
        if caller.participant_id is None:
            raise DomainError("unsigned", f"{what} is not public: sign the request")
        raise DomainError("not_authorized", f"{caller.participant_id} may not read {what}")

    # Writes --------------------------------------------------------------------------------

    def add_write(route: WriteRoute) -> None:
        async def endpoint(request: Request) -> Response:
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                return problem("payload_too_large", f"the body is {declared} bytes; at most "
                               f"{MAX_BODY_BYTES} are accepted")
            body = await request.body()
            if len(body) > MAX_BODY_BYTES:
                return problem("payload_too_large", f"the body is {len(body)} bytes; at most "
                               f"{MAX_BODY_BYTES} are accepted")
            try:
                data = parse_canonical(body)
                command = C.parse(data)
                if command.name not in route.commands:
                    raise DomainError("invalid_argument", f"{route.method} {route.path} takes "
                                      f"{' or '.join(route.commands[:3])} commands, not {command.name}")
                for param in route.path_params:
                    if command.get(PARAM_ARG[param]) != request.path_params[param]:
                        raise DomainError("invalid_argument", f"the path says {param} "
                                          f"{request.path_params[param]!r}, the command says "
                                          f"{command.get(PARAM_ARG[param])!r}")
                signed = signed_command(request, body, command)
                outcome = await run_in_threadpool(reg().execute, signed)
            except DomainError as e:
                metrics.commands.labels(route.commands[0] if len(route.commands) == 1 else "any",
                                        e.code).inc()
                return from_domain(e)
            metrics.commands.labels(command.name, "accepted").inc()
            replayed = bool(outcome.pop("replayed", False))
            position = outcome.pop("position", None)
            headers = {"Idempotent-Replayed": "true" if replayed else "false"}
            if position is not None:
                headers["X-Log-Position"] = str(position)
            return JSONResponse(outcome, status_code=201 if route.created else 200, headers=headers)

        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                  for p in route.path_params]
        example = _examples().get(route.commands[0]) if len(route.commands) == 1 else None
        content: dict[str, Any] = {"schema": _COMMAND_SCHEMA}
        if example:
            content["example"] = example
        app.add_api_route(
            route.path, endpoint, methods=[route.method], summary=route.summary,
            name=f"{route.method.lower()}_{route.path}",
            status_code=201 if route.created else 200,
            responses={**responses(400, 401, 403, 404, 409, 413, 422),
                       (201 if route.created else 200): {
                           "description": "the command's outcome",
                           "content": {"application/json": {"schema": _OUTCOME_SCHEMA}}}},
            openapi_extra={"parameters": params + _SIGNATURE_HEADERS,
                           "requestBody": {"required": True,
                                           "content": {"application/json": content}}},
        )

    def signed_command(request: Request, body: bytes, command: C.Command) -> SignedCommand:
        wire = H.parse_headers(request.headers)
        if not wire:
            raise DomainError("unsigned", "the request carries no signature; sign it with RFC 9421")
        digest = request.headers.get("content-digest")
        sigs = []
        for w in wire:
            base = H.base_for(w, method=request.method, path=request.url.path, query="",
                              digest_header=digest)
            if w.tag == ACTOR_TAG:
                signer = command.actor
            elif w.tag == CONSENT_TAG:
                signer = reg().key_owner(w.keyid) or ""
                if command.name == "rotate_key":  # the new key is not registered yet
                    signer = command["participant_id"]
            else:
                raise DomainError("bad_signature", f"unknown signature tag {w.tag!r}")
            sigs.append(Signature(signer, w.keyid, base, w.signature))
        return SignedCommand(body=body, signatures=tuple(sigs), method=request.method,
                             path=request.url.path)

    for route in WRITES:
        add_write(route)

    # Reads ---------------------------------------------------------------------------------

    ok = {200: {"description": "the resource", "content": {"application/json": {"schema": _OUTCOME_SCHEMA}}}}
    read_responses = {**responses(400, 401, 403, 404), **ok}

    @app.get("/healthz", summary="Liveness and log position", responses=ok)
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "position": reg().log_position()}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def metrics_text() -> Response:
        metrics.position.set(reg().log_position())
        latest = reg().recorder.latest_checkpoint()
        metrics.checkpoint.set(latest[0] if latest else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/participants/{participant_id}", summary="A participant, its role and keys",
             responses=read_responses)
    def get_participant(participant_id: str) -> dict[str, Any]:
        view = reg().projection().participant(participant_id)
        view.pop("mandates")
        return view

    @app.get("/v1/projects/{project_id}", summary="A project", responses=read_responses)
    def get_project(project_id: str) -> dict[str, Any]:
        return reg().projection().project(project_id)

    @app.get("/v1/tickets/{ticket_no}", summary="A ticket's supply and serial blocks (public)",
             responses=read_responses)
    def get_ticket(ticket_no: str, as_of: int | None = Query(None, ge=0, le=MAX_POSITION)) -> dict[str, Any]:
        return reg().projection(as_of=as_of).ticket(ticket_no)

    @app.get("/v1/tickets/{ticket_no}/history", summary="Every event of a ticket (public)",
             responses=read_responses)
    def get_ticket_history(ticket_no: str) -> list[dict[str, Any]]:
        return reg().projection().history(ticket=ticket_no)

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
                     as_of: int | None = Query(None, ge=0, le=MAX_POSITION)) -> dict[str, Any]:
        caller = caller_of(request)
        projection = reg().projection(as_of=as_of)
        view = projection.balances(holder)
        if caller.regulator or caller.participant_id == holder:
            return view
        account = projection.participants[holder]
        if caller.role == "exchange" and caller.participant_id in account.mandates:
            return view  # a member of this exchange
        if caller.role == "bank":
            pledges = {p.pledge_id for p in projection.pledges.values()
                       if p.pledgee == caller.participant_id and p.pledgor == holder}
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
             responses=read_responses)
    def list_pledges(request: Request, bank: str | None = Query(None),
                     as_of: int | None = Query(None, ge=0, le=MAX_POSITION)) -> list[dict[str, Any]]:
        caller = caller_of(request)
        if not caller.regulator:
            require(caller, caller.role == "bank" and bank in (None, caller.participant_id),
                    "the pledge register")
            bank = caller.participant_id
        return reg().projection(as_of=as_of).pledge_register(bank)

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
        view = reg().projection().pledge(pledge_id)
        require(caller, caller.regulator or caller.participant_id in (view["pledgee"], view["pledgor"]),
                f"pledge {pledge_id}")
        return view

    @app.get("/v1/policies/{policy_id}", summary="A policy and its claims", responses=read_responses)
    def get_policy(request: Request, policy_id: str) -> dict[str, Any]:
        caller = caller_of(request)
        require(caller, caller.participant_id is not None, "a policy")
        view = reg().projection().policy(policy_id)
        require(caller, caller.regulator or caller.participant_id in (
            view["insurer"], view["insured"], view["loss_payee"]), f"policy {policy_id}")
        return view

    @app.get("/v1/claims/{claim_id}", summary="A claim", responses=read_responses)
    def get_claim(request: Request, claim_id: str) -> dict[str, Any]:
        caller = caller_of(request)
        require(caller, caller.participant_id is not None, "a claim")
        projection = reg().projection()
        view = projection.claim(claim_id)
        policy = projection.policies[view["policy_id"]]
        require(caller, caller.regulator or caller.participant_id in (
            policy.insurer, policy.insured, policy.loss_payee), f"claim {claim_id}")
        return view

    @app.get("/v1/retirements/{retirement_id}", summary="A retirement (public)",
             responses=read_responses)
    def get_retirement(retirement_id: str) -> dict[str, Any]:
        return reg().projection().retirement(retirement_id)

    @app.get("/v1/retirements/{retirement_id}/certificate",
             summary="A retirement certificate with its proof (public)", responses=read_responses)
    def get_certificate(retirement_id: str) -> dict[str, Any]:
        return {"retirement": reg().projection().retirement(retirement_id),
                "proof": proof_bundle(reg(), "retirement", retirement_id)}

    @app.get("/v1/compliance/{entity}/{scheme}/{period}", summary="Offset usage and headroom",
             responses=read_responses)
    def get_compliance(request: Request, entity: str, scheme: str, period: str,
                       as_of: int | None = Query(None, ge=0, le=MAX_POSITION)) -> dict[str, Any]:
        caller = caller_of(request)
        require(caller, caller.regulator or caller.participant_id == entity,
                f"{entity}'s compliance account")
        return reg().projection(as_of=as_of).compliance_view(entity, scheme, period)

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
              responses={**responses(400, 401, 403, 404, 409), **ok})
    async def post_cosignature(request: Request,
                               size: int = Path(..., ge=1, le=MAX_POSITION)) -> dict[str, Any]:
        body = await request.body()
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
                with recorder.datastore.get_connection() as conn:
                    conn.autocommit = True
                    conn.execute(f'LISTEN "{channel}"')
                    try:
                        while not stop.is_set():
                            for _ in conn.notifies(timeout=FOLLOW_POLL_S, stop_after=1):
                                pass
                            registry.projection()
                    finally:
                        conn.execute(f'UNLISTEN "{channel}"')
                        conn.autocommit = False
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

