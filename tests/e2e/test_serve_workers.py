"""`serve --workers N`: the serving process hands connections to its workers in turn, restarts
a worker that dies, and stops them all on SIGTERM (api/serving.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from e2e_processes import CARBON_LEDGER, HOST, _clean_env, _free_port  # type: ignore[import-not-found]

START_TIMEOUT_S = 60


def _children(pid: int) -> set[int]:
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rindex(b")") + 2:].split()
            if int(fields[1]) == pid and fields[0] != b"Z":
                found.add(int(name))
    return found


def _worker_of(client: httpx.Client) -> int:
    return int(client.get("/healthz", timeout=10).json()["worker"])


@pytest.fixture
def server(tmp_path: Path):
    port = _free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(CARBON_LEDGER), "serve", "--db", f"sqlite:///{tmp_path / 'registry.db'}",
             "--keys", str(tmp_path / "keys"), "--host", HOST, "--port", str(port),
             "--workers", "2", "--log-level", "info", "--allow-empty"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path,
            env=_clean_env())
    base = f"http://{HOST}:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while log.read_text(errors="replace").count("Application startup complete") < 2:
        assert process.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.05)
    yield process, base, log
    workers = _children(process.pid)  # before the parent goes: its children are reparented then
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_connections_opened_together_are_spread_over_the_workers(server) -> None:
    process, base, _ = server
    clients = [httpx.Client(base_url=base) for _ in range(4)]
    try:
        workers = [_worker_of(c) for c in clients]  # four keep-alive connections, opened in turn
        assert len(set(workers)) == 2
        assert sorted(workers.count(w) for w in set(workers)) == [2, 2]
        assert set(workers) <= _children(process.pid)
        # each connection stays with its worker
        assert [_worker_of(c) for c in clients] == workers
    finally:
        for c in clients:
            c.close()


def test_a_worker_that_dies_is_replaced(server) -> None:
    process, base, log = server
    with httpx.Client(base_url=base) as a, httpx.Client(base_url=base) as b:
        first = {_worker_of(a), _worker_of(b)}
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with httpx.Client(base_url=base) as a, httpx.Client(base_url=base) as b:
            now = {_worker_of(a), _worker_of(b)}
        if len(now) == 2 and victim not in now:
            break
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.2)
    assert "exited" in log.read_text(errors="replace")
    assert process.poll() is None


def test_sigterm_stops_the_server_and_its_workers(server) -> None:
    process, base, _ = server
    with httpx.Client(base_url=base) as c:
        assert c.get("/healthz").status_code == 200
    workers = _children(process.pid)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    deadline = time.monotonic() + 15
    while [pid for pid in workers if _alive(pid)]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with pytest.raises(OSError):
        socket.create_connection((HOST, int(base.rsplit(":", 1)[1])), timeout=2).close()


def test_a_port_in_use_is_refused_with_a_clear_message(server, tmp_path: Path) -> None:
    _, base, _ = server
    port = base.rsplit(":", 1)[1]
    second = subprocess.run(
        [str(CARBON_LEDGER), "serve", "--db", f"sqlite:///{tmp_path / 'other.db'}", "--keys",
         str(tmp_path / "other-keys"), "--host", HOST, "--port", port, "--workers", "2",
         "--allow-empty"],
        capture_output=True, text=True, timeout=60, env=_clean_env(), check=False)
    assert second.returncode == 1
    assert f"cannot listen on {HOST}:{port}" in second.stderr
    assert "Traceback" not in second.stderr


def test_workers_stop_when_the_serving_process_is_killed(server) -> None:
    """A crash of the accepting process (SIGKILL: no handler runs) leaves no worker behind."""
    process, base, _ = server
    with httpx.Client(base_url=base) as c:
        assert c.get("/healthz").status_code == 200
    workers = _children(process.pid)
    assert len(workers) >= 2
    process.kill()
    process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while [pid for pid in workers if _alive(pid)]:
        assert time.monotonic() < deadline, "a worker outlived the serving process"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return state[state.rindex(b")") + 2:][:1] != b"Z"
