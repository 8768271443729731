"""Where the events live: database URLs, and a recorder that validates what a command read.

`eventsourcing` version-checks only the aggregates a command writes. A command also *reads*
aggregates whose state decides it (is the seller frozen? has the holder mandated this exchange?
what are the offset limits?). To keep the log serialisable in its own order, the application
passes the versions it read as `read_set`, and the recorder re-checks them inside the write
transaction, after its inserts have taken the database's write lock: if any of them moved on,
the transaction rolls back with StaleRead and the command is decided again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from uuid import UUID, uuid4

from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor

DEFAULT_DB = "sqlite:///var/registry.db"
ENV_DB = "CARBON_LEDGER_DB"

ReadSet = Sequence[tuple[UUID, int]]


class StaleRead(IntegrityError):
    """An aggregate that a command read changed before the command's events were written."""


def db_url(url: str | None = None) -> str:
    return url or os.environ.get(ENV_DB) or DEFAULT_DB


def sqlite_path(url: str) -> str | None:
    """The file path of a sqlite:/// URL (':memory:' for an in-memory store), or None."""
    parsed = urlparse(url)
    if parsed.scheme != "sqlite":
        return None
    path = unquote(parsed.path)
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
    if path in ("", ":memory:"):
        return ":memory:"
    return path


def environment(url: str) -> dict[str, str]:
    """The `eventsourcing` settings for a database URL."""
    path = sqlite_path(url)
    if path is not None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        else:  # one private in-memory database per application (tests, benchmarks)
            path = f"file:registry-{uuid4().hex}?mode=memory&cache=shared"
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": path,
            "SQLITE_LOCK_TIMEOUT": "30",
            "APPLICATION_RECORDER_TOPIC": "ledger.store:LedgerSQLiteRecorder",
        }
    scheme = urlparse(url).scheme
    if scheme in ("postgresql", "postgres"):
        raise ValueError("PostgreSQL support comes with the production-store issue; use sqlite:///PATH")
    raise ValueError(f"unsupported database URL {url!r}; use sqlite:///PATH")


class LedgerSQLiteRecorder(SQLiteApplicationRecorder):
    """SQLite recorder with read-set validation (see the module docstring)."""

    def _insert_events(self, c: SQLiteCursor, stored_events: Sequence[StoredEvent],
                       **kwargs: Any) -> Sequence[int] | None:
        ids = super()._insert_events(c, stored_events, **kwargs)
        read_set: ReadSet = kwargs.get("read_set") or ()
        for aggregate_id, version in read_set:
            c.execute(
                f"SELECT MAX(originator_version) FROM {self.events_table_name} WHERE originator_id=?",
                (aggregate_id.hex,),
            )
            row = c.fetchone()
            current = row[0] if row and row[0] is not None else 0
            if current != version:
                raise StaleRead(f"aggregate {aggregate_id} moved from version {version} to {current}")
        return ids
