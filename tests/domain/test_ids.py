"""Aggregate ids: `name_uuid` is uuid.uuid5 under the registry's namespace, made faster."""

from __future__ import annotations

import pickle
from uuid import RFC_4122, UUID, uuid5

from hypothesis import given
from hypothesis import strategies as st

from domain.base import NAMESPACE, aggregate_id, name_uuid, uuid_of_int
from domain.trade import Trade

names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)


@given(names)
def test_a_name_uuid_is_the_standard_uuid5(name: str) -> None:
    made, standard = name_uuid(name), uuid5(NAMESPACE, name)
    assert made == standard and hash(made) == hash(standard)
    assert made.bytes == standard.bytes and str(made) == str(standard)
    assert made.version == 5 and made.variant == RFC_4122
    assert made.is_safe == standard.is_safe
    assert pickle.loads(pickle.dumps(made)) == standard
    assert UUID(str(made)) == made


def test_ids_of_stored_streams_do_not_change() -> None:
    """The ids of streams already in registries (made by uuid.uuid5 before)."""
    assert aggregate_id("ticket", "SM-0000001") == uuid5(NAMESPACE, "ticket/SM-0000001")
    assert Trade.id_for("shaxian-exchange", "T-1") == uuid5(NAMESPACE,
                                                           "trade/shaxian-exchange/T-1")
    assert str(NAMESPACE) == str(uuid5(UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8"),
                                       "urn:carbon-ledger:registry"))


@given(st.integers(0, 2**128 - 1))
def test_a_uuid_made_of_an_int_is_the_standard_one(value: int) -> None:
    made, standard = uuid_of_int(value), UUID(int=value)
    assert made == standard and hash(made) == hash(standard) and str(made) == str(standard)
    assert made.bytes == standard.bytes and made.is_safe == standard.is_safe
    assert UUID(made.hex) == made


@given(st.lists(st.text(max_size=12), max_size=30))
def test_memoised_participant_and_ticket_ids_are_the_aggregate_ids(keys: list[str]) -> None:
    from domain.participant import Participant
    from domain.ticket import Ticket

    for key in keys + keys:
        assert Participant.id_for(key) == aggregate_id("participant", key)
        assert Ticket.id_for(key) == aggregate_id("ticket", key)


def test_an_id_memo_is_emptied_when_it_grows_past_its_bound() -> None:
    from domain.base import id_memo

    id_for = id_memo("probe")
    first = id_for("k-0")
    for n in range(100_001):
        id_for(f"k-{n}")
    assert id_for("k-0") == first == aggregate_id("probe", "k-0")
    assert id_for.__closure__ is not None
    memo = next(c.cell_contents for c in id_for.__closure__ if isinstance(c.cell_contents, dict))
    assert len(memo) <= 100_000
