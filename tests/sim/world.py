"""The simulator's world and its command generators (no I/O beyond the registries given).

One small registry with every role and three contended tickets, small enough that random
commands collide: transfers of the same serials, pledges of units another command moves,
compliance retirements racing for the last tonnes under a cap, freezes of sellers. Every
generator reads a planning registry's state and returns a command that is usually valid and
sometimes not (so that refusals are exercised too): the plan is a function of the seed alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from domain.ticket import AVAILABLE

OPERATOR = "registry"
ISSUER = "sim-forestry"
REGULATOR = "sim-eco"
COURT = "sim-court"
EXCHANGE = "sim-exchange"
BANK = "sim-bank"
BANK2 = "sim-bank-2"
INSURER = "sim-insurer"
EMITTER = "sim-emitter"  # a holder with a compliance account
HOLDERS = ["sim-h1", "sim-h2", "sim-h3", "sim-h4"]
SELLERS = [*HOLDERS, EMITTER, BANK]  # every account that mandated the exchange
FREEZERS = (REGULATOR, COURT)
SCHEME, PERIOD = "fujian_ets", "2024"
EMISSIONS_T = 400  # fujian_ets defaults: FFCER <= 40 t, CCER <= 20 t, all offsets <= 40 t

TICKETS = {"SMCER": "SM-0000001", "FFCER": "FF-0000001", "CCER": "CC-0000001"}
QUANTITY = {"SMCER": 60, "FFCER": 240, "CCER": 120}
OWNER = {"SMCER": HOLDERS[0], "FFCER": HOLDERS[1], "CCER": HOLDERS[2]}
SPREAD = {"SMCER": 10, "FFCER": 30, "CCER": 15}  # to every other holder
EMITTER_T = {"FFCER": 50, "CCER": 30}

ROLES = [(ISSUER, "issuer"), (REGULATOR, "regulator"), (COURT, "court"), (EXCHANGE, "exchange"),
         (BANK, "bank"), (BANK2, "bank"), (INSURER, "insurer"), (EMITTER, "holder"),
         *((h, "holder") for h in HOLDERS)]


@dataclass(frozen=True)
class Cmd:
    """One command as the simulator sends it: the body's fields and whose consents it carries."""

    command_id: str
    name: str
    actor: str
    args: dict[str, Any]
    consents: tuple[str, ...] = ()

    def body(self) -> dict[str, Any]:
        return {"command": self.name, "actor": self.actor, "command_id": self.command_id,
                "args": self.args}

    def to_json(self) -> dict[str, Any]:
        return {"command_id": self.command_id, "name": self.name, "actor": self.actor,
                "args": self.args, "consents": list(self.consents)}


def setup_commands() -> list[Cmd]:
    """The world, in order: participants, mandates, projects and tickets, spread, emissions."""
    out: list[Cmd] = []

    def add(name: str, actor: str, args: dict[str, Any]) -> None:
        out.append(Cmd(f"setup/{len(out):03d}/{name}", name, actor, args))

    add("initialise", OPERATOR, {"origin": "carbon-ledger.sim/registry", "operator_id": OPERATOR,
                                 "name": "sim operator"})
    for pid, role in ROLES:
        add("register_participant", OPERATOR, {"participant_id": pid, "name": pid, "role": role})
    for holder in SELLERS:
        add("grant_mandate", holder, {"holder": holder, "exchange": EXCHANGE})
    for standard, ticket_no in TICKETS.items():
        project = f"P-{standard}"
        add("register_project", ISSUER, {
            "project_id": project, "name": f"{standard} forest", "owner": OWNER[standard],
            "county": "sim county", "area_mu": "1000", "standard": standard})
        add("issue_ticket", ISSUER, {
            "ticket_no": ticket_no, "project_id": project, "standard": standard,
            "period_start": "2021-01-01", "period_end": "2023-12-31",
            "quantity_t": QUANTITY[standard]})
        receivers = [(h, SPREAD[standard]) for h in HOLDERS if h != OWNER[standard]]
        receivers.append((EMITTER, EMITTER_T.get(standard, 0)))
        for buyer, q in receivers:
            if q:
                add("transfer", EXCHANGE, {
                    "trade_id": f"SETUP-{ticket_no}-{buyer}", "seller": OWNER[standard],
                    "buyer": buyer, "ticket_no": ticket_no, "quantity_t": q, "price": "10.00",
                    "mode": "negotiated"})
    add("record_emissions", REGULATOR, {"entity": EMITTER, "scheme": SCHEME, "period": PERIOD,
                                        "verified_emissions_t": EMISSIONS_T})
    return out


# Generators ---------------------------------------------------------------------------------------

def _serial(ticket_no: str, n: int) -> str:
    return f"{ticket_no}-{n:07d}"


def _available(projection: Any, holders: list[str]) -> list[tuple[str, int, int, str]]:
    out = []
    for ticket_no in TICKETS.values():
        ticket = projection.tickets.get(ticket_no)
        for first, last, holder, state, _ref in (ticket.blocks if ticket else []):
            if state == AVAILABLE and holder in holders:
                out.append((ticket_no, first, last, holder))
    return out


def _range(rng: random.Random, block: tuple[str, int, int, str]) -> tuple[str, str]:
    ticket_no, first, last, _ = block
    start = first if rng.random() < 0.7 else rng.randint(first, last)  # collide on purpose
    end = min(last, start + rng.randint(0, 4))
    return _serial(ticket_no, start), _serial(ticket_no, end)


@dataclass
class Generator:
    """Random commands over a planning registry's state; ids are unique per plan."""

    rng: random.Random
    tag: str
    n: int = 0
    trade_ids: list[str] = field(default_factory=list)
    sent: list[Cmd] = field(default_factory=list)

    def _id(self, name: str) -> str:
        self.n += 1
        return f"sim/{self.tag}/{self.n:03d}/{name}"

    def next(self, projection: Any) -> Cmd:
        roll = self.rng.random()
        for threshold, make in self.TABLE:
            if roll < threshold:
                made = make(self, projection)
                if made is not None:
                    self.sent.append(made)
                    return made
                break
        made = self.freeze(projection)
        self.sent.append(made)
        return made

    def transfer(self, projection: Any) -> Cmd | None:
        blocks = _available(projection, SELLERS)
        if not blocks:
            return None
        block = min(blocks) if self.rng.random() < 0.5 else self.rng.choice(blocks)
        buyer = self.rng.choice([h for h in [*HOLDERS, EMITTER, BANK] if h != block[3]])
        trade_id = f"T-{self.tag}-{self.n + 1:03d}"
        args: dict[str, Any] = {"trade_id": trade_id, "seller": block[3], "buyer": buyer,
                                "ticket_no": block[0], "price": "12.50", "mode": "negotiated"}
        if self.rng.random() < 0.6:
            args["first_serial"], args["last_serial"] = _range(self.rng, block)
        else:
            args["quantity_t"] = self.rng.randint(1, 6)
        self.trade_ids.append(trade_id)
        return Cmd(self._id("transfer"), "transfer", EXCHANGE, args)

    def batch(self, projection: Any) -> Cmd | None:
        items = []
        for i in range(self.rng.randint(2, 4)):
            seller, buyer = self.rng.sample([*HOLDERS, EMITTER], 2)
            items.append({"trade_id": f"B-{self.tag}-{self.n + 1:03d}-{i}", "seller": seller,
                          "buyer": buyer, "ticket_no": self.rng.choice(list(TICKETS.values())),
                          "quantity_t": self.rng.randint(1, 4), "price": "9.00",
                          "mode": "listing"})
        return Cmd(self._id("settle_batch"), "settle_batch", EXCHANGE,
                   {"batch_id": f"BATCH-{self.tag}-{self.n + 1:03d}", "transfers": items})

    def pledge(self, projection: Any) -> Cmd | None:
        blocks = _available(projection, [*HOLDERS, EMITTER])
        if not blocks:
            return None
        block = self.rng.choice(blocks)
        first, last = _range(self.rng, block)
        bank = self.rng.choice([BANK, BANK2])
        line: dict[str, Any] = {"ticket_no": block[0]}
        if self.rng.random() < 0.7:
            line.update(first_serial=first, last_serial=last)
        else:
            line["quantity_t"] = self.rng.randint(1, 5)
        pledge_id = f"PL-{self.tag}-{self.n + 1:03d}"
        return Cmd(self._id("pledge"), "pledge", bank, {
            "pledge_id": pledge_id, "pledgor": block[3], "loan_ref": f"LOAN-{pledge_id}",
            "secured_amount": "5000.00", "maturity": "2030-06-30", "lines": [line]},
            consents=(block[3],))

    def release_or_enforce(self, projection: Any) -> Cmd | None:
        active = sorted((p for p in projection.pledges.values() if p.status == "active"),
                        key=lambda p: p.pledge_id)
        if not active:
            return None
        p = self.rng.choice(active)
        roll = self.rng.random()
        if roll < 0.55:
            args: dict[str, Any] = {"pledge_id": p.pledge_id}
            if p.held and self.rng.random() < 0.4:
                args["lines"] = [{"ticket_no": sorted(p.held)[0], "quantity_t": 1}]
            return Cmd(self._id("release_pledge"), "release_pledge", p.pledgee, args)
        args = {"pledge_id": p.pledge_id}
        if self.rng.random() < 0.5:
            args["to"] = self.rng.choice(HOLDERS)
        return Cmd(self._id("enforce_pledge"), "enforce_pledge", p.pledgee, args)

    def retire_compliance(self, projection: Any) -> Cmd | None:
        standards = self.rng.choice([["FFCER"], ["CCER"], ["FFCER", "CCER"]])
        rid = f"RT-{self.tag}-{self.n + 1:03d}"
        return Cmd(self._id("retire"), "retire", EMITTER, {
            "retirement_id": rid, "purpose": "compliance", "beneficiary": EMITTER,
            "lines": [{"ticket_no": TICKETS[s], "quantity_t": self.rng.randint(1, 8)}
                      for s in standards], "scheme": SCHEME, "period": PERIOD})

    def retire_voluntary(self, projection: Any) -> Cmd | None:
        holder = self.rng.choice(HOLDERS)
        rid = f"RV-{self.tag}-{self.n + 1:03d}"
        return Cmd(self._id("retire"), "retire", holder, {
            "retirement_id": rid, "purpose": "voluntary", "beneficiary": f"{holder} 碳中和",
            "lines": [{"ticket_no": self.rng.choice(list(TICKETS.values())),
                       "quantity_t": self.rng.randint(1, 3)}]})

    def emissions(self, projection: Any) -> Cmd | None:
        account = projection.compliance.get((EMITTER, SCHEME, PERIOD))
        now = account.verified_emissions_t if account else EMISSIONS_T
        # Only upwards: a downward revision may leave usage above the new cap (allowed, and
        # then the caps could not be checked on the final state alone).
        return Cmd(self._id("record_emissions"), "record_emissions", REGULATOR, {
            "entity": EMITTER, "scheme": SCHEME, "period": PERIOD,
            "verified_emissions_t": now + self.rng.randint(0, 40)})

    def freeze(self, projection: Any) -> Cmd:
        frozen = sorted((p.participant_id, by) for p in projection.participants.values()
                        for by in p.freezes)
        if frozen and self.rng.random() < 0.6:
            holder, by = self.rng.choice(frozen)
            return Cmd(self._id("unfreeze"), "unfreeze", by, {"holder": holder})
        return Cmd(self._id("freeze"), "freeze", self.rng.choice(FREEZERS), {
            "holder": self.rng.choice([*HOLDERS, EMITTER]), "reason": f"inquiry {self.n + 1}"})

    def cancel(self, projection: Any) -> Cmd | None:
        blocks = _available(projection, [*HOLDERS, EMITTER])
        if not blocks:
            return None
        ticket_no, _first, _last, holder = self.rng.choice(blocks)
        return Cmd(self._id("cancel_units"), "cancel_units", ISSUER, {
            "cancellation_id": f"C-{self.tag}-{self.n + 1:03d}", "ticket_no": ticket_no,
            "holder": holder, "quantity_t": self.rng.randint(1, 2), "reason": "area overstated"})

    def mandate(self, projection: Any) -> Cmd | None:
        holder = self.rng.choice(HOLDERS)
        has = EXCHANGE in projection.participants[holder].mandates
        name = "revoke_mandate" if has and self.rng.random() < 0.7 else "grant_mandate"
        return Cmd(self._id(name), name, holder, {"holder": holder, "exchange": EXCHANGE})

    def wrong(self, projection: Any) -> Cmd | None:
        """A command that is refused whatever the state: the wrong role, a trade id used
        before, an id reused for other content, a ticket that does not exist."""
        roll = self.rng.random()
        if roll < 0.3:
            return Cmd(self._id("freeze"), "freeze", self.rng.choice(HOLDERS),
                       {"holder": HOLDERS[0], "reason": "not a regulator"})
        if roll < 0.55 and self.trade_ids:
            seller, buyer = self.rng.sample(HOLDERS, 2)
            return Cmd(self._id("transfer"), "transfer", EXCHANGE, {
                "trade_id": self.rng.choice(self.trade_ids), "seller": seller, "buyer": buyer,
                "ticket_no": TICKETS["FFCER"], "quantity_t": 1, "price": "1.00",
                "mode": "auction"})
        if roll < 0.8 and self.sent:
            earlier = self.rng.choice(self.sent)
            return Cmd(earlier.command_id, "freeze", REGULATOR,
                       {"holder": HOLDERS[1], "reason": f"reused id {self.n}"})
        return Cmd(self._id("transfer"), "transfer", EXCHANGE, {
            "trade_id": f"X-{self.tag}-{self.n + 1}", "seller": HOLDERS[0], "buyer": HOLDERS[1],
            "ticket_no": "XX-0000009", "quantity_t": 1, "price": "1.00", "mode": "auction"})

    def resend(self, projection: Any) -> Cmd | None:
        """An earlier command again, same id and content (signed anew): a client's retry."""
        earlier = [c for c in self.sent if not c.command_id.startswith("setup/")]
        return self.rng.choice(earlier) if earlier else None

    TABLE = [(0.26, transfer), (0.32, batch), (0.44, pledge), (0.53, release_or_enforce),
             (0.63, retire_compliance), (0.67, retire_voluntary), (0.70, emissions),
             (0.80, freeze), (0.84, cancel), (0.87, mandate), (0.93, wrong), (1.0, resend)]
