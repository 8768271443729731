"""The `carbon-ledger` command line: api.cli.main(argv) in-process, and the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from api.cli import main
from ledger.application import Registry

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_default_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never touch ./var/registry.db: without --db, the CLI would use the env or the default."""
    monkeypatch.delenv("CARBON_LEDGER_DB", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli' / 'registry.db'}"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def log_position(db: str) -> int:
    app = Registry(db)
    try:
        return app.log_position()
    finally:
        app.close()


@pytest.fixture(scope="module")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry loaded by `carbon-ledger demo` once per module, with its key folder."""
    folder = tmp_path_factory.mktemp("demo")
    assert main(["init", "--db", f"sqlite:///{folder / 'registry.db'}"]) == 0
    assert main(["demo", "--db", f"sqlite:///{folder / 'registry.db'}"]) == 0
    return folder


@pytest.fixture
def demo_db(demo_template: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """A copy of the demo registry (database and keys) for one test."""
    capsys.readouterr()
    target = tmp_path / "demo"
    shutil.copytree(demo_template, target)
    return f"sqlite:///{target / 'registry.db'}"


# init and demo ------------------------------------------------------------------------------------

def test_init_creates_an_empty_registry(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "init", "--db", db, "--origin", "test/cli", "--operator", "op",
                       "--name", "登记簿")
    assert code == 0
    assert "test/cli" in out and "op" in out
    app = Registry(db)
    try:
        view = app.projection()
        assert view.genesis is not None and view.genesis.origin == "test/cli"
        op = view.participant("op")
        assert (op["name"], op["role"], op["frozen"]) == ("登记簿", "operator", False)
        assert log_position(db) == app.log_position() > 0
    finally:
        app.close()


def test_init_json(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "init", "--db", db)
    assert (out["db"], out["command"], out["operator_id"]) == (db, "initialise", "registry")
    assert out["position"] == log_position(db)


def test_init_refuses_to_overwrite(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "init", "--db", db)[0] == 0
    position = log_position(db)
    code, out, err = run(capsys, "init", "--db", db, "--operator", "someone-else")
    assert code == 1
    assert "already_exists" in err and "init never overwrites" in err
    assert log_position(db) == position
    code, out, _ = run(capsys, "init", "--db", db, "--json")
    assert code == 1 and json.loads(out)["error"]["code"] == "already_exists"


def test_demo_needs_a_registry_made_by_init(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "demo", "--db", db)
    assert code == 1 and "error no_registry:" in err
    assert not Path(db[len("sqlite:///"):]).exists()
    assert run(capsys, "init", "--db", db)[0] == 0
    code, out, _ = run(capsys, "demo", "--db", db)
    assert code == 0
    assert "1 refused as the story expects" in out
    assert "cap_exceeded" in out
    assert "常口村" in out and "17,794" in out and "PL-2021-001" in out


def test_demo_after_init(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "init", "--db", db)[0] == 0
    out = run_json(capsys, "demo", "--db", db)
    assert (out["refused"], out["position"]) == (1, log_position(db))
    assert out["balances"]["jinsen-carbon"]["totals"] == {
        "available_t": 0, "pledged_t": 17_794, "retired_t": 0, "cancelled_t": 500}


def test_demo_refuses_a_non_empty_registry(demo_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    position = log_position(demo_db)
    code, _, err = run(capsys, "demo", "--db", demo_db)
    assert code == 1 and "already_exists" in err and "not empty" in err
    assert log_position(demo_db) == position


# Reads -------------------------------------------------------------------------------------------

def test_balances_json_has_the_spec_keys(demo_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    view = run_json(capsys, "balances", "tonghai-nickel", "--db", demo_db)
    assert view["holder"] == "tonghai-nickel"
    assert view["totals"] == {"available_t": 3_723, "pledged_t": 0, "retired_t": 5_000,
                              "cancelled_t": 0}
    rows = {row["ticket_no"]: row for row in view["tickets"]}
    assert set(rows) == {"FFCER-0000001", "SM-0000001"}
    for row in view["tickets"]:
        assert {"ticket_no", "available_t", "pledged_t", "retired_t", "cancelled_t",
                "blocks"} <= set(row)
        assert isinstance(row["blocks"], list) and row["blocks"]
        for block in row["blocks"]:
            assert {"first_serial", "last_serial", "state"} <= set(block)
    assert (rows["FFCER-0000001"]["available_t"], rows["FFCER-0000001"]["retired_t"]) == (1_000, 5_000)
    assert rows["SM-0000001"]["blocks"] == [{
        "first_serial": "SM-0000001-0000001", "last_serial": "SM-0000001-0002723",
        "quantity_t": 2_723, "state": "available"}]


def test_ticket_json_has_the_spec_keys(demo_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    view = run_json(capsys, "ticket", "SM-0000002", "--db", demo_db)
    assert {"ticket_no", "standard", "issued_t", "available_t", "pledged_t", "retired_t",
            "cancelled_t", "blocks"} <= set(view)
    assert (view["ticket_no"], view["standard"], view["issued_t"], view["available_t"],
            view["pledged_t"], view["retired_t"], view["cancelled_t"]) == (
        "SM-0000002", "SMCER", 9_000, 183, 7_794, 523, 500)
    assert [(b["first_serial"], b["last_serial"], b["holder"], b["state"]) for b in view["blocks"]] == [
        ("SM-0000002-0000001", "SM-0000002-0000500", "jinsen-carbon", "cancelled"),
        ("SM-0000002-0000501", "SM-0000002-0008294", "jinsen-carbon", "pledged"),
        ("SM-0000002-0008295", "SM-0000002-0008817", "jiangle-defendant", "retired"),
        ("SM-0000002-0008818", "SM-0000002-0009000", "xiayang-farm", "available"),
    ]


def test_compliance_json_has_the_spec_keys(demo_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    view = run_json(capsys, "compliance", "tonghai-nickel", "fujian_ets", "2021", "--db", demo_db)
    assert {k: view[k] for k in ("entity", "scheme", "period", "verified_emissions_t", "limit_t",
                                 "used_t", "remaining_t")} == {
        "entity": "tonghai-nickel", "scheme": "fujian_ets", "period": "2021",
        "verified_emissions_t": 50_000, "limit_t": 5_000, "used_t": 5_000, "remaining_t": 0}


def test_compliance_without_emissions(demo_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    view = run_json(capsys, "compliance", "jinsen-carbon", "fujian_ets", "2021", "--db", demo_db)
    assert (view["verified_emissions_t"], view["used_t"]) == (None, 0)
    code, out, _ = run(capsys, "compliance", "jinsen-carbon", "fujian_ets", "2021", "--db", demo_db)
    assert code == 0 and "no verified emissions" in out


def test_pledges_json_has_the_spec_keys(demo_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    view = run_json(capsys, "pledges", "--db", demo_db)
    assert isinstance(view, list) and len(view) == 1
    assert {k: view[0][k] for k in ("pledge_id", "pledgor", "pledgee", "status", "pledged_t",
                                    "impaired_t")} == {
        "pledge_id": "PL-2021-001", "pledgor": "jinsen-carbon", "pledgee": "cib-sanming",
        "status": "active", "pledged_t": 17_794, "impaired_t": 500}
    assert run_json(capsys, "pledges", "--bank", "cib-sanming", "--db", demo_db) == view
    code, _, err = run(capsys, "pledges", "--bank", "no-bank", "--db", demo_db)
    assert code == 1 and "unknown_participant" in err


def test_history(demo_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    events = run_json(capsys, "history", "--ticket", "SM-0000001", "--db", demo_db)
    assert [(e["event"], e["actor"], e["command_id"]) for e in events] == [
        ("Ticket.Issued", "sanming-forestry", "demo-issue-SM-0000001"),
        ("Ticket.Transferred", "shaxian-exchange", "trade/shaxian-exchange/SX-2021-0001"),
        ("Ticket.Transferred", "shaxian-exchange", "trade/shaxian-exchange/SX-2021-0002"),
        ("Ticket.Pledged", "cib-sanming", "pledge/PL-2021-001"),
    ]
    positions = [e["position"] for e in events]
    assert positions == sorted(positions)
    holder = run_json(capsys, "history", "--holder", "jiangle-defendant", "--db", demo_db)
    assert [e["event"] for e in holder] == [
        "Participant.Registered", "Participant.MandateGranted", "Ticket.Transferred", "Ticket.Retired"]
    code, out, _ = run(capsys, "history", "--holder", "jiangle-defendant", "--db", demo_db)
    assert code == 0 and "Ticket.Retired" in out and "RT-2021-001" in out


def test_history_needs_a_ticket_or_a_holder(demo_db: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["history", "--db", demo_db])
    assert info.value.code == 2


def test_rebuild(demo_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(capsys, "rebuild", "--db", demo_db)
    position = log_position(demo_db)
    assert (report["events"], report["applied"], report["tickets"], report["participants"],
            report["pledges"]) == (position, position, 3, 13, 1)
    code, out, _ = run(capsys, "rebuild", "--db", demo_db)
    assert code == 0 and f"rebuilt projections from {position} events" in out


def test_as_of(demo_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    [issued, first_trade, *_] = run_json(capsys, "history", "--ticket", "SM-0000001", "--db", demo_db)
    before = first_trade["position"] - 1
    view = run_json(capsys, "balances", "changkou-village", "--as-of", str(before), "--db", demo_db)
    assert view["totals"]["available_t"] == 12_723 and view["as_of"] == before
    view = run_json(capsys, "balances", "changkou-village", "--as-of", str(first_trade["position"]),
                    "--db", demo_db)
    assert view["totals"]["available_t"] == 10_000
    ticket = run_json(capsys, "ticket", "SM-0000001", "--as-of", str(issued["position"]), "--db",
                      demo_db)
    assert ticket["blocks"] == [{"first_serial": "SM-0000001-0000001",
                                 "last_serial": "SM-0000001-0012723", "quantity_t": 12_723,
                                 "holder": "changkou-village", "state": "available"}]
    assert run_json(capsys, "pledges", "--as-of", str(before), "--db", demo_db) == []
    events = run_json(capsys, "history", "--ticket", "SM-0000001", "--as-of", str(before), "--db",
                      demo_db)
    assert [e["event"] for e in events] == ["Ticket.Issued"]
    code, out, _ = run(capsys, "balances", "changkou-village", "--as-of", str(before), "--db", demo_db)
    assert code == 0 and "12,723" in out and f"as of position {before}" in out


def test_as_of_before_the_participant_existed(demo_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "balances", "changkou-village", "--as-of", "1", "--db", demo_db)
    assert code == 1 and "unknown_participant" in err and "as of position 1" in err


def test_tables_print_the_figures(demo_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "balances", "jinsen-carbon", "--db", demo_db)
    assert code == 0 and "金森碳汇" in out and "17,794" in out
    code, out, _ = run(capsys, "ticket", "SM-0000002", "--db", demo_db)
    assert code == 0 and "9,000" in out and "reversal:CLM-2022-001" in out
    code, out, _ = run(capsys, "pledges", "--db", demo_db)
    assert code == 0 and "PL-2021-001" in out and "5000000.00" in out
    code, out, _ = run(capsys, "compliance", "tonghai-nickel", "fujian_ets", "2021", "--db", demo_db)
    assert code == 0 and "5,000" in out and "50,000" in out


# Errors --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "code"), [
    (["balances", "nobody"], "unknown_participant"),
    (["ticket", "SM-0000099"], "unknown_ticket"),
    (["ticket", "SM-0000001", "--as-of", "-1"], "invalid_argument"),
])
def test_errors_print_the_code_and_exit_non_zero(demo_db: str, capsys: pytest.CaptureFixture[str],
                                                 argv: list[str], code: str) -> None:
    exit_code, out, err = run(capsys, *argv, "--db", demo_db)
    assert exit_code == 1 and f"error {code}:" in err and out == ""
    exit_code, out, _ = run(capsys, *argv, "--db", demo_db, "--json")
    assert exit_code == 1 and json.loads(out)["error"]["code"] == code


def test_an_unsupported_database_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "balances", "x", "--db", "mysql://localhost/registry")
    assert code == 2 and "invalid_argument" in err


def test_db_option_before_the_command_and_from_the_environment(
        demo_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_json(capsys, "--db", demo_db, "ticket", "SM-0000001")["issued_t"] == 12_723
    monkeypatch.setenv("CARBON_LEDGER_DB", demo_db)
    assert run_json(capsys, "ticket", "SM-0000001")["issued_t"] == 12_723


def test_submit_executes_one_json_command(demo_db: str, capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    command = {"command": "transfer", "actor": "shaxian-exchange", "command_id": "cli-1",
               "args": {"trade_id": "SX-CLI-1", "seller": "longyan-farm", "buyer": "jinsen-carbon",
                        "ticket_no": "FFCER-0000001", "quantity_t": 100, "price": "25.00",
                        "mode": "auction"}}
    path = tmp_path / "command.json"
    path.write_text(json.dumps(command, ensure_ascii=False), encoding="utf-8")
    code, out, _ = run(capsys, "submit", str(path), "--db", demo_db)
    assert code == 0 and json.loads(out)["quantity_t"] == 100
    code, out, _ = run(capsys, "submit", str(path), "--db", demo_db)
    assert code == 0 and json.loads(out)["replayed"] is True
    position = log_position(demo_db)
    path.write_text(json.dumps(command).replace('"quantity_t": 100', '"quantity_t": 100.0'),
                    encoding="utf-8")
    code, _, err = run(capsys, "submit", str(path), "--db", demo_db)
    assert code == 1 and "invalid_argument" in err and "100.0" in err
    path.write_text("{not json", encoding="utf-8")
    code, _, err = run(capsys, "submit", str(path), "--db", demo_db)
    assert code == 1 and "invalid_argument" in err
    assert log_position(demo_db) == position


# The installed console script, end to end --------------------------------------------------------

def test_console_script_end_to_end(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "carbon-ledger"
    assert script.exists(), f"{script} is not installed"
    db = f"sqlite:///{tmp_path / 'e2e' / 'registry.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the same sources as this test run
    env.pop("CARBON_LEDGER_DB", None)

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(script), *argv, "--db", db], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=120)

    assert cli("init").returncode == 0
    demo = cli("demo", "--json")
    assert demo.returncode == 0, demo.stderr
    assert json.loads(demo.stdout)["refused"] == 1
    balances = cli("balances", "jinsen-carbon", "--json")
    assert balances.returncode == 0, balances.stderr
    assert json.loads(balances.stdout)["totals"] == {
        "available_t": 0, "pledged_t": 17_794, "retired_t": 0, "cancelled_t": 500}
    refused = cli("init")
    assert refused.returncode == 1 and "error already_exists" in refused.stderr
