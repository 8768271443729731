"""Rules editions on the command line: `init` founds a registry on the latest edition,
`adopt-rules` moves an older one forward, `verify` says which edition held where, and `submit
--consent` signs a party's consent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from api.cli import main
from domain.genesis import LATEST_EDITION
from ledger.application import Registry

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "edition1"


@pytest.fixture(autouse=True)
def _no_default_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CARBON_LEDGER_DB", raising=False)
    monkeypatch.chdir(tmp_path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def old(tmp_path: Path) -> tuple[str, str]:
    """A copy of the registry written before editions: (--db, --keys)."""
    shutil.copytree(FIXTURE, tmp_path / "old")
    return f"sqlite:///{tmp_path / 'old' / 'registry.db'}", str(tmp_path / "old" / "keys")


def test_init_founds_a_registry_on_the_latest_edition(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'new.db'}"
    code, out, _ = run(capsys, "init", "--db", db)
    assert code == 0 and f"rules edition {LATEST_EDITION}" in out
    code, out, _ = run(capsys, "verify", "--db", db)
    assert code == 0
    assert f"rules: edition {LATEST_EDITION} from position" in out


def test_adopt_rules_moves_an_old_registry_forward(old: tuple[str, str],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    db, keys = old
    code, out, _ = run(capsys, "verify", "--db", db, "--keys", keys)
    assert code == 0 and "rules: edition 1 from the start" in out
    code, out, _ = run(capsys, "adopt-rules", "2", "--db", db, "--keys", keys, "--json")
    assert code == 0
    outcome = json.loads(out)
    assert (outcome["edition"], outcome["previous_edition"]) == (2, 1)
    # Run again (after a timeout, say): the same command, answered with its first outcome.
    code, out, _ = run(capsys, "adopt-rules", "2", "--db", db, "--keys", keys, "--json")
    assert code == 0 and json.loads(out)["replayed"] is True
    assert json.loads(out)["position"] == outcome["position"]
    code, out, _ = run(capsys, "verify", "--db", db, "--keys", keys)
    assert code == 0
    assert f"rules: edition 1 from the start, edition 2 from position {outcome['position']:,}" in out


def submit_file(tmp_path: Path, command: dict[str, Any]) -> str:
    path = tmp_path / f"{command['command_id'].replace('/', '-')}.json"
    path.write_text(json.dumps(command, ensure_ascii=False), encoding="utf-8")
    return str(path)


def test_submit_signs_the_consents_it_is_told_to(old: tuple[str, str], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    db, keys = old
    assert run(capsys, "adopt-rules", "2", "--db", db, "--keys", keys)[0] == 0
    policy = {"command": "bind_policy", "actor": "picc-fujian", "command_id": "policy/POL-C-1",
              "args": {"policy_id": "POL-C-1", "insured": "xiayang-farm",
                       "lines": [{"ticket_no": "SM-0000002", "quantity_t": 10}],
                       "sum_insured": "100.00", "premium": "1.00", "start": "2021-01-01",
                       "end": "2030-12-31", "perils": ["fire"]}}
    file = submit_file(tmp_path, policy)
    code, _, err = run(capsys, "submit", file, "--db", db, "--keys", keys, "--consent",
                       "jinsen-carbon")
    assert code == 1 and "consent_missing" in err and "xiayang-farm" in err
    code, out, _ = run(capsys, "submit", file, "--db", db, "--keys", keys, "--consent",
                       "xiayang-farm")
    assert code == 0 and json.loads(out)["covered_t"] == 10
    app = Registry(db)
    try:
        assert app.projection().policy("POL-C-1")["insured"] == "xiayang-farm"
    finally:
        app.close()
