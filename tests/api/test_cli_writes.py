"""The write verbs of the command line (api/cli_writes.py), on a registry file through
api.cli.main(): a whole story told with typed flags, each outcome as a sentence, retries,
bad flags, refusals, and a pledgor's consent given from its own key folder."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_cli_audit import CLI, cli, demo_cli, demo_template  # noqa: F401 - fixtures

import api.cli_writes
from api.cli import main

PARTICIPANTS = [("bureau", "issuer", "三明市林业局"), ("eco", "regulator", "福建省生态环境厅"),
                ("exchange", "exchange", "沙县农村产权交易中心"), ("bank", "bank", "兴业银行三明分行"),
                ("insurer", "insurer", "人保财险"), ("court", "court", "将乐县人民法院"),
                ("village", "holder", "常口村"), ("buyer", "holder", "通海镍业")]


def sentence(result: Any) -> str:
    """The outcome's sentence: the output but its last line (the command id and position)."""
    assert result.code == 0, result
    lines = result.out.rstrip("\n").split("\n")
    assert lines[-1].startswith("command id "), result.out
    return "\n".join(lines[:-1])


@pytest.fixture
def story(cli: CLI) -> CLI:  # noqa: F811
    """A new registry with its participants registered by `carbon-ledger register`."""
    cli.ok("init", "--origin", "carbon-ledger.test/writes")
    for pid, role, name in PARTICIPANTS:
        cli.ok("keygen", pid)
        said = sentence(cli("register", pid, "--role", role, "--name", name, "--as", "registry"))
        assert said.startswith(f"registry registered {pid} ({role}, {name}) with key ")
    return cli


def test_the_life_of_a_ticket_told_with_the_verbs(story: CLI, tmp_path: Path) -> None:
    run = story
    assert sentence(run("register-project", "P-1", "--name", "常口村生态公益林", "--owner", "village",
                        "--county", "将乐县", "--area-mu", "3197", "--standard", "SMCER",
                        "--as", "bureau")) == (
        "bureau registered project P-1 (常口村生态公益林), owned by village, 3197 mu in 将乐县, SMCER")
    assert sentence(run("issue", "SM-0000009", "--project", "P-1", "--standard", "SMCER",
                        "--period-start", "2016-01-01", "--period-end", "2020-12-31",
                        "--quantity-t", "10000", "--as", "bureau")) == (
        "bureau issued ticket SM-0000009: 10,000 t (serials SM-0000009-0000001..SM-0000009-0010000)"
        " to village")
    assert sentence(run("grant-mandate", "exchange", "--as", "village")) == (
        "village mandated exchange to trade its units")
    trade = run("transfer", "--trade-id", "T-1", "--seller", "village", "--buyer", "buyer",
                "--ticket", "SM-0000009", "--quantity-t", "2000", "--price", "15.00",
                "--as", "exchange")
    assert sentence(trade) == ("exchange settled trade T-1: village → buyer, 2,000 t of SM-0000009 "
                               "(serials SM-0000009-0000001..SM-0000009-0002000) at ¥15.00")
    assert trade.out.splitlines()[-1].startswith("command id trade/exchange/T-1, log position ")
    csv_file = tmp_path / "eod.csv"
    csv_file.write_text("trade_id,seller,buyer,ticket_no,quantity_t,price,mode\n"
                        "T-2,village,buyer,SM-0000009,100,15.50,listing\n"
                        "T-3,village,buyer,SM-0000009,,15.50,\n".replace(
                            ",,15.50,", ",50,15.50,"), encoding="utf-8")
    assert sentence(run("settle-batch", str(csv_file), "--batch-id", "EOD-1", "--as",
                        "exchange")) == (
        "exchange settled batch EOD-1: 2 trades, 150 t\n"
        "  T-2: village → buyer, 100 t of SM-0000009 (SM-0000009-0002001..SM-0000009-0002100)\n"
        "  T-3: village → buyer, 50 t of SM-0000009 (SM-0000009-0002101..SM-0000009-0002150)")
    json_file = tmp_path / "eod.json"
    json_file.write_text(json.dumps({"batch_id": "EOD-2", "transfers": [
        {"trade_id": "T-4", "seller": "village", "buyer": "buyer", "ticket_no": "SM-0000009",
         "first_serial": "SM-0000009-0003001", "last_serial": "SM-0000009-0003010",
         "price": "16.00", "mode": "auction"}]}), encoding="utf-8")
    assert "settled batch EOD-2: 1 trades, 10 t" in sentence(
        run("settle-batch", str(json_file), "--as", "exchange"))
    # the buyer's key is in the folder: the pledge carries its consent at once
    assert sentence(run("pledge", "--pledge-id", "PL-1", "--pledgor", "buyer", "--loan-ref", "L-1",
                        "--secured-amount", "500000", "--maturity", "2027-12-31",
                        "--line", "SM-0000009:1000", "--as", "bank")) == (
        "bank took pledge PL-1 from buyer: 1,000 t of SM-0000009 (serials "
        "SM-0000009-0000001..SM-0000009-0001000), 1,000 t in all, securing ¥500,000.00 (loan L-1) "
        "until 2027-12-31")
    assert sentence(run("bind-policy", "--policy-id", "POL-1", "--insured", "buyer", "--line",
                        "SM-0000009:1000", "--sum-insured", "100000", "--premium", "1000.00",
                        "--start", "2024-01-01", "--end", "2026-12-31", "--peril", "fire",
                        "--peril", "pest", "--loss-payee", "bank", "--as", "insurer")) == (
        "insurer bound policy POL-1 for buyer: 1,000 t covered against fire, pest, sum insured "
        "¥100,000.00, 2024-01-01 to 2026-12-31")
    assert sentence(run("file-claim", "--claim-id", "C-1", "--policy", "POL-1", "--peril", "fire",
                        "--loss-date", "2025-03-14", "--claimed-t", "100", "--as", "buyer")) == (
        "buyer filed claim C-1 under policy POL-1: 100 t lost to fire on 2025-03-14 (pending)")
    assert sentence(run("confirm-loss", "C-1", "--confirmed-t", "100", "--report",
                        "survey: 100 t burned", "--as", "bureau")) == (
        "bureau confirmed the loss of claim C-1 under policy POL-1: 100 t of the 100 t claimed")
    approved = sentence(run("approve-claim", "C-1", "--approved-t", "100", "--payout", "10000.00",
                            "--as", "insurer"))
    assert approved.startswith("insurer approved claim C-1: 100 t, payout ¥10,000.00: "
                               "¥10,000.00 to bank (")
    assert approved.endswith("; 100 t cancelled")
    run.ok("file-claim", "--claim-id", "C-2", "--policy", "POL-1", "--peril", "pest",
           "--loss-date", "2025-04-01", "--claimed-t", "10", "--as", "buyer")
    assert sentence(run("reject-claim", "C-2", "--reason", "no pest found", "--as", "insurer")) == (
        "insurer rejected claim C-2: no pest found")
    assert sentence(run("release", "PL-1", "--line", "SM-0000009:400", "--as", "bank")) == (
        "bank released 400 t of pledge PL-1; 500 t stay pledged (pledge active)")
    assert sentence(run("enforce", "PL-1", "--as", "bank")) == (
        "bank enforced pledge PL-1: 500 t to bank (pledge enforced)")
    assert sentence(run("retire", "--retirement-id", "RT-1", "--purpose", "voluntary",
                        "--beneficiary", "通海镍业 2024 碳中和", "--line", "SM-0000009:200",
                        "--as", "buyer")) == (
        "buyer retired 200 t of SM-0000009 (serials SM-0000009-0000101..SM-0000009-0000300) for "
        "voluntary, beneficiary 通海镍业 2024 碳中和; certificate RT-1 (carbon-ledger proof "
        "retirement RT-1)")
    assert sentence(run("record-emissions", "buyer", "fujian_ets", "2024",
                        "--verified-emissions-t", "50000", "--as", "eco")) == (
        "eco recorded 50,000 t of verified emissions for buyer in fujian_ets 2024")
    assert sentence(run("set-limits", "fujian_ets", "2024", "--limit", "CCER=500", "--limit",
                        "FFCER=1000", "--total-bp", "1000", "--as", "eco")) == (
        "eco set the offset limits of fujian_ets 2024: CCER 5%, FFCER 10%; 10% in all")
    assert sentence(run("freeze", "village", "--reason", "财产保全", "--as", "court")) == (
        "court froze village's account (frozen by court)")
    assert sentence(run("unfreeze", "village", "--as", "court")) == (
        "court lifted its freeze on village; the account is no longer frozen")
    assert sentence(run("cancel", "SM-0000009", "--cancellation-id", "X-1", "--holder", "village",
                        "--serials", "SM-0000009-0009991..SM-0000009-0010000", "--reason",
                        "double counted", "--as", "bureau")) == (
        "bureau cancelled 10 t of SM-0000009 held by village (serials "
        "SM-0000009-0009991..SM-0000009-0010000); cancellation X-1")
    assert sentence(run("revoke-mandate", "exchange", "--as", "village")) == (
        "village withdrew exchange's trading mandate")
    key_id = run.json("register", "spare", "--role", "holder", "--name", "Spare", "--public-key",
                      run.ok("keygen", "spare").out.strip().splitlines()[-1],
                      "--as", "registry")["key_id"]
    assert sentence(run("revoke-key", "spare", key_id, "--reason", "lost", "--as",
                        "registry")) == f"registry revoked spare's key {key_id}"
    balances = run.json("balances", "buyer")
    assert balances["totals"] == {"available_t": 1360, "pledged_t": 0, "retired_t": 200,
                                  "cancelled_t": 100}
    verified = run.json("verify")  # every command was signed and decided as the rules say
    assert verified["ok"] and verified["commands"] >= 30


def test_a_retried_command_gets_its_first_outcome(demo_cli: CLI) -> None:  # noqa: F811
    flags = ["transfer", "--trade-id", "SX-R-1", "--seller", "tonghai-nickel", "--buyer",
             "jinsen-carbon", "--ticket", "SM-0000001", "--quantity-t", "100", "--price", "15.00",
             "--as", "shaxian-exchange"]
    first, again = demo_cli(*flags), demo_cli(*flags)
    assert sentence(first) == sentence(again)
    assert again.out.splitlines()[-1] == (first.out.splitlines()[-1]
                                          + "; recorded before: this is its first outcome")
    frozen = demo_cli("freeze", "tonghai-nickel", "--reason", "check", "--as", "fujian-eco")
    command_id = frozen.out.splitlines()[-1].split()[2].rstrip(",")
    assert command_id.startswith("freeze/fujian-eco/")
    retry = demo_cli.json("freeze", "tonghai-nickel", "--reason", "check", "--as", "fujian-eco",
                          "--command-id", command_id)
    assert retry["replayed"] is True and retry["command_id"] == command_id


def test_json_gives_the_outcome(demo_cli: CLI) -> None:  # noqa: F811
    outcome = demo_cli.json("record-emissions", "tonghai-nickel", "fujian_ets", "2022",
                            "--verified-emissions-t", "40000", "--as", "fujian-eco")
    assert outcome["command"] == "record_emissions" and outcome["verified_emissions_t"] == 40000
    assert isinstance(outcome["position"], int)


@pytest.mark.parametrize("flags, words", [
    (["--quantity-t", "1.5"], "error invalid_argument: --quantity-t takes a whole number of "
                              "tonnes, like 100, not '1.5'"),
    (["--quantity-t", "10", "--price", "15.001"], "error invalid_argument: price '15.001' is not"),
    (["--serials", "SM-0000001-0000001"], "error invalid_argument: --serials takes FIRST..LAST"),
    (["--quantity-t", "10", "--buyer", "tonghai-nickel"], "error same_party: "),
    (["--quantity-t", "999999"], "error insufficient_available: tonghai-nickel has "),
    (["--quantity-t", "10", "--as", "jinsen-carbon"], "error not_authorized: jinsen-carbon is a "
                                                      "holder; only an exchange may transfer"),
    (["--quantity-t", "10", "--as", "nobody"], "error unknown_key: no private key for nobody, the "
                                               "signer, in "),
])
def test_bad_flags_and_refusals_say_why(demo_cli: CLI, flags: list[str],  # noqa: F811
                                        words: str) -> None:
    base = {"--trade-id": "SX-B-1", "--seller": "tonghai-nickel", "--buyer": "jinsen-carbon",
            "--ticket": "SM-0000001", "--price": "15.00", "--as": "shaxian-exchange"}
    for option, value in zip(flags[::2], flags[1::2], strict=True):
        base[option] = value
    args = [x for kv in base.items() for x in kv]
    result = demo_cli("transfer", *args)
    assert result.code == 1, result
    assert words in " ".join(result.err.split())
    assert "Traceback" not in result.err and result.out == ""


@pytest.mark.parametrize("argv", [
    ["transfer", "--trade-id", "X", "--as", "shaxian-exchange"],  # required flags missing
    ["transfer", "--trade-id", "X", "--seller", "a", "--buyer", "b", "--ticket", "SM-0000001",
     "--price", "1", "--quantity-t", "1", "--serials", "a..b", "--as", "shaxian-exchange"],
    ["register", "x", "--role", "wizard", "--name", "X", "--as", "registry"],
    ["retire", "--retirement-id", "R", "--purpose", "fun", "--beneficiary", "b", "--line",
     "SM-0000001:1", "--as", "jinsen-carbon"],
])
def test_a_malformed_command_line_is_a_usage_error(demo_cli: CLI, argv: list[str],  # noqa: F811
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--db", demo_cli.db, "--keys", str(demo_cli.keys)])
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_a_batch_file_that_is_not_one_is_refused(demo_cli: CLI, tmp_path: Path) -> None:  # noqa: F811
    cases = {"bad.csv": ("trade_id,seller,colour\nX,a,red\n", "unknown: colour"),
             "float.json": ('[{"trade_id": "X", "quantity_t": 1.5}]', "1.5 is a fractional number"),
             "odd.json": ('{"transfers": 3}', "holds neither a list of transfers"),
             "nobatch.json": ('[{"trade_id": "X-1", "seller": "tonghai-nickel", "buyer": '
                              '"jinsen-carbon", "ticket_no": "SM-0000001", "quantity_t": 1, '
                              '"price": "1.00"}]', "settle_batch needs batch_id")}
    for name, (text, words) in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        result = demo_cli("settle-batch", str(tmp_path / name), "--as", "shaxian-exchange")
        assert result.code == 1 and words in result.err, (name, result)
    missing = demo_cli("settle-batch", str(tmp_path / "none.csv"), "--as", "shaxian-exchange")
    assert missing.code == 1 and "cannot read" in missing.err


# A pledge with the pledgor's consent from elsewhere -----------------------------------------

PLEDGE = ["--pledge-id", "PL-C-1", "--pledgor", "tonghai-nickel", "--loan-ref", "CIB-L-9",
          "--secured-amount", "300000", "--maturity", "2027-06-30", "--line", "SM-0000001:1000"]


@pytest.fixture
def two_folders(demo_cli: CLI) -> tuple[CLI, Path, Path]:  # noqa: F811
    """The bank's key folder and the pledgor's, apart."""
    bank, pledgor = demo_cli.folder / "bank-keys", demo_cli.folder / "pledgor-keys"
    for folder, who in ((bank, "cib-sanming"), (pledgor, "tonghai-nickel")):
        folder.mkdir(mode=0o700)
        shutil.copy2(demo_cli.keys / f"{who}.key", folder / f"{who}.key")
    return demo_cli, bank, pledgor


def test_a_pledge_without_the_pledgors_key_says_how_to_consent(
        two_folders: tuple[CLI, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    run, bank, pledgor = two_folders
    monkeypatch.chdir(run.folder)
    refused = run.raw("pledge", *PLEDGE, "--as", "cib-sanming", "--db", run.db, "--keys", str(bank))
    assert refused.code == 1
    err = " ".join(refused.err.split())
    assert err.startswith("error consent_missing: the pledge (command id pledge/PL-C-1) needs the "
                          f"consent signature of tonghai-nickel, whose key is not in {bank}.")
    # the pledgor runs the line it is given, with its own key folder
    line = err.split("`")[1]
    argv = shlex.split(line)
    assert argv[:3] == ["carbon-ledger", "consent", "pledge"]
    consented = run.raw(*argv[1:], "--db", run.db, "--keys", str(pledgor))
    assert consented.code == 0, consented
    assert consented.out.startswith("tonghai-nickel consents to cib-sanming's pledge (command id "
                                    "pledge/PL-C-1): 1,000 t of SM-0000001 pledged, securing "
                                    "¥300,000.00 (loan CIB-L-9) until 2027-06-30.")
    consent = run.folder / "consent.json"
    assert json.loads(consent.read_text())["signature"]["signer"] == "tonghai-nickel"
    taken = run.raw("pledge", *PLEDGE, "--as", "cib-sanming", "--consent", str(consent),
                    "--db", run.db, "--keys", str(bank))
    assert sentence(taken).startswith("cib-sanming took pledge PL-C-1 from tonghai-nickel: "
                                      "1,000 t of SM-0000001 (serials ")
    assert run.json("verify")["ok"]


def test_a_consent_covers_one_command_only(two_folders: tuple[CLI, Path, Path]) -> None:
    run, bank, pledgor = two_folders
    consent = run.folder / "c.json"
    assert run.raw("consent", "pledge", "--as", "tonghai-nickel", "--bank", "cib-sanming", *PLEDGE,
                   "--out", str(consent), "--db", run.db, "--keys", str(pledgor)).code == 0
    other = [*PLEDGE[:7], "600000", *PLEDGE[8:]]
    refused = run.raw("pledge", *other, "--as", "cib-sanming", "--consent", str(consent),
                      "--db", run.db, "--keys", str(bank))
    assert refused.code == 1
    assert ("error consent_missing: the consent in " in refused.err
            and "(they differ in secured_amount)" in " ".join(refused.err.split()))
    wrong = run.raw("consent", "pledge", "--as", "jinsen-carbon", "--bank", "cib-sanming", *PLEDGE,
                    "--db", run.db, "--keys", str(run.keys))
    assert wrong.code == 1 and "jinsen-carbon is not the pledgor of this pledge" in wrong.err
    junk = run.folder / "junk.json"
    junk.write_text("{}", encoding="utf-8")
    assert "is not a consent file" in run.raw("pledge", *PLEDGE, "--as", "cib-sanming",
                                              "--consent", str(junk), "--db", run.db,
                                              "--keys", str(bank)).err


def test_a_consent_older_than_the_window_is_refused(two_folders: tuple[CLI, Path, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run, bank, pledgor = two_folders
    consent = run.folder / "old.json"
    real = api.cli_writes.time.time
    monkeypatch.setattr(api.cli_writes.time, "time", lambda: real() - 330)  # past the 300 s window
    assert run.raw("consent", "pledge", "--as", "tonghai-nickel", "--bank", "cib-sanming", *PLEDGE,
                   "--out", str(consent), "--db", run.db, "--keys", str(pledgor)).code == 0
    monkeypatch.setattr(api.cli_writes.time, "time", real)
    late = run.raw("pledge", *PLEDGE, "--as", "cib-sanming", "--consent", str(consent),
                   "--db", run.db, "--keys", str(bank))
    assert late.code == 1 and "error stale_signature: the signature by tonghai-nickel" in late.err


def test_register_needs_a_public_key(cli: CLI) -> None:  # noqa: F811
    cli.ok("init")
    result = cli("register", "newcomer", "--role", "holder", "--name", "N", "--as", "registry")
    assert result.code == 1
    assert "error unknown_key: no public key for newcomer: pass --public-key" in " ".join(
        result.err.split())


def test_url_needs_a_key_folder(demo_cli: CLI) -> None:  # noqa: F811
    result = demo_cli.raw("unfreeze", "x", "--as", "fujian-eco", "--url", "http://127.0.0.1:9")
    assert result.code == 1 and "with --url, --keys DIR names the folder" in result.err


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"carbon-ledger {version('carbon-ledger')}"
