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

from domain import commands as C
from domain.base import LedgerAggregate
from domain.command import CommandRecord
from domain.errors import DomainError
from domain.genesis import Genesis
from domain.participant import Participant
from ledger import keys as K
from ledger import merkle
from ledger.authentication import SignatureJob, authenticate, split_signatures
from ledger.checkpoints import COSIGNATURE_PREFIX, Checkpoint, b64
from ledger.commitments import StateCommitment
from ledger.handlers import Handlers, UnitOfWork
from ledger.records import GENESIS_CHAIN, Record, next_chain
from ledger.signing import Signature, SignedCommand, parse_canonical
from ledger.transcoder import MsgpackTranscoder

EXPORT_FORMAT = "carbon-ledger-export/1"
BATCH = 5000
SIGNATURE_CHUNK = 2000


class LogSource(Protocol):
    def size(self) -> int: ...

    def records(self) -> Iterator[list[Record]]: ...

    def checkpoints(self) -> list[tuple[int, bytes, bytes]]: ...

    def cosignatures(self) -> list[tuple[int, str, str, bytes]]: ...


class DatabaseSource:
    """The log in a database, up to its size when the source was opened."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder
        self._size = self.recorder.max_notification_id() or 0

    def size(self) -> int:
        return self._size

    def records(self) -> Iterator[list[Record]]:
        start = 1
        while start <= self._size:
            batch = self.recorder.select_records(start, BATCH, stop=self._size)
            if not batch:
                return
            yield batch
            start = batch[-1].position + 1

    def checkpoints(self) -> list[tuple[int, bytes, bytes]]:
        return self.recorder.select_checkpoints()

    def cosignatures(self) -> list[tuple[int, str, str, bytes]]:
        return self.recorder.select_cosignatures()


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
                    if (not isinstance(item, list) or not item or item[0] not in _ITEM_SHAPES
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

    def records(self) -> Iterator[list[Record]]:
        batch: list[Record] = []
        for item in self._items():
            if item[0] == "r":
                _, pos, oid, version, topic, state, chain = item
                batch.append(Record(pos, UUID(bytes=oid), version, topic, state, chain))
                if len(batch) >= BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def checkpoints(self) -> list[tuple[int, bytes, bytes]]:
        return sorted(self._checkpoints)

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
        for batch in source.records():
            for r in batch:
                f.write(packer.pack(["r", r.position, r.originator_id.bytes, r.originator_version,
                                     r.topic, r.state, r.chain]))
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
            self.pool = ProcessPoolExecutor(self.workers, mp_context=get_context("fork"))
        self.futures.append(self.pool.submit(_verify_chunk, chunk))

    def finish(self) -> list[tuple[int, str]]:
        self._flush()
        for fut in self.futures:
            self.failures.extend(fut.result())
        if self.pool is not None:
            self.pool.shutdown()
        return sorted(self.failures)


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
    def __init__(self, position: int, what: str) -> None:
        super().__init__(what)
        self.failure = Failure(position, what)


def _fork(state: dict[UUID, LedgerAggregate], aggregate_id: UUID) -> LedgerAggregate | None:
    agg = state.get(aggregate_id)
    return agg.fork() if agg is not None else None


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: what a value looks like after a round trip through the store."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, set):
        return sorted(value)
    return value


def _same_fields(want: Any, got: Any) -> bool:
    """Equal attributes but for the time (tuples and lists are the same after the store)."""
    a, b = dict(vars(want)), dict(vars(got))
    a.pop("timestamp", None)
    b.pop("timestamp", None)
    return a == b or _plain(a) == _plain(b)


class Auditor:
    def __init__(self, operator_key: str | None = None, workers: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.pinned_key = operator_key
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        self.progress = progress
        self._transcoder = MsgpackTranscoder()
        self._classes: dict[str, type] = {}
        self.handlers = Handlers().table()

    def run(self, source: LogSource) -> AuditReport:
        paused = gc.isenabled()  # a replay's objects live on: see Projection.catch_up
        if paused:
            gc.disable()
        try:
            return self._run(source)
        finally:
            if paused:
                gc.enable()

    def _run(self, source: LogSource) -> AuditReport:
        started = time.perf_counter()
        report = AuditReport(operator_key_pinned=self.pinned_key is not None)
        total = source.size()
        if self.pinned_key is not None:
            K.raw_public(self.pinned_key)
        sigs = SignatureBatcher(self.workers if total > 20_000 else 1)
        state: dict[UUID, LedgerAggregate] = {}
        commitment = StateCommitment()
        tree = merkle.MerkleTree()
        checkpoints = source.checkpoints()
        cosignatures: dict[int, list[tuple[str, str, bytes]]] = {}
        for size, witness, kid, sig in source.cosignatures():
            cosignatures.setdefault(size, []).append((witness, kid, sig))
        next_cp = 0
        prev_cp: Checkpoint | None = None
        chain = GENESIS_CHAIN
        chains: dict[int, bytes] = {}
        cp_sizes = {c[0] for c in checkpoints}
        group: list[tuple[Record, Any]] = []
        seen_commands: set[str] = set()
        genesis: Genesis | None = None
        position = 0
        try:
            for batch in source.records():
                for record in batch:
                    expected = position + 1
                    if record.position != expected:
                        raise _Stop(expected, f"record {expected} is missing (the next record is "
                                    f"{record.position}): records were deleted or reordered")
                    position = record.position
                    leaf = record.leaf_hash()
                    chain = next_chain(chain, leaf)
                    if record.chain != chain:
                        raise _Stop(position, "the record does not match the hash chain: its bytes "
                                    "were altered, or records were inserted, deleted or reordered")
                    tree.append(leaf)
                    if position in cp_sizes:
                        chains[position] = chain
                    event = self._decode(record)
                    group.append((record, event))
                    if isinstance(event, CommandRecord.Accepted):
                        self._replay_command(group, state, commitment, sigs, seen_commands, report)
                        if genesis is None:
                            genesis = state.get(Genesis.id_for())  # type: ignore[assignment]
                            self._check_genesis(genesis, position, report)
                        group = []
                        report.commands += 1
                        while next_cp < len(checkpoints) and checkpoints[next_cp][0] <= position:
                            size, body, signature = checkpoints[next_cp]
                            if size != position:
                                raise _Stop(size, f"the checkpoint at size {size} does not end at a "
                                            "command boundary")
                            assert genesis is not None
                            prev_cp = self._check_checkpoint(
                                body, signature, size, tree, chains.pop(size), commitment, prev_cp,
                                genesis, state, cosignatures.get(size, []), sigs, report)
                            next_cp += 1
                report.records = position
                if self.progress:
                    self.progress(position, total)
            if group:
                raise _Stop(group[0][0].position, "the log ends inside a command: its events are "
                            "not followed by the command's record (a half-written or truncated tail)")
            if next_cp < len(checkpoints):
                size = checkpoints[next_cp][0]
                raise _Stop(position + 1, f"the log has {position} records but a checkpoint was "
                            f"signed at size {size}: records after {position} were removed")
        except _Stop as stop:
            report.failure = stop.failure
            report.records = max(stop.failure.position - 1, 0)
        failures = sigs.finish()
        report.signatures = sigs.count
        if failures:
            pos, what = failures[0]
            if report.failure is None or pos <= report.failure.position:
                report.failure = Failure(pos, what)
        report.ok = report.failure is None
        report.root = b64(tree.root_at(tree.size)) if tree.size else b64(merkle.EMPTY_ROOT)
        report.state_root = b64(commitment.root())
        if genesis is not None:
            report.origin, report.operator_key = genesis.origin, genesis.operator_key
        if not report.operator_key_pinned:
            report.notes.append("the operator key was taken from the log's genesis record; pass "
                                "--operator-key to pin it")
        report.seconds = time.perf_counter() - started
        return report

    def _decode(self, record: Record) -> Any:
        try:
            cls = self._classes.get(record.topic)
            if cls is None:
                # Only the registry's own event classes: an export file must not make the
                # auditor import whatever module it names.
                if not record.topic.startswith("domain.") or ":" not in record.topic:
                    raise ValueError(f"unknown topic {record.topic[:80]!r}")
                cls = self._classes[record.topic] = resolve_topic(record.topic)
                if not isinstance(cls, type) or not issubclass(cls, LedgerAggregate.Event):
                    raise ValueError(f"{record.topic[:80]!r} is not a ledger event")
                if getattr(cls, "class_version", 1) > 1:
                    raise ValueError(f"{record.topic} has versions the auditor cannot upcast")
            fields = self._transcoder.decode(record.state)
            if not isinstance(fields, dict):
                raise ValueError("the state is not a map")
            fields["originator_id"] = record.originator_id
            fields["originator_version"] = record.originator_version
            event = object.__new__(cls)
            object.__setattr__(event, "__dict__", fields)
            return event
        except Exception as e:  # a record the registry could not have written
            raise _Stop(record.position, f"the record cannot be decoded: {e}") from None

    def _check_genesis(self, genesis: Genesis | None, position: int, report: AuditReport) -> None:
        if genesis is None:
            raise _Stop(position, "the log does not begin with the registry's genesis record")
        if self.pinned_key is not None and genesis.operator_key != self.pinned_key:
            raise _Stop(position, "the genesis record pins another operator key than the one "
                        f"given ({genesis.operator_key} instead of {self.pinned_key})")

    def _replay_command(self, group: list[tuple[Record, Any]], state: dict[UUID, LedgerAggregate],
                        commitment: StateCommitment, sigs: SignatureBatcher,
                        seen_commands: set[str], report: AuditReport) -> None:
        record_pos, record_event = group[-1][0].position, group[-1][1]
        first = group[0][0].position
        cid = record_event.command_id
        for rec, ev in group[:-1]:
            if getattr(ev, "command_id", None) != cid or isinstance(ev, CommandRecord.Accepted):
                raise _Stop(rec.position, f"the event belongs to command {getattr(ev, 'command_id', '?')}"
                            f" but is recorded inside command {cid}")
        if cid in seen_commands:
            raise _Stop(record_pos, f"command id {cid} is recorded twice")
        seen_commands.add(cid)
        try:
            body = bytes(record_event.body)
            command = C.parse(parse_canonical(body))
            if command.command_id != cid or command.actor != record_event.actor:
                raise DomainError("bad_signature", "the record's command id or actor differs from "
                                  "its signed body")
            if command.digest() != record_event.digest:
                raise DomainError("bad_signature", "the record's digest differs from its body")
            signed = SignedCommand(body=body, method=record_event.method, path=record_event.path,
                                   signatures=tuple(Signature.from_record(s)
                                                    for s in record_event.signatures))
            uow = UnitOfWork(state.get)  # decided in place: the log is replayed, not trusted
            actor_sig, consents = split_signatures(command, signed)
            now = int(record_event.timestamp.timestamp())

            def queue(job: SignatureJob) -> None:
                sigs.add(job.public_key, job.signature, job.message, record_pos,
                         f"the signature by {job.signer} with key {job.key_id} on command {cid} "
                         "does not verify")

            authenticate(uow, command, signed, actor_sig, consents, now=now, verify=queue)
            outcome = self.handlers[command.name](uow, command)
        except DomainError as e:
            raise _Stop(record_pos, f"command {cid} ({record_event.name} by {record_event.actor}) "
                        f"does not stand up to the rules: {e.code}: {e.message}") from None
        expected_outcome = {"command_id": command.command_id, "command": command.name, **outcome}
        if (expected_outcome != record_event.outcome
                and _plain(expected_outcome) != _plain(record_event.outcome)):
            raise _Stop(record_pos, f"the recorded outcome of command {cid} differs from what the "
                        "rules give")
        changed = uow.changed()
        produced = [e for agg in changed for e in agg.collect_events()]
        recorded = [ev for _, ev in group[:-1]]
        if len(produced) != len(recorded):
            raise _Stop(first, f"command {cid} should have recorded {len(produced)} events; the log "
                        f"has {len(recorded)}")
        for i, (want, got) in enumerate(zip(produced, recorded, strict=True)):
            if type(want) is not type(got) or not _same_fields(want, got):
                raise _Stop(first + i, f"the event is not what command {cid} yields under the rules "
                            f"(expected {type(want).__qualname__} of version {want.originator_version})")
        for agg in changed:
            try:
                agg.check_invariants()
            except AssertionError as e:
                raise _Stop(record_pos, f"an invariant breaks after command {cid}: {e}") from None
        # The decision changed the state in place, with events equal to the recorded ones but for
        # their times: put in the recorded times where state keeps them (when a key became valid).
        # Any other difference would show at the next checkpoint's state commitment.
        for ev in recorded:
            if isinstance(ev, (Participant.Registered, Participant.KeyRotated)):
                agg = state.get(ev.originator_id) or next(
                    a for a in uow.created if a.id == ev.originator_id)
                key_id = ev.key_id if isinstance(ev, Participant.Registered) else ev.new_key_id
                agg.keys[key_id]["valid_from"] = int(ev.timestamp.timestamp())
        for agg in changed:
            state[agg.id] = agg
            commitment.touch(agg)

    def _check_checkpoint(self, body: bytes, signature: bytes, size: int, tree: merkle.MerkleTree,
                          chain: bytes, commitment: StateCommitment, prev: Checkpoint | None,
                          genesis: Genesis, state: dict[UUID, LedgerAggregate],
                          cosigs: list[tuple[str, str, bytes]], sigs: SignatureBatcher,
                          report: AuditReport) -> Checkpoint:
        try:
            cp = Checkpoint.parse(body)
        except DomainError as e:
            raise _Stop(size, f"checkpoint at size {size}: {e.message}") from None
        where = f"checkpoint at size {size}"
        if cp.size != size or cp.origin != genesis.origin:
            raise _Stop(size, f"{where} names another size or origin")
        if cp.root != tree.root_at(size):
            raise _Stop(size, f"{where}: its root does not match the log's records")
        if cp.chain != chain:
            raise _Stop(size, f"{where}: its chain value does not match the log's")
        if cp.state_root != commitment.root():
            raise _Stop(size, f"{where}: its state commitment does not match the replayed state")
        if prev is not None:
            if cp.time < prev.time:
                raise _Stop(size, f"{where} is dated before the checkpoint at size {prev.size}")
            proof = tree.consistency_proof(prev.size, size)
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
