"""Several workers and hosts of one registry decide exactly as one (issue 18).

On SQLite: one server with 2 workers. On PostgreSQL: two servers on one database, on different
ports (two hosts), one with 2 workers and one with 1. The servers are started once per store.

A worker decides a command against its own in-memory state, and when it wrote last (or has just
caught up) it does so without asking the database what is new. A wrong "yes" from a state that
is behind is caught at commit by the version checks; these tests hold the other half: a
refusal is only reported once it holds at the database's head, so a command that depends on
one acknowledged by another worker (or host) is never refused for not seeing it.

- The dependent story: register (issuer, holders, exchange, insurer) -> register a project ->
  issue -> mandate -> transfer -> bind a policy -> file a claim -> read it, each step through
  another worker than the step before. STORY_RUNS=50 runs it 50 times in a row on each store.
- A refused request resent byte for byte once it would be accepted: a replay, on any worker.
- A hypothesis state machine (tests/e2e/_workers_machine.py) sends random dependent commands
  and signed reads, each to a randomly chosen worker, and the same requests to one registry in
  this process; every answer must be the same. WORKERS_EXAMPLES sequences per store.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from _multi import Answer, Channel, Cluster, Oracle, Wire, database  # type: ignore[import-not-found]
from _workers_machine import Workers  # type: ignore[import-not-found]
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, settings

from ledger.keys import generate, public_text

pytestmark = pytest.mark.slow

# The suite runs the story this many times per store; STORY_RUNS=50 is the hand-run loop.
STORY_RUNS = int(os.environ.get("STORY_RUNS", "8"))
# Sequences per store (>= 200 per run in total) and steps per sequence (after its setup).
EXAMPLES = int(os.environ.get("WORKERS_EXAMPLES", "100"))
STEPS = int(os.environ.get("WORKERS_STEPS", "10"))

HOSTS = {"sqlite": (2,), "postgres": (2, 1)}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def servers(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Oracle]]:
    """The servers of one store, initialised, and the oracle (initialised the same way)."""
    root = tmp_path_factory.mktemp(f"workers-{request.param}")
    cluster = Cluster(database(request, root), root, HOSTS[request.param]).start()
    oracle = Oracle()
    try:
        cluster.initialise(oracle)
        yield cluster, oracle
    finally:
        oracle.close()
        cluster.stop()


@pytest.fixture
def cluster(servers: tuple[Cluster, Oracle]) -> Cluster:
    """The servers alone (the story and the replay are checked by what they must answer)."""
    return servers[0]


class Story:
    """One run of the dependent story, with ids of its own (`tag`)."""

    def __init__(self, cluster: Cluster, tag: str) -> None:
        self.cluster = cluster
        self.tag = tag
        self.keys: dict[str, Ed25519PrivateKey] = {}
        self.answers: list[tuple[str, Answer]] = []

    def pid(self, role: str) -> str:
        return f"{self.tag}-{role}"

    def send(self, channel: Channel, wire: Wire) -> Answer:
        answer = channel.send(wire)
        self.answers.append((wire.label, answer))
        return answer

    def command(self, channel: Channel, actor: str, name: str, args: dict[str, Any],
                consents: list[Ed25519PrivateKey] | None = None) -> Answer:
        key = self.cluster.operator_key if actor == "registry" else self.keys[actor]
        return self.send(channel, Wire.write(key, actor, name, args,
                                             f"{self.tag}/{name}/{len(self.answers)}", consents))

    def steps(self) -> Iterator[tuple[str, Any]]:
        """(what, a function of the channel to use) for each dependent step."""
        ticket = f"S{self.tag.upper()}-0000001"
        issuer, seller, buyer = self.pid("issuer"), self.pid("seller"), self.pid("buyer")
        exchange, insurer = self.pid("exchange"), self.pid("insurer")
        for who, role in [(issuer, "issuer"), (seller, "holder"), (buyer, "holder"),
                          (exchange, "exchange"), (insurer, "insurer")]:
            self.keys[who] = generate()
            yield f"register {who}", lambda ch, who=who, role=role: self.command(
                ch, "registry", "register_participant", {
                    "participant_id": who, "name": who, "role": role,
                    "public_key": public_text(self.keys[who])})
            if role == "holder" and who == buyer:  # a signed read by a key just registered
                yield f"{who} reads its balances", lambda ch, who=who: self.send(ch, Wire.read(
                    self.keys[who], f"/v1/accounts/{who}/balances", who=who))
        project = f"P-{self.tag}"
        yield "register_project", lambda ch: self.command(ch, issuer, "register_project", {
            "project_id": project, "name": "forest", "owner": seller, "county": "test county",
            "area_mu": 100, "standard": "SMCER"})
        yield "issue_ticket", lambda ch: self.command(ch, issuer, "issue_ticket", {
            "ticket_no": ticket, "project_id": project, "standard": "SMCER",
            "period_start": "2020-01-01", "period_end": "2022-12-31", "quantity_t": 50})
        yield "grant_mandate", lambda ch: self.command(ch, seller, "grant_mandate", {
            "holder": seller, "exchange": exchange})
        yield "transfer", lambda ch: self.command(ch, exchange, "transfer", {
            "trade_id": f"T-{self.tag}", "seller": seller, "buyer": buyer, "ticket_no": ticket,
            "quantity_t": 20, "price": "12.00", "mode": "negotiated"})
        yield "bind_policy", lambda ch: self.command(ch, insurer, "bind_policy", {
            "policy_id": f"POL-{self.tag}", "insured": buyer,
            "lines": [{"ticket_no": ticket, "quantity_t": 20}], "sum_insured": "2000.00",
            "premium": "40.00", "start": "2021-01-01", "end": "2030-12-31",
            "perils": ["fire"]})
        yield "file_claim", lambda ch: self.command(ch, buyer, "file_claim", {
            "claim_id": f"CLM-{self.tag}", "policy_id": f"POL-{self.tag}", "peril": "fire",
            "loss_date": "2022-03-14", "claimed_t": 5, "description": "fire"})
        yield "read the claim", lambda ch: self.send(ch, Wire.read(
            self.keys[insurer], f"/v1/claims/CLM-{self.tag}", who=insurer))
        yield "read the buyer's balances", lambda ch: self.send(ch, Wire.read(
            self.keys[buyer], f"/v1/accounts/{buyer}/balances", who=buyer))


def _run_story(cluster: Cluster, tag: str, until: str | None = None) -> Story:
    """Run the story's steps (up to the one named `until`, not included)."""
    story = Story(cluster, tag)
    channels = cluster.channels
    for i, (what, step) in enumerate(story.steps()):
        if what == until:
            break
        answer = step(channels[i % len(channels)])
        assert answer.status < 300, (
            f"run {tag}: step {i} ({what}) was refused {answer.status} {answer.code}: "
            f"{answer.body.get('detail')}; the steps: "
            f"{[(label, a.status, a.code, a.worker) for label, a in story.answers]}")
    return story


def test_a_dependent_story_through_alternating_workers(cluster: Cluster) -> None:
    """Every step succeeds, and the steps were answered by every worker in turn."""
    for run in range(STORY_RUNS):
        story = _run_story(cluster, f"r{run}{secrets.token_hex(3)}")
        served = [a.worker for _, a in story.answers]
        assert len(set(served)) == len(cluster.channels), served
        turns = sum(1 for a, b in zip(served, served[1:], strict=False) if a != b)
        assert turns >= len(served) - 3, served  # alternating (bar a reconnected channel)
        claim = story.answers[-2][1].body
        assert claim["status"] == "pending" and claim["claimed_t"] == 5, claim
        balances = story.answers[-1][1].body
        assert balances["totals"]["available_t"] == 20, balances


def test_a_refused_request_sent_again_after_the_state_changed_is_a_replay(
        cluster: Cluster) -> None:
    """The very same bytes, refused 422, then resent to either worker once they would be
    accepted: 401 replay, nothing written (issue 19, item 5). Signed anew, the command goes."""
    story = _run_story(cluster, f"x{secrets.token_hex(3)}", until="transfer")
    first, second = cluster.channels[:2]
    seller, buyer, exchange = story.pid("seller"), story.pid("buyer"), story.pid("exchange")
    ticket = f"S{story.tag.upper()}-0000001"
    grant = story.command(first, buyer, "grant_mandate", {"holder": buyer, "exchange": exchange})
    assert grant.status == 201, grant
    args = {"trade_id": f"BACK-{story.tag}", "seller": buyer, "buyer": seller,
            "ticket_no": ticket, "quantity_t": 10, "price": "9.00", "mode": "negotiated"}
    request = Wire.write(story.keys[exchange], exchange, "transfer", args,
                         f"trade/{exchange}/BACK-{story.tag}")
    refused = first.send(request)
    assert (refused.status, refused.code) == (422, "insufficient_available"), refused
    moved = story.command(second, exchange, "transfer", {
        "trade_id": f"T-{story.tag}", "seller": seller, "buyer": buyer, "ticket_no": ticket,
        "quantity_t": 20, "price": "12.00", "mode": "negotiated"})
    assert moved.status == 201, moved  # the buyer now has 20 t: the request would be accepted
    position = int(moved.headers["x-log-position"])
    for channel in (*cluster.channels[1:], first):  # every worker, on every host
        again = channel.send(request)
        assert (again.status, again.code) == (401, "replay"), again
    signed_anew = Wire.write(story.keys[exchange], exchange, "transfer", args,
                             f"trade/{exchange}/BACK-{story.tag}")
    accepted = second.send(signed_anew)
    assert accepted.status == 201, accepted
    assert int(accepted.headers["x-log-position"]) > position
    assert (accepted.body["seller"], accepted.body["quantity_t"]) == (buyer, 10)


def test_workers_and_hosts_answer_as_one_registry(servers: tuple[Cluster, Oracle]) -> None:
    cluster, oracle = servers
    Workers.cluster, Workers.oracle = cluster, oracle
    Workers.seen.clear()
    run = Workers.TestCase
    run.settings = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                            suppress_health_check=list(HealthCheck), database=None)
    run("runTest").runTest()
    seen = Workers.seen
    print(f"\n{cluster.db.split(':')[0]}: {dict(sorted(seen.items()))}")
    # The sequences did what they are for: most writes went through (each one depending on
    # earlier ones), some were refused, replays were refused, and every worker answered.
    assert seen["sequences"] >= EXAMPLES, seen
    writes = seen["write ok"] + seen["write refused"]
    assert seen["write ok"] > writes * 0.4 and seen["write refused"] > writes * 0.05, seen
    assert seen["read ok"] and seen["replay replay"], seen
    assert len([k for k in seen if k.startswith("by ")]) == len(cluster.channels), seen
