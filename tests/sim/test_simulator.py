"""The fault simulator: its plans are a function of the seed, its checks catch what they are
for, and a few seeds run against real servers on both stores (bounded: about 30 s in all).

Many more seeds run by hand: `ops/sim --seeds N --store both` (see docs/operations.md).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import simulator as S  # noqa: E402
import world as W  # noqa: E402

from ledger.keys import Keyring  # noqa: E402

pytestmark = pytest.mark.slow

SQLITE_SEED = 5  # one server of 2 workers: a full disk, failing fsyncs, kills, a restart
PG_SEED = 39  # two servers of 2 workers on one database; connections terminated, a worker killed
STEPS = 20
BUDGET_S = 120.0
# Issue 18's stale refusals show up at random in runs with several workers: reported apart
# (printed) until its fix lands; then S.KNOWN_HOLES is emptied and this tolerates nothing.
TOLERATE = frozenset(S.KNOWN_HOLES)


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    return Keyring(tmp_path_factory.mktemp("sim-keys"))


def test_a_seed_makes_one_plan(keyring: Keyring, tmp_path: Path) -> None:
    other_keys = Keyring(tmp_path / "other")  # other keys, other signatures: the same plan
    for store in ("sqlite", "postgres"):
        a = S.make_plan(7, store, keyring, STEPS)
        b = S.make_plan(7, store, other_keys, STEPS)
        assert a.to_json() == b.to_json() and a.fingerprint() == b.fingerprint()
        assert S.make_plan(8, store, keyring, STEPS).fingerprint() != a.fingerprint()


def test_plans_cover_every_fault_and_command(keyring: Keyring) -> None:
    faults: dict[str, set[str]] = {"sqlite": set(), "postgres": set()}
    names: set[str] = set()
    kinds: set[str] = set()
    shapes: set[tuple[int, ...]] = set()
    for seed in range(12):
        for store in faults:
            plan = S.make_plan(seed, store, keyring, STEPS)
            faults[store] |= set(plan.faults())
            shapes.add(tuple(plan.workers))
            for step in plan.steps:
                kinds.add(step.kind)
                names |= {c.name for c in step.cmds}
            assert plan.faults(), f"seed {seed} on {store} injects no fault"
    assert faults["sqlite"] >= {"kill_worker", "kill_server", "restart", "disk_full", "fsync_fail"}
    assert faults["postgres"] >= {"kill_worker", "kill_server", "restart", "pg_kill"}
    assert kinds == {"cmd", "burst", "read", "fault"}
    assert names >= {"transfer", "settle_batch", "pledge", "release_pledge", "enforce_pledge",
                     "retire", "freeze", "unfreeze", "cancel_units", "record_emissions"}
    assert {(1,), (2,)} <= shapes and any(len(s) == 2 for s in shapes)  # 1-2 workers, 2 servers


# The checks fail when they should ----------------------------------------------------------------

@pytest.fixture
def world(keyring: Keyring) -> S.Registry:
    app = S.memory_registry(keyring)
    S.build_world(app, keyring)
    yield app
    app.close()


def test_the_unit_checks_catch_a_broken_ticket(world: S.Registry) -> None:
    assert S.check_units(world) == []
    ticket = world.projection().tickets[W.TICKETS["FFCER"]]
    first, last, holder, state, ref = ticket.blocks[0]
    ticket.blocks[0] = (first, last, W.HOLDERS[3], state, ref)  # units changed hands unlogged
    problems = S.check_units(world)
    assert any("the log says" in p for p in problems), problems
    ticket.blocks[0] = (first + 1, last, holder, state, ref)  # a serial lost
    problems = S.check_units(world)
    assert any("gap or overlap" in p for p in problems), problems


def test_the_cap_check_catches_offsets_over_the_cap(world: S.Registry, keyring: Keyring) -> None:
    world.execute(S.signed(keyring, W.Cmd("t/retire", "retire", W.EMITTER, {
        "retirement_id": "RT-T", "purpose": "compliance", "beneficiary": W.EMITTER,
        "lines": [{"ticket_no": W.TICKETS["FFCER"], "quantity_t": 30}],
        "scheme": W.SCHEME, "period": W.PERIOD})))
    projection = world.projection()
    assert S.check_compliance(projection) == []
    account = projection.compliance[(W.EMITTER, W.SCHEME, W.PERIOD)]
    account.used_t["FFCER"] = 41  # above floor(400 t x 10%)
    problems = S.check_compliance(projection)
    assert any("used > cap 40 t" in p for p in problems), problems
    assert any("compliance retirements total 30 t" in p for p in problems), problems


def _simulation(tmp_path: Path, keyring: Keyring) -> S.Simulation:
    sim = S.Simulation(1, "sqlite", tmp_path)
    sim.keyring = keyring
    return sim


def _transfer(n: int, q: int = 1) -> W.Cmd:
    return W.Cmd(f"t/{n}", "transfer", W.EXCHANGE, {
        "trade_id": f"TT-{n}", "seller": W.HOLDERS[1], "buyer": W.HOLDERS[2],
        "ticket_no": W.TICKETS["FFCER"], "quantity_t": q, "price": "1.00", "mode": "listing"})


def test_the_log_checks_catch_lost_and_unvouched_commands(world: S.Registry, keyring: Keyring,
                                                          tmp_path: Path) -> None:
    sim = _simulation(tmp_path, keyring)
    oracle = S.Oracle(keyring, sim)
    try:
        recorded, lost, refused = _transfer(1), _transfer(2), _transfer(3)
        for cmd in (recorded, lost, refused):
            sim.by_body[S.canonical_json(cmd.body())] = cmd
        outcome = world.execute(S.signed(keyring, recorded))
        world.execute(S.signed(keyring, refused))
        sim.answers = [
            S.Answer(recorded, 201, {k: v for k, v in outcome.items() if k != "position"},
                     outcome["position"]),
            S.Answer(lost, 201, {}, outcome["position"] + 1),  # acknowledged, not in the log
            S.Answer(refused, 422, {"code": "insufficient_available"}),  # refused, yet recorded
        ]
        sim._check_log(world, oracle)
        assert any("acknowledged t/2 is recorded 0 times" in v for v in sim.violations)
        assert any("t/3 is recorded, but every send of it was refused" in v
                   for v in sim.violations), sim.violations
        assert not any("t/1" in v for v in sim.violations), sim.violations
    finally:
        oracle.close()


def test_the_oracle_catches_a_state_the_commands_do_not_make(world: S.Registry, keyring: Keyring,
                                                              tmp_path: Path) -> None:
    sim = _simulation(tmp_path, keyring)
    oracle = S.Oracle(keyring, sim)
    try:
        cmd = _transfer(1, 5)
        sim.by_body[S.canonical_json(cmd.body())] = cmd
        world.execute(S.signed(keyring, cmd))
        oracle.sync(world)
        assert oracle.compare_state(world) == [] and sim.violations == []
        # the store then holds a transfer no one sent: the oracle's replay names its body
        stray = _transfer(2, 3)
        world.execute(S.signed(keyring, stray))
        oracle.sync(world)
        assert any("a body the simulator never sent" in v for v in sim.violations)
        problems = oracle.compare_state(world)
        assert any(p.startswith("ticket/FF-0000001") for p in problems), problems
    finally:
        oracle.close()


def test_a_failing_seed_prints_how_to_rerun_it(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    def failing(seed: int, store: str, *args: object, **kwargs: object) -> S.Result:
        result = S.Result(seed, store, [1], violations=["acknowledged x is recorded 0 times"])
        result.counts = {"commands": 3, "acked": 2}
        return result

    monkeypatch.setattr(S, "run_seed", failing)
    assert S.main(["--seed", "4242", "--seeds", "1", "--store", "sqlite"]) == 1
    out = capsys.readouterr().out
    assert "seed 4242 sqlite" in out and "VIOLATION (1): acknowledged x" in out
    assert "rerun: ops/sim --seed 4242 --store sqlite -v" in out
    assert "total: 1 runs, 1 with violations" in out


# Real servers ------------------------------------------------------------------------------------

def _report(result: S.Result) -> str:
    return result.line() + "".join(f"\n  {v}" for v in result.violations[:10])


def test_a_known_hole_is_reported_apart_only_when_tolerated(tmp_path: Path) -> None:
    strict = S.Simulation(1, "sqlite", tmp_path / "a")
    # (no hole is known today: the mechanism is tested with the one issue 18 closed)
    tolerant = S.Simulation(1, "sqlite", tmp_path / "b", tolerate=frozenset({"stale_refusal"}))
    for sim in (strict, tolerant):
        sim.violation("x was refused; the oracle accepts it", "stale_refusal")
        sim.violation("acknowledged y is recorded 0 times")
    assert len(strict.violations) == 2 and strict.known == []
    assert tolerant.violations == ["acknowledged y is recorded 0 times"]
    assert tolerant.known == ["[stale_refusal] x was refused; the oracle accepts it"]


def test_a_seed_on_sqlite_with_a_full_disk_failing_fsyncs_and_kills() -> None:
    result = S.run_seed(SQLITE_SEED, "sqlite", STEPS, BUDGET_S, tolerate=TOLERATE)
    print(result.line())
    assert result.ok, _report(result)
    assert result.counts["acked"] >= 10 and result.counts["reads"] >= 5
    assert result.faults.get("kill_worker", 0) >= 1
    assert result.faults.get("kill_server", 0) >= 1
    for fault in ("disk_full", "fsync_fail"):
        assert result.faults.get(fault, 0) >= 1 or fault in result.skipped, result.faults
    if not result.skipped:  # the faults bit: writes were refused with 503 while they lasted
        assert result.counts["fault_5xx"] >= 2, result.counts


def _postgres_or_skip() -> None:
    try:
        import psycopg

        psycopg.connect(S.PG_ADMIN_URL, connect_timeout=3).close()
    except Exception as e:  # noqa: BLE001
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL is required under CI=true: {e}")
        pytest.skip(f"no PostgreSQL at {S.PG_ADMIN_URL}")


def test_a_seed_on_postgres_with_two_servers_and_dropped_connections() -> None:
    _postgres_or_skip()
    result = S.run_seed(PG_SEED, "postgres", STEPS, BUDGET_S, tolerate=TOLERATE)
    print(result.line())
    assert result.ok, _report(result)
    assert result.workers == [2, 2]
    assert result.faults.get("pg_kill", 0) >= 1 and result.faults.get("kill_worker", 0) >= 1
    assert result.counts["acked"] >= 10


def test_a_command_that_keeps_conflicting_is_a_violation(world: S.Registry, keyring: Keyring,
                                                        tmp_path: Path) -> None:
    """409 conflict is retried, as the API tells clients to, but not for ever: a command that is
    never decided is a liveness violation (it found a planted idempotency bug this way).
    (`world` made the participants' keys.)"""
    import httpx

    answers = []

    def always_conflict(request: httpx.Request) -> httpx.Response:
        answers.append(request.url.path)
        return httpx.Response(409, json={"code": "conflict", "detail": "kept conflicting"})

    sim = _simulation(tmp_path, keyring)
    sim.deadline = S.time.monotonic() + 30
    server = S.Server(0, "sqlite:///unused", tmp_path, 1, tmp_path / "log", {})
    server.http = httpx.Client(base_url="http://sim.invalid",
                               transport=httpx.MockTransport(always_conflict))
    answer = sim._send(_transfer(1), server)
    assert answer.status is None and answer.conflicts == S.MAX_CONFLICTS
    assert len(answers) == S.MAX_CONFLICTS
    assert sim.violations == [f"t/1 (transfer) was answered 409 conflict {S.MAX_CONFLICTS} "
                              "times in a row"]
