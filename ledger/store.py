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

from ledger import merkle
from ledger.records import GENESIS_CHAIN, Record, next_chain, record_bytes

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
    """SQLite recorder with a global hash chain, read-set validation and signed checkpoints.

    Each row carries `chain`, its position's chain value (see ledger.records). The head of the
    chain is kept in a one-row table that every write transaction updates first: that takes
    SQLite's write lock before anything is read, so chain values are computed from the true
    predecessor even when several processes write to one file.
    """

    def construct_create_table_statements(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.events_table_name} ("
            "originator_id TEXT, originator_version INTEGER, topic TEXT, state BLOB, chain BLOB, "
            "PRIMARY KEY (originator_id, originator_version))",
            "CREATE TABLE IF NOT EXISTS ledger_head ("
            "id INTEGER PRIMARY KEY CHECK (id = 1), size INTEGER NOT NULL, chain BLOB NOT NULL)",
            "CREATE TABLE IF NOT EXISTS checkpoints ("
            "size INTEGER PRIMARY KEY, body BLOB NOT NULL, signature BLOB NOT NULL)",
            "CREATE TABLE IF NOT EXISTS cosignatures ("
            "size INTEGER NOT NULL, witness TEXT NOT NULL, key_id TEXT NOT NULL, "
            "signature BLOB NOT NULL, PRIMARY KEY (size, witness))",
        ]

    def _insert_events(self, c: SQLiteCursor, stored_events: Sequence[StoredEvent],
                       **kwargs: Any) -> Sequence[int] | None:
        c.execute("INSERT OR IGNORE INTO ledger_head (id, size, chain) VALUES (1, 0, ?)",
                  (GENESIS_CHAIN,))
        c.execute("UPDATE ledger_head SET size = size WHERE id = 1")  # take the write lock first
        c.execute("SELECT size, chain FROM ledger_head WHERE id = 1")
        row = c.fetchone()
        size, chain = row[0], bytes(row[1])
        ids = []
        for s in stored_events:
            leaf = merkle.leaf_hash(record_bytes(s.originator_id, s.originator_version, s.topic,
                                                 s.state))
            chain = next_chain(chain, leaf)
            c.execute(
                f"INSERT INTO {self.events_table_name} "
                "(originator_id, originator_version, topic, state, chain) VALUES (?,?,?,?,?)",
                (s.originator_id.hex, s.originator_version, s.topic, s.state, chain),
            )
            ids.append(c.lastrowid)
            size += 1
        if ids and ids[-1] != size:
            raise AssertionError(f"log positions are not contiguous: wrote {ids[-1]}, expected {size}")
        c.execute("UPDATE ledger_head SET size = ?, chain = ? WHERE id = 1", (size, chain))
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

    # Reading the log as records -------------------------------------------------------------

    def select_records(self, start: int, limit: int, stop: int | None = None) -> list[Record]:
        """Records with positions >= start (and <= stop), in log order, with their chain values."""
        sql = (f"SELECT rowid, originator_id, originator_version, topic, state, chain "
               f"FROM {self.events_table_name} WHERE rowid >= ?")
        params: list[Any] = [start]
        if stop is not None:
            sql += " AND rowid <= ?"
            params.append(stop)
        sql += " ORDER BY rowid LIMIT ?"
        params.append(limit)
        with self.datastore.transaction(commit=False) as c:
            c.execute(sql, params)
            return [Record(r[0], UUID(r[1]), r[2], r[3], bytes(r[4]), bytes(r[5] or b""))
                    for r in c.fetchall()]

    def head(self) -> tuple[int, bytes]:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT size, chain FROM ledger_head WHERE id = 1")
            row = c.fetchone()
        return (row[0], bytes(row[1])) if row else (0, GENESIS_CHAIN)

    # Checkpoints ------------------------------------------------------------------------------

    def insert_checkpoint(self, size: int, body: bytes, signature: bytes) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute("INSERT INTO checkpoints (size, body, signature) VALUES (?,?,?)",
                      (size, body, signature))

    def select_checkpoints(self, after: int = -1) -> list[tuple[int, bytes, bytes]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT size, body, signature FROM checkpoints WHERE size > ? ORDER BY size",
                      (after,))
            return [(r[0], bytes(r[1]), bytes(r[2])) for r in c.fetchall()]

    def latest_checkpoint(self) -> tuple[int, bytes, bytes] | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT size, body, signature FROM checkpoints ORDER BY size DESC LIMIT 1")
            r = c.fetchone()
        return (r[0], bytes(r[1]), bytes(r[2])) if r else None

    def insert_cosignature(self, size: int, witness: str, key_id: str, signature: bytes) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute("INSERT OR REPLACE INTO cosignatures (size, witness, key_id, signature) "
                      "VALUES (?,?,?,?)", (size, witness, key_id, signature))

    def select_cosignatures(self, size: int | None = None) -> list[tuple[int, str, str, bytes]]:
        with self.datastore.transaction(commit=False) as c:
            if size is None:
                c.execute("SELECT size, witness, key_id, signature FROM cosignatures ORDER BY size")
            else:
                c.execute("SELECT size, witness, key_id, signature FROM cosignatures WHERE size = ?",
                          (size,))
            return [(r[0], r[1], r[2], bytes(r[3])) for r in c.fetchall()]
