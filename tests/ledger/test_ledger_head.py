"""The chain head (table ledger_head), from which every write continues the log: a head that does
not match the log's last record stops every write (log_inconsistent, nothing written) and fails
`verify` with a sentence, on both stores.

Before, a head set back made every later write conflict until it gave up, and a zeroed chain
made the next write break the hash chain without a word."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _forge import Forger, open_demo  # type: ignore[import-not-found]

from domain.errors import DomainError
from ledger.application import Registry
from ledger.audit import audit_database
from ledger.records import GENESIS_CHAIN


@pytest.fixture
def world(store_url: str) -> Iterator[tuple[Registry, str]]:
    """The demo story on either store (no checkpoints: the head is all that is wrong)."""
    app = open_demo(store_url)
    yield app, store_url
    app.close()


def reopen(app: Registry, url: str) -> Registry:
    keyring = app.keyring
    app.close()
    return Registry(url, keyring=keyring, auto_checkpoint=False)


def a_write(app: Registry) -> Any:
    return lambda: app.submit("freeze", "fujian-eco", "head-freeze", {
        "holder": "tonghai-nickel", "reason": "检查 (inspection)"})


def refused_inconsistent(app: Registry) -> DomainError:
    before = app.recorder.head_and_end()
    with pytest.raises(DomainError) as info:
        a_write(app)()
    assert info.value.code == "log_inconsistent", info.value
    assert "ledger_head" in info.value.message and "Nothing was written" in info.value.message
    assert app.recorder.head_and_end() == before  # not a record, not the head
    return info.value


def audit_failure(app: Registry) -> tuple[int, str]:
    report = audit_database(app.recorder, workers=1)
    assert not report.ok and report.failure is not None
    assert "ledger_head" in report.failure.what
    return report.failure.position, report.failure.what


def test_an_honest_head_verifies(world: tuple[Registry, str]) -> None:
    app, _ = world
    report = audit_database(app.recorder, workers=1)
    assert report.ok, report.failure
    head, end = app.recorder.head_and_end()
    assert head == end and end[0] == app.log_position()


def edited_head(world: tuple[Registry, str], edit: Any) -> tuple[Registry, int, DomainError]:
    """The registry reopened after `edit(forger, size)` changed its head: the next write is
    refused; (the registry, the log's size, the refusal)."""
    app, url = world
    size = app.log_position()
    with Forger(url) as f:
        edit(f, size)
    app = reopen(app, url)
    return app, size, refused_inconsistent(app)


def test_a_head_set_back_stops_writes_and_fails_verify(world: tuple[Registry, str]) -> None:
    app, size, err = edited_head(world, lambda f, size: f.set_head(size - 10, f.head()[1]))
    try:
        assert f"{size - 10} records" in err.message and f"position {size}" in err.message
        at, what = audit_failure(app)
        assert at == size - 9
        assert f"says {size - 10} records" in what and f"at position {size}" in what
        assert "conflict" in what
    finally:
        app.close()


@pytest.mark.parametrize(("edit", "at", "says"), [
    (lambda f, size: f.set_head(size, bytes(32)), lambda size: size, "break the hash chain"),
    (lambda f, size: f.set_head(size + 5, GENESIS_CHAIN), lambda size: size + 1, "gap"),
    (lambda f, size: f.execute(f"DELETE FROM {f.t('ledger_head')}"), lambda size: 1, "missing"),
], ids=["zeroed chain", "ahead of the log", "deleted"])
def test_another_head_stops_writes_and_fails_verify(world: tuple[Registry, str], edit: Any,
                                                     at: Any, says: str) -> None:
    app, size, _ = edited_head(world, edit)
    try:
        found, what = audit_failure(app)
        assert found == at(size) and says in what
    finally:
        app.close()


def test_a_head_put_back_lets_writes_go_on(world: tuple[Registry, str]) -> None:
    """Whoever restores the head from the log (the investigation's end) can write again, and
    the log verifies."""
    url = world[1]
    with Forger(url) as f:
        honest = f.head()
    app, _, _ = edited_head(world, lambda f, size: f.set_head(honest[0] - 3, honest[1]))
    try:
        with Forger(url) as f:
            f.set_head(*honest)
        a_write(app)()
        assert audit_database(app.recorder, workers=1).ok
    finally:
        app.close()
