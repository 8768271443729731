"""The replayed state's two per-command costs in the audit, made proportional to what changed.

* `TicketInvariants` asserts a ticket's invariants (its blocks partition 1..quantity, in order;
  every state known; a ref exactly when the units are not available) after each command that
  changed it, exactly as `Ticket.check_invariants` does, but checks only the blocks the command
  replaced: the ticket's block list is a `WatchedBlocks` in the audit, which notes every span
  assigned to, so the blocks outside those spans are the ones last verified, and checking the
  rest with their neighbours gives the same verdict as checking them all. Whenever that cannot
  be shown, or something is wrong, the ticket's own `check_invariants()` runs over every block
  and raises its own message. The list also keeps each block's JSON for the state commitment,
  encoded once, when the block is made.

* `AuditCommitment` is `ledger.commitments.StateCommitment` for the audit: the same leaves and
  root (kept as a tree whose paths are rehashed only where leaves changed or moved), but a
  ticket's leaf is written by joining its blocks' JSON that the watched list kept, when the
  blocks verified last are (still) the ticket's blocks; otherwise every block is encoded. The
  first ticket leaf of every refresh is also written the ordinary way (`commitments.entry` and
  canonical JSON) and compared, so any difference in the encoding turns the shortcut off for the
  rest of the audit. The tree is a `LeafTree` here, or a `TreeProcess` (the same tree in a
  process of its own, which checks each checkpoint's root while the replay goes on).
"""

from __future__ import annotations

import gc
import json
import pickle
import signal
from bisect import bisect_left
from json.encoder import encode_basestring as _string
from multiprocessing import get_context
from typing import Any
from uuid import UUID

from domain.base import LedgerAggregate
from domain.blocks import WatchedBlocks
from domain.ticket import AVAILABLE, CANCELLED, PLEDGED, RETIRED, Ticket
from ledger import merkle
from ledger.commitments import entry, key_of, leaf_bytes

_STATES = frozenset((AVAILABLE, PLEDGED, RETIRED, CANCELLED))


class TicketInvariants:
    """Each ticket's blocks as last verified.

    A ticket's blocks are verified in full the first time, and then held in a `WatchedBlocks`
    list (set as the ticket's blocks), which notes the spans a command replaced: only the blocks
    in them, and their neighbours, are checked again. Anything the list cannot account for (a
    change of unknown place, another list set as the ticket's blocks, another quantity) checks
    every block, with the ticket's own message. The list also keeps each block's JSON for the
    state commitment (`_block_json`), encoded when the block is made."""

    def __init__(self) -> None:
        # ticket id -> (its blocks, watched since they were last verified; its quantity then)
        self._verified: dict[UUID, tuple[WatchedBlocks, Any]] = {}

    def check(self, ticket: Ticket) -> None:
        """Raise AssertionError (the ticket's own) if the ticket's invariants do not hold."""
        blocks = ticket.blocks
        seen = self._verified.get(ticket.id)
        if (seen is None or seen[0] is not blocks or seen[1] != ticket.quantity_t
                or not self._changed_part_holds(blocks, ticket.quantity_t)):
            ticket.check_invariants()
            if type(blocks) is not WatchedBlocks:
                blocks = ticket.__dict__["blocks"] = WatchedBlocks(blocks, _block_json)
        blocks.seal()
        self._verified[ticket.id] = (blocks, ticket.quantity_t)

    def encoded(self, ticket: Ticket) -> list[str] | None:
        """The JSON of each of the ticket's blocks, when they are the blocks last verified,
        unchanged since, and their JSON is known; else None."""
        seen = self._verified.get(ticket.id)
        if seen is None or seen[0] is not ticket.blocks or not seen[0].sealed:
            return None
        return seen[0].encoded

    @staticmethod
    def _changed_part_holds(blocks: WatchedBlocks, quantity: Any) -> bool:
        """Whether the blocks are shown to satisfy the invariants from the spans changed since
        they were verified; False means: check them all."""
        try:
            span = blocks.touched()
            if span is None or type(quantity) is not int:
                return False
            p, q = span
            # The blocks before p are the verified ones; so are those from q on, shifted.
            expected = blocks[p - 1][1] + 1 if p > 0 else 1
            for first, last, _holder, state, ref in blocks[p:q]:
                if (type(first) is not int or type(last) is not int or first != expected
                        or last < first or state not in _STATES
                        or (state == AVAILABLE) != (ref == "")):
                    return False
                expected = last + 1
            if q < len(blocks):
                return bool(blocks[q][0] == expected)
            return expected == quantity + 1
        except Exception:
            return False


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _block_json(block: Any) -> str:
    """A block as canonical JSON: json.dumps(list(block)) with the ledger's settings."""
    f, last, h, s, r = block
    if (type(f) is int and type(last) is int and type(h) is str and type(s) is str
            and type(r) is str):
        return f"[{f},{last},{_string(h)},{_string(s)},{_string(r)}]"
    return _dumps([f, last, h, s, r])


class AuditCommitment:
    """Leaf hashes of every committed entity, kept up to date as aggregates change."""

    def __init__(self, tickets: TicketInvariants) -> None:
        self._aggregates: dict[str, LedgerAggregate] = {}
        self._keys: list[str] = []  # sorted
        self._dirty: set[str] = set()
        self._committed: dict[type, bool] = {}
        # ticket key -> (its fields but the blocks, the JSON before and after the blocks)
        self._tickets: dict[str, tuple[tuple[Any, ...], str, str]] = {}
        self._fast = True
        self.tickets = tickets
        self._inserted: list[int] = []  # where new keys went since the last root, in order
        self.tree: LeafTree | TreeProcess = LeafTree()  # the tree over the leaves

    def touch(self, agg: LedgerAggregate) -> None:
        """Note that an aggregate changed; its leaf is recomputed at the next root()."""
        kind = type(agg)
        if self._committed.get(kind) is False:
            return
        key = key_of(agg)
        if key is None:  # key_of answers by class: no aggregate of this class is committed
            self._committed[kind] = False
            return
        if key not in self._aggregates:
            at = bisect_left(self._keys, key)
            self._keys.insert(at, key)  # its leaf is hashed at the next refresh: it is dirty
            self._inserted.append(at)
        self._aggregates[key] = agg
        self._dirty.add(key)

    def _refresh(self) -> list[tuple[int, bytes]]:
        """Hash the leaves of the aggregates touched since the last refresh: (position, hash)."""
        checked = False
        keys = self._keys
        changed = []
        for key in self._dirty:
            agg = self._aggregates[key]
            if self._fast and type(agg) is Ticket:
                data = self._ticket_leaf(key, agg)
                if not checked:  # the shortcut writes what entry() and canonical JSON write
                    checked = True
                    found = entry(agg)
                    assert found is not None
                    if data != leaf_bytes(key, found[1]):
                        self._fast = False
                        data = leaf_bytes(key, found[1])
            else:
                found = entry(agg)
                assert found is not None
                data = leaf_bytes(key, found[1])
            changed.append((bisect_left(keys, key), merkle.leaf_hash(data)))
        self._dirty.clear()
        return changed

    def _ticket_leaf(self, key: str, t: Ticket) -> bytes:
        """canonical_json({"key": key, "value": entry(t)[1]}), from the blocks' JSON that the
        invariant checks kept up to date; blocks without it are encoded here."""
        blocks = t.blocks
        head = (t.quantity_t, t.issuer, t.project_id, t.standard, t.ticket_no)
        cached = self._tickets.get(key)
        if cached is None or cached[0] != head:
            before = f'{{"key":{_dumps(key)},"value":{{"blocks":['
            after = (f'],"issued_t":{_dumps(t.quantity_t)},"issuer":{_dumps(t.issuer)},'
                     f'"project_id":{_dumps(t.project_id)},"standard":{_dumps(t.standard)},'
                     f'"ticket_no":{_dumps(t.ticket_no)}}}}}')
            self._tickets[key] = (head, before, after)
        else:
            _, before, after = cached
        encoded = self.tickets.encoded(t)
        text = ",".join(encoded if encoded is not None else map(_block_json, blocks))
        return (before + text + after).encode()

    def _changes(self) -> tuple[list[int], list[tuple[int, bytes]], int]:
        """What changed since the last call, for the tree: the positions where keys were
        inserted (in order), the leaves rehashed (position, hash), and the lowest position of a
        key added, from which on the leaves moved (the lowest position an insert was made at:
        a later insert below a new key moves that key up, never down)."""
        inserted, self._inserted = self._inserted, []
        return inserted, self._refresh(), min(inserted, default=len(self._keys))

    def root(self) -> bytes:
        """merkle.root over the leaves in key order, rehashing only the paths of the leaves that changed
        and, after the lowest key added since the last root, everything (the leaves moved)."""
        return self.tree.root(*self._changes())

    def matches(self, expected: bytes, size: int) -> bool:
        """Whether the root is `expected` (the state commitment of the checkpoint at `size`).
        A tree in a process of its own answers at the end (`mismatches`): True here."""
        return self.tree.matches(expected, size, *self._changes())


class LeafTree:
    """The stored levels of complete subtrees over the commitment's leaves, kept up to date."""

    def __init__(self) -> None:
        self.leaves: list[bytes] = []
        self.levels: list[list[bytes]] = [[]]

    def update(self, inserted: list[int], changed: list[tuple[int, bytes]], start: int) -> None:
        leaves = self.leaves
        for at in inserted:
            leaves.insert(at, b"")
        for at, leaf in changed:
            leaves[at] = leaf
        _rehash(self.levels, leaves, [at for at, _ in changed], start)

    def root(self, inserted: list[int], changed: list[tuple[int, bytes]], start: int) -> bytes:
        self.update(inserted, changed, start)
        size = len(self.leaves)
        return merkle._range_hash(self.levels, 0, size) if size else merkle.EMPTY_ROOT

    def matches(self, expected: bytes, size: int, inserted: list[int],
                changed: list[tuple[int, bytes]], start: int) -> bool:
        return self.root(inserted, changed, start) == expected

    def mismatches(self) -> list[int]:
        """A tree in this process answers `matches` at once: nothing is left to report."""
        return []

    def close(self) -> None:
        pass


class TreeProcess:
    """A LeafTree in a process of its own, forked from this one, that checks each checkpoint's
    state commitment while the audit replays on: rehashing the leaves that moved (every key
    after a new one) is a checkpoint's largest cost. `matches` sends the changes and returns
    True; `root` returns the final root, and then `mismatches` the sizes whose commitment did
    not match."""

    def __init__(self) -> None:
        ctx = get_context("fork")
        self._answers, answers_w = ctx.Pipe(duplex=False)
        requests_r, self._requests = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_tree_main, name="carbon-ledger-audit-commitment",
                                 args=(requests_r, answers_w, (self._answers, self._requests)),
                                 daemon=True)
        self._proc.start()
        answers_w.close()
        requests_r.close()
        self._final: tuple[bytes, list[int]] | None = None

    def matches(self, expected: bytes, size: int, inserted: list[int],
                changed: list[tuple[int, bytes]], start: int) -> bool:
        self._send(("update", inserted, changed, start, expected, size))
        return True

    def root(self, inserted: list[int], changed: list[tuple[int, bytes]], start: int) -> bytes:
        if self._final is None:
            self._send(("finish", inserted, changed, start))
            try:
                self._final = pickle.loads(self._answers.recv_bytes())
            except (EOFError, OSError):
                self._gone()
        elif inserted or changed:
            raise RuntimeError("the commitment changed after the audit's last root")
        return self._final[0]

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self._requests.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:  # BrokenPipeError: it is gone
            self._gone()

    def _gone(self) -> None:
        self._proc.join(timeout=1)
        raise RuntimeError("the audit's commitment process ended unexpectedly (exit code "
                           f"{self._proc.exitcode})") from None

    def mismatches(self) -> list[int]:
        """The sizes of the checkpoints whose state commitment did not match (after root())."""
        assert self._final is not None
        return self._final[1]

    def close(self) -> None:
        for conn in (self._requests, self._answers):
            try:
                conn.close()
            except OSError:
                pass
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)


def _tree_main(requests: Any, answers: Any, parents_ends: tuple[Any, ...]) -> None:
    for conn in parents_ends:
        conn.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the audit's own process handles ^C
    gc.disable()
    tree = LeafTree()
    mismatched: list[int] = []
    try:
        while True:
            message = pickle.loads(requests.recv_bytes())
            if message[0] == "update":
                _, inserted, changed, start, expected, size = message
                if not tree.matches(expected, size, inserted, changed, start):
                    mismatched.append(size)
            else:
                _, inserted, changed, start = message
                answers.send_bytes(pickle.dumps((tree.root(inserted, changed, start), mismatched)))
    except (EOFError, OSError):
        return


def _rehash(levels: list[list[bytes]], leaves: list[bytes], changed: list[int],
            start: int) -> None:
    """Bring the stored levels of complete subtrees (levels[h][j] hashes leaves j*2^h to
    (j+1)*2^h - 1) up to date with `leaves`, given that only the leaves at `changed` and from
    `start` on differ from the ones they were built from."""
    node = merkle.node_hash
    levels[0] = leaves
    dirty = {i for i in changed if i < start}
    h = 0
    while len(levels[h]) > 1:
        below = levels[h]
        if h + 1 == len(levels):
            levels.append([])
        above = levels[h + 1]
        pairs = len(below) // 2
        up = min(start >> 1, pairs)
        del above[up:]
        parents = {i >> 1 for i in dirty}
        for j in parents:
            if j < up:
                above[j] = node(below[2 * j], below[2 * j + 1])
        above.extend(merkle._pair_up(below, 2 * up))
        dirty = {j for j in parents if j < up}
        start = up
        h += 1
    del levels[h + 1:]
