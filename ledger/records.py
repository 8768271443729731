"""Log records: the bytes a Merkle leaf and the hash chain commit to.

A record is one stored event at one log position. Its canonical bytes are the msgpack array
[originator id (16 bytes), originator version, topic, state bytes] — exactly the stored values,
never a re-serialisation of the decoded event. Each record's leaf hash is RFC 9162's
SHA-256(0x00 || bytes); the chain value of position i is SHA-256(chain[i-1] || leaf[i]) with
chain[0] = GENESIS_CHAIN, so every record commits to the whole log before it: deleting,
inserting or reordering records changes every chain value after the damage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from uuid import UUID

from ledger import merkle
from ledger.transcoder import per_thread_packer

_new = object.__new__
_set = object.__setattr__
GENESIS_CHAIN = hashlib.sha256(b"carbon-ledger/chain/v1").digest()
_pack_record = per_thread_packer(use_bin_type=True)

# A record as the audit reads it: (position, originator id's 16 bytes, version, topic, state, chain)
RecordRow = tuple[int, bytes, int, str, bytes, bytes]


@dataclass(frozen=True)
class Record:
    position: int
    originator_id: UUID
    originator_version: int
    topic: str
    state: bytes
    chain: bytes = b""

    @classmethod
    def of(cls, position: int, originator_id: UUID, originator_version: int, topic: str,
           state: bytes, chain: bytes = b"") -> Record:
        """Record(...), made without the frozen dataclass's __init__ (a reader makes one per
        position)."""
        record = _new(cls)
        _set(record, "__dict__", {"position": position, "originator_id": originator_id,
                                  "originator_version": originator_version, "topic": topic,
                                  "state": state, "chain": chain})
        return record

    def canonical_bytes(self) -> bytes:
        return record_bytes(self.originator_id, self.originator_version, self.topic, self.state)

    def leaf_hash(self) -> bytes:
        return merkle.leaf_hash(self.canonical_bytes())


def record_bytes(originator_id: UUID, version: int, topic: str, state: bytes) -> bytes:
    return record_bytes_of(originator_id.bytes, version, topic, state)


def record_bytes_of(id_bytes: bytes, version: int, topic: str, state: bytes) -> bytes:
    """record_bytes with the originator id given as its 16 bytes."""
    return _pack_record([id_bytes, version, topic, state])


def next_chain(prev: bytes, leaf: bytes) -> bytes:
    return hashlib.sha256(prev + leaf).digest()


# The time of a stored event, read from its bytes: the transcoder writes an event's state as a
# map whose first pair is the time (a msgpack timestamp, extension type -1).
_TIME_KEY = b"\xa9timestamp"
TIME_PREFIX_BYTES = 32  # enough for the map's header, the key and the longest timestamp
_NS = 1_000_000_000


def state_time_ns(state: bytes) -> int | None:
    """The time of a stored event in nanoseconds since the epoch, from the first pair of its
    state (or of a prefix of TIME_PREFIX_BYTES of it); None for a state laid out otherwise
    (whose record is for the audit to judge)."""
    if not state:
        return None
    head = state[0]
    at = 1 if 0x80 <= head <= 0x8F else 3 if head == 0xDE else 5 if head == 0xDF else 0
    if not at or state[at:at + 10] != _TIME_KEY:
        return None
    at += 10
    kind = state[at:at + 2]
    if kind == b"\xd6\xff":  # 32 bits of seconds
        return int.from_bytes(state[at + 2:at + 6], "big") * _NS
    if kind == b"\xd7\xff":  # 30 bits of nanoseconds, 34 of seconds
        word = int.from_bytes(state[at + 2:at + 10], "big")
        nanoseconds = word >> 34
        return (word & ((1 << 34) - 1)) * _NS + nanoseconds if nanoseconds < _NS else None
    if state[at:at + 3] == b"\xc7\x0c\xff":  # 32 bits of nanoseconds, 64 of signed seconds
        nanoseconds = int.from_bytes(state[at + 3:at + 7], "big")
        seconds = int.from_bytes(state[at + 7:at + 15], "big", signed=True)
        return seconds * _NS + nanoseconds if nanoseconds < _NS and len(state) >= at + 15 else None
    return None


def with_time_ns(state: bytes, ns: int) -> bytes | None:
    """The stored state dated `ns` instead (its first pair replaced, as the transcoder writes a
    time), or None for a state laid out otherwise."""
    if state_time_ns(state) is None:
        return None
    head = state[0]
    at = (1 if 0x80 <= head <= 0x8F else 3 if head == 0xDE else 5) + 10
    size = {0xD6: 6, 0xD7: 10, 0xC7: 15}[state[at]]
    import msgpack

    return state[:at] + msgpack.packb(msgpack.Timestamp.from_unix_nano(ns)) + state[at + size:]


def time_text(ns: int) -> str:
    """A time in nanoseconds since the epoch as UTC ISO 8601 text, for messages."""
    from datetime import UTC, datetime, timedelta

    try:
        when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)
    except OverflowError:
        return f"{ns // _NS} s after the epoch"
    return when.isoformat().replace("+00:00", "Z")
