"""The command line's key handling, audit, export and proof verbs, through api.cli.main()."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

from api.cli import main
from ledger.transcoder import MsgpackTranscoder

PUBLIC_KEY = re.compile(r"^ed25519:[A-Za-z0-9+/]{43}=$")


@dataclass
class Result:
    code: int
    out: str
    err: str


class CLI:
    def __init__(self, capsys: pytest.CaptureFixture[str], folder: Path) -> None:
        self.capsys = capsys
        self.folder = folder
        self.db = f"sqlite:///{folder / 'registry.db'}"
        self.keys = folder / "keys"

    def raw(self, *args: str) -> Result:
        self.capsys.readouterr()
        code = main(list(args))
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def __call__(self, *args: str) -> Result:
        return self.raw(*args, "--db", self.db, "--keys", str(self.keys))

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.code == 0, result
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").out)

    @property
    def db_file(self) -> Path:
        return Path(self.db[len("sqlite:///"):])


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> CLI:
    return CLI(capsys, tmp_path)


@pytest.fixture(scope="module")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`init` and `demo` run once per module; tests get copies of the database and key folder."""
    folder = tmp_path_factory.mktemp("cli-demo")
    common = ["--db", f"sqlite:///{folder / 'registry.db'}", "--keys", str(folder / "keys")]
    assert main(["init", "--origin", "carbon-ledger.test/cli", *common]) == 0
    assert main(["demo", *common]) == 0
    return folder


@pytest.fixture
def demo_cli(cli: CLI, demo_template: Path) -> CLI:
    source = sqlite3.connect(demo_template / "registry.db")
    target = sqlite3.connect(cli.db_file)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    shutil.copytree(demo_template / "keys", cli.keys)  # modes are kept
    return cli


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# Keys ------------------------------------------------------------------------------------------

def test_init_creates_the_operator_key_readable_by_its_owner_only(cli: CLI) -> None:
    result = cli.ok("init", "--origin", "carbon-ledger.test/cli")
    key_file = cli.keys / "registry.key"
    assert key_file.exists() and mode(key_file) == 0o600
    public = (cli.keys / "registry.pub").read_text().strip()
    assert PUBLIC_KEY.match(public)
    assert f"operator public key: {public}" in result.out
    assert b"PRIVATE KEY" in key_file.read_bytes()
    assert key_file.read_text() not in result.out + result.err


def test_init_never_overwrites_a_registry_or_an_operator_key(cli: CLI, tmp_path: Path) -> None:
    cli.ok("init")
    key_file = cli.keys / "registry.key"
    before = key_file.read_bytes()
    again = cli("init")
    assert again.code == 1 and "already_exists" in again.err and "initialised already" in again.err
    # a new database, but the same key folder: the operator key is not replaced
    other_db = f"sqlite:///{tmp_path / 'other.db'}"
    result = cli.raw("init", "--db", other_db, "--keys", str(cli.keys))
    assert result.code == 1
    assert "already_exists" in result.err and "operator key exists" in result.err
    assert key_file.read_bytes() == before and mode(key_file) == 0o600
    con = sqlite3.connect(tmp_path / "other.db")
    try:
        assert con.execute("SELECT COUNT(*) FROM stored_events").fetchone() == (0,)
    finally:
        con.close()


def test_operator_key_prints_the_public_key_form(cli: CLI) -> None:
    cli.ok("init")
    out = cli.ok("operator-key").out
    assert out == (cli.keys / "registry.pub").read_text()
    assert PUBLIC_KEY.match(out.strip())
    data = cli.json("operator-key")
    assert data["operator_key"] == out.strip() and data["operator_id"] == "registry"


def test_operator_key_of_an_empty_registry_is_an_error(cli: CLI) -> None:
    result = cli("operator-key")
    assert result.code == 1 and "error no_registry:" in result.err


def test_keygen_writes_a_private_key_and_never_overwrites_it(cli: CLI) -> None:
    result = cli.ok("keygen", "alice-farm")
    key_file = cli.keys / "alice-farm.key"
    assert mode(key_file) == 0o600
    public = result.out.strip().splitlines()[-1]
    assert PUBLIC_KEY.match(public)
    assert (cli.keys / "alice-farm.pub").read_text().strip() == public
    before = key_file.read_bytes()
    again = cli("keygen", "alice-farm")
    assert again.code == 1 and "already_exists" in again.err
    assert key_file.read_bytes() == before


def test_two_registries_in_one_folder_keep_separate_keys(capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    cli = CLI(capsys, tmp_path)
    keys = {}
    for name in ("a", "b"):
        db = f"sqlite:///{tmp_path / f'{name}.db'}"
        assert cli.raw("init", "--db", db).code == 0
        result = cli.raw("operator-key", "--db", db)
        assert result.code == 0
        keys[name] = result.out.strip()
        folder = tmp_path / f"{name}.db.keys"
        assert (folder / "registry.pub").read_text().strip() == keys[name]
        assert mode(folder / "registry.key") == 0o600
    assert keys["a"] != keys["b"]


# The audit ------------------------------------------------------------------------------------

def test_demo_then_verify(demo_cli: CLI) -> None:
    result = demo_cli.ok("verify")
    assert result.out.startswith("verified: ")
    report = demo_cli.json("verify")
    assert report["ok"] and report["failure"] is None
    assert report["operator_key_pinned"]  # <keys>/registry.pub is pinned by default
    assert report["cosignatures"] >= 1 and report["checkpoints"] >= 1
    assert report["origin"] == "carbon-ledger.test/cli"


def first_transferred(db_file: Path) -> int:
    con = sqlite3.connect(db_file)
    try:
        (position,) = con.execute("SELECT MIN(rowid) FROM stored_events WHERE topic = "
                                  "'domain.ticket:Ticket.Transferred'").fetchone()
    finally:
        con.close()
    return position


def test_verify_of_a_tampered_database_names_the_position(demo_cli: CLI) -> None:
    position = first_transferred(demo_cli.db_file)
    con = sqlite3.connect(demo_cli.db_file)
    (state,) = con.execute("SELECT state FROM stored_events WHERE rowid = ?", (position,)).fetchone()
    t = MsgpackTranscoder()
    data = t.decode(bytes(state))
    data["buyer"] = "jinsen-carbon"
    con.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (t.encode(data), position))
    con.commit()
    con.close()
    result = demo_cli("verify")
    assert result.code == 1
    assert f"verification failed at position {position}: the record does not match the hash " \
           "chain" in result.err.replace("\n", " ")
    report = json.loads(demo_cli("verify", "--json").out)
    assert not report["ok"] and report["failure"]["position"] == position


def test_verify_that_cannot_finish_says_so_with_its_own_exit_status(
        demo_cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    import api.cli

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("the audit's commitment process ended unexpectedly (exit code -9)")

    monkeypatch.setattr(api.cli, "audit_database", broken)
    result = demo_cli("verify")
    assert result.code == 3, result
    assert "audit_incomplete" in result.err and "exit code -9" in result.err
    assert "nothing is verified" in result.err
    body = json.loads(demo_cli("verify", "--json").out)
    assert body["error"]["code"] == "audit_incomplete"


def test_verify_with_another_pinned_operator_key_fails(demo_cli: CLI) -> None:
    other = demo_cli.raw("keygen", "stranger", "--keys", str(demo_cli.folder / "other-keys"))
    stranger = other.out.strip().splitlines()[-1]
    result = demo_cli("verify", "--operator-key", stranger)
    assert result.code == 1 and "pins another operator key" in result.err.replace("\n", " ")


def test_export_then_verify_export_with_the_operator_key(demo_cli: CLI) -> None:
    operator = demo_cli.ok("operator-key").out.strip()
    file = demo_cli.folder / "audit.export"
    exported = demo_cli.json("export", str(file))
    assert exported["file"] == str(file) and exported["records"] > 0
    demo_cli.db_file.unlink()  # the export stands alone
    result = demo_cli.raw("verify-export", str(file), "--operator-key", operator)
    assert result.code == 0, result
    assert result.out.startswith(f"verified: {exported['records']:,} records")
    wrong = demo_cli.raw("keygen", "stranger", "--keys", str(demo_cli.folder / "other-keys"))
    stranger = wrong.out.strip().splitlines()[-1]
    refused = demo_cli.raw("verify-export", str(file), "--operator-key", stranger)
    assert refused.code == 1 and "pins another operator key" in refused.err.replace("\n", " ")


def middle_of_the_pledge_record(data: bytes) -> int:
    """An offset inside the pledge's command record: the cut leaves its events without it."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    start, previous_topic = 0, ""
    for item in unpacker:
        end = unpacker.tell()
        if isinstance(item, list) and item[0] == "r":
            topic = item[4]
            if topic.endswith("CommandRecord.Accepted") and previous_topic.endswith("Ticket.Pledged"):
                return (start + end) // 2
            previous_topic = topic
        start = end
    raise AssertionError("the export holds no pledge")


@pytest.mark.parametrize("damage", [
    "empty",
    "inside a command",
    pytest.param("records cut off"),
    pytest.param("garbage"),
])
def test_verify_export_refuses_a_damaged_file_without_a_traceback(demo_cli: CLI, damage: str) -> None:
    operator = demo_cli.ok("operator-key").out.strip()
    file = demo_cli.folder / "audit.export"
    demo_cli.ok("export", str(file))
    data = file.read_bytes()
    header_end = data.index(b"\x97\xa1r")  # the first record: a 7-item array tagged "r"
    file.write_bytes({
        "empty": b"",
        "inside a command": data[:middle_of_the_pledge_record(data)],
        "records cut off": data[:header_end],
        "garbage": bytes(range(256)) * 4,
    }[damage])
    result = demo_cli.raw("verify-export", str(file), "--operator-key", operator)
    assert result.code == 1
    assert "Traceback" not in result.err
    assert "error invalid_argument" in result.err or "verification failed at position" in result.err


def test_verify_export_of_a_missing_file_is_an_error(cli: CLI) -> None:
    result = cli.raw("verify-export", str(cli.folder / "nothing.export"), "--operator-key",
                     "ed25519:" + "A" * 43 + "=")
    assert result.code == 1 and "Traceback" not in result.err


# Proofs ----------------------------------------------------------------------------------------

def test_proof_then_verify_proof_and_an_edited_proof_is_rejected(demo_cli: CLI) -> None:
    operator = demo_cli.ok("operator-key").out.strip()
    text = demo_cli.ok("proof", "pledge", "PL-2021-001").out
    file = demo_cli.folder / "pledge.json"
    file.write_text(text, encoding="utf-8")
    result = demo_cli.raw("verify-proof", str(file), "--operator-key", operator)
    assert result.code == 0, result
    out = result.out.replace("\n", " ")
    assert "pledge PL-2021-001 by jinsen-carbon to cib-sanming is active" in out
    assert "17,794 t pledged, 500 t impaired" in out
    assert "cosigned by fujian-eco" in out
    facts = json.loads(demo_cli.raw("verify-proof", str(file), "--operator-key", operator,
                                    "--json").out)
    assert (facts["ok"], facts["pledged_t"], facts["impaired_t"]) == (True, 17_794, 500)

    edited = text.replace('"impaired_t": 500', '"impaired_t": 0', 1)
    assert edited != text
    file.write_text(edited, encoding="utf-8")
    rejected = demo_cli.raw("verify-proof", str(file), "--operator-key", operator)
    assert rejected.code == 1 and "proof rejected" in rejected.err

    file.write_text(text, encoding="utf-8")
    wrong = demo_cli.raw("verify-proof", str(file), "--operator-key", "ed25519:" + "A" * 43 + "=")
    assert wrong.code == 1 and "proof rejected" in wrong.err


def test_retirement_proof_verifies(demo_cli: CLI) -> None:
    operator = demo_cli.ok("operator-key").out.strip()
    file = demo_cli.folder / "retirement.json"
    file.write_text(demo_cli.ok("proof", "retirement", "RT-2021-001").out, encoding="utf-8")
    result = demo_cli.raw("verify-proof", str(file), "--operator-key", operator)
    assert result.code == 0, result
    out = result.out.replace("\n", " ")
    assert "retirement RT-2021-001 of 523 t by jiangle-defendant for judicial_restoration" in out


@pytest.mark.parametrize("content", ["", "{not json", "[]", '{"format": "carbon-ledger-proof/1"}'])
def test_verify_proof_rejects_a_file_that_is_no_bundle(cli: CLI, content: str) -> None:
    file = cli.folder / "bundle.json"
    file.write_text(content, encoding="utf-8")
    result = cli.raw("verify-proof", str(file), "--operator-key", "ed25519:" + "A" * 43 + "=")
    assert result.code == 1 and "proof rejected" in result.err and "Traceback" not in result.err


def test_proof_of_an_unknown_pledge_is_an_error(demo_cli: CLI) -> None:
    result = demo_cli("proof", "pledge", "PL-1999-404")
    assert result.code == 1 and "unknown_pledge" in result.err


# Checkpoints and witnesses ----------------------------------------------------------------------

def test_checkpoint_and_witness_verbs(demo_cli: CLI) -> None:
    cp = demo_cli.json("checkpoint")
    assert cp["origin"] == "carbon-ledger.test/cli" and cp["cosignatures"]
    command = demo_cli.folder / "emissions.json"
    command.write_text(json.dumps({
        "command": "record_emissions", "actor": "fujian-eco",
        "command_id": "emissions/jinsen-carbon/fujian_ets/2022",
        "args": {"entity": "jinsen-carbon", "scheme": "fujian_ets", "period": "2022",
                 "verified_emissions_t": 1000}}), encoding="utf-8")
    position = json.loads(demo_cli.ok("submit", str(command)).out)["position"]
    result = demo_cli.ok("checkpoint")
    assert f"checkpoint at size {position:,}" in result.out
    grown = demo_cli.json("checkpoint")
    assert grown["size"] == position > cp["size"] and grown["cosignatures"] == []
    witnessed = demo_cli.json("witness", "--as", "fujian-eco")
    assert (witnessed["size"], witnessed["previous_size"]) == (position, cp["size"])
    assert witnessed["consistency_proof_length"] > 0
    assert [c["witness"] for c in demo_cli.json("checkpoint")["cosignatures"]] == ["fujian-eco"]
    report = demo_cli.json("verify")
    assert report["ok"] and report["cosignatures"] == 2


def test_witness_verb_refuses_a_non_regulator(demo_cli: CLI) -> None:
    result = demo_cli("witness", "--as", "cib-sanming")
    assert result.code == 1 and "not_authorized" in result.err


def test_checkpoint_verb_needs_the_operator_key(demo_cli: CLI, tmp_path: Path) -> None:
    empty = tmp_path / "no-keys"
    empty.mkdir()
    result = demo_cli.raw("checkpoint", "--db", demo_cli.db, "--keys", str(empty))
    assert result.code == 1 and "unknown_key" in result.err
