"""Only `init`, `restore` and `migrate --to` make a registry: every other command on a missing
or empty one exits 1 with `no_registry`, names the path and how to make one, and creates
nothing (issue 17, item 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from api.cli import main
from api.problems import status_of
from ledger.application import Registry
from ledger.demo import DEMO_DIR_ENV

CARBON_LEDGER = Path(sys.executable).parent / "carbon-ledger"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CARBON_LEDGER_DB", raising=False)
    monkeypatch.setenv(DEMO_DIR_ENV, str(tmp_path / "no-demo"))
    monkeypatch.chdir(tmp_path)


def command_file(tmp_path: Path) -> str:
    path = tmp_path / "command.json"
    path.write_text(json.dumps({"command": "freeze", "actor": "fujian-eco", "command_id": "f-1",
                                "args": {"holder": "jinsen-carbon", "reason": "test"}}))
    return str(path)


# Every command that opens a registry, and its arguments (the file arguments are made per test).
READERS: dict[str, list[str]] = {
    "operator-key": ["operator-key"],
    "demo": ["demo"],
    "balances": ["balances", "jinsen-carbon"],
    "ticket": ["ticket", "SM-0000001"],
    "pledges": ["pledges"],
    "compliance": ["compliance", "tonghai-nickel", "fujian_ets", "2021"],
    "history": ["history", "--ticket", "SM-0000001"],
    "rebuild": ["rebuild"],
    "checkpoint": ["checkpoint"],
    "witness": ["witness", "--as", "fujian-eco"],
    "verify": ["verify"],
    "export": ["export", "{tmp}/audit.export"],
    "proof": ["proof", "pledge", "PL-2021-001"],
    "rotate-key": ["rotate-key", "jinsen-carbon"],
    "submit": ["submit", "{command}"],
    "backup": ["backup", "{tmp}/registry.bak"],
}


def argv_for(name: str, tmp_path: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp_path)).replace("{command}", command_file(tmp_path))
            for a in READERS[name]]


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("name", sorted(READERS))
def test_a_missing_registry_is_refused_and_not_created(
        name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "typo" / "registry.db"
    url = f"sqlite:///{path}"
    code, out, err = run(capsys, [*argv_for(name, tmp_path), "--db", url])
    assert code == 1, (out, err)
    assert "error no_registry:" in err and url in err and "does not exist" in err
    assert f"carbon-ledger init --db {url}" in " ".join(err.split())
    assert not path.parent.exists()
    assert not (tmp_path / "audit.export").exists() and not (tmp_path / "registry.bak").exists()


@pytest.mark.parametrize("name", sorted(READERS))
def test_an_empty_registry_is_refused(name: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    Registry(url).close()  # tables, no genesis
    code, out, err = run(capsys, [*argv_for(name, tmp_path), "--db", url])
    assert code == 1, (out, err)
    assert "error no_registry:" in err and "is empty" in err
    assert Registry(url).log_position() == 0


def test_the_refusal_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'nothing.db'}"
    code, out, _ = run(capsys, ["balances", "jinsen-carbon", "--db", url, "--json"])
    assert code == 1
    error = json.loads(out)["error"]
    assert (error["code"], error["db"]) == ("no_registry", url)
    assert status_of("no_registry") == 503


def test_migrate_refuses_a_missing_source_and_makes_no_target(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "target.db"
    code, _, err = run(capsys, ["migrate", "--from", f"sqlite:///{tmp_path / 'none.db'}",
                                "--to", f"sqlite:///{target}"])
    assert code == 1 and "error no_registry:" in err
    assert not target.exists() and not (tmp_path / "none.db").exists()


def test_init_still_creates_a_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'registry.db'}"
    assert run(capsys, ["init", "--db", url])[0] == 0
    code, out, _ = run(capsys, ["operator-key", "--db", url])
    assert code == 0 and out.startswith("ed25519:")


def test_the_default_path_is_refused_and_names_the_demo_registry(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """What a person meets after ops/demo, copying a README line without CARBON_LEDGER_DB."""
    demo_dir = tmp_path / "demo"
    demo_url = f"sqlite:///{demo_dir / 'registry.db'}"
    assert run(capsys, ["init", "--db", demo_url])[0] == 0
    monkeypatch.setenv(DEMO_DIR_ENV, str(demo_dir))
    code, _, err = run(capsys, ["balances", "jinsen-carbon"])
    err = " ".join(err.split())
    assert code == 1 and "no registry at sqlite:///var/registry.db" in err
    assert f"the demo's registry is {demo_url} (export CARBON_LEDGER_DB={demo_url})" in err
    assert not (tmp_path / "var").exists()


def test_serve_refuses_a_missing_registry_before_listening(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CARBON_LEDGER_DB"}
    done = subprocess.run([str(CARBON_LEDGER), "serve", "--db", f"sqlite:///{tmp_path / 'x.db'}",
                           "--port", "0"], capture_output=True, text=True, timeout=60, env=env,
                          cwd=tmp_path, check=False)
    assert done.returncode == 1, done.stderr
    assert "error no_registry:" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x.db").exists()


def test_the_server_app_refuses_to_start_on_a_missing_registry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server started another way than `carbon-ledger serve` (uvicorn api.server:create_app)
    refuses too: the check is in the ledger, not only in the CLI."""
    from fastapi.testclient import TestClient

    from api.server import ENV_ALLOW_EMPTY, create_app
    from domain.errors import DomainError

    monkeypatch.setenv("CARBON_LEDGER_DB", f"sqlite:///{tmp_path / 'x.db'}")
    monkeypatch.delenv(ENV_ALLOW_EMPTY, raising=False)
    with pytest.raises(DomainError) as info, TestClient(create_app()):
        pass
    assert info.value.code == "no_registry"
    assert not (tmp_path / "x.db").exists()
    monkeypatch.setenv(ENV_ALLOW_EMPTY, "1")  # serve --allow-empty
    with TestClient(create_app()) as client:
        assert client.get("/healthz").status_code == 200
    assert (tmp_path / "x.db").exists()


@pytest.mark.parametrize("name", ["balances", "verify", "export", "demo"])
def test_an_uninitialised_postgres_schema_is_refused_and_not_created(
        name: str, pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import psycopg

    code, out, err = run(capsys, [*argv_for(name, tmp_path), "--db", pg_url,
                                  "--keys", str(tmp_path / "keys")])
    assert code == 1, (out, err)
    assert "error no_registry:" in err and "is empty" in err
    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                            (schema,)).fetchone() is None
