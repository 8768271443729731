"""Rules edition 2: no party cancels another's units alone, and text displays as it reads.

A world like tests/ledger/test_rules.py's, founded with edition 2: an insurer binds a policy
only with the insured's consent; only the insured or its loss payee files a claim; a physical
loss is approved only once the ticket's issuer or a regulator confirmed it, and for at most the
tonnes confirmed; a court's freeze stops every cancellation of the account's units that the
court did not consent to; every human-readable text is checked (values.display_text).
Each refusal is checked for its code, its numbers and an unchanged log; each world is checked
for conservation and, at the end, for a clean audit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_rules import (  # type: ignore[import-not-found]
    CAST,
    SM,
    TICKETS,
    World,
    conserved,
    copy_of,
    make_template,
    policy_args,
)

from domain import commands as C
from ledger.application import Registry
from ledger.audit import audit_database
from ledger.keys import Keyring

OTHER = "OT-0000001"  # a ticket of alice's issued by forestry-2


class World2(World):
    """World, with the steps of edition 2's insurance."""

    def confirm(self, confirmed_t: int, *, by: str = "forestry", claim_id: str = "CL-1",
                report: str = "三林核〔2022〕12号") -> dict[str, Any]:
        return self.ok("confirm_loss", by, claim_id=claim_id, confirmed_t=confirmed_t,
                       report=report)

    def approve(self, approved_t: int, payout: str = "10.00", *, claim_id: str = "CL-1",
                **kw: Any) -> dict[str, Any]:
        return self.ok("approve_claim", "ins", claim_id=claim_id, approved_t=approved_t,
                       payout=payout, **kw)


def build_world2(app: Registry) -> None:
    w = World2(app, prefix="setup")
    w.ok("initialise", "registry", origin="test/rules-2", operator_id="registry", name="登记簿",
         rules_edition=2)
    for pid, role, name in CAST:
        w.ok("register_participant", "registry", participant_id=pid, role=role, name=name)
    for ticket_no, project, standard, qty in TICKETS:
        w.ok("register_project", "forestry", project_id=project, name=f"{standard} 项目",
             owner="alice", county="将乐县", area_mu=1000, standard=standard)
        w.ok("issue_ticket", "forestry", ticket_no=ticket_no, project_id=project,
             standard=standard, period_start="2016-01-01", period_end="2020-12-31",
             quantity_t=qty)
    w.ok("register_project", "forestry-2", project_id="P-OT", name="龙岩项目", owner="alice",
         county="新罗区", area_mu=500, standard="SMCER")
    w.ok("issue_ticket", "forestry-2", ticket_no=OTHER, project_id="P-OT", standard="SMCER",
         period_start="2016-01-01", period_end="2020-12-31", quantity_t=500)
    for holder in ("alice", "bob"):
        w.ok("grant_mandate", holder, holder=holder, exchange="exch")


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, keyring: Keyring) -> Path:
    return make_template(tmp_path_factory, keyring, build_world2, "world2")


@pytest.fixture
def world(template: Path, keyring: Keyring, tmp_path: Path) -> Iterator[World2]:
    with conserved(copy_of(template, keyring, tmp_path)) as app:
        yield World2(app)
        report = audit_database(app.recorder, workers=1)
        assert report.ok, report.failure


# Binding a policy --------------------------------------------------------------------------------

class TestConsentToAPolicy:
    def test_a_policy_without_the_insureds_consent_is_refused(self, world: World2) -> None:
        world.refused("consent_missing", "bind_policy", "ins", consents=(), says=("alice",),
                      **policy_args(100))

    def test_with_the_insureds_consent_it_is_bound(self, world: World2) -> None:
        out = world.ok("bind_policy", "ins", consents=("alice",), **policy_args(100))
        assert (out["insured"], out["covered_t"]) == ("alice", 100)

    def test_another_partys_consent_does_not_stand_for_the_insureds(self, world: World2) -> None:
        world.refused("consent_missing", "bind_policy", "ins", consents=("bob",), says=("alice",),
                      **policy_args(100))
        world.refused("bad_signature", "bind_policy", "ins", consents=("alice", "bob"),
                      says=("bob",), **policy_args(100))

    def test_an_insured_that_holds_no_units_is_refused_for_that(self, world: World2) -> None:
        world.refused("not_authorized", "bind_policy", "ins", consents=(), says=("exch",),
                      **policy_args(1, insured="exch"))
        world.refused("unknown_participant", "bind_policy", "ins", consents=(), says=("nobody",),
                      **policy_args(1, insured="nobody"))


# Filing a claim ----------------------------------------------------------------------------------

class TestWhoFiles:
    def test_the_insurer_does_not_file_claims_on_its_own_policy(self, world: World2) -> None:
        world.bind(100, loss_payee="carol")
        world.refused("not_authorized", "file_claim", "ins", claim_id="CL-1", policy_id="POL-1",
                      peril="fire", loss_date="2022-01-01", claimed_t=1,
                      says=("alice", "carol", "ins", "POL-1"))

    def test_the_insured_and_the_loss_payee_file(self, world: World2) -> None:
        world.bind(100, loss_payee="carol")
        world.claim(1, claim_id="CL-1", by="alice")
        world.claim(1, claim_id="CL-2", by="carol")
        world.refused("not_authorized", "file_claim", "bob", claim_id="CL-3", policy_id="POL-1",
                      peril="fire", loss_date="2022-01-01", claimed_t=1, says=("alice",))


# Confirming a loss -------------------------------------------------------------------------------

class TestConfirmLoss:
    def test_the_tickets_issuer_confirms_and_the_claim_keeps_it(self, world: World2) -> None:
        world.bind(100)
        world.claim(80)
        out = world.confirm(70, report="火灾核查报告：过火面积 40 亩\n烧毁 70 t")
        assert (out["confirmed_t"], out["confirmed_by"], out["claimed_t"]) == (70, "forestry", 80)
        claim = world.view.claim("CL-1")
        assert claim["status"] == "pending"
        assert claim["loss_confirmation"] == {"by": "forestry", "confirmed_t": 70,
                                              "report": "火灾核查报告：过火面积 40 亩\n烧毁 70 t"}

    def test_a_regulator_confirms_too(self, world: World2) -> None:
        world.bind(100)
        world.claim(80)
        assert world.confirm(80, by="eco")["confirmed_by"] == "eco"

    @pytest.mark.parametrize(("actor", "role"), [("ins", "insurer"), ("alice", "holder"),
                                                 ("bank", "bank"), ("court", "court")])
    def test_nobody_else_confirms(self, world: World2, actor: str, role: str) -> None:
        world.bind(100)
        world.claim(80)
        world.refused("not_authorized", "confirm_loss", actor, claim_id="CL-1", confirmed_t=80,
                      report="r", says=(actor, role))

    def test_another_tickets_issuer_does_not_confirm(self, world: World2) -> None:
        world.bind(100)
        world.claim(80)
        world.refused("not_authorized", "confirm_loss", "forestry-2", claim_id="CL-1",
                      confirmed_t=80, report="r", says=("forestry",))

    def test_a_policy_over_two_issuers_tickets_is_confirmed_by_a_regulator(self,
                                                                          world: World2) -> None:
        world.ok("bind_policy", "ins", policy_id="POL-1", insured="alice",
                 lines=[{"ticket_no": SM, "quantity_t": 50}, {"ticket_no": OTHER, "quantity_t": 50}],
                 sum_insured="1000.00", premium="20.00", start="2021-01-01", end="2023-12-31",
                 perils=["fire"])
        world.claim(100)
        for issuer in ("forestry", "forestry-2"):
            world.refused("not_authorized", "confirm_loss", issuer, claim_id="CL-1",
                          confirmed_t=100, report="r", says=("a regulator",))
        world.confirm(100, by="eco")
        out = world.approve(100)
        assert out["cancelled_t"] == 100
        assert world.held("alice", OTHER)["cancelled_t"] == 50

    def test_a_confirmation_is_at_most_the_claim_and_made_once(self, world: World2) -> None:
        world.bind(100)
        world.claim(80)
        world.refused("claim_exceeded", "confirm_loss", "forestry", claim_id="CL-1",
                      confirmed_t=81, report="r", says=("CL-1", 80, 81))
        world.confirm(0, report="巡查未见过火 (no burned area found)")
        world.refused("already_exists", "confirm_loss", "eco", claim_id="CL-1", confirmed_t=80,
                      report="r", says=("CL-1", "forestry"))
        world.refused("loss_not_confirmed", "approve_claim", "ins", claim_id="CL-1",
                      approved_t=1, payout="1.00", says=(0, 1))
        world.ok("reject_claim", "ins", claim_id="CL-1", reason="no loss found")

    def test_a_price_index_claim_has_no_physical_loss_to_confirm(self, world: World2) -> None:
        world.bind(100, perils=("price_index",))
        world.claim(100, peril="price_index")
        world.refused("invalid_argument", "confirm_loss", "forestry", claim_id="CL-1",
                      confirmed_t=10, report="r", says=("price_index",))

    def test_only_a_pending_claim_is_confirmed(self, world: World2) -> None:
        world.bind(100)
        world.claim(10)
        world.ok("reject_claim", "ins", claim_id="CL-1", reason="late")
        world.refused("claim_not_pending", "confirm_loss", "forestry", claim_id="CL-1",
                      confirmed_t=10, report="r", says=("CL-1", "rejected"))
        world.refused("unknown_claim", "confirm_loss", "forestry", claim_id="CL-9",
                      confirmed_t=10, report="r", says=("CL-9",))


# Approving a physical loss -----------------------------------------------------------------------

class TestApproval:
    def test_a_physical_loss_is_not_cancelled_unconfirmed(self, world: World2) -> None:
        world.bind(100)
        world.claim(80)
        world.refused("loss_not_confirmed", "approve_claim", "ins", claim_id="CL-1",
                      approved_t=80, payout="0.00", says=("CL-1", "fire", "forestry"))
        assert world.held("alice")["cancelled_t"] == 0

    def test_at_most_the_tonnes_confirmed_are_cancelled(self, world: World2) -> None:
        world.pledge(60)
        world.bind(100, loss_payee="carol")
        world.claim(80)
        world.confirm(70)
        world.refused("loss_not_confirmed", "approve_claim", "ins", claim_id="CL-1",
                      approved_t=71, payout="1.00", says=("forestry", 70, 71))
        out = world.approve(70, "700.00")
        assert (out["cancelled_t"], out["impaired_pledges"]) == (70, ["PL-1"])
        assert world.held("alice") == {"available_t": 930, "pledged_t": 0, "retired_t": 0,
                                       "cancelled_t": 70}

    def test_a_price_index_claim_needs_no_confirmation(self, world: World2) -> None:
        world.bind(100, perils=("price_index",))
        world.claim(100, peril="price_index")
        assert world.approve(100, "500.00")["cancelled_t"] == 0

    def test_the_edition_1_rules_still_hold_beside(self, world: World2) -> None:
        world.bind(100)
        world.claim(80)
        world.confirm(80)
        world.refused("claim_exceeded", "approve_claim", "ins", claim_id="CL-1", approved_t=81,
                      payout="1.00")
        world.refused("not_authorized", "approve_claim", "ins-2", claim_id="CL-1", approved_t=10,
                      payout="1.00", says=("ins", "POL-1"))


# A court's freeze --------------------------------------------------------------------------------

class TestCourtFreeze:
    def frozen_with_a_confirmed_loss(self, world: World2, by: str = "court") -> None:
        world.pledge(60)
        world.bind(100)
        world.claim(80)
        world.confirm(80)
        world.ok("freeze", by, holder="alice", reason="（2022）闽0428财保1号 财产保全")

    def test_units_a_court_froze_are_not_cancelled_without_the_court(self, world: World2) -> None:
        self.frozen_with_a_confirmed_loss(world)
        world.refused("consent_missing", "approve_claim", "ins", claim_id="CL-1", approved_t=80,
                      payout="80.00", consents=(), says=("court",))
        out = world.approve(80, "80.00", consents=("court",))
        assert out["cancelled_t"] == 80
        assert world.view.pledge("PL-1")["impaired_t"] == 60  # the fact a pledgee's feed reads

    def test_another_courts_consent_does_not_do(self, world: World2) -> None:
        world.ok("register_participant", "registry", participant_id="court-2", role="court",
                 name="三明市中级人民法院")
        self.frozen_with_a_confirmed_loss(world)
        world.refused("consent_missing", "approve_claim", "ins", claim_id="CL-1", approved_t=80,
                      payout="80.00", consents=("court-2",), says=("court",))

    def test_every_court_that_froze_consents(self, world: World2) -> None:
        world.ok("register_participant", "registry", participant_id="court-2", role="court",
                 name="三明市中级人民法院")
        self.frozen_with_a_confirmed_loss(world)
        world.ok("freeze", "court-2", holder="alice", reason="另案保全")
        world.refused("consent_missing", "approve_claim", "ins", claim_id="CL-1", approved_t=80,
                      payout="80.00", consents=("court",), says=("court-2",))
        world.approve(80, "80.00", consents=("court", "court-2"))

    def test_a_regulators_freeze_needs_no_consent_to_a_confirmed_loss(self,
                                                                     world: World2) -> None:
        self.frozen_with_a_confirmed_loss(world, by="eco")
        world.approve(80, "80.00", consents=())

    def test_a_price_index_payout_cancels_nothing_and_needs_no_court(self, world: World2) -> None:
        world.bind(100, perils=("price_index",))
        world.claim(100, peril="price_index")
        world.ok("freeze", "court", holder="alice", reason="保全")
        world.approve(100, "10.00", consents=())

    def test_the_issuer_cancels_a_court_frozen_accounts_units_only_with_the_court(
            self, world: World2) -> None:
        world.ok("freeze", "court", holder="alice", reason="保全")
        args = {"cancellation_id": "K-1", "ticket_no": SM, "holder": "alice", "quantity_t": 10,
                "reason": "监测面积核减"}
        world.refused("consent_missing", "cancel_units", "forestry", consents=(),
                      says=("court",), **args)
        out = world.ok("cancel_units", "forestry", consents=("court",), **args)
        assert out["quantity_t"] == 10
        world.ok("unfreeze", "court", holder="alice")
        world.ok("cancel_units", "forestry", consents=(),
                 **{**args, "cancellation_id": "K-2"})


# Human-readable text -----------------------------------------------------------------------------

# For every command with text: arguments that the world accepts, and the text fields they hold.
def text_commands(world: World2) -> dict[str, tuple[str, dict[str, Any]]]:
    world.bind(100)
    world.claim(80)
    return {
        "initialise": ("registry", {"origin": "x", "operator_id": "registry", "name": "n"}),
        "register_participant": ("registry", {"participant_id": "dave", "name": "n",
                                              "role": "holder"}),
        "revoke_key": ("alice", {"participant_id": "alice", "key_id": "0" * 32, "reason": "r"}),
        "register_project": ("forestry", {"project_id": "P-X", "name": "n", "owner": "alice",
                                          "county": "c", "area_mu": 1, "standard": "SMCER",
                                          "methodology": "m"}),
        "file_claim": ("alice", {"claim_id": "CL-2", "policy_id": "POL-1", "peril": "fire",
                                 "loss_date": "2022-01-01", "claimed_t": 1, "description": "d"}),
        "confirm_loss": ("forestry", {"claim_id": "CL-1", "confirmed_t": 1, "report": "r"}),
        "reject_claim": ("ins", {"claim_id": "CL-1", "reason": "r"}),
        "retire": ("alice", {"retirement_id": "RT-1", "purpose": "judicial_restoration",
                             "beneficiary": "b", "details": "d", "case_no": "c", "court": "court",
                             "lines": [{"ticket_no": SM, "quantity_t": 1}]}),
        "freeze": ("eco", {"holder": "bob", "reason": "r"}),
        "cancel_units": ("forestry", {"cancellation_id": "K-1", "ticket_no": SM, "holder": "alice",
                                      "quantity_t": 1, "reason": "r"}),
    }


def test_every_command_with_text_is_covered() -> None:
    with_text = {name for name, fields in C.TEXT_FIELDS.items() if fields}
    assert with_text == {"initialise", "register_participant", "revoke_key", "register_project",
                         "file_claim", "confirm_loss", "reject_claim", "retire", "freeze",
                         "cancel_units"}


REFUSED = ["\u202e", "\u202d", "\u2067", "\u200f", "\u200b", "\u2060", "\ufeff", "\u00ad", "\x07",
           "\x1b", "\r", "\x7f", "\x85", "\u2028", "\ue000", "\ufffe", "\U000e0041", "\u3164"]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_a_refused_character_in_any_text_field_of_any_command_is_named(world: World2,
                                                                       data: st.DataObject) -> None:
    commands = getattr(world, "_text_commands", None)
    if commands is None:
        commands = world._text_commands = text_commands(world)  # type: ignore[attr-defined]
    name = data.draw(st.sampled_from(sorted(commands)), label="command")
    actor, args = commands[name]
    field = data.draw(st.sampled_from(C.TEXT_FIELDS[name]), label="field")
    ch = data.draw(st.sampled_from(REFUSED), label="character")
    base = data.draw(st.sampled_from(["常口村", "Fujian Eco (福建)", "a, b. c!"]), label="text")
    at = data.draw(st.integers(0, len(base)), label="at")
    bad = {**args, field: base[:at] + ch + base[at:]}
    err = world.refused("invalid_argument", name, actor, says=(field, f"U+{ord(ch):04X}"), **bad)
    assert err.details["field"] == field


def test_a_line_break_is_a_refusal_in_one_line_fields_only(world: World2) -> None:
    world.refused("invalid_argument", "register_participant", "registry",
                  participant_id="dave", name="Evil\nCorp", role="holder", says=("name", "U+000A"))
    world.ok("freeze", "eco", holder="bob", reason="第一行\n第二行\t（附件）")


@pytest.mark.parametrize("text", ["常口村生态公益林", "福建通海镍业 (Fujian Tonghai Nickel), Ltd.",
                                  "“引号”、顿号；分号：冒号！", "全角　空格 and spaces"])
def test_chinese_punctuation_and_spaces_pass_in_every_text_field(world: World2, text: str) -> None:
    commands = text_commands(world)
    for name in ("register_participant", "register_project", "retire", "file_claim",
                 "confirm_loss", "freeze"):
        actor, args = commands[name]
        world.ok(name, actor, **{**args, **{f: text for f in C.TEXT_FIELDS[name]}})


def test_a_text_with_nothing_visible_is_refused(world: World2) -> None:
    world.refused("invalid_argument", "retire", "alice", says=("beneficiary", "nothing visible"),
                  retirement_id="RT-1", purpose="voluntary", beneficiary="\u200d\u200d",
                  lines=[{"ticket_no": SM, "quantity_t": 1}])
    world.refused("invalid_argument", "retire", "alice", says=("beneficiary", "U+200B"),
                  retirement_id="RT-1", purpose="voluntary", beneficiary="\u200b",
                  lines=[{"ticket_no": SM, "quantity_t": 1}])
