"""The state machine of test_workers_decide_as_one: random dependent sequences through several
workers and hosts must answer exactly as one registry.

It sends commands and signed reads, each to a randomly chosen worker of
real `carbon-ledger serve` processes, and the very same request (the same bytes, signatures
and all) to a single registry in this process behind the same app (the oracle). Every answer
must be the same: status, problem code and detail, outcome or view, with log positions counted
from where the example began (the server's and the oracle's logs are the same length as long
as they agree) and wall-clock times left out. Any difference fails with the sequence.

Each example makes a world of its own with fresh ids (participants, projects, tickets …), so
the servers are started once and examples need no fresh database.

Most steps use what the steps before created, right away and through another worker: register
and then act as the new participant, issue and then trade the new ticket, bind a policy and
then claim on it. Some are meant to be refused (a claim on a policy not bound yet, more tonnes
than held, the wrong actor), and some resend an earlier write byte for byte (a replay).
"""

from __future__ import annotations

import itertools
import secrets
from collections import Counter
from typing import Any

from _multi import Answer, Cluster, Oracle, Wire  # type: ignore[import-not-found]
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from ledger.keys import generate, public_text

WALL_CLOCK = frozenset({"time", "valid_from"})  # times stamped by whichever process wrote
POSITIONS = frozenset({"position", "record", "as_of", "valid_from_position",
                       "valid_to_position", "x-log-position"})


def normal(value: Any, base: int) -> Any:
    """`value` with wall-clock times left out and log positions counted from `base`."""
    if isinstance(value, dict):
        return {k: (v - base if k in POSITIONS and isinstance(v, int) else normal(v, base))
                for k, v in value.items() if k not in WALL_CLOCK}
    if isinstance(value, list):
        return [normal(v, base) for v in value]
    return value


def comparable(answer: Answer, base: int) -> tuple[int, Any, Any]:
    position = answer.headers.get("x-log-position")
    return (answer.status, normal(answer.body, base),
            int(position) - base if position is not None else None)


class Workers(RuleBasedStateMachine):
    """One example: a world of its own, driven through the cluster and the oracle at once."""

    cluster: Cluster
    oracle: Oracle
    serial = itertools.count()
    seen: Counter[str] = Counter()  # answers by kind, over every example (the test checks them)

    def __init__(self) -> None:
        super().__init__()
        self.tag = f"w{next(self.serial)}{secrets.token_hex(2)}"
        self.seen["sequences"] += 1
        self.n = 0
        self.keys: dict[str, Ed25519PrivateKey] = {"registry": self.cluster.operator_key}
        self.roles: dict[str, str] = {}
        self.projects: list[str] = []
        self.tickets: list[str] = []
        self.pledges: list[str] = []
        self.policies: list[str] = []
        self.claims: list[str] = []
        self.writes: list[Wire] = []
        self.steps: list[str] = []
        # the logs' lengths now: positions in answers are compared from these
        self.server_base = int(self.cluster.channels[0].http.get("/healthz").json()["position"])
        self.oracle_base = self.oracle.registry.log_position()

    # Sending ----------------------------------------------------------------------------------

    def send(self, channel: int, wire: Wire) -> Answer:
        server = self.cluster.channels[channel % len(self.cluster.channels)].send(wire)
        oracle = self.oracle.send(wire)
        self.steps.append(f"{wire.label} -> {server.worker}: {server.status} {server.code or ''}")
        note(self.steps[-1])
        got, expected = comparable(server, self.server_base), comparable(oracle, self.oracle_base)
        assert got == expected, (
            f"{wire.label} answered by worker {server.worker} differs from one registry:\n"
            f"  workers: {got}\n  one:     {expected}\nthe sequence:\n  " + "\n  ".join(self.steps))
        kind = "read" if wire.body is None else "write"
        self.seen[f"{kind} {'ok' if server.status < 300 else 'refused'}"] += 1
        self.seen[f"code {wire.label.split()[0]} {server.code}"] += 1
        self.seen[f"by {server.worker}"] += 1
        if wire.body is not None:
            self.writes.append(wire)
        return oracle

    def command(self, channel: int, actor: str, name: str, args: dict[str, Any],
                consents: list[Ed25519PrivateKey] | None = None) -> Answer:
        self.n += 1
        key = self.keys.get(actor) or generate()  # a stranger signs with a key of its own
        return self.send(channel, Wire.write(key, actor, name, args,
                                             f"{self.tag}/{self.n}/{name}", consents))

    def id(self, kind: str) -> str:
        self.n += 1
        return f"{kind}-{self.tag}-{self.n}"

    def of(self, role: str) -> list[str]:
        return [p for p, r in self.roles.items() if r == role]

    def holder_of(self, data: st.DataObject, ticket: str) -> str:
        """Mostly a holder with available units of `ticket` (as the oracle has them now)."""
        held = self.oracle.registry.projection().tickets.get(ticket)
        having = sorted({b[2] for b in held.blocks if b[3] == "available"} & set(self.roles)
                        if held is not None else ())
        if having and data.draw(st.integers(0, 9)) < 8:
            return data.draw(st.sampled_from(having))
        return data.draw(st.sampled_from(self.of("holder")))

    def register(self, channel: int, role: str) -> str:
        pid = f"{self.tag}-{role[:4]}{self.n + 1}"
        self.keys[pid] = generate()
        if self.command(channel, "registry", "register_participant", {
                "participant_id": pid, "name": pid, "role": role,
                "public_key": public_text(self.keys[pid])}).status < 300:
            self.roles[pid] = role
        return pid

    # The world every example starts with, itself sent through random workers ---------------------

    @initialize(channels=st.lists(st.integers(0, 5), min_size=12, max_size=12),
                quantity_t=st.integers(20, 80))
    def cast(self, channels: list[int], quantity_t: int) -> None:
        """Every role, a ticket for the first holder and both holders' mandates, each step
        through a worker of its own drawing, and each depending on the ones before."""
        way = iter(channels)
        issuer, exchange, first, second, *_ = (self.register(next(way), role) for role in [
            "issuer", "exchange", "holder", "holder", "insurer", "bank", "regulator"])
        self.issue(next(way), issuer, first, quantity_t)
        for holder in (first, second):
            self.command(next(way), holder, "grant_mandate", {"holder": holder,
                                                              "exchange": exchange})

    def issue(self, channel: int, issuer: str, owner: str, quantity_t: int) -> None:
        """Register a project and, through the next worker, issue its ticket at once."""
        project = self.id("P")
        self.command(channel, issuer, "register_project", {
            "project_id": project, "name": "forest", "owner": owner, "county": "c",
            "area_mu": 10, "standard": "SMCER"})
        ticket = f"T{self.tag.upper()}{self.n}-0000001"
        answer = self.command(channel + 1, issuer, "issue_ticket", {
            "ticket_no": ticket, "project_id": project, "standard": "SMCER",
            "period_start": "2020-01-01", "period_end": "2020-12-31", "quantity_t": quantity_t})
        if answer.status < 300:
            self.tickets.append(ticket)

    # Rules ----------------------------------------------------------------------------------------

    @rule(channel=st.integers(0, 5),
          role=st.sampled_from(["holder", "holder", "exchange", "regulator", "bank", "insurer"]))
    def register_participant(self, channel: int, role: str) -> None:
        self.register(channel, role)

    @rule(channel=st.integers(0, 5), data=st.data())
    def project_and_ticket(self, channel: int, data: st.DataObject) -> None:
        self.issue(channel, data.draw(st.sampled_from(self.of("issuer"))),
                   data.draw(st.sampled_from(self.of("holder"))), data.draw(st.integers(1, 60)))

    @rule(channel=st.integers(0, 5), data=st.data())
    def grant_mandate(self, channel: int, data: st.DataObject) -> None:
        holder = data.draw(st.sampled_from(self.of("holder")))
        exchange = data.draw(st.sampled_from(self.of("exchange")))
        self.command(channel, holder, "grant_mandate", {"holder": holder, "exchange": exchange})

    @precondition(lambda self: self.tickets)
    @rule(channel=st.integers(0, 5), data=st.data())
    def transfer(self, channel: int, data: st.DataObject) -> None:
        ticket = data.draw(st.sampled_from(self.tickets))
        seller = self.holder_of(data, ticket)
        buyer = data.draw(st.sampled_from([h for h in self.of("holder") if h != seller]))
        self.command(channel, data.draw(st.sampled_from(self.of("exchange"))), "transfer", {
            "trade_id": self.id("T"), "seller": seller, "buyer": buyer, "ticket_no": ticket,
            "quantity_t": data.draw(st.integers(1, 30)), "price": "10.00", "mode": "negotiated"})

    @precondition(lambda self: self.tickets)
    @rule(channel=st.integers(0, 5), data=st.data())
    def pledge(self, channel: int, data: st.DataObject) -> None:
        ticket = data.draw(st.sampled_from(self.tickets))
        pledgor = self.holder_of(data, ticket)
        pledge_id = self.id("PL")
        answer = self.command(channel, data.draw(st.sampled_from(self.of("bank"))), "pledge", {
            "pledge_id": pledge_id, "pledgor": pledgor, "loan_ref": "L-1",
            "secured_amount": "100.00", "maturity": "2030-12-31",
            "lines": [{"ticket_no": ticket, "quantity_t": data.draw(st.integers(1, 30))}]},
            consents=[self.keys[pledgor]])
        if answer.status < 300:
            self.pledges.append(pledge_id)

    @precondition(lambda self: self.pledges)
    @rule(channel=st.integers(0, 5), data=st.data())
    def release_pledge(self, channel: int, data: st.DataObject) -> None:
        self.command(channel, data.draw(st.sampled_from(self.of("bank"))), "release_pledge",
                     {"pledge_id": data.draw(st.sampled_from(self.pledges))})

    @precondition(lambda self: self.tickets)
    @rule(channel=st.integers(0, 5), data=st.data())
    def bind_policy_then_claim(self, channel: int, data: st.DataObject) -> None:
        """Bind a policy, and file a claim on it through another worker at once."""
        ticket = data.draw(st.sampled_from(self.tickets))
        insured = self.holder_of(data, ticket)
        policy = self.id("POL")
        answer = self.command(channel, data.draw(st.sampled_from(self.of("insurer"))),
                              "bind_policy", {
            "policy_id": policy, "insured": insured, "sum_insured": "1000.00",
            "premium": "10.00", "start": "2020-01-01", "end": "2030-12-31", "perils": ["fire"],
            "lines": [{"ticket_no": ticket, "quantity_t": data.draw(st.integers(1, 30))}]})
        if answer.status < 300:
            self.policies.append(policy)
        self.file_claim(channel + 1, insured, policy, data.draw(st.integers(1, 10)))

    @precondition(lambda self: self.policies)
    @rule(channel=st.integers(0, 5), data=st.data())
    def claim_on_any_policy(self, channel: int, data: st.DataObject) -> None:
        """A claim on a policy bound or not (yet): unknown_policy on both, or filed on both."""
        policy = data.draw(st.sampled_from([*self.policies, f"POL-{self.tag}-{self.n + 2}"]))
        self.file_claim(channel, data.draw(st.sampled_from(self.of("holder"))), policy,
                        data.draw(st.integers(1, 10)))

    def file_claim(self, channel: int, claimant: str, policy: str, claimed_t: int) -> None:
        claim = self.id("CLM")
        answer = self.command(channel, claimant, "file_claim", {
            "claim_id": claim, "policy_id": policy, "peril": "fire", "loss_date": "2022-03-14",
            "claimed_t": claimed_t, "description": "fire"})
        if answer.status < 300:
            self.claims.append(claim)

    @precondition(lambda self: self.claims)
    @rule(channel=st.integers(0, 5), data=st.data())
    def approve_claim(self, channel: int, data: st.DataObject) -> None:
        self.command(channel, data.draw(st.sampled_from(self.of("insurer"))), "approve_claim", {
            "claim_id": data.draw(st.sampled_from(self.claims)),
            "approved_t": data.draw(st.integers(1, 10)), "payout": "10.00"})

    @precondition(lambda self: self.tickets)
    @rule(channel=st.integers(0, 5), data=st.data())
    def retire(self, channel: int, data: st.DataObject) -> None:
        ticket = data.draw(st.sampled_from(self.tickets))
        holder = self.holder_of(data, ticket)
        self.command(channel, holder, "retire", {
            "retirement_id": self.id("RT"), "purpose": "voluntary", "beneficiary": holder,
            "lines": [{"ticket_no": ticket, "quantity_t": data.draw(st.integers(1, 20))}]})

    @rule(channel=st.integers(0, 5), data=st.data(), freeze=st.booleans())
    def freeze_or_unfreeze(self, channel: int, data: st.DataObject, freeze: bool) -> None:
        regulators = self.of("regulator") or ["nobody"]
        by = data.draw(st.sampled_from(regulators))
        holder = data.draw(st.sampled_from(self.of("holder")))
        args = {"holder": holder, "reason": "inquiry"} if freeze else {"holder": holder}
        self.command(channel, by, "freeze" if freeze else "unfreeze", args)

    @rule(channel=st.integers(0, 5), data=st.data())
    def wrong_actor(self, channel: int, data: st.DataObject) -> None:
        """A command by someone who may not give it (or who is not registered)."""
        actor = data.draw(st.sampled_from([*self.roles, f"{self.tag}-ghost"]))
        self.command(channel, actor, "issue_ticket", {
            "ticket_no": f"X{self.tag.upper()}{self.n}-0000001", "project_id": "P-none",
            "standard": "SMCER", "period_start": "2020-01-01", "period_end": "2020-12-31",
            "quantity_t": 1})

    @precondition(lambda self: self.writes)
    @rule(channel=st.integers(0, 5), data=st.data())
    def replay(self, channel: int, data: st.DataObject) -> None:
        """An earlier write, byte for byte, to any worker."""
        answer = self.send(channel, data.draw(st.sampled_from(self.writes)))
        self.seen[f"replay {answer.code or answer.status}"] += 1

    @rule(channel=st.integers(0, 5), data=st.data())
    def read_balances(self, channel: int, data: st.DataObject) -> None:
        holder = data.draw(st.sampled_from(self.of("holder")))
        reader = data.draw(st.sampled_from([holder, *self.of("exchange"), *self.of("bank")]))
        self.send(channel, Wire.read(self.keys[reader], f"/v1/accounts/{holder}/balances",
                                     who=reader))

    @precondition(lambda self: self.policies or self.claims or self.pledges)
    @rule(channel=st.integers(0, 5), data=st.data())
    def read_insurance_or_pledge(self, channel: int, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(
            [f"/v1/policies/{p}" for p in self.policies] + [f"/v1/claims/{c}" for c in self.claims]
            + [f"/v1/pledges/{p}" for p in self.pledges]))
        reader = data.draw(st.sampled_from(list(self.roles)))
        self.send(channel, Wire.read(self.keys[reader], path, who=reader))

    @precondition(lambda self: self.tickets)
    @rule(channel=st.integers(0, 5), data=st.data())
    def read_ticket(self, channel: int, data: st.DataObject) -> None:
        self.send(channel, Wire.read(None, f"/v1/tickets/{data.draw(st.sampled_from(self.tickets))}"))
