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
import io
import json
import pickle
import signal
from bisect import bisect_left
from json.encoder import encode_basestring as _string
from multiprocessing import get_context
from typing import Any, NamedTuple

from domain.base import LedgerAggregate
from domain.blocks import WatchedBlocks
from domain.ticket import AVAILABLE, CANCELLED, PLEDGED, RETIRED, Ticket
from ledger import merkle
from ledger.audit_front import HELPER_NICENESS, lower_priority, widen
from ledger.commitments import entry, key_of, leaf_bytes

_STATES = frozenset((AVAILABLE, PLEDGED, RETIRED, CANCELLED))


class TicketInvariants:
    """Each ticket's blocks as last verified.

    A ticket's blocks are verified in full the first time, and then held in a `WatchedBlocks`
    list (set as the ticket's blocks), which notes the spans a command replaced: only the blocks
    in them, and their neighbours, are checked again. Anything the list cannot account for (a
    change of unknown place, another list set as the ticket's blocks, another quantity) checks
    every block, with the ticket's own message. What each check saw is also noted for the
    state commitment (`journal`): the span checked and its blocks, or all the blocks."""

    def __init__(self) -> None:
        # Both by id(ticket): the replay changes each ticket in place, and the entry holds the
        # ticket, so that its id cannot go to another object while it is here.
        # id(ticket) -> (the ticket, its blocks, watched since they were last verified; its
        # quantity then; the number of blocks then; its commitment key)
        self._verified: dict[int, tuple[Ticket, WatchedBlocks, Any, int, str]] = {}
        # With a list here (AuditCommitment sets one), each check notes in it how the ticket's
        # blocks changed, in order: (key, lo, hi, the blocks that replaced blocks lo..hi-1) for
        # the span checked, or (key, the fields outside the blocks, all the blocks) when the
        # ticket was checked in full. (No event changes a ticket's fields outside its blocks
        # but its quantity, and another quantity makes the check a full one.)
        self.journal: list[tuple[Any, ...]] | None = None

    def _seen(self, ticket: Ticket) -> tuple[Ticket, WatchedBlocks, Any, int, str] | None:
        seen = self._verified.get(id(ticket))
        return seen if seen is not None and seen[0] is ticket else None

    def check(self, ticket: Ticket) -> str:
        """Raise AssertionError (the ticket's own) if the ticket's invariants do not hold; return
        the ticket's commitment key."""
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
        key = seen[4] if seen is not None else key_of(ticket)
        self._verified[tid] = (ticket, blocks, ticket.quantity_t, len(blocks), key)
        journal = self.journal
        if journal is not None:
            if span is None:
                journal.append((key, (ticket.quantity_t, ticket.issuer, ticket.project_id,
                                      ticket.standard, ticket.ticket_no), list(blocks)))
            else:
                lo, hi = span
                journal.append((key, lo, hi - len(blocks) + seen[3], blocks[lo:hi]))  # type: ignore[index]
        return key

    def start_journal(self) -> None:
        """Note how tickets' blocks change from now on (`journal`), starting with all of each
        ticket's blocks at its next check."""
        self.journal = []
        self._verified.clear()

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
        self._dirty: set[str] = set()
        self._committed: dict[type, bool] = {}
        self._fast = True
        self.tickets = tickets
        tickets.start_journal()
        self._checks: dict[str, bytes] = {}  # ticket key -> its leaf made the ordinary way
        self._inserted: list[str] = []  # the keys added since the last root, in order
        self.tree: LeafTree | TreeProcess = LeafTree()  # the tree over the leaves

    def touch(self, agg: LedgerAggregate, key: str | None = None) -> None:
        """Note that an aggregate changed; its leaf is recomputed at the next root(). `key`:
        its key_of(), when the caller has it."""
        if key is None:
            kind = type(agg)
            if self._committed.get(kind) is False:
                return
            key = key_of(agg)
            if key is None:  # key_of answers by class: no aggregate of this class is committed
                self._committed[kind] = False
                return
        if key not in self._aggregates:
            self._inserted.append(key)  # its leaf is made at the next refresh: it is dirty
        self._aggregates[key] = agg
        self._dirty.add(key)

    def _refresh(self) -> list[tuple[str, bytes | None]]:
        """The leaves of the aggregates touched since the last refresh: (key, leaf hash), or
        (key, None) for a ticket whose leaf the tree makes from the blocks the journal gave it
        (LeafTree._ticket)."""
        checked = False
        changed: list[tuple[str, bytes | None]] = []
        for key in self._dirty:
            agg = self._aggregates[key]
            if type(agg) is Ticket and self._fast:
                blocks = self.tickets.verified(agg)
                if blocks is not None:  # the journal has its blocks as they are
                    if checked:
                        changed.append((key, None))
                        continue
                    # The shortcut must write what entry() and canonical JSON write, and the
                    # tree's leaf must be the ordinary one: checked on one ticket per refresh.
                    checked = True
                    found = entry(agg)
                    assert found is not None
                    data = leaf_bytes(key, found[1])
                    before, after = _ticket_ends(key, _ticket_head(agg))
                    if _ticket_text(before, list(map(_block_json, blocks)), after) == data:
                        changed.append((key, None))
                        self._checks[key] = merkle.leaf_hash(data)
                        continue
                    self._fast = False  # (the tree's copies are left unused from now on)
                    self.tickets.journal = None
                # else: changed since it was checked (the journal has it as it was then, and
                # its next check notes every change since): hashed here
            found = entry(agg)
            assert found is not None
            changed.append((key, merkle.leaf_hash(leaf_bytes(key, found[1]))))
        self._dirty.clear()
        return changed

    def _changes(self) -> Changes:
        """What changed since the last call, for the tree (see Changes)."""
        inserted, self._inserted = self._inserted, []
        changed = self._refresh()
        journal = self.tickets.journal
        if journal is not None:  # (None: the shortcut is off, and the tree needs no journal)
            self.tickets.journal = []
        checks, self._checks = self._checks, {}
        return Changes(inserted, changed, journal or [], checks)

    def root(self) -> bytes:
        """merkle.root over the leaves in key order, rehashing only the paths of the leaves that changed
        and, after the lowest key added since the last root, everything (the leaves moved)."""
        return self.tree.root(self._changes())

    def matches(self, expected: bytes, size: int) -> bool:
        """Whether the root is `expected` (the state commitment of the checkpoint at `size`).
        A tree in a process of its own answers at the end (`mismatches`): True here."""
        return self.tree.matches(expected, size, self._changes())


class Changes(NamedTuple):
    """What changed in the commitment since the tree last had it."""

    inserted: list[str]  # the keys added, in order (each is in `changed` too)
    changed: list[tuple[str, bytes | None]]  # (key, its leaf hash, or None: LeafTree._ticket)
    journal: list[tuple[Any, ...]]  # how tickets' blocks changed (TicketInvariants.journal)
    checks: dict[str, bytes]  # ticket key -> its leaf hash made the ordinary way


def _ticket_head(t: Ticket) -> tuple[Any, ...]:
    """A ticket's fields that its leaf holds besides its blocks."""
    return (t.quantity_t, t.issuer, t.project_id, t.standard, t.ticket_no)


def _ticket_ends(key: str, head: tuple[Any, ...]) -> tuple[str, str]:
    """The canonical JSON of a ticket's leaf before its blocks, and after them."""
    quantity, issuer, project_id, standard, ticket_no = head
    return (f'{{"key":{_dumps(key)},"value":{{"blocks":[',
            f'],"issued_t":{_dumps(quantity)},"issuer":{_dumps(issuer)},'
            f'"project_id":{_dumps(project_id)},"standard":{_dumps(standard)},'
            f'"ticket_no":{_dumps(ticket_no)}}}}}')


def _ticket_text(before: str, blocks: list[str], after: str) -> bytes:
    return (before + ",".join(blocks) + after).encode()


class LeafTree:
    """The stored levels of complete subtrees over the commitment's leaves, kept up to date,
    and each ticket's blocks' JSON, from which it makes the tickets' leaves (_ticket)."""

    def __init__(self) -> None:
        self.keys: list[str] = []  # sorted: the leaves' keys
        self.leaves: list[bytes] = []
        self.levels: list[list[bytes]] = [[]]
        self.tickets: dict[str, list[Any]] = {}  # key -> [JSON before, after, the blocks' JSON]

    def update(self, changes: Changes) -> None:
        self._follow(changes.journal)
        keys, leaves = self.keys, self.leaves
        # The leaves moved from the lowest position a key was added at (a key added later
        # below a new one moves it up, never down).
        start = len(leaves)
        for key in changes.inserted:
            at = bisect_left(keys, key)
            keys.insert(at, key)
            leaves.insert(at, b"")  # (every key added is among the changed ones)
            start = min(start, at)
        checks = changes.checks
        positions = []
        for key, leaf in changes.changed:
            at = bisect_left(keys, key)
            if at == len(keys) or keys[at] != key:
                raise RuntimeError(f"the audit's commitment has no leaf {key}")
            leaves[at] = leaf if leaf is not None else self._ticket(key, checks.get(key))
            positions.append(at)
        _rehash(self.levels, leaves, positions, start)

    def _follow(self, journal: list[tuple[Any, ...]]) -> None:
        """Change the tickets' blocks' JSON kept here as the journal says (in the form of
        TicketInvariants.journal: all of a ticket's blocks, or the blocks of one span)."""
        tickets = self.tickets
        for note in journal:
            if len(note) == 3:
                key, head, blocks = note
                tickets[key] = [*_ticket_ends(key, head), list(map(_block_json, blocks))]
            else:
                key, lo, hi, blocks = note
                tickets[key][2][lo:hi] = map(_block_json, blocks)

    def _ticket(self, key: str, check: bytes | None) -> bytes:
        """A ticket's leaf hash, from the JSON kept here; `check`, when given, is the leaf hash
        the replay made of the same ticket the ordinary way: the one made here must be it."""
        before, after, blocks = self.tickets[key]
        made = merkle.leaf_hash(_ticket_text(before, blocks, after))
        if check is not None and made != check:
            raise RuntimeError(f"the audit's copy of {key}'s blocks differs from the "
                               "replayed ticket's")
        return made

    def root(self, changes: Changes) -> bytes:
        self.update(changes)
        size = len(self.leaves)
        return merkle._range_hash(self.levels, 0, size) if size else merkle.EMPTY_ROOT

    def matches(self, expected: bytes, size: int, changes: Changes) -> bool:
        return self.root(changes) == expected

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
        widen(self._requests)  # a checkpoint's changes (about 80 KB) are sent without waiting
        self._proc = ctx.Process(target=_tree_main, name="carbon-ledger-audit-commitment",
                                 args=(requests_r, answers_w, (self._answers, self._requests)),
                                 daemon=True)
        self._proc.start()
        answers_w.close()
        requests_r.close()
        self._final: tuple[bytes, list[int], str] | None = None

    def matches(self, expected: bytes, size: int, changes: Changes) -> bool:
        self._send(("update", changes, expected, size))
        return True

    def root(self, changes: Changes) -> bytes:
        if self._final is None:
            self._send(("finish", changes))
            try:
                self._final = pickle.loads(self._answers.recv_bytes())
            except (EOFError, OSError):
                self._gone()
        elif changes.inserted or changes.changed:
            raise RuntimeError("the commitment changed after the audit's last root")
        if self._final[2]:
            raise RuntimeError(self._final[2])
        return self._final[0]

    def _send(self, message: tuple[Any, ...]) -> None:
        # Pickled without a memo (`fast`): the changes are lists of tuples of ints and strings,
        # shared by nothing and containing nothing of their own, and keeping a memo of every
        # tuple and string costs more than writing a repeated holder's name out again.
        out = io.BytesIO()
        pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
        pickler.fast = True
        try:
            pickler.dump(message)
            self._requests.send_bytes(out.getbuffer())
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
    lower_priority(HELPER_NICENESS)  # it only has to be done when the replay ends
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
                    _, changes, expected, size = message
                    if not tree.matches(expected, size, changes):
                        mismatched.append(size)
                else:
                    answers.send_bytes(pickle.dumps((tree.root(message[1]),
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
