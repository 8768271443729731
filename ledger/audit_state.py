"""The replayed state's two per-command costs in the audit, made proportional to what changed.

* `TicketInvariants` asserts a ticket's invariants (its blocks partition 1..quantity, in order;
  every state known; a ref exactly when the units are not available) after each command that
  changed it, exactly as `Ticket.check_invariants` does, but checks only the blocks the command
  replaced: the ticket's block list is a `WatchedBlocks` in the audit, which notes every span
  assigned to, so the blocks outside those spans are the ones last verified, and checking the
  rest with their neighbours gives the same verdict as checking them all. Whenever that cannot
  be shown, or something is wrong, the ticket's own `check_invariants()` runs over every block
  and raises its own message. It also notes, for the state commitment, how the blocks changed:
  the blocks each span now holds.

* `AuditCommitment` is `ledger.commitments.StateCommitment` for the audit: the same leaves and
  root (kept as a tree whose paths are rehashed only where leaves changed or moved). The tree
  keeps each ticket's blocks as JSON and makes the ticket's leaf itself: the replay sends it
  the blocks that changed since (or, the first time and whenever the changes are not known,
  all of them), not the leaf. The first ticket leaf of every refresh is also written the
  ordinary way (`commitments.entry` and canonical JSON) and compared with the shortcut's text,
  so any difference in the encoding turns the shortcut off for the rest of the audit, and the
  tree checks its own leaf of that ticket against the ordinary one. The tree is a `LeafTree`
  here, or a `TreeProcess` (the same tree in a process of its own, which checks each
  checkpoint's root while the replay goes on): in the audit of a long log the JSON is written
  and hashed there, on the other core.
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

from domain.base import LedgerAggregate
from domain.blocks import WatchedBlocks
from domain.ticket import AVAILABLE, CANCELLED, PLEDGED, RETIRED, Ticket
from ledger import merkle
from ledger.commitments import entry, key_of, leaf_bytes

_STATES = frozenset((AVAILABLE, PLEDGED, RETIRED, CANCELLED))
_NONE_YET: Any = object()  # no edits noted since the last take_edits()


class TicketInvariants:
    """Each ticket's blocks as last verified.

    A ticket's blocks are verified in full the first time, and then held in a `WatchedBlocks`
    list (set as the ticket's blocks), which notes the spans a command replaced: only the blocks
    in them, and their neighbours, are checked again. Anything the list cannot account for (a
    change of unknown place, another list set as the ticket's blocks, another quantity) checks
    every block, with the ticket's own message. The spans checked are also noted as the
    ticket's edits, for the state commitment (`take_edits`)."""

    def __init__(self) -> None:
        # Both by id(ticket): the replay changes each ticket in place, and the entry holds the
        # ticket, so that its id cannot go to another object while it is here.
        # id(ticket) -> (the ticket, its blocks, watched since they were last verified; its
        # quantity then; the number of blocks then)
        self._verified: dict[int, tuple[Ticket, WatchedBlocks, Any, int]] = {}
        # id(ticket) -> how its blocks changed since the last take_edits(): (lo, hi, the blocks
        # that replaced blocks lo..hi-1), in order; None: not known
        self._edits: dict[int, list[tuple[int, int, list[Any]]] | None] = {}

    def _seen(self, ticket: Ticket) -> tuple[Ticket, WatchedBlocks, Any, int] | None:
        seen = self._verified.get(id(ticket))
        return seen if seen is not None and seen[0] is ticket else None

    def check(self, ticket: Ticket) -> None:
        """Raise AssertionError (the ticket's own) if the ticket's invariants do not hold."""
        blocks = ticket.blocks
        tid = id(ticket)
        seen = self._seen(ticket)
        span = None
        if seen is not None and seen[1] is blocks and seen[2] == ticket.quantity_t:
            span = blocks.touched()
            if span is not None and not self._changed_part_holds(blocks, span,
                                                                 ticket.quantity_t):
                span = None
        if span is None:
            ticket.check_invariants()
            if type(blocks) is not WatchedBlocks:
                blocks = ticket.__dict__["blocks"] = WatchedBlocks(blocks)
        blocks.seal()
        self._verified[tid] = (ticket, blocks, ticket.quantity_t, len(blocks))
        if span is None or seen is None:
            self._edits[tid] = None
            return
        edits = self._edits.get(tid, _NONE_YET)
        if edits is not None:
            if edits is _NONE_YET:
                edits = self._edits[tid] = []
            lo, hi = span
            edits.append((lo, hi - len(blocks) + seen[3], blocks[lo:hi]))

    def take_edits(self, ticket: Ticket) -> list[tuple[int, int, list[Any]]] | None:
        """How the ticket's blocks changed since the last call for it (each edit: the blocks
        lo..hi-1 of the list as it was then were replaced by the blocks given), or None when
        that is not known (the blocks were checked in full, or replaced)."""
        return self._edits.pop(id(ticket), None)

    def verified(self, ticket: Ticket) -> WatchedBlocks | None:
        """The ticket's blocks when they are the blocks last verified, unchanged since; else
        None."""
        seen = self._seen(ticket)
        if seen is None or seen[1] is not ticket.blocks or not seen[1].sealed:
            return None
        return seen[1]

    @staticmethod
    def _changed_part_holds(blocks: WatchedBlocks, span: tuple[int, int], quantity: Any) -> bool:
        """Whether the blocks are shown to satisfy the invariants from the span changed since
        they were verified (blocks.touched()); False means: check them all."""
        try:
            if type(quantity) is not int:
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
        self._sent: set[str] = set()  # tickets whose blocks the tree has
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

    def _refresh(self) -> list[tuple[int, Any]]:
        """The leaves of the aggregates touched since the last refresh: (position, leaf), where
        a leaf is its hash, or for a ticket what the tree makes it from (LeafTree._ticket)."""
        checked = False
        keys = self._keys
        changed: list[tuple[int, Any]] = []
        for key in self._dirty:
            agg = self._aggregates[key]
            at = bisect_left(keys, key)
            if type(agg) is Ticket:
                edits = self.tickets.take_edits(agg)
                if self._fast:
                    leaf = self._ticket_leaf(key, agg, edits)
                    if leaf is not None:
                        if not checked:  # the shortcut writes what entry() and canonical JSON write
                            checked = True
                            found = entry(agg)
                            assert found is not None
                            data = leaf_bytes(key, found[1])
                            _, before, after = self._tickets[key]
                            blocks = self.tickets.verified(agg)
                            if blocks is None or _ticket_text(
                                    before, list(map(_block_json, blocks)), after) != data:
                                self._fast = False
                                self._sent.clear()
                                changed.append((at, merkle.leaf_hash(data)))
                                continue
                            leaf = (key, merkle.leaf_hash(data), *leaf[2:])
                        changed.append((at, leaf))
                        continue
                self._sent.discard(key)  # the tree's JSON of this ticket is out of date
            found = entry(agg)
            assert found is not None
            changed.append((at, merkle.leaf_hash(leaf_bytes(key, found[1]))))
        self._dirty.clear()
        return changed

    def _ticket_leaf(self, key: str, t: Ticket,
                     edits: list[tuple[int, int, list[Any]]] | None) -> tuple[Any, ...] | None:
        """What the tree needs to make the ticket's leaf from the blocks it has of it (see
        LeafTree._ticket): the edits since it last had them, or all of them; None when the
        blocks changed since they were last checked."""
        head = (t.quantity_t, t.issuer, t.project_id, t.standard, t.ticket_no)
        cached = self._tickets.get(key)
        if cached is None or cached[0] != head:
            before = f'{{"key":{_dumps(key)},"value":{{"blocks":['
            after = (f'],"issued_t":{_dumps(t.quantity_t)},"issuer":{_dumps(t.issuer)},'
                     f'"project_id":{_dumps(t.project_id)},"standard":{_dumps(t.standard)},'
                     f'"ticket_no":{_dumps(t.ticket_no)}}}}}')
            self._tickets[key] = (head, before, after)
            self._sent.discard(key)
        else:
            _, before, after = cached
        blocks = self.tickets.verified(t)
        if blocks is None:  # changed since it was last checked: not what the edits say
            return None
        if edits is not None and key in self._sent:
            return (key, None, edits)
        self._sent.add(key)
        return (key, None, before, after, list(blocks))

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


def _ticket_text(before: str, blocks: list[str], after: str) -> bytes:
    return (before + ",".join(blocks) + after).encode()


class LeafTree:
    """The stored levels of complete subtrees over the commitment's leaves, kept up to date,
    and each ticket's blocks' JSON, from which it makes the tickets' leaves (_ticket)."""

    def __init__(self) -> None:
        self.leaves: list[bytes] = []
        self.levels: list[list[bytes]] = [[]]
        self.tickets: dict[str, list[Any]] = {}  # key -> [before, the blocks' JSON, after]

    def update(self, inserted: list[int], changed: list[tuple[int, Any]], start: int) -> None:
        leaves = self.leaves
        for at in inserted:
            leaves.insert(at, b"")
        for at, leaf in changed:
            leaves[at] = leaf if type(leaf) is bytes else self._ticket(leaf)
        _rehash(self.levels, leaves, [at for at, _ in changed], start)

    def _ticket(self, leaf: tuple[Any, ...]) -> bytes:
        """A ticket's leaf hash from the JSON of its blocks kept here, given (plain tuples, which
        cross to a commitment process at the least cost) either all its blocks, as
        (key, check, JSON before the blocks, JSON after them, the blocks), or the edits to make
        to what is kept, as (key, check, [(lo, hi, the blocks that replace blocks lo..hi-1),
        ...]). `check`, when not None, is the leaf hash the replay made of the same ticket the
        ordinary way: the one made here must be the same."""
        key, check = leaf[0], leaf[1]
        if len(leaf) == 5:
            kept = self.tickets[key] = [leaf[2], list(map(_block_json, leaf[4])), leaf[3]]
        else:
            kept = self.tickets[key]
            blocks = kept[1]
            for lo, hi, replaced_by in leaf[2]:
                blocks[lo:hi] = map(_block_json, replaced_by)
        made = merkle.leaf_hash(_ticket_text(*kept))
        if check is not None and made != check:
            raise RuntimeError(f"the audit's copy of {key}'s blocks differs from the "
                               "replayed ticket's")
        return made

    def root(self, inserted: list[int], changed: list[tuple[int, Any]], start: int) -> bytes:
        self.update(inserted, changed, start)
        size = len(self.leaves)
        return merkle._range_hash(self.levels, 0, size) if size else merkle.EMPTY_ROOT

    def matches(self, expected: bytes, size: int, inserted: list[int],
                changed: list[tuple[int, Any]], start: int) -> bool:
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
        self._final: tuple[bytes, list[int], str] | None = None

    def matches(self, expected: bytes, size: int, inserted: list[int],
                changed: list[tuple[int, Any]], start: int) -> bool:
        self._send(("update", inserted, changed, start, expected, size))
        return True

    def root(self, inserted: list[int], changed: list[tuple[int, Any]], start: int) -> bytes:
        if self._final is None:
            self._send(("finish", inserted, changed, start))
            try:
                self._final = pickle.loads(self._answers.recv_bytes())
            except (EOFError, OSError):
                self._gone()
        elif inserted or changed:
            raise RuntimeError("the commitment changed after the audit's last root")
        if self._final[2]:
            raise RuntimeError(self._final[2])
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
    broken = ""  # a RuntimeError of the tree's own: told with the final answer, in its place
    try:
        while True:
            message = pickle.loads(requests.recv_bytes())
            if broken:
                if message[0] != "update":
                    answers.send_bytes(pickle.dumps((b"", [], broken)))
                continue
            try:
                if message[0] == "update":
                    _, inserted, changed, start, expected, size = message
                    if not tree.matches(expected, size, inserted, changed, start):
                        mismatched.append(size)
                else:
                    _, inserted, changed, start = message
                    answers.send_bytes(pickle.dumps((tree.root(inserted, changed, start),
                                                     mismatched, "")))
            except Exception as e:  # RuntimeError: see LeafTree._ticket; anything else: a bug
                broken = str(e) if isinstance(e, RuntimeError) else (
                    f"the audit's commitment process failed: {type(e).__name__}: {e}")
                if message[0] != "update":
                    answers.send_bytes(pickle.dumps((b"", [], broken)))
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
