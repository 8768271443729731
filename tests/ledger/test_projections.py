"""Read models: as of any log position, histories in log order, incremental = rebuilt."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.errors import DomainError
from ledger import demo
from ledger.application import Registry
from ledger.keys import Keyring
from ledger.projections import Projection


def load_story(app: Registry) -> dict[str, int]:
    """Load the demo story; the log position at which each accepted command ended."""
    positions = {}
    for name, actor, command_id, args in demo.story():
        try:
            positions[command_id] = app.submit(name, actor, command_id, args)["position"]
        except DomainError as e:
            assert demo.EXPECTED_REFUSALS.get(command_id) == e.code
    return positions


def snapshot(view: Projection, *, histories: bool = True) -> dict[str, Any]:
    """Every read model of a projection, as plain data."""
    out = {
        "position": view.position,
        "participants": {p: view.participant(p) for p in sorted(view.participants)},
        "balances": {p: view.balances(p) for p in sorted(view.participants)},
        "tickets": {t: view.ticket(t) for t in sorted(view.tickets)},
        "supply": view.supply(),
        "pledges": view.pledge_register(),
        "policies": view.policies_view(),
        "retirements": view.retirements_view(),
        "compliance": {k: view.compliance_view(*k) for k in sorted(view.compliance)},
    }
    if histories:
        out["ticket_history"] = {t: view.history(ticket=t) for t in sorted(view.tickets)}
        out["holder_history"] = {p: view.history(holder=p) for p in sorted(view.participants)}
    return out


def cross_check(view: Projection) -> None:
    """Invariants between read models that hold after every command."""
    supply = view.supply()
    for row in supply:
        assert row["issued_t"] == (row["available_t"] + row["pledged_t"] + row["retired_t"]
                                   + row["cancelled_t"]), row
    pledged_on_tickets = sum(row["pledged_t"] for row in supply)
    pledged_in_register = sum(p["pledged_t"] for p in view.pledge_register())
    assert pledged_on_tickets == pledged_in_register
    for (entity, scheme, period), account in view.compliance.items():
        retired = sum(r["quantity_t"] for r in view.retirements_view()
                      if r.get("entity") == entity and r.get("scheme") == scheme
                      and r.get("period") == period)
        assert account.total_used_t == retired
    for holder in view.participants:
        totals = view.balances(holder)["totals"]
        assert min(totals.values()) >= 0


@pytest.fixture(scope="module")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Keyring, dict[str, int]]:
    """The demo story loaded once per module; each test gets a copy of the database."""
    path = tmp_path_factory.mktemp("demo") / "registry.db"
    keyring = Keyring()
    app = Registry(f"sqlite:///{path}", keyring=keyring)
    positions = load_story(app)
    app.close()
    return path, keyring, positions


@pytest.fixture
def demo_app(demo_template: tuple[Path, Keyring, dict[str, int]],
             tmp_path: Path) -> Iterator[Registry]:
    path, keyring, _ = demo_template
    for f in path.parent.glob(path.name + "*"):
        shutil.copyfile(f, tmp_path / f.name)
    app = Registry(f"sqlite:///{tmp_path / path.name}", keyring=keyring)
    yield app
    app.close()


@pytest.fixture
def story(demo_template: tuple[Path, Keyring, dict[str, int]]) -> dict[str, int]:
    """The log position at which each accepted command of the demo ended."""
    return demo_template[2]


# as_of ------------------------------------------------------------------------------------------

def test_changkou_village_held_the_whole_first_ticket_before_the_first_transfer(
        demo_app: Registry, story: dict[str, int]) -> None:
    before = story["demo-mandate-jiangle-defendant"]  # the last command before the first trade
    first_trade = story["trade/shaxian-exchange/SX-2021-0001"]
    past = demo_app.projection(as_of=before).balances("changkou-village")
    assert past["as_of"] == before
    assert past["totals"] == {"available_t": 12_723, "pledged_t": 0, "retired_t": 0, "cancelled_t": 0}
    [row] = past["tickets"]
    assert (row["ticket_no"], row["available_t"]) == ("SM-0000001", 12_723)
    after = demo_app.projection(as_of=first_trade).balances("changkou-village")
    assert after["totals"]["available_t"] == 10_000
    now = demo_app.projection().balances("changkou-village")
    assert now["totals"]["available_t"] == 0


def test_as_of_shows_pledges_claims_and_compliance_as_they_were(
        demo_app: Registry, story: dict[str, int]) -> None:
    before_pledge = demo_app.projection(as_of=story["trade/shaxian-exchange/SX-2021-0005"])
    assert before_pledge.pledge_register() == []
    assert before_pledge.balances("jinsen-carbon")["totals"]["available_t"] == 18_294
    before_claim = demo_app.projection(as_of=story["claim/CLM-2022-001"])
    [p] = before_claim.pledge_register("cib-sanming")
    assert (p["pledged_t"], p["impaired_t"]) == (18_294, 0)
    assert before_claim.claim("CLM-2022-001")["status"] == "pending"
    after_claim = demo_app.projection(as_of=story["claim/CLM-2022-001/approve"])
    [p] = after_claim.pledge_register("cib-sanming")
    assert (p["pledged_t"], p["impaired_t"]) == (17_794, 500)
    before_offset = demo_app.projection(as_of=story["emissions/tonghai-nickel/fujian_ets/2021"])
    c = before_offset.compliance_view("tonghai-nickel", "fujian_ets", "2021")
    assert (c["limit_t"], c["used_t"], c["remaining_t"]) == (5_000, 0, 5_000)
    with pytest.raises(DomainError) as info:
        before_offset.retirement("RT-2022-001")
    assert info.value.code == "unknown_retirement"


def test_as_of_bounds(demo_app: Registry, story: dict[str, int]) -> None:
    empty = demo_app.projection(as_of=0)
    assert empty.position == 0 and empty.tickets == {}
    with pytest.raises(DomainError) as info:
        empty.balances("changkou-village")
    assert info.value.code == "unknown_participant"
    with pytest.raises(DomainError) as info:
        empty.ticket("SM-0000001")
    assert info.value.code == "unknown_ticket"
    with pytest.raises(DomainError) as info:
        demo_app.projection(as_of=-1)
    assert info.value.code == "invalid_argument" and "-1" in info.value.message
    end = demo_app.log_position()
    assert snapshot(demo_app.projection(as_of=end + 1000)) == snapshot(demo_app.projection())


def test_as_of_every_command_equals_what_was_seen_then(registry: Registry) -> None:
    seen, histories = {}, {}
    for i, (name, actor, command_id, args) in enumerate(demo.story()):
        try:
            registry.submit(name, actor, command_id, args)
        except DomainError:
            continue
        view = registry.projection()
        seen[view.position] = snapshot(view, histories=False)
        if i % 10 == 0:  # histories read the log position by position: check some of them
            histories[view.position] = snapshot(view)
    for position, then in seen.items():
        assert snapshot(registry.projection(as_of=position), histories=False) == then, position
    for position, then in histories.items():
        assert snapshot(registry.projection(as_of=position)) == then, position


def test_as_of_any_position_shows_a_state_that_existed(demo_app: Registry,
                                                       story: dict[str, int]) -> None:
    for position in range(1, demo_app.log_position() + 1):
        cross_check(demo_app.projection(as_of=position))


# History ---------------------------------------------------------------------------------------

def test_ticket_history_lists_its_events_in_order_with_actor_and_command_id(
        demo_app: Registry, story: dict[str, int]) -> None:
    history = demo_app.projection().history(ticket="SM-0000001")
    assert [(e["event"], e["actor"], e["command_id"], e["quantity_t"]) for e in history] == [
        ("Ticket.Issued", "sanming-forestry", "demo-issue-SM-0000001", 12_723),
        ("Ticket.Transferred", "shaxian-exchange", "trade/shaxian-exchange/SX-2021-0001", 2_723),
        ("Ticket.Transferred", "shaxian-exchange", "trade/shaxian-exchange/SX-2021-0002", 10_000),
        ("Ticket.Pledged", "cib-sanming", "pledge/PL-2021-001", 10_000),
    ]
    positions = [e["position"] for e in history]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert all(e["ticket_no"] == "SM-0000001" for e in history)
    assert history[1]["serials"] == [{"first_serial": "SM-0000001-0000001",
                                      "last_serial": "SM-0000001-0002723"}]
    assert (history[1]["seller"], history[1]["buyer"], history[1]["trade_id"]) == (
        "changkou-village", "tonghai-nickel", "SX-2021-0001")
    times = [e["time"] for e in history]
    assert times == sorted(times)


def test_holder_history_lists_its_events_in_order(demo_app: Registry, story: dict[str, int]) -> None:
    history = demo_app.projection().history(holder="jinsen-carbon")
    assert [(e["event"], e["command_id"], e.get("ticket_no"), e.get("quantity_t"))
            for e in history] == [
        ("Participant.Registered", "demo-register-jinsen-carbon", None, None),
        ("Participant.MandateGranted", "demo-mandate-jinsen-carbon", None, None),
        ("Ticket.Transferred", "trade/shaxian-exchange/SX-2021-0002", "SM-0000001", 10_000),
        ("Ticket.Transferred", "trade/shaxian-exchange/SX-2021-0003", "SM-0000002", 8_294),
        ("Ticket.Pledged", "pledge/PL-2021-001", "SM-0000001", 10_000),
        ("Ticket.Pledged", "pledge/PL-2021-001", "SM-0000002", 8_294),
        ("Ticket.Cancelled", "claim/CLM-2022-001/approve", "SM-0000002", 500),
    ]
    assert [e["actor"] for e in history] == [
        "registry", "jinsen-carbon", "shaxian-exchange", "shaxian-exchange", "cib-sanming",
        "cib-sanming", "picc-fujian"]
    positions = [e["position"] for e in history]
    assert positions == sorted(positions)


def test_holder_history_includes_freezes_and_sales(demo_app: Registry, story: dict[str, int]) -> None:
    demo_app.submit("freeze", "jiangle-court", "h-freeze", {"holder": "xiayang-farm", "reason": "案件"})
    demo_app.submit("unfreeze", "jiangle-court", "h-unfreeze", {"holder": "xiayang-farm"})
    history = demo_app.projection().history(holder="xiayang-farm")
    assert [e["event"] for e in history] == [
        "Participant.Registered", "Ticket.Issued", "Participant.MandateGranted",
        "Ticket.Transferred", "Ticket.Transferred", "Participant.Frozen", "Participant.Unfrozen"]
    assert history[-2]["reason"] == "案件" and history[-2]["command_id"] == "h-freeze"
    assert history[-2]["actor"] == "jiangle-court"


def test_history_as_of_and_unknowns(demo_app: Registry, story: dict[str, int]) -> None:
    past = demo_app.projection(as_of=story["trade/shaxian-exchange/SX-2021-0001"])
    assert [e["event"] for e in past.history(ticket="SM-0000001")] == [
        "Ticket.Issued", "Ticket.Transferred"]
    view = demo_app.projection()
    with pytest.raises(DomainError) as info:
        view.history(ticket="SM-0000099")
    assert info.value.code == "unknown_ticket"
    with pytest.raises(DomainError) as info:
        view.history(holder="nobody")
    assert info.value.code == "unknown_participant"


# Incremental = rebuilt ---------------------------------------------------------------------------

def test_a_projection_caught_up_incrementally_equals_a_rebuilt_one(registry: Registry) -> None:
    for name, actor, command_id, args in demo.story():
        try:
            registry.submit(name, actor, command_id, args)
        except DomainError:
            pass
        registry.projection()  # catch up after every command
    incremental = registry.projection()
    assert incremental.events_applied == incremental.position == registry.log_position()
    fresh = Projection(registry)
    fresh.catch_up()
    assert snapshot(incremental) == snapshot(fresh)
    rebuilt = registry.rebuild()
    assert rebuilt is registry.projection()
    assert snapshot(rebuilt) == snapshot(fresh)
    cross_check(rebuilt)


def test_another_registry_on_the_same_store_sees_the_same_views(demo_app: Registry,
                                                                story: dict[str, int]) -> None:
    other = Registry(demo_app.url, keyring=demo_app.keyring)
    try:
        assert snapshot(other.projection()) == snapshot(demo_app.projection())
        other.submit("transfer", "shaxian-exchange", "p-1", {
            "trade_id": "SX-P-1", "seller": "longyan-farm", "buyer": "jinsen-carbon",
            "ticket_no": "FFCER-0000001", "quantity_t": 7, "price": "25.00", "mode": "auction"})
        # the first registry's projection catches up with what the other wrote
        assert demo_app.projection().balances("jinsen-carbon")["totals"]["available_t"] == 7
    finally:
        other.close()


def test_catch_up_with_progress_reports(demo_app: Registry, story: dict[str, int]) -> None:
    reports = []
    view = demo_app.rebuild(progress=reports.append)
    assert view.position == demo_app.log_position()
    assert reports and reports[-1].done == reports[-1].total == demo_app.log_position()


# A property: random command sequences keep the read models consistent ----------------------------

HOLDERS = ["alice", "bob", "carol"]
TICKETS = {"SM-0000001": 120, "FF-0000001": 90}
SETUP = [
    ("initialise", "registry", {"origin": "test/prop", "operator_id": "registry", "name": "op"}),
    *[("register_participant", "registry", {"participant_id": p, "name": p, "role": r})
      for p, r in [("forestry", "issuer"), ("eco", "regulator"), ("exch", "exchange"), ("bank", "bank"),
                   ("ins", "insurer"), *[(h, "holder") for h in HOLDERS]]],
    ("register_project", "forestry", {"project_id": "P-1", "name": "n", "owner": "alice",
                                      "county": "c", "area_mu": 1, "standard": "SMCER"}),
    ("register_project", "forestry", {"project_id": "P-2", "name": "n", "owner": "bob",
                                      "county": "c", "area_mu": 1, "standard": "FFCER"}),
    ("issue_ticket", "forestry", {"ticket_no": "SM-0000001", "project_id": "P-1", "standard": "SMCER",
                                  "period_start": "2020-01-01", "period_end": "2020-12-31",
                                  "quantity_t": TICKETS["SM-0000001"]}),
    ("issue_ticket", "forestry", {"ticket_no": "FF-0000001", "project_id": "P-2", "standard": "FFCER",
                                  "period_start": "2020-01-01", "period_end": "2020-12-31",
                                  "quantity_t": TICKETS["FF-0000001"]}),
    *[("grant_mandate", h, {"holder": h, "exchange": "exch"}) for h in HOLDERS],
    *[("transfer", "exch", {"trade_id": f"T-setup-{seller}-{buyer}", "seller": seller, "buyer": buyer,
                            "ticket_no": t, "quantity_t": 30, "price": "1.00", "mode": "negotiated"})
      for seller, t in [("alice", "SM-0000001"), ("bob", "FF-0000001")]
      for buyer in HOLDERS if buyer != seller],
    ("record_emissions", "eco", {"entity": "carol", "scheme": "fujian_ets", "period": "2021",
                                 "verified_emissions_t": 200}),
    ("bind_policy", "ins", {"policy_id": "POL-1", "insured": "alice",
                            "lines": [{"ticket_no": "SM-0000001", "quantity_t": 30}],
                            "sum_insured": "100.00", "premium": "1.00", "start": "2020-01-01",
                            "end": "2030-12-31", "perils": ["fire", "price_index"]}),
]

holder = st.sampled_from(HOLDERS)
ticket = st.sampled_from(sorted(TICKETS))
qty = st.integers(1, 25)
pledge_no = st.integers(1, 3)
two_holders = st.permutations(HOLDERS).map(lambda p: p[:2])
ops = st.one_of(
    st.tuples(st.just("transfer"), two_holders, ticket, qty),
    st.tuples(st.just("pledge"), holder, ticket, qty, pledge_no),
    st.tuples(st.just("release"), pledge_no, st.one_of(st.none(), qty)),
    st.tuples(st.just("enforce"), pledge_no, st.sampled_from(["bank", *HOLDERS])),
    st.tuples(st.just("retire"), holder, ticket, qty),
    st.tuples(st.just("offset"), ticket, qty),
    st.tuples(st.just("cancel"), holder, ticket, qty),
    st.tuples(st.just("freeze"), holder),
    st.tuples(st.just("unfreeze"), holder),
    st.tuples(st.just("claim"), st.sampled_from(["fire", "price_index"]), qty),
)


def command(op: tuple, n: int) -> tuple[str, str, dict[str, Any]]:
    kind = op[0]
    if kind == "transfer":
        _, (seller, buyer), t, q = op
        return "transfer", "exch", {"trade_id": f"T-{n}", "seller": seller, "buyer": buyer,
                                    "ticket_no": t, "quantity_t": q, "price": "1.00",
                                    "mode": "negotiated"}
    if kind == "pledge":
        _, pledgor, t, q, k = op
        return "pledge", "bank", {"pledge_id": f"PL-{k}", "pledgor": pledgor, "loan_ref": "L",
                                  "secured_amount": "1.00", "maturity": "2030-01-01",
                                  "lines": [{"ticket_no": t, "quantity_t": q}]}
    if kind == "release":
        _, k, q = op
        lines = None if q is None else [{"ticket_no": "SM-0000001", "quantity_t": q}]
        return "release_pledge", "bank", {"pledge_id": f"PL-{k}", "lines": lines}
    if kind == "enforce":
        _, k, to = op
        return "enforce_pledge", "bank", {"pledge_id": f"PL-{k}", "to": to}
    if kind == "retire":
        _, h, t, q = op
        return "retire", h, {"retirement_id": f"RT-{n}", "purpose": "voluntary", "beneficiary": "b",
                             "lines": [{"ticket_no": t, "quantity_t": q}]}
    if kind == "offset":
        _, t, q = op
        return "retire", "carol", {"retirement_id": f"RT-{n}", "purpose": "compliance",
                                   "beneficiary": "b", "scheme": "fujian_ets", "period": "2021",
                                   "lines": [{"ticket_no": t, "quantity_t": q}]}
    if kind == "cancel":
        _, h, t, q = op
        return "cancel_units", "forestry", {"cancellation_id": f"K-{n}", "ticket_no": t, "holder": h,
                                            "quantity_t": q, "reason": "r"}
    if kind == "freeze":
        return "freeze", "eco", {"holder": op[1], "reason": "r"}
    if kind == "unfreeze":
        return "unfreeze", "eco", {"holder": op[1]}
    _, peril, q = op  # claim: filed here, approved right after
    return "file_claim", "alice", {"claim_id": f"CL-{n}", "policy_id": "POL-1", "peril": peril,
                                   "loss_date": "2022-01-01", "claimed_t": q}


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, min_size=1, max_size=20))
def test_random_histories_keep_read_models_consistent_and_rebuildable(history: list[tuple]) -> None:
    app = Registry("sqlite:///:memory:", keyring=Keyring(), auto_checkpoint=False)
    try:
        ids = itertools.count()
        for name, actor, args in SETUP:
            app.submit(name, actor, f"setup-{next(ids)}", args)
        seen = {}
        for n, op in enumerate(history):
            name, actor, args = command(op, n)
            steps = [(name, actor, args)]
            if name == "file_claim":
                steps.append(("approve_claim", "ins", {"claim_id": args["claim_id"],
                                                       "approved_t": args["claimed_t"],
                                                       "payout": "0.01"}))
            for name, actor, args in steps:
                before = app.log_position()
                try:
                    app.submit(name, actor, f"op-{next(ids)}", args)
                except DomainError:
                    assert app.log_position() == before
                    break
            view = app.projection()
            cross_check(view)
            seen[view.position] = snapshot(view, histories=False)
        fresh = Projection(app)
        fresh.catch_up()
        assert snapshot(fresh) == snapshot(app.projection())
        for position, then in seen.items():
            assert snapshot(app.projection(as_of=position), histories=False) == then
    finally:
        app.close()


def test_leaf_hashes_read_straight_from_the_store_equal_the_records(demo_registry: Registry) -> None:
    """Both stores: what the Merkle tree is extended with when another process wrote."""
    recorder = demo_registry.recorder
    size = demo_registry.log_position()
    assert size > 50
    expected = [r.leaf_hash() for r in recorder.select_records(1, size)]
    assert recorder.select_leaf_hashes(1, size) == expected
    assert recorder.select_leaf_hashes(5, 7, stop=9) == expected[4:9]
    assert recorder.select_leaf_hashes(size + 1, 10) == []


def test_record_rows_equal_the_records(demo_registry: Registry) -> None:
    """Both stores: the plain rows the audit's reader reads are the records' fields."""
    recorder = demo_registry.recorder
    size = demo_registry.log_position()
    expected = [(r.position, r.originator_id.bytes, r.originator_version, r.topic, r.state,
                 r.chain) for r in recorder.select_records(1, size)]
    assert recorder.select_record_rows(1, size) == expected
    assert recorder.select_record_rows(5, 7, stop=9) == expected[4:9]
    assert recorder.select_record_rows(size + 1, 10) == []
