"""End-to-end fixtures: a REAL uvicorn server process on 127.0.0.1, and the demo posted to it.

`serve(root, operator_key)` starts `carbon-ledger serve --db sqlite:///<root>/registry.db
--keys <root>/keys --port P` as a subprocess on a free loopback port, writing the operator's
private key to <root>/keys/registry.key first (so that the server signs checkpoints), waits for
GET /healthz and returns a LiveServer; every server started is killed at teardown.

`demo_world` (one per test module) initialises a fresh registry over HTTP (the "initialise"
command on POST /v1/commands, signed by the new operator key) and posts every step of the demo
story through api.client.Client, each participant signing with its own key.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from e2e_processes import (  # type: ignore[import-not-found]
    CARBON_LEDGER,
    HOST,
    _clean_env,
    _free_port,
)

from api.client import ApiError, Client
from ledger import demo
from ledger.keys import Keyring, generate, public_text, write_private

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
CLI_TIMEOUT_S = 60.0


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CARBON_LEDGER), *args], capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, cwd=cwd, env=_clean_env(), check=False)


@pytest.fixture(scope="session")
def carbon_ledger() -> Callable[..., subprocess.CompletedProcess[str]]:
    """carbon_ledger(*args, cwd=Path): run the CLI (bounded in time), output captured."""
    return run_cli


@dataclass
class LiveServer:
    """A running `carbon-ledger serve` process and where its database and keys live."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.root / 'registry.db'}"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the carbon-ledger CLI against this server's database (bounded in time)."""
        return run_cli(*args, "--db", self.db_url, "--keys", str(self.keys), cwd=self.root)

    def log_text(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def position(self) -> int:
        return int(httpx.get(self.base_url + "/healthz", timeout=10).json()["position"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)


def start_server(root: Path, operator_key: Ed25519PrivateKey | None = None,
                 *extra: str) -> LiveServer:
    """`carbon-ledger serve` on the registry in `root`; `extra` arguments go after the defaults
    (so `--log-level info` overrides this fixture's quiet one)."""
    root.mkdir(parents=True, exist_ok=True)
    keys = root / "keys"
    keys.mkdir(exist_ok=True, mode=0o700)
    if operator_key is not None:
        write_private(keys / "registry.key", operator_key)
    port = _free_port()
    log = root / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(CARBON_LEDGER), "serve", "--db", f"sqlite:///{root / 'registry.db'}",
             "--keys", str(keys), "--host", HOST, "--port", str(port), "--log-level", "warning",
             "--allow-empty",  # initialised over HTTP by the tests
             *extra],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root,
            env=_clean_env())
    server = LiveServer(root, port, process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{server.log_text()}")
        try:
            if httpx.get(server.base_url + "/healthz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"the server did not answer /healthz within {START_TIMEOUT_S} s:\n"
                               f"{server.log_text()}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def serve() -> Iterator[Callable[..., LiveServer]]:
    """start(root, operator_key=None, *extra_args) -> LiveServer; every server is killed at
    teardown."""
    started: list[LiveServer] = []

    def start(root: Path, operator_key: Ed25519PrivateKey | None = None,
              *extra: str) -> LiveServer:
        server = start_server(root, operator_key, *extra)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def live_server(serve: Callable[..., LiveServer], tmp_path: Path) -> Iterator[str]:
    """The base URL of a server over a new, empty database (no operator key), killed after."""
    server = serve(tmp_path / "server")
    yield server.base_url
    server.stop()


@pytest.fixture(scope="session")
def demo_registry_files(demo_on_disk: Callable[[Path], Any]) -> Callable[[Path], None]:
    """demo_registry_files(root): the demo registry written there, for a server to serve (see
    tests/conftest.py's open_demo_on_disk)."""
    return lambda root: demo_on_disk(root).close()


@dataclass
class DemoWorld:
    """A live server with the demo story posted to it over HTTP, and every participant's key."""

    server: LiveServer
    operator_key: Ed25519PrivateKey
    keyring: Keyring  # the participants' private keys (client side; not the server's folder)
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    refusals: dict[str, ApiError] = field(default_factory=dict)
    clients: dict[str, Client] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def operator_public(self) -> str:
        return public_text(self.operator_key)

    def key(self, participant_id: str) -> Ed25519PrivateKey:
        if participant_id == demo.OPERATOR[0]:
            return self.operator_key
        return self.keyring.get(participant_id)

    def client(self, participant_id: str | None = None) -> Client:
        """A signed client for the participant (an anonymous one when None), kept for reuse."""
        name = participant_id or ""
        if name not in self.clients:
            key = self.key(participant_id) if participant_id else None
            self.clients[name] = Client(self.base_url, participant_id, key, timeout_s=60)
        return self.clients[name]

    def register(self, participant_id: str, role: str, name: str | None = None) -> Ed25519PrivateKey:
        """Register one more participant (by the operator) with a fresh key."""
        key = self.keyring.create(participant_id)
        self.client(demo.OPERATOR[0]).command("register_participant", {
            "participant_id": participant_id, "name": name or participant_id, "role": role,
            "public_key": public_text(key)}, f"e2e-register-{participant_id}")
        return key

    def close(self) -> None:
        for c in self.clients.values():
            c.close()
        self.clients.clear()


def post_demo(world: DemoWorld) -> None:
    """Every step of the demo story over HTTP; refusals are kept (the story expects one)."""
    for name, actor, command_id, args in demo.story():
        args = dict(args)
        consents = None
        path = None
        if name == "initialise":
            args["public_key"] = world.operator_public
            path = ("POST", "/v1/commands")
        elif name == "register_participant":
            args["public_key"] = public_text(world.keyring.create(args["participant_id"]))
        if command_id in demo.CONSENTS:
            consents = [world.keyring.get(party) for party in demo.CONSENTS[command_id]]
        try:
            world.outcomes[command_id] = world.client(actor).command(
                name, args, command_id, consents=consents, path=path)
        except ApiError as e:
            world.refusals[command_id] = e


@pytest.fixture(scope="module")
def demo_world(serve: Callable[..., LiveServer],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoWorld]:
    root = tmp_path_factory.mktemp("e2e")
    operator_key = generate()
    server = serve(root / "server", operator_key)
    world = DemoWorld(server, operator_key, Keyring(root / "client-keys"))
    try:
        post_demo(world)
        yield world
    finally:
        world.close()
        server.stop()
