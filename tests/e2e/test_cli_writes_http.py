"""The write verbs against a real server: `carbon-ledger transfer --url …` and a pledge whose
pledgor consented from its own key folder, as processes (and, to keep the test short on a busy
machine, a retry, a refusal and a date-based as-of read through api.cli.main in this process,
over the same HTTP)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from api.cli import main
from ledger.as_of import CHINA

TRADE = ["transfer", "--trade-id", "SX-E2E-1", "--seller", "tonghai-nickel", "--buyer",
         "jinsen-carbon", "--ticket", "SM-0000001", "--quantity-t", "100", "--price", "15.00",
         "--as", "shaxian-exchange"]
PLEDGE = ["--pledge-id", "PL-E2E-1", "--pledgor", "tonghai-nickel", "--loan-ref", "CIB-E2E",
          "--secured-amount", "250000.00", "--maturity", "2027-06-30", "--line", "SM-0000001:500"]


def test_write_verbs_over_http(serve: Callable[..., Any], carbon_ledger: Callable[..., Any],
                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "server"
    common = ["--db", f"sqlite:///{root / 'registry.db'}", "--keys", str(root / "keys")]
    assert main(["init", *common]) == 0 and main(["demo", *common]) == 0
    server = serve(root)
    url = ["--url", server.base_url]
    client_keys = ["--keys", str(root / "keys")]

    first = carbon_ledger(*TRADE, *url, *client_keys, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("shaxian-exchange settled trade SX-E2E-1: tonghai-nickel → "
                                   "jinsen-carbon, 100 t of SM-0000001 (serials ")
    position = server.position()
    assert first.stdout.rstrip().endswith(f"command id trade/shaxian-exchange/SX-E2E-1, log "
                                          f"position {position:,}")
    capsys.readouterr()
    assert main([*TRADE, *url, *client_keys]) == 0
    assert "recorded before: this is its first outcome" in capsys.readouterr().out
    assert server.position() == position
    too_much = ["transfer", "--trade-id", "SX-E2E-2", *TRADE[3:9], "--quantity-t", "99999",
                "--price", "15.00", "--as", "shaxian-exchange"]
    assert main([*too_much, *url, *client_keys]) == 1
    assert capsys.readouterr().err.startswith("error insufficient_available: tonghai-nickel has ")

    # the bank and the pledgor hold their own keys, apart
    bank, pledgor = tmp_path / "bank", tmp_path / "pledgor"
    for folder, who in ((bank, "cib-sanming"), (pledgor, "tonghai-nickel")):
        folder.mkdir(mode=0o700)
        shutil.copy2(root / "keys" / f"{who}.key", folder / f"{who}.key")
    consent = tmp_path / "consent.json"
    signed = carbon_ledger("consent", "pledge", "--as", "tonghai-nickel", "--bank", "cib-sanming",
                           *PLEDGE, "--keys", str(pledgor), "--out", str(consent), cwd=tmp_path)
    assert signed.returncode == 0, signed.stderr
    taken = carbon_ledger("pledge", *PLEDGE, "--as", "cib-sanming", "--consent", str(consent),
                          *url, "--keys", str(bank), "--json", cwd=tmp_path)
    assert taken.returncode == 0, taken.stderr
    outcome = json.loads(taken.stdout)
    assert (outcome["pledge_id"], outcome["pledged_t"]) == ("PL-E2E-1", 500)
    assert outcome["position"] == server.position()

    today = datetime.now(CHINA).date().isoformat()
    assert main(["balances", "tonghai-nickel", "--as", "fujian-eco", "--as-of", today, *url,
                 *client_keys, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["as_of"] == server.position()

    server.stop()
    assert main(["verify", *common, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]
