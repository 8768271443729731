"""`ops/demo` as a person runs it: a served demo is never deleted under its server (issue 17,
item 4), `--port N` serves elsewhere, and the lines it ends with work when pasted (item 3).

Each run builds its registry in a temporary folder (CARBON_LEDGER_DEMO_DIR), never in the
checkout's var/demo/."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.cli import main
from ledger.store import served_by, serving

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "ops" / "demo"
HOST = "127.0.0.1"
TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def demo_env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CARBON_LEDGER_DB", "CARBON_LEDGER_KEYS")}
    env.update(CARBON_LEDGER_DEMO_DIR=str(folder), PYTHONUNBUFFERED="1")
    return env


def run_demo(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DEMO), *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                          env=demo_env(folder), cwd=folder.parent, check=False)


def test_a_second_demo_refuses_while_the_first_is_served(served_demo: Any) -> None:
    process, base, folder = served_demo.process, served_demo.base_url, served_demo.folder
    position = httpx.get(base + "/healthz", timeout=10).json()["position"]
    registry = folder / "registry.db"
    before = registry.stat()
    second = run_demo(folder, "--no-serve")
    assert second.returncode == 1, second.stdout + second.stderr
    assert "error registry_served:" in second.stderr
    assert f"process {process.pid}" in second.stderr and f"kill {process.pid}" in second.stderr
    assert "not rebuilding" in second.stderr and "Traceback" not in second.stderr
    # The served registry is the same file, whole, and still answers.
    after = registry.stat()
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    assert httpx.get(base + "/healthz", timeout=10).json()["position"] == position
    tickets = httpx.get(base + "/v1/tickets/SM-0000002", timeout=10).json()
    assert tickets["issued_t"] == 9_000
    status = subprocess.run([str(REPO / ".venv" / "bin" / "carbon-ledger"), "status", "--json",
                             "--db", f"sqlite:///{registry}"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["served_by"] == [process.pid]
    # Once the server stops, the next demo rebuilds.
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) in (0, 130, -signal.SIGINT)
    assert served_by(f"sqlite:///{registry}") == []
    third = run_demo(folder, "--no-serve")
    assert third.returncode == 0, third.stderr


def test_the_lines_the_demo_ends_with_work_when_pasted(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    done = run_demo(folder, "--no-serve")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    start = lines.index("To read it from the command line, in another terminal, paste:")
    pasted = [line.strip() for line in lines[start + 1:start + 4]]
    assert pasted[0].startswith("export PATH=") and pasted[1].startswith("export CARBON_LEDGER_DB=")
    assert pasted[2] == "carbon-ledger balances jinsen-carbon"
    # A new shell with neither the venv on PATH nor the database set, in another folder.
    env = {k: v for k, v in os.environ.items() if k not in ("CARBON_LEDGER_DB", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/bin:/bin"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shell = subprocess.run(["bash", "-c", "\n".join(pasted)], capture_output=True, text=True,
                           timeout=60, env=env, cwd=elsewhere, check=False)
    assert shell.returncode == 0, shell.stderr
    assert "jinsen-carbon (金森碳汇)" in shell.stdout and "17,794" in shell.stdout
    assert not (elsewhere / "var").exists()


def test_port_must_be_a_number(tmp_path: Path) -> None:
    done = run_demo(tmp_path / "demo", "--port", "http")
    assert done.returncode == 2 and "--port takes a port number" in done.stderr
    assert not (tmp_path / "demo").exists()


def test_status_names_the_serving_processes(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    assert main(["init", "--db", url]) == 0
    capsys.readouterr()
    assert main(["status", "--db", url, "--idle"]) == 0
    assert "not served" in capsys.readouterr().out
    with serving(url), serving(url):  # two servers of one file (several processes are fine)
        assert served_by(url) == [os.getpid()]
        assert main(["status", "--db", url, "--idle"]) == 1
        err = " ".join(capsys.readouterr().err.split())
        assert f"error registry_served: the registry at {url} is being served by process " \
               f"{os.getpid()}" in err
    assert served_by(url) == []
    assert main(["status", "--db", url]) == 0
    assert "records" in capsys.readouterr().out
    assert main(["status", "--db", f"sqlite:///{tmp_path / 'none.db'}"]) == 0
    assert "does not exist" in capsys.readouterr().out
    assert not (tmp_path / "none.db").exists()


def test_a_served_file_is_unlocked_when_its_server_is_killed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    code = (f"from ledger.store import serving\nimport time\nwith serving({url!r}):\n"
            "    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([str(REPO / ".venv" / "bin" / "python"), "-c", code],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert served_by(url) == [holder.pid]
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert served_by(url) == []
