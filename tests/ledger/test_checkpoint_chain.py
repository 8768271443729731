"""Each checkpoint names the one before it (its size and the SHA-256 of its signed body), so a
deleted, replaced or inserted checkpoint is named by `verify`, `verify-export` and witnesses.
Checkpoints signed before (without the field) still verify: the chain starts at the first one
that carries it, which names the last one before it. Proof bundles verify either way.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _forge import Forger  # type: ignore[import-not-found]

from domain.errors import DomainError
from ledger import demo
from ledger.application import Registry
from ledger.audit import audit_database, audit_export, export
from ledger.checkpoints import NO_PREVIOUS, Checkpoint, witness
from ledger.keys import Keyring
from ledger.proofs import ProofError, bundle, verify_bundle

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "edition1"
REGULATOR = "fujian-eco"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def operator_key(app: Registry) -> str:
    return app.projection().genesis.operator_key


def write(app: Registry, i: int) -> None:
    app.submit("register_participant", "registry", f"chain-{i}", {
        "participant_id": f"chain-{i}", "name": f"持有人 {i}", "role": "holder"})


@pytest.fixture
def chained(store_url: str) -> Iterator[tuple[Registry, str, list[int]]]:
    """The demo on either store, with four checkpoints signed along the way, 10 s apart."""
    clock = Clock(time.time())
    app = Registry(store_url, keyring=Keyring(), auto_checkpoint=False, clock=clock)
    demo.load(app)
    sizes = []
    for i in range(4):
        write(app, i)
        clock.now += 10
        app.operator_checkpointer().make()
        sizes.append(app.log_position())
    yield app, store_url, sizes
    app.close()


def stored(app: Registry) -> dict[int, Checkpoint]:
    return {size: Checkpoint.parse(body) for size, body, _ in app.recorder.select_checkpoints()}


def failure(app: Registry) -> tuple[int, str]:
    report = audit_database(app.recorder, operator_key(app), workers=1)
    assert not report.ok and report.failure is not None
    return report.failure.position, report.failure.what


def test_each_checkpoint_names_the_one_before_it(chained: tuple[Registry, str, list[int]]) -> None:
    app, _, sizes = chained
    found = stored(app)
    assert list(found) == sizes
    assert found[sizes[0]].previous == NO_PREVIOUS
    assert b"\nprevious none\n" in found[sizes[0]].body()
    for before, after in zip(sizes, sizes[1:], strict=False):
        body = app.recorder.select_checkpoints(before - 1)[0][1]
        assert found[after].previous == (before, hashlib.sha256(body).digest())
        assert f"\nprevious {before} ".encode() in found[after].body()
    report = audit_database(app.recorder, operator_key(app), workers=1)
    assert report.ok and report.checkpoints == 4


@pytest.mark.parametrize("which", [0, 1, 2])
def test_a_deleted_checkpoint_is_named(chained: tuple[Registry, str, list[int]],
                                       which: int) -> None:
    app, url, sizes = chained
    with Forger(url) as f:
        f.delete_checkpoint(sizes[which])
    at, what = failure(app)
    assert at == sizes[which + 1]
    assert (f"checkpoint at size {sizes[which + 1]} names the checkpoint at size {sizes[which]} "
            "before it, which is missing") in what


def test_a_deleted_checkpoint_is_named_by_verify_export(chained: tuple[Registry, str, list[int]],
                                                        tmp_path: Path) -> None:
    app, url, sizes = chained
    with Forger(url) as f:
        f.delete_checkpoint(sizes[1])
    file = tmp_path / "audit.export"
    export(app.recorder, file)
    report = audit_export(file, operator_key(app), workers=1)
    assert not report.ok and report.failure is not None
    assert report.failure.position == sizes[2]
    assert f"names the checkpoint at size {sizes[1]} before it, which is missing" in \
        report.failure.what


def test_a_replaced_checkpoint_is_named(chained: tuple[Registry, str, list[int]]) -> None:
    """The operator's key signs another checkpoint at the same size (a later time): the next
    one names the body it followed, not this one."""
    app, url, sizes = chained
    honest = stored(app)[sizes[1]]
    other = Checkpoint(honest.origin, honest.size, honest.root, honest.chain, honest.state_root,
                       honest.time + 5, honest.previous)
    key = app.keyring.get("registry")
    with Forger(url) as f:
        f.delete_checkpoint(sizes[1])
    app.recorder.insert_checkpoint(sizes[1], other.body(), key.sign(other.body()))
    at, what = failure(app)
    assert at == sizes[2]
    assert f"names another checkpoint at size {sizes[1]} than the one the log holds" in what


def test_a_checkpoint_in_the_old_format_after_the_chain_began_is_named(
        chained: tuple[Registry, str, list[int]]) -> None:
    app, url, sizes = chained
    last = stored(app)[sizes[-1]]
    write(app, 99)
    size = app.log_position()
    old_style = Checkpoint(last.origin, size, app.log_tree(size).root_at(size),
                           app.recorder.select_records(size, 1, stop=size)[0].chain,
                           app.projection().commitment.root(), last.time + 1)
    assert old_style.previous is None and b"previous" not in old_style.body()
    app.recorder.insert_checkpoint(size, old_style.body(),
                                   app.keyring.get("registry").sign(old_style.body()))
    at, what = failure(app)
    assert at == size and "does not name the checkpoint before it" in what


def test_a_deleted_witnessed_latest_checkpoint_is_named_by_its_cosignature(
        chained: tuple[Registry, str, list[int]], tmp_path: Path) -> None:
    app, url, sizes = chained
    witness(app, REGULATOR, app.keyring.get(REGULATOR), tmp_path / "w.json", operator_key(app))
    with Forger(url) as f:
        f.delete_checkpoint(sizes[-1])
    at, what = failure(app)
    assert at == sizes[-1]
    assert f"cosignature by {REGULATOR}" in what and "no longer has" in what


# Witnesses ---------------------------------------------------------------------------------------

def test_a_witness_checks_the_chain_since_it_last_cosigned(chained: tuple[Registry, str, list[int]],
                                                           tmp_path: Path) -> None:
    app, url, sizes = chained
    state = tmp_path / "w.json"
    with Forger(url) as f:  # a witness that last saw the first checkpoint
        keep = [c for c in app.recorder.select_checkpoints() if c[0] != sizes[0]]
        for size in sizes[1:]:
            f.delete_checkpoint(size)
    witness(app, REGULATOR, app.keyring.get(REGULATOR), state, operator_key(app))
    saw = json.loads(state.read_text())
    assert saw["size"] == sizes[0]
    assert saw["checkpoint"] == hashlib.sha256(app.recorder.select_checkpoints()[0][1]).hexdigest()
    for size, body, sig in keep:
        if size != sizes[2]:  # one of the checkpoints since is gone
            app.recorder.insert_checkpoint(size, body, sig)
    with pytest.raises(DomainError) as info:
        witness(app, REGULATOR, app.keyring.get(REGULATOR), state, operator_key(app))
    assert info.value.code == "log_inconsistent"
    assert f"names the checkpoint at size {sizes[2]} before it, which is missing" in \
        info.value.message
    assert json.loads(state.read_text())["size"] == sizes[0]  # nothing cosigned, nothing noted


def test_a_witness_refuses_a_log_that_lost_the_checkpoint_it_cosigned(
        chained: tuple[Registry, str, list[int]], tmp_path: Path) -> None:
    app, url, sizes = chained
    state = tmp_path / "w.json"
    witness(app, REGULATOR, app.keyring.get(REGULATOR), state, operator_key(app))
    write(app, 50)
    app.operator_checkpointer().make()
    with Forger(url) as f:
        f.delete_checkpoint(sizes[-1])
    with pytest.raises(DomainError) as info:
        witness(app, REGULATOR, app.keyring.get(REGULATOR), state, operator_key(app))
    assert info.value.code == "log_inconsistent"
    assert f"size {sizes[-1]}" in info.value.message


# Checkpoints signed before the chain ------------------------------------------------------------

@pytest.fixture
def old(tmp_path: Path) -> Iterator[Registry]:
    shutil.copytree(FIXTURE, tmp_path / "old")
    app = Registry(f"sqlite:///{tmp_path / 'old' / 'registry.db'}",
                   keyring=Keyring(tmp_path / "old" / "keys"), auto_checkpoint=False)
    yield app
    app.close()


def test_the_chain_starts_at_the_first_checkpoint_that_carries_it(old: Registry,
                                                                   tmp_path: Path) -> None:
    before = stored(old)
    assert all(cp.previous is None for cp in before.values())  # signed before the chain
    last_size, last_body = old.recorder.select_checkpoints()[-1][:2]
    write(old, 1)
    old.operator_checkpointer().make()
    first = stored(old)[old.log_position()]
    assert first.previous == (last_size, hashlib.sha256(last_body).digest())
    report = audit_database(old.recorder, operator_key(old), workers=1)
    assert report.ok and report.checkpoints == len(before) + 1
    # the witness that cosigned the old checkpoint goes on from it
    shutil.copy(FIXTURE / "fujian-eco.witness.json", tmp_path / "w.json")
    out = witness(old, REGULATOR, old.keyring.get(REGULATOR), tmp_path / "w.json",
                  operator_key(old))
    assert out["size"] == old.log_position()


def test_deleting_the_last_checkpoint_before_the_chain_is_named(old: Registry) -> None:
    last_size = old.recorder.select_checkpoints()[-1][0]
    write(old, 1)
    old.operator_checkpointer().make()
    with Forger(old.url) as f:
        f.delete_checkpoint(last_size)
    at, what = failure(old)
    assert at == old.log_position() and f"size {last_size} before it, which is missing" in what


# Proof bundles ------------------------------------------------------------------------------------

def test_a_proof_bundle_over_a_chained_checkpoint_verifies(chained: tuple[Registry, str, list[int]]
                                                           ) -> None:
    app, _, _ = chained
    data = bundle(app, "pledge", "PL-2021-001")
    assert data["checkpoint"]["previous"]["size"] > 0
    assert verify_bundle(data, operator_key(app))["active"]
    forged: dict[str, Any] = json.loads(json.dumps(data))
    forged["checkpoint"]["previous"]["size"] += 1
    with pytest.raises(ProofError) as info:
        verify_bundle(forged, operator_key(app))
    assert "differ from its signed body" in str(info.value)


def test_a_proof_bundle_over_an_old_checkpoint_verifies(old: Registry) -> None:
    data = bundle(old, "pledge", "PL-2021-001")
    assert "previous" not in data["checkpoint"]
    assert verify_bundle(data, operator_key(old))["pledged_t"] == 17_794
