"""Every rule of every command: who may do what, and what is refused with which code.

Each refusal is checked for its exact code, for a message that names the numbers (or the ids), and
for leaving the log untouched. Every `world` is checked for conservation when its test ends
(issued = available + pledged + retired + cancelled, for every ticket).
"""

from __future__ import annotations

import itertools
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from domain import commands as C
from domain.errors import DomainError
from domain.values import parse_serial
from ledger.application import Registry
from ledger.keys import Keyring, public_text
from ledger.signing import SignedCommand, canonical_json, sign

SM, FF, CC = "SM-0000001", "FF-0000001", "CC-0000001"
CAST = [
    ("forestry", "issuer", "三明市林业局"), ("forestry-2", "issuer", "龙岩市林业局"),
    ("eco", "regulator", "福建省生态环境厅"), ("eco-2", "regulator", "生态环境部"),
    ("exch", "exchange", "福建沙县农村产权交易中心"), ("exch-2", "exchange", "海峡股权交易中心"),
    ("bank", "bank", "兴业银行三明分行"), ("bank-2", "bank", "农业银行"),
    ("ins", "insurer", "人保财险"), ("ins-2", "insurer", "太平洋保险"),
    ("court", "court", "将乐县人民法院"),
    ("alice", "holder", "常口村"), ("bob", "holder", "金森碳汇"), ("carol", "holder", "福建通海镍业"),
]
TICKETS = [(SM, "P-SM", "SMCER", 1_000), (FF, "P-FF", "FFCER", 6_000), (CC, "P-CC", "CCER", 3_000)]


def _names(message: str, value: Any) -> bool:
    if isinstance(value, int):  # a number, not the digits of a longer number
        return re.search(rf"(?<![\d.]){value}(?![\d])", message) is not None
    return str(value) in message


class World:
    """A registry with a cast, three tickets held by alice (SMCER, FFCER, CCER), and helpers."""

    def __init__(self, app: Registry, prefix: str = "cmd") -> None:
        self.app = app
        self.prefix = prefix
        self._ids = itertools.count(1)
        self._trades = itertools.count(1)

    def next_id(self) -> str:
        return f"{self.prefix}-{next(self._ids)}"

    def ok(self, name: str, actor: str, /, *, consents: tuple[str, ...] | None = None,
           **args: Any) -> dict[str, Any]:
        """Accepted; `consents`: the parties that sign their consent (default: every one the
        command needs, see Registry.submit)."""
        return self.app.submit(name, actor, self.next_id(), args, consents=consents)

    def refused(self, code: str, name: str, actor: str, /, *, says: tuple = (),
                consents: tuple[str, ...] | None = None, **args: Any) -> DomainError:
        before = self.app.log_position()
        with pytest.raises(DomainError) as info:
            self.app.submit(name, actor, self.next_id(), args, consents=consents)
        err = info.value
        assert err.code == code, f"expected {code}, got {err.code}: {err.message}"
        for value in says:
            assert _names(err.message, value), f"{value!r} is not named in {err.message!r}"
        assert self.app.log_position() == before, "a refused command wrote to the log"
        return err

    # Building blocks -----------------------------------------------------------------------

    def trade(self, qty: int | None = None, *, seller: str = "alice", buyer: str = "bob",
              ticket: str = SM, **extra: Any) -> dict[str, Any]:
        args = {"trade_id": f"SX-{next(self._trades):04d}", "seller": seller, "buyer": buyer,
                "ticket_no": ticket, "price": "10.00", "mode": "negotiated", **extra}
        if qty is not None:
            args["quantity_t"] = qty
        return args

    def transfer(self, qty: int | None = None, *, exchange: str = "exch", **kw: Any) -> dict[str, Any]:
        return self.ok("transfer", exchange, **self.trade(qty, **kw))

    def pledge(self, qty: int | None, *, pledgor: str = "alice", bank: str = "bank",
               ticket: str = SM, pledge_id: str = "PL-1", **line: Any) -> dict[str, Any]:
        return self.ok("pledge", bank, **pledge_args(qty, pledgor=pledgor, ticket=ticket,
                                                     pledge_id=pledge_id, **line))

    def retire(self, qty: int | None, *, holder: str = "alice", ticket: str = SM,
               retirement_id: str = "RT-1", purpose: str = "voluntary",
               **extra: Any) -> dict[str, Any]:
        return self.ok("retire", holder, **retire_args(qty, ticket=ticket, retirement_id=retirement_id,
                                                       purpose=purpose, **extra))

    def bind(self, qty: int = 100, *, perils: tuple = ("fire",), policy_id: str = "POL-1",
             insurer: str = "ins", **extra: Any) -> dict[str, Any]:
        return self.ok("bind_policy", insurer, **policy_args(qty, perils=perils, policy_id=policy_id,
                                                             **extra))

    def claim(self, claimed: int, *, peril: str = "fire", claim_id: str = "CL-1",
              policy_id: str = "POL-1", by: str = "alice", loss_date: str = "2022-03-14") -> None:
        self.ok("file_claim", by, claim_id=claim_id, policy_id=policy_id, peril=peril,
                loss_date=loss_date, claimed_t=claimed)

    # Reading ----------------------------------------------------------------------------------

    @property
    def view(self):
        return self.app.projection()

    def held(self, holder: str, ticket: str = SM) -> dict[str, int]:
        for row in self.view.balances(holder)["tickets"]:
            if row["ticket_no"] == ticket:
                return {k: row[k] for k in ("available_t", "pledged_t", "retired_t", "cancelled_t")}
        return {"available_t": 0, "pledged_t": 0, "retired_t": 0, "cancelled_t": 0}

    def blocks(self, ticket: str = SM) -> list[tuple[int, int, str, str]]:
        return [(parse_serial(b["first_serial"])[1], parse_serial(b["last_serial"])[1], b["holder"],
                 b["state"]) for b in self.view.ticket(ticket)["blocks"]]


def pledge_args(qty: int | None, *, pledgor: str = "alice", ticket: str = SM,
                pledge_id: str = "PL-1", **line: Any) -> dict[str, Any]:
    line = {"ticket_no": ticket, **line}
    if qty is not None:
        line["quantity_t"] = qty
    return {"pledge_id": pledge_id, "pledgor": pledgor, "loan_ref": f"LOAN-{pledge_id}",
            "secured_amount": "5000000.00", "maturity": "2030-12-31", "lines": [line]}


def retire_args(qty: int | None, *, ticket: str = SM, retirement_id: str = "RT-1",
                purpose: str = "voluntary", beneficiary: str = "常口村", **extra: Any) -> dict[str, Any]:
    line_keys = {"first_serial", "last_serial"}
    line = {"ticket_no": ticket, **{k: v for k, v in extra.items() if k in line_keys}}
    if qty is not None:
        line["quantity_t"] = qty
    rest = {k: v for k, v in extra.items() if k not in line_keys}
    return {"retirement_id": retirement_id, "purpose": purpose, "beneficiary": beneficiary,
            "lines": [line], **rest}


def policy_args(qty: int, *, perils: tuple = ("fire",), policy_id: str = "POL-1",
                insured: str = "alice", ticket: str = SM, sum_insured: str = "1000.00",
                **extra: Any) -> dict[str, Any]:
    return {"policy_id": policy_id, "insured": insured,
            "lines": [{"ticket_no": ticket, "quantity_t": qty}], "sum_insured": sum_insured,
            "premium": "20.00", "start": "2021-01-01", "end": "2023-12-31", "perils": list(perils),
            **extra}


def build_world(app: Registry) -> None:
    w = World(app, prefix="setup")
    w.ok("initialise", "registry", origin="test/rules", operator_id="registry", name="登记簿")
    for pid, role, name in CAST:
        w.ok("register_participant", "registry", participant_id=pid, role=role, name=name)
    for ticket_no, project, standard, qty in TICKETS:
        w.ok("register_project", "forestry", project_id=project, name=f"{standard} 项目", owner="alice",
             county="将乐县", area_mu=1000, standard=standard)
        w.ok("issue_ticket", "forestry", ticket_no=ticket_no, project_id=project, standard=standard,
             period_start="2016-01-01", period_end="2020-12-31", quantity_t=qty)
    for holder in ("alice", "bob"):
        w.ok("grant_mandate", holder, holder=holder, exchange="exch")


def assert_conserved(app: Registry) -> None:
    for row in app.projection().supply():
        assert row["issued_t"] == (row["available_t"] + row["pledged_t"] + row["retired_t"]
                                   + row["cancelled_t"]), row


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    """Every participant's private key (test convenience: real participants keep their own)."""
    return Keyring()


def make_template(tmp_path_factory: pytest.TempPathFactory, keyring: Keyring,
                  build: Any, name: str) -> Path:
    """A world built once per module in an SQLite file (`build(app)`); each test copies it."""
    path = tmp_path_factory.mktemp(name) / "registry.db"
    app = Registry(f"sqlite:///{path}", keyring=keyring)
    build(app)
    app.close()
    return path


def copy_of(template: Path, keyring: Keyring, tmp_path: Path) -> Registry:
    """A registry over a private copy of the template's database (and any WAL files)."""
    for f in template.parent.glob(template.name + "*"):
        shutil.copyfile(f, tmp_path / f.name)
    return Registry(f"sqlite:///{tmp_path / template.name}", keyring=keyring)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, keyring: Keyring) -> Path:
    return make_template(tmp_path_factory, keyring, build_world, "world")


@contextmanager
def conserved(app: Registry) -> Iterator[Registry]:
    """The registry, checked for conservation when the block ends well, and closed."""
    try:
        yield app
        assert_conserved(app)
    finally:
        app.close()


@pytest.fixture
def world(template: Path, keyring: Keyring, tmp_path: Path) -> Iterator[World]:
    with conserved(copy_of(template, keyring, tmp_path)) as app:
        yield World(app)


@pytest.fixture
def bare(registry: Registry) -> World:
    """A registry with nothing in it, not even its operator."""
    return World(registry)


# Initialisation and participants -------------------------------------------------------------

class TestParticipants:
    def test_initialise_only_by_its_own_operator(self, bare: World) -> None:
        key = public_text(bare.app.keyring.get_or_create("someone"))
        bare.refused("not_authorized", "initialise", "someone", origin="x", operator_id="registry",
                     name="op", public_key=key, says=("operator",))

    def test_initialise_twice_already_exists(self, world: World) -> None:
        world.refused("already_exists", "initialise", "registry", origin="again",
                      operator_id="registry", name="op", says=("genesis",))

    def test_an_unregistered_actor_is_refused(self, world: World) -> None:
        world.app.keyring.get_or_create("ghost-exchange")
        world.refused("unknown_participant", "transfer", "ghost-exchange", says=("ghost-exchange",),
                      **world.trade(1))

    def test_only_the_operator_registers_participants(self, world: World) -> None:
        world.refused("not_authorized", "register_participant", "eco", participant_id="dave",
                      name="D", role="holder", says=("eco", "regulator", "operator"))
        world.refused("not_authorized", "register_participant", "alice", participant_id="dave",
                      name="D", role="holder", says=("alice", "holder"))

    def test_there_is_one_operator(self, world: World) -> None:
        world.refused("not_authorized", "register_participant", "registry", participant_id="op-2",
                      name="O", role="operator", says=("one operator",))

    def test_duplicate_participant_already_exists(self, world: World) -> None:
        world.refused("already_exists", "register_participant", "registry", participant_id="alice",
                      name="another alice", role="bank", says=("alice",))

    def test_registered_participant_is_in_the_projection(self, world: World) -> None:
        world.ok("register_participant", "registry", participant_id="dave", name="夏阳国有林场",
                 role="holder")
        view = world.view.participant("dave")
        assert {k: view[k] for k in ("participant_id", "name", "role", "frozen", "frozen_by",
                                     "mandates")} == {
            "participant_id": "dave", "name": "夏阳国有林场", "role": "holder", "frozen": False,
            "frozen_by": [], "mandates": []}

    def test_unknown_role_is_an_invalid_argument(self, world: World) -> None:
        world.refused("invalid_argument", "register_participant", "registry", participant_id="dave",
                      name="D", role="trader", says=("trader",))


# Projects and issuance -----------------------------------------------------------------------

class TestProjects:
    ARGS = {"project_id": "P-NEW", "name": "造林", "owner": "bob", "county": "沙县区",
            "area_mu": "2500", "standard": "SMCER"}

    def test_registered_by_an_issuer_only(self, world: World) -> None:
        world.refused("not_authorized", "register_project", "bank", says=("bank", "issuer"), **self.ARGS)
        world.refused("not_authorized", "register_project", "eco", says=("eco", "regulator"),
                      **self.ARGS)

    def test_the_owner_must_be_a_registered_holder(self, world: World) -> None:
        world.refused("unknown_participant", "register_project", "forestry", says=("nobody",),
                      **{**self.ARGS, "owner": "nobody"})
        world.refused("not_authorized", "register_project", "forestry", says=("exch", "exchange"),
                      **{**self.ARGS, "owner": "exch"})

    def test_duplicate_project_already_exists(self, world: World) -> None:
        world.refused("already_exists", "register_project", "forestry-2", says=("P-SM",),
                      **{**self.ARGS, "project_id": "P-SM"})

    def test_area_must_be_positive(self, world: World) -> None:
        world.refused("invalid_argument", "register_project", "forestry", says=("area_mu",),
                      **{**self.ARGS, "area_mu": 0})


class TestIssue:
    def args(self, **over: Any) -> dict[str, Any]:
        return {"ticket_no": "SM-0000009", "project_id": "P-SM", "standard": "SMCER",
                "period_start": "2021-01-01", "period_end": "2021-12-31", "quantity_t": 500, **over}

    def test_issues_whole_tonnes_with_serials_to_the_project_owner(self, world: World) -> None:
        out = world.ok("issue_ticket", "forestry", **self.args())
        assert (out["owner"], out["quantity_t"], out["first_serial"], out["last_serial"]) == (
            "alice", 500, "SM-0000009-0000001", "SM-0000009-0000500")
        view = world.view.ticket("SM-0000009")
        assert (view["issued_t"], view["available_t"], view["issuer"], view["owner"]) == (
            500, 500, "forestry", "alice")
        assert world.blocks("SM-0000009") == [(1, 500, "alice", "available")]

    @pytest.mark.parametrize("actor", ["bank", "alice", "eco", "registry"])
    def test_issued_by_an_issuer_only(self, world: World, actor: str) -> None:
        world.refused("not_authorized", "issue_ticket", actor, says=(actor, "issuer"), **self.args())

    def test_the_project_must_be_registered(self, world: World) -> None:
        world.refused("unknown_project", "issue_ticket", "forestry", says=("P-NONE",),
                      **self.args(project_id="P-NONE"))

    def test_only_the_projects_own_issuer(self, world: World) -> None:
        world.refused("not_authorized", "issue_ticket", "forestry-2", says=("P-SM", "forestry"),
                      **self.args())

    def test_standard_must_match_the_project(self, world: World) -> None:
        world.refused("standard_mismatch", "issue_ticket", "forestry", says=("P-SM", "SMCER", "FFCER"),
                      **self.args(standard="FFCER"))

    @pytest.mark.parametrize("qty", [0, -5, "500", True])
    def test_quantity_is_at_least_one_whole_tonne(self, world: World, qty: Any) -> None:
        world.refused("invalid_argument", "issue_ticket", "forestry", says=("quantity_t",),
                      **self.args(quantity_t=qty))

    def test_a_fractional_quantity_is_not_even_canonical(self, world: World) -> None:
        world.refused("non_canonical", "issue_ticket", "forestry", says=("float",),
                      **self.args(quantity_t=500.0))

    def test_a_single_tonne_ticket(self, world: World) -> None:
        out = world.ok("issue_ticket", "forestry", **self.args(quantity_t=1))
        assert out["first_serial"] == out["last_serial"] == "SM-0000009-0000001"

    def test_duplicate_ticket_number_already_exists(self, world: World) -> None:
        world.refused("already_exists", "issue_ticket", "forestry", says=(SM,), **self.args(ticket_no=SM))
        # also from another project of the same standard
        world.ok("register_project", "forestry", project_id="P-SM-2", name="n", owner="bob",
                 county="c", area_mu=1, standard="SMCER")
        world.refused("already_exists", "issue_ticket", "forestry", says=(SM,),
                      **self.args(ticket_no=SM, project_id="P-SM-2"))

    def test_monitoring_period_must_not_end_before_it_starts(self, world: World) -> None:
        world.refused("invalid_argument", "issue_ticket", "forestry", says=("2020-12-31", "2021-01-01"),
                      **self.args(period_end="2020-12-31"))


# Mandates ------------------------------------------------------------------------------------

class TestMandates:
    def test_a_holder_grants_only_for_its_own_account(self, world: World) -> None:
        world.refused("not_authorized", "grant_mandate", "exch", holder="carol", exchange="exch",
                      says=("exch", "exchange"))
        world.refused("not_authorized", "grant_mandate", "bob", holder="carol", exchange="exch",
                      says=("carol",))

    def test_mandate_goes_to_an_exchange(self, world: World) -> None:
        world.refused("not_authorized", "grant_mandate", "carol", holder="carol", exchange="bank",
                      says=("bank", "exchange"))
        world.refused("unknown_participant", "grant_mandate", "carol", holder="carol",
                      exchange="nowhere", says=("nowhere",))

    def test_non_holders_have_no_account_to_mandate(self, world: World) -> None:
        world.refused("not_authorized", "grant_mandate", "eco", holder="eco", exchange="exch",
                      says=("eco", "regulator"))

    def test_granting_twice_already_exists(self, world: World) -> None:
        world.refused("already_exists", "grant_mandate", "alice", holder="alice", exchange="exch",
                      says=("alice", "exch"))

    def test_an_exchange_without_mandate_cannot_move_units(self, world: World) -> None:
        world.refused("no_mandate", "transfer", "exch-2", says=("alice", "exch-2"), **world.trade(1))
        world.refused("no_mandate", "transfer", "exch", says=("carol", "exch"),
                      **world.trade(1, seller="carol", buyer="bob"))

    def test_revoked_mandate_stops_transfers(self, world: World) -> None:
        world.ok("revoke_mandate", "alice", holder="alice", exchange="exch")
        world.refused("no_mandate", "transfer", "exch", says=("alice", "exch"), **world.trade(1))
        world.refused("no_mandate", "revoke_mandate", "alice", holder="alice", exchange="exch",
                      says=("alice", "exch"))
        world.ok("grant_mandate", "alice", holder="alice", exchange="exch")
        world.transfer(1)

    def test_revoke_only_for_its_own_account(self, world: World) -> None:
        world.refused("not_authorized", "revoke_mandate", "exch", holder="alice", exchange="exch",
                      says=("exch", "exchange"))
        world.refused("not_authorized", "revoke_mandate", "bob", holder="alice", exchange="exch",
                      says=("alice",))


# Transfers -----------------------------------------------------------------------------------

class TestTransfer:
    @pytest.mark.parametrize(("actor", "role"), [("alice", "holder"), ("bank", "bank"),
                                                 ("forestry", "issuer"), ("eco", "regulator")])
    def test_only_exchanges_post_transfers(self, world: World, actor: str, role: str) -> None:
        world.refused("not_authorized", "transfer", actor, says=(actor, role, "exchange"),
                      **world.trade(10))

    def test_partial_transfer_splits_the_block_lowest_serials_first(self, world: World) -> None:
        out = world.transfer(100)
        assert out["serials"] == [{"first_serial": "SM-0000001-0000001",
                                   "last_serial": "SM-0000001-0000100", "quantity_t": 100}]
        assert world.blocks() == [(1, 100, "bob", "available"), (101, 1_000, "alice", "available")]
        assert world.held("alice")["available_t"] == 900
        assert world.held("bob")["available_t"] == 100

    def test_lowest_serials_first_across_blocks(self, world: World) -> None:
        world.transfer(first_serial="SM-0000001-0000011", last_serial="SM-0000001-0000020")
        out = world.transfer(15, buyer="carol")
        assert [(s["first_serial"], s["last_serial"]) for s in out["serials"]] == [
            ("SM-0000001-0000001", "SM-0000001-0000010"), ("SM-0000001-0000021", "SM-0000001-0000025")]
        assert world.blocks() == [(1, 10, "carol", "available"), (11, 20, "bob", "available"),
                                  (21, 25, "carol", "available"), (26, 1_000, "alice", "available")]

    def test_returning_units_merges_the_blocks(self, world: World) -> None:
        world.transfer(first_serial="SM-0000001-0000011", last_serial="SM-0000001-0000020")
        world.transfer(10, seller="bob", buyer="alice")
        assert world.blocks() == [(1, 1_000, "alice", "available")]

    def test_explicit_serial_range(self, world: World) -> None:
        out = world.transfer(first_serial="SM-0000001-0000101", last_serial="SM-0000001-0000200")
        assert out["quantity_t"] == 100
        assert world.blocks() == [(1, 100, "alice", "available"), (101, 200, "bob", "available"),
                                  (201, 1_000, "alice", "available")]

    def test_serial_range_not_held_is_unavailable(self, world: World) -> None:
        world.transfer(first_serial="SM-0000001-0000101", last_serial="SM-0000001-0000200")
        world.refused("units_unavailable", "transfer", "exch", says=(0, 100, "alice"),
                      **world.trade(first_serial="SM-0000001-0000101",
                                    last_serial="SM-0000001-0000200", buyer="carol"))
        world.refused("units_unavailable", "transfer", "exch", says=(50, 100, "alice"),
                      **world.trade(first_serial="SM-0000001-0000151",
                                    last_serial="SM-0000001-0000250", buyer="carol"))

    def test_serial_range_beyond_the_ticket_is_unavailable(self, world: World) -> None:
        world.refused("units_unavailable", "transfer", "exch", says=(1_000, "SM-0000001-0001001"),
                      **world.trade(first_serial="SM-0000001-0000990",
                                    last_serial="SM-0000001-0001001"))

    def test_serial_range_and_quantity_must_agree(self, world: World) -> None:
        world.refused("invalid_argument", "transfer", "exch", says=(11, 10),
                      **world.trade(11, first_serial="SM-0000001-0000001",
                                    last_serial="SM-0000001-0000010"))
        world.refused("invalid_argument", "transfer", "exch", says=(SM,),
                      **world.trade(first_serial="FF-0000001-0000001",
                                    last_serial="FF-0000001-0000010"))
        world.refused("invalid_argument", "transfer", "exch",
                      **world.trade(first_serial="SM-0000001-0000010",
                                    last_serial="SM-0000001-0000001"))

    def test_insufficient_available_names_the_numbers(self, world: World) -> None:
        world.refused("insufficient_available", "transfer", "exch", says=("alice", 1_000, 1_001, SM),
                      **world.trade(1_001))

    def test_pledged_units_cannot_be_transferred(self, world: World) -> None:
        world.pledge(600)
        # 400 available: 500 would need pledged units
        world.refused("units_pledged", "transfer", "exch", says=(400, 600, 500),
                      **world.trade(500))
        # even with the pledged units there would not be enough: plain insufficiency
        world.refused("insufficient_available", "transfer", "exch", says=(400, 1_001),
                      **world.trade(1_001))
        # a serial range over pledged units
        world.refused("units_pledged", "transfer", "exch", says=(10,),
                      **world.trade(first_serial="SM-0000001-0000591",
                                    last_serial="SM-0000001-0000610"))
        world.transfer(400)
        assert world.held("bob")["available_t"] == 400

    def test_same_party_is_refused(self, world: World) -> None:
        world.refused("same_party", "transfer", "exch", says=("alice",), **world.trade(1, buyer="alice"))

    def test_unknown_ticket_and_participants(self, world: World) -> None:
        world.refused("unknown_ticket", "transfer", "exch", says=("SM-0000099",),
                      **world.trade(1, ticket="SM-0000099"))
        world.refused("unknown_participant", "transfer", "exch", says=("nobody",),
                      **world.trade(1, buyer="nobody"))
        world.refused("unknown_participant", "transfer", "exch", says=("nobody",),
                      **world.trade(1, seller="nobody"))

    def test_the_buyer_must_be_able_to_hold_units(self, world: World) -> None:
        world.refused("not_authorized", "transfer", "exch", says=("ins", "insurer"),
                      **world.trade(1, buyer="ins"))
        world.transfer(1, buyer="bank")  # banks hold units
        assert world.held("bank")["available_t"] == 1

    def test_trade_id_is_unique_per_exchange(self, world: World) -> None:
        args = world.trade(10)
        world.ok("transfer", "exch", **args)
        world.refused("already_exists", "transfer", "exch", says=(args["trade_id"], "exch"), **args)
        world.ok("grant_mandate", "alice", holder="alice", exchange="exch-2")
        world.ok("transfer", "exch-2", **args)  # the same trade id at another exchange
        assert world.held("bob")["available_t"] == 20

    @pytest.mark.parametrize("price", ["10.001", "-1.00", True, "10,00"])
    def test_price_is_exact_yuan(self, world: World, price: Any) -> None:
        world.refused("invalid_argument", "transfer", "exch", says=("price",),
                      **world.trade(1, price=price))

    def test_a_float_price_is_not_even_canonical(self, world: World) -> None:
        world.refused("non_canonical", "transfer", "exch", says=("float",),
                      **world.trade(1, price=10.0))

    def test_a_price_of_zero_is_allowed(self, world: World) -> None:
        world.transfer(1, price="0")

    def test_retired_and_cancelled_units_never_move(self, world: World) -> None:
        world.retire(990)
        world.ok("cancel_units", "forestry", cancellation_id="K-1", ticket_no=SM, holder="alice",
                 quantity_t=10, reason="double counting")
        world.refused("insufficient_available", "transfer", "exch", says=(0, 1), **world.trade(1))
        world.refused("units_unavailable", "transfer", "exch",
                      **world.trade(first_serial="SM-0000001-0000001", last_serial="SM-0000001-0000001"))
        world.refused("units_unavailable", "transfer", "exch",
                      **world.trade(first_serial="SM-0000001-0001000", last_serial="SM-0000001-0001000"))


# Batches ---------------------------------------------------------------------------------------

class TestBatch:
    def test_a_batch_settles_every_transfer_in_one_write(self, world: World) -> None:
        items = [world.trade(100), world.trade(50, buyer="carol"),
                 world.trade(30, seller="bob", buyer="carol")]  # bob sells what item 0 gave him
        out = world.ok("settle_batch", "exch", batch_id="B-1", transfers=items)
        assert (out["count"], out["quantity_t"]) == (3, 180)
        assert world.held("alice")["available_t"] == 850
        assert world.held("bob")["available_t"] == 70
        assert world.held("carol")["available_t"] == 80
        assert world.blocks() == [(1, 30, "carol", "available"), (31, 100, "bob", "available"),
                                  (101, 150, "carol", "available"), (151, 1_000, "alice", "available")]

    def test_one_bad_item_refuses_the_whole_batch_and_names_its_index(self, world: World) -> None:
        items = [world.trade(100), world.trade(50, buyer="carol"), world.trade(900)]
        err = world.refused("insufficient_available", "settle_batch", "exch", batch_id="B-1",
                            transfers=items, says=("transfer 2", items[2]["trade_id"], 850, 900))
        assert err.details["index"] == 2
        assert world.held("alice")["available_t"] == 1_000
        assert world.view.balances("bob")["tickets"] == []

    @pytest.mark.parametrize(("index", "bad", "code"), [
        (0, {"ticket_no": "SM-0000099"}, "unknown_ticket"),
        (1, {"seller": "carol"}, "no_mandate"),
        (1, {"buyer": "ins"}, "not_authorized"),
    ])
    def test_any_refusal_inside_a_batch_names_the_index(self, world: World, index: int, bad: dict,
                                                        code: str) -> None:
        items = [world.trade(1), world.trade(1)]
        items[index].update(bad)
        err = world.refused(code, "settle_batch", "exch", batch_id="B-1", transfers=items,
                            says=(f"transfer {index}",))
        assert err.details["index"] == index

    def test_a_frozen_seller_inside_a_batch(self, world: World) -> None:
        world.ok("freeze", "eco", holder="bob", reason="investigation")
        items = [world.trade(5), world.trade(1, seller="bob", buyer="carol")]
        err = world.refused("account_frozen", "settle_batch", "exch", batch_id="B-1", transfers=items,
                            says=("transfer 1", "bob"))
        assert err.details["index"] == 1

    def test_duplicate_trade_ids_in_a_batch(self, world: World) -> None:
        first = world.trade(1)
        items = [first, world.trade(1), {**world.trade(1), "trade_id": first["trade_id"]}]
        world.refused("invalid_argument", "settle_batch", "exch", batch_id="B-1", transfers=items,
                      says=("[2]", first["trade_id"]))

    def test_a_trade_id_settled_before_refuses_the_batch(self, world: World) -> None:
        done = world.trade(1)
        world.ok("transfer", "exch", **done)
        err = world.refused("already_exists", "settle_batch", "exch", batch_id="B-1",
                            transfers=[world.trade(1), done], says=("transfer 1", done["trade_id"]))
        assert err.details["index"] == 1

    def test_same_party_inside_a_batch(self, world: World) -> None:
        world.refused("same_party", "settle_batch", "exch", batch_id="B-1",
                      transfers=[world.trade(1), world.trade(1, buyer="alice")], says=("[1]", "alice"))

    def test_more_than_10000_items_is_too_large(self, world: World) -> None:
        items = [world.trade(1) for _ in range(10_001)]
        world.refused("batch_too_large", "settle_batch", "exch", batch_id="B-1", transfers=items,
                      says=(10_000, 10_001))

    def test_10000_items_are_not_too_large(self) -> None:
        items = [{"trade_id": f"T-{i}", "seller": "alice", "buyer": "bob", "ticket_no": SM,
                  "quantity_t": 1, "price": "1.00", "mode": "listing"} for i in range(10_000)]
        assert len(C.make("settle_batch", "exch", "c-1", {"batch_id": "B", "transfers": items})[
            "transfers"]) == 10_000

    def test_an_empty_batch_is_invalid(self, world: World) -> None:
        world.refused("invalid_argument", "settle_batch", "exch", batch_id="B-1", transfers=[])

    def test_only_exchanges_settle_batches(self, world: World) -> None:
        world.refused("not_authorized", "settle_batch", "alice", batch_id="B-1",
                      transfers=[world.trade(1)], says=("alice", "holder"))

    def test_a_malformed_item_names_its_index(self, world: World) -> None:
        items = [world.trade(1), world.trade(1), world.trade(1, price="1.234")]
        world.refused("invalid_argument", "settle_batch", "exch", batch_id="B-1", transfers=items,
                      says=("[2]",))


# Freezes --------------------------------------------------------------------------------------

class TestFreeze:
    @pytest.mark.parametrize(("actor", "role"), [("alice", "holder"), ("exch", "exchange"),
                                                 ("bank", "bank"), ("forestry", "issuer")])
    def test_only_regulators_and_courts_freeze(self, world: World, actor: str, role: str) -> None:
        world.refused("not_authorized", "freeze", actor, holder="bob", reason="r",
                      says=(actor, role))

    def test_only_accounts_that_hold_units_are_frozen(self, world: World) -> None:
        world.refused("not_authorized", "freeze", "eco", holder="exch", reason="r",
                      says=("exch", "exchange"))
        world.refused("unknown_participant", "freeze", "eco", holder="nobody", reason="r",
                      says=("nobody",))

    def test_a_frozen_account_cannot_transfer_out_pledge_or_retire(self, world: World) -> None:
        world.ok("freeze", "eco", holder="alice", reason="环境损害案件")
        assert world.view.balances("alice")["frozen"] is True
        world.refused("account_frozen", "transfer", "exch", says=("alice", "eco"), **world.trade(1))
        world.refused("account_frozen", "pledge", "bank", says=("alice", "eco"), **pledge_args(1))
        world.refused("account_frozen", "retire", "alice", says=("alice", "eco"), **retire_args(1))

    def test_a_frozen_account_still_receives(self, world: World) -> None:
        world.transfer(10)
        world.ok("freeze", "court", holder="alice", reason="asset preservation")
        world.transfer(10, seller="bob", buyer="alice")
        assert world.held("alice")["available_t"] == 1_000

    def test_freezing_twice_by_the_same_authority(self, world: World) -> None:
        world.ok("freeze", "eco", holder="alice", reason="r")
        world.refused("already_exists", "freeze", "eco", holder="alice", reason="r2",
                      says=("eco", "alice"))

    def test_unfreeze_only_by_whoever_froze(self, world: World) -> None:
        world.ok("freeze", "eco", holder="alice", reason="r")
        world.refused("not_authorized", "unfreeze", "eco-2", holder="alice", says=("eco-2", "eco"))
        world.refused("not_authorized", "unfreeze", "court", holder="alice", says=("court", "eco"))
        world.refused("not_authorized", "unfreeze", "alice", holder="alice", says=("alice", "holder"))
        out = world.ok("unfreeze", "eco", holder="alice")
        assert (out["frozen"], out["frozen_by"]) == (False, [])
        world.transfer(1)

    def test_two_freezes_need_two_unfreezes(self, world: World) -> None:
        world.ok("freeze", "eco", holder="alice", reason="audit")
        world.ok("freeze", "court", holder="alice", reason="case 2021-1")
        assert world.view.participant("alice")["frozen_by"] == ["court", "eco"]
        world.ok("unfreeze", "eco", holder="alice")
        world.refused("account_frozen", "transfer", "exch", says=("court",), **world.trade(1))
        world.ok("unfreeze", "court", holder="alice")
        world.transfer(1)

    def test_unfreezing_an_account_that_is_not_frozen(self, world: World) -> None:
        world.refused("not_authorized", "unfreeze", "eco", holder="alice", says=("eco", "nobody"))


# Pledges -------------------------------------------------------------------------------------

class TestPledge:
    def test_a_bank_pledges_the_lowest_available_serials(self, world: World) -> None:
        out = world.pledge(600)
        assert (out["pledgor"], out["pledgee"], out["pledged_t"]) == ("alice", "bank", 600)
        assert world.blocks() == [(1, 600, "alice", "pledged"), (601, 1_000, "alice", "available")]
        assert world.held("alice") == {"available_t": 400, "pledged_t": 600, "retired_t": 0,
                                       "cancelled_t": 0}
        [p] = world.view.pledge_register("bank")
        assert (p["pledge_id"], p["status"], p["pledged_t"], p["impaired_t"], p["secured_amount"]) == (
            "PL-1", "active", 600, 0, "5000000.00")

    @pytest.mark.parametrize(("actor", "role"), [("alice", "holder"), ("ins", "insurer"),
                                                 ("exch", "exchange")])
    def test_only_banks_take_pledges(self, world: World, actor: str, role: str) -> None:
        world.refused("not_authorized", "pledge", actor, says=(actor, role, "bank"), **pledge_args(1))

    def test_the_pledgor_must_consent(self, world: World) -> None:
        args = pledge_args(10)
        before = world.app.log_position()
        for consenting in ((), ("bob",)):  # no consent; the consent of someone else
            body = canonical_json({"command": "pledge", "actor": "bank", "command_id": "c-consent",
                                   "args": args})
            now = int(time.time())
            sigs = [sign(world.app.keyring.get("bank"), "bank", body, created=now)]
            sigs += [sign(world.app.keyring.get(p), p, body, created=now, consent=True)
                     for p in consenting]
            with pytest.raises(DomainError) as info:
                world.app.execute(SignedCommand(body=body, signatures=tuple(sigs)))
            assert info.value.code == "consent_missing" and "alice" in info.value.message
        assert world.app.log_position() == before

    def test_a_bank_cannot_pledge_to_itself(self, world: World) -> None:
        world.transfer(10, buyer="bank")
        world.refused("same_party", "pledge", "bank", says=("bank",),
                      **pledge_args(10, pledgor="bank"))

    def test_duplicate_pledge_id_already_exists(self, world: World) -> None:
        world.pledge(10)
        world.refused("already_exists", "pledge", "bank-2", says=("PL-1",), **pledge_args(10))

    def test_units_cannot_be_pledged_twice(self, world: World) -> None:
        world.pledge(1_000)
        world.refused("units_pledged", "pledge", "bank-2", says=(0, 1_000, 1),
                      **pledge_args(1, pledge_id="PL-2"))
        world.refused("units_pledged", "pledge", "bank", says=(10,),
                      **pledge_args(None, pledge_id="PL-2", first_serial="SM-0000001-0000001",
                                    last_serial="SM-0000001-0000010"))

    def test_pledged_units_cannot_be_retired(self, world: World) -> None:
        world.pledge(990)
        world.refused("units_pledged", "retire", "alice", says=(10, 990, 11), **retire_args(11))
        world.retire(10)

    def test_insufficient_units_to_pledge(self, world: World) -> None:
        world.refused("insufficient_available", "pledge", "bank", says=(1_000, 1_500),
                      **pledge_args(1_500))

    def test_pledge_of_an_explicit_serial_range(self, world: World) -> None:
        world.pledge(None, first_serial="SM-0000001-0000501", last_serial="SM-0000001-0000600")
        assert world.blocks() == [(1, 500, "alice", "available"), (501, 600, "alice", "pledged"),
                                  (601, 1_000, "alice", "available")]

    def test_pledge_over_several_tickets(self, world: World) -> None:
        out = world.ok("pledge", "bank", **{**pledge_args(100), "lines": [
            {"ticket_no": SM, "quantity_t": 100}, {"ticket_no": FF, "quantity_t": 200}]})
        assert out["pledged_t"] == 300

    def test_one_bad_line_refuses_the_whole_pledge(self, world: World) -> None:
        world.refused("insufficient_available", "pledge", "bank", says=(6_000, 6_001), **{
            **pledge_args(100), "lines": [{"ticket_no": SM, "quantity_t": 100},
                                          {"ticket_no": FF, "quantity_t": 6_001}]})
        assert world.held("alice")["pledged_t"] == 0

    def test_unknown_pledgor_and_ticket(self, world: World) -> None:
        world.refused("unknown_participant", "pledge", "bank", says=("nobody",),
                      **pledge_args(1, pledgor="nobody"))
        world.refused("unknown_ticket", "pledge", "bank", says=("SM-0000099",),
                      **pledge_args(1, ticket="SM-0000099"))

    def test_the_secured_amount_is_positive_exact_money(self, world: World) -> None:
        world.refused("invalid_argument", "pledge", "bank", says=("secured_amount",),
                      **{**pledge_args(1), "secured_amount": "0.00"})
        world.refused("invalid_argument", "pledge", "bank", says=("secured_amount",),
                      **{**pledge_args(1), "secured_amount": "5000000.001"})


class TestRelease:
    def test_whole_release_returns_every_unit(self, world: World) -> None:
        world.pledge(600)
        out = world.ok("release_pledge", "bank", pledge_id="PL-1")
        assert (out["released_t"], out["status"], out["pledged_t"]) == (600, "released", 0)
        assert world.blocks() == [(1, 1_000, "alice", "available")]
        p = world.view.pledge("PL-1")
        assert (p["status"], p["released_t"], p["pledged_t"]) == ("released", 600, 0)
        world.transfer(1_000)

    def test_partial_release_by_quantity_and_by_serials(self, world: World) -> None:
        world.pledge(600)
        out = world.ok("release_pledge", "bank", pledge_id="PL-1",
                       lines=[{"ticket_no": SM, "quantity_t": 100}])
        assert (out["released_t"], out["status"], out["pledged_t"]) == (100, "active", 500)
        assert world.blocks() == [(1, 100, "alice", "available"), (101, 600, "alice", "pledged"),
                                  (601, 1_000, "alice", "available")]
        world.ok("release_pledge", "bank", pledge_id="PL-1",
                 lines=[{"ticket_no": SM, "first_serial": "SM-0000001-0000501",
                         "last_serial": "SM-0000001-0000600"}])
        assert world.blocks() == [(1, 100, "alice", "available"), (101, 500, "alice", "pledged"),
                                  (501, 1_000, "alice", "available")]
        assert world.view.pledge("PL-1")["released_t"] == 200
        world.ok("release_pledge", "bank", pledge_id="PL-1",
                 lines=[{"ticket_no": SM, "quantity_t": 400}])
        assert world.view.pledge("PL-1")["status"] == "released"

    def test_release_more_than_pledged(self, world: World) -> None:
        world.pledge(600)
        world.refused("insufficient_available", "release_pledge", "bank", pledge_id="PL-1",
                      lines=[{"ticket_no": SM, "quantity_t": 601}], says=(600, 601, "PL-1"))
        world.refused("units_unavailable", "release_pledge", "bank", pledge_id="PL-1",
                      lines=[{"ticket_no": SM, "first_serial": "SM-0000001-0000591",
                              "last_serial": "SM-0000001-0000610"}], says=(10, 20))
        world.refused("insufficient_available", "release_pledge", "bank", pledge_id="PL-1",
                      lines=[{"ticket_no": FF, "quantity_t": 1}], says=(0, 1))

    def test_only_the_pledgee_releases(self, world: World) -> None:
        world.pledge(600)
        world.refused("not_authorized", "release_pledge", "bank-2", pledge_id="PL-1",
                      says=("bank", "PL-1"))
        world.refused("not_authorized", "release_pledge", "alice", pledge_id="PL-1",
                      says=("alice", "holder"))

    def test_released_pledge_is_not_active(self, world: World) -> None:
        world.pledge(600)
        world.ok("release_pledge", "bank", pledge_id="PL-1")
        world.refused("pledge_not_active", "release_pledge", "bank", pledge_id="PL-1",
                      says=("PL-1", "released"))
        world.refused("pledge_not_active", "enforce_pledge", "bank", pledge_id="PL-1",
                      says=("PL-1", "released"))

    def test_unknown_pledge(self, world: World) -> None:
        world.refused("unknown_pledge", "release_pledge", "bank", pledge_id="PL-9", says=("PL-9",))
        world.refused("unknown_pledge", "enforce_pledge", "bank", pledge_id="PL-9", says=("PL-9",))


class TestEnforce:
    def test_enforcement_to_the_bank(self, world: World) -> None:
        world.pledge(600)
        out = world.ok("enforce_pledge", "bank", pledge_id="PL-1")
        assert (out["to"], out["enforced_t"], out["status"]) == ("bank", 600, "enforced")
        assert world.blocks() == [(1, 600, "bank", "available"), (601, 1_000, "alice", "available")]
        p = world.view.pledge("PL-1")
        assert (p["status"], p["enforced_t"], p["pledged_t"], p["enforced_to"]) == (
            "enforced", 600, 0, "bank")
        world.refused("pledge_not_active", "enforce_pledge", "bank", pledge_id="PL-1",
                      says=("PL-1", "enforced"))
        world.refused("pledge_not_active", "release_pledge", "bank", pledge_id="PL-1",
                      says=("PL-1", "enforced"))

    def test_enforcement_to_a_named_buyer(self, world: World) -> None:
        world.pledge(600)
        world.ok("release_pledge", "bank", pledge_id="PL-1", lines=[{"ticket_no": SM, "quantity_t": 100}])
        out = world.ok("enforce_pledge", "bank", pledge_id="PL-1", to="carol")
        assert (out["to"], out["enforced_t"]) == ("carol", 500)
        assert world.held("carol")["available_t"] == 500
        assert world.held("alice") == {"available_t": 500, "pledged_t": 0, "retired_t": 0,
                                       "cancelled_t": 0}
        p = world.view.pledge("PL-1")
        assert (p["released_t"], p["enforced_t"], p["enforced_to"]) == (100, 500, "carol")

    def test_enforced_units_reach_a_frozen_buyer(self, world: World) -> None:
        world.pledge(10)
        world.ok("freeze", "eco", holder="carol", reason="r")
        world.ok("enforce_pledge", "bank", pledge_id="PL-1", to="carol")
        assert world.held("carol")["available_t"] == 10

    def test_only_the_pledgee_enforces(self, world: World) -> None:
        world.pledge(600)
        world.refused("not_authorized", "enforce_pledge", "bank-2", pledge_id="PL-1",
                      says=("bank", "PL-1"))

    def test_enforcement_goes_to_someone_who_can_hold_units(self, world: World) -> None:
        world.pledge(600)
        world.refused("not_authorized", "enforce_pledge", "bank", pledge_id="PL-1", to="ins",
                      says=("ins", "insurer"))
        world.refused("unknown_participant", "enforce_pledge", "bank", pledge_id="PL-1", to="nobody",
                      says=("nobody",))


# Insurance --------------------------------------------------------------------------------------

class TestPolicy:
    def test_bind_covers_the_lowest_live_units(self, world: World) -> None:
        world.pledge(60)
        out = world.bind(100, loss_payee="carol")
        assert (out["insured"], out["covered_t"]) == ("alice", 100)
        view = world.view.policy("POL-1")
        assert (view["covered_t"], view["still_covered_t"], view["sum_insured"], view["premium"],
                view["loss_payee"]) == (100, 100, "1000.00", "20.00", "carol")

    @pytest.mark.parametrize(("actor", "role"), [("alice", "holder"), ("bank", "bank")])
    def test_only_insurers_bind(self, world: World, actor: str, role: str) -> None:
        world.refused("not_authorized", "bind_policy", actor, says=(actor, role), **policy_args(10))

    def test_the_insured_must_hold_the_units(self, world: World) -> None:
        world.refused("insufficient_available", "bind_policy", "ins", says=(1_000, 1_001, "alice"),
                      **policy_args(1_001))
        world.refused("not_authorized", "bind_policy", "ins", says=("exch",),
                      **policy_args(1, insured="exch"))

    def test_duplicate_policy_already_exists(self, world: World) -> None:
        world.bind(10)
        world.refused("already_exists", "bind_policy", "ins-2", says=("POL-1",), **policy_args(10))

    def test_policy_period_and_perils_are_validated(self, world: World) -> None:
        world.refused("invalid_argument", "bind_policy", "ins",
                      **{**policy_args(10), "end": "2020-12-31"})
        world.refused("invalid_argument", "bind_policy", "ins", says=("flood",),
                      **policy_args(10, perils=("fire", "flood")))
        world.refused("invalid_argument", "bind_policy", "ins", **policy_args(10, perils=("fire", "fire")))
        world.refused("invalid_argument", "bind_policy", "ins", **policy_args(10, perils=()))

    def test_unknown_loss_payee(self, world: World) -> None:
        world.refused("unknown_participant", "bind_policy", "ins", says=("nobody",),
                      **policy_args(10, loss_payee="nobody"))


class TestClaims:
    def test_file_claim_on_an_unknown_policy(self, world: World) -> None:
        world.refused("unknown_policy", "file_claim", "alice", claim_id="CL-1", policy_id="POL-9",
                      peril="fire", loss_date="2022-01-01", claimed_t=1, says=("POL-9",))

    def test_only_the_insured_insurer_or_loss_payee_file(self, world: World) -> None:
        world.bind(100, loss_payee="carol")
        world.refused("not_authorized", "file_claim", "bob", claim_id="CL-1", policy_id="POL-1",
                      peril="fire", loss_date="2022-01-01", claimed_t=1, says=("alice", "POL-1"))
        world.claim(1, claim_id="CL-1", by="alice")
        world.claim(1, claim_id="CL-2", by="ins")
        world.claim(1, claim_id="CL-3", by="carol")

    def test_peril_not_covered(self, world: World) -> None:
        world.bind(100, perils=("fire", "pest"))
        world.refused("peril_not_covered", "file_claim", "alice", claim_id="CL-1", policy_id="POL-1",
                      peril="typhoon", loss_date="2022-01-01", claimed_t=1,
                      says=("typhoon", "fire", "pest"))

    @pytest.mark.parametrize("loss_date", ["2020-12-31", "2024-01-01"])
    def test_outside_policy_period(self, world: World, loss_date: str) -> None:
        world.bind(100)
        world.refused("outside_policy_period", "file_claim", "alice", claim_id="CL-1",
                      policy_id="POL-1", peril="fire", loss_date=loss_date, claimed_t=1,
                      says=(loss_date, "2021-01-01", "2023-12-31"))

    def test_policy_period_is_inclusive(self, world: World) -> None:
        world.bind(100)
        world.claim(1, claim_id="CL-1", loss_date="2021-01-01")
        world.claim(1, claim_id="CL-2", loss_date="2023-12-31")

    def test_duplicate_claim_already_exists(self, world: World) -> None:
        world.bind(100)
        world.claim(10)
        world.refused("already_exists", "file_claim", "alice", claim_id="CL-1", policy_id="POL-1",
                      peril="fire", loss_date="2022-01-01", claimed_t=10, says=("CL-1",))

    def test_unknown_claim(self, world: World) -> None:
        world.refused("unknown_claim", "approve_claim", "ins", claim_id="CL-9", approved_t=1,
                      payout="1.00", says=("CL-9",))
        world.refused("unknown_claim", "reject_claim", "ins", claim_id="CL-9", reason="x",
                      says=("CL-9",))

    def test_only_the_policys_insurer_settles(self, world: World) -> None:
        world.bind(100)
        world.claim(10)
        world.refused("not_authorized", "approve_claim", "ins-2", claim_id="CL-1", approved_t=10,
                      payout="1.00", says=("ins", "POL-1"))
        world.refused("not_authorized", "reject_claim", "ins-2", claim_id="CL-1", reason="no",
                      says=("ins", "POL-1"))
        world.refused("not_authorized", "approve_claim", "alice", claim_id="CL-1", approved_t=10,
                      payout="1.00", says=("alice", "holder"))

    def test_approval_may_not_exceed_the_claim(self, world: World) -> None:
        world.bind(100)
        world.claim(80)
        world.refused("claim_exceeded", "approve_claim", "ins", claim_id="CL-1", approved_t=81,
                      payout="1.00", says=("CL-1", 80, 81))
        assert world.held("alice")["cancelled_t"] == 0

    def test_approval_may_not_exceed_the_remaining_cover(self, world: World) -> None:
        world.bind(100, sum_insured="100000.00")
        world.claim(60, claim_id="CL-1")
        world.ok("approve_claim", "ins", claim_id="CL-1", approved_t=60, payout="600.00")
        world.claim(50, claim_id="CL-2", loss_date="2023-01-01")
        world.refused("cover_exceeded", "approve_claim", "ins", claim_id="CL-2", approved_t=41,
                      payout="1.00", says=("POL-1", 40, 41))
        world.ok("approve_claim", "ins", claim_id="CL-2", approved_t=40, payout="400.00")
        assert world.view.policy("POL-1")["still_covered_t"] == 0

    def test_cover_exceeded_when_the_insured_no_longer_holds_the_units(self, world: World) -> None:
        world.bind(100)
        world.transfer(950)  # serials 1..950 leave alice: none of the 100 covered units remain
        world.claim(10)
        world.refused("cover_exceeded", "approve_claim", "ins", claim_id="CL-1", approved_t=10,
                      payout="1.00", says=(0, 10, "alice"))

    def test_payout_may_not_exceed_the_sum_insured_left(self, world: World) -> None:
        world.bind(100, sum_insured="1000.00")
        world.claim(10, claim_id="CL-1")
        world.ok("approve_claim", "ins", claim_id="CL-1", approved_t=10, payout="600.00")
        world.claim(10, claim_id="CL-2")
        world.refused("sum_insured_exceeded", "approve_claim", "ins", claim_id="CL-2", approved_t=10,
                      payout="400.01", says=("POL-1", "400.00", "400.01"))
        world.ok("approve_claim", "ins", claim_id="CL-2", approved_t=10, payout="400.00")
        assert world.view.policy("POL-1")["remaining_sum_insured"] == "0.00"

    def test_claim_not_pending(self, world: World) -> None:
        world.bind(100)
        world.claim(10, claim_id="CL-1")
        world.ok("approve_claim", "ins", claim_id="CL-1", approved_t=10, payout="10.00")
        world.refused("claim_not_pending", "approve_claim", "ins", claim_id="CL-1", approved_t=10,
                      payout="10.00", says=("CL-1", "approved"))
        world.refused("claim_not_pending", "reject_claim", "ins", claim_id="CL-1", reason="late",
                      says=("CL-1", "approved"))
        world.claim(10, claim_id="CL-2")
        world.ok("reject_claim", "ins", claim_id="CL-2", reason="not a fire")
        world.refused("claim_not_pending", "approve_claim", "ins", claim_id="CL-2", approved_t=1,
                      payout="1.00", says=("CL-2", "rejected"))
        world.refused("claim_not_pending", "reject_claim", "ins", claim_id="CL-2", reason="again",
                      says=("CL-2", "rejected"))
        assert world.view.claim("CL-2")["status"] == "rejected"
        assert world.view.claim("CL-2")["reason"] == "not a fire"

    def test_physical_loss_cancels_units_including_pledged_ones(self, world: World) -> None:
        world.pledge(60)
        world.bind(100, loss_payee="carol")
        world.claim(80)
        out = world.ok("approve_claim", "ins", claim_id="CL-1", approved_t=80, payout="999.99")
        assert (out["cancelled_t"], out["impaired_pledges"]) == (80, ["PL-1"])
        assert world.blocks() == [(1, 80, "alice", "cancelled"), (81, 1_000, "alice", "available")]
        assert world.held("alice") == {"available_t": 920, "pledged_t": 0, "retired_t": 0,
                                       "cancelled_t": 80}
        p = world.view.pledge("PL-1")
        assert (p["impaired_t"], p["pledged_t"], p["status"]) == (60, 0, "active")
        assert p["impairments"] == [{"claim_id": "CL-1", "quantity_t": 60}]
        policy = world.view.policy("POL-1")
        assert (policy["lost_t"], policy["still_covered_t"], policy["paid"]) == (80, 20, "999.99")
        claim = world.view.claim("CL-1")
        assert sorted((c["pledge_id"], c["quantity_t"]) for c in claim["cancelled"]) == [
            ("", 20), ("PL-1", 60)]
        # the lost tonnes are no longer tradable
        world.refused("insufficient_available", "transfer", "exch", says=(920, 921),
                      **world.trade(921))

    def test_partially_impaired_pledge(self, world: World) -> None:
        world.pledge(100)
        world.bind(100)
        world.claim(30)
        world.ok("approve_claim", "ins", claim_id="CL-1", approved_t=30, payout="30.00")
        p = world.view.pledge("PL-1")
        assert (p["impaired_t"], p["pledged_t"], p["original_t"]) == (30, 70, 100)
        world.ok("release_pledge", "bank", pledge_id="PL-1")
        p = world.view.pledge("PL-1")
        assert (p["status"], p["released_t"], p["impaired_t"]) == ("released", 70, 30)

    @pytest.mark.parametrize(("pledges", "loss_payee", "payout", "expected"), [
        # the pledgee for the pledged part, the loss payee for the rest
        ([("PL-1", "bank", 60)], "carol", "999.99", {"bank": 74_999, "carol": 25_000}),
        # no pledge: all to the loss payee
        ([], "carol", "123.45", {"carol": 12_345}),
        # no pledge, no loss payee: all to the insured
        ([], None, "123.45", {"alice": 12_345}),
        # pledged part to the pledgee, the rest to the insured
        ([("PL-1", "bank", 20)], None, "100.00", {"bank": 2_500, "alice": 7_500}),
        # two pledges to two banks, shares floored, the remainder to the loss payee
        ([("PL-1", "bank", 30), ("PL-2", "bank-2", 30)], "carol", "100.00",
         {"bank": 3_750, "bank-2": 3_750, "carol": 2_500}),
        # a pledgee that is also the loss payee receives one merged payment
        ([("PL-1", "bank", 40)], "bank", "0.03", {"bank": 3}),
        # rounding: 1 fen for 3 shares
        ([("PL-1", "bank", 26), ("PL-2", "bank-2", 27)], "carol", "0.01", {"carol": 1}),
    ])
    def test_payout_recipients_add_up_exactly(self, world: World, pledges: list, loss_payee: Any,
                                              payout: str, expected: dict[str, int]) -> None:
        for pledge_id, bank, qty in pledges:
            world.pledge(qty, bank=bank, pledge_id=pledge_id)
        world.bind(100, **({"loss_payee": loss_payee} if loss_payee else {}))
        world.claim(80)
        out = world.ok("approve_claim", "ins", claim_id="CL-1", approved_t=80, payout=payout)
        paid = {p["party"]: int(p["amount"].replace(".", "")) for p in out["payees"]}
        assert paid == expected
        assert sum(paid.values()) == int(payout.replace(".", ""))
        assert world.view.claim("CL-1")["payees"] == out["payees"]

    def test_price_index_claim_pays_and_cancels_nothing(self, world: World) -> None:
        world.pledge(60)
        world.bind(100, perils=("price_index",))
        world.claim(100, peril="price_index")
        out = world.ok("approve_claim", "ins", claim_id="CL-1", approved_t=100, payout="500.00")
        assert (out["cancelled_t"], out["impaired_pledges"]) == (0, [])
        assert {p["party"]: p["amount"] for p in out["payees"]} == {"bank": "300.00", "alice": "200.00"}
        assert world.held("alice") == {"available_t": 940, "pledged_t": 60, "retired_t": 0,
                                       "cancelled_t": 0}
        assert world.view.pledge("PL-1")["impaired_t"] == 0
        policy = world.view.policy("POL-1")
        assert (policy["lost_t"], policy["still_covered_t"], policy["paid"]) == (0, 100, "500.00")

    def test_price_index_approval_is_bounded_by_the_cover(self, world: World) -> None:
        world.bind(100, perils=("price_index",))
        world.claim(5_000, peril="price_index")
        world.refused("cover_exceeded", "approve_claim", "ins", claim_id="CL-1", approved_t=5_000,
                      payout="10.00", says=(100, 5_000))


# Retirements ------------------------------------------------------------------------------------

class TestRetire:
    @pytest.mark.parametrize("purpose", ["voluntary", "event_neutrality", "tree_planting_duty",
                                         "carbon_inclusive"])
    def test_simple_purposes(self, world: World, purpose: str) -> None:
        out = world.retire(100, purpose=purpose, details="2022 年会碳中和")
        assert (out["purpose"], out["quantity_t"]) == (purpose, 100)
        view = world.view.retirement("RT-1")
        assert (view["holder"], view["purpose"], view["beneficiary"], view["quantity_t"]) == (
            "alice", purpose, "常口村", 100)
        assert view["lines"][0]["serials"] == [{"first_serial": "SM-0000001-0000001",
                                               "last_serial": "SM-0000001-0000100"}]
        assert world.blocks()[0] == (1, 100, "alice", "retired")
        assert world.held("alice")["retired_t"] == 100

    @pytest.mark.parametrize("purpose", ["voluntary", "event_neutrality", "tree_planting_duty",
                                         "carbon_inclusive", "judicial_restoration"])
    def test_scheme_and_period_belong_to_compliance_only(self, world: World, purpose: str) -> None:
        extra = {"case_no": "2021闽0428刑初01号", "court": "court"} if purpose == "judicial_restoration" else {}
        world.refused("invalid_argument", "retire", "alice", says=("compliance",),
                      **retire_args(1, purpose=purpose, scheme="fujian_ets", period="2021", **extra))

    @pytest.mark.parametrize("extra", [{"case_no": "2021-1"}, {"court": "court"},
                                       {"case_no": "2021-1", "court": "court"}])
    def test_case_and_court_belong_to_judicial_restoration_only(self, world: World, extra) -> None:
        world.refused("invalid_argument", "retire", "alice", says=("judicial_restoration",),
                      **retire_args(1, **extra))

    def test_judicial_restoration_needs_a_case_and_a_court(self, world: World) -> None:
        world.transfer(523, buyer="carol")
        world.refused("invalid_argument", "retire", "carol", says=("case_no", "court"),
                      **retire_args(523, purpose="judicial_restoration", court="court"))
        world.refused("invalid_argument", "retire", "carol", says=("case_no", "court"),
                      **retire_args(523, purpose="judicial_restoration", case_no="2021-1"))
        world.refused("not_authorized", "retire", "carol", says=("eco", "court"),
                      **retire_args(523, purpose="judicial_restoration", case_no="2021-1", court="eco"))
        world.refused("unknown_participant", "retire", "carol", says=("no-court",),
                      **retire_args(523, purpose="judicial_restoration", case_no="2021-1",
                                    court="no-court"))
        world.retire(523, holder="carol", purpose="judicial_restoration",
                     case_no="2021闽0428刑初01号", court="court")
        view = world.view.retirement("RT-1")
        assert (view["case_no"], view["court"], view["quantity_t"]) == (
            "2021闽0428刑初01号", "court", 523)

    def test_compliance_needs_scheme_and_period(self, world: World) -> None:
        world.refused("invalid_argument", "retire", "alice", says=("scheme", "period"),
                      **retire_args(1, ticket=FF, purpose="compliance", scheme="fujian_ets"))
        world.refused("invalid_argument", "retire", "alice", says=("scheme", "period"),
                      **retire_args(1, ticket=FF, purpose="compliance", period="2021"))

    @pytest.mark.parametrize(("actor", "role"), [("exch", "exchange"), ("eco", "regulator"),
                                                 ("forestry", "issuer")])
    def test_only_holders_and_banks_retire(self, world: World, actor: str, role: str) -> None:
        world.refused("not_authorized", "retire", actor, says=(actor, role), **retire_args(1))

    def test_a_bank_retires_its_own_units(self, world: World) -> None:
        world.transfer(5, buyer="bank")
        world.retire(5, holder="bank")
        assert world.held("bank")["retired_t"] == 5

    def test_duplicate_retirement_already_exists(self, world: World) -> None:
        world.retire(1)
        world.refused("already_exists", "retire", "alice", says=("RT-1",), **retire_args(1))
        world.transfer(1, buyer="bob")
        world.refused("already_exists", "retire", "bob", says=("RT-1",), **retire_args(1))

    def test_retiring_more_than_available(self, world: World) -> None:
        world.refused("insufficient_available", "retire", "alice", says=(1_000, 1_001),
                      **retire_args(1_001))
        world.refused("insufficient_available", "retire", "bob", says=(0, 1), **retire_args(1))

    def test_retiring_an_explicit_serial_range(self, world: World) -> None:
        world.retire(None, first_serial="SM-0000001-0000901", last_serial="SM-0000001-0001000")
        assert world.blocks() == [(1, 900, "alice", "available"), (901, 1_000, "alice", "retired")]
        world.refused("units_unavailable", "retire", "alice", says=(0, 1),
                      **retire_args(None, retirement_id="RT-2", first_serial="SM-0000001-0001000",
                                    last_serial="SM-0000001-0001000"))

    def test_retired_units_are_retired_for_good(self, world: World) -> None:
        world.retire(1_000)
        world.refused("insufficient_available", "retire", "alice", says=(0,),
                      **retire_args(1, retirement_id="RT-2"))
        world.refused("insufficient_available", "pledge", "bank", says=(0,), **pledge_args(1))
        world.refused("insufficient_available", "cancel_units", "forestry", cancellation_id="K-1",
                      ticket_no=SM, holder="alice", quantity_t=1, reason="r", says=(0,))

    def test_unknown_ticket(self, world: World) -> None:
        world.refused("unknown_ticket", "retire", "alice", says=("SM-0000099",),
                      **retire_args(1, ticket="SM-0000099"))


# Compliance -------------------------------------------------------------------------------------

def emissions(world: World, tonnes: int, *, entity: str = "alice", scheme: str = "fujian_ets",
              period: str = "2021") -> None:
    world.ok("record_emissions", "eco", entity=entity, scheme=scheme, period=period,
             verified_emissions_t=tonnes)


def offset(world: World, *lines: tuple[str, int], rid: str, scheme: str = "fujian_ets",
           period: str = "2021", holder: str = "alice") -> dict[str, Any]:
    return world.ok("retire", holder, retirement_id=rid, purpose="compliance", beneficiary="常口村",
                    lines=[{"ticket_no": t, "quantity_t": q} for t, q in lines],
                    scheme=scheme, period=period)


def offset_refused(world: World, code: str, *lines: tuple[str, int], says: tuple = (),
                   scheme: str = "fujian_ets", period: str = "2021") -> DomainError:
    return world.refused(code, "retire", "alice", retirement_id="RT-X", purpose="compliance",
                         beneficiary="常口村", lines=[{"ticket_no": t, "quantity_t": q} for t, q in lines],
                         scheme=scheme, period=period, says=says)


class TestCompliance:
    def test_only_regulators_record_emissions_and_set_limits(self, world: World) -> None:
        world.refused("not_authorized", "record_emissions", "forestry", entity="alice",
                      scheme="fujian_ets", period="2021", verified_emissions_t=1,
                      says=("forestry", "issuer"))
        world.refused("not_authorized", "set_limits", "alice", scheme="fujian_ets", period="2021",
                      limits_bp={"FFCER": 1000}, total_bp=1000, says=("alice", "holder"))

    def test_emissions_of_an_unknown_entity(self, world: World) -> None:
        world.refused("unknown_participant", "record_emissions", "eco", entity="nobody",
                      scheme="fujian_ets", period="2021", verified_emissions_t=1, says=("nobody",))

    def test_emissions_not_recorded(self, world: World) -> None:
        offset_refused(world, "emissions_not_recorded", (FF, 1), says=("alice", "fujian_ets", "2021"))
        emissions(world, 50_000, period="2022")
        offset_refused(world, "emissions_not_recorded", (FF, 1), says=("alice", "fujian_ets", "2021"))

    def test_smcer_is_never_eligible(self, world: World) -> None:
        emissions(world, 50_000)
        offset_refused(world, "standard_not_eligible", (SM, 1), says=("SMCER", "fujian_ets"))
        world.refused("standard_not_eligible", "set_limits", "eco", scheme="fujian_ets", period="2021",
                      limits_bp={"SMCER": 100, "FFCER": 1000}, total_bp=1000, says=("SMCER",))

    def test_ccer_in_a_scheme_without_ccer(self, world: World) -> None:
        world.ok("set_limits", "eco", scheme="fujian_ets", period="2022", limits_bp={"FFCER": 1000},
                 total_bp=1000)
        emissions(world, 50_000, period="2022")
        offset_refused(world, "standard_not_eligible", (CC, 1), period="2022",
                       says=("CCER", "fujian_ets", "2022"))
        offset(world, (FF, 1), rid="RT-1", period="2022")

    def test_a_scheme_without_limits_accepts_no_offsets(self, world: World) -> None:
        emissions(world, 50_000, scheme="shanghai_ets")
        offset_refused(world, "standard_not_eligible", (CC, 1), scheme="shanghai_ets",
                       says=("shanghai_ets",))

    def test_national_ets_default_is_ccer_5_percent(self, world: World) -> None:
        emissions(world, 10_000, scheme="national_ets")
        offset_refused(world, "standard_not_eligible", (FF, 1), scheme="national_ets",
                       says=("FFCER", "national_ets"))
        offset_refused(world, "cap_exceeded", (CC, 501), scheme="national_ets",
                       says=(500, 501, 10_000, "5%"))
        offset(world, (CC, 500), rid="RT-1", scheme="national_ets")
        offset_refused(world, "cap_exceeded", (CC, 1), scheme="national_ets", says=(500, 1))
        view = world.view.compliance_view("alice", "national_ets", "2021")
        assert (view["limit_t"], view["used_t"], view["remaining_t"]) == (500, 500, 0)

    def test_fujian_cap_floors_to_whole_tonnes(self, world: World) -> None:
        emissions(world, 50_005)  # 10% = 5,000.5 t: the cap is 5,000 t
        offset_refused(world, "cap_exceeded", (FF, 5_001), says=(5_000, 5_001, 50_005, "10%"))
        offset(world, (FF, 5_000), rid="RT-1")
        offset_refused(world, "cap_exceeded", (FF, 1), says=(5_000, 1))
        view = world.view.compliance_view("alice", "fujian_ets", "2021")
        assert (view["verified_emissions_t"], view["limit_t"], view["used_t"], view["remaining_t"]) == (
            50_005, 5_000, 5_000, 0)
        assert view["retirements"] == ["RT-1"]

    def test_cap_floors_below_a_round_number(self, world: World) -> None:
        emissions(world, 49_999)  # 10% = 4,999.9 t
        offset_refused(world, "cap_exceeded", (FF, 5_000), says=(4_999, 5_000))
        offset(world, (FF, 4_999), rid="RT-1")

    def test_per_standard_and_total_caps(self, world: World) -> None:
        emissions(world, 50_005)  # CCER 5% = 2,500 t; all offsets 10% = 5,000 t
        offset_refused(world, "cap_exceeded", (CC, 2_501), says=(2_500, 2_501, "CCER", "5%"))
        offset(world, (CC, 2_500), rid="RT-1")
        offset_refused(world, "cap_exceeded", (FF, 2_501), says=(5_000, 2_500, 2_501, "in all"))
        offset(world, (FF, 2_500), rid="RT-2")
        offset_refused(world, "cap_exceeded", (FF, 1), says=(5_000, 1))
        view = world.view.compliance_view("alice", "fujian_ets", "2021")
        assert view["standards"]["CCER"]["used_t"] == 2_500
        assert view["standards"]["FFCER"]["used_t"] == 2_500
        assert (view["used_t"], view["remaining_t"]) == (5_000, 0)

    def test_one_retirement_with_two_standards_counts_both(self, world: World) -> None:
        emissions(world, 50_005)
        offset_refused(world, "cap_exceeded", (FF, 2_600), (CC, 2_500), says=(5_000, 5_100))
        out = offset(world, (FF, 2_500), (CC, 2_500), rid="RT-1")
        assert out["quantity_t"] == 5_000
        assert world.view.retirement("RT-1")["scheme"] == "fujian_ets"

    def test_caps_are_per_entity_and_period(self, world: World) -> None:
        emissions(world, 10_000, period="2021")
        emissions(world, 10_000, period="2022")
        offset(world, (FF, 1_000), rid="RT-1", period="2021")
        offset(world, (FF, 1_000), rid="RT-2", period="2022")
        offset_refused(world, "cap_exceeded", (FF, 1), period="2022", says=(1_000,))
        world.transfer(100, ticket=FF, buyer="bob")
        emissions(world, 10_000, entity="bob")
        offset(world, (FF, 100), rid="RT-3", holder="bob")
        assert world.view.compliance_view("bob", "fujian_ets", "2021")["used_t"] == 100

    def test_revised_emissions_change_the_cap(self, world: World) -> None:
        emissions(world, 10_000)
        offset(world, (FF, 1_000), rid="RT-1")
        emissions(world, 20_000)
        offset(world, (FF, 1_000), rid="RT-2")
        offset_refused(world, "cap_exceeded", (FF, 1), says=(2_000, 20_000))

    def test_set_limits_changes_caps_for_later_retirements(self, world: World) -> None:
        emissions(world, 50_005)
        offset(world, (FF, 5_000), rid="RT-1")
        world.ok("set_limits", "eco", scheme="fujian_ets", period="2021",
                 limits_bp={"FFCER": 1100, "CCER": 500}, total_bp=1100)  # 11% = 5,500 t
        offset(world, (FF, 500), rid="RT-2")
        offset_refused(world, "cap_exceeded", (FF, 1), says=(5_500, "11%"))
        world.ok("set_limits", "eco", scheme="fujian_ets", period="2021",
                 limits_bp={"FFCER": 500, "CCER": 500}, total_bp=500)
        offset_refused(world, "cap_exceeded", (CC, 1), says=(2_500, 5_500))
        view = world.view.compliance_view("alice", "fujian_ets", "2021")
        assert (view["limit_bp"], view["limit_t"], view["used_t"], view["remaining_t"]) == (
            500, 2_500, 5_500, 0)

    def test_set_limits_validates_basis_points(self, world: World) -> None:
        world.refused("invalid_argument", "set_limits", "eco", scheme="fujian_ets", period="2021",
                      limits_bp={"FFCER": 10_001}, total_bp=1000, says=("basis points",))
        world.refused("invalid_argument", "set_limits", "eco", scheme="fujian_ets", period="2021",
                      limits_bp={"FFCER": 1000}, total_bp=-1, says=("basis points",))
        world.refused("invalid_argument", "set_limits", "eco", scheme="fujian_ets", period="2021",
                      limits_bp={"VCS": 1000}, total_bp=1000, says=("VCS",))
        world.refused("invalid_argument", "set_limits", "eco", scheme="fujian_ets", period="2021",
                      limits_bp={"FFCER": "1000"}, total_bp=1000)

    def test_remaining_is_bounded_by_the_standards_caps(self, world: World) -> None:
        world.ok("set_limits", "eco", scheme="fujian_ets", period="2022",
                 limits_bp={"FFCER": 200, "CCER": 300}, total_bp=1000)
        emissions(world, 10_000, period="2022")  # FFCER 200 t + CCER 300 t, 1,000 t in all
        offset(world, (FF, 200), (CC, 300), rid="RT-1", period="2022")
        offset_refused(world, "cap_exceeded", (FF, 1), period="2022", says=(200,))
        offset_refused(world, "cap_exceeded", (CC, 1), period="2022", says=(300,))
        view = world.view.compliance_view("alice", "fujian_ets", "2022")
        assert view["remaining_t"] == 0  # nothing more can be offset


# Administrative cancellation ------------------------------------------------------------------

class TestCancelUnits:
    def args(self, **over: Any) -> dict[str, Any]:
        return {"cancellation_id": "K-1", "ticket_no": SM, "holder": "alice", "quantity_t": 10,
                "reason": "重复计量 (double counting)", **over}

    def test_the_tickets_issuer_cancels_units(self, world: World) -> None:
        out = world.ok("cancel_units", "forestry", **self.args())
        assert out["serials"] == [{"first_serial": "SM-0000001-0000001",
                                   "last_serial": "SM-0000001-0000010", "quantity_t": 10}]
        assert world.blocks() == [(1, 10, "alice", "cancelled"), (11, 1_000, "alice", "available")]
        assert world.view.ticket(SM)["blocks"][0]["cancelled_by"] == "cancellation:K-1"
        assert world.view.ticket(SM)["cancelled_t"] == 10

    def test_only_the_tickets_own_issuer(self, world: World) -> None:
        world.refused("not_authorized", "cancel_units", "forestry-2", says=(SM, "forestry"), **self.args())
        world.refused("not_authorized", "cancel_units", "eco", says=("eco", "regulator"), **self.args())
        world.refused("not_authorized", "cancel_units", "bank", says=("bank",), **self.args())

    def test_cancel_an_explicit_serial_range(self, world: World) -> None:
        world.ok("cancel_units", "forestry", **self.args(
            quantity_t=None, first_serial="SM-0000001-0000991", last_serial="SM-0000001-0001000"))
        assert world.blocks()[-1] == (991, 1_000, "alice", "cancelled")

    def test_pledged_or_missing_units_are_not_cancelled(self, world: World) -> None:
        world.pledge(995)
        world.refused("units_pledged", "cancel_units", "forestry", says=(5, 995, 10), **self.args())
        world.refused("insufficient_available", "cancel_units", "forestry", says=(0, 10),
                      **self.args(holder="bob"))
        world.refused("unknown_participant", "cancel_units", "forestry", says=("nobody",),
                      **self.args(holder="nobody"))
        world.refused("unknown_ticket", "cancel_units", "forestry", says=("SM-0000099",),
                      **self.args(ticket_no="SM-0000099"))

    def test_duplicate_cancellation_id_already_exists(self, world: World) -> None:
        world.ok("cancel_units", "forestry", **self.args())
        world.refused("already_exists", "cancel_units", "forestry", says=("K-1",), **self.args())
