"""The regulator's full audit, from a database or from an export file with no database.

One pass over the log, in order:
  * every record's position (no gaps) and its chain value (its bytes, and everything before them);
  * every command: its body canonical, its digest, its actor signature and consents under the keys
    valid at that position, its created time within the window of the record's time, the actor's
    role — and then the command is decided again by the same handlers over the replayed state,
    and the events it yields must equal the recorded ones (so every event is exactly what the
    rules make of a signed command: conservation, no double pledge, caps, all re-checked);
  * every checkpoint: the operator's signature, its root and chain value against the log, its
    state commitment against the replayed state, consistency with the checkpoint before it, and
    every witness cosignature.
Ed25519 verifications are batched to worker processes on every core while the replay runs.
The audit stops at the first broken record and reports the earliest failure found.

Two stages share the work (see ledger.audit_front): the front reads the records, checks their
positions and chain, builds the Merkle tree, decodes the events and makes every check of a command
that needs no state (membership, duplicate ids, canonical body, parse, digest, signature split);
this module replays: signatures against the keys of the moment, the handlers, outcomes, events,
invariants (ledger.audit_state), checkpoints. For long logs the front runs in a reader process
of its own, so that on two cores both stages run at once; the verdicts are the same either way.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

import msgpack
from eventsourcing.utils import resolve_topic

from domain.base import LedgerAggregate, uuid_of_int
from domain.errors import DomainError
from domain.genesis import Genesis
from domain.participant import Participant
from domain.ticket import Ticket
from domain.trade import Trade
from ledger import keys as K
from ledger import merkle
from ledger.audit_front import (
    HELPER_NICENESS,
    End,
    Front,
    FrontProcess,
    Group,
    Item,
    Progress,
    Raise,
    Stop,
    foreign_event,
    lower_priority,
    run_inline,
)
from ledger.audit_state import AuditCommitment, TicketInvariants, TreeProcess
from ledger.authentication import SignatureJob, authenticate
from ledger.checkpoints import COSIGNATURE_PREFIX, Checkpoint, b64
from ledger.handlers import Handlers, UnitOfWork
from ledger.records import RecordRow
from ledger.transcoder import MsgpackTranscoder

EXPORT_FORMAT = "carbon-ledger-export/1"
BATCH = 5000
SIGNATURE_CHUNK = 2000
STATE_MISMATCH = "its state commitment does not match the replayed state"


class LogSource(Protocol):
    def size(self) -> int: ...

    def rows(self) -> Iterator[list[RecordRow]]: ...

    def checkpoints(self) -> list[tuple[int, bytes, bytes]]: ...

    def cosignatures(self) -> list[tuple[int, str, str, bytes]]: ...


class DatabaseSource:
    """The log in a database, up to its size when the source was opened."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder
        self._size = self.recorder.max_notification_id() or 0

    def size(self) -> int:
        return self._size

    def rows(self) -> Iterator[list[RecordRow]]:
        start = 1
        while start <= self._size:
            batch = self.recorder.select_record_rows(start, BATCH, stop=self._size)
            if not batch:
                return
            yield batch
            start = batch[-1][0] + 1

    def checkpoints(self) -> list[tuple[int, bytes, bytes]]:
        return self.recorder.select_checkpoints()

    def cosignatures(self) -> list[tuple[int, str, str, bytes]]:
        return self.recorder.select_cosignatures()

    def forked(self) -> DatabaseSource | None:
        """The same log for a forked reader process, which opens a connection of its own when
        it starts reading (a database connection must not be shared across a fork); None when
        there is no way to open one (an in-memory SQLite database lives in this process only)."""
        recipe = _recorder_recipe(self.recorder)
        if recipe is None:
            return None
        twin = object.__new__(_ForkedDatabaseSource)
        twin.recorder = None
        twin.recipe = recipe
        twin._size = self._size
        return twin


class _ForkedDatabaseSource(DatabaseSource):
    recipe: Callable[[], Any]

    def rows(self) -> Iterator[list[RecordRow]]:
        if self.recorder is None:
            self.recorder = self.recipe()
        yield from super().rows()


def _recorder_recipe(recorder: Any) -> Callable[[], Any] | None:
    """How to make a recorder of the same class over new connections to the same database."""
    from ledger.store import LedgerPostgresRecorder, LedgerSQLiteRecorder

    kind = type(recorder)
    table = recorder.events_table_name
    try:
        datastore = recorder.datastore
        if isinstance(recorder, LedgerSQLiteRecorder):
            pool = datastore.pool
            if pool.is_sqlite_memory_mode:
                return None
            db_name, lock_timeout = pool.db_name, pool.lock_timeout

            def sqlite() -> Any:
                from eventsourcing.sqlite import SQLiteDatastore

                fresh = SQLiteDatastore(db_name, lock_timeout=lock_timeout, pool_size=1,
                                        max_overflow=1)
                return kind(fresh, events_table_name=table)

            return sqlite
        if isinstance(recorder, LedgerPostgresRecorder):
            kw = dict(datastore.pool.kwargs)
            args = (kw["dbname"], kw["host"], kw["port"], kw["user"], kw.get("password") or "")
            schema, id_type = datastore.schema, datastore.originator_id_type

            def postgres() -> Any:
                from eventsourcing.postgres import PostgresDatastore

                fresh = PostgresDatastore(*args, schema=schema, pool_size=1, max_overflow=0,
                                          originator_id_type=id_type)
                return kind(fresh, events_table_name=table)

            return postgres
    except Exception:  # the reader then runs in this process
        return None
    return None


_ITEM_SHAPES = {"r": (int, bytes, int, str, bytes, bytes), "c": (int, bytes, bytes),
                "w": (int, str, str, bytes), "end": (int,)}


class ExportSource:
    """An export file: a msgpack stream of a header, records, checkpoints, cosignatures and an
    end marker that counts the records. Anything else — a damaged item, a missing end, a count
    that differs from the header's size, bytes after the end — refuses the whole file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.header: dict[str, Any] = {}
        self._checkpoints: list[tuple[int, bytes, bytes]] = []
        self._cosignatures: list[tuple[int, str, str, bytes]] = []
        self._size = 0
        ended = False
        for item in self._items():
            if ended:
                self._damaged("there are items after the end marker")
            if item[0] == "c":
                self._checkpoints.append((item[1], item[2], item[3]))
            elif item[0] == "w":
                self._cosignatures.append((item[1], item[2], item[3], item[4]))
            elif item[0] == "r":
                self._size += 1
            elif item[0] == "end":
                ended = True
                if item[1] != self._size:
                    self._damaged(f"the end marker counts {item[1]} records, the file holds "
                                  f"{self._size}")
        if not ended:
            self._damaged("it has no end marker: the file was cut short")
        if self.header.get("size") != self._size:
            self._damaged(f"the header announces {self.header.get('size')} records, the file "
                          f"holds {self._size}")

    def _damaged(self, why: str) -> None:
        raise DomainError("invalid_argument", f"{self.path} is not a carbon-ledger export, or is a "
                          f"damaged one: {why}")

    def _items(self) -> Iterator[Any]:
        """Every item after the header, type-checked; the header is read into self.header."""
        try:
            with open(self.path, "rb") as f:
                unpacker = msgpack.Unpacker(f, raw=False, max_buffer_size=256 * 1024 * 1024)
                first = True
                for item in unpacker:
                    if first:
                        if not isinstance(item, dict) or item.get("format") != EXPORT_FORMAT:
                            self._damaged("it does not begin with a carbon-ledger export header")
                        self.header = item
                        first = False
                        continue
                    if (not isinstance(item, list) or not item or type(item[0]) is not str
                            or item[0] not in _ITEM_SHAPES
                            or len(item) != len(_ITEM_SHAPES[item[0]]) + 1
                            or not all(type(v) is t for v, t in zip(item[1:], _ITEM_SHAPES[item[0]],
                                                                     strict=True))):
                        self._damaged(f"an item is malformed ({str(item)[:60]})")
                    yield item
                if first:
                    self._damaged("it is empty")
                if unpacker.tell() != f.seek(0, 2):
                    self._damaged("its last item is cut short")
        except OSError as e:
            raise DomainError("invalid_argument", f"cannot read {self.path}: {e.strerror}") from None
        except (ValueError, msgpack.UnpackException) as e:
            self._damaged(str(e))

    def size(self) -> int:
        return self._size

    def rows(self) -> Iterator[list[RecordRow]]:
        batch: list[RecordRow] = []
        for item in self._items():
            if item[0] == "r":
                batch.append(tuple(item[1:]))  # type: ignore[arg-type]
                if len(batch) >= BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def checkpoints(self) -> list[tuple[int, bytes, bytes]]:
        return sorted(self._checkpoints)

    def forked(self) -> ExportSource:
        return self  # a forked reader opens the file again

    def cosignatures(self) -> list[tuple[int, str, str, bytes]]:
        return list(self._cosignatures)


def export(recorder: Any, path: Path, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write a self-contained audit file: records with chain values, checkpoints, cosignatures."""
    source = DatabaseSource(recorder)
    total = source.size()
    count = 0
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        packer = msgpack.Packer(use_bin_type=True)
        f.write(packer.pack({"format": EXPORT_FORMAT, "size": total,
                             "exported_at": int(time.time())}))
        for batch in source.rows():
            for position, oid, version, topic, state, chain in batch:
                f.write(packer.pack(["r", position, oid, version, topic, state, chain]))
                count += 1
            if progress:
                progress(count, total)
        for size, body, sig in source.checkpoints():
            if size <= total:
                f.write(packer.pack(["c", size, body, sig]))
        for size, witness, kid, sig in source.cosignatures():
            if size <= total:
                f.write(packer.pack(["w", size, witness, kid, sig]))
        f.write(packer.pack(["end", count]))
    tmp.replace(path)
    return {"file": str(path), "records": count, "bytes": path.stat().st_size}


# Signature verification on every core ------------------------------------------------------------

def _verify_chunk(jobs: list[tuple[bytes, bytes, bytes, int, str]]) -> list[tuple[int, str]]:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    failed = []
    cache: dict[bytes, Ed25519PublicKey] = {}
    for raw, signature, message, position, what in jobs:
        key = cache.get(raw)
        if key is None:
            key = cache[raw] = Ed25519PublicKey.from_public_bytes(raw)
        try:
            key.verify(signature, message)
        except InvalidSignature:
            failed.append((position, what))
    return failed


class SignatureBatcher:
    """Queues Ed25519 verifications and runs them in chunks on worker processes."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pending: list[tuple[bytes, bytes, bytes, int, str]] = []
        self.futures: list[Future[list[tuple[int, str]]]] = []
        self.pool: ProcessPoolExecutor | None = None
        self.count = 0
        self.failures: list[tuple[int, str]] = []

    def add(self, public_key: str, signature: bytes, message: bytes, position: int, what: str) -> None:
        self.pending.append((K.raw_public(public_key), signature, message, position, what))
        self.count += 1
        if len(self.pending) >= SIGNATURE_CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        chunk, self.pending = self.pending, []
        if self.workers <= 1:
            self.failures.extend(_verify_chunk(chunk))
            return
        if self.pool is None:
            self.pool = ProcessPoolExecutor(self.workers, mp_context=get_context("fork"),
                                            initializer=lower_priority,
                                            initargs=(HELPER_NICENESS,))
        self.futures.append(self.pool.submit(_verify_chunk, chunk))

    def finish(self) -> list[tuple[int, str]]:
        self._flush()
        for fut in self.futures:
            self.failures.extend(fut.result())
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
        return sorted(self.failures)

    def close(self) -> None:
        """Stop the workers, if the audit ended without finish() (an exception)."""
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None


# The audit -------------------------------------------------------------------------------------

@dataclass
class Failure:
    position: int
    what: str

    def __str__(self) -> str:
        return f"position {self.position}: {self.what}"


@dataclass
class AuditReport:
    ok: bool = True
    records: int = 0
    commands: int = 0
    signatures: int = 0
    checkpoints: int = 0
    cosignatures: int = 0
    seconds: float = 0.0
    root: str = ""
    state_root: str = ""
    origin: str = ""
    operator_key: str = ""
    operator_key_pinned: bool = False
    failure: Failure | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def events_per_s(self) -> int:
        return int(self.records / self.seconds) if self.seconds > 0 else 0

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "commands": self.commands,
                "signatures": self.signatures, "checkpoints": self.checkpoints,
                "cosignatures": self.cosignatures, "seconds": round(self.seconds, 3),
                "events_per_s": self.events_per_s, "root": self.root, "state_root": self.state_root,
                "origin": self.origin, "operator_key": self.operator_key,
                "operator_key_pinned": self.operator_key_pinned,
                "failure": None if self.failure is None else {
                    "position": self.failure.position, "what": self.failure.what},
                "notes": self.notes}


class _Stop(Exception):
    def __init__(self, position: int, what: str, tree_size: int | None = None) -> None:
        super().__init__(what)
        self.failure = Failure(position, what)
        self.tree_size = tree_size


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: what a value looks like after a round trip through the store."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, set):
        return sorted(value)
    return value


def _taken_trade_id() -> Trade:
    """What the replay keeps of a settled trade (see Auditor._replay_command)."""
    mark = object.__new__(Trade)
    mark.__dict__.update(_id=None, _version=1, _pending_events=[])
    return mark


_SETTLED = _taken_trade_id()
_NO_ID = object()

READER_MIN_RECORDS = 20_000  # below this, extra processes (a reader, signature workers) cost more than they save

class Auditor:
    """The full audit of a log source (see the module's docstring).

    `reader`: True to read, hash, decode and parse the log in a reader process of its own while
    this one replays (`ledger.audit_front`), False to do it all in this process; by default a
    reader process is used when the machine has more than one core and the log has more than
    READER_MIN_RECORDS records. Either way the source must be one that can be read from a
    child process (`forked()`), or the reading stays in this process."""

    def __init__(self, operator_key: str | None = None, workers: int | None = None,
                 progress: Callable[[int, int], None] | None = None, *,
                 reader: bool | None = None) -> None:
        self.pinned_key = operator_key
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        self.progress = progress
        self.reader = reader
        self._transcoder = MsgpackTranscoder()
        self._pack = self._transcoder.packer().pack  # encode(), for the replay's one thread
        self._classes: dict[str, type] = {}
        self._checks: dict[type, bool] = {}  # whether a class has invariants of its own
        # participants and tickets by id and number, for every unit of work of one replay (it
        # changes them in place, and its state never has another object for their ids); new
        # for each run
        self._known: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
        self.handlers = Handlers().table()
        self.used_reader_process = False

    def run(self, source: LogSource) -> AuditReport:
        paused = gc.isenabled()  # a replay's objects live on: see Projection.catch_up
        if paused:
            gc.disable()
        try:
            return self._run(source)
        finally:
            if paused:
                gc.enable()

    def _front(self, source: LogSource, total: int,
               checkpoints: list[tuple[int, bytes, bytes]]) -> tuple[Any, Iterator[Item]]:
        """The front stage: in a reader process when that is wanted and possible."""
        wanted = self.reader if self.reader is not None else (
            total > READER_MIN_RECORDS and (os.cpu_count() or 1) > 1)
        forked = getattr(source, "forked", None)
        if wanted and forked is not None:
            child_source = forked()
            if child_source is not None:
                process = FrontProcess(child_source, checkpoints)
                self.used_reader_process = True
                return process, process.items()
        front = Front(checkpoints)
        return front, run_inline(front, source.rows())

    def _run(self, source: LogSource) -> AuditReport:
        started = time.perf_counter()
        report = AuditReport(operator_key_pinned=self.pinned_key is not None)
        total = source.size()
        if self.pinned_key is not None:
            K.raw_public(self.pinned_key)
        sigs = SignatureBatcher(self.workers if total > READER_MIN_RECORDS else 1)
        state: dict[UUID, LedgerAggregate] = {}
        self._known = ({}, {})
        tickets = TicketInvariants()
        commitment = AuditCommitment(tickets)
        checkpoints = source.checkpoints()
        cosignatures: dict[int, list[tuple[str, str, bytes]]] = {}
        for size, witness, kid, sig in source.cosignatures():
            cosignatures.setdefault(size, []).append((witness, kid, sig))
        next_cp = 0
        prev_cp: Checkpoint | None = None
        genesis: Genesis | None = None
        at = 0  # the position the replay has reached (the tree's size, had it been built here)
        front, items = self._front(source, total, checkpoints)
        if self.used_reader_process and checkpoints:
            # the checkpoints' state commitments are checked in a process of their own too
            commitment.tree = TreeProcess()
        try:
            try:
                for item in items:
                    kind = type(item)
                    if kind is Group:
                        at = item.position
                        try:
                            self._replay_command(item, state, commitment, tickets, sigs)
                            if genesis is None:
                                genesis = state.get(Genesis.id_for())  # type: ignore[assignment]
                                self._check_genesis(genesis, at, report)
                            report.commands += 1
                            # The front listed every checkpoint up to this command, in order:
                            # None for one that does not end here.
                            for found in item.checkpoints:
                                size, body, signature = checkpoints[next_cp]
                                if found is None:
                                    raise _Stop(size, f"the checkpoint at size {size} does not "
                                                "end at a command boundary")
                                assert genesis is not None
                                prev_cp = self._check_checkpoint(
                                    body, signature, size, found, commitment, prev_cp, genesis,
                                    state, cosignatures.get(size, []), sigs, report)
                                next_cp += 1
                        except Exception:
                            self._check_unread(item)  # an earlier failure of its own events
                            raise
                    elif kind is Progress:
                        report.records = item.position
                        if self.progress:
                            self.progress(item.position, total)
                    elif kind is Stop:
                        raise _Stop(item.position, item.what, item.tree_size)
                    elif kind is Raise:
                        raise item.error
                    elif kind is End:
                        at = item.position
                        if item.open_group:
                            raise _Stop(item.open_group, "the log ends inside a command: its events "
                                        "are not followed by the command's record (a half-written "
                                        "or truncated tail)")
                        if next_cp < len(checkpoints):
                            size = checkpoints[next_cp][0]
                            raise _Stop(at + 1, f"the log has {at} records but a checkpoint was "
                                        f"signed at size {size}: records after {at} were removed")
            except _Stop as stop:
                report.failure = stop.failure
                report.records = max(stop.failure.position - 1, 0)
                if stop.tree_size is not None:
                    at = stop.tree_size
            failures = sigs.finish()
            report.root = b64(front.root_at(at))
            report.state_root = b64(commitment.root())
            failures = sorted(failures + [(size, f"checkpoint at size {size}: {STATE_MISMATCH}")
                                          for size in commitment.tree.mismatches()])
        finally:
            commitment.tree.close()
            sigs.close()
            if isinstance(front, FrontProcess):
                front.close()
        report.signatures = sigs.count
        if failures:
            pos, what = failures[0]
            if report.failure is None or pos <= report.failure.position:
                report.failure = Failure(pos, what)
        report.ok = report.failure is None
        if genesis is not None:
            report.origin, report.operator_key = genesis.origin, genesis.operator_key
        if not report.operator_key_pinned:
            report.notes.append("the operator key was taken from the log's genesis record; pass "
                                "--operator-key to pin it")
        report.seconds = time.perf_counter() - started
        return report

    def _class(self, topic: str) -> type:
        cls = self._classes.get(topic)
        if cls is None:  # the front let only the registry's own event classes through
            cls = self._classes[topic] = resolve_topic(topic)
        return cls

    def _check_genesis(self, genesis: Genesis | None, position: int, report: AuditReport) -> None:
        if genesis is None:
            raise _Stop(position, "the log does not begin with the registry's genesis record")
        if self.pinned_key is not None and genesis.operator_key != self.pinned_key:
            raise _Stop(position, "the genesis record pins another operator key than the one "
                        f"given ({genesis.operator_key} instead of {self.pinned_key})")

    def _replay_command(self, g: Group, state: dict[UUID, LedgerAggregate],
                        commitment: AuditCommitment, tickets: TicketInvariants,
                        sigs: SignatureBatcher) -> None:
        """Decide the command again over the replayed state; its outcome and events must be the
        recorded ones. (The checks that need no state were made by the front.)"""
        record_pos = g.position
        cid = g.command_id
        command = g.command
        try:
            # decided in place: the log is replayed, not trusted
            uow = UnitOfWork(state.get, self._known)

            def queue(job: SignatureJob) -> None:
                sigs.add(job.public_key, job.signature, job.message, record_pos,
                         f"the signature by {job.signer} with key {job.key_id} on command {cid} "
                         "does not verify")

            authenticate(uow, command, g.signed, g.actor_sig, g.consents, now=g.now, verify=queue,
                         checked=g.checked)
            outcome = self.handlers[command.name](uow, command)
        except DomainError as e:
            name, actor = g.name, g.actor
            if isinstance(name, BaseException):
                raise name from None
            if isinstance(actor, BaseException):
                raise actor from None
            raise _Stop(record_pos, f"command {cid} ({name} by {actor}) does not stand up to the "
                        f"rules: {e.code}: {e.message}") from None
        expected_outcome = {"command_id": command.command_id, "command": command.name, **outcome}
        recorded_outcome = g.outcome
        if isinstance(recorded_outcome, BaseException):
            raise recorded_outcome
        encode = self._pack
        same = False
        if type(recorded_outcome) is bytes:
            try:
                same = encode(expected_outcome) == recorded_outcome
            except Exception:
                same = False
            if not same:
                try:
                    recorded_outcome = self._transcoder.decode(recorded_outcome)
                except Exception as e:  # the front left the outcome to the replay to decode
                    raise _Stop(record_pos, f"the record cannot be decoded: {e}") from None
        else:
            recorded_outcome = recorded_outcome[1]
        if (not same and expected_outcome != recorded_outcome
                and _plain(expected_outcome) != _plain(recorded_outcome)):
            raise _Stop(record_pos, f"the recorded outcome of command {cid} differs from what the "
                        "rules give")
        changed = uow.changed()
        produced: list[Any] = []
        for agg in changed:  # agg.collect_events(), which pops its events one by one
            pending = agg.__dict__
            produced += pending["_pending_events"]
            pending["_pending_events"] = []
        recorded = g.events
        first = g.first
        if len(produced) != len(recorded):
            raise _Stop(first, f"command {cid} should have recorded {len(produced)} events; the log "
                        f"has {len(recorded)}")
        classes = self._classes
        timed = []  # (event, the recorded time that state keeps): see below
        i = 0
        for want, (topic, oid, version, norm, when) in zip(produced, recorded, strict=True):
            if when is not None:
                timed.append((want, when))
            cls = classes.get(topic) or self._class(topic)
            try:
                fields = dict(want.__dict__)
                if (type(want) is cls and fields.pop("originator_version") == version
                        and fields.pop("originator_id").int == oid):
                    fields.pop("timestamp", None)
                    if encode(fields) == norm:
                        i += 1
                        continue
            except Exception:
                pass
            if type(want) is not cls or not self._same_as_recorded(want, oid, version, norm):
                raise _Stop(first + i, f"the event is not what command {cid} yields under the "
                            f"rules (expected {type(want).__qualname__} of version "
                            f"{want.originator_version})")
            i += 1
        # Each changed aggregate's invariants hold, and the state commitment notes it (a trade
        # is not committed to).
        checks = self._checks
        for agg in changed:
            kind = type(agg)
            try:
                if kind is Ticket:
                    commitment.touch(agg, tickets.check(agg))
                    continue
                own = checks.get(kind)
                if own is None:
                    own = checks[kind] = (kind.check_invariants
                                          is not LedgerAggregate.check_invariants)
                if own:
                    agg.check_invariants()
            except AssertionError as e:
                raise _Stop(record_pos, f"an invariant breaks after command {cid}: {e}") from None
            if kind is not Trade:
                commitment.touch(agg)
        # The decision changed the state in place, with events equal to the recorded ones but for
        # their times: put in the recorded times where state keeps them (when a key became valid).
        # Any other difference would show at the next checkpoint's state commitment.
        for want, when in timed:
            if isinstance(when, BaseException):
                raise when
            agg = state.get(want.originator_id) or next(
                a for a in uow.created if a.id == want.originator_id)
            key_id = want.key_id if isinstance(want, Participant.Registered) else want.new_key_id
            agg.keys[key_id]["valid_from"] = when
        for agg in uow.created:  # the others were changed in place, where state has them
            # No rule reads a trade again but to see that its id is taken (a retried trade id
            # is refused): the replay keeps that, not the trade, and saves the memory.
            state[agg.__dict__["_id"]] = _SETTLED if type(agg) is Trade else agg

    def _check_unread(self, g: Group) -> None:
        """Stop at the first of the command's events that does not decode, or that belongs to
        another command: what the front finds when it reads an event, for the events it left
        unread (ledger.audit_front._unread). A replay that goes through has shown both for
        every event; one that fails calls this first, so that the earlier failure is named."""
        for i, (_topic, _oid, _version, norm, _when) in enumerate(g.events):
            if type(norm) is not bytes:
                continue
            position = g.first + i
            try:
                fields = self._transcoder.decode(norm)
                if not isinstance(fields, dict):
                    raise ValueError("the state is not a map")
            except Exception as e:
                raise _Stop(position, f"the record cannot be decoded: {e}", position) from None
            if fields.get("command_id", _NO_ID) != g.command_id:
                raise _Stop(position, foreign_event(fields.get("command_id", "?"), g.command_id),
                            g.position)

    def _same_as_recorded(self, want: Any, oid: int, version: int, norm: Any) -> bool:
        """The one-pass audit's comparison of a produced event with the recorded one."""
        got = self._transcoder.decode(norm) if type(norm) is bytes else dict(norm[1])
        got["originator_id"] = uuid_of_int(oid)
        got["originator_version"] = version
        a = dict(vars(want))
        a.pop("timestamp", None)
        got.pop("timestamp", None)
        return a == got or _plain(a) == _plain(got)

    def _check_checkpoint(self, body: bytes, signature: bytes, size: int,
                          found: tuple[bytes, bytes | None, Any],
                          commitment: AuditCommitment, prev: Checkpoint | None, genesis: Genesis,
                          state: dict[UUID, LedgerAggregate], cosigs: list[tuple[str, str, bytes]],
                          sigs: SignatureBatcher, report: AuditReport) -> Checkpoint:
        root, chain, proof = found
        if chain is None:  # a size listed twice: its chain value went to the first
            raise KeyError(size)
        try:
            cp = Checkpoint.parse(body)
        except DomainError as e:
            raise _Stop(size, f"checkpoint at size {size}: {e.message}") from None
        where = f"checkpoint at size {size}"
        if cp.size != size or cp.origin != genesis.origin:
            raise _Stop(size, f"{where} names another size or origin")
        if cp.root != root:
            raise _Stop(size, f"{where}: its root does not match the log's records")
        if cp.chain != chain:
            raise _Stop(size, f"{where}: its chain value does not match the log's")
        if not commitment.matches(cp.state_root, size):
            raise _Stop(size, f"{where}: {STATE_MISMATCH}")
        if prev is not None:
            if cp.time < prev.time:
                raise _Stop(size, f"{where} is dated before the checkpoint at size {prev.size}")
            if isinstance(proof, BaseException):
                raise proof
            if not merkle.verify_consistency(prev.size, size, proof, prev.root, cp.root):
                raise _Stop(size, f"{where} is not consistent with the checkpoint at size {prev.size}")
        sigs.add(genesis.operator_key, signature, body, size,
                 f"{where} is not signed by the operator key")
        report.checkpoints += 1
        for witness, kid, cosig in cosigs:
            participant = state.get(Participant.id_for(witness))
            if not isinstance(participant, Participant) or participant.role != "regulator":
                raise _Stop(size, f"{where} is cosigned by {witness}, who is not a regulator")
            key = participant.keys.get(kid)
            if key is None:
                raise _Stop(size, f"{where} is cosigned by {witness} with a key it never had")
            sigs.add(key["public_key"], cosig, COSIGNATURE_PREFIX + body, size,
                     f"{where}: the cosignature by {witness} does not verify")
            report.cosignatures += 1
        return cp


def audit_database(recorder: Any, operator_key: str | None = None, workers: int | None = None,
                   progress: Callable[[int, int], None] | None = None) -> AuditReport:
    return Auditor(operator_key, workers, progress).run(DatabaseSource(recorder))


def audit_export(path: Path, operator_key: str, workers: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> AuditReport:
    return Auditor(operator_key, workers, progress).run(ExportSource(path))
