"""Value parsing: every id, serial, quantity, amount and date that enters the ledger.

The ledger holds only str, int and bool values in canonical form, so each parser either returns
the canonical value or refuses with `invalid_argument` and a message naming the field.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from domain import commands as C
from domain import values as V
from domain.errors import CODES, DomainError
from ledger.application import Registry
from ledger.keys import Keyring


def refused(fn, *args, **kwargs) -> DomainError:
    with pytest.raises(DomainError) as info:
        fn(*args, **kwargs)
    assert info.value.code == "invalid_argument", info.value
    return info.value


# Slugs (participant ids) ------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["a", "7", "changkou-village", "cib-sanming", "a1-b2-c3", "a" * 64])
def test_slug_accepts_lower_case_ascii_with_inner_hyphens(value: str) -> None:
    assert V.slug(value) == value


@pytest.mark.parametrize("value", [
    "", "-a", "a-", "A", "Alice", "a_b", "a b", "a.b", "a" * 65, "常口村", "ａbc", " a", "a ",
])
def test_slug_refuses_everything_else(value: str) -> None:
    err = refused(V.slug, value, "participant_id")
    assert "participant_id" in err.message
    assert err.details["field"] == "participant_id"


@pytest.mark.parametrize("value", [None, 1, 1.0, True, b"alice", ["alice"]])
def test_slug_refuses_non_strings(value: object) -> None:
    err = refused(V.slug, value, "holder")
    assert "holder must be a string" in err.message


# External references (trade ids, pledge ids, command ids) ---------------------------------------

@pytest.mark.parametrize("value", ["SX-2021-0001", "PL-2021-001", "trade/shaxian/1", "a", "x:y.z_1",
                                   "A" * 128])
def test_ref_accepts_ascii_references(value: str) -> None:
    assert V.ref(value, "trade_id") == value


@pytest.mark.parametrize("value", ["", "-x", "/x", "a b", "票-1", "A" * 129, "x\ty"])
def test_ref_refuses_malformed_references(value: str) -> None:
    assert "trade_id" in refused(V.ref, value, "trade_id").message


# Ticket numbers and serials -----------------------------------------------------------------------

@pytest.mark.parametrize("value", ["SM-0000001", "FFCER-0000001", "CCER2-9999999", "X-0000000"])
def test_ticket_numbers(value: str) -> None:
    assert V.ticket_no(value) == value


@pytest.mark.parametrize("value", [
    "sm-0000001", "SM-000001", "SM-00000001", "SM0000001", "-0000001", "1SM-0000001",
    "SM-000000１", "SM-0000001-0000001", "SM_0000001", "",
])
def test_ticket_numbers_refused(value: str) -> None:
    err = refused(V.ticket_no, value)
    assert "ticket_no" in err.message and "SM-0000001" in err.message


@pytest.mark.parametrize("n", [1, 2_723, 12_723, 9_999_999, 10_000_000, 123_456_789_012])
def test_serials_round_trip(n: int) -> None:
    serial = V.format_serial("SM-0000001", n)
    assert V.parse_serial(serial) == ("SM-0000001", n)


def test_serial_format_is_ticket_dash_seven_digits() -> None:
    assert V.format_serial("SM-0000001", 2_723) == "SM-0000001-0002723"
    assert V.format_serial("FFCER-0000001", 1) == "FFCER-0000001-0000001"


@pytest.mark.parametrize("value", [
    "SM-0000001-0000000", "SM-0000001-000001", "SM-0000001", "sm-0000001-0000001",
    "SM-0000001-0000001-0000001", "SM-0000001-000000x", "SM-0000001 -0000001", "0000001",
    "SM-0000001-1234567890123",
])
def test_serials_refused(value: str) -> None:
    assert "serial" in refused(V.parse_serial, value).message


# Tonnes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [1, 2_723, V.MAX_QUANTITY_T])
def test_tonnes_accepts_whole_positive_tonnes(value: int) -> None:
    assert V.tonnes(value) == value


@pytest.mark.parametrize("value", [0, -1, -12_723])
def test_tonnes_refuses_zero_and_negatives_with_the_number(value: int) -> None:
    err = refused(V.tonnes, value, "quantity_t")
    assert str(value) in err.message and "at least 1" in err.message


@pytest.mark.parametrize("value", [True, False, 1.0, 2.5, "1", "1000", None, Decimal("1"), [1]])
def test_tonnes_refuses_bools_floats_and_strings(value: object) -> None:
    err = refused(V.tonnes, value, "quantity_t")
    assert "whole number of tonnes" in err.message


def test_tonnes_has_an_upper_bound() -> None:
    err = refused(V.tonnes, V.MAX_QUANTITY_T + 1)
    assert str(V.MAX_QUANTITY_T + 1) in err.message


def test_zero_tonnes_only_where_allowed() -> None:
    assert V.tonnes(0, "verified_emissions_t", minimum=0) == 0
    refused(V.tonnes, -1, "verified_emissions_t", minimum=0)


# Money --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "fen"), [
    ("15.00", 1_500), ("15", 1_500), ("15.5", 1_550), ("0.29", 29), ("0.01", 1), ("0", 0),
    ("332.50", 33_250), ("173900.00", 17_390_000), ("5000000.00", 500_000_000),
    ("999999999999999.99", 99_999_999_999_999_999), ("1.10", 110), ("0.07", 7),
])
def test_yuan_strings_are_exact_fen(value: str, fen: int) -> None:
    assert V.fen(value, "price") == fen
    assert isinstance(V.fen(value, "price"), int)


@pytest.mark.parametrize("fen", [0, 1, 29, 110, 1_500, 33_250, 99_999_999_999_999_999])
def test_fen_round_trip_through_yuan(fen: int) -> None:
    assert V.fen(V.yuan(fen), "price") == fen


def test_yuan_formats_exactly() -> None:
    assert (V.yuan(1_500), V.yuan(29), V.yuan(0), V.yuan(-150)) == ("15.00", "0.29", "0.00", "-1.50")


@pytest.mark.parametrize("value", [1_500, 0, 15])
def test_an_int_is_not_money(value: int) -> None:
    """Money is a decimal string in yuan: an int would be ambiguous (15 yuan, or 15 fen?)."""
    err = refused(V.fen, value, "price")
    assert "decimal string" in err.message


@pytest.mark.parametrize("value", ["15.001", "0.295", "1.999", "15.000"])
def test_money_refuses_more_than_two_decimals(value: str) -> None:
    err = refused(V.fen, value, "price")
    assert value in err.message and "2 decimals" in err.message


@pytest.mark.parametrize("value", [15.0, 0.1, 1e3, float("nan"), True, False])
def test_money_refuses_floats_and_bools(value: object) -> None:
    err = refused(V.fen, value, "price")
    assert "decimal string" in err.message


@pytest.mark.parametrize("value", ["-1.00", "-0.01", "+1.00", "1e3", " 15.00", "15.", ".5", "01.00",
                                   "1,000.00", "¥15", "15 元", "", "NaN", "Infinity", "１５"])
def test_money_refuses_malformed_and_negative_strings(value: str) -> None:
    assert "price" in refused(V.fen, value, "price").message


def test_money_refuses_a_negative_amount() -> None:
    err = refused(V.fen, "-0.01", "price")
    assert "-0.01" in err.message


@pytest.mark.parametrize("value", [None, Decimal("1.00"), [1], {"yuan": 1}])
def test_money_refuses_other_types(value: object) -> None:
    refused(V.fen, value, "price")


def test_positive_money_refuses_zero() -> None:
    err = refused(V.fen, "0.00", "secured_amount", minimum=1)
    assert "0.01" in err.message and "0.00" in err.message


# Dates ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["2021-05-18", "2020-02-29", "1999-12-31"])
def test_dates(value: str) -> None:
    assert V.iso_date(value, "loss_date") == value


@pytest.mark.parametrize("value", [
    "2021-02-29", "2021-13-01", "2021-00-10", "2021-5-18", "20210518", "2021-W20-2",
    "2021-05-18T00:00:00", "18/05/2021", "２０２１-05-18", "", "2021-05-18 ",
])
def test_dates_refused(value: str) -> None:
    assert "loss_date" in refused(V.iso_date, value, "loss_date").message


@pytest.mark.parametrize("value", [20210518, None, 1.5])
def test_dates_must_be_strings(value: object) -> None:
    refused(V.iso_date, value, "loss_date")


def test_a_period_may_not_end_before_it_starts() -> None:
    assert V.period("2021-01-01", "2021-01-01", "period") == ("2021-01-01", "2021-01-01")
    err = refused(V.period, "2021-01-02", "2021-01-01", "period")
    assert "2021-01-01" in err.message and "2021-01-02" in err.message


# Compliance periods, schemes, areas, text, enumerations -------------------------------------------

@pytest.mark.parametrize("value", ["2021", "2021-2022"])
def test_compliance_periods(value: str) -> None:
    assert V.compliance_period(value) == value


@pytest.mark.parametrize("value", ["21", "2021/2022", "2021-22", "二〇二一", "2021 ", ""])
def test_compliance_periods_refused(value: str) -> None:
    refused(V.compliance_period, value)


def test_compliance_period_span_must_not_run_backwards() -> None:
    refused(V.compliance_period, "2022-2021")


@pytest.mark.parametrize("value", ["fujian_ets", "national_ets", "ab"])
def test_schemes(value: str) -> None:
    assert V.scheme(value) == value


@pytest.mark.parametrize("value", ["Fujian_ets", "fujian-ets", "f", "1fujian", "", "福建"])
def test_schemes_refused(value: str) -> None:
    refused(V.scheme, value)


@pytest.mark.parametrize(("value", "canonical"), [(3197, "3197"), ("3197", "3197"),
                                                  ("40.5", "40.5"), ("0.01", "0.01")])
def test_area_in_mu(value: object, canonical: str) -> None:
    assert V.area_mu(value) == canonical


@pytest.mark.parametrize("value", [0, -1, "0", "0.00", "1.234", 3197.0, True, None])
def test_area_refused(value: object) -> None:
    refused(V.area_mu, value)


@pytest.mark.parametrize("value", ["常口村", "福建林业碳票登记簿 (demo)", "line\nbreak", "tab\there",
                                   "x" * V.MAX_TEXT_LEN])
def test_text_accepts_chinese_and_layout_whitespace(value: str) -> None:
    assert V.text(value, "name") == value


@pytest.mark.parametrize("value", ["", "   ", "bell\x07", "nul\x00", "x" * (V.MAX_TEXT_LEN + 1)])
def test_text_refused(value: str) -> None:
    assert "name" in refused(V.text, value, "name").message


def test_optional_text() -> None:
    assert V.text(None, "details", required=False) == ""


@pytest.mark.parametrize(("enum", "value"), [(V.Role, "holder"), (V.Standard, "FFCER"),
                                             (V.Purpose, "judicial_restoration"), (V.Peril, "fire"),
                                             (V.TradeMode, "auction")])
def test_enumerations(enum, value: str) -> None:
    assert V.choice(enum, value, "field") == value


@pytest.mark.parametrize(("enum", "value"), [(V.Role, "Holder"), (V.Standard, "smcer"),
                                             (V.Purpose, "offset"), (V.Peril, "flood")])
def test_enumerations_refused_with_the_choices(enum, value: str) -> None:
    err = refused(V.choice, enum, value, "field")
    assert value in err.message and ", ".join(e.value for e in enum) in err.message


# A trailing newline ------------------------------------------------------------------------------
# Python's '$' also matches just before a final '\n', so `re.match(r"^...$")` lets "alice\n" through
# as an id distinct from "alice". Every identifier parser must refuse it.



@pytest.mark.parametrize(("parse", "value"), [
    pytest.param(lambda v: V.slug(v, "participant_id"), "alice\n", id="slug"),
    pytest.param(lambda v: V.ref(v, "trade_id"), "SX-2021-0001\n", id="ref"),
    pytest.param(V.ticket_no, "SM-0000001\n", id="ticket_no"),
    pytest.param(V.parse_serial, "SM-0000001-0000001\n", id="serial"),
    pytest.param(lambda v: V.fen(v, "price"), "15.00\n", id="money"),
    pytest.param(V.compliance_period, "2021\n", id="compliance_period"),
    pytest.param(V.scheme, "fujian_ets\n", id="scheme"),
    pytest.param(V.area_mu, "3197\n", id="area_mu"),
    pytest.param(lambda v: V.iso_date(v, "loss_date"), "2021-05-18\n", id="date"),
])
def test_a_trailing_newline_is_refused(parse, value: str) -> None:
    refused(parse, value)


def test_a_newline_participant_id_is_not_a_second_participant(registry: Registry) -> None:
    registry.submit("initialise", "registry", "c-0",
                    {"origin": "test", "operator_id": "registry", "name": "op"})
    registry.submit("register_participant", "registry", "c-1",
                    {"participant_id": "alice", "name": "A", "role": "holder"})
    before = registry.log_position()
    with pytest.raises(DomainError) as info:
        registry.submit("register_participant", "registry", "c-2",
                        {"participant_id": "alice\n", "name": "A2", "role": "holder"})
    assert info.value.code == "invalid_argument"
    assert registry.log_position() == before


# Commands: parsing is strict and canonical ----------------------------------------------------------

TRANSFER = {"trade_id": "SX-1", "seller": "alice", "buyer": "bob", "ticket_no": "SM-0000001",
            "quantity_t": 10, "price": "15.00", "mode": "negotiated"}


def test_every_command_has_a_spec_and_only_registered_error_codes_exist() -> None:
    assert set(C.COMMAND_NAMES) == set(C.Command.SPECS)
    assert "invalid_argument" in CODES
    with pytest.raises(ValueError):
        DomainError("no_such_code", "x")


def test_make_canonicalises_money_to_fen() -> None:
    cmd = C.make("transfer", "exch", "c-1", TRANSFER)
    assert cmd["price_fen"] == 1_500 and "price" not in cmd.fields
    assert cmd["quantity_t"] == 10 and cmd["first"] == 0 and cmd["last"] == 0


def test_equal_amounts_written_differently_have_one_digest() -> None:
    a = C.make("transfer", "exch", "c-1", TRANSFER)
    b = C.make("transfer", "exch", "c-1", {**TRANSFER, "price": "15"})
    c = C.make("transfer", "exch", "c-1", {**TRANSFER, "price": "15.01"})
    assert a.digest() == b.digest() != c.digest()


def test_unknown_fields_are_refused() -> None:
    err = refused(C.make, "transfer", "exch", "c-1", {**TRANSFER, "note": "x"})
    assert "note" in err.message


def test_missing_fields_are_named() -> None:
    args = dict(TRANSFER)
    del args["buyer"]
    assert "buyer" in refused(C.make, "transfer", "exch", "c-1", args).message


def test_unknown_command_is_refused() -> None:
    assert "mint" in refused(C.make, "mint", "exch", "c-1", {}).message


def test_actor_and_command_id_are_parsed() -> None:
    refused(C.make, "transfer", "Exch", "c-1", TRANSFER)
    refused(C.make, "transfer", "exch", "c 1", TRANSFER)


def test_parse_refuses_extra_envelope_fields() -> None:
    refused(C.parse, {"command": "transfer", "actor": "exch", "command_id": "c-1", "args": TRANSFER,
                      "signature": "x"})
    assert C.parse({"command": "transfer", "actor": "exch", "command_id": "c-1",
                    "args": TRANSFER}).name == "transfer"


def test_canonical_bytes_refuse_floats() -> None:
    with pytest.raises(DomainError) as info:
        C.canonical_bytes({"a": 1.5})
    assert info.value.code == "invalid_argument"


def test_serial_range_in_a_line_must_match_its_ticket_and_quantity() -> None:
    line = {"ticket_no": "SM-0000001", "first_serial": "SM-0000001-0000011",
            "last_serial": "SM-0000001-0000020"}
    cmd = C.make("transfer", "exch", "c-1", {**TRANSFER, **line, "quantity_t": None})
    assert (cmd["first"], cmd["last"], cmd["quantity_t"]) == (11, 20, 10)
    err = refused(C.make, "transfer", "exch", "c-1", {**TRANSFER, **line, "quantity_t": 11})
    assert "11" in err.message and "10" in err.message
    refused(C.make, "transfer", "exch", "c-1",
            {**TRANSFER, **line, "last_serial": "SM-0000002-0000020", "quantity_t": None})
    refused(C.make, "transfer", "exch", "c-1",
            {**TRANSFER, **line, "last_serial": "SM-0000001-0000010", "quantity_t": None})
    refused(C.make, "transfer", "exch", "c-1",
            {**TRANSFER, "first_serial": "SM-0000001-0000011", "quantity_t": None})


def test_lines_name_each_ticket_once() -> None:
    args = {"pledge_id": "PL-1", "pledgor": "alice", "loan_ref": "L-1", "secured_amount": "1.00",
            "maturity": "2030-01-01",
            "lines": [{"ticket_no": "SM-0000001", "quantity_t": 1},
                      {"ticket_no": "SM-0000001", "quantity_t": 2}]}
    assert "SM-0000001" in refused(C.make, "pledge", "bank", "c-1", args).message
    refused(C.make, "pledge", "bank", "c-1", {**args, "lines": []})


# Chinese names round-trip through the store and the projections ------------------------------------

def test_chinese_text_round_trips_through_the_store(db_url: str) -> None:
    app = Registry(db_url, keyring=Keyring())
    ops = [
        ("initialise", "registry", {"origin": "test", "operator_id": "registry",
                                    "name": "福建林业碳票登记簿"}),
        ("register_participant", "registry", {"participant_id": "forestry", "role": "issuer",
                                              "name": "三明市林业局"}),
        ("register_participant", "registry", {"participant_id": "changkou-village", "role": "holder",
                                              "name": "常口村"}),
        ("register_project", "forestry", {"project_id": "SM-P-001", "name": "常口村生态公益林",
                                          "owner": "changkou-village", "county": "将乐县",
                                          "area_mu": "3197.50", "standard": "SMCER",
                                          "methodology": "三明林业碳票碳减排量计量方法"}),
        ("issue_ticket", "forestry", {"ticket_no": "SM-0000001", "project_id": "SM-P-001",
                                      "standard": "SMCER", "period_start": "2016-01-01",
                                      "period_end": "2020-12-31", "quantity_t": 12_723}),
        ("retire", "changkou-village", {"retirement_id": "RT-1", "purpose": "voluntary",
                                        "beneficiary": "常口村村民委员会",
                                        "details": "碳中和 ✓ — 2021年",
                                        "lines": [{"ticket_no": "SM-0000001", "quantity_t": 1}]}),
    ]
    for i, (name, actor, args) in enumerate(ops):
        app.submit(name, actor, f"c-{i}", args)
    app.close()

    reopened = Registry(db_url)
    try:
        view = reopened.projection()
        assert view.participant("changkou-village")["name"] == "常口村"
        assert view.balances("changkou-village")["name"] == "常口村"
        assert view.genesis is not None
        project = view.projects["SM-P-001"]
        assert (project.name, project.county, project.area_mu, project.methodology) == (
            "常口村生态公益林", "将乐县", "3197.50", "三明林业碳票碳减排量计量方法")
        retirement = view.retirement("RT-1")
        assert retirement["beneficiary"] == "常口村村民委员会"
        assert retirement["details"] == "碳中和 ✓ — 2021年"
        registered = [e for e in view.history(holder="changkou-village")
                      if e["event"] == "Participant.Registered"]
        assert registered[0]["name"] == "常口村"
    finally:
        reopened.close()
