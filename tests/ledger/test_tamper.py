"""Tampering with a real SQLite registry: the audit names the exact position of the damage.

One demo registry is built per module (with checkpoints after the participants are registered,
after the trades, and at the end); each test copies its database file and damages the copy with
the sqlite3 module, the way an attacker with write access to the file would.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import msgpack
import pytest

from api.cli import main
from domain.errors import DomainError
from ledger import demo
from ledger.application import Registry
from ledger.audit import AuditReport, audit_database, audit_export, export
from ledger.checkpoints import Checkpoint
from ledger.keys import Keyring, generate, public_text
from ledger.records import GENESIS_CHAIN, Record
from ledger.transcoder import MsgpackTranscoder

CHECKPOINT_AFTER = ("demo-register-longyan-farm", "trade/shaxian-exchange/SX-2021-0005")
T = MsgpackTranscoder()
COLUMNS = "originator_id, originator_version, topic, state, chain"


@dataclass(frozen=True)
class Demo:
    path: Path
    keyring: Keyring
    operator_key: str
    positions: dict[str, int]  # command id -> position of its CommandRecord
    checkpoints: tuple[int, ...]
    size: int


def url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    path = tmp_path_factory.mktemp("demo") / "registry.db"
    keyring = Keyring()
    app = Registry(url(path), keyring=keyring, auto_checkpoint=False)
    positions: dict[str, int] = {}
    try:
        for name, actor, command_id, args in demo.story():
            try:
                positions[command_id] = app.submit(name, actor, command_id, args)["position"]
            except DomainError as e:
                assert demo.EXPECTED_REFUSALS.get(command_id) == e.code
            if command_id in CHECKPOINT_AFTER:
                app.operator_checkpointer().make()
        app.operator_checkpointer().make()
        operator_key = app.projection().genesis.operator_key
        sizes = tuple(c[0] for c in app.recorder.select_checkpoints())
        size = app.log_position()
    finally:
        app.close()
    assert sizes == (positions[CHECKPOINT_AFTER[0]], positions[CHECKPOINT_AFTER[1]], size)
    return Demo(path, keyring, operator_key, positions, sizes, size)


def copy_db(path: Path, copy: Path) -> Path:
    """A copy of an SQLite database file, made with SQLite's online backup."""
    src, dst = sqlite3.connect(path), sqlite3.connect(copy)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return copy


@pytest.fixture
def db(demo_db: Demo, tmp_path: Path) -> Path:
    """A private copy of the demo registry's database file."""
    return copy_db(demo_db.path, tmp_path / "registry.db")


@pytest.fixture
def con(db: Path) -> Iterator[sqlite3.Connection]:
    c = sqlite3.connect(db)
    yield c
    c.close()


def audit(path: Path, operator_key: str | None = None) -> AuditReport:
    app = Registry(url(path), keyring=Keyring(), auto_checkpoint=False)
    try:
        return audit_database(app.recorder, operator_key, workers=1)
    finally:
        app.close()


def failure(report: AuditReport) -> tuple[int, str]:
    assert not report.ok
    assert report.failure is not None
    return report.failure.position, report.failure.what


# Editing the file ------------------------------------------------------------------------------

def positions_of(con: sqlite3.Connection, topic: str) -> list[int]:
    return [r[0] for r in con.execute(
        "SELECT rowid FROM stored_events WHERE topic = ? ORDER BY rowid", (topic,))]


def flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


def read_state(con: sqlite3.Connection, position: int) -> dict:
    (state,) = con.execute("SELECT state FROM stored_events WHERE rowid = ?", (position,)).fetchone()
    return T.decode(bytes(state))


def write_state(con: sqlite3.Connection, position: int, state: dict) -> None:
    con.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (T.encode(state), position))


def forge_raw(con: sqlite3.Connection, position: int, raw: bytes) -> None:
    """Store these bytes as the record's state, and recompute the chain over them."""
    con.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (raw, position))
    recompute_chain(con)
    con.commit()


def undecodable_at(db: Path, demo_db: Demo, position: int) -> None:
    at, what = failure(audit(db, demo_db.operator_key))
    assert at == position
    assert what.startswith("the record cannot be decoded")


def recompute_chain(con: sqlite3.Connection) -> None:
    """Make every chain value and the head match the (edited) records, as a careful forger would."""
    chain = GENESIS_CHAIN
    size = 0
    rows = con.execute("SELECT rowid, originator_id, originator_version, topic, state "
                       "FROM stored_events ORDER BY rowid").fetchall()
    for rowid, oid, version, topic, state in rows:
        chain = hashlib.sha256(
            chain + Record(rowid, UUID(oid), version, topic, bytes(state)).leaf_hash()).digest()
        con.execute("UPDATE stored_events SET chain = ? WHERE rowid = ?", (chain, rowid))
        size = rowid
    con.execute("UPDATE ledger_head SET size = ?, chain = ? WHERE id = 1", (size, chain))


def resign_checkpoints(db: Path, keyring: Keyring) -> None:
    """The operator (who holds the key) drops the old checkpoints and signs the edited log."""
    con = sqlite3.connect(db)
    con.execute("DELETE FROM checkpoints")
    con.commit()
    con.close()
    app = Registry(url(db), keyring=keyring, auto_checkpoint=False)
    try:
        app.operator_checkpointer().make()
    finally:
        app.close()


def forge(con: sqlite3.Connection, position: int, edit: Callable[[dict], None]) -> None:
    state = read_state(con, position)
    edit(state)
    write_state(con, position, state)
    recompute_chain(con)
    con.commit()


# The untouched log ----------------------------------------------------------------------------

def test_untouched_demo_registry_verifies_clean(db: Path, demo_db: Demo) -> None:
    report = audit(db, demo_db.operator_key)
    assert report.ok and report.failure is None
    assert report.records == demo_db.size
    assert report.commands == len(demo_db.positions)
    assert report.checkpoints == len(demo_db.checkpoints)
    assert report.origin == demo.ORIGIN and report.operator_key == demo_db.operator_key


def test_unpinned_audit_says_where_the_key_came_from(db: Path) -> None:
    report = audit(db)
    assert report.ok and not report.operator_key_pinned
    assert any("--operator-key" in note for note in report.notes)


# Damaged bytes, deleted and reordered records --------------------------------------------------

@pytest.mark.parametrize("which", ["first", "transferred", "pledged", "last"])
def test_flipped_state_byte_is_found_at_its_position(con: sqlite3.Connection, db: Path,
                                                     demo_db: Demo, which: str) -> None:
    position = {
        "first": 1,
        "transferred": positions_of(con, "domain.ticket:Ticket.Transferred")[0],
        "pledged": positions_of(con, "domain.ticket:Ticket.Pledged")[1],
        "last": demo_db.size,
    }[which]
    (state,) = con.execute("SELECT state FROM stored_events WHERE rowid = ?", (position,)).fetchone()
    con.execute("UPDATE stored_events SET state = ? WHERE rowid = ?",
                (flip(bytes(state), len(state) // 2), position))
    con.commit()
    at, what = failure(audit(db, demo_db.operator_key))
    assert at == position
    assert "does not match the hash chain" in what


def test_flipped_chain_byte_is_found_at_its_position(con: sqlite3.Connection, db: Path,
                                                     demo_db: Demo) -> None:
    position = demo_db.positions["demo-mandate-xiayang-farm"]
    (chain,) = con.execute("SELECT chain FROM stored_events WHERE rowid = ?", (position,)).fetchone()
    con.execute("UPDATE stored_events SET chain = ? WHERE rowid = ?", (flip(bytes(chain), 0), position))
    con.commit()
    at, what = failure(audit(db, demo_db.operator_key))
    assert at == position
    assert "does not match the hash chain" in what


@pytest.mark.parametrize("column, value", [("state", "'x'"), ("chain", "42"),
                                           ("originator_id", "'not hex'"),
                                           ("originator_id", "X'00112233'")])
def test_a_value_of_another_type_is_found_at_its_position(con: sqlite3.Connection, db: Path,
                                                          demo_db: Demo, column: str,
                                                          value: str) -> None:
    """SQLite keeps a value of any type in any column: text or a number where a record's bytes
    belong, or an id that is not hex text, fails the hash chain at its record (the audit neither
    stops reading nor raises)."""
    position = positions_of(con, "domain.ticket:Ticket.Transferred")[0]
    con.execute(f"UPDATE stored_events SET {column} = {value} WHERE rowid = ?", (position,))
    con.commit()
    at, what = failure(audit(db, demo_db.operator_key))
    assert at == position
    assert "does not match the hash chain" in what


def test_deleted_record_in_the_middle_is_named_missing(con: sqlite3.Connection, db: Path,
                                                       demo_db: Demo) -> None:
    position = positions_of(con, "domain.trade:Trade.Settled")[2]
    con.execute("DELETE FROM stored_events WHERE rowid = ?", (position,))
    con.commit()
    at, what = failure(audit(db, demo_db.operator_key))
    assert at == position
    assert what.startswith(f"record {position} is missing (the next record is {position + 1})")


def test_swapped_records_name_the_first_of_them(con: sqlite3.Connection, db: Path,
                                                demo_db: Demo) -> None:
    a, b = positions_of(con, "domain.ticket:Ticket.Transferred")[1:3]
    row_a = con.execute(f"SELECT {COLUMNS} FROM stored_events WHERE rowid = ?", (a,)).fetchone()
    row_b = con.execute(f"SELECT {COLUMNS} FROM stored_events WHERE rowid = ?", (b,)).fetchone()
    con.execute("DELETE FROM stored_events WHERE rowid IN (?, ?)", (a, b))
    con.execute(f"INSERT INTO stored_events (rowid, {COLUMNS}) VALUES (?,?,?,?,?,?)", (a, *row_b))
    con.execute(f"INSERT INTO stored_events (rowid, {COLUMNS}) VALUES (?,?,?,?,?,?)", (b, *row_a))
    con.commit()
    at, what = failure(audit(db, demo_db.operator_key))
    assert at == a
    assert "does not match the hash chain" in what


def test_swapped_records_with_recomputed_chain_are_still_caught(con: sqlite3.Connection, db: Path,
                                                                demo_db: Demo) -> None:
    a = demo_db.positions["demo-mandate-changkou-village"]
    b = demo_db.positions["demo-mandate-xiayang-farm"]
    row_a = con.execute(f"SELECT {COLUMNS} FROM stored_events WHERE rowid = ?", (a,)).fetchone()
    row_b = con.execute(f"SELECT {COLUMNS} FROM stored_events WHERE rowid = ?", (b,)).fetchone()
    con.execute("DELETE FROM stored_events WHERE rowid IN (?, ?)", (a, b))
    con.execute(f"INSERT INTO stored_events (rowid, {COLUMNS}) VALUES (?,?,?,?,?,?)", (a, *row_b))
    con.execute(f"INSERT INTO stored_events (rowid, {COLUMNS}) VALUES (?,?,?,?,?,?)", (b, *row_a))
    recompute_chain(con)
    con.commit()
    at, what = failure(audit(db, demo_db.operator_key))
    # the mandate event before the first swapped record now sits inside another command
    assert at == a - 1
    assert "demo-mandate-changkou-village" in what and "demo-mandate-xiayang-farm" in what


@pytest.mark.parametrize("boundary_after, checkpoint_index", [
    ("trade/shaxian-exchange/SX-2021-0003", 1),  # below the middle checkpoint
    ("claim/CLM-2022-001/approve", 2),  # between the middle and the latest checkpoint
])
def test_truncated_tail_behind_a_checkpoint_names_the_checkpoint(
        con: sqlite3.Connection, db: Path, demo_db: Demo, boundary_after: str,
        checkpoint_index: int) -> None:
    boundary = demo_db.positions[boundary_after]
    signed_at = demo_db.checkpoints[checkpoint_index]
    assert boundary < signed_at
    con.execute("DELETE FROM stored_events WHERE rowid > ?", (boundary,))
    recompute_chain(con)  # the head agrees with the shortened log
    con.commit()
    at, what = failure(audit(db, demo_db.operator_key))
    assert at == boundary + 1
    assert f"the log has {boundary} records but a checkpoint was signed at size {signed_at}" in what
    assert f"records after {boundary} were removed" in what


def test_tail_cut_inside_a_command_is_named(con: sqlite3.Connection, db: Path,
                                            demo_db: Demo) -> None:
    record = demo_db.positions["pledge/PL-2021-001"]
    con.execute("DELETE FROM stored_events WHERE rowid >= ?", (record,))
    con.execute("DELETE FROM checkpoints WHERE size >= ?", (record,))
    con.commit()
    first = demo_db.positions["trade/shaxian-exchange/SX-2021-0005"] + 1
    at, what = failure(audit(db, demo_db.operator_key))
    assert at == first
    assert "the log ends inside a command" in what


# The operator's key ----------------------------------------------------------------------------

def test_another_pinned_operator_key_fails_at_the_genesis_record(db: Path, demo_db: Demo) -> None:
    other = public_text(generate())
    at, what = failure(audit(db, other))
    assert at == demo_db.positions["demo-init"]
    assert "the genesis record pins another operator key" in what
    assert demo_db.operator_key in what and other in what


def test_replaced_checkpoint_signature_is_not_the_operators(con: sqlite3.Connection, db: Path,
                                                            demo_db: Demo) -> None:
    size = demo_db.checkpoints[1]
    (sig,) = con.execute("SELECT signature FROM checkpoints WHERE size = ?", (size,)).fetchone()
    con.execute("UPDATE checkpoints SET signature = ? WHERE size = ?", (flip(bytes(sig), 7), size))
    con.commit()
    at, what = failure(audit(db, demo_db.operator_key))
    assert (at, what) == (size, f"checkpoint at size {size} is not signed by the operator key")


def test_checkpoints_resigned_with_another_key_fail_at_the_first(con: sqlite3.Connection, db: Path,
                                                                 demo_db: Demo) -> None:
    key = generate()
    for size, body in con.execute("SELECT size, body FROM checkpoints").fetchall():
        con.execute("UPDATE checkpoints SET signature = ? WHERE size = ?", (key.sign(bytes(body)), size))
    con.commit()
    first = demo_db.checkpoints[0]
    for pinned in (demo_db.operator_key, None):
        at, what = failure(audit(db, pinned))
        assert (at, what) == (first, f"checkpoint at size {first} is not signed by the operator key")


# Forgeries that keep the hash chain valid --------------------------------------------------------

@pytest.mark.parametrize("command_id, index, signer", [
    ("trade/shaxian-exchange/SX-2021-0001", 0, "shaxian-exchange"),  # the actor's signature
    ("pledge/PL-2021-001", 1, "jinsen-carbon"),  # the pledgor's consent
    ("demo-register-cib-sanming", 0, "registry"),  # the operator's own command
])
def test_forged_signature_with_recomputed_chain_is_caught_by_the_signature_check(
        con: sqlite3.Connection, db: Path, demo_db: Demo, command_id: str, index: int,
        signer: str) -> None:
    position = demo_db.positions[command_id]

    def edit(state: dict) -> None:
        sig = state["signatures"][index]
        assert sig["signer"] == signer
        sig["signature"] = flip(bytes(sig["signature"]), 3)

    forge(con, position, edit)
    resign_checkpoints(db, demo_db.keyring)  # even a checkpoint over the forged log is signed
    at, what = failure(audit(db, demo_db.operator_key))
    assert at == position
    assert f"the signature by {signer} with key" in what
    assert f"on command {command_id} does not verify" in what


def test_edited_event_with_recomputed_chain_is_caught_by_reexecution(
        con: sqlite3.Connection, db: Path, demo_db: Demo) -> None:
    command_id = "trade/shaxian-exchange/SX-2021-0001"
    position = positions_of(con, "domain.ticket:Ticket.Transferred")[0]
    assert read_state(con, position)["command_id"] == command_id

    def edit(state: dict) -> None:
        assert state["buyer"] == "tonghai-nickel"
        state["buyer"] = "jinsen-carbon"

    forge(con, position, edit)
    resign_checkpoints(db, demo_db.keyring)
    at, what = failure(audit(db, demo_db.operator_key))
    assert at == position
    assert f"the event is not what command {command_id} yields under the rules" in what


def test_edited_outcome_with_recomputed_chain_is_caught(con: sqlite3.Connection, db: Path,
                                                        demo_db: Demo) -> None:
    command_id = "pledge/PL-2021-001"
    position = demo_db.positions[command_id]

    def edit(state: dict) -> None:
        state["outcome"]["pledgee"] = "picc-fujian"

    forge(con, position, edit)
    resign_checkpoints(db, demo_db.keyring)
    at, what = failure(audit(db, demo_db.operator_key))
    assert (at, what) == (position, f"the recorded outcome of command {command_id} differs from "
                          "what the rules give")


def test_undecodable_outcome_with_recomputed_chain_is_named_at_its_record(
        con: sqlite3.Connection, db: Path, demo_db: Demo) -> None:
    """An outcome whose bytes are no valid msgpack text (the front leaves outcomes to the replay
    to decode when their bytes differ from the rules' own) is named at its record."""
    command_id = "pledge/PL-2021-001"
    position = demo_db.positions[command_id]
    state = read_state(con, position)
    state["outcome"]["pledgee"] = "MARK" * 4
    forge_raw(con, position, T.encode(state).replace(b"MARK" * 4, b"\xff\xfe" * 8))
    undecodable_at(db, demo_db, position)


def test_edited_signed_body_with_recomputed_chain_is_caught(con: sqlite3.Connection, db: Path,
                                                            demo_db: Demo) -> None:
    command_id = "trade/shaxian-exchange/SX-2021-0001"
    position = demo_db.positions[command_id]

    def edit(state: dict) -> None:
        state["body"] = bytes(state["body"]).replace(b'"price":"15.00"', b'"price":"16.00"')

    forge(con, position, edit)
    at, what = failure(audit(db, demo_db.operator_key))
    assert at == position
    assert f"command {command_id} (transfer by shaxian-exchange) does not stand up" in what


@pytest.mark.parametrize("depth", [40, 100_000])
def test_a_deeply_nested_signed_body_gets_a_verdict_at_its_record(
        con: sqlite3.Connection, db: Path, demo_db: Demo, depth: int,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A body nested past what the parsers' stack allows used to stop the audit with a
    RecursionError: `verify` exited 3, "no verdict", every time. It is a record that does not
    stand up, and `verify` says so (exit status 1)."""
    command_id = "trade/shaxian-exchange/SX-2021-0001"
    position = demo_db.positions[command_id]

    def edit(state: dict) -> None:
        body = bytes(state["body"])
        state["body"] = body.replace(b'"args":{', b'"args":{"a":' + b"[" * depth + b"]" * depth + b",", 1)

    forge(con, position, edit)
    at, what = failure(audit(db, demo_db.operator_key))
    assert at == position
    assert f"command {command_id} (transfer by shaxian-exchange) does not stand up" in what
    assert "nesting_too_deep" in what and "more than 32 levels deep" in what
    capsys.readouterr()
    assert main(["verify", "--db", url(db), "--operator-key", demo_db.operator_key]) == 1
    err = capsys.readouterr().err.replace("\n", " ")
    assert f"verification failed at position {position}" in err and "nesting_too_deep" in err


# Events the front leaves to the replay to read (every event but command records and keys') ---

def first_transfer_event(con: sqlite3.Connection) -> tuple[int, str]:
    """The position of the demo's first Ticket.Transferred event, and its command id."""
    position = positions_of(con, "domain.ticket:Ticket.Transferred")[0]
    return position, read_state(con, position)["command_id"]


def test_event_of_another_aggregate_with_recomputed_chain_is_named_at_the_event(
        con: sqlite3.Connection, db: Path, demo_db: Demo) -> None:
    """The same event, its bytes untouched, recorded under another originator id."""
    position, command_id = first_transfer_event(con)
    con.execute("UPDATE stored_events SET originator_id = ? WHERE rowid = ?",
                (UUID(int=12345).hex, position))
    recompute_chain(con)
    con.commit()
    at, what = failure(audit(db, demo_db.operator_key))
    assert at == position
    assert f"the event is not what command {command_id} yields under the rules" in what


def test_event_moved_into_another_command_with_recomputed_chain_is_named_at_the_event(
        con: sqlite3.Connection, db: Path, demo_db: Demo) -> None:
    position, command_id = first_transfer_event(con)
    other = "trade/shaxian-exchange/SX-2021-0002"
    assert other != command_id

    def edit(state: dict) -> None:
        state["command_id"] = other

    forge(con, position, edit)
    resign_checkpoints(db, demo_db.keyring)
    at, what = failure(audit(db, demo_db.operator_key))
    assert (at, what) == (position, f"the event belongs to command {other} but is recorded "
                          f"inside command {command_id}")


def undecodable_transfer_event(con: sqlite3.Connection) -> int:
    """Make the first Ticket.Transferred event's buyer invalid UTF-8 (no valid msgpack text),
    recompute the chain, and return its position."""
    position, _ = first_transfer_event(con)
    state = read_state(con, position)
    state["buyer"] = "MARK" * 4
    forge_raw(con, position, T.encode(state).replace(b"MARK" * 4, b"\xff\xfe" * 8))
    return position


def test_undecodable_event_with_recomputed_chain_is_named_at_its_record(
        con: sqlite3.Connection, db: Path, demo_db: Demo) -> None:
    undecodable_at(db, demo_db, undecodable_transfer_event(con))


def test_undecodable_event_is_named_before_its_commands_broken_body(
        con: sqlite3.Connection, db: Path, demo_db: Demo) -> None:
    """The command's own failure (a body that no longer parses) comes after its events', as
    when every event is read first."""
    _, command_id = first_transfer_event(con)
    position = undecodable_transfer_event(con)
    record = demo_db.positions[command_id]
    assert record > position

    def edit(state: dict) -> None:
        state["body"] = b"not json"

    forge(con, record, edit)
    undecodable_at(db, demo_db, position)


def test_event_with_an_impossible_time_is_named_at_its_record(
        con: sqlite3.Connection, db: Path, demo_db: Demo) -> None:
    """A time whose nanoseconds field is beyond 999,999,999 is no msgpack timestamp."""
    position, _ = first_transfer_event(con)
    (raw,) = con.execute("SELECT state FROM stored_events WHERE rowid = ?",
                         (position,)).fetchone()
    raw = bytes(raw)
    at = raw.index(b"\xa9timestamp") + 10
    assert raw[at:at + 2] == b"\xd7\xff"  # timestamp 64: 30 bits of nanoseconds, 34 of seconds
    seconds = int.from_bytes(raw[at + 2:at + 10], "big") & ((1 << 34) - 1)
    bad = ((1 << 30) - 1) << 34 | seconds
    forge_raw(con, position, raw[:at + 2] + bad.to_bytes(8, "big") + raw[at + 10:])
    undecodable_at(db, demo_db, position)


# Checkpoints that disagree with the log --------------------------------------------------------

def signed_checkpoint_with_other_root(db: Path, demo_db: Demo, size: int) -> None:
    """Insert a checkpoint at `size`, signed with the real operator key, with a different root."""
    app = Registry(url(db), keyring=demo_db.keyring, auto_checkpoint=False)
    try:
        chain = app.recorder.select_records(size, 1, stop=size)[0].chain
        state_root = app.projection(as_of=size).commitment.root()
        honest = Checkpoint.parse(app.recorder.select_checkpoints()[0][1])
        fork = Checkpoint(honest.origin, size, hashlib.sha256(b"another history").digest(), chain,
                          state_root, honest.time)
        key = demo_db.keyring.get("registry")
        assert public_text(key) == demo_db.operator_key
        app.recorder.insert_checkpoint(size, fork.body(), key.sign(fork.body()))
    finally:
        app.close()


def test_checkpoint_inconsistent_with_the_earlier_one_is_named(db: Path, demo_db: Demo) -> None:
    size = demo_db.positions["claim/CLM-2022-001/approve"]
    assert demo_db.checkpoints[1] < size < demo_db.checkpoints[2]
    signed_checkpoint_with_other_root(db, demo_db, size)
    at, what = failure(audit(db, demo_db.operator_key))
    assert at == size
    assert what.startswith(f"checkpoint at size {size}")
    assert "root does not match" in what or "not consistent" in what


def test_checkpoint_with_another_state_commitment_is_named(db: Path, demo_db: Demo) -> None:
    """The log's root and chain are right and the operator signed it, but the state it commits
    to is not the state the log replays to (say, a pledge shown active that was released)."""
    size = demo_db.positions["claim/CLM-2022-001/approve"]
    app = Registry(url(db), keyring=demo_db.keyring, auto_checkpoint=False)
    try:
        chain = app.recorder.select_records(size, 1, stop=size)[0].chain
        honest = Checkpoint.parse(app.recorder.select_checkpoints()[0][1])
        other_state = app.projection(as_of=size - 1).commitment.root()
        assert other_state != app.projection(as_of=size).commitment.root()
        lying = Checkpoint(honest.origin, size, app.log_tree(size).root_at(size), chain,
                           other_state, honest.time)
        app.recorder.insert_checkpoint(size, lying.body(), demo_db.keyring.get("registry").sign(
            lying.body()))
    finally:
        app.close()
    at, what = failure(audit(db, demo_db.operator_key))
    assert (at, what) == (size, f"checkpoint at size {size}: its state commitment does not match "
                          "the replayed state")


def test_checkpoint_off_a_command_boundary_is_named(con: sqlite3.Connection, db: Path,
                                                    demo_db: Demo) -> None:
    size = demo_db.positions["pledge/PL-2021-001"] - 1
    body = con.execute("SELECT body, signature FROM checkpoints WHERE size = ?",
                       (demo_db.checkpoints[1],)).fetchone()
    con.execute("INSERT INTO checkpoints (size, body, signature) VALUES (?,?,?)", (size, *body))
    con.commit()
    at, what = failure(audit(db, demo_db.operator_key))
    assert (at, what) == (size, f"the checkpoint at size {size} does not end at a command boundary")


# The same through an export, with no database --------------------------------------------------

def export_of(db: Path, tmp_path: Path) -> Path:
    app = Registry(url(db), keyring=Keyring(), auto_checkpoint=False)
    try:
        result = export(app.recorder, tmp_path / "audit.export")
    finally:
        app.close()
    return Path(result["file"])


def test_clean_export_verifies_with_no_database(db: Path, demo_db: Demo, tmp_path: Path) -> None:
    file = export_of(db, tmp_path)
    db.unlink()
    report = audit_export(file, demo_db.operator_key, workers=1)
    assert report.ok and report.failure is None
    assert (report.records, report.checkpoints) == (demo_db.size, len(demo_db.checkpoints))
    assert report.operator_key_pinned


def test_export_with_a_flipped_byte_fails_like_the_database(con: sqlite3.Connection, db: Path,
                                                            demo_db: Demo, tmp_path: Path) -> None:
    position = positions_of(con, "domain.pledge:Pledge.Created")[0]
    (state,) = con.execute("SELECT state FROM stored_events WHERE rowid = ?", (position,)).fetchone()
    con.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (flip(bytes(state), 20), position))
    con.commit()
    from_db = failure(audit(db, demo_db.operator_key))
    report = audit_export(export_of(db, tmp_path), demo_db.operator_key, workers=1)
    assert failure(report) == from_db
    assert from_db[0] == position


def test_export_with_an_inconsistent_checkpoint_fails_at_it(db: Path, demo_db: Demo,
                                                            tmp_path: Path) -> None:
    size = demo_db.positions["claim/CLM-2022-001/approve"]
    signed_checkpoint_with_other_root(db, demo_db, size)
    file = export_of(db, tmp_path)
    db.unlink()
    at, what = failure(audit_export(file, demo_db.operator_key, workers=1))
    assert at == size and what.startswith(f"checkpoint at size {size}")


def test_export_with_a_forged_signature_fails_at_it(con: sqlite3.Connection, db: Path,
                                                    demo_db: Demo, tmp_path: Path) -> None:
    command_id = "retirement/RT-2021-001"
    position = demo_db.positions[command_id]

    def edit(state: dict) -> None:
        state["signatures"][0]["signature"] = flip(bytes(state["signatures"][0]["signature"]), 0)

    forge(con, position, edit)
    resign_checkpoints(db, demo_db.keyring)
    file = export_of(db, tmp_path)
    db.unlink()
    at, what = failure(audit_export(file, demo_db.operator_key, workers=1))
    assert at == position and "the signature by jiangle-defendant" in what


def test_export_checked_with_another_operator_key_fails(db: Path, demo_db: Demo,
                                                        tmp_path: Path) -> None:
    at, what = failure(audit_export(export_of(db, tmp_path), public_text(generate()), workers=1))
    assert at == demo_db.positions["demo-init"]
    assert "pins another operator key" in what


# Damaged export files ----------------------------------------------------------------------------

def item_ends(data: bytes) -> list[tuple[int, object]]:
    """(offset just after each msgpack item, the item's kind and position) of an export file."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    out = []
    for item in unpacker:
        out.append((unpacker.tell(), "header" if isinstance(item, dict) else tuple(item[:2])))
    return out


def refused(file: Path, operator_key: str) -> str:
    """The clear refusal of a damaged export: a DomainError, or a failed report (no traceback)."""
    try:
        report = audit_export(file, operator_key, workers=1)
    except DomainError as e:
        assert e.code == "invalid_argument"
        return e.message
    assert not report.ok, f"a damaged export verified: {report.to_dict()}"
    assert report.failure is not None
    return str(report.failure)


@pytest.mark.parametrize("inside", [
    "pledge/PL-2021-001",  # the cut leaves the pledge's events without their command record
    "trade/shaxian-exchange/SX-2021-0005",  # the cut leaves whole commands only
])
def test_export_cut_inside_a_record_is_refused(db: Path, demo_db: Demo, tmp_path: Path,
                                               inside: str) -> None:
    file = export_of(db, tmp_path)
    data = file.read_bytes()
    ends = dict((kind, end) for end, kind in item_ends(data))
    position = demo_db.positions[inside]
    if inside.startswith("trade/"):
        position += 1  # the first event of the next command
    start, end = ends[("r", position - 1)], ends[("r", position)]
    file.write_bytes(data[:(start + end) // 2])
    assert refused(file, demo_db.operator_key)


@pytest.mark.parametrize("cut", [0, 1, 7])
def test_export_cut_to_nothing_is_refused_as_not_an_export(db: Path, demo_db: Demo,
                                                           tmp_path: Path, cut: int) -> None:
    file = export_of(db, tmp_path)
    file.write_bytes(file.read_bytes()[:cut])
    report = audit_export(file, demo_db.operator_key, workers=1)
    assert not report.ok and report.failure is not None and report.failure.position == 1
    assert "not a carbon-ledger export" in report.failure.what


def test_export_missing_its_last_byte_is_refused(db: Path, demo_db: Demo, tmp_path: Path) -> None:
    file = export_of(db, tmp_path)
    file.write_bytes(file.read_bytes()[:-1])
    assert refused(file, demo_db.operator_key)


def test_export_cut_after_a_whole_command_is_refused(db: Path, demo_db: Demo,
                                                     tmp_path: Path) -> None:
    file = export_of(db, tmp_path)
    data = file.read_bytes()
    boundary = demo_db.positions["trade/shaxian-exchange/SX-2021-0005"]
    cut = [end for end, kind in item_ends(data) if kind == ("r", boundary)][0]
    file.write_bytes(data[:cut])
    assert refused(file, demo_db.operator_key)
