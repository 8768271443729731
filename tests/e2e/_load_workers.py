"""Helpers for the concurrency and crash-recovery tests: a small contended world, worker
processes that race commands at it (in-process Registry or signed HTTP), a `carbon-ledger serve`
launcher for either store, and the checks every run ends with.

Worker functions are module-level so that `multiprocessing` ('spawn') can import them in a
fresh interpreter: each worker opens its own Registry (or HTTP client) and loads the keys from
the shared Keyring folder. Every loop here is bounded in count and in time.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from eventsourcing.persistence import InternalError

from domain.command import CommandRecord
from domain.compliance import DEFAULT_LIMITS, cap_t
from domain.errors import DomainError
from domain.participant import Participant
from domain.ticket import AVAILABLE, CANCELLED, PLEDGED, RETIRED, Ticket
from domain.trade import Trade
from ledger.application import Registry
from ledger.audit import audit_database
from ledger.keys import Keyring, public_text

HOST = "127.0.0.1"  # loopback only
REPO = Path(__file__).resolve().parents[2]

OPERATOR = "registry"
ISSUER = "cl-issuer"
REGULATOR = "cl-regulator"
EXCHANGE = "cl-exchange"
BANK = "cl-bank"
COURT = "cl-court"
EMITTER = "cl-emitter"  # the compliance entity (a holder)
HOLDERS = [f"holder-{i}" for i in range(1, 7)]
FREEZERS = (REGULATOR, COURT)
SCHEME, PERIOD = "fujian_ets", "2024"

# One ticket per standard; the owner of each project receives the whole issue.
TICKETS = {"SMCER": "SM-0000001", "FFCER": "FF-0000001", "CCER": "CC-0000001"}
OWNERS = {"SMCER": HOLDERS[0], "FFCER": HOLDERS[1], "CCER": HOLDERS[2]}

# Codes the racing workload may legitimately be refused with (all domain codes).
DOMAIN_REFUSALS = frozenset({
    "units_unavailable", "units_pledged", "insufficient_available", "account_frozen",
    "cap_exceeded", "already_exists", "pledge_not_active", "not_authorized", "no_mandate",
})

_COMMAND_TOPIC = f"{CommandRecord.Accepted.__module__}:{CommandRecord.Accepted.__qualname__}"
_TRADE_TOPIC = f"{Trade.Settled.__module__}:{Trade.Settled.__qualname__}"


# The world ---------------------------------------------------------------------------------------

def build_world(url: str, keys: Path, *, quantities: dict[str, int], spread: dict[str, int],
                emitter_t: dict[str, int] | None = None, emissions_t: int = 0) -> str:
    """Initialise a registry with every role, 6 holders with mandates, one ticket per standard
    (quantities by standard), `spread[standard]` t of it moved from its owner to every other
    holder, `emitter_t` given to the compliance entity and its verified emissions recorded.
    Returns the operator's public key. Keys are written to the `keys` folder."""
    keyring = Keyring(keys)
    app = Registry(url, keyring=keyring)
    try:
        n = 0

        def run(name: str, actor: str, args: dict[str, Any]) -> dict[str, Any]:
            nonlocal n
            n += 1
            return app.submit(name, actor, f"setup-{n:04d}-{name}", args)

        run("initialise", OPERATOR, {"origin": "carbon-ledger.test/concurrency",
                                     "operator_id": OPERATOR, "name": "test operator"})
        for pid, role in [(ISSUER, "issuer"), (REGULATOR, "regulator"), (EXCHANGE, "exchange"),
                          (BANK, "bank"), (COURT, "court"), (EMITTER, "holder"),
                          *((h, "holder") for h in HOLDERS)]:
            run("register_participant", OPERATOR, {"participant_id": pid, "name": pid, "role": role})
        for holder in [*HOLDERS, EMITTER]:
            run("grant_mandate", holder, {"holder": holder, "exchange": EXCHANGE})
        for standard, ticket_no in TICKETS.items():
            project = f"P-{standard}"
            run("register_project", ISSUER, {
                "project_id": project, "name": f"{standard} forest", "owner": OWNERS[standard],
                "county": "test county", "area_mu": 1000, "standard": standard})
            run("issue_ticket", ISSUER, {
                "ticket_no": ticket_no, "project_id": project, "standard": standard,
                "period_start": "2020-01-01", "period_end": "2022-12-31",
                "quantity_t": quantities[standard]})
            owner = OWNERS[standard]
            receivers = [(h, spread.get(standard, 0)) for h in HOLDERS if h != owner]
            receivers.append((EMITTER, (emitter_t or {}).get(standard, 0)))
            for buyer, qty in receivers:
                if qty:
                    run("transfer", EXCHANGE, {
                        "trade_id": f"SETUP-{ticket_no}-{buyer}", "seller": owner, "buyer": buyer,
                        "ticket_no": ticket_no, "quantity_t": qty, "price": "10.00",
                        "mode": "negotiated"})
        if emissions_t:
            run("record_emissions", REGULATOR, {"entity": EMITTER, "scheme": SCHEME,
                                                "period": PERIOD, "verified_emissions_t": emissions_t})
        return public_text(keyring.get(OPERATOR))
    finally:
        app.close()


# Racing commands in-process -----------------------------------------------------------------------

def _available_blocks(projection: Any, holders: list[str]) -> list[tuple[str, int, int, str]]:
    out = []
    for ticket_no in TICKETS.values():
        ticket = projection.tickets.get(ticket_no)
        if ticket is None:
            continue
        for first, last, holder, state, _ref in ticket.blocks:
            if state == AVAILABLE and holder in holders:
                out.append((ticket_no, first, last, holder))
    return out


def _pick_block(rng: random.Random,
                blocks: list[tuple[str, int, int, str]]) -> tuple[str, int, int, str]:
    """Mostly the lowest available block of a ticket, so that racing workers pick the same."""
    if rng.random() < 0.6:
        ticket_no = rng.choice(sorted({b[0] for b in blocks}))
        return min(b for b in blocks if b[0] == ticket_no)
    return rng.choice(blocks)


def _serial_range(rng: random.Random, block: tuple[str, int, int, str]) -> tuple[str, str]:
    ticket_no, first, last, _ = block
    # Start at the block's first serial most of the time, so that workers pick the same units.
    start = first if rng.random() < 0.7 else rng.randint(first, last)
    end = min(last, start + rng.randint(0, 3))
    return f"{ticket_no}-{start:07d}", f"{ticket_no}-{end:07d}"


def plan_command(rng: random.Random, projection: Any, tag: str) -> tuple[str, str, dict[str, Any]]:
    """A random command that collides with what the other workers are doing."""
    roll = rng.random()
    blocks = _available_blocks(projection, HOLDERS)
    if roll < 0.30 and blocks:  # the same units, between holders
        block = _pick_block(rng, blocks)
        first, last = _serial_range(rng, block)
        buyer = rng.choice([h for h in HOLDERS if h != block[3]])
        return "transfer", EXCHANGE, {
            "trade_id": f"T-{tag}", "seller": block[3], "buyer": buyer, "ticket_no": block[0],
            "first_serial": first, "last_serial": last, "price": "12.50", "mode": "negotiated"}
    if roll < 0.38:  # by quantity: the lowest serials of the seller
        seller, buyer = rng.sample(HOLDERS, 2)
        return "transfer", EXCHANGE, {
            "trade_id": f"T-{tag}", "seller": seller, "buyer": buyer,
            "ticket_no": rng.choice(list(TICKETS.values())), "quantity_t": rng.randint(1, 3),
            "price": "11.00", "mode": "listing"}
    if roll < 0.52 and blocks:  # the bank pledges units another worker may pledge or move
        block = _pick_block(rng, blocks)
        first, last = _serial_range(rng, block)
        return "pledge", BANK, {
            "pledge_id": f"PL-{tag}", "pledgor": block[3], "loan_ref": f"LOAN-{tag}",
            "secured_amount": "1000.00", "maturity": "2030-12-31",
            "lines": [{"ticket_no": block[0], "first_serial": first, "last_serial": last}]}
    if roll < 0.62:  # release a pledge, whole or one tonne of it
        active = [p for p in projection.pledges.values() if p.status == "active" and p.held]
        if active:
            pledge = rng.choice(active)
            args: dict[str, Any] = {"pledge_id": pledge.pledge_id}
            if rng.random() < 0.3:
                ticket_no = sorted(pledge.held)[0]
                args["lines"] = [{"ticket_no": ticket_no, "quantity_t": 1}]
            return "release_pledge", BANK, args
    if roll < 0.76:  # compliance retirements racing for the last tonnes under the cap
        standards = rng.choice([["FFCER"], ["CCER"], ["FFCER", "CCER"]])
        return "retire", EMITTER, {
            "retirement_id": f"RT-{tag}", "purpose": "compliance", "beneficiary": EMITTER,
            "lines": [{"ticket_no": TICKETS[s], "quantity_t": rng.randint(1, 4)} for s in standards],
            "scheme": SCHEME, "period": PERIOD}
    if roll < 0.82:  # freeze a holder (racing the transfers and pledges that read it)
        return "freeze", rng.choice(FREEZERS), {
            "holder": rng.choice([*HOLDERS, EMITTER]), "reason": f"inquiry {tag}"}
    frozen = [(p.participant_id, by) for p in projection.participants.values()
              for by in p.freezes]
    if frozen:  # lift a freeze (two workers may lift the same one)
        holder, by = rng.choice(frozen)
        return "unfreeze", by, {"holder": holder}
    return "freeze", rng.choice(FREEZERS), {"holder": rng.choice(HOLDERS), "reason": f"check {tag}"}


def registry_worker(url: str, keys: str, worker: int, count: int, seed: int, budget_s: float,
                    barrier: Any, results: Any) -> None:
    """Open a Registry of this process's own and race `count` random commands at it.

    Puts (worker, [(command_id, name, "ok"|"refused"|"error", code or outcome), ...]) on `results`.
    """
    out: list[tuple[str, str, str, Any]] = []
    app = None
    try:
        app = open_registry(url, keyring=Keyring(Path(keys)))
        rng = random.Random(seed)
        barrier.wait(timeout=120)
        deadline = time.monotonic() + budget_s
        for i in range(count):
            if time.monotonic() > deadline:
                break
            tag = f"w{worker}-{i:03d}"
            name, actor, args = plan_command(rng, app.projection(), tag)
            command_id = f"{tag}-{name}"
            try:
                outcome = app.submit(name, actor, command_id, args)
                out.append((command_id, name, "ok", _brief(outcome)))
            except DomainError as e:
                out.append((command_id, name, "refused", e.code))
            except Exception as e:  # noqa: BLE001 - reported, and fails the test
                out.append((command_id, name, "error", f"{type(e).__name__}: {e}"))
    except Exception as e:  # noqa: BLE001 - the worker could not start: reported
        barrier.abort()
        out.append((f"w{worker}-start", "open", "error", f"{type(e).__name__}: {e}"))
    finally:
        if app is not None:
            app.close()
        results.put((worker, out))


OPEN_ATTEMPTS = 5


def open_registry(url: str, **kwargs: Any) -> Registry:
    """Registry(url, ...), retried a few times when PostgreSQL refuses the concurrent
    CREATE ... IF NOT EXISTS / CREATE OR REPLACE FUNCTION of another process starting at the
    same moment ("tuple concurrently updated"; see test_concurrent_open_postgres, a known bug)."""
    for attempt in range(OPEN_ATTEMPTS):
        try:
            return Registry(url, **kwargs)
        except InternalError as e:
            if "concurrently" not in str(e) or attempt == OPEN_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _brief(outcome: dict[str, Any]) -> dict[str, Any]:
    keep = ("position", "quantity_t", "pledged_t", "released_t", "retirement_id", "pledge_id")
    return {k: outcome[k] for k in keep if k in outcome}


def open_worker(url: str, rounds: int, barrier: Any, results: Any) -> None:
    """Open (and close) a Registry on `url` the moment every other opener does, `rounds` times."""
    from ledger.application import Registry as Opened  # imported before the first round

    for _ in range(rounds):
        try:
            barrier.wait(timeout=120)
            Opened(url).close()
            results.put("ok")
        except Exception as e:  # noqa: BLE001 - reported
            results.put(f"{type(e).__name__}: {e}")


# Racing signed transfers over HTTP ----------------------------------------------------------------

def http_worker(base_url: str, keys: str, worker: int, count: int, seed: int, budget_s: float,
                barrier: Any, results: Any) -> None:
    """Post `count` signed transfers of contended serials (and a few freezes) over HTTP."""
    from api.client import ApiError, Client

    out: list[tuple[str, str, str, Any]] = []
    clients: dict[str, Client] = {}
    try:
        keyring = Keyring(Path(keys))
        clients.update({who: Client(base_url, who, keyring.get(who), timeout_s=60)
                        for who in (EXCHANGE, *FREEZERS)})
        rng = random.Random(seed)
        own_freezes: list[tuple[str, str]] = []
        barrier.wait(timeout=120)
        deadline = time.monotonic() + budget_s
        for i in range(count):
            if time.monotonic() > deadline:
                break
            tag = f"h{worker}-{i:03d}"
            roll = rng.random()
            if own_freezes and roll < 0.4:  # lift one of this worker's freezes
                holder, who = own_freezes.pop(rng.randrange(len(own_freezes)))
                name, args = "unfreeze", {"holder": holder}
            elif roll < 0.92:
                ticket_no = rng.choice(list(TICKETS.values()))
                view = clients[EXCHANGE].ticket(ticket_no)
                blocks = [b for b in view["blocks"]
                          if b["state"] == AVAILABLE and b["holder"] in HOLDERS]
                if not blocks:
                    continue
                b = blocks[0] if rng.random() < 0.6 else rng.choice(blocks)
                first = int(b["first_serial"].rsplit("-", 1)[1])
                last = int(b["last_serial"].rsplit("-", 1)[1])
                end = min(last, first + rng.randint(0, 2))
                buyer = rng.choice([h for h in HOLDERS if h != b["holder"]])
                name, who, args = "transfer", EXCHANGE, {
                    "trade_id": f"T-{tag}", "seller": b["holder"], "buyer": buyer,
                    "ticket_no": ticket_no, "first_serial": f"{ticket_no}-{first:07d}",
                    "last_serial": f"{ticket_no}-{end:07d}", "price": "9.90", "mode": "auction"}
            else:  # freeze a seller the other workers are moving units of
                holder, who = rng.choice(HOLDERS), rng.choice(FREEZERS)
                name, args = "freeze", {"holder": holder, "reason": f"http {tag}"}
            command_id = f"{tag}-{name}"
            try:
                outcome = clients[who].command(name, args, command_id)
                out.append((command_id, name, "ok", _brief(outcome)))
                if name == "freeze":
                    own_freezes.append((args["holder"], who))
            except ApiError as e:
                out.append((command_id, name, "refused", e.code))
            except Exception as e:  # noqa: BLE001 - reported, and fails the test
                out.append((command_id, name, "error", f"{type(e).__name__}: {e}"))
    except Exception as e:  # noqa: BLE001 - the worker could not start: reported
        barrier.abort()
        out.append((f"h{worker}-start", "open", "error", f"{type(e).__name__}: {e}"))
    finally:
        for c in clients.values():
            c.close()
        results.put((worker, out))


# A batch importer, to be killed --------------------------------------------------------------------

def batch_plan(k: int, size: int) -> tuple[str, dict[str, Any]]:
    """Batch k: `size` transfers of 1 t of FFCER from one holder to another (lowest serials)."""
    seller, buyer = HOLDERS[k % 3], HOLDERS[3 + k % 3]
    batch_id = f"BATCH-{k:03d}"
    return batch_id, {"batch_id": batch_id, "transfers": [
        {"trade_id": f"{batch_id}-{i:04d}", "seller": seller, "buyer": buyer,
         "ticket_no": TICKETS["FFCER"], "quantity_t": 1, "price": "8.00", "mode": "listing"}
        for i in range(size)]}


def batch_importer(url: str, keys: str, batches: int, size: int, acks: str) -> None:
    """Submit settle_batch commands one after another; append each acknowledged batch id (and its
    outcome's position) to the `acks` file, flushed and fsynced before the next one starts."""
    app = Registry(url, keyring=Keyring(Path(keys)))
    with open(acks, "a", encoding="ascii") as f:
        for k in range(batches):
            batch_id, args = batch_plan(k, size)
            outcome = app.submit("settle_batch", EXCHANGE, f"import/{batch_id}", args)
            f.write(f"{batch_id} {outcome['count']} {outcome['position']}\n")
            f.flush()
            os.fsync(f.fileno())


# A `carbon-ledger serve` process on either store ----------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _executable() -> str:
    for candidate in (REPO / ".venv" / "bin" / "carbon-ledger",
                      Path(sys.executable).parent / "carbon-ledger"):
        if candidate.exists():
            return str(candidate)
    raise RuntimeError("no carbon-ledger executable beside the test interpreter")


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CARBON_LEDGER_DB", "CARBON_LEDGER_KEYS")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_executable(), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=clean_env(), check=False)


@dataclass
class Server:
    db: str
    keys: Path
    workers: int
    log: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    failed_starts: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout_s: float = 90.0, attempts: int = 3) -> Server:
        """Start the server and wait until every worker has completed its startup.

        A start in which a worker fails (see test_concurrent_open_postgres: concurrent
        Registry() on PostgreSQL) is stopped, recorded in `failed_starts` and tried again, a
        bounded number of times."""
        for _ in range(attempts):
            offset = self.log.stat().st_size if self.log.exists() else 0
            if self._start_once(timeout_s, offset):
                return self
        raise RuntimeError(f"the server failed to start {attempts} times:\n{self.log_text()}")

    def _start_once(self, timeout_s: float, offset: int) -> bool:
        self.port = free_port()
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [_executable(), "serve", "--db", self.db, "--keys", str(self.keys), "--host", HOST,
                 "--port", str(self.port), "--workers", str(self.workers), "--log-level", "info",
                 "--allow-empty"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.log.parent,
                env=clean_env(), start_new_session=True)
        self.started.append(self.process)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self._log_since(offset)
            if self.process.poll() is not None or "failed to start" in text \
                    or "startup failed" in text:
                self.failed_starts.append(text[-3000:])
                self.stop()
                return False
            if text.count("Application startup complete") >= self.workers:
                try:
                    if httpx.get(self.base_url + "/healthz", timeout=2).status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not start within {timeout_s} s:\n{self.log_text()}")

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def position(self) -> int:
        return int(httpx.get(self.base_url + "/healthz", timeout=10).json()["position"])

    def kill9(self) -> None:
        """SIGKILL the server process itself (a crash: no shutdown handlers run)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop every server process this object started (and its workers), bounded in time."""
        while self.started:
            p = self.started.pop()
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
            try:  # uvicorn's worker processes live in the session the server was started in
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def log_text(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            return ""


# What every run must end with --------------------------------------------------------------------

def command_ids_in_log(app: Registry) -> Counter[str]:
    """How many times each command id is recorded (CommandRecord.Accepted events)."""
    counts: Counter[str] = Counter()
    start, end = 1, app.log_position()
    while start <= end:
        batch = app.recorder.select_notifications(start, 1000, stop=end)
        if not batch:
            break
        for n in batch:
            if n.topic == _COMMAND_TOPIC:
                counts[app.mapper.to_domain_event(n).command_id] += 1
        start = batch[-1].id + 1
    return counts


def events_by_command(app: Registry) -> Counter[str]:
    """How many records each command id has in the log (its events and its CommandRecord)."""
    counts: Counter[str] = Counter()
    start, end = 1, app.log_position()
    while start <= end:
        batch = app.recorder.select_notifications(start, 2000, stop=end)
        if not batch:
            break
        for n in batch:
            counts[app.mapper.to_domain_event(n).command_id] += 1
        start = batch[-1].id + 1
    return counts


def record_commands(app: Registry, first: int, last: int) -> list[str]:
    """The command id of each record from position `first` to `last`."""
    found = app.recorder.select_notifications(first, last - first + 1, stop=last)
    return [app.mapper.to_domain_event(n).command_id for n in found]


def post_signed(base_url: str, key: Any, actor: str, name: str, args: dict[str, Any],
                command_id: str, timeout_s: float = 30.0) -> httpx.Response:
    """Sign one command (a fresh nonce each call) and send it to its resource, raw."""
    from api.http_signatures import sign_request
    from api.routes import path_for
    from ledger.signing import canonical_json

    body = canonical_json({"command": name, "actor": actor, "command_id": command_id,
                           "args": args})
    method, path = path_for(name, args)
    headers = sign_request(key, method=method, path=path, body=body, created=int(time.time()))
    headers["Content-Type"] = "application/json"
    return httpx.request(method, base_url + path, content=body, headers=headers,
                         timeout=timeout_s)


def trades_by_batch(app: Registry) -> tuple[Counter[str], Counter[str]]:
    """(Trade aggregates per batch id, Trade aggregates per (batch id, command id)) in the log."""
    by_batch: Counter[str] = Counter()
    by_command: Counter[str] = Counter()
    start, end = 1, app.log_position()
    while start <= end:
        batch = app.recorder.select_notifications(start, 2000, stop=end)
        if not batch:
            break
        for n in batch:
            if n.topic == _TRADE_TOPIC:
                event = app.mapper.to_domain_event(n)
                by_batch[event.batch_id] += 1
                by_command[event.command_id] += 1
        start = batch[-1].id + 1
    return by_batch, by_command


def _topic(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


_UNIT_TOPICS = {_topic(c): c.__name__ for c in (
    Ticket.Issued, Ticket.Transferred, Ticket.Pledged, Ticket.PledgeReleased,
    Ticket.PledgeEnforced, Ticket.Retired, Ticket.Cancelled, Participant.Frozen,
    Participant.Unfrozen)}


def replay_units(app: Registry) -> list[str]:
    """An oracle independent of the registry's rules and aggregates: follow every unit through
    the log, in log order, with a plain serial -> (holder, state, ref) map, and check that each
    event moves only units that its party held in the right state, that no account moved,
    pledged or retired units while frozen, and that the end agrees with the tickets' blocks."""
    problems: list[str] = []
    units: dict[str, dict[int, tuple[str, str, str]]] = {}
    frozen: dict[Any, set[str]] = {}
    tickets_by_id: dict[Any, str] = {}
    start, end = 1, app.log_position()

    def take(ticket: str, ranges: list, holder: str, state: str, ref: str, new: tuple[str, str, str],
             pos: int, what: str) -> None:
        for a, b in ranges:
            for serial in range(a, b + 1):
                have = units[ticket].get(serial)
                if have != (holder, state, ref):
                    problems.append(f"position {pos}: {what} {ticket}-{serial:07d}, which is "
                                    f"{have}, not ({holder}, {state}, {ref!r})")
                units[ticket][serial] = new

    def not_frozen(holder: str, pos: int, what: str) -> None:
        if frozen.get(Participant.id_for(holder)):
            problems.append(f"position {pos}: {holder} {what} while frozen by "
                            f"{sorted(frozen[Participant.id_for(holder)])}")

    while start <= end and len(problems) < 20:
        batch = app.recorder.select_notifications(start, 2000, stop=end)
        if not batch:
            break
        for n in batch:
            kind = _UNIT_TOPICS.get(n.topic)
            if kind is None:
                continue
            e = app.mapper.to_domain_event(n)
            if kind == "Frozen":
                frozen.setdefault(e.originator_id, set()).add(e.by)
                continue
            if kind == "Unfrozen":
                frozen.setdefault(e.originator_id, set()).discard(e.by)
                continue
            if kind == "Issued":
                units[e.ticket_no] = dict.fromkeys(range(1, e.quantity_t + 1),
                                                   (e.owner, AVAILABLE, ""))
                tickets_by_id[e.originator_id] = e.ticket_no
                continue
            t, pos = tickets_by_id[e.originator_id], n.id
            if kind == "Transferred":
                not_frozen(e.seller, pos, "transferred units out")
                take(t, e.ranges, e.seller, AVAILABLE, "", (e.buyer, AVAILABLE, ""), pos,
                     f"{e.seller} transferred")
            elif kind == "Pledged":
                not_frozen(e.pledgor, pos, "pledged units")
                take(t, e.ranges, e.pledgor, AVAILABLE, "", (e.pledgor, PLEDGED, e.pledge_id),
                     pos, f"{e.pledgor} pledged")
            elif kind == "PledgeReleased":
                take(t, e.ranges, e.pledgor, PLEDGED, e.pledge_id, (e.pledgor, AVAILABLE, ""),
                     pos, f"pledge {e.pledge_id} released")
            elif kind == "PledgeEnforced":
                take(t, e.ranges, e.pledgor, PLEDGED, e.pledge_id, (e.to, AVAILABLE, ""), pos,
                     f"pledge {e.pledge_id} enforced")
            elif kind == "Retired":
                not_frozen(e.holder, pos, "retired units")
                take(t, e.ranges, e.holder, AVAILABLE, "", (e.holder, RETIRED, e.retirement_id),
                     pos, f"{e.holder} retired")
            elif kind == "Cancelled":
                for a, b in e.ranges:
                    for serial in range(a, b + 1):
                        units[t][serial] = (e.holder, CANCELLED, e.cancellation_ref)
        start = batch[-1].id + 1
    projection = app.projection()
    for ticket_no, serials in units.items():
        for first, last, holder, state, ref in projection.tickets[ticket_no].blocks:
            for serial in range(first, last + 1):
                if serials.get(serial) != (holder, state, ref):
                    problems.append(f"{ticket_no}-{serial:07d}: the log says {serials.get(serial)}, "
                                    f"the ticket says ({holder}, {state}, {ref!r})")
                    break
    return problems[:20]


def check_units(projection: Any) -> list[str]:
    """Conservation per ticket, one holder and one state per unit, no unit under two pledges,
    and pledge registers that agree with the tickets. Returns the problems found."""
    problems = []
    pledged_units: dict[tuple[str, int], str] = {}
    for pledge in projection.pledges.values():
        for ticket_no, ranges in pledge.held.items():
            for a, b in ranges:
                for serial in range(a, b + 1):
                    other = pledged_units.setdefault((ticket_no, serial), pledge.pledge_id)
                    if other != pledge.pledge_id:
                        problems.append(f"{ticket_no}-{serial:07d} is pledged under both "
                                        f"{other} and {pledge.pledge_id}")
    for ticket_no in TICKETS.values():
        view = projection.ticket(ticket_no)
        parts = (view["available_t"], view["pledged_t"], view["retired_t"], view["cancelled_t"])
        if view["issued_t"] != sum(parts):
            problems.append(f"{ticket_no}: issued {view['issued_t']} t != available + pledged + "
                            f"retired + cancelled = {parts}")
        ticket = projection.tickets[ticket_no]
        expect = 1
        for first, last, holder, state, ref in ticket.blocks:
            if first != expect or last < first:
                problems.append(f"{ticket_no}: blocks overlap or leave a gap at serial {first} "
                                f"(expected {expect})")
            expect = last + 1
            if state not in (AVAILABLE, PLEDGED, RETIRED, CANCELLED):
                problems.append(f"{ticket_no}: unknown state {state}")
            if state == PLEDGED:
                pledge = projection.pledges.get(ref)
                if pledge is None or pledge.pledgor != holder:
                    problems.append(f"{ticket_no} {first}..{last}: pledged under {ref}, which is "
                                    f"not a pledge of {holder}")
                for serial in range(first, last + 1):
                    if pledged_units.pop((ticket_no, serial), None) != ref:
                        problems.append(f"{ticket_no}-{serial:07d} is pledged under {ref} on the "
                                        "ticket but not in that pledge's register")
            if state == RETIRED and ref not in projection.retirements:
                problems.append(f"{ticket_no} {first}..{last}: retired under unknown {ref}")
        if expect != ticket.quantity_t + 1:
            problems.append(f"{ticket_no}: blocks end at {expect - 1}, not {ticket.quantity_t}")
    for (ticket_no, serial), pid in sorted(pledged_units.items()):
        problems.append(f"{ticket_no}-{serial:07d} is in pledge {pid}'s register but not pledged "
                        "on the ticket")
    return problems[:20]


def check_compliance(projection: Any, acknowledged_retirements: list[dict[str, Any]]) -> list[str]:
    """Used offsets within every cap (floored), and equal to the acknowledged retirements."""
    problems = []
    account = projection.compliance.get((EMITTER, SCHEME, PERIOD))
    if account is None:
        return problems
    standards_bp, total_bp = DEFAULT_LIMITS[SCHEME]
    e = account.verified_emissions_t
    if account.total_used_t > cap_t(e, total_bp):
        problems.append(f"offsets used {account.total_used_t} t > cap {cap_t(e, total_bp)} t")
    for standard, used in account.used_t.items():
        if used > cap_t(e, standards_bp[standard]):
            problems.append(f"{standard} used {used} t > cap {cap_t(e, standards_bp[standard])} t")
    acked = sum(r.get("quantity_t", 0) for r in acknowledged_retirements)
    if acked != account.total_used_t:
        problems.append(f"acknowledged compliance retirements total {acked} t; the account has "
                        f"{account.total_used_t} t used")
    retired = sum(r.quantity_t for r in projection.retirements.values()
                  if r.purpose == "compliance" and r.entity == EMITTER)
    if retired != account.total_used_t:
        problems.append(f"compliance retirements total {retired} t; the account has "
                        f"{account.total_used_t} t used")
    return problems


def check_run(url: str, operator_key: str,
              results: list[tuple[str, str, str, Any]]) -> dict[str, Any]:
    """Every check on a store after a run; returns a summary (asserting inside)."""
    acknowledged = [r for r in results if r[2] == "ok"]
    refused = [r for r in results if r[2] == "refused"]
    errors = [r for r in results if r[2] == "error"]
    codes = Counter(r[3] for r in refused)
    app = Registry(url)
    try:
        counts = command_ids_in_log(app)
        projection = app.projection()
        missing = [r[0] for r in acknowledged if counts.get(r[0], 0) != 1]
        refused_recorded = [r[0] for r in refused if counts.get(r[0], 0)]
        unit_problems = check_units(projection) + replay_units(app)
        compliance_problems = check_compliance(
            projection, [r[3] for r in acknowledged if r[1] == "retire"])
        report = audit_database(app.recorder, operator_key, workers=1)
        positions = [r[3]["position"] for r in acknowledged if "position" in r[3]]
        summary = {
            "commands": len(results), "acknowledged": len(acknowledged),
            "refusals": dict(codes), "errors": errors[:5], "log_size": app.log_position(),
            "audit_ok": report.ok, "audit_failure": str(report.failure),
            "checkpoints": report.checkpoints,
        }
        print(f"\nrun summary on {url.split('?')[0].rsplit('/', 1)[0]}...: {summary}")
        if codes.get("conflict"):
            print(f"NOTE: {codes['conflict']} commands exhausted their retries (conflict)")
        assert not errors, f"commands failed with non-domain errors: {errors[:5]}"
        unexpected = {c: n for c, n in codes.items() if c not in DOMAIN_REFUSALS | {"conflict"}}
        assert not unexpected, f"refusals with unexpected codes: {unexpected}"
        assert not missing, f"acknowledged commands not in the log exactly once: {missing[:10]}"
        assert not refused_recorded, f"refused commands found in the log: {refused_recorded[:10]}"
        assert len(set(positions)) == len(positions), "two commands acknowledged at one position"
        assert not unit_problems, unit_problems
        assert not compliance_problems, compliance_problems
        assert report.ok, f"the audit (re-execution of the log) fails: {report.failure}"
        return summary
    finally:
        app.close()
