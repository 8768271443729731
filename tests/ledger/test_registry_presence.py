"""A registry that is not there is never made by a read: `require_registry` and
`Registry(url, create=False)` refuse a missing or empty store with `no_registry`, and create
nothing, on SQLite and on PostgreSQL."""

from __future__ import annotations

import secrets
from pathlib import Path

import psycopg
import pytest

from domain.errors import DomainError
from ledger.application import Registry
from ledger.demo import DEMO_DIR_ENV
from ledger.keys import Keyring
from ledger.store import require_registry


def initialised(url: str) -> None:
    app = Registry(url, keyring=Keyring())
    try:
        app.submit("initialise", "registry", "init-registry",
                   {"origin": "test/presence", "operator_id": "registry", "name": "operator"})
    finally:
        app.close()


def empty(url: str) -> None:
    """A store with the tables and no record (as a crash between creating and initialising
    would leave it)."""
    Registry(url).close()


def refusal(url: str) -> DomainError:
    with pytest.raises(DomainError) as info:
        require_registry(url)
    assert info.value.code == "no_registry"
    return info.value


@pytest.fixture(autouse=True)
def _no_demo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DEMO_DIR_ENV, str(tmp_path / "no-demo"))
    monkeypatch.chdir(tmp_path)


# SQLite -------------------------------------------------------------------------------------------

def test_a_missing_sqlite_file_is_refused_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "typo" / "registry.db"
    url = f"sqlite:///{path}"
    error = refusal(url)
    assert url in error.message and "does not exist" in error.message
    assert f"carbon-ledger init --db {url}" in error.message
    assert error.details["db"] == url
    with pytest.raises(DomainError):
        Registry(url, create=False)
    assert not path.exists() and not path.parent.exists()


def test_an_empty_sqlite_registry_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    empty(url)
    error = refusal(url)
    assert "is empty" in error.message and "never initialised" in error.message
    assert f"carbon-ledger init --db {url}" in error.message
    (tmp_path / "zero.db").touch()  # a file of no bytes: what sqlite3 leaves on a bare connect
    assert "is empty" in refusal(f"sqlite:///{tmp_path / 'zero.db'}").message


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database, but long enough to have an SQLite header's room" * 10)
    before = path.read_bytes()
    error = refusal(f"sqlite:///{path}")
    assert "not an SQLite database" in error.message
    assert path.read_bytes() == before


def test_an_initialised_sqlite_registry_passes_and_opens(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    initialised(url)
    require_registry(url)
    app = Registry(url, create=False)
    try:
        assert app.log_position() > 0
    finally:
        app.close()


def test_the_refusal_names_the_demo_registry_when_there_is_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo_dir = tmp_path / "demo"
    demo_dir.mkdir()
    demo_url = f"sqlite:///{demo_dir / 'registry.db'}"
    initialised(demo_url)
    monkeypatch.setenv(DEMO_DIR_ENV, str(demo_dir))
    error = refusal(f"sqlite:///{tmp_path / 'var' / 'registry.db'}")
    assert f"the demo's registry is {demo_url}" in error.message
    assert f"export CARBON_LEDGER_DB={demo_url}" in error.message
    # Not when the demo's is the one asked for (and empty), nor when there is none.
    empty_demo = tmp_path / "empty-demo"
    empty_demo.mkdir()
    empty(f"sqlite:///{empty_demo / 'registry.db'}")
    monkeypatch.setenv(DEMO_DIR_ENV, str(empty_demo))
    assert "demo's registry is" not in refusal(f"sqlite:///{tmp_path / 'x.db'}").message


def test_the_creating_default_is_kept_for_the_library(tmp_path: Path) -> None:
    """Registry(url) as a library (tests, benchmarks, restore) still makes a new store."""
    path = tmp_path / "new" / "registry.db"
    Registry(f"sqlite:///{path}").close()
    assert path.exists()


# PostgreSQL ---------------------------------------------------------------------------------------

def test_a_missing_postgres_database_is_refused(pg_database: str) -> None:
    name = f"carbon_ledger_missing_{secrets.token_hex(4)}"
    url = f"{pg_database.rsplit('/', 1)[0]}/{name}"
    error = refusal(url)
    assert f"database {name} does not exist" in error.message
    assert f"carbon-ledger init --db {url}" in error.message
    with psycopg.connect(pg_database, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    assert found is None


def test_a_missing_postgres_schema_is_refused_and_not_created(pg_url: str) -> None:
    error = refusal(pg_url)
    assert "is empty" in error.message
    with pytest.raises(DomainError):
        Registry(pg_url, create=False)
    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    assert found is None


def test_empty_postgres_tables_are_refused_then_an_initialised_one_passes(pg_url: str) -> None:
    empty(pg_url)
    assert "is empty" in refusal(pg_url).message
    initialised(pg_url)
    require_registry(pg_url)


def test_an_unreachable_postgres_server_is_store_unavailable_not_no_registry() -> None:
    with pytest.raises(DomainError) as info:
        require_registry("postgresql://postgres@127.0.0.1:1/registry?connect_timeout=2")
    assert info.value.code == "store_unavailable"


def test_a_password_in_the_url_is_never_shown(pg_database: str) -> None:
    base = pg_database.rsplit("/", 1)[0].replace("postgres@", "postgres:s3cret@")
    error = refusal(f"{base}/carbon_ledger_missing_{secrets.token_hex(4)}")
    assert "s3cret" not in error.message and "s3cret" not in str(error.details)
