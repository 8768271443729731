"""Work the harness runs in child processes: a clean heap, its own peak RSS, a hard time limit.

    python -m benchmarks._child generate EVENTS DB_PATH TIMEOUT_S
    python -m benchmarks._child rebuild DB_PATH
    python -m benchmarks._child asof DB_PATH POSITION HOLDER
    python -m benchmarks._child audit DB_PATH WORKERS BUDGET_S
    python -m benchmarks._child merkle DB_PATH SAMPLES

Each prints one JSON object as its last stdout line; progress goes to stderr.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, fmt_int, keys_path, median, say, sqlite_url


def run_child(args: list[str], *, timeout_s: float) -> dict[str, Any]:
    """Run `python -m benchmarks._child ARGS`; its JSON result, or {"ok": False, "error": ...}."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), ROOT=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks._child", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"ok": False, "error": f"timed out after {timeout_s:.0f} s"}
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"ok": False, "error": f"child exited with {proc.returncode}"}
    return json.loads(lines[-1])


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class _Ticker:
    """Calls `say` at most every `every_s` seconds."""

    def __init__(self, label: str, every_s: float = 10.0) -> None:
        self.label, self.every_s = label, every_s
        self.started = self.last = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every_s:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        eta = (total - done) / rate if rate > 0 else float("inf")
        say(f"{self.label}: {fmt_int(done)}/{fmt_int(total)} events ({fmt_int(rate)}/s, "
            f"about {eta / 60:.1f} min left)")


class _Deadline(Exception):
    pass


def cmd_generate(events: int, db: Path, timeout_s: float) -> dict[str, Any]:
    from benchmarks.generate import generate

    ticker = _Ticker(f"generate {fmt_int(events)}")
    deadline = time.monotonic() + timeout_s

    def progress(done: int, total: int) -> None:
        if time.monotonic() > deadline:
            raise _Deadline(f"generation passed its limit of {timeout_s:.0f} s at {done} events")
        ticker(done, total)

    try:
        stats = generate(sqlite_url(db), keys_path(db), events, progress=progress)
    except _Deadline as e:
        return {"ok": False, "error": str(e)}
    return {"ok": True, **stats}


def _open(db: Path) -> Any:
    from ledger.application import Registry
    from ledger.keys import Keyring

    return Registry(sqlite_url(db), keyring=Keyring(keys_path(db)), auto_checkpoint=False)


def cmd_rebuild(db: Path) -> dict[str, Any]:
    """Registry.rebuild() from position zero: events/s and this process's peak RSS."""
    app = _open(db)
    size = app.log_position()
    hwm_before = _status_kb("VmHWM")
    ticker = _Ticker("rebuild")
    t = time.perf_counter()
    projection = app.rebuild(lambda p: ticker(p.done, p.total))
    seconds = time.perf_counter() - t
    hwm = _status_kb("VmHWM")
    applied = projection.events_applied
    # The read limit, after the peak was taken: the same pages read, and the events that the
    # projection applies decoded (it skips command and trade records), nothing applied.
    say("rebuild: read + decode pass (the baseline)")
    read_s, decode_s, decoded = _read_and_decode(app, size)
    return {"ok": True, "size": size, "applied": applied, "seconds": seconds,
            "events_per_s": size / seconds, "vmhwm_kb": hwm, "vmhwm_before_kb": hwm_before,
            "aggregates": len(projection.aggregates), "decoded": decoded, "read_s": read_s,
            "decode_s": read_s + decode_s, "decode_per_s": size / (read_s + decode_s)}


def _read_and_decode(app: Any, upto: int) -> tuple[float, float, int]:
    """Seconds reading notifications 1..upto, seconds decoding those a projection applies."""
    from ledger import projections

    skipped = getattr(projections, "_SKIPPED_PREFIXES", ())
    to_event = app.mapper.to_domain_event
    read_s = decode_s = 0.0
    decoded = pos = 0
    while pos < upto:
        t = time.perf_counter()
        batch = app.recorder.select_notifications(pos + 1, 1000, stop=upto)
        read_s += time.perf_counter() - t
        if not batch:
            break
        t = time.perf_counter()
        for n in batch:
            if not n.topic.startswith(skipped):
                to_event(n)
                decoded += 1
        decode_s += time.perf_counter() - t
        pos = batch[-1].id
    return read_s, decode_s, decoded


def cmd_asof(db: Path, position: int, holder: str) -> dict[str, Any]:
    """An as-of balance query: a fresh projection caught up to `position`, then balances."""
    app = _open(db)
    t = time.perf_counter()
    projection = app.projection(as_of=position)
    catch_up_s = time.perf_counter() - t
    t = time.perf_counter()
    view = projection.balances(holder)
    balances_s = time.perf_counter() - t
    # The read limit for the same span: read, and decode what a projection applies.
    read_s, decode_s, _ = _read_and_decode(app, position)
    decode_s += read_s
    return {"ok": True, "position": position, "holder": holder, "catch_up_s": catch_up_s,
            "balances_s": balances_s, "seconds": catch_up_s + balances_s,
            "tickets": len(view["tickets"]), "decode_s": decode_s,
            "applied": projection.events_applied}


def _system_cpu() -> tuple[float, float]:
    """(CPU seconds the whole machine spent busy, seconds stolen from it by the hypervisor) so
    far, from /proc/stat; (0, 0) where there is none."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / tick, steal / tick


def _wait_for_quiet(limit_s: float = 30.0, share: float = 0.15) -> float:
    """Wait (at most limit_s) until the machine's other work uses less than `share` of its cores
    over half a second (what a workload before left running, PostgreSQL's background writers
    say); the seconds waited."""
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        busy0, _ = _system_cpu()
        time.sleep(0.5)
        busy1, _ = _system_cpu()
        if busy1 - busy0 < share * 0.5 * cores:
            break
    return time.perf_counter() - started


def cmd_audit(db: Path, workers: int, budget_s: float) -> dict[str, Any]:
    """audit_database over the whole registry, beside the Ed25519 verify rate of one core.

    With budget_s > 0 the audit is stopped after that long (between record batches) and the
    rate over the part done is reported, marked partial.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ledger.audit import audit_database

    quiet_wait_s = _wait_for_quiet()  # (before the Ed25519 rate too: both on a quiet machine)
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    message = b"x" * 200
    sig = key.sign(message)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < 1.0:
        for _ in range(200):
            pub.verify(sig, message)
        n += 200
    verify_per_s = n / (time.perf_counter() - t)
    app = _open(db)
    from domain.genesis import Genesis

    genesis = app.get_aggregate(Genesis, Genesis.id_for())
    operator_key = genesis.operator_key if genesis is not None else None
    ticker = _Ticker("audit")
    size = app.log_position()
    seen = {"done": 0}
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        seen["done"] = done
        if budget_s and time.perf_counter() - started > budget_s:
            raise _Deadline(done)
        ticker(done, total)

    cpu_started = time.process_time()
    system_started, steal_started = _system_cpu()

    def cpu() -> dict[str, float]:
        """CPU seconds of this (the replaying) process and of its children (the reader process
        and the signature workers, once they have ended): on a shared host the wall clock
        also counts other people's work. And the machine's CPU seconds outside the audit's
        processes, and the seconds the hypervisor stole, over the same time."""
        import resource

        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        main_s = time.process_time() - cpu_started
        children_s = children.ru_utime + children.ru_stime
        system_s, steal_s = _system_cpu()
        return {"main_cpu_s": round(main_s, 2), "children_cpu_s": round(children_s, 2),
                "others_cpu_s": round(max(system_s - system_started - main_s - children_s, 0), 2),
                "steal_s": round(steal_s - steal_started, 2), "quiet_wait_s": round(quiet_wait_s, 1)}

    try:
        report = audit_database(app.recorder, operator_key, workers, progress)
    except _Deadline:
        seconds = time.perf_counter() - started
        return {"ok": True, "partial": True, "audit_ok": None, "records": seen["done"],
                "size": size, "commands": 0, "signatures": 0, "checkpoints": 0,
                "seconds": seconds, "events_per_s": seen["done"] / seconds, "failure": None,
                "verify_per_s_one_core": verify_per_s, "cores": os.cpu_count() or 1,
                "workers": workers, **cpu()}
    return {"ok": True, "audit_ok": report.ok, "records": report.records, "size": size,
            "commands": report.commands, "signatures": report.signatures,
            "checkpoints": report.checkpoints, "seconds": report.seconds,
            "events_per_s": report.records / report.seconds if report.seconds else 0.0,
            "failure": None if report.failure is None else report.failure.what,
            "verify_per_s_one_core": verify_per_s, "cores": os.cpu_count() or 1, "workers": workers,
            **cpu()}


def cmd_merkle(db: Path, samples: int) -> dict[str, Any]:
    """Proof generation and verification at the log's size, from the in-memory MerkleTree."""
    from ledger import merkle

    app = _open(db)
    size = app.log_position()
    t = time.perf_counter()
    tree = app.log_tree(size)
    build_s = time.perf_counter() - t
    root = tree.root_at(size)
    rng = random.Random(7)
    leaves = tree._levels[0]  # the leaf hashes the tree holds (to check proofs against)
    timings: dict[str, list[float]] = {"inc_gen": [], "inc_ver": [], "con_gen": [], "con_ver": [],
                                       "hash_floor_inc": [], "hash_floor_con": []}
    pc = time.perf_counter_ns
    ok = True
    roots: dict[int, bytes] = {}
    inc_len: list[int] = []
    con_len: list[int] = []
    node = merkle.node_hash
    for _ in range(samples):
        i = rng.randrange(size)
        t0 = pc()
        proof = tree.inclusion_proof(i, size)
        t1 = pc()
        ok &= merkle.verify_inclusion(leaves[i], i, size, proof, root)
        t2 = pc()
        timings["inc_gen"].append((t1 - t0) / 1000)
        timings["inc_ver"].append((t2 - t1) / 1000)
        inc_len.append(len(proof))
        # The hashing floor of a proof check: as many node hashes as the proof is long.
        acc = leaves[i]
        t3 = pc()
        for h in proof:
            acc = node(acc, h)
        timings["hash_floor_inc"].append((pc() - t3) / 1000)
        m = rng.randrange(1, size)
        if m not in roots:
            roots[m] = tree.root_at(m)
        t0 = pc()
        cproof = tree.consistency_proof(m, size)
        t1 = pc()
        ok &= merkle.verify_consistency(m, size, cproof, roots[m], root)
        t2 = pc()
        timings["con_gen"].append((t1 - t0) / 1000)
        timings["con_ver"].append((t2 - t1) / 1000)
        con_len.append(len(cproof))
        acc = leaves[0]
        t3 = pc()
        for h in cproof:
            acc = node(acc, h)
            acc = node(acc, h)  # a consistency check folds two roots along the path
        timings["hash_floor_con"].append((pc() - t3) / 1000)
    return {"ok": True, "proofs_ok": bool(ok), "size": size, "build_s": build_s,
            "samples": samples, **{k: median(v) for k, v in timings.items()},
            "inc_len": median(inc_len), "con_len": median(con_len)}


def main(argv: list[str]) -> int:
    what = argv[0]
    if what == "generate":
        result = cmd_generate(int(argv[1]), Path(argv[2]), float(argv[3]))
    elif what == "rebuild":
        result = cmd_rebuild(Path(argv[1]))
    elif what == "asof":
        result = cmd_asof(Path(argv[1]), int(argv[2]), argv[3])
    elif what == "audit":
        result = cmd_audit(Path(argv[1]), int(argv[2]), float(argv[3]))
    elif what == "merkle":
        result = cmd_merkle(Path(argv[1]), int(argv[2]))
    else:
        raise SystemExit(f"unknown child command {what!r}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
