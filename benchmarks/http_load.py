"""HTTP load: `carbon-ledger serve` on a fresh registry, client processes posting signed transfers.

Each client thread is one exchange with its own key and its own lane (two holders, one ticket),
so concurrent commands never contend for the same aggregates — only for the store. Requests are
signed (RFC 9421, Ed25519, exactly as api.client.Client signs them) *before* the clock starts and
sent with the Client's own httpx connection: on a 2-core machine the clients' signing would
otherwise take CPU from the server being measured. The signing rate is reported beside.

    python -m benchmarks.http_load client SPEC_JSON   (a client process; the harness starts it)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import world
from benchmarks._common import ROOT, percentile, say, scratch_dir, sqlite_url

MAX_RATE_PER_THREAD = 250  # pre-signed requests per thread per second of load (a hard count bound)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(base: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /healthz within {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen, grace_s: float = 10) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def run(*, seconds: float, procs: int, threads: int, workers: int, url: str | None = None,
        reads_per_write: int = 0) -> dict[str, Any]:
    """Signed transfers (and, with `reads_per_write`, public ticket reads after each) posted by
    client processes at `carbon-ledger serve --workers N` on `url` (a fresh SQLite file if None)."""
    from ledger.application import Registry
    from ledger.keys import Keyring

    d = scratch_dir("http")
    keys, db = d / "keys", d / "http.db"
    url = url or sqlite_url(db)
    lanes = world.make_lanes(procs * threads, 1)
    app = Registry(url, keyring=Keyring(keys), auto_checkpoint=True)
    world.setup(app, lanes)
    # The comparison: the same kind of transfers through Registry.submit in this process, one at
    # a time (whole back-and-forth pairs, so every lane ends where it started).
    stream = world.transfers(lanes, "D")
    n, t = 0, time.perf_counter()
    while n < 2 * len(lanes) * 10 and time.perf_counter() - t < 1.5:
        for _ in range(2 * len(lanes)):
            lane, args = next(stream)
            app.submit("transfer", lane.exchange, f"trade/{lane.exchange}/{args['trade_id']}", args)
            n += 1
    direct_rate = n / (time.perf_counter() - t)
    app.close()

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    exe = Path(sys.executable).with_name("carbon-ledger")
    server_log = open(d / "server.log", "wb")  # noqa: SIM115
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen([str(exe), "serve", "--db", url, "--keys", str(keys), "--host",
                               "127.0.0.1", "--port", str(port), "--workers", str(workers)],
                              cwd=ROOT, env=env, stdout=server_log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    clients: list[subprocess.Popen] = []
    try:
        _wait_healthy(base, server)
        say(f"http: server up at {base} ({workers} workers); starting {procs} client processes")
        per_thread = int(MAX_RATE_PER_THREAD * seconds)
        for p in range(procs):
            mine = lanes[p * threads:(p + 1) * threads]
            spec = {"base": base, "keys": str(keys), "per_thread": per_thread, "proc": p,
                    "reads_per_write": reads_per_write,
                    "lanes": [[ln.exchange, ln.a, ln.b, ln.ticket_no] for ln in mine]}
            clients.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.http_load", "client", json.dumps(spec)],
                cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                start_new_session=True))
        for c in clients:
            assert c.stdout is not None
            line = _readline(c, timeout_s=120)
            if line.strip() != "READY":
                raise RuntimeError(f"a client did not get ready: {line!r}")
        start = time.time() + 0.3
        for c in clients:
            assert c.stdin is not None
            c.stdin.write(f"GO {start} {start + seconds}\n")
            c.stdin.flush()
        results = []
        for c in clients:
            out, _ = c.communicate(timeout=seconds + 120)
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for c in clients:
            if c.poll() is None:
                os.killpg(c.pid, signal.SIGKILL)
                c.wait()
        _stop(server)
        server_log.close()
    latencies = sorted(x for r in results for x in r["latencies_ms"])
    ok = sum(r["ok"] for r in results)
    reads = sum(r.get("reads", 0) for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    t0 = min(r["started"] for r in results)
    t1 = max(r["ended"] for r in results)
    elapsed = t1 - t0
    return {"rate": ok / elapsed, "ok": ok, "reads": reads, "requests_rate": (ok + reads) / elapsed,
            "errors": errors, "seconds": elapsed,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "max_ms": latencies[-1] if latencies else float("nan"),
            "sign_per_s": sum(r["sign_per_s"] for r in results) / len(results),
            "exhausted": any(r["exhausted"] for r in results), "direct_rate": direct_rate}


def _readline(proc: subprocess.Popen, timeout_s: float) -> str:
    box: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return box[0] if box else ""


# The client process ---------------------------------------------------------------------------

def client(spec: dict[str, Any]) -> None:
    from api.client import Client
    from api.http_signatures import sign_request
    from api.routes import path_for
    from ledger.keys import read_private
    from ledger.signing import canonical_json

    prepared: list[list[tuple[str, str, bytes, dict[str, str]]]] = []
    clients: list[Client] = []
    signed, t = 0, time.perf_counter()
    for ex, a, b, no in spec["lanes"]:
        key = read_private(Path(spec["keys"]) / f"{ex}.key")
        lane = world.Lane(ex, a, b, no)
        requests = []
        for _ in range(spec["per_thread"]):
            args = lane.next_transfer(f"H{spec['proc']}")
            body = canonical_json({"command": "transfer", "actor": ex,
                                   "command_id": f"trade/{ex}/{args['trade_id']}", "args": args})
            method, path = path_for("transfer", args)
            headers = sign_request(key, method=method, path=path, body=body,
                                   created=int(time.time()))
            headers["Content-Type"] = "application/json"
            requests.append((method, path, body, headers))
            signed += 1
        prepared.append(requests)
        clients.append(Client(spec["base"], ex, key, timeout_s=30))
    sign_per_s = signed / (time.perf_counter() - t)
    print("READY", flush=True)
    go = sys.stdin.readline().split()
    start, deadline = float(go[1]), float(go[2])
    out: list[dict[str, Any]] = [{} for _ in clients]

    def worker(i: int) -> None:
        http = clients[i].http
        lat: list[float] = []
        errors: dict[str, int] = {}
        ok = 0
        reads = 0
        ticket_path = f"/v1/tickets/{spec['lanes'][i][3]}"
        exhausted = True
        time.sleep(max(0.0, start - time.time()))
        began = time.time()
        for method, path, body, headers in prepared[i]:
            if time.time() >= deadline:
                exhausted = False
                break
            t0 = time.perf_counter()
            try:
                response = http.request(method, path, content=body, headers=headers)
            except Exception as e:  # noqa: BLE001
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                continue
            ms = (time.perf_counter() - t0) * 1000
            if response.status_code < 300:
                ok += 1
                lat.append(ms)
                for _ in range(spec.get("reads_per_write", 0)):
                    try:
                        if http.get(ticket_path).status_code == 200:
                            reads += 1
                    except Exception as e:  # noqa: BLE001
                        errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            else:
                try:
                    code = response.json().get("code", str(response.status_code))
                except ValueError:
                    code = str(response.status_code)
                errors[code] = errors.get(code, 0) + 1
        out[i] = {"lat": lat, "errors": errors, "ok": ok, "reads": reads, "began": began,
                  "ended": time.time(),
                  "exhausted": exhausted}

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(len(clients))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for c in clients:
        c.close()
    errors: dict[str, int] = {}
    for o in out:
        for k, v in o["errors"].items():
            errors[k] = errors.get(k, 0) + v
    print(json.dumps({"latencies_ms": [x for o in out for x in o["lat"]],
                      "ok": sum(o["ok"] for o in out), "reads": sum(o["reads"] for o in out),
                      "errors": errors,
                      "started": min(o["began"] for o in out), "ended": max(o["ended"] for o in out),
                      "exhausted": any(o["exhausted"] for o in out), "sign_per_s": sign_per_s}),
          flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "client":
        client(json.loads(sys.argv[2]))
    else:
        raise SystemExit(__doc__)
