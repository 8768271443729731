"""A batch's common items are checked by a fast path; it must give exactly what the general
parser gives (same keys, same values), and leave everything else to it. Every batch item has its
keys in sorted order, which lets canonical_bytes pack it as it is: the bytes must stay those of
the first definition, for every value."""

from __future__ import annotations

import hashlib
import pickle
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import commands as C
from domain import values as V
from domain.errors import DomainError

GOOD = {"trade_id": "T-1", "seller": "h-a", "buyer": "h-b", "ticket_no": "SM-0000001",
        "quantity_t": 5, "price": "15.00", "mode": "negotiated"}


def _general(item: dict[str, Any]) -> dict[str, Any]:
    """The general path's item, its keys in the order a batch gives them."""
    checked = C._check_transfer(C._parse_fields(item, C._TRANSFER_ITEM, "t"), "t")
    return {k: checked[k] for k in C._ITEM_KEYS}


def test_the_common_item_takes_the_fast_path() -> None:
    fast = C._plain_transfer(GOOD)
    assert fast is not None
    assert list(fast.items()) == list(_general(GOOD).items())


texts = st.one_of(st.sampled_from(["T-1", "h-a", "h-b", "SM-0000001", "15", "15.5", "0.01",
                                   "negotiated", "auction", "listing", "fast", "", "A", "x" * 70,
                                   "1.234", "01.00", "-1.00", "999999999999999.99", "h-a ",
                                   "SM-000001", "sm-0000001", "Ⅸ"]),
                  st.text(max_size=12))
values = st.one_of(texts, st.integers(-2, 10**13), st.booleans(), st.none(),
                   st.just(1.5), st.lists(st.integers(), max_size=2))


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(st.sampled_from([*GOOD, "first_serial", "last_serial", "extra"]), values),
       st.booleans())
def test_fast_and_general_paths_agree(changes: dict[str, Any], drop: bool) -> None:
    item = {**GOOD, **changes}
    if drop:
        item.pop(next(iter(changes), "mode"), None)
    fast = C._plain_transfer(item)
    try:
        general = _general(item)
    except DomainError:
        assert fast is None
        return
    if fast is not None:
        assert list(fast.items()) == list(general.items())


def test_a_batch_parses_the_same_with_or_without_the_fast_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    items = [dict(GOOD, trade_id=f"T-{i}", quantity_t=i + 1, price=f"{i}.{i % 10}",
                  mode=["negotiated", "auction", "listing"][i % 3]) for i in range(30)]
    items[7] = dict(items[7], first_serial="SM-0000001-0000001", last_serial="SM-0000001-0000008",
                    quantity_t=None)
    args = {"batch_id": "B-1", "transfers": items}
    fast = C.make("settle_batch", "exchange-1", "c-1", args)
    monkeypatch.setattr(C, "_plain_transfer", lambda v: None)
    general = C.make("settle_batch", "exchange-1", "c-1", args)
    assert [list(i.items()) for i in fast.fields["transfers"]] == \
        [list(i.items()) for i in general.fields["transfers"]]
    assert fast.digest() == general.digest()


def _reference_items(value: Any, name: str = "transfers") -> list[dict[str, Any]]:
    """_transfer_items as first written, with every item on the general path."""
    if not isinstance(value, list) or not value:
        raise C.invalid(f"{name} must be a non-empty list of transfers", field=name)
    if len(value) > C.MAX_BATCH:
        raise DomainError("batch_too_large",
                          f"a batch holds at most {C.MAX_BATCH} transfers; this one has {len(value)}",
                          limit=C.MAX_BATCH, size=len(value))
    items = []
    for i, v in enumerate(value):
        try:
            items.append(C._parse_fields(v, C._TRANSFER_ITEM, f"{name}[{i}]"))
        except DomainError as e:
            raise DomainError(e.code, f"{name}[{i}]: {e.message}", index=i, **e.details) from None
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item["trade_id"] in seen:
            raise C.invalid(f"{name}[{i}] repeats trade_id {item['trade_id']}", field=name)
        seen.add(item["trade_id"])
    return [C._check_transfer(item, f"{name}[{i}]") for i, item in enumerate(items)]


def _outcome(parse: Any, value: Any) -> Any:
    """What a parser gives: the items (their values with their types), or the refusal's code,
    message and details."""
    try:
        items = parse(value, "transfers")
    except DomainError as e:
        return ("refused", e.code, e.message, e.details)
    return ("ok", [sorted((k, type(v), v) for k, v in item.items()) for item in items])


class Slug(str):
    """A str subclass: the general path keeps it as it is, so the memos must not take it."""


near_misses = st.one_of(
    st.sampled_from(["h-a", "h-b", "h-c", "SM-0000001", "SM-0000002", "T-9", "0", "0.00", "15.5",
                     "999999999999999.99", "1000000000000000", "auction", "Auction", "h--a", "-h",
                     "h-", "H-A", "h_a", "h-a\n", "ＳＭ-0000001", "SM-000000１", "SM-0000001-0000001",
                     "SM-0000001-0000008", "SM-0000002-0000001", "T 1", "T-1/2", "x" * 65,
                     "r" * 129]),
    st.sampled_from([0, 1, 2, 7, 8, 10**12, 10**12 + 1, -1, True, False, 2.0, None, [], ["h-a"],
                     {}, Slug("h-a"), Slug("SM-0000001"), V.TradeMode.AUCTION]),
    st.text(max_size=8))
SERIALS = {"first_serial": "SM-0000001-0000001", "last_serial": "SM-0000001-0000008"}


@st.composite
def batches(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Mostly good items with a different trade id each; now and then an item that misses."""
    items = []
    for i in range(draw(st.integers(1, 8))):
        item = {"trade_id": f"T-{i}", "seller": draw(st.sampled_from(["h-a", "h-b"])),
                "buyer": draw(st.sampled_from(["h-c", "h-d"])),
                "ticket_no": draw(st.sampled_from(["SM-0000001", "SM-0000002"])),
                "quantity_t": draw(st.integers(1, 9)),
                "price": draw(st.sampled_from(["15.00", "0", "7.5", "12", "0.01"])),
                "mode": draw(st.sampled_from(["negotiated", "auction", "listing"]))}
        miss = draw(st.integers(0, 40))
        if miss == 0:
            item[draw(st.sampled_from(sorted(item)))] = draw(near_misses)
        elif miss == 1:
            del item[draw(st.sampled_from(sorted(item)))]
        elif miss == 2:
            item[draw(st.sampled_from(["first_serial", "last_serial", "note"]))] = draw(near_misses)
        elif miss == 3:
            item.update(SERIALS, quantity_t=draw(st.sampled_from([None, 8, 7])))
        elif miss == 4:
            item["buyer"] = item["seller"]
        elif miss == 5:
            item["trade_id"] = f"T-{draw(st.integers(0, i))}"
        items.append(item)
    return items


@settings(max_examples=1000, deadline=None)
@given(st.one_of(batches(), batches(), batches(), near_misses), st.booleans())
def test_a_batch_parses_as_the_general_path_alone_parses_it(value: Any, forget: bool) -> None:
    """The same items, or the same refusal at the same item, with the memos full or empty."""
    if forget:
        for memo in (C._SLUGS, C._TICKETS, C._PRICES):
            memo.clear()
    outcome = _outcome(C._transfer_items, value)
    assert outcome == _outcome(_reference_items, value)
    if outcome[0] == "ok":
        assert all(tuple(item) == C._ITEM_KEYS for item in C._transfer_items(value, "t"))


def test_a_parsed_batch_pickles_and_keeps_its_digest() -> None:
    items = [dict(GOOD, trade_id=f"T-{i}", seller=["h-a", "h-c"][i % 2]) for i in range(6)]
    items[3] = dict(items[3], **SERIALS, quantity_t=None)
    cmd = C.make("settle_batch", "exchange-1", "c-1", {"batch_id": "B-1", "transfers": items})
    copy = pickle.loads(pickle.dumps(cmd, protocol=pickle.HIGHEST_PROTOCOL))
    assert copy == cmd and copy.digest() == cmd.digest()
    assert [tuple(item) for item in copy["transfers"]] == [C._ITEM_KEYS] * 6


def test_the_memos_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(C, "_MEMO_MAX", 3)
    items = [dict(GOOD, trade_id=f"T-{i}", seller=f"s-{i}", price=f"{i}.01") for i in range(10)]
    assert _outcome(C._transfer_items, items) == _outcome(_reference_items, items)
    assert 0 < len(C._SLUGS) <= 3 and 0 < len(C._PRICES) <= 3


def _reference_canonical(obj: Any) -> Any:
    """The canonical form as first written (one call per value)."""
    if isinstance(obj, dict):
        return {str(k): _reference_canonical(obj[k]) for k in sorted(obj)}
    if isinstance(obj, (list, tuple)):
        return [_reference_canonical(v) for v in obj]
    if isinstance(obj, float):
        raise DomainError("invalid_argument", "floating-point numbers are not allowed in the ledger")
    return obj


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**53, 2**53), st.text(max_size=5),
                    st.binary(max_size=4), st.floats(allow_nan=False))


def _item_shaped(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts with a batch item's keys (which canonical_bytes may take as they are): in sorted
    order or not, all of them or most, holding scalars mostly, and now and then a float, a
    list, a dict; exact dicts or OrderedDicts."""
    shapes = st.sampled_from(sorted({C._ITEM_KEYS, *C._SORTED_SHAPES}))
    keys = st.one_of(shapes, shapes, shapes.flatmap(st.permutations), shapes.map(lambda k: k[::-1]),
                     shapes.map(lambda k: k[1:]), shapes.map(lambda k: (*k, "zz")))
    values = st.one_of(scalars.filter(lambda v: type(v) is not float), inner)
    # (ten values: as many as the longest key tuple has keys, or one more)
    return st.builds(lambda ks, vs, kind: kind(zip(ks, vs, strict=False)), keys,
                     st.lists(values, min_size=10, max_size=10),
                     st.sampled_from([dict, dict, OrderedDict]))


trees = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner),
    st.dictionaries(st.text(max_size=4), inner, max_size=4), _item_shaped(inner)), max_leaves=20)


@settings(max_examples=600, deadline=None)
@given(trees)
def test_canonical_bytes_equal_the_first_definitions(tree: Any) -> None:
    try:
        expected = C.msgpack.packb(_reference_canonical(tree), use_bin_type=True)
    except DomainError:
        with pytest.raises(DomainError):
            C.canonical_bytes(tree)
        return
    assert C.canonical_bytes(tree) == expected


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["batch_id", "transfers", "lines", "x"]), trees,
                       max_size=3), st.lists(_item_shaped(trees), max_size=3))
def test_a_commands_digest_is_that_of_its_payload_sorted_everywhere(
        args: dict[str, Any], items: list[dict[str, Any]]) -> None:
    cmd = C.Command("settle_batch", "exchange-1", "c-1", {**args, "transfers": items})
    try:
        expected = hashlib.sha256(C.msgpack.packb(_reference_canonical(cmd.payload()),
                                                  use_bin_type=True)).hexdigest()
    except DomainError as e:
        with pytest.raises(DomainError) as info:
            cmd.digest()
        assert (info.value.code, info.value.message) == (e.code, e.message)
        return
    assert cmd.digest() == expected
