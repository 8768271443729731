"""One signed transfer through Registry.submit beside the same transfer as a plain
`eventsourcing` save (one event, one transaction, no signatures, no projections).

On a SQLite file both are bound by the commit's fsync; in memory the comparison shows the CPU
cost of what the ledger adds (signing, authentication, decision, chain, projection, checkpoints).

    .venv/bin/pytest benchmarks --benchmark-enable
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import world
from benchmarks.baselines import plain_sqlite
from ledger.application import Registry
from ledger.keys import Keyring

ROUNDS = 60


def _ours(url: str, keys: Path):
    app = Registry(url, keyring=Keyring(keys), auto_checkpoint=True)
    lanes = world.make_lanes(1, 4)
    world.setup(app, lanes)
    stream = world.transfers(lanes, "P")

    def one() -> None:
        lane, args = next(stream)
        app.submit("transfer", lane.exchange, f"trade/{lane.exchange}/{args['trade_id']}", args)

    return app, one


def _plain(path: str):
    app = plain_sqlite(path)
    stream = world.transfers(world.make_lanes(1, 4), "P")
    return app, lambda: app.transfer(next(stream)[1])


@pytest.mark.benchmark(group="transfer-sqlite-file")
def test_signed_transfer_sqlite_file(benchmark, tmp_path: Path) -> None:
    app, one = _ours(f"sqlite:///{tmp_path / 'ours.db'}", tmp_path / "keys")
    try:
        benchmark.pedantic(one, rounds=ROUNDS, warmup_rounds=5)
    finally:
        app.close()


@pytest.mark.benchmark(group="transfer-sqlite-file")
def test_plain_eventsourcing_save_sqlite_file(benchmark, tmp_path: Path) -> None:
    app, one = _plain(str(tmp_path / "plain.db"))
    try:
        benchmark.pedantic(one, rounds=ROUNDS, warmup_rounds=5)
    finally:
        app.close()


@pytest.mark.benchmark(group="transfer-memory")
def test_signed_transfer_in_memory(benchmark, tmp_path: Path) -> None:
    app, one = _ours("sqlite:///:memory:", tmp_path / "keys")
    try:
        benchmark.pedantic(one, rounds=ROUNDS * 5, warmup_rounds=10)
    finally:
        app.close()


@pytest.mark.benchmark(group="transfer-memory")
def test_plain_eventsourcing_save_in_memory(benchmark) -> None:
    app, one = _plain(":memory:")
    try:
        benchmark.pedantic(one, rounds=ROUNDS * 5, warmup_rounds=10)
    finally:
        app.close()
