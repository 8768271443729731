"""A batch's common items are checked by a fast path; it must give exactly what the general
parser gives (same keys, same order, same values), and leave everything else to it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import commands as C
from domain.errors import DomainError

GOOD = {"trade_id": "T-1", "seller": "h-a", "buyer": "h-b", "ticket_no": "SM-0000001",
        "quantity_t": 5, "price": "15.00", "mode": "negotiated"}


def _general(item: dict[str, Any]) -> dict[str, Any]:
    return C._check_transfer(C._parse_fields(item, C._TRANSFER_ITEM, "t"), "t")


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


def _reference_canonical(obj: Any) -> Any:
    """The canonical form as first written (one call per value)."""
    if isinstance(obj, dict):
        return {str(k): _reference_canonical(obj[k]) for k in sorted(obj)}
    if isinstance(obj, (list, tuple)):
        return [_reference_canonical(v) for v in obj]
    if isinstance(obj, float):
        raise DomainError("invalid_argument", "float")
    return obj


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**53, 2**53), st.text(max_size=5),
                    st.binary(max_size=4), st.floats(allow_nan=False))
trees = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner),
    st.dictionaries(st.text(max_size=4), inner, max_size=4)), max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(trees)
def test_canonical_bytes_equal_the_first_definitions(tree: Any) -> None:
    try:
        expected = C.msgpack.packb(_reference_canonical(tree), use_bin_type=True)
    except DomainError:
        with pytest.raises(DomainError):
            C.canonical_bytes(tree)
        return
    assert C.canonical_bytes(tree) == expected
