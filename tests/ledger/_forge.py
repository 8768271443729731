"""Editing a registry's database the way an attacker with write access to it would, on either
store: read and rewrite a record's state, recompute every chain value and the chain head (as a
careful forger would), set the head, delete checkpoints. For tamper tests on SQLite and on
PostgreSQL alike (tests/ledger/test_tamper.py does the same on SQLite files with sqlite3)."""

from __future__ import annotations

import hashlib
import sqlite3
from typing import Any
from urllib.parse import parse_qs, urlparse
from uuid import UUID

from ledger import demo
from ledger.application import Registry
from ledger.keys import Keyring
from ledger.records import GENESIS_CHAIN, Record
from ledger.store import sqlite_path
from ledger.transcoder import MsgpackTranscoder

T = MsgpackTranscoder()


class Forger:
    """Raw access to one registry's tables (close it before the registry is opened again)."""

    def __init__(self, url: str) -> None:
        path = sqlite_path(url)
        if path is not None:
            self.con: Any = sqlite3.connect(path)
            self.pos, self.p, self.t = "rowid", "?", (lambda name: name)
            self.events = "stored_events"
        else:
            import psycopg

            parsed = urlparse(url)
            schema = parse_qs(parsed.query).get("schema", ["public"])[-1]
            self.con = psycopg.connect(url.split("?")[0], autocommit=False)
            self.pos, self.p = "notification_id", "%s"
            self.t = lambda name: f'"{schema}"."{name}"'
            self.events = "carbonledger_events"  # (the application's name, as eventsourcing has it)
        self.sqlite = path is not None

    def close(self) -> None:
        self.con.commit()
        self.con.close()

    def __enter__(self) -> Forger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        cur = self.con.execute(sql, params)
        return list(cur.fetchall()) if cur.description else []

    def positions(self, topic_suffix: str) -> list[int]:
        return [r[0] for r in self.execute(
            f"SELECT {self.pos} FROM {self.t(self.events)} WHERE topic LIKE {self.p} "
            f"ORDER BY {self.pos}", (f"%{topic_suffix}",))]

    def raw_state(self, position: int) -> bytes:
        (state,) = self.execute(f"SELECT state FROM {self.t(self.events)} WHERE "
                                f"{self.pos} = {self.p}", (position,))[0]
        return bytes(state)

    def state(self, position: int) -> dict[str, Any]:
        return T.decode(self.raw_state(position))  # type: ignore[no-any-return]

    def set_state(self, position: int, state: dict[str, Any] | bytes) -> None:
        raw = state if isinstance(state, bytes) else T.encode(state)
        self.execute(f"UPDATE {self.t(self.events)} SET state = {self.p} WHERE "
                     f"{self.pos} = {self.p}", (raw, position))

    def recompute_chain(self) -> None:
        """Every chain value and the head, made to match the (edited) records."""
        chain, size = GENESIS_CHAIN, 0
        rows = self.execute(f"SELECT {self.pos}, originator_id, originator_version, topic, state "
                            f"FROM {self.t(self.events)} ORDER BY {self.pos}")
        for position, oid, version, topic, state in rows:
            oid = oid if isinstance(oid, UUID) else UUID(oid)
            chain = hashlib.sha256(chain + Record(position, oid, version, topic,
                                                  bytes(state)).leaf_hash()).digest()
            self.execute(f"UPDATE {self.t(self.events)} SET chain = {self.p} WHERE "
                         f"{self.pos} = {self.p}", (chain, position))
            size = position
        self.set_head(size, chain)

    def head(self) -> tuple[int, bytes]:
        size, chain = self.execute(f"SELECT size, chain FROM {self.t('ledger_head')} WHERE id = 1")[0]
        return size, bytes(chain)

    def set_head(self, size: int, chain: bytes) -> None:
        self.execute(f"UPDATE {self.t('ledger_head')} SET size = {self.p}, chain = {self.p} "
                     "WHERE id = 1", (size, chain))

    def checkpoint_sizes(self) -> list[int]:
        return [r[0] for r in self.execute(f"SELECT size FROM {self.t('checkpoints')} ORDER BY size")]

    def delete_checkpoint(self, size: int) -> None:
        self.execute(f"DELETE FROM {self.t('checkpoints')} WHERE size = {self.p}", (size,))

    def delete_cosignatures(self, size: int) -> None:
        self.execute(f"DELETE FROM {self.t('cosignatures')} WHERE size = {self.p}", (size,))


def open_demo(url: str) -> Registry:
    """A registry at `url` holding the demo story, with no checkpoints of its own."""
    app = Registry(url, keyring=Keyring(), auto_checkpoint=False)
    demo.load(app)
    return app


def recompute_sqlite_chain(con: sqlite3.Connection) -> None:
    """Forger.recompute_chain over an open sqlite3 connection."""
    forger = object.__new__(Forger)
    forger.con, forger.pos, forger.p, forger.t, forger.sqlite = con, "rowid", "?", (lambda n: n), True
    forger.events = "stored_events"
    forger.recompute_chain()
