"""Where the events live: database URLs, and recorders that chain, serialise and checkpoint.

Two stores, one behaviour. Embedded SQLite (`sqlite:///path`) is the default; PostgreSQL
(`postgresql://user@host:port/dbname`) is the production store. Both recorders:

* give every record a contiguous log position and its chain value (ledger.records), computed
  under the store's write lock from the head of the chain kept in a one-row table;
* validate the command's *read set*: `eventsourcing` version-checks only the aggregates a
  command writes, but a command is also decided by aggregates it only reads (is the seller
  frozen? has the holder mandated this exchange? what are the offset limits?). The application
  passes the versions it read, and the recorder re-checks them inside the write transaction
  after taking the lock; if one moved on, the transaction rolls back with StaleRead and the
  command is decided again. So the log is serialisable in its own order;
* keep signed checkpoints and witness cosignatures beside the log;
* keep the signatures of refused commands beside the log too (`spent_signatures`): a refusal
  writes nothing to the log, yet the very same signed request must not be accepted later. A
  refusal whose signature verified is confirmed under the write lock and its signature stored;
  every write checks, in its own transaction, that none of its signatures is stored. Rows are
  dropped once their signature is older than the signature window (they could not verify
  again). The table is not part of what the log commits to, and `verify` does not read it.

PostgreSQL runs through `eventsourcing`'s persistence with POSTGRES_ENABLE_DB_FUNCTIONS left
off: every insert transaction takes `LOCK TABLE … IN EXCLUSIVE MODE`, so commit order is log
order. Positions are assigned from the chain head under that lock (not from the sequence), so a
failed insert leaves no gap.
"""

from __future__ import annotations

import base64
import fcntl
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse
from uuid import UUID, uuid4

import psycopg
from eventsourcing.persistence import IntegrityError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor
from psycopg.rows import dict_row, tuple_row
from psycopg.sql import SQL, Identifier

from domain.base import uuid_of_int
from domain.errors import DomainError
from ledger import merkle
from ledger.demo import demo_registry_path
from ledger.records import (
    GENESIS_CHAIN,
    TIME_PREFIX_BYTES,
    Record,
    next_chain,
    record_bytes,
    record_bytes_of,
    state_time_ns,
    time_text,
    with_time_ns,
)

DEFAULT_DB = "sqlite:///var/registry.db"
ENV_DB = "CARBON_LEDGER_DB"

ReadSet = Sequence[tuple[UUID, int]]

# Settings a PostgreSQL URL may carry as query parameters, and the eventsourcing names they set.
PG_OPTIONS = {
    "schema": "POSTGRES_SCHEMA",
    "pool_size": "POSTGRES_POOL_SIZE",
    "max_overflow": "POSTGRES_MAX_OVERFLOW",
    "connect_timeout": "POSTGRES_CONNECT_TIMEOUT",
    "lock_timeout": "POSTGRES_LOCK_TIMEOUT",
    "idle_in_transaction_session_timeout": "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT",
    "max_waiting": "POSTGRES_MAX_WAITING",
    "conn_max_age": "POSTGRES_CONN_MAX_AGE",
}


def leaf_hashes(stored_events: Sequence[StoredEvent]) -> list[bytes]:
    """The RFC 9162 leaf hash of each record (what the chain and the Merkle tree are made of)."""
    return [merkle.leaf_hash(record_bytes(s.originator_id, s.originator_version, s.topic, s.state))
            for s in stored_events]


class StaleRead(IntegrityError):
    """An aggregate that a command read changed before the command's events were written."""


HELD, MOVED, SPENT = "held", "moved", "spent"  # what confirm_refusals finds of a refusal


class SignatureSpent(Exception):  # noqa: N818 - named for what it is, like StaleRead
    """A signature of commands to be written is stored as spent: the very same signed request
    was refused before. Nothing was written."""


@dataclass(frozen=True)
class Spent:
    """A refused command's actor signature, kept until it is too old to verify again."""

    signature: bytes
    created: int  # the signature's `created` parameter (unix seconds)
    key_id: str
    command_id: str
    code: str  # the refusal's code

    def row(self) -> tuple[bytes, int, str, str, str]:
        return (self.signature, self.created, self.key_id, self.command_id, self.code)


class TimeBehind(IntegrityError):
    """The records to write are dated before the log's last one by more than Dating allows:
    they are decided again, dated after it."""


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NS = 1_000_000_000


class Dating:
    """How the store may date the records it writes (see LedgerTables._date_after): after the
    log's last record, when another process wrote records dated later since these were decided,
    as long as that moves them by at most MAX_SHIFT_NS and to no later than `limit_ns` (where
    a signature of theirs would leave its window). The records as written, and their leaf
    hashes, are left here for the writer (None when they were written as given)."""

    # Within this shift, a decision stands as it was made: the signature windows are checked
    # against `limit_ns`, and a key registered in the batch and used later in it stays valid
    # (the key check's slack, 360 s, exceeds a signature's 300 s window by more than this).
    MAX_SHIFT_NS = 30 * _NS

    def __init__(self, limit_ns: int) -> None:
        self.limit_ns = limit_ns
        self.stored: list[StoredEvent] | None = None
        self.leaves: list[bytes] | None = None


def _short(chain: bytes) -> str:
    return base64.b64encode(chain).decode("ascii")[:12] + "…"


def db_url(url: str | None = None) -> str:
    return url or os.environ.get(ENV_DB) or DEFAULT_DB


def sqlite_path(url: str) -> str | None:
    """The file path of a sqlite:/// URL (':memory:' for an in-memory store), or None."""
    parsed = urlparse(url)
    if parsed.scheme != "sqlite":
        return None
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else unquote(parsed.path)
    if path in ("", ":memory:"):
        return ":memory:"
    return path


def is_postgres(url: str) -> bool:
    return urlparse(url).scheme in ("postgresql", "postgres")


def shown_url(url: str) -> str:
    """The URL as it may be printed: without a password."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.rsplit("@", 1)[1]
    user = f"{parsed.username}@" if parsed.username else ""
    return parsed._replace(netloc=user + netloc).geturl()


def require_registry(url: str) -> None:
    """Refuse (`no_registry`) a store that holds no registry — a missing SQLite file or
    PostgreSQL database, or one with no genesis record — without creating anything.

    Every command but those that make a registry (init, restore, migrate's target) opens its
    store through this check: a verifier or a read on a mistyped path must fail, not pass on an
    empty file it has just made."""
    path = sqlite_path(url)
    if path is not None:
        if path == ":memory:":
            problem = "is empty (an in-memory store is new every time)"
        else:
            problem = _sqlite_problem(Path(path))
    elif is_postgres(url):
        problem = _postgres_problem(url)
    else:
        environment(url)  # raises ValueError naming the URL forms
        return
    if problem is not None:
        raise DomainError("no_registry", _no_registry_sentence(url, problem), db=shown_url(url))


def _sqlite_problem(path: Path) -> str | None:
    if not path.exists():
        return f"the file {path} does not exist"
    if path.is_dir():
        return f"{path} is a folder, not a registry file"
    try:
        # Read-only and never created: an empty or foreign file is looked at, not changed.
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "ledger_head" not in tables:
                return "is empty (no genesis record: it was never initialised)"
            row = con.execute("SELECT size FROM ledger_head WHERE id = 1").fetchone()
    except sqlite3.DatabaseError as e:
        if "not a database" in str(e):
            return f"the file is not an SQLite database ({e})"
        # A file that is there but cannot be read now (locked, no rights): not "no registry".
        raise DomainError("store_unavailable", f"the registry file {path} could not be read "
                          f"({e})") from None
    if not row or not row[0]:
        return "is empty (no genesis record: it was never initialised)"
    return None


def _postgres_problem(url: str) -> str | None:
    env = environment(url)
    schema = env.get("POSTGRES_SCHEMA") or "public"
    try:
        conn = psycopg.connect(dbname=env["POSTGRES_DBNAME"], host=env["POSTGRES_HOST"],
                               port=env["POSTGRES_PORT"], user=env["POSTGRES_USER"],
                               password=env["POSTGRES_PASSWORD"] or None,
                               connect_timeout=int(env.get("POSTGRES_CONNECT_TIMEOUT", "10")))
    except psycopg.OperationalError as e:
        text = str(e)
        if "does not exist" in text and "database" in text:
            return f"database {env['POSTGRES_DBNAME']} does not exist"
        first = text.strip().splitlines()[0] if text.strip() else repr(e)
        raise DomainError("store_unavailable", f"the store {shown_url(url)} could not be reached "
                          f"({first})") from None
    with conn:
        found = conn.execute("SELECT to_regclass(%s)",
                             (f'"{schema}"."ledger_head"',)).fetchone()
        if found is None or found[0] is None:
            return f"is empty (schema {schema} holds no registry: it was never initialised)"
        row = conn.execute(SQL("SELECT size FROM {0}.ledger_head WHERE id = 1").format(
            Identifier(schema))).fetchone()
    if not row or not row[0]:
        return "is empty (no genesis record: it was never initialised)"
    return None


def _no_registry_sentence(url: str, problem: str) -> str:
    shown = shown_url(url)
    if problem.startswith("is "):
        sentence = f"the registry at {shown} {problem}"
    else:
        sentence = f"no registry at {shown}: {problem}"
    sentence += (f". Make one with `carbon-ledger init --db {shown}` (or restore a backup into "
                 "it), or run ops/demo for the demo registry")
    demo = demo_registry_path()
    if demo is not None:
        demo_url = f"sqlite:///{demo}"
        if demo_url != url and _sqlite_problem(demo) is None:
            sentence += (f"; the demo's registry is {demo_url} (export "
                         f"CARBON_LEDGER_DB={demo_url})")
    return sentence


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
    if is_postgres(url):
        parsed = urlparse(url)
        dbname = unquote(parsed.path.lstrip("/"))
        if not dbname or not parsed.hostname:
            raise ValueError(f"a PostgreSQL URL names a host and a database: {url!r}")
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": parsed.hostname,
            "POSTGRES_PORT": str(parsed.port or 5432),
            "POSTGRES_USER": unquote(parsed.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(parsed.password or ""),
            "POSTGRES_LOCK_TIMEOUT": "30",
            "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "30",
            "POSTGRES_POOL_SIZE": "5",
            "POSTGRES_MAX_OVERFLOW": "10",
            "APPLICATION_RECORDER_TOPIC": "ledger.store:LedgerPostgresRecorder",
        }
        for key, values in parse_qs(parsed.query).items():
            if key not in PG_OPTIONS:
                raise ValueError(f"unknown PostgreSQL URL option {key!r}; known: "
                                 f"{', '.join(sorted(PG_OPTIONS))}")
            env[PG_OPTIONS[key]] = values[-1]
        return env
    raise ValueError(f"unsupported database URL {url!r}; use sqlite:///PATH or "
                     "postgresql://USER@HOST:PORT/DBNAME")


def _serve_lock_path(url: str) -> Path | None:
    path = sqlite_path(url)
    return None if path in (None, ":memory:") else Path(f"{path}.serve.lock")


@contextmanager
def serving(url: str) -> Iterator[None]:
    """Held by `carbon-ledger serve` for its whole life: a shared lock on `<db>.serve.lock`
    beside an SQLite registry, whose lines are the serving processes' ids.

    Shared, so that several servers may serve one file; whoever wants the file to itself (such
    as ops/demo, which deletes and rebuilds its registry) asks `served_by` first. The kernel
    drops the lock when the process ends, however it ends. A PostgreSQL registry has no file
    to lock: its servers are not recorded."""
    path = _serve_lock_path(url)
    if path is None:
        yield
        return
    with open(path, "a+") as f:
        try:  # alone: forget the ids of servers that are gone
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            f.truncate(0)
        except BlockingIOError:
            fcntl.flock(f, fcntl.LOCK_SH)  # others serve: wait out a brief served_by only
        else:
            fcntl.flock(f, fcntl.LOCK_SH)
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def served_by(url: str) -> list[int]:
    """The ids of the processes serving the registry now (an SQLite file's servers)."""
    path = _serve_lock_path(url)
    if path is None or not path.exists():
        return []
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            fcntl.flock(f, fcntl.LOCK_UN)
            return []  # the lock was free: nobody serves, whatever ids the file still lists
        pids = [int(line) for line in f.read().split() if line.isdigit()]
    return sorted({pid for pid in pids if _alive(pid)})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def require_not_served(url: str) -> None:
    """Refuse (`registry_served`) while a server holds the registry."""
    pids = served_by(url)
    if pids:
        which = ", ".join(str(p) for p in pids)
        raise DomainError(
            "registry_served", f"the registry at {shown_url(url)} is being served by process"
            f"{'es' if len(pids) > 1 else ''} {which} (carbon-ledger serve); stop "
            f"{'them' if len(pids) > 1 else 'it'} first (Ctrl-C where it runs, or kill {which})",
            db=shown_url(url), pids=pids)


def _hex_id_bytes(stored_id: Any) -> bytes:
    """The 16 bytes of an id stored as hex text; b"" for anything else (the record's bytes then
    differ from the ones its chain value covers)."""
    try:
        return bytes.fromhex(stored_id) if type(stored_id) is str else b""
    except ValueError:
        return b""


class LedgerTables:
    """What both recorders add to `eventsourcing`'s: the chain, the read set, checkpoints."""

    P = "?"  # the driver's placeholder
    POS = "rowid"  # the column that holds the log position

    events_table_name: str
    datastore: Any

    def _t(self, name: str) -> str:
        return name

    def _oid(self, originator_id: UUID) -> Any:
        return originator_id.hex

    _uuids: dict[str, UUID] = {}

    def _uuid(self, value: Any) -> UUID:
        if isinstance(value, UUID):
            return value
        found = self._uuids.get(value)
        if found is None:
            if len(self._uuids) > 200_000:  # a bounded memo: aggregates recur, trades do not
                self._uuids.clear()
            if type(value) is str and len(value) == 32:  # hex, as SQLite keeps it
                found = uuid_of_int(int(value, 16))  # what UUID(value) checks and does
            else:
                found = UUID(value)
            self._uuids[value] = found
        return found

    def _lock(self, c: Any, notify: bool = True) -> None:
        """Take the store's write lock before reading the head of the chain (and, with
        `notify`, tell the other processes' followers that the log grows)."""

    def exclusive(self) -> Any:
        """A context in which no other process writes (where the store can give one cheaply):
        a command that keeps losing races is decided and written inside it, so it cannot
        starve. A no-op where the store has no such lock outside a transaction."""
        return nullcontext()

    def _lock_and_read_head(self, c: Any, notify: bool = True,
                            signatures: Sequence[bytes] = ()) -> Any:
        """Take the write lock; the head's row (size, chain), or None before the first write.
        A store may also say in it whether any of `signatures` is spent (see _any_spent)."""
        self._lock(c, notify)
        c.execute(f"SELECT size, chain FROM {self._t('ledger_head')} WHERE id = 1")
        return c.fetchone()

    def _any_spent(self, c: Any, signatures: Sequence[bytes], head: Any) -> bool:
        """Whether any of `signatures` is stored as spent: as the head's row says, where the
        statement that read it looked (the write pays no statement more for it), else by a
        query."""
        if head is not None and "spent" in head.keys():
            return bool(head["spent"])
        marks = ", ".join([self.P] * len(signatures))
        c.execute(f"SELECT 1 FROM {self._t('spent_signatures')} WHERE signature IN ({marks}) "
                  "LIMIT 1", list(signatures))
        return c.fetchone() is not None

    # The first bytes of a record's state, which hold its time (records.state_time_ns).
    STATE_PREFIX = f"substr(CAST(state AS BLOB), 1, {TIME_PREFIX_BYTES})"

    def _end_sql(self) -> str:
        """The log's last record: its position, chain value and the first bytes of its state."""
        return (f"SELECT {self.POS} AS end_position, chain AS end_chain, {self.STATE_PREFIX} AS "
                f"end_head FROM {self._t(self.events_table_name)} ORDER BY {self.POS} DESC LIMIT 1")

    # The latest record time this recorder has seen in the log, under the write lock: the
    # application dates its next decisions no earlier (see Registry._decision_time).
    time_floor: datetime = EPOCH

    def _check_end(self, size: int, chain: bytes, end: Any, dated: bool) -> int | None:
        """Under the write lock, before anything is written: the head (size, chain) must be the
        log's last record (`end`, a row of _end_sql, or None for an empty log), else the write
        is refused (log_inconsistent) rather than made to conflict forever or to break the
        chain. With `dated`: the last record's time in ns (None when there is none), which the
        floor of this process's next decisions then is."""
        if end is None or end["end_position"] is None:
            end_position, end_chain, end_head = 0, GENESIS_CHAIN, b""
        else:
            end_position, end_chain = end["end_position"], bytes(end["end_chain"] or b"")
            end_head = bytes(end["end_head"] or b"")
        if end_position != size or end_chain != chain:
            raise DomainError(
                "log_inconsistent", f"the log's head (table ledger_head) says {size} records "
                f"ending in chain {_short(chain)}, but the log's last record is at position "
                f"{end_position} with chain {_short(end_chain)}: one of them was changed outside "
                "the registry. Nothing was written; do not retry, run carbon-ledger verify",
                head_size=size, log_size=end_position)
        last = state_time_ns(end_head) if dated and end_position else None
        if last is not None:
            floor = EPOCH + timedelta(microseconds=last // 1000)
            if floor > self.time_floor:
                self.time_floor = floor
        return last

    @staticmethod
    def _date_after(stored_events: Sequence[StoredEvent], leaves: Sequence[bytes] | None,
                    last: int | None, dating: Dating | None,
                    ) -> tuple[Sequence[StoredEvent], Sequence[bytes] | None]:
        """The records, dated no earlier than the log's last record (`last`, in ns): as they
        are when they are, else moved to it as `dating` allows, else TimeBehind. A batch is
        dated in order already, so only its first records move."""
        if dating is None or last is None or not stored_events:
            return stored_events, leaves
        first = state_time_ns(stored_events[0].state)
        if first is None or first >= last:
            return stored_events, leaves
        if last - first > dating.MAX_SHIFT_NS or last > dating.limit_ns:
            raise TimeBehind(f"the records are dated {time_text(first)}, before the log's last "
                             f"record ({time_text(last)}), by more than they may be moved")
        moved = []
        for s in stored_events:
            when = state_time_ns(s.state)
            state = s.state if when is not None and when >= last else with_time_ns(s.state, last)
            if state is None:
                raise TimeBehind("a record's time is laid out otherwise than the transcoder's")
            moved.append(s if state is s.state else StoredEvent(
                originator_id=s.originator_id, originator_version=s.originator_version,
                topic=s.topic, state=state))
        dating.stored, dating.leaves = moved, leaf_hashes(moved)
        return dating.stored, dating.leaves

    @contextmanager
    def _reading(self, tuples: bool = False) -> Iterator[Any]:
        """A cursor for reads (the library's transaction, for SQLite); its rows are tuples
        with `tuples`, else rows by column name."""
        with self.datastore.transaction(commit=False) as c:
            if tuples:
                c.row_factory = None  # this cursor's only
            yield c

    def _append(self, c: Any, stored_events: Sequence[StoredEvent], read_set: ReadSet,
                leaves: Sequence[bytes] | None = None, decided_at: int | None = None,
                signatures: Sequence[bytes] = (), dated: Dating | None = None) -> list[int]:
        """Insert the records after the chain head, under the store's write lock, once every
        version in `read_set` is still the latest (checked before anything is inserted, so that
        a group of commands may read what a later command of the same group changes) and none
        of the commands' actor `signatures` is spent (SignatureSpent).

        `decided_at` is the log size the versions were read at: if the log is still that size,
        nothing can have moved and the check is skipped. `dated`: see Dating."""
        P, head = self.P, self._t("ledger_head")
        row = self._lock_and_read_head(c, signatures=signatures)
        if signatures and self._any_spent(c, signatures, row):
            raise SignatureSpent("a signature of this write was spent by an earlier refusal")
        size, chain = self._head_from(c, row)
        c.execute(self._end_sql())
        last = self._check_end(size, chain, c.fetchone(), dated is not None)
        stored_events, leaves = self._date_after(stored_events, leaves, last, dated)
        if read_set and size != decided_at:  # one query for every aggregate only read
            self._check_read_set(read_set, self._versions(c, [a for a, _ in read_set]))
        rows, ids, size, chain = self._chained_rows(stored_events, size, chain, leaves)
        c.executemany(
            f"INSERT INTO {self._t(self.events_table_name)} (originator_id, originator_version, "
            f"topic, state, {self.POS}, chain) VALUES ({P}, {P}, {P}, {P}, {P}, {P})", rows)
        c.execute(f"UPDATE {head} SET size = {P}, chain = {P} WHERE id = 1", (size, chain))
        return ids

    def _head_from(self, c: Any, row: Any) -> tuple[int, bytes]:
        """(size, chain) of the head row read under the lock; the empty log's, created, if none."""
        if row is not None and row["size"] is not None:
            return row["size"], bytes(row["chain"])
        c.execute(f"INSERT INTO {self._t('ledger_head')} (id, size, chain) VALUES (1, 0, {self.P})",
                  (GENESIS_CHAIN,))
        return 0, GENESIS_CHAIN

    def _chained_rows(self, stored_events: Sequence[StoredEvent], size: int, chain: bytes,
                      leaves: Sequence[bytes] | None = None,
                      ) -> tuple[list[tuple[Any, ...]], list[int], int, bytes]:
        """The rows to insert after (size, chain): their positions and chain values. `leaves`
        are the records' leaf hashes when the caller has them already."""
        if leaves is None:
            leaves = leaf_hashes(stored_events)
        rows = []
        ids = []
        for s, leaf in zip(stored_events, leaves, strict=True):
            size += 1
            chain = next_chain(chain, leaf)
            rows.append((self._oid(s.originator_id), s.originator_version, s.topic, s.state, size,
                         chain))
            ids.append(size)
        return rows, ids, size, chain

    def _versions(self, c: Any, ids: Sequence[UUID]) -> list[Any]:
        """The latest version of each of these aggregates that exists, as rows (id, v)."""
        marks = ", ".join([self.P] * len(ids))
        c.execute(f"SELECT originator_id AS id, MAX(originator_version) AS v "
                  f"FROM {self._t(self.events_table_name)} WHERE originator_id IN ({marks}) "
                  f"GROUP BY originator_id", [self._oid(a) for a in ids])
        return c.fetchall()  # type: ignore[no-any-return]

    def _check_read_set(self, read_set: ReadSet, found: Sequence[Any]) -> None:
        current = {r["id"]: r["v"] for r in found}  # keyed as stored (see _oid)
        for aggregate_id, version in read_set:
            now = current.get(self._oid(aggregate_id), 0)
            if now != version:
                raise StaleRead(f"aggregate {aggregate_id} moved from version {version} to {now}")

    def ledger_statements(self, blob: str) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self._t('ledger_head')} ("
            f"id INTEGER PRIMARY KEY CHECK (id = 1), size BIGINT NOT NULL, chain {blob} NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {self._t('checkpoints')} ("
            f"size BIGINT PRIMARY KEY, body {blob} NOT NULL, signature {blob} NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {self._t('cosignatures')} ("
            f"size BIGINT NOT NULL, witness TEXT NOT NULL, key_id TEXT NOT NULL, "
            f"signature {blob} NOT NULL, PRIMARY KEY (size, witness))",
            f"CREATE TABLE IF NOT EXISTS {self._t('spent_signatures')} ("
            f"signature {blob} PRIMARY KEY, created BIGINT NOT NULL, key_id TEXT NOT NULL, "
            f"command_id TEXT NOT NULL, code TEXT NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS spent_signatures_created "
            f"ON {self._t('spent_signatures')} (created)",
        ]

    # Reading the log as records -------------------------------------------------------------

    def _select_range(self, columns: str, params: list[Any], start: int, limit: int,
                      stop: int | None, tuples: bool = False) -> list[Any]:
        """Rows with positions in start..stop, at most `limit`, in log order (as tuples with
        `tuples`, else by column name)."""
        P = self.P
        sql = (f"SELECT {columns} FROM {self._t(self.events_table_name)} "
               f"WHERE {self.POS} >= {P}")
        params = [*params, start]
        if stop is not None:
            sql += f" AND {self.POS} <= {P}"
            params.append(stop)
        sql += f" ORDER BY {self.POS} LIMIT {P}"
        params.append(limit)
        with self._reading(tuples) as c:
            c.execute(sql, params)
            return c.fetchall()

    def select_records(self, start: int, limit: int, stop: int | None = None) -> list[Record]:
        """Records with positions >= start (and <= stop), in log order, with their chain values."""
        rows = self._select_range(f"{self.POS} AS position, originator_id, originator_version, "
                                  "topic, state, chain", [], start, limit, stop)
        uuid, make = self._uuid, Record.of
        return [make(r["position"], uuid(r["originator_id"]), r["originator_version"], r["topic"],
                     bytes(r["state"]), bytes(r["chain"] or b"")) for r in rows]

    def select_record_rows(self, start: int, limit: int,
                           stop: int | None = None) -> list[tuple[int, bytes, int, str, bytes, bytes]]:
        """What select_records gives, as plain tuples (position, originator id's 16 bytes,
        version, topic, state, chain): the audit's reader, which needs the id's bytes only (for
        the record's bytes) and makes a million of these, skips the UUIDs and the records."""
        rows = self._select_range(f"{self.POS}, originator_id, originator_version, topic, "
                                  f"{self.RECORD_BYTES}", [], start, limit, stop, tuples=True)
        return self._record_rows(rows)

    # SQLite keeps a value of any type in any column: a damaged file may hold text or a number
    # where the state's or chain's bytes belong. Read as bytes, such a record fails the hash
    # chain at its position (where text that is not UTF-8 would stop the read itself).
    RECORD_BYTES = "CAST(state AS BLOB), CAST(chain AS BLOB)"

    @staticmethod
    def _record_rows(rows: list[tuple[Any, ...]]) -> list[tuple[int, bytes, int, str, bytes, bytes]]:
        """select_record_rows' tuples from SQLite's rows, which hold the id as hex text."""
        fromhex = bytes.fromhex
        try:
            return [(position, fromhex(oid), version, topic, state, chain or b"")
                    for position, oid, version, topic, state, chain in rows]
        except (TypeError, ValueError):  # an id that is not hex text, in a damaged file
            return [(position, _hex_id_bytes(oid), version, topic, state, chain or b"")
                    for position, oid, version, topic, state, chain in rows]

    def select_leaf_hashes(self, start: int, limit: int, stop: int | None = None) -> list[bytes]:
        """The leaf hashes of the records with positions >= start (and <= stop), in log order:
        what select_records(...)[i].leaf_hash() gives, without making the records."""
        rows = self._select_range("originator_id, originator_version, topic, state", [], start,
                                  limit, stop)
        id_bytes = self._id_bytes
        return [merkle.leaf_hash(record_bytes_of(id_bytes(r["originator_id"]),
                                                 r["originator_version"], r["topic"],
                                                 bytes(r["state"])))
                for r in rows]

    def _id_bytes(self, stored_id: Any) -> bytes:
        """The 16 bytes of an originator id as the store gives it (hex text on SQLite)."""
        return bytes.fromhex(stored_id)

    def select_raw(self, start: int, limit: int, stop: int | None = None,
                   without_state: Sequence[str] = ()) -> list[tuple[Any, ...]]:
        """(position, originator id as stored, version, topic, state) rows: the projections' diet.

        Rows whose topic starts with one of `without_state` come with an empty state (they are
        counted, not decoded, and a batch's command record can be large)."""
        state = "state"
        params: list[Any] = []
        if without_state:
            tests = " OR ".join(f"topic LIKE {self.P}" for _ in without_state)
            state = f"CASE WHEN {tests} THEN NULL ELSE state END"
            params.extend(f"{prefix}%" for prefix in without_state)
        rows = self._select_range(f"{self.POS}, originator_id, originator_version, topic, {state}",
                                  params, start, limit, stop)
        return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in rows]

    def first_of_topic(self, topic: str, start: int, head_bytes: int = 32) -> tuple[int, bytes] | None:
        """The position of the first record of `topic` at `start` or after, and the first
        `head_bytes` of its state (where a record's time is: ledger.as_of); None if there is none."""
        P = self.P
        with self._reading() as c:
            c.execute(f"SELECT {self.POS} AS position, substr(state, 1, {P}) AS head "
                      f"FROM {self._t(self.events_table_name)} WHERE {self.POS} >= {P} AND "
                      f"topic = {P} ORDER BY {self.POS} LIMIT 1", (head_bytes, start, topic))
            row = c.fetchone()
        return (row["position"], bytes(row["head"] or b"")) if row else None

    def position_of(self, aggregate_id: UUID, version: int) -> int | None:
        """The log position of one event (e.g. a command's record, to answer a retry with it)."""
        P = self.P
        with self._reading() as c:
            c.execute(f"SELECT {self.POS} AS position FROM {self._t(self.events_table_name)} "
                      f"WHERE originator_id = {P} AND originator_version = {P}",
                      (self._oid(aggregate_id), version))
            row = c.fetchone()
        return row["position"] if row else None

    def head(self) -> tuple[int, bytes]:
        with self._reading() as c:
            c.execute(f"SELECT size, chain FROM {self._t('ledger_head')} WHERE id = 1")
            row = c.fetchone()
        return (row["size"], bytes(row["chain"])) if row else (0, GENESIS_CHAIN)

    def head_and_end(self) -> tuple[tuple[int, bytes] | None, tuple[int, bytes]]:
        """Read at one instant: the head's (size, chain), None when it has no row; and the log's
        last record's (position, chain), (0, GENESIS_CHAIN) for an empty log."""
        with self._reading() as c:
            c.execute(self._head_and_end_sql())
            row = c.fetchone()
        head = None if row["size"] is None else (row["size"], bytes(row["chain"]))
        end = ((0, GENESIS_CHAIN) if row["end_position"] is None
               else (row["end_position"], bytes(row["end_chain"] or b"")))
        return head, end

    def _head_and_end_sql(self) -> str:
        """The head's row and the log's last record (_end_sql) in one row, both always there
        (their columns null for a head not yet made, or an empty log)."""
        return (f"SELECT h.size, h.chain, e.end_position, e.end_chain, e.end_head FROM "
                f"(SELECT 1) AS one LEFT JOIN {self._t('ledger_head')} AS h ON h.id = 1 "
                f"LEFT JOIN ({self._end_sql()}) AS e ON 1 = 1")

    # Checkpoints ------------------------------------------------------------------------------

    @contextmanager
    def signer_lock(self) -> Iterator[bool]:
        """Held by the one process that may sign checkpoints now; yields False when another has it."""
        raise NotImplementedError
        yield False

    def insert_checkpoint(self, size: int, body: bytes, signature: bytes) -> None:
        P = self.P
        with self.datastore.transaction(commit=True) as c:
            c.execute(f"INSERT INTO {self._t('checkpoints')} (size, body, signature) "
                      f"VALUES ({P}, {P}, {P})", (size, body, signature))

    def select_checkpoints(self, after: int = -1) -> list[tuple[int, bytes, bytes]]:
        with self._reading() as c:
            c.execute(f"SELECT size, body, signature FROM {self._t('checkpoints')} "
                      f"WHERE size > {self.P} ORDER BY size", (after,))
            return [(r["size"], bytes(r["body"]), bytes(r["signature"])) for r in c.fetchall()]

    def latest_checkpoint(self) -> tuple[int, bytes, bytes] | None:
        with self._reading() as c:
            c.execute(f"SELECT size, body, signature FROM {self._t('checkpoints')} "
                      "ORDER BY size DESC LIMIT 1")
            r = c.fetchone()
        return (r["size"], bytes(r["body"]), bytes(r["signature"])) if r else None

    def insert_cosignature(self, size: int, witness: str, key_id: str, signature: bytes) -> None:
        P, table = self.P, self._t("cosignatures")
        with self.datastore.transaction(commit=True) as c:
            c.execute(f"DELETE FROM {table} WHERE size = {P} AND witness = {P}", (size, witness))
            c.execute(f"INSERT INTO {table} (size, witness, key_id, signature) "
                      f"VALUES ({P}, {P}, {P}, {P})", (size, witness, key_id, signature))

    def select_cosignatures(self, size: int | None = None) -> list[tuple[int, str, str, bytes]]:
        sql = f"SELECT size, witness, key_id, signature FROM {self._t('cosignatures')}"
        params: tuple[Any, ...] = ()
        if size is not None:
            sql += f" WHERE size = {self.P}"
            params = (size,)
        with self._reading() as c:
            c.execute(sql + " ORDER BY size, witness", params)
            return [(r["size"], r["witness"], r["key_id"], bytes(r["signature"]))
                    for r in c.fetchall()]

    # Refusals ------------------------------------------------------------------------------

    def confirm_refusals(self, refusals: Sequence[tuple[ReadSet, Spent | None]], *,
                         decided_at: int | None = None, forget_before: int = 0) -> list[str]:
        """For each refusal, decided on the versions in its read set (0: the aggregate did not
        exist): HELD when none of them has moved on, MOVED when one has (the command is to be
        decided again), SPENT when its signature is stored as spent already (the very same
        request was refused before).

        The signatures of refusals that hold are stored in the same step, under the write lock,
        so that no write of the very same request can come between the check and the store;
        spent signatures created before `forget_before` are dropped then. Refusals with no
        signature to store need a read only. `decided_at`: the log size the versions were read
        at (if the log is still that size under the lock, nothing has moved)."""
        ids = list(dict.fromkeys(a for read_set, _ in refusals for a, _ in read_set))
        if all(spent is None for _, spent in refusals):
            if not ids:
                return [HELD] * len(refusals)
            with self._reading() as c:
                return self._verdicts(refusals, self._versions(c, ids))
        P, table = self.P, self._t("spent_signatures")
        with self._write_transaction() as c:
            row = self._lock_and_read_head(c, notify=False)  # the log does not grow
            size = row["size"] if row is not None else 0
            verdicts = self._verdicts(refusals, self._versions(c, ids) if ids and size != decided_at
                                      else None)
            to_store = [spent for (_, spent), verdict in zip(refusals, verdicts, strict=True)
                        if verdict == HELD and spent is not None]
            c.execute(f"DELETE FROM {table} WHERE created < {P}", (forget_before,))
            if to_store:
                values = ", ".join([f"({P}, {P}, {P}, {P}, {P})"] * len(to_store))
                c.execute(f"INSERT INTO {table} (signature, created, key_id, command_id, code) "
                          f"VALUES {values} ON CONFLICT (signature) DO NOTHING RETURNING signature",
                          [v for spent in to_store for v in spent.row()])
                stored = {bytes(r["signature"]) for r in c.fetchall()}
                verdicts = [SPENT if verdict == HELD and spent is not None
                            and spent.signature not in stored else verdict
                            for (_, spent), verdict in zip(refusals, verdicts, strict=True)]
        return verdicts

    def _verdicts(self, refusals: Sequence[tuple[ReadSet, Spent | None]],
                  found: Sequence[Any] | None) -> list[str]:
        """HELD or MOVED for each refusal, from the latest versions `found` (None: none moved)."""
        if found is None:
            return [HELD] * len(refusals)
        current = {r["id"]: r["v"] for r in found}
        oid = self._oid
        return [MOVED if any(current.get(oid(a), 0) != v for a, v in read_set) else HELD
                for read_set, _ in refusals]

    @contextmanager
    def _write_transaction(self) -> Iterator[Any]:
        """A cursor in a transaction that commits at the end (rolls back on an exception); its
        first statement is to take the write lock (_lock_and_read_head)."""
        with self.datastore.transaction(commit=True) as c:
            yield c

    def select_spent(self) -> list[tuple[bytes, int, str, str, str]]:
        """The spent signatures kept: (signature, created, key id, command id, refusal code)."""
        with self._reading() as c:
            c.execute(f"SELECT signature, created, key_id, command_id, code "
                      f"FROM {self._t('spent_signatures')} ORDER BY created, signature")
            return [(bytes(r["signature"]), r["created"], r["key_id"], r["command_id"], r["code"])
                    for r in c.fetchall()]

    def insert_spent(self, rows: Sequence[tuple[bytes, int, str, str, str]]) -> None:
        """Store spent signatures as they are (a migration copies them with the log)."""
        P = self.P
        with self.datastore.transaction(commit=True) as c:
            c.executemany(f"INSERT INTO {self._t('spent_signatures')} (signature, created, "
                          f"key_id, command_id, code) VALUES ({P}, {P}, {P}, {P}, {P}) "
                          "ON CONFLICT (signature) DO NOTHING", list(rows))


class LedgerSQLiteRecorder(LedgerTables, SQLiteApplicationRecorder):
    """The embedded store. Every write transaction first updates the chain head's row, which
    takes SQLite's write lock before anything is read, even with several processes on one file."""

    def construct_create_table_statements(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.events_table_name} ("
            "originator_id TEXT, originator_version INTEGER, topic TEXT, state BLOB, chain BLOB, "
            "PRIMARY KEY (originator_id, originator_version))",
            *self.ledger_statements("BLOB"),
        ]

    def _lock_and_read_head(self, c: Any, notify: bool = True,
                            signatures: Sequence[bytes] = ()) -> Any:
        if not signatures:
            c.execute("UPDATE ledger_head SET size = size WHERE id = 1 RETURNING size, chain")
            return c.fetchone()
        marks = ", ".join(["?"] * len(signatures))
        c.execute("UPDATE ledger_head SET size = size WHERE id = 1 RETURNING size, chain, "
                  f"EXISTS (SELECT 1 FROM spent_signatures WHERE signature IN ({marks})) AS spent",
                  list(signatures))
        return c.fetchone()

    _memory_signer = threading.Lock()

    @contextmanager
    def signer_lock(self) -> Iterator[bool]:
        name = self.datastore.pool.db_name
        if self.datastore.pool.is_sqlite_memory_mode:
            held = self._memory_signer.acquire(blocking=False)
            try:
                yield held
            finally:
                if held:
                    self._memory_signer.release()
            return
        with open(f"{name}.signer.lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    WRITER_WAIT_S = 30.0  # how long a writer waits for another process's write to end

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writer_thread_lock = threading.RLock()
        self._writer_file: Any = None
        self._writer_depth = 0  # the lock file is held while > 0 (reentrant, in one thread)

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        with self._writer():
            return super().insert_events(stored_events, **kwargs)

    @contextmanager
    def _writer(self) -> Iterator[None]:
        """Writers of one file take turns on a lock file before SQLite's own write lock.

        SQLite makes a writer that finds the database locked sleep 1, 2, 5, 10 … ms before it
        tries again, which gives server workers sharing a file long stalls. This lock wakes the
        next writer as soon as the last one is done (or within half a millisecond)."""
        if self.datastore.pool.is_sqlite_memory_mode:
            yield
            return
        with self._writer_thread_lock:
            if self._writer_depth:  # already this thread's turn (see exclusive())
                self._writer_depth += 1
                try:
                    yield
                finally:
                    self._writer_depth -= 1
                return
            if self._writer_file is None:
                self._writer_file = open(f"{self.datastore.pool.db_name}.write.lock", "a+")  # noqa: SIM115
            fd = self._writer_file.fileno()
            deadline = time.monotonic() + self.WRITER_WAIT_S
            pause = 0.00005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise OperationalError(f"another process has been writing for more than "
                                               f"{self.WRITER_WAIT_S:.0f} s") from None
                    time.sleep(pause)
                    pause = min(pause * 2, 0.0005)
            self._writer_depth = 1
            try:
                yield
            finally:
                self._writer_depth = 0
                fcntl.flock(fd, fcntl.LOCK_UN)

    def exclusive(self) -> Any:
        return self._writer()

    @contextmanager
    def _write_transaction(self) -> Iterator[Any]:
        with self._writer(), self.datastore.transaction(commit=True) as c:
            yield c

    def _insert_events(self, c: SQLiteCursor, stored_events: Sequence[StoredEvent],
                       **kwargs: Any) -> Sequence[int] | None:
        return self._append(c, stored_events, kwargs.get("read_set") or (), kwargs.get("leaves"),
                            kwargs.get("decided_at"), kwargs.get("signatures") or (),
                            kwargs.get("dated"))


class LedgerPostgresRecorder(LedgerTables, PostgresApplicationRecorder):
    """The production store: the same behaviour under PostgreSQL's table lock."""

    P = "%s"
    POS = "notification_id"

    def __init__(self, datastore: Any, *, events_table_name: str = "stored_events") -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self.sql_create_statements[self.create_table_statement_index] = SQL(
            "CREATE TABLE IF NOT EXISTS {schema}.{table} ("
            "originator_id uuid NOT NULL, originator_version bigint NOT NULL, topic text, "
            "state bytea, notification_id bigint NOT NULL, chain bytea NOT NULL, "
            "PRIMARY KEY (originator_id, originator_version))"
        ).format(schema=Identifier(self.datastore.schema), table=Identifier(self.events_table_name))
        self.sql_create_statements.extend(SQL(s) for s in self.ledger_statements("bytea"))  # type: ignore[arg-type]
        # POSTGRES_ENABLE_DB_FUNCTIONS stays off: do not create the insert function at all.
        del self.sql_create_statements[self.create_insert_function_statement_index]
        self._held = threading.local()  # a connection holding the write lock (exclusive())

    def _t(self, name: str) -> str:
        return f'"{self.datastore.schema}"."{name}"'

    def _oid(self, originator_id: UUID) -> Any:
        return originator_id

    def _id_bytes(self, stored_id: Any) -> bytes:
        return stored_id.bytes

    def _versions(self, c: Any, ids: Sequence[UUID]) -> list[Any]:
        c.execute(f"SELECT originator_id AS id, MAX(originator_version) AS v "
                  f"FROM {self._t(self.events_table_name)} WHERE originator_id = ANY(%s) "
                  f"GROUP BY originator_id", (list(ids),))
        return c.fetchall()  # type: ignore[no-any-return]

    RECORD_BYTES = "state, chain"  # (typed columns: bytea)

    def _record_rows(self, rows: list[tuple[Any, ...]]) -> list[tuple[int, bytes, int, str, bytes, bytes]]:
        id_bytes = self._id_bytes
        return [(position, id_bytes(oid), version, topic, bytes(state), bytes(chain or b""))
                for position, oid, version, topic, state, chain in rows]

    @contextmanager
    def _reading(self, tuples: bool = False) -> Iterator[Any]:
        """Reads straight from the pool: one round trip, not the library's three (BEGIN, the
        query, ROLLBACK) and its per-connection checks; the pool resets the connection."""
        try:
            with self.datastore.pool.connection() as conn, conn.cursor(
                    row_factory=tuple_row if tuples else dict_row) as c:
                yield c
        except psycopg.OperationalError as e:
            raise OperationalError(str(e)) from e

    SCHEMA_LOCK_KEY = 0x636C7363  # ("clsc") serialises schema creation between processes

    def create_table(self) -> None:
        """Create the schema and tables; several processes opening at once take turns."""
        with self.datastore.get_connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (self.SCHEMA_LOCK_KEY,))
            conn.commit()
            try:
                with self.datastore.transaction(commit=True) as c:
                    c.execute(SQL("CREATE SCHEMA IF NOT EXISTS {0}").format(
                        Identifier(self.datastore.schema)))
                super().create_table()
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.SCHEMA_LOCK_KEY,))
                conn.commit()

    def _lock(self, c: Any, notify: bool = True) -> None:
        self._lock_table(c)
        if notify:
            self._notify_channel(c)

    FUSED_ROWS = 1500  # up to this many records, one statement inserts them (9,000 parameters)

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """Three round trips per write: (BEGIN, lock, notify, read the head) as one simple
        query; (insert, move the head, read the read set's versions) as one statement whose
        read sees the table as it was before the insert; COMMIT."""
        if not stored_events:
            return []
        read_set = kwargs.get("read_set") or ()
        held = getattr(self._held, "conn", None)  # this thread's exclusive turn: lock taken
        self._held.conn = None
        with nullcontext(held) if held is not None else self.datastore.get_connection() as conn:
            try:
                ids = self._append_fused(conn, stored_events, read_set, kwargs.get("leaves"),
                                         begun=held is not None,
                                         decided_at=kwargs.get("decided_at"),
                                         signatures=kwargs.get("signatures") or (),
                                         dated=kwargs.get("dated"))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return ids

    def _append_fused(self, conn: Any, stored_events: Sequence[StoredEvent], read_set: ReadSet,
                      leaves: Sequence[bytes] | None, begun: bool = False,
                      decided_at: int | None = None, signatures: Sequence[bytes] = (),
                      dated: Dating | None = None) -> list[int]:
        if len(stored_events) > self.FUSED_ROWS:
            if not begun:
                conn.execute("BEGIN")
            return self._append(conn.cursor(row_factory=dict_row), stored_events, read_set,
                                leaves, decided_at, signatures, dated)
        c = conn.cursor(row_factory=dict_row)
        if begun:  # the lock is held already
            c.execute(self._head_and_end_sql())
        else:
            c.execute(self._begin_sql(conn))
            while c.nextset():
                pass
        row = c.fetchone()
        size, chain = self._head_from(c, row)
        last = self._check_end(size, chain, row, dated is not None)
        stored_events, leaves = self._date_after(stored_events, leaves, last, dated)
        if size == decided_at:  # nothing written since the decision: no version can have moved
            read_set = ()
        rows, ids, size, chain = self._chained_rows(stored_events, size, chain, leaves)
        params: list[Any] = [v for r in rows for v in r]
        values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(rows))
        sql = (f"WITH ins AS (INSERT INTO {self._t(self.events_table_name)} (originator_id, "
               f"originator_version, topic, state, notification_id, chain) VALUES {values}), "
               f"head AS (UPDATE {self._t('ledger_head')} SET size = %s, chain = %s WHERE id = 1) ")
        params += [size, chain]
        # What the statement reads (as the table was before its insert): the read set's latest
        # versions, and a row with v = -1 for any of the signatures that is spent.
        reads = []
        if read_set:
            reads.append(f"SELECT originator_id AS id, MAX(originator_version) AS v "
                         f"FROM {self._t(self.events_table_name)} WHERE originator_id = ANY(%s) "
                         f"GROUP BY originator_id")
            params.append([a for a, _ in read_set])
        if signatures:
            reads.append(f"(SELECT NULL::uuid AS id, -1::bigint AS v "
                         f"FROM {self._t('spent_signatures')} WHERE signature = ANY(%s) LIMIT 1)")
            params.append(list(signatures))
        sql += " UNION ALL ".join(reads) if reads else "SELECT NULL AS id, NULL AS v WHERE false"
        c.execute(sql, params)
        found = c.fetchall()
        if signatures and any(r["v"] == -1 for r in found):
            raise SignatureSpent("a signature of this write was spent by an earlier refusal")
        self._check_read_set(read_set, found)
        return ids

    _begin: str | None = None

    @contextmanager
    def _write_transaction(self) -> Iterator[Any]:
        """In this thread's exclusive turn, its transaction (which holds the lock already and
        ends here, as insert_events ends it); else a new one."""
        held = getattr(self._held, "conn", None)
        self._held.conn = None
        with nullcontext(held) if held is not None else self.datastore.get_connection() as conn:
            try:
                if held is None:
                    conn.execute("BEGIN")
                yield conn.cursor(row_factory=dict_row)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the events table's write lock in an open transaction: no other process writes
        until this thread's next insert_events, which writes in that transaction and commits
        (or until the context ends, which rolls back when nothing was written)."""
        if getattr(self._held, "conn", None) is not None:
            yield
            return
        with self.datastore.get_connection() as conn:  # in autocommit mode, as the pool makes them
            c = conn.cursor(row_factory=dict_row)
            c.execute(self._begin_sql(conn))
            while c.nextset():
                pass
            c.fetchall()
            self._held.conn = conn
            try:
                yield
            finally:
                if self._held.conn is conn:  # nothing was written: let the lock go
                    self._held.conn = None
                    conn.execute("ROLLBACK")

    def _begin_sql(self, conn: Any) -> str:
        if self._begin is None:
            parts = ["BEGIN", *(st.as_string(conn) for st in self.lock_table_statements),
                     SQL("NOTIFY {0}").format(Identifier(self.channel_name)).as_string(conn),
                     self._head_and_end_sql()]
            self._begin = "; ".join(parts)
        return self._begin

    STATE_PREFIX = f"substring(state from 1 for {TIME_PREFIX_BYTES})"

    def max_notification_id(self) -> int | None:
        return self.head()[0]

    @property
    def SIGNER_LOCK_KEY(self) -> int:  # noqa: N802 - a constant per schema
        """An advisory-lock id of our own, one per schema (registries side by side)."""
        return 0x636C6564_00000000 + (zlib.crc32(self.datastore.schema.encode()) & 0x7FFFFFFF)

    @contextmanager
    def signer_lock(self) -> Iterator[bool]:
        with self.datastore.get_connection() as conn:
            row = conn.execute("SELECT pg_try_advisory_lock(%s) AS held",
                               (self.SIGNER_LOCK_KEY,)).fetchone()
            conn.commit()
            held = bool(row["held"])
            try:
                yield held
            finally:
                if held:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (self.SIGNER_LOCK_KEY,))
                    conn.commit()
