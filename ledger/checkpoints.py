"""Signed checkpoints of the log, and witness cosignatures.

A checkpoint is a small text in the style of C2SP signed notes, signed by the operator's key
that the genesis record pins:

    carbon-ledger checkpoint v2
    origin <origin>
    size <tree size>
    root <base64 RFC 9162 root of the first `size` records>
    chain <base64 chain value of record `size`>
    state <base64 state commitment at that size>
    time <unix seconds>
    previous <size> <base64 SHA-256 of the previous checkpoint's body>   (or: previous none)

The signature is Ed25519 over those exact bytes. The last line chains each checkpoint to the one
before it, so that one deleted, replaced or slipped in between is named; checkpoints signed
before it existed are "v1", without that line, and still verify: the chain starts at the first
"v2" one, which names the last "v1" one. A witness (the regulator) checks that a new
checkpoint is consistent with the last one it saw and signs "carbon-ledger cosignature v1\\n"
followed by the same bytes. The operator refuses to sign a checkpoint whose tree does not extend
the last signed one, so it never signs two inconsistent checkpoints.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domain.errors import DomainError
from ledger import keys as K
from ledger import merkle
from ledger.records import GENESIS_CHAIN

if TYPE_CHECKING:
    from ledger.application import Registry

HEADER = "carbon-ledger checkpoint v1"
HEADER_V2 = "carbon-ledger checkpoint v2"
NO_PREVIOUS = (0, b"")  # the previous field of a log's first checkpoint
COSIGNATURE_PREFIX = b"carbon-ledger cosignature v1\n"
INTERVAL_S = 1.0  # while writes happen, a checkpoint at least every second
INTERVAL_EVENTS = 1000  # or every 1,000 events, whichever comes first


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """Strict base64: only the canonical encoding of some bytes is accepted (no spare bits set)."""
    if not isinstance(text, str):
        raise ValueError("base64 text expected")
    data = base64.b64decode(text, validate=True)
    if b64(data) != text:
        raise ValueError("non-canonical base64")
    return data


_FIELDS = ("origin", "size", "root", "chain", "state", "time")


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    chain: bytes
    state_root: bytes
    time: int
    # (size, SHA-256 of the body) of the checkpoint before this one; NO_PREVIOUS for a log's
    # first; None for a checkpoint in the format signed before the chain (v1)
    previous: tuple[int, bytes] | None = None

    def body(self) -> bytes:
        lines = (f"origin {self.origin}\nsize {self.size}\nroot {b64(self.root)}\n"
                 f"chain {b64(self.chain)}\nstate {b64(self.state_root)}\ntime {self.time}\n")
        if self.previous is None:
            return f"{HEADER}\n{lines}".encode()
        size, digest = self.previous
        link = "none" if self.previous == NO_PREVIOUS else f"{size} {b64(digest)}"
        return f"{HEADER_V2}\n{lines}previous {link}\n".encode()

    def digest(self) -> bytes:
        """What the checkpoint after this one names it by: the SHA-256 of its body."""
        return hashlib.sha256(self.body()).digest()

    @classmethod
    def parse(cls, body: bytes) -> Checkpoint:
        """Parse checkpoint bytes strictly: the re-encoded form must equal the input."""
        try:
            lines = body.decode("utf-8").split("\n")
            v2 = lines[0] == HEADER_V2
            if len(lines) != (9 if v2 else 8) or lines[0] not in (HEADER, HEADER_V2) \
                    or lines[-1] != "":
                raise ValueError("layout")
            fields = {}
            for line, name in zip(lines[1:-1], (*_FIELDS, "previous") if v2 else _FIELDS,
                                  strict=True):
                key, _, value = line.partition(" ")
                if key != name:
                    raise ValueError(name)
                fields[name] = value
            previous = None
            if v2:
                if fields["previous"] == "none":
                    previous = NO_PREVIOUS
                else:
                    size, _, digest = fields["previous"].partition(" ")
                    previous = (int(size), unb64(digest))
                    if previous[0] < 1 or len(previous[1]) != 32:
                        raise ValueError("previous")
            cp = cls(fields["origin"], int(fields["size"]), unb64(fields["root"]),
                     unb64(fields["chain"]), unb64(fields["state"]), int(fields["time"]),
                     previous)
        except (ValueError, UnicodeDecodeError) as e:
            raise DomainError("bad_signature", f"malformed checkpoint ({e})") from None
        if cp.body() != body:
            raise DomainError("bad_signature", "the checkpoint is not in canonical form")
        return cp

    def to_json(self, signature: bytes, cosignatures: list[dict[str, Any]]) -> dict[str, Any]:
        out = {"origin": self.origin, "size": self.size, "root": b64(self.root),
               "chain": b64(self.chain), "state_root": b64(self.state_root), "time": self.time}
        if self.previous is not None:
            out["previous"] = previous_json(self.previous)
        return {**out, "body": self.body().decode("utf-8"), "signature": b64(signature),
                "cosignatures": cosignatures}


def previous_json(previous: tuple[int, bytes]) -> dict[str, Any] | None:
    """The previous field of a checkpoint as its JSON gives it (null for a log's first)."""
    return None if previous == NO_PREVIOUS else {"size": previous[0], "hash": b64(previous[1])}


def chain_break(prev: Checkpoint | None, cp: Checkpoint, where: str) -> str | None:
    """Why `cp` does not follow `prev` (the checkpoint before it in the log, None for none),
    in a sentence beginning with `where`; None when it does."""
    if cp.previous is None:
        if prev is not None and prev.previous is not None:
            return (f"{where} does not name the checkpoint before it, though the one at size "
                    f"{prev.size} did: a checkpoint in the format before the chain was signed "
                    "after the chain began")
        return None  # signed before the chain: nothing to follow
    if cp.previous == NO_PREVIOUS:
        if prev is not None:
            return (f"{where} says it is the log's first, but the checkpoint at size "
                    f"{prev.size} comes before it")
        return None
    size, digest = cp.previous
    if prev is None or prev.size < size:
        return (f"{where} names the checkpoint at size {size} before it, which is missing: a "
                "signed checkpoint was deleted")
    if prev.size > size:
        return (f"{where} names the checkpoint at size {size} before it, but the one before it "
                f"is at size {prev.size}: a checkpoint was slipped in between")
    if prev.digest() != digest:
        return (f"{where} names another checkpoint at size {size} than the one the log holds: "
                "it was replaced")
    return None


def verify_checkpoint(body: bytes, signature: bytes, operator_key: str) -> Checkpoint:
    cp = Checkpoint.parse(body)
    if not K.verify(operator_key, signature, body):
        raise DomainError("bad_signature", f"the checkpoint at size {cp.size} is not signed by the "
                          "operator key")
    return cp


def cosign(key: Ed25519PrivateKey, body: bytes) -> bytes:
    return key.sign(COSIGNATURE_PREFIX + body)


def verify_cosignature(public_key: str, signature: bytes, body: bytes) -> bool:
    return K.verify(public_key, signature, COSIGNATURE_PREFIX + body)


class Checkpointer:
    """Signs checkpoints of one registry with the operator's key."""

    def __init__(self, app: Registry, operator_key: Ed25519PrivateKey) -> None:
        self.app = app
        self.key = operator_key
        self._last_time = 0.0
        self._last_size = -1

    def due(self, size: int | None = None) -> bool:
        """Whether a checkpoint is due at `size` (the log's size, read from the store if None)."""
        size = self.app.log_position() if size is None else size
        if size <= self._last_size:
            return False
        return (size - self._last_size >= INTERVAL_EVENTS
                or time.monotonic() - self._last_time >= INTERVAL_S)

    def make(self) -> tuple[Checkpoint, bytes] | None:
        """Sign a checkpoint at the current size (or return the one already signed there).

        Only one process signs at a time (a lock in the store); when another holds it, this
        returns the latest checkpoint, or None when there is none yet.
        """
        with self.app.recorder.signer_lock() as held:
            if held:
                return self._make()
        latest = self.app.recorder.latest_checkpoint()
        # Another process signs: ask again when the next checkpoint would be due, not after
        # every write (if that process stops, this one takes over within INTERVAL_S).
        self._last_time = time.monotonic()
        if latest is not None:
            self._last_size = max(self._last_size, latest[0])
        return (Checkpoint.parse(latest[1]), latest[2]) if latest else None

    def _make(self) -> tuple[Checkpoint, bytes]:
        app = self.app
        # The size and the state it commits to are read together, before anything can move on.
        genesis, size, state_root = app.state_at_head()
        if genesis is None:
            raise DomainError("unknown_participant", "the registry is not initialised")
        if K.public_text(self.key) != genesis.operator_key:
            raise DomainError("unknown_key", "this key is not the operator key pinned by genesis")
        tree = app.log_tree(size)
        latest = app.recorder.latest_checkpoint()
        previous = NO_PREVIOUS
        if latest is not None:
            last = Checkpoint.parse(latest[1])
            previous = (last.size, last.digest())
            if last.size == size:
                return last, latest[2]
            if last.size > size:
                raise DomainError("log_inconsistent", f"a checkpoint at size {last.size} exists beyond the "
                                  f"log's size {size}")
            if tree.root_at(last.size) != last.root:
                raise DomainError("log_inconsistent", f"the log no longer extends the checkpoint at size "
                                  f"{last.size}; refusing to sign an inconsistent checkpoint")
        chain = app.recorder.select_records(size, 1, stop=size)[0].chain if size else GENESIS_CHAIN
        cp = Checkpoint(genesis.origin, size, tree.root_at(size), chain, state_root,
                        int(app.clock()), previous)
        signature = self.key.sign(cp.body())
        try:
            app.recorder.insert_checkpoint(size, cp.body(), signature)
        except Exception:  # another process signed this size first: keep its checkpoint
            stored = [c for c in app.recorder.select_checkpoints(size - 1) if c[0] == size]
            if not stored:
                raise
            return Checkpoint.parse(stored[0][1]), stored[0][2]
        self._last_size, self._last_time = size, time.monotonic()
        return cp, signature


def checkpoint_json(app: Registry, size: int | None = None) -> dict[str, Any]:
    """A stored checkpoint with its cosignatures, as JSON (the latest when size is None)."""
    if size is None:
        stored = app.recorder.latest_checkpoint()
    else:
        stored = next((c for c in app.recorder.select_checkpoints(size - 1) if c[0] == size), None)
    if stored is None:
        raise DomainError("unknown_checkpoint", "no checkpoint has been signed yet"
                          if size is None else f"no checkpoint at size {size}")
    cp = Checkpoint.parse(stored[1])
    cosigs = [{"witness": w, "key_id": kid, "signature": b64(sig)}
              for _, w, kid, sig in app.recorder.select_cosignatures(cp.size)]
    return cp.to_json(stored[2], cosigs)


# Witnesses -----------------------------------------------------------------------------------

def _follow_chain(app: Registry, latest: Checkpoint, old_size: int, old_digest: str | None,
                  operator_key: str) -> None:
    """Every checkpoint from the one this witness cosigned last (at `old_size`, whose body's
    SHA-256 it noted as `old_digest`, if it did) to `latest` is signed by the operator and
    names the one before it; refuses (log_inconsistent) naming the first that does not."""
    prev: Checkpoint | None = None
    for size, body, signature in app.recorder.select_checkpoints(max(old_size, 1) - 1):
        if size > latest.size:
            break
        cp = verify_checkpoint(body, signature, operator_key)
        where = f"checkpoint at size {size}"
        if prev is None and old_size:
            if size != old_size:
                raise DomainError("log_inconsistent", f"the checkpoint at size {old_size} that "
                                  "this witness cosigned is no longer in the log: it was deleted")
            if old_digest is not None and cp.digest().hex() != old_digest:
                raise DomainError("log_inconsistent", f"the checkpoint at size {old_size} is not "
                                  "the one this witness cosigned: it was replaced")
        else:
            problem = chain_break(prev, cp, where)
            if problem is not None:
                raise DomainError("log_inconsistent", problem)
        prev = cp


def witness(app: Registry, witness_id: str, key: Ed25519PrivateKey, state_file: Path,
            operator_key: str) -> dict[str, Any]:
    """Check the latest checkpoint against the last one this witness saw, then cosign it."""
    latest = app.recorder.latest_checkpoint()
    if latest is None:
        raise DomainError("unknown_checkpoint", "no checkpoint has been signed yet")
    cp = verify_checkpoint(latest[1], latest[2], operator_key)
    participant = app.projection().participants.get(witness_id)
    if participant is None or participant.role != "regulator":
        raise DomainError("not_authorized", f"{witness_id} is not a registered regulator; only a "
                          "regulator witnesses checkpoints")
    kid = K.key_id(K.public_text(key))
    participant.active_key(kid)
    seen: dict[str, Any] = {}
    if state_file.exists():
        seen = json.loads(state_file.read_text(encoding="utf-8"))
        if seen.get("origin") != cp.origin:
            raise DomainError("log_inconsistent", f"the witness state is for origin {seen.get('origin')}, "
                              f"this log is {cp.origin}")
    old_size, old_root = int(seen.get("size", 0)), unb64(seen["root"]) if seen else merkle.EMPTY_ROOT
    if cp.size < old_size:
        raise DomainError("log_inconsistent", f"the log's latest checkpoint (size {cp.size}) is older than "
                          f"the one this witness saw (size {old_size}): the log went back")
    proof = app.log_tree(cp.size).consistency_proof(old_size, cp.size) if old_size else []
    if old_size and not merkle.verify_consistency(old_size, cp.size, proof, old_root, cp.root):
        raise DomainError("log_inconsistent", f"checkpoint {cp.size} is not consistent with checkpoint "
                          f"{old_size} that this witness cosigned: the log was rewritten")
    _follow_chain(app, cp, old_size, seen.get("checkpoint"), operator_key)
    signature = cosign(key, cp.body())
    app.recorder.insert_cosignature(cp.size, witness_id, kid, signature)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"origin": cp.origin, "size": cp.size, "root": b64(cp.root),
                                      "checkpoint": cp.digest().hex(),
                                      "operator_key": operator_key}, indent=2), encoding="utf-8")
    return {"witness": witness_id, "size": cp.size, "previous_size": old_size,
            "consistency_proof_length": len(proof), "root": b64(cp.root)}
