"""The audit with its reader in a process of its own (ledger.audit_front): the same verdicts.

Every tampering test of test_tamper.py runs again here with the reader process forced on (the
audit uses it by default only for logs of more than 20,000 records), and must name the same
position with the same words. Then: a clean registry gives the same report either way, on
SQLite and on PostgreSQL; a tampered record deep inside a log of many reader chunks is caught;
an audit stopped from its progress callback leaves no process behind; and the two shortcuts of
the replay (the incremental ticket invariants and the state commitment's ticket leaves) agree
with the domain's own code.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tamper import *  # noqa: F403 - every tampering test, run again with the reader process
from test_tamper import Demo, copy_db, flip, url

import ledger.audit as audit_module
from domain import blocks as B
from domain.blocks import WatchedBlocks
from domain.ticket import AVAILABLE, PLEDGED, Ticket
from ledger import demo
from ledger.application import Registry
from ledger.audit import Auditor, DatabaseSource, ExportSource, audit_database, export
from ledger.audit_front import CHUNK_RECORDS, _without_time
from ledger.audit_state import AuditCommitment, Changes, LeafTree, TicketInvariants, TreeProcess
from ledger.commitments import StateCommitment
from ledger.keys import Keyring
from ledger.transcoder import MsgpackTranscoder


@pytest.fixture(autouse=True)
def reader_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Auditor]]:
    """Force the reader process for every audit in this module, and check it was used."""
    monkeypatch.setattr(audit_module, "READER_MIN_RECORDS", 0)
    runs: list[Auditor] = []
    run = Auditor.run

    def spied(self: Auditor, source: Any) -> Any:
        runs.append(self)
        return run(self, source)

    monkeypatch.setattr(Auditor, "run", spied)
    yield runs
    for auditor in runs:
        if auditor.reader is not False:
            assert auditor.used_reader_process
    assert not multiprocessing.active_children()


def both_ways(recorder: Any, operator_key: str | None) -> tuple[Any, Any]:
    inline = Auditor(operator_key, 1, reader=False).run(DatabaseSource(recorder))
    forked = Auditor(operator_key, 2, reader=True).run(DatabaseSource(recorder))
    return inline, forked


def same_report(a: Any, b: Any) -> None:
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d.pop("seconds")
        d.pop("events_per_s")
    assert da == db


def test_a_clean_registry_reports_the_same_counts_either_way(demo_db: Demo) -> None:
    app = Registry(url(demo_db.path), keyring=Keyring(), auto_checkpoint=False)
    try:
        inline, forked = both_ways(app.recorder, demo_db.operator_key)
    finally:
        app.close()
    assert inline.ok and forked.ok, (inline.failure, forked.failure)
    assert forked.records == demo_db.size
    assert forked.checkpoints == len(demo_db.checkpoints)
    same_report(inline, forked)


def test_the_same_report_on_postgresql(pg_url: str) -> None:
    app = Registry(pg_url, keyring=Keyring(), auto_checkpoint=False)
    try:
        demo.load(app)
        app.operator_checkpointer().make()
        key = app.projection().genesis.operator_key
        inline, forked = both_ways(app.recorder, key)
        assert inline.ok and forked.ok, (inline.failure, forked.failure)
        same_report(inline, forked)
        # the registry's own connections still work after the reader process came and went
        assert app.log_position() == forked.records
        after = app.submit("transfer", "shaxian-exchange", "after-the-audit",
                           {"trade_id": "AFTER-1", "seller": "tonghai-nickel",
                            "buyer": "jinsen-carbon", "ticket_no": "SM-0000001", "quantity_t": 1,
                            "price": "10.00", "mode": "negotiated"})
        assert after["position"] == forked.records + 3
    finally:
        app.close()


def test_an_export_is_read_by_the_reader_process(demo_db: Demo, tmp_path: Path,
                                                 reader_process: list[Auditor]) -> None:
    app = Registry(url(demo_db.path), keyring=Keyring(), auto_checkpoint=False)
    try:
        export(app.recorder, tmp_path / "demo.export")
    finally:
        app.close()
    report = audit_module.audit_export(tmp_path / "demo.export", demo_db.operator_key, workers=2)
    assert report.ok and report.records == demo_db.size
    assert reader_process[-1].used_reader_process


@pytest.fixture(scope="module")
def long_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """A registry of a few thousand records (several reader chunks), with checkpoints."""
    path = tmp_path_factory.mktemp("long") / "registry.db"
    app = Registry(url(path), keyring=Keyring(), auto_checkpoint=False)
    try:
        demo.load(app)
        n = 0
        while app.log_position() < 3 * CHUNK_RECORDS + 500:  # batches of 1 t trades
            items = [{"trade_id": f"LONG-{n}-{i}", "seller": "tonghai-nickel",
                      "buyer": "jinsen-carbon", "ticket_no": "SM-0000001", "quantity_t": 1,
                      "price": "10.00", "mode": "negotiated"} for i in range(50)]
            app.submit("settle_batch", "shaxian-exchange", f"long-batch-{n}",
                       {"batch_id": f"LB-{n}", "transfers": items})
            if n % 5 == 0:
                app.operator_checkpointer().make()
            n += 1
        app.operator_checkpointer().make()
        key = app.projection().genesis.operator_key
        size = app.log_position()
    finally:
        app.close()
    return path, key, size


def copy_of(path: Path, tmp_path: Path) -> Path:
    return copy_db(path, tmp_path / "copy.db")


def test_a_long_clean_log_gives_the_same_report_either_way(long_log: tuple[Path, str, int]) -> None:
    path, key, size = long_log
    app = Registry(url(path), keyring=Keyring(), auto_checkpoint=False)
    try:
        inline, forked = both_ways(app.recorder, key)
    finally:
        app.close()
    assert inline.ok and forked.ok, (inline.failure, forked.failure)
    assert forked.records == size > 2 * CHUNK_RECORDS
    same_report(inline, forked)


@pytest.mark.parametrize("where", [0.4, 0.9])
def test_a_record_altered_deep_in_a_long_log_is_found_in_the_reader_process(
        long_log: tuple[Path, str, int], tmp_path: Path, where: float) -> None:
    path, key, size = long_log
    db = copy_of(path, tmp_path)
    position = int(size * where)
    con = sqlite3.connect(db)
    (state,) = con.execute("SELECT state FROM stored_events WHERE rowid = ?",
                           (position,)).fetchone()
    con.execute("UPDATE stored_events SET state = ? WHERE rowid = ?",
                (flip(bytes(state), len(state) - 1), position))
    con.commit()
    con.close()
    app = Registry(url(db), keyring=Keyring(), auto_checkpoint=False)
    try:
        inline, forked = both_ways(app.recorder, key)
    finally:
        app.close()
    assert forked.failure is not None
    assert forked.failure.position == position
    assert "does not match the hash chain" in forked.failure.what
    same_report(inline, forked)


def test_an_audit_stopped_by_its_progress_callback_leaves_no_process(
        long_log: tuple[Path, str, int]) -> None:
    path, key, _ = long_log

    class Enough(Exception):
        pass

    def progress(done: int, total: int) -> None:
        raise Enough()

    app = Registry(url(path), keyring=Keyring(), auto_checkpoint=False)
    try:
        with pytest.raises(Enough):
            audit_database(app.recorder, key, workers=2, progress=progress)
    finally:
        app.close()
    assert not multiprocessing.active_children()


def test_a_commitment_process_that_dies_fails_the_audit_clearly(
        long_log: tuple[Path, str, int]) -> None:
    """Killed mid-audit, the process that checks the state commitments makes the audit fail
    with a sentence, not a broken pipe, and leaves no process behind."""
    path, key, _ = long_log
    killed: list[int] = []

    def progress(done: int, total: int) -> None:
        if not killed:
            for child in multiprocessing.active_children():
                if child.name == "carbon-ledger-audit-commitment":
                    os.kill(child.pid, signal.SIGKILL)
                    child.join(5)
                    killed.append(child.pid)

    app = Registry(url(path), keyring=Keyring(), auto_checkpoint=False)
    try:
        with pytest.raises(RuntimeError, match="commitment process ended unexpectedly"):
            audit_database(app.recorder, key, workers=2, progress=progress)
    finally:
        app.close()
    assert killed
    assert not multiprocessing.active_children()


def test_an_in_memory_database_is_read_in_this_process(reader_process: list[Auditor]) -> None:
    app = Registry("sqlite:///:memory:", keyring=Keyring(), auto_checkpoint=False)
    try:
        demo.load(app)
        assert DatabaseSource(app.recorder).forked() is None
        auditor = Auditor(None, 1, reader=True)
        report = auditor.run(DatabaseSource(app.recorder))
    finally:
        app.close()
    assert report.ok and not auditor.used_reader_process
    reader_process.remove(auditor)


def test_an_export_source_can_be_read_from_a_child(tmp_path: Path, demo_db: Demo) -> None:
    app = Registry(url(demo_db.path), keyring=Keyring(), auto_checkpoint=False)
    try:
        export(app.recorder, tmp_path / "x.export")
    finally:
        app.close()
    source = ExportSource(tmp_path / "x.export")
    assert source.forked() is source


# The replay's shortcuts against the domain's own code ---------------------------------------

def _ticket(blocks: list[Any], quantity: int) -> Ticket:
    t = object.__new__(Ticket)
    t.__dict__.update(ticket_no="SM-0000009", project_id="P-9", standard="SMCER",
                      period_start="2020-01-01", period_end="2020-12-31", quantity_t=quantity,
                      issuer="issuer-9", owner="o", blocks=blocks, _id=Ticket.id_for("SM-0000009"))
    return t


def _verdict(t: Ticket) -> str | None:
    try:
        t.check_invariants()
    except AssertionError as e:
        return str(e)
    return None


def test_incremental_ticket_invariants_agree_with_the_full_check() -> None:
    rng = random.Random(11)
    quantity = 500
    holders = ["a", "b", "c"]
    for _ in range(300):
        t = _ticket([(1, quantity, "a", AVAILABLE, "")], quantity)
        checker = TicketInvariants()
        checker.check(t)
        commitment = AuditCommitment(checker)
        reference = StateCommitment()
        for step in range(12):
            a = rng.randint(1, quantity)
            b = min(quantity, a + rng.randint(0, 60))
            state = rng.choice([AVAILABLE, AVAILABLE, PLEDGED])
            B.reassign_in_place(t.blocks, [(a, b)], rng.choice(holders), state,
                                "" if state == AVAILABLE else "PL-1")
            if rng.random() < 0.15:  # damage the blocks the way a broken rule would
                i = rng.randrange(len(t.blocks))
                f, last, h, s, r = t.blocks[i]
                t.blocks[i] = rng.choice([(f, last + 1, h, s, r), (f + 1, last, h, s, r),
                                          (f, last, h, "lost", r), (f, last, h, s, "x"),
                                          (f, last, h, PLEDGED, "")])
            want = _verdict(t)
            try:
                checker.check(t)
                got = None
            except AssertionError as e:
                got = str(e)
            assert got == want, (step, t.blocks)
            if want is not None:
                break
            commitment.touch(t)
            reference.touch(t)
            if rng.random() < 0.5:
                assert commitment.root() == reference.root()
        assert commitment.root() == reference.root()


@pytest.mark.parametrize("change", ["append", "insert", "delete", "sort", "extend", "pop",
                                    "replace the list", "reverse"])
def test_a_change_the_watched_blocks_cannot_place_checks_every_block(change: str) -> None:
    """Whatever changes a ticket's blocks other than by assignment, the checker cannot take the
    shortcut: it checks them all and gives the ticket's own verdict."""
    t = _ticket([(1, 50, "a", AVAILABLE, "")], 100)
    t.blocks.append((51, 100, "b", AVAILABLE, ""))
    checker = TicketInvariants()
    checker.check(t)
    assert type(t.blocks) is WatchedBlocks
    blocks = t.blocks
    if change == "append":
        blocks.append((101, 101, "a", AVAILABLE, ""))
    elif change == "insert":
        blocks.insert(1, (51, 60, "c", AVAILABLE, ""))
    elif change == "delete":
        del blocks[1]
    elif change == "sort":
        blocks.sort(reverse=True)
    elif change == "extend":
        blocks += [(101, 102, "a", AVAILABLE, "")]
    elif change == "pop":
        blocks.pop()
    elif change == "replace the list":
        t.__dict__["blocks"] = [(1, 100, "a", PLEDGED, "")]
    elif change == "reverse":
        blocks.reverse()
    assert blocks.touched() is None or change == "replace the list"
    want = _verdict(t)
    assert want is not None
    with pytest.raises(AssertionError) as broke:
        checker.check(t)
    assert str(broke.value) == want


def test_the_commitment_root_follows_many_tickets_added_and_changed() -> None:
    rng = random.Random(5)
    checker = TicketInvariants()
    commitment = AuditCommitment(checker)
    reference = StateCommitment()
    tickets: list[Ticket] = []
    for step in range(400):
        if not tickets or rng.random() < 0.2:  # a new ticket, its key anywhere in the order
            t = _ticket([(1, 100, "a", AVAILABLE, "")], 100)
            t.__dict__["ticket_no"] = f"SM-{rng.randrange(10**7):07d}"
            t.__dict__["_id"] = Ticket.id_for(t.ticket_no)
            checker.check(t)
            tickets.append(t)
        else:
            t = rng.choice(tickets)
            a = rng.randint(1, 100)
            b = min(100, a + rng.randint(0, 9))
            B.reassign_in_place(t.blocks, [(a, b)], rng.choice("abc"), AVAILABLE, "")
            checker.check(t)
        commitment.touch(t)
        reference.touch(t)
        if rng.random() < 0.3:
            assert commitment.root() == reference.root(), step
    assert commitment.root() == reference.root()


def test_the_commitment_process_makes_the_same_roots_from_the_tickets_edits() -> None:
    """The tickets' leaves are made by the commitment process from the journal of how their
    blocks changed (TicketInvariants.journal): the same roots as the domain's own
    StateCommitment, through a ticket whose blocks are replaced (noted in full again) and one
    changed after its last check (hashed by the replay)."""
    rng = random.Random(8)
    checker = TicketInvariants()
    commitment = AuditCommitment(checker)
    commitment.tree = TreeProcess()
    reference = StateCommitment()
    tickets: list[Ticket] = []
    try:
        for step in range(300):
            if not tickets or rng.random() < 0.1:
                t = _ticket([(1, 100, "a", AVAILABLE, "")], 100)
                t.__dict__["ticket_no"] = f"SM-{rng.randrange(10**7):07d}"
                t.__dict__["_id"] = Ticket.id_for(t.ticket_no)
                tickets.append(t)
            else:
                t = rng.choice(tickets)
                a = rng.randint(1, 100)
                b = min(100, a + rng.randint(0, 9))
                if rng.random() < 0.05:  # another list: checked in full, sent in full
                    blocks = list(t.blocks)
                    B.reassign_in_place(blocks, [(a, b)], rng.choice("abc"), AVAILABLE, "")
                    t.__dict__["blocks"] = blocks
                else:
                    B.reassign_in_place(t.blocks, [(a, b)], rng.choice("abc"), AVAILABLE, "")
            if rng.random() < 0.97:
                checker.check(t)
            commitment.touch(t)
            reference.touch(t)
            if rng.random() < 0.2:
                assert commitment.matches(reference.root(), step)
        final = reference.root()
        assert commitment.root() == final
        assert commitment.tree.mismatches() == []
    finally:
        commitment.tree.close()


def test_a_tree_whose_copy_of_a_ticket_differs_says_so() -> None:
    """Should the commitment's copy of a ticket's blocks ever differ from the replayed ticket,
    the audit ends with that error rather than with a wrong verdict, in this process and in the
    commitment process alike."""
    key = "ticket/SM-1"
    changes = Changes([key], [(key, None)],
                      [(key, (5, "issuer-1", "P-1", "SMCER", "SM-1"), [(1, 5, "a", "available", "")])],
                      {key: b"\0" * 32})
    with pytest.raises(RuntimeError, match="ticket/SM-1's blocks differs"):
        LeafTree().root(changes)
    tree = TreeProcess()
    try:
        assert tree.matches(b"x" * 32, 1, changes)
        with pytest.raises(RuntimeError, match="ticket/SM-1's blocks differs"):
            tree.root(Changes([], [], [], {}))
    finally:
        tree.close()


@pytest.mark.parametrize("when", [
    datetime(2021, 1, 1, tzinfo=UTC),  # 32-bit timestamp
    datetime(2021, 1, 1, 0, 0, 0, 123456, tzinfo=UTC),  # 64-bit
    datetime(2600, 1, 1, 0, 0, 0, 1, tzinfo=UTC),  # 96-bit
])
@pytest.mark.parametrize("keys", [1, 2, 15, 16, 17, 40])
def test_a_state_without_its_time_is_what_encoding_it_without_the_time_gives(
        when: datetime, keys: int) -> None:
    codec = MsgpackTranscoder()
    fields = {"timestamp": when, **{f"k{i}": [i, "x" * i] for i in range(keys - 1)}}
    state = codec.encode(fields)
    without = dict(fields)
    del without["timestamp"]
    assert _without_time(state, keys) == codec.encode(without)
    assert _without_time(state, keys + 1) is None  # another number of pairs than decoded
    assert _without_time(codec.encode({"a": 1, "timestamp": when}), 2) is None  # not first


def test_a_command_records_outcome_is_left_as_its_stored_bytes(demo_db: Demo) -> None:
    """The front reads a command record's fields as the transcoder decodes them but for the
    outcome, which it keeps as the stored bytes: the bytes that encoding the outcome gives."""
    from domain.command import CommandRecord
    from ledger.audit_front import RawOutcome, _command_record_fields

    codec = MsgpackTranscoder()
    app = Registry(url(demo_db.path), keyring=Keyring(), auto_checkpoint=False)
    try:
        topic = f"{CommandRecord.Accepted.__module__}:{CommandRecord.Accepted.__qualname__}"
        records = [r for r in app.recorder.select_records(1, 100_000) if r.topic == topic]
    finally:
        app.close()
    assert len(records) > 20
    for record in records:
        decoded = codec.decode(record.state)
        fields = _command_record_fields(record.state, codec)
        assert fields is not None
        raw = fields.pop("outcome")
        assert type(raw) is RawOutcome
        assert raw.data == codec.encode(decoded.pop("outcome"))
        assert list(fields.items()) == list(decoded.items())
    assert _command_record_fields(codec.encode([1, 2]), codec) is None  # not a map
    assert _command_record_fields(codec.encode({"name": "x"}), codec) is None  # no outcome
    assert _command_record_fields(codec.encode({"outcome": {}}) + b"\x00", codec) is None


def test_a_trade_kept_only_as_a_taken_id_is_still_refused_when_settled_again() -> None:
    """The replay keeps of a settled trade only that its id is taken (audit._SETTLED): a
    second settlement under that id must still fail the rules, as against the whole trade."""
    from domain.errors import DomainError
    from domain.trade import Trade
    from ledger.handlers import UnitOfWork

    taken = Trade.id_for("shaxian-exchange", "T-1")
    uow = UnitOfWork({taken: audit_module._SETTLED}.get)
    with pytest.raises(DomainError) as refused:
        uow.absent(Trade, taken, "trade T-1 of shaxian-exchange")
    assert refused.value.code == "already_exists"
    uow.absent(Trade, Trade.id_for("shaxian-exchange", "T-2"), "trade T-2 of shaxian-exchange")


@pytest.mark.skipif(not hasattr(__import__("fcntl"), "F_GETPIPE_SZ"), reason="Linux pipes only")
def test_the_readers_pipe_holds_a_whole_chunk() -> None:
    """The reader writes a chunk of items (about 600 KB at 1M) in one go: its pipe is widened."""
    import fcntl

    from ledger.audit_front import PIPE_BYTES, widen

    reading, writing = multiprocessing.Pipe(duplex=False)
    try:
        before = fcntl.fcntl(writing.fileno(), fcntl.F_GETPIPE_SZ)
        widen(writing)
        assert fcntl.fcntl(writing.fileno(), fcntl.F_GETPIPE_SZ) >= max(PIPE_BYTES, before)
    finally:
        reading.close()
        writing.close()


@pytest.mark.skipif(not hasattr(__import__("fcntl"), "F_GETPIPE_SZ"), reason="Linux pipes only")
def test_the_commitment_process_is_sent_a_checkpoint_without_waiting() -> None:
    import fcntl

    from ledger.audit_front import PIPE_BYTES

    tree = TreeProcess()
    try:
        assert fcntl.fcntl(tree._requests.fileno(), fcntl.F_GETPIPE_SZ) >= PIPE_BYTES
    finally:
        tree.close()


def test_the_helper_processes_yield_to_the_replay(demo_db: Demo, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader runs a little below the replay's priority, the commitment process and the
    signature workers well below it (each of them lowers its own, as it starts)."""
    from ledger.audit_front import HELPER_NICENESS, READER_NICENESS

    told = tmp_path / "nice"

    def nice(increment: int) -> int:  # in the forked processes: noted, and not lowered
        with open(told, "a") as f:
            f.write(f"{multiprocessing.current_process().name} {os.getpid()} {increment}\n")
        return 0

    monkeypatch.setattr(os, "nice", nice)
    app = Registry(url(demo_db.path), keyring=Keyring(), auto_checkpoint=False)
    try:
        report = Auditor(demo_db.operator_key, 2, reader=True).run(DatabaseSource(app.recorder))
    finally:
        app.close()
    assert report.ok, report.failure
    calls = sorted((name, int(pid), int(n)) for name, pid, n in
                   (line.split() for line in told.read_text().splitlines()))
    assert os.getpid() not in {pid for _, pid, _ in calls}
    by_name = {name: n for name, _, n in calls}
    assert by_name.pop("carbon-ledger-audit-reader") == READER_NICENESS
    assert by_name.pop("carbon-ledger-audit-commitment") == HELPER_NICENESS
    assert by_name and set(by_name.values()) == {HELPER_NICENESS}  # the signature workers
    assert len(calls) == len({pid for _, pid, _ in calls})  # once each
    assert HELPER_NICENESS > READER_NICENESS > 0


def test_records_made_fast_are_the_dataclass_records(demo_db: Demo) -> None:
    """The store makes its records with Record.of: the same records as Record(...)."""
    from ledger.records import Record

    app = Registry(url(demo_db.path), keyring=Keyring(), auto_checkpoint=False)
    try:
        records = app.recorder.select_records(1, 100_000)
    finally:
        app.close()
    assert len(records) > 50
    for r in records:
        again = Record(r.position, r.originator_id, r.originator_version, r.topic, r.state,
                       r.chain)
        assert r == again and hash(r) == hash(again) and repr(r) == repr(again)
        assert r.leaf_hash() == again.leaf_hash()
        assert type(r.originator_id) is UUID and r.originator_id == UUID(r.originator_id.hex)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([(b"\xd6\xff", 4), (b"\xd7\xff", 8), (b"\xc7\x0c\xff", 12)]),
       st.binary(min_size=12, max_size=12), st.booleans())
def test_a_time_decodes_as_the_transcoder_decodes_it(form: tuple[bytes, int], data: bytes,
                                                     big_nanoseconds: bool) -> None:
    """_time_decodes (what the front checks of an event it leaves unread) says of every msgpack
    timestamp what decoding it says."""
    from ledger.audit_front import _time_decodes

    head, n = form
    body = bytearray(data[:n])
    if big_nanoseconds and n >= 8:  # the nanoseconds field's top bits: often beyond a second
        body[0] |= 0xF0
    raw = head + bytes(body)
    try:
        MsgpackTranscoder().decode(raw)
        decodes = True
    except Exception:
        decodes = False
    assert _time_decodes(raw, 0, len(raw)) is decodes


def test_one_auditor_audits_two_registries_each_on_its_own(demo_db: Demo, tmp_path: Path) -> None:
    """The participants and tickets a replay knows are its own: an auditor run again, on another
    log, does not take the first log's for the second's (the second here is damaged: an event of
    a ticket's transfer recorded under another id)."""
    from test_tamper import first_transfer_event, recompute_chain

    damaged = copy_db(demo_db.path, tmp_path / "damaged.db")
    con = sqlite3.connect(damaged)
    try:
        position, _ = first_transfer_event(con)
        con.execute("UPDATE stored_events SET originator_id = ? WHERE rowid = ?",
                    (UUID(int=12345).hex, position))
        recompute_chain(con)
        con.commit()
    finally:
        con.close()
    auditor = Auditor(demo_db.operator_key, 1, reader=False)
    reports = []
    for path in (demo_db.path, damaged, demo_db.path):
        app = Registry(url(path), keyring=Keyring(), auto_checkpoint=False)
        try:
            reports.append(auditor.run(DatabaseSource(app.recorder)))
        finally:
            app.close()
    assert reports[0].ok and reports[2].ok
    assert not reports[1].ok and reports[1].failure is not None
    assert reports[1].failure.position == position
