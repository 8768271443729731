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
