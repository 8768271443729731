"""What our write path is compared with: plain `eventsourcing`, and raw inserts at the storage limit.

* PlainLedger: a minimal `eventsourcing` Application with one PlainTicket aggregate per ticket and
  one event per transfer carrying the transfer's fields; no signatures, no projections, no hash
  chain, no command records; the library's default JSON transcoder; one `save()` per transaction.
* RawSQLite / RawPostgres: insert-and-commit of rows shaped like ours (the same number of rows
  per command, of the same sizes): SQLite in WAL with synchronous=FULL, PostgreSQL with
  synchronous_commit on, both with fsync. Nothing else happens, so this is what the disk allows.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event


class PlainTicket(Aggregate):
    def __init__(self, ticket_no: str) -> None:
        self.ticket_no = ticket_no
        self.transfers = 0

    @event("Transferred")
    def transfer(self, trade_id: str, seller: str, buyer: str, ticket_no: str, quantity_t: int,
                 price: str, mode: str) -> None:
        self.transfers += 1


class PlainLedger(Application):
    name = "PlainLedger"
    env: dict[str, str] = {}

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(env=env)
        self.tickets: dict[str, PlainTicket] = {}

    def ticket(self, ticket_no: str) -> PlainTicket:
        t = self.tickets.get(ticket_no)
        if t is None:
            t = self.tickets[ticket_no] = PlainTicket(ticket_no)
            self.save(t)
        return t

    def transfer(self, args: dict[str, Any]) -> None:
        """One transfer, one event, one transaction."""
        t = self.ticket(args["ticket_no"])
        t.transfer(**args)
        self.save(t)

    def transfer_batch(self, items: Sequence[dict[str, Any]]) -> None:
        """Many transfers (over several tickets) saved in one transaction."""
        touched: dict[str, PlainTicket] = {}
        for args in items:
            t = self.ticket(args["ticket_no"])
            t.transfer(**args)
            touched[t.ticket_no] = t
        self.save(*touched.values())


def plain_sqlite(path: str) -> PlainLedger:
    return PlainLedger({"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path})


def plain_postgres(url: str, schema: str) -> PlainLedger:
    """A PlainLedger in `schema` (which must exist) of the database at `url`."""
    from urllib.parse import urlparse

    u = urlparse(url)
    return PlainLedger({"PERSISTENCE_MODULE": "eventsourcing.postgres",
                        "POSTGRES_DBNAME": u.path.lstrip("/"), "POSTGRES_HOST": u.hostname or "",
                        "POSTGRES_PORT": str(u.port or 5432),
                        "POSTGRES_USER": u.username or "postgres",
                        "POSTGRES_PASSWORD": u.password or "", "POSTGRES_SCHEMA": schema})


def _payloads(sizes: Sequence[int]) -> list[tuple[bytes, int, str, bytes]]:
    return [(uuid.uuid4().bytes, 1, "bench:Row", os.urandom(n)) for n in sizes]


class RawSQLite:
    """Insert-and-commit of rows of given sizes: WAL, synchronous=FULL."""

    def __init__(self, path: str) -> None:
        self.con = sqlite3.connect(path, isolation_level=None)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=FULL")
        self.con.execute("CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, "
                         "originator_id BLOB, originator_version INTEGER, topic TEXT, state BLOB)")
        self.version = 0

    def commit_rows(self, sizes: Sequence[int]) -> None:
        rows = _payloads(sizes)
        c = self.con
        c.execute("BEGIN")
        c.executemany("INSERT INTO rows (originator_id, originator_version, topic, state) "
                      "VALUES (?, ?, ?, ?)", rows)
        c.execute("COMMIT")

    def close(self) -> None:
        self.con.close()


class RawPostgres:
    """Insert-and-commit of rows of given sizes with psycopg (synchronous_commit on)."""

    def __init__(self, url: str, schema: str) -> None:
        import psycopg

        self.con = psycopg.connect(url)
        self.table = f'"{schema}".rows'
        with self.con.cursor() as c:
            c.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (id bigserial PRIMARY KEY, "
                      "originator_id uuid, originator_version bigint, topic text, state bytea)")
        self.con.commit()

    def commit_rows(self, sizes: Sequence[int]) -> None:
        rows = [(uuid.UUID(bytes=o), v, t, s) for o, v, t, s in _payloads(sizes)]
        with self.con.cursor() as c:
            c.executemany(f"INSERT INTO {self.table} (originator_id, originator_version, topic, "
                          "state) VALUES (%s, %s, %s, %s)", rows)
        self.con.commit()

    def close(self) -> None:
        self.con.close()
