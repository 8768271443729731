"""Idempotent commands: a command id names one command forever.

Same id and same content: the first outcome comes back with "replayed": True and nothing is
written. Same id and other content: duplicate_command. A refused command records nothing, so its
id stays free.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from domain.errors import DomainError
from ledger import demo
from ledger.application import Registry
from ledger.keys import Keyring
from ledger.signing import sign_with_keyring

EXCHANGE = "shaxian-exchange"


@pytest.fixture(scope="module")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Keyring]:
    """The demo story loaded once per module; each test gets a copy of the database."""
    path = tmp_path_factory.mktemp("demo") / "registry.db"
    keyring = Keyring()
    app = Registry(f"sqlite:///{path}", keyring=keyring)
    demo.load(app)
    app.close()
    return path, keyring


@pytest.fixture
def demo_app(demo_template: tuple[Path, Keyring], tmp_path: Path) -> Iterator[Registry]:
    path, keyring = demo_template
    for f in path.parent.glob(path.name + "*"):
        shutil.copyfile(f, tmp_path / f.name)
    app = Registry(f"sqlite:///{tmp_path / path.name}", keyring=keyring)
    yield app
    app.close()


def trade(trade_id: str = "SX-IDEM-1", qty: int = 100, **over: Any) -> dict[str, Any]:
    return {"trade_id": trade_id, "seller": "longyan-farm", "buyer": "tonghai-nickel",
            "ticket_no": "FFCER-0000001", "quantity_t": qty, "price": "25.00", "mode": "negotiated",
            **over}


def refused(app: Registry, code: str, name: str, actor: str, command_id: str,
            args: dict[str, Any]) -> DomainError:
    before = app.log_position()
    with pytest.raises(DomainError) as info:
        app.submit(name, actor, command_id, args)
    assert info.value.code == code, info.value
    assert app.log_position() == before
    return info.value


def available(app: Registry, holder: str, ticket: str) -> int:
    for row in app.projection().balances(holder)["tickets"]:
        if row["ticket_no"] == ticket:
            return row["available_t"]
    return 0


def without_position(outcome: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in outcome.items() if k not in ("position", "replayed")}


def test_same_id_and_content_returns_the_first_outcome_and_writes_nothing(
        demo_app: Registry) -> None:
    app = demo_app
    first = app.submit("transfer", EXCHANGE, "idem-1", trade())
    assert "replayed" not in first
    after_first = app.log_position()
    again = app.submit("transfer", EXCHANGE, "idem-1", trade())
    assert again["replayed"] is True
    assert without_position(again) == without_position(first)
    assert app.log_position() == after_first
    assert available(app, "tonghai-nickel", "FFCER-0000001") == 1_100


def test_a_replay_is_answered_even_when_the_command_would_now_be_refused(
        demo_app: Registry) -> None:
    app = demo_app
    first = app.submit("transfer", EXCHANGE, "idem-1", trade(qty=14_000))  # all longyan has
    app.submit("freeze", "fujian-eco", "idem-freeze", {"holder": "longyan-farm", "reason": "audit"})
    position = app.log_position()
    again = app.submit("transfer", EXCHANGE, "idem-1", trade(qty=14_000))
    assert again["replayed"] is True and without_position(again) == without_position(first)
    assert app.log_position() == position


def test_equal_content_written_differently_is_the_same_command(demo_app: Registry) -> None:
    app = demo_app
    app.submit("transfer", EXCHANGE, "idem-1", trade(price="25.00"))
    position = app.log_position()
    assert app.submit("transfer", EXCHANGE, "idem-1", trade(price="25"))["replayed"] is True
    assert app.log_position() == position


@pytest.mark.parametrize(("name", "actor", "args"), [
    ("transfer", EXCHANGE, trade(qty=101)),  # other quantity
    ("transfer", EXCHANGE, trade(price="25.01")),  # other price
    ("transfer", EXCHANGE, trade(trade_id="SX-IDEM-2")),  # other trade id
    ("retire", "tonghai-nickel", {"retirement_id": "RT-IDEM", "purpose": "voluntary",
                                  "beneficiary": "x",
                                  "lines": [{"ticket_no": "FFCER-0000001", "quantity_t": 1}]}),
], ids=["quantity", "price", "trade_id", "other_command"])
def test_same_id_with_other_content_is_a_duplicate_command(demo_app: Registry, name: str,
                                                           actor: str, args: dict[str, Any]) -> None:
    app = demo_app
    app.submit("transfer", EXCHANGE, "idem-1", trade())
    err = refused(app, "duplicate_command", name, actor, "idem-1", args)
    assert "idem-1" in err.message and "transfer" in err.message and EXCHANGE in err.message
    assert err.details["command_id"] == "idem-1"
    assert available(app, "tonghai-nickel", "FFCER-0000001") == 1_100


def test_same_id_by_another_actor_is_a_duplicate_command(demo_app: Registry) -> None:
    app = demo_app
    app.submit("transfer", EXCHANGE, "idem-1", trade())
    refused(app, "duplicate_command", "freeze", "fujian-eco", "idem-1",
            {"holder": "longyan-farm", "reason": "r"})


def test_a_refused_commands_id_can_be_used_again(demo_app: Registry) -> None:
    app = demo_app
    app.submit("revoke_mandate", "tonghai-nickel", "idem-revoke",
               {"holder": "tonghai-nickel", "exchange": EXCHANGE})
    # refused: tonghai-nickel no longer mandates the exchange
    args = {**trade(), "seller": "tonghai-nickel", "buyer": "jinsen-carbon", "quantity_t": 10}
    refused(app, "no_mandate", "transfer", EXCHANGE, "idem-1", args)
    refused(app, "no_mandate", "transfer", EXCHANGE, "idem-1", args)  # refused again, not replayed
    app.submit("grant_mandate", "tonghai-nickel", "idem-mandate",
               {"holder": "tonghai-nickel", "exchange": EXCHANGE})
    out = app.submit("transfer", EXCHANGE, "idem-1", args)
    assert "replayed" not in out and out["quantity_t"] == 10
    # and an id refused once may also carry a different command later
    refused(app, "insufficient_available", "transfer", EXCHANGE, "idem-2",
            trade("SX-IDEM-2", qty=10**6))
    assert "replayed" not in app.submit("transfer", EXCHANGE, "idem-2", trade("SX-IDEM-3", qty=5))


def test_a_retry_under_a_new_command_id_does_not_double_post_a_trade(demo_app: Registry) -> None:
    app = demo_app
    app.submit("transfer", EXCHANGE, "idem-1", trade())
    err = refused(app, "already_exists", "transfer", EXCHANGE, "idem-1-retry", trade())
    assert "SX-IDEM-1" in err.message
    assert available(app, "tonghai-nickel", "FFCER-0000001") == 1_100


def test_the_same_signed_request_twice_is_a_replay_attack(demo_app: Registry) -> None:
    app = demo_app
    signed = sign_with_keyring(app.keyring, "transfer", EXCHANGE, "idem-1", trade(),
                               int(time.time()))
    app.execute(signed)
    position = app.log_position()
    with pytest.raises(DomainError) as info:
        app.execute(signed)
    assert info.value.code == "replay" and "idem-1" in info.value.message
    assert app.log_position() == position
    # signed anew, the retry is an ordinary replay of the first outcome
    assert app.submit("transfer", EXCHANGE, "idem-1", trade())["replayed"] is True


def test_replays_are_answered_from_the_store_by_another_registry(demo_app: Registry) -> None:
    first = demo_app.submit("transfer", EXCHANGE, "idem-1", trade())
    other = Registry(demo_app.url, keyring=demo_app.keyring)
    try:
        position = other.log_position()
        again = other.submit("transfer", EXCHANGE, "idem-1", trade())
        assert again["replayed"] is True and without_position(again) == without_position(first)
        with pytest.raises(DomainError) as info:
            other.submit("transfer", EXCHANGE, "idem-1", trade(qty=1))
        assert info.value.code == "duplicate_command"
        assert other.log_position() == position
    finally:
        other.close()


def test_every_demo_command_replays(demo_app: Registry) -> None:
    app = demo_app
    position = app.log_position()
    for name, actor, command_id, args in demo.story():
        if command_id in demo.EXPECTED_REFUSALS:
            refused(app, demo.EXPECTED_REFUSALS[command_id], name, actor, command_id, args)
            continue
        out = app.submit(name, actor, command_id, args)
        assert out["replayed"] is True, (command_id, out)
        assert out["command_id"] == command_id and out["command"] == name
    assert app.log_position() == position


def test_a_replay_returns_the_first_outcome_including_its_position(demo_app: Registry) -> None:
    first = demo_app.submit("transfer", EXCHANGE, "idem-1", trade())
    again = demo_app.submit("transfer", EXCHANGE, "idem-1", trade())
    assert again == {**first, "replayed": True}
