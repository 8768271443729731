"""Shared fixtures: registries on both stores, and one loaded with the demo story.

`registry` runs each test twice: on an SQLite file and on PostgreSQL. A test session creates its
own PostgreSQL database (each test gets its own schema in it) and drops it at the end. When no
PostgreSQL server answers, the PostgreSQL half is skipped with the reason — except under
CI=true, where an unreachable server fails the run.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ledger import demo
from ledger.application import Registry
from ledger.checkpoints import witness
from ledger.keys import Keyring

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("CARBON_LEDGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def load_demo(app: Registry) -> None:
    demo.load(app)


def _pg_unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required under CI=true but {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database of this test session's own, dropped afterwards; yields its URL."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        _pg_unavailable("psycopg is not installed")
    name = f"carbon_ledger_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as e:
        _pg_unavailable(f"no server answers at {PG_ADMIN_URL} ({str(e).strip().splitlines()[0]})")
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """An SQLite file (for tests that open the file itself)."""
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """A fresh schema in the session's PostgreSQL database."""
    return f"{pg_database}?schema=t_{secrets.token_hex(6)}"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def registry(store_url: str) -> Iterator[Registry]:
    app = Registry(store_url, keyring=Keyring())
    yield app
    app.close()


@pytest.fixture
def demo_registry(registry: Registry) -> Registry:
    load_demo(registry)
    return registry


WITNESS = "fujian-eco"


def open_demo_on_disk(root: Path) -> Registry:
    """The demo story in root/registry.db with every participant's key in root/keys (the
    operator's too, so a server there signs checkpoints), and a checkpoint cosigned by
    fujian-eco: a registry as `init`, `demo`, `checkpoint` and `witness` leave it. Open; the
    caller closes it."""
    root.mkdir(parents=True, exist_ok=True)
    app = Registry(f"sqlite:///{root / 'registry.db'}", keyring=Keyring(root / "keys"),
                   auto_checkpoint=False)
    demo.load(app)
    checkpointer = app.operator_checkpointer()
    assert checkpointer is not None and app.keyring is not None
    checkpointer.make()
    genesis = app.projection().genesis
    assert genesis is not None
    witness(app, WITNESS, app.keyring.get(WITNESS), root / "witness.json", genesis.operator_key)
    return app


@pytest.fixture(scope="session")
def demo_on_disk() -> Callable[[Path], Registry]:
    """demo_on_disk(root) -> Registry: see open_demo_on_disk."""
    return open_demo_on_disk


@dataclass
class ServedDemo:
    """`ops/demo --port P`, really serving the demo registry it built in `folder`."""

    process: subprocess.Popen[str]
    base_url: str
    folder: Path  # <checkout-like root>/var/demo


@pytest.fixture
def served_demo(tmp_path: Path) -> Iterator[ServedDemo]:
    """ops/demo serving on a free loopback port, its registry in tmp_path/var/demo (not the
    checkout's); stopped with SIGINT, as Ctrl-C stops it, after the test."""
    folder = tmp_path / "var" / "demo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if k not in ("CARBON_LEDGER_DB", "CARBON_LEDGER_KEYS")}
    env.update(CARBON_LEDGER_DEMO_DIR=str(folder), PYTHONUNBUFFERED="1")
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        process = subprocess.Popen([str(REPO / "ops" / "demo"), "--port", str(port)], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                   env=env, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield ServedDemo(process, base, folder)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
