"""The audit's front stage: every check of a record that needs no replayed state.

`Front` takes the log's records in order and does, for each one, exactly what the audit did
before it replays anything: the position (no gap), the chain value, the Merkle tree, the decoding
of the event (the registry's own event classes only), the grouping of events under their command
record, and for each command record the checks that read nothing but the record (its events
belong to it, its command id is new, its body is canonical JSON and parses as a valid command,
its command id, actor and digest agree with the body, and its signatures split into one actor
signature and consents). It hands the replay (`ledger.audit.Auditor`) one `Group` per command,
and stops at the first failure with the same message, at the same position, as the one-pass
audit gave.

It runs either in the auditor's own process (small logs, tests, `workers=1`) or in a reader
process of its own (`FrontProcess`), so that reading, hashing, decoding and parsing go on while
the main process replays: the two stages share two cores. What crosses between the processes is
plain data; the replayed state never leaves the main process.

A recorded event is compared with the one the rules produce by its bytes: the front sends each
event's stored state re-encoded without its time (`norm`), the replay encodes what the handlers
produced the same way, and equal bytes mean equal fields. Bytes that differ are decoded again
and compared field by field, as before, so a difference the encoding alone makes (a tuple for a
list) still passes and a real difference still fails with the same message.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import traceback
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from multiprocessing import get_context
from typing import Any, NamedTuple

from eventsourcing.utils import resolve_topic

from domain import commands as C
from domain.base import LedgerAggregate, uuid_of_int
from domain.command import CommandRecord
from domain.errors import DomainError
from domain.participant import Participant
from ledger import merkle
from ledger.authentication import Checked, check_bases, split_signatures
from ledger.records import (
    GENESIS_CHAIN,
    RecordRow,
    next_chain,
    record_bytes_of,
    state_time_ns,
    time_text,
)
from ledger.signing import (
    WINDOW_FUTURE_S,
    WINDOW_PAST_S,
    Signature,
    SignedCommand,
    parse_canonical,
)
from ledger.transcoder import MsgpackTranscoder

CHUNK_RECORDS = 1000  # records' worth of items per message from the reader process
PIPE_BYTES = 1 << 20  # the room asked for in the pipe the items come through
# How much lower than the replay's the priority of the audit's helper processes is (os.nice):
# the replay decides every command in turn, and with every process busy on few cores it must
# not wait for the scheduler. The reader feeds it and runs ahead of it, so a little lower; the
# commitment process and the signature workers only have to be done by the end, so much lower.
READER_NICENESS = 3
HELPER_NICENESS = 10
_KEY_EVENTS = (Participant.Registered, Participant.KeyRotated)
_DROP = ("timestamp", "originator_id", "originator_version")


class Group(NamedTuple):
    """One command, its events, and what the front found out about them without any state."""

    position: int  # the command record's position
    first: int  # the first position of the command's events (its own record's if none)
    command_id: str
    name: Any  # the record's name and actor, for messages (or the AttributeError reading them)
    actor: Any
    command: C.Command
    signed: SignedCommand
    actor_sig: Signature
    consents: dict[str, Signature]
    checked: Checked  # the signatures' checks that read nothing but the signed command
    now: int
    outcome: Any  # the recorded outcome, encoded (bytes); or ("raw", value); or an exception
    events: list[tuple[str, int, int, bytes, Any]]  # (topic, id as an int, version, norm, key time)
    checkpoints: list[tuple[bytes, bytes | None, Any] | None]  # per checkpoint ending here
    # The first of the command's records dated before the record before it, if one is:
    # (its position, its time, the time before it, in ns); the replay judges it by the
    # rules edition in force (edition 2 refuses it; registries written before it hold some).
    went_back: tuple[int, int, int] | None = None


class Stop(NamedTuple):
    position: int
    what: str
    tree_size: int  # leaves the one-pass audit had hashed into its tree when it stopped


class Raise(NamedTuple):
    """An exception the one-pass audit would have let through at this point."""

    error: BaseException


class Progress(NamedTuple):
    position: int


class End(NamedTuple):
    position: int
    open_group: int  # the first position of events not closed by a command record, or 0


Item = Group | Stop | Raise | Progress | End


class _Halt(Exception):
    pass


class Front:
    """Records in, items out (see the module's docstring)."""

    def __init__(self, checkpoints: list[tuple[int, bytes, bytes]]) -> None:
        self.cp_sizes = [c[0] for c in checkpoints]  # sorted, as the audit checks them
        self.cp_set = set(self.cp_sizes)
        self.next_cp = 0
        self.position = 0
        self.chain = GENESIS_CHAIN
        self.tree = merkle.MerkleTree()
        self.chains: dict[int, bytes] = {}
        # the open command's records, each with its decoded event, or None for one left unread
        self.group: list[tuple[RecordRow, Any]] = []
        self.seen: set[str] = set()
        self.classes: dict[str, type] = {}
        self.unread: set[str] = set()  # the topics of the events left unread (_unread)
        self.transcoder = MsgpackTranscoder()
        self.halted = False
        self.last_time: int | None = None  # the time of the last record read, in ns

    # Records in --------------------------------------------------------------------------------

    def feed(self, batch: list[RecordRow], out: list[Item], progress: bool = True) -> None:
        """Check a batch of records, appending the items it completes to `out` (and, with
        `progress`, a Progress item at its end)."""
        if self.halted:
            return
        position, chain = self.position, self.chain
        leaves = []
        stop: Stop | None = None
        leaf_hash = merkle.leaf_hash
        for row in batch:
            expected = position + 1
            if row[0] != expected:
                stop = Stop(expected, f"record {expected} is missing (the next record is "
                            f"{row[0]}): records were deleted or reordered", expected - 1)
                break
            leaf = leaf_hash(record_bytes_of(row[1], row[2], row[3], row[4]))
            chain = next_chain(chain, leaf)
            if row[5] != chain:
                stop = Stop(expected, "the record does not match the hash chain: its bytes were "
                            "altered, or records were inserted, deleted or reordered", expected - 1)
                break
            position = expected
            leaves.append(leaf)
            if position in self.cp_set:
                self.chains[position] = chain
        self.tree.extend(leaves)
        try:
            for row in batch[:len(leaves)]:
                event = self._decode(row)
                self.group.append((row, event))
                self.position = row[0]
                if isinstance(event, CommandRecord.Accepted):
                    out.append(self._close())
            if stop is not None:
                self._read_all(self.group)  # an undecodable record before the break comes first
        except _Halt as halt:
            out.append(halt.args[0])
            self.halted = True
            return
        self.chain = chain
        if stop is not None:
            out.append(stop)
            self.halted = True
            return
        if progress:
            out.append(Progress(self.position))

    def end(self, out: list[Item]) -> None:
        if not self.halted:
            try:
                self._read_all(self.group)
            except _Halt as halt:
                out.append(halt.args[0])
            else:
                out.append(End(self.position, self.group[0][0][0] if self.group else 0))
            self.halted = True

    def root_at(self, size: int) -> bytes:
        return self.tree.root_at(size)

    # One record ------------------------------------------------------------------------------

    def _decode(self, row: RecordRow, lazily: bool = True) -> Any:
        """The record's event; with `lazily`, None for an event the replay reads from its
        bytes alone (see `_unread`)."""
        topic = row[3]
        if lazily and topic in self.unread:
            return None
        try:
            cls = self.classes.get(topic)
            if cls is None:
                # Only the registry's own event classes: an export file must not make the
                # auditor import whatever module it names.
                if not topic.startswith("domain.") or ":" not in topic:
                    raise ValueError(f"unknown topic {topic[:80]!r}")
                cls = resolve_topic(topic)
                if not isinstance(cls, type) or not issubclass(cls, LedgerAggregate.Event):
                    raise ValueError(f"{topic[:80]!r} is not a ledger event")
                if getattr(cls, "class_version", 1) > 1:
                    raise ValueError(f"{topic} has versions the auditor cannot upcast")
                self.classes[topic] = cls
                if _unread(cls):
                    self.unread.add(topic)
                    if lazily:
                        return None
            fields = None
            if cls is CommandRecord.Accepted:
                fields = _command_record_fields(row[4], self.transcoder)
            if fields is None:
                fields = self.transcoder.decode(row[4])
            if not isinstance(fields, dict):
                raise ValueError("the state is not a map")
            fields["originator_id"] = uuid_of_int(int.from_bytes(row[1], "big"))
            fields["originator_version"] = row[2]
            event = object.__new__(cls)
            object.__setattr__(event, "__dict__", fields)
            return event
        except Exception as e:  # a record the registry could not have written
            raise _Halt(Stop(row[0], f"the record cannot be decoded: {e}", row[0])) from None

    def _read_all(self, group: list[tuple[RecordRow, Any]]) -> list[tuple[RecordRow, Any]]:
        """The group with every event decoded, in order: raises the first record's failure to
        decode (_Halt), as if each had been decoded when it was read."""
        return [(row, self._decode(row, lazily=False) if ev is None else ev) for row, ev in group]

    # One command -----------------------------------------------------------------------------

    def _close(self) -> Item:
        """The group of events that a command record closes, checked as far as no state is needed."""
        group, self.group = self.group, []
        try:
            try:
                return self._group(group)
            except Exception:
                # Before the command's own failure: any failure of its events that reading
                # every one of them would have shown (the replay checks the unread ones when
                # nothing stops it first: see Auditor._check_unread).
                _members(self._read_all(group))
                raise
        except _Halt:
            raise
        except Exception as e:  # what the one-pass audit let through, at the same point
            raise _Halt(Raise(e)) from None

    def _group(self, group: list[tuple[RecordRow, Any]]) -> Group:
        row, record_event = group[-1]
        record_pos, first = row[0], group[0][0][0]
        size = record_pos
        cid = record_event.command_id
        _members(group)
        if cid in self.seen:
            raise _Halt(Stop(record_pos, f"command id {cid} is recorded twice", size))
        self.seen.add(cid)
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
            actor_sig, consents = split_signatures(command, signed)
            checked = check_bases(signed, actor_sig, consents)
            now = int(record_event.timestamp.timestamp())
        except DomainError as e:
            raise _Halt(Stop(record_pos, f"command {cid} ({record_event.name} by "
                             f"{record_event.actor}) does not stand up to the rules: {e.code}: "
                             f"{e.message}", size)) from None
        events = []
        encode = self.transcoder.encode
        for rec, ev in group[:-1]:
            if ev is None:
                norm: Any = _without_time(rec[4])
                if norm is not None:  # read by the replay, from these bytes
                    events.append((rec[3], int.from_bytes(rec[1], "big"), rec[2], norm, None))
                    continue
                ev = self._decode(rec, lazily=False)  # laid out otherwise: read here
                _members([(rec, ev), group[-1]])
            fields = ev.__dict__
            norm = _without_time(rec[4], len(fields) - 2)
            if norm is None:
                fields = dict(fields)
                for k in _DROP:
                    fields.pop(k, None)
                try:
                    norm = encode(fields)
                except Exception:  # not for decoded values; compared field by field then
                    norm = ("raw", fields)
            when: Any = None
            if isinstance(ev, _KEY_EVENTS):
                try:
                    when = int(ev.timestamp.timestamp())
                except Exception as e:
                    when = e
            events.append((rec[3], int.from_bytes(rec[1], "big"), rec[2], norm, when))
        outcome: Any
        try:
            value = record_event.outcome
            if type(value) is RawOutcome:
                outcome = value.data
            else:
                try:
                    outcome = encode(value)
                except Exception:
                    outcome = ("raw", value)
        except Exception as e:
            outcome = e
        went_back = self._dated(group, checked[0], cid)
        return Group(record_pos, first, cid, _attr(record_event, "name"),
                     _attr(record_event, "actor"), command, signed, actor_sig, consents, checked,
                     now, outcome, events, self._checkpoints_at(record_pos), went_back)

    def _dated(self, group: list[tuple[RecordRow, Any]], created: int | None,
               cid: str) -> tuple[int, int, int] | None:
        """Each event of the command is dated within its actor signature's window, as the
        registry accepts a signature against its clock (the record's own time is checked by
        authenticate, with the signature); and the first record dated before the record before
        it, if any (see Group.went_back)."""
        went_back = None
        last = self.last_time
        record_pos = group[-1][0][0]
        for i, (rec, ev) in enumerate(group):
            ns = state_time_ns(rec[4])
            if ns is None and ev is not None:
                try:
                    ns = _ns_of(ev.timestamp)
                except Exception:  # judged where the event is decoded and compared
                    ns = None
            if ns is None:
                continue
            if created is not None and i < len(group) - 1:
                seconds = ns // NS
                if not created - WINDOW_FUTURE_S <= seconds <= created + WINDOW_PAST_S:
                    after = seconds - created
                    raise _Halt(Stop(rec[0], f"record {rec[0]} is dated {time_text(ns)}, "
                                     f"{abs(after):,} s {'after' if after > 0 else 'before'} the "
                                     f"signature of its command {cid} (created {created}); a "
                                     f"record is dated from {WINDOW_FUTURE_S} s before to "
                                     f"{WINDOW_PAST_S} s after its command's signature",
                                     record_pos))
            if went_back is None and last is not None and ns < last:
                went_back = (rec[0], ns, last)
            last = ns
        self.last_time = last
        return went_back

    def _checkpoints_at(self, position: int) -> list[tuple[bytes, bytes | None, Any] | None]:
        """For each checkpoint the replay checks at this command: (root, chain, the consistency
        proof from the checkpoint before it, or None for the first), or None if it does not end
        here (the replay stops there). The chain is None for a size listed twice: the one-pass
        audit had handed its chain value to the first."""
        out: list[tuple[bytes, bytes | None, Any] | None] = []
        sizes = self.cp_sizes
        while self.next_cp < len(sizes) and sizes[self.next_cp] <= position:
            i = self.next_cp
            size = sizes[i]
            if size != position:
                out.append(None)
            else:
                proof: Any = None
                if i > 0:
                    try:
                        proof = self.tree.consistency_proof(sizes[i - 1], size)
                    except Exception as e:
                        proof = e
                out.append((self.tree.root_at(size), self.chains.pop(size, None), proof))
            self.next_cp += 1
        return out


NS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ns_of(when: datetime) -> int:
    """A decoded event's time in ns since the epoch (what records.state_time_ns reads)."""
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * NS + delta.microseconds * 1000


def _members(group: list[tuple[RecordRow, Any]]) -> None:
    """Stop at the first event read (not None) that belongs to another command than the one
    whose record closes the group."""
    cid = group[-1][1].command_id
    for rec, ev in group[:-1]:
        if ev is not None and (getattr(ev, "command_id", None) != cid
                               or isinstance(ev, CommandRecord.Accepted)):
            raise _Halt(Stop(rec[0], foreign_event(getattr(ev, "command_id", "?"), cid),
                             group[-1][0][0]))


def foreign_event(found: Any, cid: str) -> str:
    """The failure of an event recorded inside command `cid` that names command `found`."""
    return f"the event belongs to command {found} but is recorded inside command {cid}"


def _unread(cls: type) -> bool:
    """Whether the front leaves events of this class unread: every event but command records
    (whose fields the front checks) and key events (whose time the replay needs). The replay
    compares an unread event's bytes with the ones the rules give, which shows that it decodes
    and belongs to its command; when they differ, it reads them (Auditor._check_unread)."""
    return cls is not CommandRecord.Accepted and not issubclass(cls, _KEY_EVENTS)


_TIME_KEY = b"\xa9timestamp"
_TIME_SIZES = {0xD6: 6, 0xD7: 10, 0xC7: 15}  # fixext 4, fixext 8, ext 8 (type -1, 12 bytes)


def _without_time(state: bytes, keys: int | None = None) -> bytes | None:
    """The stored state (a map of `keys` pairs, decoded already) without its first pair when
    that pair is the time, as the transcoder writes it: the same bytes that encoding the fields
    without the time gives. None when the state is laid out otherwise.

    With `keys` None (a state not decoded), the time must also decode as the transcoder decodes
    it; whether the rest does is for the replay to see (see `_unread`)."""
    if not state:
        return None
    head = state[0]
    if 0x80 <= head <= 0x8F:
        n, at = head & 0x0F, 1
    elif head == 0xDE:
        n, at = int.from_bytes(state[1:3], "big"), 3
    elif head == 0xDF:
        n, at = int.from_bytes(state[1:5], "big"), 5
    else:
        return None
    if (keys is not None and n != keys) or n < 1 or state[at:at + 10] != _TIME_KEY:
        return None
    at += 10
    size = _TIME_SIZES.get(state[at])
    if size is None:
        return None
    if size == 15 and (state[at + 1] != 12 or state[at + 2] != 0xFF):
        return None
    if size != 15 and state[at + 1] != 0xFF:
        return None
    if keys is None and not _time_decodes(state, at, size):
        return None
    rest = state[at + size:]
    n -= 1
    if n < 16:
        return bytes((0x80 | n,)) + rest
    if n < 0x10000:
        return b"\xde" + n.to_bytes(2, "big") + rest
    return b"\xdf" + n.to_bytes(4, "big") + rest


_MAX_NANOSECONDS = 999_999_999
_decode_state = MsgpackTranscoder().decode


def _time_decodes(state: bytes, at: int, size: int) -> bool:
    """Whether the msgpack timestamp at state[at:at + size] decodes as the transcoder decodes
    it: 32 bits of seconds always do; 64 bits, when their top 30 bits (the nanoseconds) are
    below a second (the seconds, 34 bits, stay within the years a datetime holds); the 96-bit
    form is decoded to see."""
    if size == 6:
        return True
    if size == 10:
        return (int.from_bytes(state[at + 2:at + 10], "big") >> 34) <= _MAX_NANOSECONDS
    try:
        _decode_state(state[at:at + size])
    except Exception:
        return False
    return True


class RawOutcome(NamedTuple):
    """A command record's outcome as stored: its msgpack bytes, not decoded."""

    data: bytes


def _command_record_fields(state: bytes, transcoder: MsgpackTranscoder) -> dict[str, Any] | None:
    """A command record's fields as the transcoder decodes them, but for its outcome, which is
    left as the bytes stored (a RawOutcome): the replay compares its own outcome's encoding with
    them, and decodes them only when they differ. The outcome of a batch is most of the record,
    and decoding it only to encode it again was most of the front's cost for these records.
    None for a state laid out otherwise (the transcoder then decodes it, and says what is wrong)."""
    try:
        unpacker = transcoder.unpacker(state)
        fields: dict[str, Any] = {}
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key == "outcome":
                start = unpacker.tell()
                unpacker.skip()
                fields[key] = RawOutcome(state[start:unpacker.tell()])
            else:
                fields[key] = unpacker.unpack()
        if unpacker.tell() != len(state) or "outcome" not in fields:
            return None
        return fields
    except Exception:
        return None


def _attr(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError as e:
        return e


def run_inline(front: Front, batches: Iterable[list[RecordRow]]) -> Iterator[Item]:
    """The front stage in this process: items as the batches are read."""
    out: list[Item] = []
    try:
        for batch in batches:
            front.feed(batch, out)
            yield from out
            out.clear()
            if front.halted:
                return
        front.end(out)
    except Exception as e:  # reading failed: raised where the one-pass audit raised it
        out.append(Raise(e))
    yield from out


# The reader process -------------------------------------------------------------------------

def _reader_main(source: Any, checkpoints: list[tuple[int, bytes, bytes]], data: Any, ctrl: Any,
                 parents_ends: tuple[Any, ...]) -> None:
    for conn in parents_ends:  # so that the pipes break when the auditor goes away
        conn.close()
    gc.disable()  # everything the front keeps lives on (the tree, the command ids)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the auditor decides when the reader ends
    lower_priority(READER_NICENESS)
    front = Front(checkpoints)
    pending: list[Item] = []

    def flush() -> None:
        if pending:
            data.send_bytes(pickle.dumps(pending, protocol=pickle.HIGHEST_PROTOCOL))
            pending.clear()
        while ctrl.poll():  # the auditor stopped early and wants a root, or wants us gone
            _serve(front, data, ctrl)

    try:
        try:
            for batch in source.rows():
                for start in range(0, len(batch), CHUNK_RECORDS):
                    part = batch[start:start + CHUNK_RECORDS]
                    front.feed(part, pending, progress=start + CHUNK_RECORDS >= len(batch))
                    if front.halted:
                        break
                    flush()
                if front.halted:
                    break
            front.end(pending)
        except (_Done, EOFError, BrokenPipeError):
            raise
        except BaseException as e:
            pending.append(Raise(_picklable(e)))
        flush()
        while True:
            _serve(front, data, ctrl)
    except (_Done, EOFError, OSError):
        return


class _Done(Exception):
    pass


def _serve(front: Front, data: Any, ctrl: Any) -> None:
    request = ctrl.recv()
    if request[0] == "root":
        data.send_bytes(pickle.dumps(("root", front.root_at(request[1]))))
        return
    raise _Done()


def _picklable(e: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"the audit's reader process failed: {type(e).__name__}: {e}\n"
                            + "".join(traceback.format_exception(e)))


def lower_priority(increment: int) -> None:
    """Lower this process's scheduling priority (see READER_NICENESS); where that cannot be
    done, it runs as it is."""
    try:
        os.nice(increment)
    except (AttributeError, OSError):
        pass


def widen(conn: Any) -> None:
    """Give a pipe room for a whole chunk of items (about half a megabyte), so that the reader
    writes it in one go and the replay reads it without waiting for the writer to be scheduled
    again for every 64 KiB (and the replay sends the commitment process a checkpoint's changes
    without waiting for it). Linux only; elsewhere, or over the system's limit, it stays as is."""
    try:
        import fcntl

        fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass


class FrontProcess:
    """The front stage in a reader process of its own, forked from this one.

    The source must be safe to read from the child (`forked()` of the audit's sources: a new
    database connection, or the export file opened again)."""

    def __init__(self, source: Any, checkpoints: list[tuple[int, bytes, bytes]]) -> None:
        ctx = get_context("fork")
        self._data, data_w = ctx.Pipe(duplex=False)
        widen(data_w)
        ctrl_r, self._ctrl = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_reader_main, name="carbon-ledger-audit-reader",
                                 args=(source, checkpoints, data_w, ctrl_r,
                                       (self._data, self._ctrl)),
                                 daemon=True)
        self._proc.start()
        data_w.close()
        ctrl_r.close()
        self._answered = False
        self._done = False

    def items(self) -> Iterator[Item]:
        while True:
            try:
                payload = self._data.recv_bytes()
            except EOFError:
                yield Raise(RuntimeError("the audit's reader process ended unexpectedly "
                                         f"(exit code {self._proc.exitcode})"))
                return
            chunk = pickle.loads(payload)
            yield from chunk
            if chunk and isinstance(chunk[-1], (Stop, Raise, End)):
                return

    def root_at(self, size: int) -> bytes:
        """The Merkle root at `size` from the reader's tree (the reader may be ahead)."""
        self._ctrl.send(("root", size))
        while True:  # items the reader sent meanwhile are dropped: the audit has ended
            message = pickle.loads(self._data.recv_bytes())
            if isinstance(message, tuple) and message and message[0] == "root":
                self._answered = True
                return message[1]

    def close(self) -> None:
        """End the reader: at once when the audit ended early, else after it says goodbye."""
        if self._done:
            return
        self._done = True
        if self._answered:
            try:
                self._ctrl.send(("bye",))
            except (OSError, ValueError):
                pass
            self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)
        for conn in (self._data, self._ctrl):
            try:
                conn.close()
            except OSError:
                pass
