"""The demo story ends with exactly the figures the ledger-core issue expects."""

from domain.errors import DomainError
from ledger import demo
from ledger.application import Registry


def test_changkou_village_holds_nothing_of_sm_0000001(demo_registry: Registry) -> None:
    view = demo_registry.projection().balances("changkou-village")
    assert all(t["ticket_no"] != "SM-0000001" for t in view["tickets"])
    assert view["totals"] == {"available_t": 0, "pledged_t": 0, "retired_t": 0, "cancelled_t": 0}


def test_jinsen_carbon_is_pledged_and_impaired(demo_registry: Registry) -> None:
    totals = demo_registry.projection().balances("jinsen-carbon")["totals"]
    assert totals == {"available_t": 0, "pledged_t": 17_794, "retired_t": 0, "cancelled_t": 500}


def test_tonghai_nickel_balances(demo_registry: Registry) -> None:
    view = demo_registry.projection().balances("tonghai-nickel")
    by_ticket = {t["ticket_no"]: t for t in view["tickets"]}
    assert by_ticket["SM-0000001"]["available_t"] == 2_723
    assert by_ticket["FFCER-0000001"]["available_t"] == 1_000
    assert by_ticket["FFCER-0000001"]["retired_t"] == 5_000
    assert view["totals"]["retired_t"] == 5_000


def test_sm_0000002_conservation(demo_registry: Registry) -> None:
    t = demo_registry.projection().ticket("SM-0000002")
    assert (t["issued_t"], t["available_t"], t["pledged_t"], t["retired_t"], t["cancelled_t"]) == (
        9_000, 183, 7_794, 523, 500)


def test_compliance_headroom(demo_registry: Registry) -> None:
    c = demo_registry.projection().compliance_view("tonghai-nickel", "fujian_ets", "2021")
    assert (c["limit_t"], c["used_t"], c["remaining_t"]) == (5_000, 5_000, 0)


def test_pledge_active_and_impaired(demo_registry: Registry) -> None:
    [p] = demo_registry.projection().pledge_register(bank="cib-sanming")
    assert (p["pledge_id"], p["status"], p["impaired_t"], p["pledged_t"]) == (
        "PL-2021-001", "active", 500, 17_794)


def test_the_refused_retirement_recorded_nothing(demo_registry: Registry) -> None:
    before = demo_registry.log_position()
    name, actor, cid, args = [s for s in demo.story() if s[2] in demo.EXPECTED_REFUSALS][0]
    try:
        demo_registry.submit(name, actor, cid, args)
    except DomainError as e:
        assert e.code == "cap_exceeded"
    else:
        raise AssertionError("the over-cap retirement was accepted")
    assert demo_registry.log_position() == before
