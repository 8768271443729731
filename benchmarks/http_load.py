"""HTTP load: `carbon-ledger serve` on a fresh registry, client processes posting signed transfers.

Each client thread is one exchange with its own key and its own lane (two holders, one ticket),
so concurrent commands never contend for the same aggregates — only for the store. Requests are
signed (RFC 9421, Ed25519, exactly as api.client.Client signs them: api.http_signatures
.sign_request) *before* the clock starts, each with its own nonce and signature, which the server
verifies one by one; on a 2-core machine the clients' signing would otherwise take CPU from the
server being measured. The signing rate is reported beside.

The requests are then sent as pre-serialised HTTP/1.1 bytes on one keep-alive socket per thread,
and every response's status line, headers and body are read and its status checked (a refusal's
problem code is counted). httpx (what api.client uses) cost the client processes ~2,700 µs of CPU
per request against ~190 µs this way (quick run, 2 cores), CPU that the server lacked; the CPU
seconds of the server and of the clients are measured and reported.

`run_batch` posts signed `settle_batch` commands (POST /v1/transfers/batch) the same way.

With `refuse=True`, `run` posts transfers of more tonnes than the seller holds: each is refused
422 insufficient_available after its signature verifies, so each is confirmed at the store's
head and its signature stored as spent (the refusal path's full cost); a 422 counts as done.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import world
from benchmarks._common import ROOT, percentile, say, scratch_dir, sqlite_url

MAX_RATE_PER_THREAD = 250  # pre-signed requests per thread per second of load (a hard count bound)
MAX_BATCHES_PER_THREAD = 40  # pre-signed batches per client thread (a hard count bound)
SOCKET_TIMEOUT_S = 60.0


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


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a process group (Linux;
    NaN elsewhere). The server runs in a session of its own, so this is the server: uvicorn and
    its workers, with every thread."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return float("nan")
    ticks = 0
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[2]) == pgid:  # state ppid pgrp ... utime(11) stime(12)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _start_server(url: str, keys: Path, workers: int, log: Path) -> tuple[subprocess.Popen, str, Any]:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    exe = Path(sys.executable).with_name("carbon-ledger")
    server_log = open(log, "wb")  # noqa: SIM115
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen([str(exe), "serve", "--db", url, "--keys", str(keys), "--host",
                               "127.0.0.1", "--port", str(port), "--workers", str(workers)],
                              cwd=ROOT, env=env, stdout=server_log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    return server, base, server_log


def _serve_and_drive(url: str, keys: Path, workers: int, log: Path, seconds: float, label: str,
                     specs: Callable[[str], list[dict[str, Any]]],
                     ) -> tuple[list[dict[str, Any]], float]:
    """Start `carbon-ledger serve`, run the client processes `specs(base_url)` describes against
    it (see _drive), and stop it."""
    server, base, server_log = _start_server(url, keys, workers, log)
    try:
        _wait_healthy(base, server)
        say(f"http: server up at {base}; {label}")
        return _drive(server, specs(base), seconds)
    finally:
        _stop(server)
        server_log.close()


def _drive(server: subprocess.Popen, specs: list[dict[str, Any]], seconds: float
           ) -> tuple[list[dict[str, Any]], float]:
    """Start one client process per spec, wait until every one has signed its requests, start
    them together, and return their reports and the server's CPU seconds during the load."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    clients: list[subprocess.Popen] = []
    try:
        for spec in specs:
            clients.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.http_load", "client", json.dumps(spec)],
                cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                start_new_session=True))
        for c in clients:
            assert c.stdout is not None
            line = _readline(c, timeout_s=300)
            if line.strip() != "READY":
                raise RuntimeError(f"a client did not get ready: {line!r}")
        start = time.time() + 0.3
        cpu0 = group_cpu_s(server.pid)
        for c in clients:
            assert c.stdin is not None
            c.stdin.write(f"GO {start} {start + seconds}\n")
            c.stdin.flush()
        results = []
        for c in clients:
            out, _ = c.communicate(timeout=seconds + 300)
            results.append(json.loads(out.strip().splitlines()[-1]))
        server_cpu = group_cpu_s(server.pid) - cpu0
    finally:
        for c in clients:
            if c.poll() is None:
                os.killpg(c.pid, signal.SIGKILL)
                c.wait()
    return results, server_cpu


def _summary(results: list[dict[str, Any]], server_cpu_s: float) -> dict[str, Any]:
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
    requests = max(ok + reads + sum(errors.values()), 1)
    client_cpu_s = sum(r["cpu_s"] for r in results)
    return {"rate": ok / elapsed, "ok": ok, "reads": reads, "requests_rate": (ok + reads) / elapsed,
            "errors": errors, "seconds": elapsed,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "max_ms": latencies[-1] if latencies else float("nan"),
            "sign_per_s": sum(r["sign_per_s"] for r in results) / len(results),
            "exhausted": any(r["exhausted"] for r in results),
            "server_cpu_s": server_cpu_s, "client_cpu_s": client_cpu_s,
            "server_cpu_us_per_request": server_cpu_s / requests * 1e6,
            "client_cpu_us_per_request": client_cpu_s / requests * 1e6,
            "server_cores_busy": server_cpu_s / elapsed, "client_cores_busy": client_cpu_s / elapsed}


def run(*, seconds: float, procs: int, threads: int, workers: int, url: str | None = None,
        reads_per_write: int = 0, refuse: bool = False) -> dict[str, Any]:
    """Signed transfers (and, with `reads_per_write`, public ticket reads after each) posted by
    client processes at `carbon-ledger serve --workers N` on `url` (a fresh SQLite file if None);
    with `refuse`, transfers that are refused (see the module's docstring)."""
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

    per_thread = int(MAX_RATE_PER_THREAD * seconds)
    results, server_cpu = _serve_and_drive(
        url, keys, workers, d / "server.log", seconds,
        f"{workers} workers; starting {procs} client processes",
        lambda base: [{"base": base, "keys": str(keys), "per_thread": per_thread, "proc": p,
                       "reads_per_write": reads_per_write, "mode": "single", "refuse": refuse,
                       "lanes": [[ln.exchange, ln.a, ln.b, ln.ticket_no]
                                 for ln in lanes[p * threads:(p + 1) * threads]]}
                      for p in range(procs)])
    return {**_summary(results, server_cpu), "direct_rate": direct_rate}


def run_batch(*, seconds: float, threads: int, batch_size: int, workers: int = 1,
              lanes_per_exchange: int = 8) -> dict[str, Any]:
    """Signed batches of `batch_size` transfers (POST /v1/transfers/batch, one settle_batch
    command each) posted one after another by `threads` client threads in one process, each its
    own exchange with its own lanes, at `carbon-ledger serve` on a fresh SQLite file."""
    from ledger.application import Registry
    from ledger.keys import Keyring

    d = scratch_dir("http-batch")
    keys, db = d / "keys", d / "http.db"
    url = sqlite_url(db)
    # One exchange per client thread, and one more for the in-process comparison.
    lanes = world.make_lanes(threads + 1, lanes_per_exchange)
    app = Registry(url, keyring=Keyring(keys), auto_checkpoint=True)
    world.setup(app, lanes)
    mine = lanes[threads * lanes_per_exchange:]
    stream = world.transfers(mine, "D")
    ex = mine[0].exchange
    # Whole back-and-forth pairs per lane, so the comparison's lanes could be used again.
    size = max(2 * len(mine), batch_size - batch_size % (2 * len(mine)))
    n, t, b = 0, time.perf_counter(), 0
    while n < 3 or (n < 10 and time.perf_counter() - t < 2.0):
        b += 1
        items = [next(stream)[1] for _ in range(size)]
        app.submit("settle_batch", ex, f"batch/{ex}/D{b}", {"batch_id": f"D{b}", "transfers": items})
        n += 1
    direct_rate = n * size / (time.perf_counter() - t)
    app.close()

    results, server_cpu = _serve_and_drive(
        url, keys, workers, d / "server.log", seconds,
        f"{threads} client threads posting batches of {batch_size:,}",
        lambda base: [{"base": base, "keys": str(keys), "proc": 0, "mode": "batch",
                       "batch_size": batch_size,
                       "per_thread": MAX_BATCHES_PER_THREAD,
                       "lanes": [[ln.exchange, ln.a, ln.b, ln.ticket_no]
                                 for ln in lanes[:threads * lanes_per_exchange]]}])
    summary = _summary(results, server_cpu)
    summary["batches"] = summary["ok"]
    summary["transfers_rate"] = summary["rate"] * batch_size
    summary["direct_transfers_rate"] = direct_rate
    summary["direct_batch_size"] = size
    summary["body_bytes"] = results[0].get("body_bytes", 0)
    return summary


def _readline(proc: subprocess.Popen, timeout_s: float) -> str:
    box: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return box[0] if box else ""


# The client process ---------------------------------------------------------------------------

class ProtocolError(Exception):
    """The server's answer was not the HTTP/1.1 response it should be."""


class RawHTTP:
    """One keep-alive HTTP/1.1 connection that sends requests already serialised to bytes and
    reads each whole response (status line, headers, a Content-Length or chunked body)."""

    def __init__(self, host: str, port: int, timeout_s: float = SOCKET_TIMEOUT_S) -> None:
        self.address = (host, port)
        self.timeout_s = timeout_s
        self.sock: socket.socket | None = None
        self.buffer = b""

    def connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=self.timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buffer = sock, b""
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, raw: bytes) -> tuple[int, bytes]:
        """(status, body) of one request; the connection is dropped on any failure."""
        try:
            sock = self.sock or self.connect()
            sock.sendall(raw)
            return self._response(sock)
        except BaseException:
            self.close()
            raise

    def _fill(self, sock: socket.socket) -> None:
        chunk = sock.recv(262144)
        if not chunk:
            raise ProtocolError("the server closed the connection")
        self.buffer += chunk

    def _response(self, sock: socket.socket) -> tuple[int, bytes]:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._fill(sock)
        head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4:]
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
        status = int(parts[1])
        length, chunked, close = None, False, parts[0] == "HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif name == "connection":
                close = value.strip().lower() == "close"
        if chunked:
            body = self._chunked(sock)
        elif length is not None:
            while len(self.buffer) < length:
                self._fill(sock)
            body, self.buffer = self.buffer[:length], self.buffer[length:]
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            raise ProtocolError("a response with neither Content-Length nor chunked encoding")
        if close:
            self.close()
        return status, body

    def _chunked(self, sock: socket.socket) -> bytes:
        out = []
        while True:
            while (end := self.buffer.find(b"\r\n")) < 0:
                self._fill(sock)
            size = int(self.buffer[:end].split(b";")[0], 16)
            self.buffer = self.buffer[end + 2:]
            while len(self.buffer) < size + 2:
                self._fill(sock)
            out.append(self.buffer[:size])
            self.buffer = self.buffer[size + 2:]
            if size == 0:
                while (end := self.buffer.find(b"\r\n")) != 0:  # trailers, then the empty line
                    if end < 0:
                        self._fill(sock)
                    else:
                        self.buffer = self.buffer[end + 2:]
                self.buffer = self.buffer[2:]
                return b"".join(out)


def serialise(method: str, path: str, host: str, headers: dict[str, str], body: bytes | None) -> bytes:
    """One HTTP/1.1 request as bytes on the wire."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def _problem_code(status: int, body: bytes) -> str:
    try:
        return str(json.loads(body).get("code", status))
    except (ValueError, AttributeError):
        return str(status)


def client(spec: dict[str, Any]) -> None:
    from urllib.parse import urlsplit

    from api.http_signatures import sign_request
    from api.routes import path_for
    from ledger.keys import read_private
    from ledger.signing import canonical_json

    base = urlsplit(spec["base"])
    host = base.netloc
    batch = spec.get("mode") == "batch"
    prepared: list[list[bytes]] = []  # per thread, its requests serialised
    signed, t = 0, time.perf_counter()
    body_bytes = 0

    def prepare(key: Any, name: str, actor: str, command_id: str, args: dict[str, Any]) -> bytes:
        nonlocal body_bytes
        body = canonical_json({"command": name, "actor": actor, "command_id": command_id,
                               "args": args})
        body_bytes = len(body)
        method, path = path_for(name, args)
        headers = sign_request(key, method=method, path=path, body=body, created=int(time.time()))
        headers["Content-Type"] = "application/json"
        return serialise(method, path, host, headers, body)

    if batch:
        # One client thread per exchange; its lanes are the spec's lanes of that exchange.
        by_exchange: dict[str, list[world.Lane]] = {}
        for ex, a, b, no in spec["lanes"]:
            by_exchange.setdefault(ex, []).append(world.Lane(ex, a, b, no))
        for ex, lanes in by_exchange.items():
            key = read_private(Path(spec["keys"]) / f"{ex}.key")
            stream = world.transfers(lanes, "H")
            requests = []
            for i in range(spec["per_thread"]):
                items = [next(stream)[1] for _ in range(spec["batch_size"])]
                requests.append(prepare(key, "settle_batch", ex, f"batch/{ex}/H{i}",
                                        {"batch_id": f"H{i}", "transfers": items}))
                signed += 1
            prepared.append(requests)
    else:
        for ex, a, b, no in spec["lanes"]:
            key = read_private(Path(spec["keys"]) / f"{ex}.key")
            lane = world.Lane(ex, a, b, no)
            requests = []
            for _ in range(spec["per_thread"]):
                args = lane.next_transfer(f"H{spec['proc']}")
                if spec.get("refuse"):  # more than the seller holds: refused, signature spent
                    args["quantity_t"] = world.TICKET_T + 1
                requests.append(prepare(key, "transfer", ex, f"trade/{ex}/{args['trade_id']}", args))
                signed += 1
            prepared.append(requests)
    sign_per_s = signed / (time.perf_counter() - t)
    print("READY", flush=True)
    go = sys.stdin.readline().split()
    start, deadline = float(go[1]), float(go[2])
    out: list[dict[str, Any]] = [{} for _ in prepared]
    refuse = bool(spec.get("refuse"))

    def done(status: int) -> bool:
        return status == 422 if refuse else 200 <= status < 300

    def worker(i: int) -> None:
        lat: list[float] = []
        errors: dict[str, int] = {}
        ok = 0
        reads = 0
        reads_per_write = spec.get("reads_per_write", 0)
        if reads_per_write:  # single transfers: thread i has lane i
            read_raw = serialise("GET", f"/v1/tickets/{spec['lanes'][i][3]}", host, {}, None)
        conn = RawHTTP(base.hostname or "127.0.0.1", base.port or 80)
        conn.connect()
        exhausted = True
        time.sleep(max(0.0, start - time.time()))
        began = time.time()
        for raw in prepared[i]:
            if time.time() >= deadline:
                exhausted = False
                break
            t0 = time.perf_counter()
            try:
                status, content = conn.request(raw)
            except Exception as e:  # noqa: BLE001
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                continue
            ms = (time.perf_counter() - t0) * 1000
            if done(status):
                ok += 1
                lat.append(ms)
                for _ in range(reads_per_write):
                    try:
                        read_status, read_body = conn.request(read_raw)
                        if read_status == 200:
                            reads += 1
                        else:
                            code = _problem_code(read_status, read_body)
                            errors[code] = errors.get(code, 0) + 1
                    except Exception as e:  # noqa: BLE001
                        errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            else:
                code = _problem_code(status, content)
                errors[code] = errors.get(code, 0) + 1
        out[i] = {"lat": lat, "errors": errors, "ok": ok, "reads": reads, "began": began,
                  "ended": time.time(), "exhausted": exhausted}
        conn.close()

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(len(prepared))]
    cpu0 = time.process_time()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    cpu_s = time.process_time() - cpu0
    errors: dict[str, int] = {}
    for o in out:
        for k, v in o["errors"].items():
            errors[k] = errors.get(k, 0) + v
    print(json.dumps({"latencies_ms": [x for o in out for x in o["lat"]],
                      "ok": sum(o["ok"] for o in out), "reads": sum(o["reads"] for o in out),
                      "errors": errors,
                      "started": min(o["began"] for o in out), "ended": max(o["ended"] for o in out),
                      "exhausted": any(o["exhausted"] for o in out), "sign_per_s": sign_per_s,
                      "cpu_s": cpu_s, "body_bytes": body_bytes}),
          flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "client":
        client(json.loads(sys.argv[2]))
    else:
        raise SystemExit(__doc__)
