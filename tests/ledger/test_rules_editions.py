"""Rules editions: a registry written before them verifies as it was written; a newer edition
applies from the position where the operator adopted it, live and in the audit.

`tests/fixtures/edition1/` holds a registry made by the code of commit 627dbf2, before editions
existed (see make_edition1.py): the demo story, then what the first rulebook accepted and the
second refuses. Each test works on a copy of it.
"""

from __future__ import annotations

import importlib.util
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _forge import recompute_sqlite_chain  # type: ignore[import-not-found]

from domain.errors import DomainError
from domain.genesis import LATEST_EDITION, Genesis
from ledger.application import Registry
from ledger.audit import audit_database
from ledger.keys import Keyring
from ledger.operations import migrate
from ledger.transcoder import MsgpackTranscoder

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "edition1"
T = MsgpackTranscoder()


def _fixture_module() -> Any:
    spec = importlib.util.spec_from_file_location("make_edition1", FIXTURE.parent / "make_edition1.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKER = _fixture_module()
RECORDED = __import__("json").loads((FIXTURE / "reads.json").read_text(encoding="utf-8"))
# What a registry of today adds to the reads of a registry written before editions (and nothing
# else may differ): the loss confirmation a claim now carries.
NEW_READ_KEYS = {"loss_confirmation"}


def same_reads(old: Any, new: Any, where: str = "reads") -> None:
    """`new` answers as `old` did: every value equal, dicts with at most NEW_READ_KEYS more."""
    if isinstance(old, dict):
        assert isinstance(new, dict), where
        assert set(old) <= set(new), f"{where} lost {sorted(set(old) - set(new))}"
        assert set(new) - set(old) <= NEW_READ_KEYS, f"{where} gained {sorted(set(new) - set(old))}"
        for key, value in old.items():
            same_reads(value, new[key], f"{where}.{key}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), where
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            same_reads(a, b, f"{where}[{i}]")
    else:
        assert old == new, f"{where}: {old!r} != {new!r}"


@pytest.fixture
def old(tmp_path: Path) -> Path:
    """A copy of the registry written before editions, with its participants' keys."""
    folder = tmp_path / "edition1"
    shutil.copytree(FIXTURE, folder)
    return folder


def open_old(folder: Path) -> Registry:
    return Registry(f"sqlite:///{folder / 'registry.db'}", keyring=Keyring(folder / "keys"),
                    auto_checkpoint=False)


@pytest.fixture
def app(old: Path) -> Iterator[Registry]:
    registry = open_old(old)
    yield registry
    registry.close()


def audit(app: Registry) -> Any:
    return audit_database(app.recorder, RECORDED["audit"]["operator_key"], workers=1)


def figures(report: Any) -> dict[str, Any]:
    return {k: v for k, v in report.to_dict().items() if k in RECORDED["audit"]}


# The registry written before editions -----------------------------------------------------------

@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_registry_written_before_editions_verifies_and_reads_as_it_did(
        old: Path, store: str, request: pytest.FixtureRequest) -> None:
    app = open_old(old)
    try:
        if store == "postgres":  # the same records, copied byte for byte into PostgreSQL
            target = Registry(request.getfixturevalue("pg_url"), auto_checkpoint=False)
            migrate(app, target)
            app.close()
            app = target
        report = audit(app)
        assert report.ok, report.failure
        assert figures(report) == RECORDED["audit"]
        assert report.rules_editions == [{"edition": 1, "adopted_at": 0}]
        same_reads(RECORDED["reads"], MAKER.reads(app))
        assert app.projection().genesis.rules_edition == 1
    finally:
        app.close()


def test_what_edition_1_accepted_is_in_it(app: Registry) -> None:
    """The fixture really holds what edition 2 refuses (else the test above proves little)."""
    view = app.projection()
    assert "\u202e" in view.participant("rlo-holder")["name"]
    assert view.retirement("RT-E1-001")["beneficiary"] == "\u200b\u200b"
    claim = view.claim("CLM-E1-001")
    assert (claim["claimant"], claim["status"], claim["payout"]) == ("picc-fujian", "approved",
                                                                     "0.00")
    assert view.participant("tonghai-nickel")["frozen_by"] == ["jiangle-court"]
    assert view.balances("tonghai-nickel")["totals"]["cancelled_t"] == 2_723


def test_edition_1_goes_on_deciding_as_it_did_until_a_newer_one_is_adopted(app: Registry) -> None:
    app.submit("register_participant", "registry", "e1-more", {
        "participant_id": "rlo-2", "name": "a\u202eb", "role": "holder"})
    app.submit("bind_policy", "picc-fujian", "policy/POL-E1-002", {
        "policy_id": "POL-E1-002", "insured": "xiayang-farm",
        "lines": [{"ticket_no": "SM-0000002", "quantity_t": 100}], "sum_insured": "1.00",
        "premium": "0.00", "start": "2021-01-01", "end": "2030-12-31", "perils": ["fire"]},
        consents=())
    app.submit("file_claim", "picc-fujian", "claim/CLM-E1-002", {
        "claim_id": "CLM-E1-002", "policy_id": "POL-E1-002", "peril": "fire",
        "loss_date": "2023-01-01", "claimed_t": 100})
    out = app.submit("approve_claim", "picc-fujian", "claim/CLM-E1-002/approve", {
        "claim_id": "CLM-E1-002", "approved_t": 100, "payout": "0.00"})
    assert out["cancelled_t"] == 100
    assert audit(app).ok


# Adopting edition 2 ------------------------------------------------------------------------------

def adopt(app: Registry, edition: int = 2) -> dict[str, Any]:
    return app.submit("adopt_rules", "registry", f"rules/edition-{edition}", {"edition": edition})


def refused(app: Registry, code: str, name: str, actor: str, command_id: str,
            args: dict[str, Any], *, says: tuple[str, ...] = (), **kw: Any) -> DomainError:
    before = app.log_position()
    with pytest.raises(DomainError) as info:
        app.submit(name, actor, command_id, args, **kw)
    assert info.value.code == code, info.value
    for words in says:
        assert words in info.value.message, info.value.message
    assert app.log_position() == before
    return info.value


POLICY = {"policy_id": "POL-E2-001", "insured": "xiayang-farm",
          "lines": [{"ticket_no": "SM-0000002", "quantity_t": 100}], "sum_insured": "1000.00",
          "premium": "10.00", "start": "2021-01-01", "end": "2030-12-31", "perils": ["fire"]}
CLAIM = {"claim_id": "CLM-E2-001", "policy_id": "POL-E2-001", "peril": "fire",
         "loss_date": "2023-01-01", "claimed_t": 100}


def test_adopting_edition_2_applies_its_rules_from_then_on(app: Registry) -> None:
    before = app.log_position()
    out = adopt(app)
    assert (out["edition"], out["previous_edition"]) == (2, 1)
    adopted_at = out["position"]
    assert adopted_at > before
    assert app.projection().genesis.rules_edition == 2
    # The insurer alone is refused at each step.
    refused(app, "consent_missing", "bind_policy", "picc-fujian", "policy/POL-E2-001", POLICY,
            consents=(), says=("xiayang-farm",))
    app.submit("bind_policy", "picc-fujian", "policy/POL-E2-001", POLICY)  # with the consent
    refused(app, "not_authorized", "file_claim", "picc-fujian", "claim/CLM-E2-001", CLAIM,
            says=("xiayang-farm", "picc-fujian"))
    app.submit("file_claim", "xiayang-farm", "claim/CLM-E2-001", CLAIM)
    approve = {"claim_id": "CLM-E2-001", "approved_t": 100, "payout": "0.00"}
    refused(app, "loss_not_confirmed", "approve_claim", "picc-fujian", "claim/CLM-E2-001/approve",
            approve, says=("CLM-E2-001", "sanming-forestry"))
    app.submit("confirm_loss", "sanming-forestry", "claim/CLM-E2-001/confirm", {
        "claim_id": "CLM-E2-001", "confirmed_t": 60, "report": "三林核〔2023〕7号: 60 t burned"})
    refused(app, "loss_not_confirmed", "approve_claim", "picc-fujian", "claim/CLM-E2-001/approve",
            approve, says=("60", "100"))
    out = app.submit("approve_claim", "picc-fujian", "claim/CLM-E2-001/approve",
                     {**approve, "approved_t": 60})
    assert out["cancelled_t"] == 60
    # Text that reads otherwise than it displays is refused.
    refused(app, "invalid_argument", "register_participant", "registry", "e2-rlo", {
        "participant_id": "rlo-3", "name": "a\u202eb", "role": "holder"}, says=("U+202E",))
    # The audit applies edition 1 before the adoption and edition 2 after it.
    report = audit(app)
    assert report.ok, report.failure
    assert report.rules_editions == [{"edition": 1, "adopted_at": 0},
                                     {"edition": 2, "adopted_at": adopted_at}]
    same_reads(RECORDED["reads"]["balances_as_of_51"],
               app.projection(as_of=51).balances("changkou-village"))


def test_the_audit_refuses_after_the_adoption_what_it_accepts_before_it(app: Registry,
                                                                        old: Path) -> None:
    """The same policy without the insured's consent: in the log before the adoption (the
    fixture's POL-E1-001) it stands; forged into the log after it, the audit names it."""
    adopt(app)
    out = app.submit("bind_policy", "picc-fujian", "policy/POL-E2-001", POLICY)
    app.close()
    con = sqlite3.connect(old / "registry.db")
    try:
        (state,) = con.execute("SELECT state FROM stored_events WHERE rowid = ?",
                               (out["position"],)).fetchone()
        record = T.decode(bytes(state))
        assert [s["signer"] for s in record["signatures"]] == ["picc-fujian", "xiayang-farm"]
        record["signatures"] = record["signatures"][:1]  # the insured's consent removed
        con.execute("UPDATE stored_events SET state = ? WHERE rowid = ?",
                    (T.encode(record), out["position"]))
        recompute_sqlite_chain(con)
        con.commit()
    finally:
        con.close()
    forged = open_old(old)
    try:
        report = audit(forged)
        assert not report.ok and report.failure is not None
        assert report.failure.position == out["position"]
        assert "consent_missing" in report.failure.what
        assert "xiayang-farm" in report.failure.what
    finally:
        forged.close()


def test_only_the_operator_adopts_an_edition_and_only_a_newer_one(app: Registry) -> None:
    refused(app, "not_authorized", "adopt_rules", "fujian-eco", "rules/by-regulator",
            {"edition": 2}, says=("operator",))
    refused(app, "invalid_argument", "adopt_rules", "registry", "rules/edition-1", {"edition": 1},
            says=("edition 1",))
    refused(app, "invalid_argument", "adopt_rules", "registry", "rules/edition-9", {"edition": 9},
            says=("9", "1, 2"))
    adopt(app)
    refused(app, "invalid_argument", "adopt_rules", "registry", "rules/again", {"edition": 2},
            says=("follows rules edition 2",))


def test_a_command_decided_before_a_concurrent_adoption_is_decided_again(old: Path) -> None:
    """Two processes on one file: the one that decides a policy without consent under edition 1
    finds, when it writes, that the edition changed since (the genesis is in its read set), and
    decides again, under edition 2: refused."""
    first, second = open_old(old), open_old(old)
    try:
        first.submit("register_participant", "registry", "e2-warm", {
            "participant_id": "warm-holder", "name": "预热", "role": "holder"})
        adopt(second)  # first's state is now one command behind, and it does not know
        refused(first, "consent_missing", "bind_policy", "picc-fujian", "policy/POL-E2-001",
                POLICY, consents=())
    finally:
        first.close()
        second.close()


# New registries --------------------------------------------------------------------------------

def test_a_registry_founded_today_follows_the_latest_edition(registry: Registry) -> None:
    out = registry.submit("initialise", "registry", "init", {
        "origin": "test/editions", "operator_id": "registry", "name": "登记簿",
        "rules_edition": LATEST_EDITION})
    assert out["rules_edition"] == LATEST_EDITION
    genesis = registry.get_aggregate(Genesis, Genesis.id_for())
    assert genesis is not None and genesis.rules_edition == LATEST_EDITION
    report = audit_database(registry.recorder, workers=1)
    assert report.ok and report.rules_editions == [{"edition": LATEST_EDITION,
                                                    "adopted_at": out["position"]}]


def test_a_genesis_without_an_edition_is_edition_1(registry: Registry) -> None:
    out = registry.submit("initialise", "registry", "init", {
        "origin": "test/editions", "operator_id": "registry", "name": "登记簿"})
    assert "rules_edition" not in out
    assert registry.projection().genesis.rules_edition == 1
