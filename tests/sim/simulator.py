"""The seeded fault simulator: one seed drives participants, commands, signed reads and faults
against real `carbon-ledger serve` processes, and every run ends with the registry's promises
checked (in the spirit of TigerBeetle's VOPR, sized for 2 cores).

A seed makes a plan (`make_plan`): which servers and workers, then a list of steps — a command,
a burst of commands sent at once, a signed read, or a fault: a worker or a whole server killed
with SIGKILL (between steps, or while a request is on its way), a graceful restart, the disk of
the SQLite file filled (a size-limited tmpfs) or its fsyncs failing (an LD_PRELOAD shim) for a
few steps, the servers' PostgreSQL connections terminated. The plan is a function of the seed
alone: commands are chosen against a planning registry that executes the plan in order, so the
same seed gives the same schedule of commands and faults on any machine (a fault this machine
cannot inject is skipped and reported, the plan stays the same).

The run sends each command until it gets a definitive answer (a 5xx or a lost connection is
"in doubt" and the command is resent with the same id, signed anew, as a client would), and
afterwards checks:

  * every acknowledged command is in the log exactly once, at the position it was answered with;
    an unacknowledged one at most once; a refused one not at all; nothing else is in the log;
  * an oracle — an in-process Registry on an in-memory store that executes the same accepted
    commands in log order — accepts every one of them at the same position, with the same
    outcome; a command refused while nothing else ran is refused by it with the same code; every
    signed read the servers answered equals what the same API over the oracle answers; and at
    the end the two registries' state commitments hold the same values;
  * conservation of every ticket's units (blocks partition the serials; issued = available +
    pledged + retired + cancelled), pledges' accounts, the pledged units and the pledge registers
    agreeing, and, replayed serial by serial from the log, no unit moved that its party did not
    hold in the right state; the compliance caps;
  * `carbon-ledger verify` of the store exits 0.

`ops/sim --seeds N [--store sqlite|postgres|both] [--seed S]` runs many seeds with a summary
line for each; a failing seed prints the command that reruns it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from api.http_signatures import sign_request
from api.routes import path_for
from domain.command import CommandRecord
from domain.compliance import DEFAULT_LIMITS, cap_t
from domain.errors import DomainError
from domain.ticket import AVAILABLE, CANCELLED, PLEDGED, RETIRED
from ledger.application import Registry
from ledger.keys import Keyring, public_text
from ledger.signing import SignedCommand, canonical_json, sign

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "e2e"))
import faults as F  # noqa: E402
import world as W  # noqa: E402
from _load_workers import (  # noqa: E402  (the e2e tests' launcher helpers and unit oracle)
    _executable,
    clean_env,
    free_port,
    replay_units,
)

HOST = "127.0.0.1"  # loopback only
REPO = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("CARBON_LEDGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_APP_NAME = "cl-sim-server"  # the servers' connections, which a pg_kill terminates
DEFAULT_STEPS = 30
REQUEST_TIMEOUT_S = 30.0
START_TIMEOUT_S = 60.0
RUN_BUDGET_S = 240.0  # one seed; a command still unanswered then is a violation
FAULT_ATTEMPTS = 2  # sends of one command while a disk or fsync fault lasts
MAX_CONFLICTS = 10  # 409 conflict answers in a row to one command: a liveness violation
DISK_MB = 48
# Refusals no well-formed, freshly signed command of the simulator may get.
NEVER = frozenset({"replay", "bad_signature", "unsigned", "non_canonical", "stale_signature",
                   "unknown_key", "revoked_key", "key_not_yet_valid", "operation_failed"})
# Holes the simulator finds that are being fixed elsewhere: a run given `tolerate` reports them
# apart (Result.known) instead of as violations. Empty this once the fix has landed.
KNOWN_HOLES: dict[str, str] = {}
_COMMAND_TOPIC = f"{CommandRecord.Accepted.__module__}:{CommandRecord.Accepted.__qualname__}"


# The plan ------------------------------------------------------------------------------------------

@dataclass
class Step:
    kind: str  # cmd | burst | read | fault
    cmds: list[W.Cmd] = field(default_factory=list)
    servers: list[int] = field(default_factory=list)  # which server each command (or read) goes to
    read: dict[str, Any] | None = None
    fault: dict[str, Any] | None = None  # for kind fault; or a kill while a cmd is in flight

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "cmds": [c.to_json() for c in self.cmds],
                "servers": self.servers, "read": self.read, "fault": self.fault}


@dataclass
class Plan:
    seed: int
    store: str
    workers: list[int]  # per server
    steps: list[Step]

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "store": self.store, "workers": self.workers,
                "steps": [s.to_json() for s in self.steps]}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    def faults(self) -> Counter[str]:
        return Counter(s.fault["kind"] for s in self.steps if s.fault)


def memory_registry(keyring: Keyring) -> Registry:
    return Registry("sqlite:///:memory:", keyring=keyring, auto_checkpoint=False,
                    group_commit=False)


def signed(keyring: Keyring, cmd: W.Cmd, method: str | None = None,
           path: str | None = None) -> SignedCommand:
    """The command as it is sent over HTTP (its resource's method and path), signed now."""
    body = canonical_json(cmd.body())
    if method is None or path is None:
        method, path = path_for(cmd.name, cmd.args)
    now = int(time.time())
    sigs = [sign(keyring.get(cmd.actor), cmd.actor, body, created=now, method=method, path=path)]
    sigs += [sign(keyring.get(p), p, body, created=now, consent=True) for p in cmd.consents]
    return SignedCommand(body=body, signatures=tuple(sigs), method=method, path=path)


def build_world(registry: Registry, keyring: Keyring) -> None:
    for cmd in W.setup_commands():
        args = dict(cmd.args)
        if cmd.name == "initialise":
            args["public_key"] = public_text(keyring.get_or_create(W.OPERATOR))
        elif cmd.name == "register_participant":
            args["public_key"] = public_text(keyring.get_or_create(args["participant_id"]))
        registry.execute(signed(keyring, W.Cmd(cmd.command_id, cmd.name, cmd.actor, args)))


def make_plan(seed: int, store: str, keyring: Keyring, steps: int = DEFAULT_STEPS) -> Plan:
    """The schedule of a seed: a function of (seed, store, steps) alone."""
    rng = random.Random(f"carbon-ledger-sim:{store}:{seed}")
    servers = 1 if store == "sqlite" else rng.choice([1, 2, 2])
    workers = [rng.choice([1, 2]) for _ in range(servers)]
    planner = memory_registry(keyring)
    try:
        build_world(planner, keyring)
        gen = W.Generator(rng, tag=str(seed))
        out: list[Step] = []
        forced_kill = rng.randrange(steps)  # every seed kills something at least once
        window = 0  # steps left in a disk or fsync fault
        for i in range(steps):
            roll = rng.random()
            if window == 0 and (roll < 0.06 or i == forced_kill):
                kind = rng.choice(["kill_worker", "kill_worker", "kill_server", "restart"])
                out.append(Step("fault", fault={"kind": kind, "server": rng.randrange(servers),
                                                "worker": rng.randrange(2)}))
            elif window == 0 and roll < 0.12 and i < steps - 3:
                kind = (rng.choice(["disk_full", "fsync_fail"]) if store == "sqlite"
                        else "pg_kill")
                window = rng.randint(1, 3) if kind != "pg_kill" else 0
                out.append(Step("fault", fault={"kind": kind, "steps": window}))
                if window:
                    continue
            window = max(0, window - 1)
            projection = planner.projection()
            if rng.random() < 0.15:
                out.append(Step("read", read=_plan_read(rng, projection, gen),
                                servers=[rng.randrange(servers)]))
                continue
            if rng.random() < 0.15:
                cmds = [gen.next(projection) for _ in range(rng.randint(2, 4))]
                kind = "burst"
            else:
                cmds = [gen.next(projection)]
                kind = "cmd"
            step = Step(kind, cmds=cmds, servers=[rng.randrange(servers) for _ in cmds])
            if kind == "cmd" and rng.random() < 0.08:
                step.fault = {"kind": rng.choice(["kill_worker", "kill_server"]),
                              "server": step.servers[0], "worker": rng.randrange(2),
                              "delay_ms": rng.randint(0, 25)}
            out.append(step)
            for cmd in cmds:
                try:
                    planner.execute(signed(keyring, cmd))
                except DomainError:
                    pass
        return Plan(seed, store, workers, out)
    finally:
        planner.close()


def _plan_read(rng: random.Random, projection: Any, gen: W.Generator) -> dict[str, Any]:
    roll = rng.random()
    back = rng.choice([None, None, 0, 3, 12])  # as_of this many records before the head
    if roll < 0.4:
        holder = rng.choice([*W.HOLDERS, W.EMITTER])
        reader = rng.choice([holder, W.REGULATOR, W.EXCHANGE, W.BANK, W.HOLDERS[0]])
        return {"path": f"/v1/accounts/{holder}/balances", "reader": reader, "as_of_back": back}
    if roll < 0.55:
        return {"path": "/v1/pledges", "reader": rng.choice([W.BANK, W.BANK2, W.REGULATOR,
                                                             W.HOLDERS[1]]), "as_of_back": back}
    if roll < 0.65:
        return {"path": f"/v1/compliance/{W.EMITTER}/{W.SCHEME}/{W.PERIOD}",
                "reader": rng.choice([W.EMITTER, W.REGULATOR, W.HOLDERS[2]]), "as_of_back": back}
    if roll < 0.8 and projection.pledges:
        pledge = projection.pledges[rng.choice(sorted(projection.pledges))]
        return {"path": f"/v1/pledges/{pledge.pledge_id}",
                "reader": rng.choice([pledge.pledgee, pledge.pledgor, W.HOLDERS[3]])}
    if roll < 0.9 and gen.trade_ids:
        return {"path": f"/v1/transfers/{rng.choice(gen.trade_ids)}", "reader": W.EXCHANGE}
    return {"path": f"/v1/tickets/{rng.choice(list(W.TICKETS.values()))}", "reader": None,
            "as_of_back": back}


# Servers -------------------------------------------------------------------------------------------

def _clean_env() -> dict[str, str]:
    """The test servers' environment, without this process's fault shims or PostgreSQL name."""
    return {k: v for k, v in clean_env().items() if k not in ("PGAPPNAME", "LD_PRELOAD")}


class Server:
    """One `carbon-ledger serve` (its own session, so that a kill takes its workers too)."""

    def __init__(self, index: int, db: str, keys: Path, workers: int, log: Path,
                 extra_env: dict[str, str]) -> None:
        self.index, self.db, self.keys, self.workers, self.log = index, db, keys, workers, log
        self.extra_env = extra_env
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.http: httpx.Client | None = None
        self.starts = 0
        self.lock = threading.RLock()  # one start at a time, whichever thread finds it down

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        for attempt in range(3):
            if self._start_once():
                return
            time.sleep(0.5 * (attempt + 1))
        raise RuntimeError(f"server {self.index} did not start:\n{self.log_tail()}")

    def _start_once(self) -> bool:
        self.port = free_port()
        offset = self.log.stat().st_size if self.log.exists() else 0
        env = {**_clean_env(), **self.extra_env}
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [_executable(), "serve", "--db", self.db, "--keys", str(self.keys), "--host", HOST,
                 "--port", str(self.port), "--workers", str(self.workers), "--log-level", "info"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=self.log.parent, start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = self._log_since(offset)
            if self.process.poll() is not None or "startup failed" in text:
                self.kill()
                return False
            if text.count("Application startup complete") >= self.workers and self.healthy():
                # (the client before it is left to other threads' requests in flight)
                self.http = httpx.Client(base_url=self.base_url, timeout=REQUEST_TIMEOUT_S,
                                         limits=httpx.Limits(max_keepalive_connections=0))
                return True
            time.sleep(0.05)
        self.kill()
        return False

    def healthy(self) -> bool:
        try:
            return httpx.get(self.base_url + "/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def wait_healthy(self, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                return False
            if self.healthy():
                return True
            time.sleep(0.05)
        return False

    def revive(self) -> bool:
        """Serving again: started anew when its process is gone, waited for when a worker is
        being restarted by its parent; killed and started when it does not come back."""
        with self.lock:
            if self.process is None or self.process.poll() is not None:
                self.start()
                return True
            if self.wait_healthy():
                return True
            dead = self.process.poll() is not None  # (a SIGKILL is not reaped at once)
            self.kill()
            self.start()
            return dead

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the server itself, or its spawned workers."""
        assert self.process is not None
        if self.workers == 1:
            return [self.process.pid]
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            pids = [int(p) for p in children.read_text().split()]
        except OSError:
            return []
        return sorted(p for p in pids if _cmdline(p).find("multiprocessing") >= 0
                      and "resource_tracker" not in _cmdline(p))

    def kill(self) -> None:
        """SIGKILL the server and its workers (no shutdown of any kind)."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def stop(self) -> None:
        """SIGTERM, as an operator stops it (requests in flight finish), then make sure."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        if self.http is not None:
            self.http.close()
            self.http = None

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self) -> str:
        return self._log_since(max(0, (self.log.stat().st_size if self.log.exists() else 0) - 3000))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# The run -------------------------------------------------------------------------------------------

@dataclass
class Answer:
    cmd: W.Cmd
    status: int | None = None  # None: never answered definitively
    body: dict[str, Any] | None = None
    position: int | None = None
    replayed: bool = False
    in_doubt: bool = False  # a send of it may have reached a server that then failed
    attempts: int = 0
    conflicts: int = 0  # 409 conflict answers (retried, as the API tells clients to)
    sequential: bool = True  # sent alone (no other command in flight)
    server: int = 0  # the server that gave the answer

    @property
    def acked(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def code(self) -> str | None:
        return None if self.acked or self.body is None else self.body.get("code")


@dataclass
class Result:
    seed: int
    store: str
    workers: list[int]
    fingerprint: str = ""
    violations: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)  # KNOWN_HOLES found, when tolerated
    counts: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    log_size: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def line(self) -> str:
        shape = "+".join(f"{w}w" for w in self.workers)
        counts = " ".join(f"{k}={v}" for k, v in self.counts.items())
        faults = " ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        verdict = "ok" if self.ok else f"VIOLATION ({len(self.violations)}): {self.violations[0]}"
        if self.known:
            verdict += f"; known holes {len(self.known)}: {self.known[0]}"
        return (f"seed {self.seed} {self.store} servers {shape}: {counts}; faults {faults}; "
                f"log {self.log_size}; {self.seconds:.1f} s; {verdict}")


class Simulation:
    def __init__(self, seed: int, store: str, root: Path, steps: int = DEFAULT_STEPS,
                 budget_s: float = RUN_BUDGET_S, log: Any = None,
                 tolerate: frozenset[str] = frozenset()) -> None:
        self.seed, self.store, self.root, self.steps = seed, store, root, steps
        self.tolerate = tolerate
        self.known: list[str] = []
        self.budget_s = budget_s
        self.say = log or (lambda _msg: None)
        self.keyring = Keyring(root / "keys")
        self.answers: list[Answer] = []  # one per send of a command in the plan
        self.pending: list[tuple[Answer, Server]] = []  # unanswered during a fault
        self.by_body: dict[bytes, W.Cmd] = {}
        self.violations: list[str] = []
        self.faults: Counter[str] = Counter()
        self.skipped: dict[str, str] = {}
        self.servers: list[Server] = []
        self.disk: F.SmallDisk | None = None
        self.fsync_flag = root / "fsync-fails"
        self.pg_db: str | None = None
        self.reads = 0
        self.last_write = 0  # the server that took the last write (sequential steps)
        self.refused_by_fault = 0  # 5xx answers while the disk was full or fsyncs failed

    def violation(self, what: str, hole: str | None = None) -> None:
        """Record a broken promise; one of KNOWN_HOLES (`hole`) apart, when tolerated."""
        if hole is not None and hole in self.tolerate:
            self.known.append(f"[{hole}] {what}")
            self.say(f"known hole ({KNOWN_HOLES.get(hole, hole)}): {what}")
            return
        if len(self.violations) < 50:
            self.violations.append(what)
        self.say(f"VIOLATION: {what}")

    # Setting up -------------------------------------------------------------------------------

    def _store_url(self) -> str:
        if self.store == "sqlite":
            disk = F.SmallDisk(self.root / "disk", DISK_MB)
            why = disk.mount()
            if why:
                self.skipped["disk_full"] = why
                folder = self.root / "db"
            else:
                self.disk = disk
                folder = disk.mountpoint
            folder.mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{folder / 'registry.db'}"
        import psycopg

        name = f"carbon_ledger_sim_{os.getpid()}_{self.seed}_{secrets_hex()}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.pg_db = name
        return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"

    def _drop_store(self) -> None:
        if self.disk is not None:
            self.disk.unmount()
        if self.pg_db is not None:
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')

    def run(self) -> Result:
        started = time.monotonic()
        self.deadline = started + self.budget_s
        plan = make_plan(self.seed, self.store, self.keyring, self.steps)
        result = Result(self.seed, self.store, plan.workers, plan.fingerprint())
        url = self._store_url()
        reader: Registry | None = None
        oracle: Oracle | None = None
        try:
            setup = Registry(url, keyring=self.keyring, auto_checkpoint=False)
            try:
                build_world(setup, self.keyring)
            finally:
                setup.close()
            server_keys = self.root / "server-keys"  # the operator's key only: it signs checkpoints
            server_keys.mkdir(mode=0o700, exist_ok=True)
            (server_keys / f"{W.OPERATOR}.key").write_bytes(
                self.keyring.path(W.OPERATOR).read_bytes())
            (server_keys / f"{W.OPERATOR}.key").chmod(0o600)
            env = {"PGAPPNAME": PG_APP_NAME}
            if self.store == "sqlite":
                shim, why = F.fsync_shim(REPO / "var" / "sim")
                if shim is None:
                    self.skipped["fsync_fail"] = why
                else:
                    env.update({"LD_PRELOAD": str(shim), F.FSYNC_FLAG_ENV: str(self.fsync_flag)})
            self.servers = [Server(i, url, server_keys, w, self.root / f"server-{i}.log", env)
                            for i, w in enumerate(plan.workers)]
            reader = Registry(url)
            reader.projection()
            oracle = Oracle(self.keyring, self)
            for server in self.servers:
                server.start()
            for i, step in enumerate(plan.steps):
                if time.monotonic() > self.deadline:
                    self.violation(f"the run's budget of {self.budget_s:.0f} s ended at step {i}")
                    break
                self._step(i, step, plan, reader, oracle)
            self._heal()
            self._retry_pending()
            self._final_reads(reader, oracle)
            for server in self.servers:
                server.stop()
            result.log_size = reader.log_position()
            self._check_log(reader, oracle)
            self.violations += check_units(reader)
            self.violations += check_compliance(reader.projection())
            self.violations += oracle.compare_state(reader)
            self._verify(url)
        except Exception as e:  # noqa: BLE001 - a harness failure is a failed seed, with the reason
            self.violation(f"the run stopped: {type(e).__name__}: {e}")
        finally:
            for server in self.servers:
                server.stop()
            if reader is not None:
                reader.close()
            if oracle is not None:
                oracle.close()
            self._drop_store()
        answers = list(self.answers)
        result.counts = {
            "commands": len(answers), "acked": sum(a.acked for a in answers),
            "refused": sum(a.status is not None and not a.acked for a in answers),
            "in_doubt": sum(a.in_doubt for a in answers),
            "unanswered": sum(a.status is None for a in answers), "reads": self.reads,
            "fault_5xx": self.refused_by_fault}
        result.faults = dict(self.faults)
        result.skipped = dict(self.skipped)
        result.violations = list(self.violations)
        result.known = list(self.known)
        result.seconds = time.monotonic() - started
        return result

    # Steps ------------------------------------------------------------------------------------

    def _step(self, i: int, step: Step, plan: Plan, reader: Registry, oracle: Oracle) -> None:
        if step.kind == "fault":
            assert step.fault is not None
            self._fault(step.fault)
            return
        if self.window == 0:
            self._heal()
            self._retry_pending()
        try:
            self._run_step(step, reader, oracle)
        finally:
            self.window = max(0, self.window - 1)

    def _run_step(self, step: Step, reader: Registry, oracle: Oracle) -> None:
        if step.kind == "read":
            assert step.read is not None
            oracle.sync(reader)
            self._read(step.read, self.servers[step.servers[0]], oracle)
            return
        if step.kind == "cmd":
            cmd = step.cmds[0]
            answer = self._send(cmd, self.servers[step.servers[0]], kill=step.fault)
            if answer.status is not None and not answer.acked and answer.sequential:
                oracle.sync(reader)
                if not oracle.check_refusal(answer, self.last_write):
                    oracle.rebase(reader)  # it accepted what the servers refused: start again
            elif answer.acked and not answer.replayed:
                self.last_write = answer.server
            return
        threads = []
        for cmd, s in zip(step.cmds, step.servers, strict=True):
            t = threading.Thread(target=self._send, args=(cmd, self.servers[s]),
                                 kwargs={"sequential": False}, daemon=True)
            threads.append(t)
            t.start()
        for t in threads:
            t.join(timeout=REQUEST_TIMEOUT_S * 4)

    window = 0  # steps left under a disk or fsync fault
    faulted = False  # a disk or fsync fault is on

    def _fault(self, fault: dict[str, Any]) -> None:
        kind = fault["kind"]
        if kind in ("disk_full", "fsync_fail"):
            if kind in self.skipped:
                return
            self._heal()
            if kind == "disk_full":
                assert self.disk is not None
                self.disk.fill()
            else:
                self.fsync_flag.touch()
            self.window = fault["steps"]
            self.faulted = True
            self.faults[kind] += 1
            self.say(f"fault: {kind} for {fault['steps']} steps")
            return
        if kind == "pg_kill":
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                    "AND application_name = %s AND pid <> pg_backend_pid()",
                    (self.pg_db, PG_APP_NAME)).fetchall()
            self.faults[kind] += 1
            self.say(f"fault: terminated {len(rows)} PostgreSQL connections of the servers")
            return
        server = self.servers[fault["server"] % len(self.servers)]
        self._kill(server, kind, fault.get("worker", 0))
        self._recover(server)

    def _kill(self, server: Server, kind: str, worker: int) -> None:
        if kind == "kill_worker":
            pids = server.worker_pids()
            if pids:
                pid = pids[worker % len(pids)]
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.faults["kill_worker"] += 1
                self.say(f"fault: SIGKILL worker {pid} of server {server.index}")
        elif kind == "kill_server":
            server.kill()
            self.faults["kill_server"] += 1
            self.say(f"fault: SIGKILL server {server.index} and its workers")
        elif kind == "restart":
            server.stop()
            self.faults["restart"] += 1
            self.say(f"fault: graceful restart of server {server.index}")

    def _recover(self, server: Server) -> None:
        if not server.revive():
            self.violation(f"server {server.index} did not serve again after a fault:\n"
                           f"{server.log_tail()}")

    def _heal(self) -> None:
        if self.disk is not None:
            self.disk.free()
        self.fsync_flag.unlink(missing_ok=True)
        self.window = 0
        self.faulted = False

    def _send(self, cmd: W.Cmd, server: Server, kill: dict[str, Any] | None = None,
              sequential: bool = True, answer: Answer | None = None) -> Answer:
        """Send until a definitive answer (2xx, or a refusal), resending with a new signature
        after a lost connection or a 5xx, as a client would."""
        if answer is None:
            answer = Answer(cmd, sequential=sequential)
            self.answers.append(answer)
        body = canonical_json(cmd.body())
        self.by_body[body] = cmd
        method, path = path_for(cmd.name, cmd.args)
        limit = FAULT_ATTEMPTS if self.faulted else None
        while time.monotonic() < self.deadline:
            if limit is not None and answer.attempts >= limit:
                self.pending.append((answer, server))
                return answer
            target = server
            headers = sign_request(self.keyring.get(cmd.actor), method=method, path=path,
                                   body=body, created=int(time.time()),
                                   consents=[self.keyring.get(p) for p in cmd.consents])
            headers["Content-Type"] = "application/json"
            timer = None
            if kill is not None and answer.attempts == 0:
                timer = threading.Timer(kill["delay_ms"] / 1000, self._kill,
                                        (target, kill["kind"], kill.get("worker", 0)))
                timer.start()
            answer.attempts += 1
            try:
                assert target.http is not None
                r = target.http.request(method, path, content=body, headers=headers)
            except httpx.ConnectError:
                r = None  # nothing was sent
            except httpx.TransportError:
                r = None
                answer.in_doubt = True
            finally:
                if timer is not None:
                    timer.join()
                    self._recover(target)
            if r is None:
                # gone: started again, as an operator (or systemd) would
                if not target.healthy():
                    self._recover(target)
                time.sleep(0.05)
                continue
            if r.status_code >= 500 or (r.status_code == 409 and _code(r) == "conflict"):
                self.say(f"{cmd.command_id}: {r.status_code} {_code(r) or r.text[:60]}")
                if self.faulted:
                    self.refused_by_fault += 1
                answer.in_doubt = answer.in_doubt or r.status_code >= 500
                if r.status_code == 409:
                    answer.conflicts += 1
                    if answer.conflicts == MAX_CONFLICTS:  # retried as told, and never decided
                        self.violation(f"{cmd.command_id} ({cmd.name}) was answered 409 conflict "
                                       f"{MAX_CONFLICTS} times in a row")
                        return answer
                time.sleep(0.05)
                continue
            answer.status = r.status_code
            answer.server = target.index
            answer.body = _json(r)
            position = r.headers.get("X-Log-Position")
            answer.position = int(position) if position else None
            answer.replayed = r.headers.get("Idempotent-Replayed") == "true"
            if not answer.acked and answer.code in NEVER:
                self.violation(f"{cmd.command_id} ({cmd.name}) was refused with {answer.code}: "
                               f"{(answer.body or {}).get('detail')}")
            return answer
        return answer

    def _retry_pending(self) -> None:
        """After a fault: send again what got no definitive answer during it."""
        while self.pending:
            answer, server = self.pending.pop(0)
            answer.sequential = False  # other commands ran since its first send
            self._send(answer.cmd, server, answer=answer)

    def _read(self, read: dict[str, Any], server: Server, oracle: Oracle) -> None:
        query = ""
        back = read.get("as_of_back")
        if back is not None:
            query = f"as_of={max(0, oracle.position() - back)}"
        path = read["path"]
        headers: dict[str, str] = {}
        if read["reader"] is not None:
            headers = sign_request(self.keyring.get(read["reader"]), method="GET", path=path,
                                   query=query, created=int(time.time()))
        url = path + (f"?{query}" if query else "")
        for _ in range(50):
            try:
                assert server.http is not None
                r = server.http.get(url, headers=headers)
            except httpx.TransportError:
                r = None
            if r is not None and r.status_code < 500:
                break
            if r is None:
                server.revive()
            time.sleep(0.1)
            if read["reader"] is not None:  # a nonce is spent once: sign again
                headers = sign_request(self.keyring.get(read["reader"]), method="GET", path=path,
                                       query=query, created=int(time.time()))
        else:
            self.violation(f"GET {url} got no answer from server {server.index}")
            return
        assert r is not None
        self.reads += 1
        want = oracle.read(url, headers)
        got = (r.status_code, _json(r) if r.status_code < 400 else _code(r))
        if got != want:
            self.violation(f"GET {url} as {read['reader']} on server {server.index}: "
                           f"{_short(got)}; the oracle answers {_short(want)}")

    def _final_reads(self, reader: Registry, oracle: Oracle) -> None:
        oracle.sync(reader)
        for server in self.servers:
            self._recover(server)
            for holder in [*W.HOLDERS, W.EMITTER, W.BANK]:
                self._read({"path": f"/v1/accounts/{holder}/balances", "reader": W.REGULATOR},
                           server, oracle)
            self._read({"path": "/v1/pledges", "reader": W.REGULATOR}, server, oracle)
            for ticket_no in W.TICKETS.values():
                self._read({"path": f"/v1/tickets/{ticket_no}", "reader": None}, server, oracle)

    # Checks -----------------------------------------------------------------------------------

    def _check_log(self, reader: Registry, oracle: Oracle) -> None:
        recorded = oracle.sync(reader)
        by_id = Counter(cid for _pos, cid, _body in recorded)
        positions = {cid: pos for pos, cid, _body in recorded}
        for cid, n in by_id.items():
            if n > 1:
                self.violation(f"command {cid} is recorded {n} times")
        # Every record is a command some send of which was acknowledged, or in doubt (its answer
        # lost), or unanswered: never one whose every send was refused.
        vouched = {canonical_json(a.cmd.body()) for a in self.answers
                   if a.acked or a.in_doubt or a.status is None}
        for pos, cid, body in recorded:
            if body not in vouched and body in self.by_body:
                self.violation(f"position {pos}: {cid} is recorded, but every send of it was "
                               "refused")
        for a in self.answers:
            cid = a.cmd.command_id
            if not a.acked:
                continue
            if by_id.get(cid, 0) != 1:
                self.violation(f"acknowledged {cid} is recorded {by_id.get(cid, 0)} times")
            elif a.position != positions[cid]:
                self.violation(f"{cid} was acknowledged at position {a.position} but is "
                               f"recorded at {positions[cid]}")
            elif (want := oracle.outcomes.get(cid)) is not None and a.body != want:
                self.violation(f"{cid}: the server's outcome {_short(a.body)} differs from "
                               f"the oracle's {_short(want)}")
        missing = [a.cmd.command_id for a in self.answers if a.status is None]
        if missing:
            self.violation(f"{len(missing)} commands never got an answer: {missing[:5]}")

    def _verify(self, url: str) -> None:
        operator = public_text(self.keyring.get(W.OPERATOR))
        done = subprocess.run(
            [_executable(), "verify", "--db", url, "--operator-key", operator, "--json",
             "--workers", "1"], capture_output=True, text=True, timeout=300, env=_clean_env(),
            cwd=self.root, check=False)
        if done.returncode != 0:
            self.violation(f"carbon-ledger verify exited {done.returncode}: "
                           f"{(done.stdout + done.stderr).strip()[-400:]}")


def secrets_hex() -> str:
    return os.urandom(3).hex()


def _json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return {"text": r.text[:200]}


def _code(r: httpx.Response) -> str | None:
    body = _json(r)
    return body.get("code") if isinstance(body, dict) else None


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 300 else text[:300] + "…"


# The oracle -----------------------------------------------------------------------------------------

class Oracle:
    """An in-process Registry on an in-memory store, fed the commands the real log holds, in log
    order; with the same HTTP API over it for reads."""

    def __init__(self, keyring: Keyring, sim: Simulation) -> None:
        import warnings

        with warnings.catch_warnings():  # starlette would rather have httpx2; httpx serves
            warnings.simplefilter("ignore")
            from starlette.testclient import TestClient

        from api.server import create_app

        self.keyring, self.sim = keyring, sim
        self.registry = memory_registry(keyring)
        build_world(self.registry, keyring)
        self.synced = self.registry.log_position()
        self.setup_size = self.synced
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.recorded: list[tuple[int, str, bytes]] = []  # (position, command id, body)
        self.client = TestClient(create_app(self.registry))
        self.lock = threading.Lock()

    def close(self) -> None:
        self.client.close()
        self.registry.close()

    def position(self) -> int:
        return self.registry.log_position()

    def sync(self, reader: Registry) -> list[tuple[int, str, bytes]]:
        """Execute what the real log holds beyond what was fed; every (position, command id)
        recorded after the world's setup."""
        with self.lock:
            end = reader.log_position()
            start = self.synced + 1
            while start <= end:
                batch = reader.recorder.select_notifications(start, 1000, stop=end)
                if not batch:
                    break
                for n in batch:
                    if n.topic == _COMMAND_TOPIC:
                        self._feed(n.id, reader.mapper.to_domain_event(n))
                start = batch[-1].id + 1
            self.synced = max(self.synced, end)
            return list(self.recorded)

    def _feed(self, position: int, record: Any) -> None:
        self.recorded.append((position, record.command_id, bytes(record.body)))
        cmd = self.sim.by_body.get(bytes(record.body))
        if cmd is None:
            self.sim.violation(f"position {position}: command {record.command_id} holds a body "
                               "the simulator never sent")
            return
        try:
            outcome = self.registry.execute(signed(self.keyring, cmd, record.method, record.path))
        except DomainError as e:
            self.sim.violation(f"position {position}: the servers recorded {cmd.command_id} "
                               f"({cmd.name}); the oracle refuses it: {e.code}: {e.message}")
            return
        at = outcome.pop("position")
        outcome.pop("replayed", None)
        if at != position:
            self.sim.violation(f"{cmd.command_id} is at position {position} in the log and at "
                               f"{at} in the oracle's")
        self.outcomes[cmd.command_id] = outcome

    def check_refusal(self, answer: Answer, last_write: int) -> bool:
        """A command refused while nothing else ran is refused by the oracle with that code;
        False when the oracle accepted it (it is then ahead of the servers' log)."""
        cmd = answer.cmd
        try:
            outcome = self.registry.execute(signed(self.keyring, cmd))
        except DomainError as e:
            if e.code != answer.code:
                self.sim.violation(f"{cmd.command_id} ({cmd.name}) was refused with "
                                   f"{answer.code}; the oracle refuses it with {e.code}",
                                   self._stale())
            return True
        where = (f"server {answer.server}, after a write through server {last_write}"
                 if len(self.sim.servers) > 1 else f"server {answer.server}")
        self.sim.violation(f"{cmd.command_id} ({cmd.name}) was refused with {answer.code} by "
                           f"{where}; the oracle accepts it: {_short(outcome)}", self._stale())
        return False

    def _stale(self) -> str | None:
        """A wrong refusal where several processes decide may be issue 18's stale view."""
        return "stale_refusal" if sum(s.workers for s in self.sim.servers) > 1 else None

    def rebase(self, reader: Registry) -> None:
        """A fresh oracle fed the servers' log from the start (after it accepted a command the
        servers refused), so that what follows is compared against the log as it is."""
        from starlette.testclient import TestClient

        from api.server import create_app

        self.client.close()
        self.registry.close()
        self.registry = memory_registry(self.keyring)
        build_world(self.registry, self.keyring)
        self.synced = self.registry.log_position()
        self.outcomes, self.recorded = {}, []
        self.client = TestClient(create_app(self.registry))
        self.sync(reader)

    def read(self, url: str, headers: dict[str, str]) -> tuple[int, Any]:
        r = self.client.get(url, headers=headers)
        body = r.json()
        return r.status_code, (body if r.status_code < 400 else body.get("code"))

    def compare_state(self, reader: Registry) -> list[str]:
        """Every committed entity equal in both (key registration times aside)."""
        mine, theirs = self.registry.projection(), reader.projection()
        problems = []
        if mine.position != theirs.position:
            problems.append(f"the log has {theirs.position} records, the oracle's {mine.position}")
        len(mine.commitment), len(theirs.commitment)  # (sorts every touched entity in)
        keys = set(mine.commitment._keys) | set(theirs.commitment._keys)
        for key in sorted(keys):
            a, b = _timeless(mine.commitment.value(key)), _timeless(theirs.commitment.value(key))
            if a != b:
                problems.append(f"{key}: the store holds {_short(b)}; the oracle {_short(a)}")
        return problems[:20]


def _timeless(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k != "valid_from"}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


# Checks on a store ---------------------------------------------------------------------------------

def check_units(app: Registry) -> list[str]:
    """Conservation, partition, pledges and retirements against the tickets, and an independent
    serial-by-serial replay of the log (tests/e2e/_load_workers.replay_units: each event moves
    only units its party held in the right state, no frozen account sells, pledges or retires,
    and the end agrees with the tickets)."""
    p = app.projection()
    problems: list[str] = []
    pledged: dict[tuple[str, int], str] = {}
    for pledge in p.pledges.values():
        parts = pledge.pledged_t + pledge.released_t + pledge.enforced_t + pledge.impaired_t
        if pledge.original_t != parts:
            problems.append(f"pledge {pledge.pledge_id}: original {pledge.original_t} t != "
                            f"pledged + released + enforced + impaired = {parts} t")
        held = sum(b - a + 1 for rs in pledge.held.values() for a, b in rs)
        if held != pledge.pledged_t:
            problems.append(f"pledge {pledge.pledge_id} holds {held} t of serials but says "
                            f"{pledge.pledged_t} t")
        for ticket_no, ranges in pledge.held.items():
            for a, b in ranges:
                for s in range(a, b + 1):
                    if pledged.setdefault((ticket_no, s), pledge.pledge_id) != pledge.pledge_id:
                        problems.append(f"{ticket_no}-{s:07d} is under two pledges")
    retired: Counter[tuple[str, str]] = Counter()
    for r in p.retirements.values():
        for ticket_no, _standard, ranges in r.lines:
            retired[(ticket_no, r.retirement_id)] += sum(b - a + 1 for a, b in ranges)
    for ticket_no, ticket in sorted(p.tickets.items()):
        expect = 1
        by_state: Counter[str] = Counter()
        on_ticket: Counter[tuple[str, str]] = Counter()
        for first, last, holder, state, ref in ticket.blocks:
            if first != expect or last < first:
                problems.append(f"{ticket_no}: a gap or overlap at serial {first}")
            expect = last + 1
            by_state[state] += last - first + 1
            if state == PLEDGED:
                pl = p.pledges.get(ref)
                if pl is None or pl.pledgor != holder or pl.status != "active":
                    problems.append(f"{ticket_no} {first}..{last} pledged under {ref}, not an "
                                    f"active pledge of {holder}")
                for s in range(first, last + 1):
                    if pledged.pop((ticket_no, s), None) != ref:
                        problems.append(f"{ticket_no}-{s:07d} is pledged under {ref} on the "
                                        "ticket, not in that pledge")
                        break
            elif state == RETIRED:
                on_ticket[(ticket_no, ref)] += last - first + 1
            elif state not in (AVAILABLE, CANCELLED):
                problems.append(f"{ticket_no}: unknown state {state}")
        if expect != ticket.quantity_t + 1:
            problems.append(f"{ticket_no}: blocks end at {expect - 1}, not {ticket.quantity_t}")
        if sum(by_state.values()) != ticket.quantity_t:
            problems.append(f"{ticket_no}: issued {ticket.quantity_t} t != {dict(by_state)}")
        for (t, ref), n in on_ticket.items():
            if retired.get((t, ref)) != n:
                problems.append(f"{t}: {n} t retired under {ref} on the ticket, "
                                f"{retired.get((t, ref), 0)} t in the retirement")
    for (ticket_no, s), pid in sorted(pledged.items())[:5]:
        problems.append(f"{ticket_no}-{s:07d} is in pledge {pid} but not pledged on the ticket")
    return problems[:20] + replay_units(app)


def check_compliance(projection: Any) -> list[str]:
    """Offsets used within every cap (floored), and equal to the compliance retirements."""
    problems = []
    for (entity, scheme, period), account in sorted(projection.compliance.items()):
        limits = projection.limits.get((scheme, period))
        standards_bp, total_bp = ((limits.standards_bp, limits.total_bp) if limits is not None
                                  else DEFAULT_LIMITS.get(scheme, ({}, 0)))
        e = account.verified_emissions_t
        if account.total_used_t > cap_t(e, total_bp):
            problems.append(f"{entity} {scheme} {period}: {account.total_used_t} t used > total "
                            f"cap {cap_t(e, total_bp)} t")
        for standard, used in account.used_t.items():
            if used > cap_t(e, standards_bp.get(standard, 0)):
                problems.append(f"{entity} {scheme} {period}: {standard} {used} t used > cap "
                                f"{cap_t(e, standards_bp.get(standard, 0))} t")
        retired = sum(r.quantity_t for r in projection.retirements.values()
                      if r.purpose == "compliance" and (r.holder, r.scheme, r.period)
                      == (entity, scheme, period))
        if retired != account.total_used_t:
            problems.append(f"{entity} {scheme} {period}: compliance retirements total "
                            f"{retired} t, the account has {account.total_used_t} t used")
    return problems


# Many seeds -------------------------------------------------------------------------------------------

def rerun_command(seed: int, store: str, steps: int) -> str:
    extra = f" --steps {steps}" if steps != DEFAULT_STEPS else ""
    return f"ops/sim --seed {seed} --store {store}{extra} -v"


def run_seed(seed: int, store: str, steps: int = DEFAULT_STEPS, budget_s: float = RUN_BUDGET_S,
             verbose: bool = False, keep: Path | None = None,
             tolerate: frozenset[str] = frozenset()) -> Result:
    say = (lambda msg: print(f"  [{seed} {store}] {msg}", flush=True)) if verbose else None
    if keep is not None:
        root = keep / f"{store}-{seed}"
        root.mkdir(parents=True, exist_ok=True)
        return Simulation(seed, store, root, steps, budget_s, say, tolerate).run()
    with tempfile.TemporaryDirectory(prefix=f"cl-sim-{store}-{seed}-") as tmp:
        return Simulation(seed, store, Path(tmp), steps, budget_s, say, tolerate).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ops/sim", description="Run the seeded fault simulator against real servers.")
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds (from --seed on)")
    parser.add_argument("--seed", type=int, default=None,
                        help="the first seed (default: a random one, printed)")
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="steps per seed")
    parser.add_argument("--budget", type=float, default=RUN_BUDGET_S, help="seconds per seed")
    parser.add_argument("--plan", action="store_true", help="print the plan(s) as JSON, run none")
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="keep each run's folder (logs, keys, SQLite file) under DIR")
    parser.add_argument("--json", action="store_true", help="one JSON object per seed")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every fault")
    parser.add_argument("--tolerate-known", action="store_true",
                        help="report the holes being fixed elsewhere (" + ", ".join(KNOWN_HOLES)
                        + ") apart, not as violations")
    args = parser.parse_args(argv)
    # SIGTERM ends the run like Ctrl-C: its servers stopped, its tmpfs unmounted, its database
    # dropped (the finally blocks run).
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    first = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    if args.plan:
        with tempfile.TemporaryDirectory(prefix="cl-sim-plan-") as tmp:
            keyring = Keyring(Path(tmp))
            for seed in range(first, first + args.seeds):
                for store in stores:
                    print(json.dumps(make_plan(seed, store, keyring, args.steps).to_json(),
                                     ensure_ascii=False))
        return 0
    started = time.monotonic()
    totals: Counter[str] = Counter()
    failed: list[tuple[int, str]] = []
    print(f"ops/sim: seeds {first}..{first + args.seeds - 1} on {', '.join(stores)}, "
          f"{args.steps} steps each", flush=True)
    for seed in range(first, first + args.seeds):
        for store in stores:
            result = run_seed(seed, store, args.steps, args.budget, args.verbose,
                              Path(args.keep) if args.keep else None,
                              frozenset(KNOWN_HOLES) if args.tolerate_known else frozenset())
            totals["known"] += len(result.known)
            totals["runs"] += 1
            totals.update({f"{k}": v for k, v in result.counts.items()})
            totals.update({f"fault:{k}": v for k, v in result.faults.items()})
            if args.json:
                print(json.dumps({**asdict(result), "ok": result.ok}, ensure_ascii=False),
                      flush=True)
            else:
                print(result.line(), flush=True)
            if not result.ok:
                failed.append((seed, store))
                for v in result.violations[1:10]:
                    print(f"    also: {v}", flush=True)
                print(f"    rerun: {rerun_command(seed, store, args.steps)}", flush=True)
            for fault, why in result.skipped.items():
                totals[f"skipped:{fault}"] += 1
                if totals[f"skipped:{fault}"] == 1:
                    print(f"    note: {fault} faults skipped: {why}", flush=True)
    elapsed = time.monotonic() - started
    faults = ", ".join(f"{k[6:]} {v}" for k, v in sorted(totals.items()) if k.startswith("fault:"))
    print(f"total: {totals['runs']} runs, {len(failed)} with violations; "
          f"{totals['commands']} commands ({totals['acked']} acknowledged, {totals['refused']} "
          f"refused, {totals['in_doubt']} in doubt), {totals['reads']} reads checked; "
          f"faults: {faults or 'none'}; known holes {totals['known']}; {elapsed:.0f} s", flush=True)
    for seed, store in failed:
        print(f"FAILED seed {seed} on {store}: {rerun_command(seed, store, args.steps)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
