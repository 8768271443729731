"""A stateful property test: random command sequences never break the registry's invariants.

Every example starts a fresh in-memory registry with a small fixed world (an issuer, a regulator,
a court, an exchange, two banks, an insurer, four holders owning SMCER, FFCER and CCER projects,
every holder mandating the exchange), then runs random commands, right and wrong: wrong actors,
unknown and duplicate ids, too many tonnes, frozen accounts, serial ranges that collide, replays
of accepted commands and reuses of their command ids with other content.

Each command must either succeed or be refused with a DomainError (anything else fails the test).
A refused command must leave the log as it was; a replay must return the first outcome and write
nothing. After every step the projection is checked against the invariants (conservation, the
partition of serials, finality of retired and cancelled units, pledges' units, frozen accounts,
compliance caps, no negative quantities) and against a small model the test keeps on its own.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter, defaultdict
from typing import Any

from hypothesis import HealthCheck, event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from domain.errors import DomainError
from ledger.application import Registry
from ledger.audit import audit_database
from ledger.keys import Keyring

# The world -----------------------------------------------------------------------------------

OPERATOR = "registry"
ISSUER, REGULATOR, COURT, EXCHANGE, INSURER = "issuer", "regulator", "court", "exchange", "insurer"
BANKS = ("bank-a", "bank-b")
HOLDERS = ("h1", "h2", "h3", "h4")
GHOST = "ghost"  # never registered
ROLES = {ISSUER: "issuer", REGULATOR: "regulator", COURT: "court", EXCHANGE: "exchange",
         INSURER: "insurer", **dict.fromkeys(BANKS, "bank"), **dict.fromkeys(HOLDERS, "holder")}
EVERYONE = (OPERATOR, *ROLES)
ANYONE = (*EVERYONE, GHOST)
HOLDING = (*HOLDERS, *BANKS)  # the roles that may hold units

STANDARDS = ("SMCER", "FFCER", "CCER")
PROJECTS = {"P-SM": ("SMCER", "h1"), "P-FF": ("FFCER", "h2"), "P-CC": ("CCER", "h3"),
            "P-FF4": ("FFCER", "h4")}
FIRST_TICKETS = ("T-0000001", "T-0000002", "T-0000003")  # issued in every example's setup
UNKNOWN_TICKET = "U-0000001"

AVAILABLE, PLEDGED, RETIRED, CANCELLED = "available", "pledged", "retired", "cancelled"
STATES = (AVAILABLE, PLEDGED, RETIRED, CANCELLED)
PHYSICAL = ("fire", "pest", "typhoon", "freeze", "landslide")
PERILS = (*PHYSICAL, "price_index")
PURPOSES = ("voluntary", "compliance", "event_neutrality", "judicial_restoration",
            "tree_planting_duty", "carbon_inclusive")
SCHEMES = ("fujian_ets", "national_ets", "other_ets")
PERIODS = ("2021", "2022")
# The published default offset limits (basis points of verified emissions), per scheme.
DEFAULT_LIMITS = {"fujian_ets": ({"FFCER": 1000, "CCER": 500}, 1000),
                  "national_ets": ({"CCER": 500}, 500)}
POLICY_START, POLICY_END = "2022-01-01", "2022-12-31"
LOSS_DATES = ("2021-12-31", POLICY_START, "2022-06-15", POLICY_END, "2023-01-01")

# Which accepted commands may do what to units.
FINALISERS = {"retire", "cancel_units", "approve_claim"}  # make units retired or cancelled
PLEDGE_EXITS = {"release_pledge", "enforce_pledge", "approve_claim"}  # take units out of a pledge
OUTFLOWS = {"transfer", "settle_batch", "retire", "pledge"}  # refused for a frozen holder

Unit = tuple[str, int]  # (ticket_no, serial number)
UnitState = tuple[str, str, str]  # (holder, state, ref)


def serial(ticket: str, n: int) -> str:
    return f"{ticket}-{n:07d}"


def serial_no(s: str) -> int:
    return int(s.rsplit("-", 1)[1])


def cap(emissions_t: int, bp: int) -> int:
    return emissions_t * bp // 10000


def yuan(fen: int) -> str:
    """Money as the registry takes it: a decimal string in yuan (1500 fen -> "15.00")."""
    return f"{fen // 100}.{fen % 100:02d}"


def comparable(outcome: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in outcome.items() if k not in ("position", "replayed")}


def line_units(line: dict[str, Any]) -> tuple[str, int, set[Unit] | None]:
    """(ticket, tonnes, the exact units or None) that a line or a transfer item asks for."""
    t = line["ticket_no"]
    if "first_serial" in line:
        a, b = serial_no(line["first_serial"]), serial_no(line["last_serial"])
        return t, b - a + 1, {(t, n) for n in range(a, b + 1)}
    return t, line["quantity_t"], None


def runs(ns: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for n in ns:
        if out and out[-1][1] + 1 == n:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


def check_moves(changes: dict[Unit, tuple[UnitState | None, UnitState]], allowed,
                counts: dict[str, int] | None = None, exact: set[Unit] | None = None,
                what: str = "") -> None:
    """Every unit that changed made an allowed move; per-ticket counts and exact serials match."""
    for (t, n), (old, new) in sorted(changes.items()):
        assert allowed(t, old, new), f"{what}: {serial(t, n)} moved {old} -> {new}"
    if counts is not None:
        got = Counter(t for t, _ in changes)
        want = Counter({t: q for t, q in counts.items() if q})
        assert got == want, f"{what}: units changed per ticket {dict(got)}, expected {dict(want)}"
    if exact is not None:
        assert set(changes) == exact, f"{what}: other serials changed than the ones asked for"


class RegistryMachine(RuleBasedStateMachine):
    RULES_EDITION = 1  # the edition the registry is founded with (see RegistryMachine2)

    def __init__(self) -> None:
        super().__init__()
        self.app = Registry("sqlite:///:memory:", keyring=Keyring())
        self.ids = itertools.count(1)
        self.history: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = []
        self.step_changed: str | None = None  # the command that wrote to the log in this step
        self.steps = 0
        self.refused_ids: list[str] = []  # a refused command leaves its id unused
        self.units: dict[Unit, UnitState] = {}
        self.changes: dict[Unit, tuple[UnitState | None, UnitState]] = {}
        # The test's own model, fed only by the commands it sent and their accept/refuse answers.
        self.tickets: dict[str, tuple[str, int, str]] = {}  # ticket -> (standard, tonnes, owner)
        self.pledges: dict[str, tuple[str, str]] = {}  # pledge id -> (pledgor, pledgee)
        self.policies: dict[str, dict[str, Any]] = {}
        self.claims: dict[str, dict[str, Any]] = {}
        self.retirement_ids: set[str] = set()
        self.trade_ids: set[str] = set()
        self.batch_ids: set[str] = set()
        self.cancellation_ids: set[tuple[str, str]] = set()  # (ticket, cancellation id)
        self.mandates: set[tuple[str, str]] = set()
        self.freezes: dict[str, set[str]] = defaultdict(set)  # holder -> who froze it
        self.emissions: dict[tuple[str, str, str], int] = {}
        self.limits: dict[tuple[str, str], tuple[dict[str, int], int]] = {}
        self.used: dict[tuple[str, str, str], Counter] = defaultdict(Counter)
        # Baselines carried from one step to the next by the invariant check.
        self.final_units: dict[Unit, UnitState] = {}
        self.pledged_units: dict[Unit, UnitState] = {}
        self.frozen_available: dict[str, set[Unit]] = {}

    def teardown(self) -> None:
        self.app.close()

    # Submitting ------------------------------------------------------------------------------

    def _snapshot(self) -> dict[Unit, UnitState]:
        units: dict[Unit, UnitState] = {}
        for no, ticket in self.app.projection().tickets.items():
            for first, last, holder, state, ref in ticket.blocks:
                for n in range(first, last + 1):
                    units[(no, n)] = (holder, state, ref)
        return units

    def _run(self, data, name: str, actor: str, args: dict[str, Any], cid: str | None = None):
        """Submit a new command. Returns (outcome, None) or (None, DomainError)."""
        cid = cid or f"cmd-{next(self.ids)}"
        before = self.app.log_position()
        try:
            outcome = self.app.submit(name, actor, cid, copy.deepcopy(args))
        except DomainError as e:
            note(f"{name} by {actor} {args} -> refused {e.code}: {e.message}")
            event(f"{name}: {e.code}")
            assert self.app.log_position() == before, f"refused {name} ({e.code}) wrote to the log"
            self.changes = {}
            self.refused_ids.append(cid)
            return None, e
        note(f"{name} by {actor} {args} -> accepted ({cid})")
        event(f"{name}: accepted")
        assert not outcome.get("replayed"), f"a new command id {cid} came back as a replay"
        assert self.app.log_position() > before, f"accepted {name} wrote nothing"
        assert self.step_changed is None, "one step wrote twice"
        self.step_changed = name
        self.history.append((name, actor, cid, copy.deepcopy(args), outcome))
        old = self.units
        self.units = self._snapshot()
        assert set(old) <= set(self.units), f"{name} made units disappear"
        self.changes = {u: (old.get(u), s) for u, s in self.units.items() if old.get(u) != s}
        if data.draw(st.integers(0, 4), label="replay at once") == 4:
            self._replay(name, actor, cid, args, outcome)
        return outcome, None

    def _replay(self, name: str, actor: str, cid: str, args: dict[str, Any],
                outcome: dict[str, Any]) -> None:
        before = self.app.log_position()
        again = self.app.submit(name, actor, cid, copy.deepcopy(args))
        event("replay")
        assert again.get("replayed") is True, f"replay of {cid} not marked as one"
        assert comparable(again) == comparable(outcome), f"replay of {cid} changed its outcome"
        if "position" in again:  # where the first copy was recorded
            assert again["position"] == outcome["position"], f"replay of {cid} moved its position"
        assert self.app.log_position() == before, f"replay of {cid} wrote to the log"

    # Choosing (mostly right, sometimes wrong) ----------------------------------------------------

    @staticmethod
    def _choose(data, good, bad, label: str, wrong_one_in: int = 8):
        """One draw: from `good` about (n-1)/n of the time, else from `bad` (shrinks to good[0])."""
        good, bad = list(good), list(bad)
        if not good:
            return data.draw(st.sampled_from(bad), label=label)
        copies = -(-(wrong_one_in - 1) * len(bad) // len(good))  # ceil
        # good at both ends: the engine likes to try the first and the last element
        return data.draw(st.sampled_from(good * copies + bad + good), label=label)

    def _new_id(self, data, prefix: str, used) -> str:
        """A fresh id, or now and then one already used (which must be refused as a duplicate)."""
        if used and data.draw(st.integers(0, 7), label=f"reuse a {prefix} id?") == 7:
            return data.draw(st.sampled_from(sorted(used)), label=f"{prefix} id")
        n = next(self.ids)
        return f"T-{n:07d}" if prefix == "T" else f"{prefix}-{n}"

    def _actor(self, data, *good: str) -> str:
        return self._choose(data, good, ANYONE, "actor")

    def _ticket(self, data) -> str:
        return self._choose(data, sorted(self.tickets), (UNKNOWN_TICKET, *self.tickets), "ticket", 10)

    def _serials_of(self, ticket: str, holder: str, states: tuple[str, ...],
                    ref: str | None = None) -> list[int]:
        return sorted(n for (t, n), (h, s, r) in self.units.items()
                      if t == ticket and h == holder and s in states and (ref is None or r == ref))

    def _wanted(self, line: dict[str, Any], holder: str, states: tuple[str, ...],
                ref: str | None = None) -> tuple[str, int, set[Unit]]:
        """(ticket, tonnes, serials) a line should take now: its range, or the holder's lowest serials."""
        ticket, q, exact = line_units(line)
        if exact is None:
            exact = {(ticket, n) for n in self._serials_of(ticket, holder, states, ref)[:q]}
        return ticket, q, exact

    def _holder_of(self, data, ticket: str, states: tuple[str, ...], label: str) -> str:
        holding = sorted({h for (t, _), (h, s, _r) in self.units.items() if t == ticket and s in states})
        return self._choose(data, holding, (*HOLDING, *ANYONE), label)

    def _line(self, data, ticket: str, holder: str, states: tuple[str, ...],
              ref: str | None = None) -> dict[str, Any]:
        """A line naming `ticket`: a quantity or a serial range, usually one the holder has."""
        owned = self._serials_of(ticket, holder, states, ref)
        kind = data.draw(st.integers(0, 9), label="line kind")
        if kind <= 4:
            return {"ticket_no": ticket, "quantity_t": data.draw(st.integers(1, max(1, len(owned))))}
        if kind == 5:
            return {"ticket_no": ticket, "quantity_t": len(owned) + 1}
        if kind == 6:
            return {"ticket_no": ticket, "quantity_t": data.draw(st.integers(1, 60))}
        if kind <= 8 and owned:
            a, b = data.draw(st.sampled_from(runs(owned)), label="run")
            x = data.draw(st.integers(a, b))
            y = data.draw(st.integers(x, b))
        else:
            x = data.draw(st.integers(1, 55))
            y = data.draw(st.integers(x, x + 10))
        return {"ticket_no": ticket, "first_serial": serial(ticket, x), "last_serial": serial(ticket, y)}

    def _lines(self, data, holder: str, states: tuple[str, ...], first_ticket: str,
               ref: str | None = None) -> list[dict[str, Any]]:
        tickets = [first_ticket]
        if data.draw(st.integers(0, 2), label="second line") == 2:
            others = sorted({t for (t, _), (h, s, _r) in self.units.items()
                             if t != first_ticket and h == holder and s in states})
            tickets.append(self._choose(data, others, sorted(self.tickets), "second ticket"))
        return [self._line(data, t, holder, states, ref) for t in tickets]

    def _transfer_item(self, data) -> dict[str, Any]:
        ticket = self._ticket(data)
        seller = self._holder_of(data, ticket, (AVAILABLE,), "seller")
        buyer = self._choose(data, [h for h in HOLDING if h != seller], ANYONE, "buyer")
        line = self._line(data, ticket, seller, (AVAILABLE,))
        return {"trade_id": self._new_id(data, "TR", self.trade_ids),
                "seller": seller, "buyer": buyer, **line,
                "price": data.draw(st.sampled_from(["0.00", "12.50", "15.00"])),
                "mode": data.draw(st.sampled_from(["negotiated", "auction", "listing"]))}

    # Setup -----------------------------------------------------------------------------------

    @initialize(data=st.data())
    def world(self, data) -> None:
        steps: list[tuple[str, str, dict[str, Any]]] = [
            ("initialise", OPERATOR, {"origin": "test/stateful", "operator_id": OPERATOR,
                                      "name": "Test registry",
                                      **({"rules_edition": self.RULES_EDITION}
                                         if self.RULES_EDITION > 1 else {})})]
        steps += [("register_participant", OPERATOR, {"participant_id": p, "name": f"{r} {p}",
                                                      "role": r}) for p, r in ROLES.items()]
        steps += [("register_project", ISSUER, {"project_id": pid, "name": f"forest {pid}",
                                                "owner": owner, "county": "将乐县", "area_mu": "1000.50",
                                                "standard": std})
                  for pid, (std, owner) in PROJECTS.items()]
        steps += [("grant_mandate", h, {"holder": h, "exchange": EXCHANGE}) for h in HOLDERS]
        for name, actor, args in steps:
            cid = f"setup-{next(self.ids)}"
            outcome = self.app.submit(name, actor, cid, copy.deepcopy(args))
            self.history.append((name, actor, cid, args, outcome))
        self.mandates = {(h, EXCHANGE) for h in HOLDERS}
        self.units = self._snapshot()
        # One ticket per standard to start from, of random size (the rules issue more).
        for ticket, project in zip(FIRST_TICKETS, ("P-SM", "P-FF", "P-CC"), strict=True):
            q = data.draw(st.integers(1, 50), label=f"{ticket} quantity")
            out, _ = self._run(data, "issue_ticket", ISSUER, {
                "ticket_no": ticket, "project_id": project, "standard": PROJECTS[project][0],
                "period_start": "2020-01-01", "period_end": "2021-12-31", "quantity_t": q})
            assert out is not None
            self.tickets[ticket] = (PROJECTS[project][0], q, PROJECTS[project][1])
            self.step_changed = None
        # Verified emissions of the FFCER and CCER owners, so that compliance retirements can pass.
        for key in (("h2", "fujian_ets", "2021"), ("h3", "fujian_ets", "2021"),
                    ("h3", "national_ets", "2021")):
            e = data.draw(st.integers(0, 800), label=f"{key} emissions")
            out, _ = self._run(data, "record_emissions", REGULATOR, {
                "entity": key[0], "scheme": key[1], "period": key[2], "verified_emissions_t": e})
            assert out is not None
            self.emissions[key] = e
            self.step_changed = None

    # Issuance and trading -------------------------------------------------------------------

    @rule(data=st.data())
    def issuer_acts(self, data) -> None:
        if data.draw(st.integers(0, 3), label="cancel?") == 3:
            self._cancel_units(data)
        else:
            self._issue_ticket(data)

    def _issue_ticket(self, data) -> None:
        ticket = self._new_id(data, "T", self.tickets)
        project = self._choose(data, list(PROJECTS), ("P-XX",), "project", 12)
        standard = self._choose(data, [PROJECTS.get(project, ("CCER",))[0]], STANDARDS, "standard", 10)
        actor = self._actor(data, ISSUER)
        q = data.draw(st.integers(1, 50), label="quantity")
        start, end = "2020-01-01", "2021-12-31"
        if data.draw(st.integers(0, 19), label="backwards period") == 19:
            start, end = end, start
        out, _ = self._run(data, "issue_ticket", actor, {
            "ticket_no": ticket, "project_id": project, "standard": standard,
            "period_start": start, "period_end": end, "quantity_t": q})
        if out:
            assert actor == ISSUER and project in PROJECTS and ticket not in self.tickets
            assert standard == PROJECTS[project][0] and start <= end
            owner = PROJECTS[project][1]
            self.tickets[ticket] = (standard, q, owner)
            check_moves(self.changes, lambda t, old, new: old is None and new == (owner, AVAILABLE, ""),
                        counts={ticket: q}, what="issue_ticket")

    def _check_transfer(self, item: dict[str, Any], changes, wanted) -> None:
        seller, buyer = item["seller"], item["buyer"]
        assert item["trade_id"] not in self.trade_ids, f"trade {item['trade_id']} settled twice"
        self.trade_ids.add(item["trade_id"])
        assert (seller, EXCHANGE) in self.mandates, f"{seller} sold without a mandate"
        assert not self.freezes[seller], f"frozen {seller} sold units"
        assert buyer in HOLDING and buyer != seller
        ticket, q, exact = wanted
        check_moves(changes, lambda t, old, new: t == ticket and old == (seller, AVAILABLE, "")
                    and new == (buyer, AVAILABLE, ""), counts={ticket: q}, exact=exact, what="transfer")

    @rule(data=st.data())
    def trade(self, data) -> None:
        if data.draw(st.booleans(), label="batch?"):
            self._settle_batch(data)
        else:
            self._transfer(data)

    def _transfer(self, data) -> None:
        item = self._transfer_item(data)
        actor = self._actor(data, EXCHANGE)
        wanted = self._wanted(item, item["seller"], (AVAILABLE,))
        out, _ = self._run(data, "transfer", actor, item)
        if out:
            assert actor == EXCHANGE
            self._check_transfer(item, self.changes, wanted)

    def _settle_batch(self, data) -> None:
        items = [self._transfer_item(data) for _ in range(data.draw(st.integers(1, 3), label="items"))]
        actor = self._actor(data, EXCHANGE)
        batch = self._new_id(data, "B", self.batch_ids)
        wanted = [self._wanted(item, item["seller"], (AVAILABLE,)) for item in items]
        out, _ = self._run(data, "settle_batch", actor, {"batch_id": batch, "transfers": items})
        if out:
            assert actor == EXCHANGE and out["count"] == len(items)
            self.batch_ids.add(batch)
            per_ticket = Counter(i["ticket_no"] for i in items)
            for item, want in zip(items, wanted, strict=True):
                if per_ticket[item["ticket_no"]] == 1:  # chains on one ticket only net out
                    self._check_transfer(item, {u: c for u, c in self.changes.items()
                                                if u[0] == item["ticket_no"]}, want)
                else:
                    assert item["trade_id"] not in self.trade_ids
                    self.trade_ids.add(item["trade_id"])
                    assert (item["seller"], EXCHANGE) in self.mandates
                    assert not self.freezes[item["seller"]]
            check_moves(self.changes, lambda t, old, new: t in per_ticket and old[1] == AVAILABLE
                        and new[1] == AVAILABLE and new[2] == "", what="settle_batch")

    # Pledges -------------------------------------------------------------------------------

    @rule(data=st.data())
    def bank_acts(self, data) -> None:
        live = any(s == PLEDGED for (_h, s, _r) in self.units.values())
        what = data.draw(st.integers(0, 5), label="pledge (0-1), release (2-4) or enforce (5)")
        if not live or what <= 1:
            self._pledge(data)
        elif what <= 4:
            self._release_pledge(data)
        else:
            self._enforce_pledge(data)

    def _pledge(self, data) -> None:
        bank = self._actor(data, *BANKS)
        ticket = self._ticket(data)
        pledgor = self._holder_of(data, ticket, (AVAILABLE,), "pledgor")
        lines = self._lines(data, pledgor, (AVAILABLE,), ticket)
        pid = self._new_id(data, "PL", self.pledges)
        wanted = [self._wanted(ln, pledgor, (AVAILABLE,)) for ln in lines]
        out, _ = self._run(data, "pledge", bank, {
            "pledge_id": pid, "pledgor": pledgor, "loan_ref": "LOAN/1", "secured_amount": "250000.00",
            "maturity": "2025-12-31", "lines": lines})
        if out:
            assert bank in BANKS and pledgor != bank and pid not in self.pledges
            assert not self.freezes[pledgor], f"frozen {pledgor} pledged units"
            self.pledges[pid] = (pledgor, bank)
            exact = set().union(*(e for _, _, e in wanted))
            check_moves(self.changes, lambda t, old, new: old == (pledgor, AVAILABLE, "")
                        and new == (pledgor, PLEDGED, pid), counts={t: q for t, q, _ in wanted},
                        exact=exact, what="pledge")

    def _pick_pledge(self, data) -> tuple[str, str, str]:
        live = sorted({r for (_h, s, r) in self.units.values() if s == PLEDGED})
        pid = self._choose(data, live, (*sorted(self.pledges), "PL-0"), "pledge", 4)
        pledgor, pledgee = self.pledges.get(pid, ("h1", BANKS[0]))
        return pid, pledgor, pledgee

    def _left_in(self, pid: str) -> list[Unit]:
        return [u for u, (_h, s, r) in self.units.items() if s == PLEDGED and r == pid]

    def _release_pledge(self, data) -> None:
        pid, pledgor, pledgee = self._pick_pledge(data)
        actor = self._actor(data, pledgee)
        args: dict[str, Any] = {"pledge_id": pid}
        partial = data.draw(st.booleans(), label="partial")
        if partial:
            held = sorted({t for (t, _), (_h, s, r) in self.units.items() if s == PLEDGED and r == pid})
            ticket = self._choose(data, held, (*self.tickets, UNKNOWN_TICKET), "ticket")
            args["lines"] = self._lines(data, pledgor, (PLEDGED,), ticket, ref=pid)
            wanted = [self._wanted(ln, pledgor, (PLEDGED,), pid) for ln in args["lines"]]
            counts = {t: q for t, q, _ in wanted}
            exact = set().union(*(e for _, _, e in wanted))
        else:
            counts, exact = None, set(self._left_in(pid))
        out, _ = self._run(data, "release_pledge", actor, args)
        if out:
            assert actor == pledgee
            assert partial or not self._left_in(pid), f"full release left units in {pid}"
            check_moves(self.changes, lambda t, old, new: old == (pledgor, PLEDGED, pid)
                        and new == (pledgor, AVAILABLE, ""), counts=counts, exact=exact,
                        what="release_pledge")

    def _enforce_pledge(self, data) -> None:
        pid, pledgor, pledgee = self._pick_pledge(data)
        actor = self._actor(data, pledgee)
        to = data.draw(st.sampled_from([None, None, pledgee, pledgor, *HOLDERS, *BANKS, COURT, GHOST]),
                       label="to")
        args: dict[str, Any] = {"pledge_id": pid, **({"to": to} if to else {})}
        exact = set(self._left_in(pid))
        out, _ = self._run(data, "enforce_pledge", actor, args)
        if out:
            dest = to or pledgee
            assert actor == pledgee and dest in HOLDING
            assert not self._left_in(pid), f"enforcement left units in {pid}"
            check_moves(self.changes, lambda t, old, new: old == (pledgor, PLEDGED, pid)
                        and new == (dest, AVAILABLE, ""), exact=exact, what="enforce_pledge")

    # Insurance -----------------------------------------------------------------------------

    def _bind_policy(self, data) -> None:
        actor = self._actor(data, INSURER)
        ticket = self._ticket(data)
        insured = self._holder_of(data, ticket, (AVAILABLE, PLEDGED), "insured")
        lines = self._lines(data, insured, (AVAILABLE, PLEDGED), ticket)
        pid = self._new_id(data, "POL", self.policies)
        perils = data.draw(st.lists(st.sampled_from(PERILS), min_size=1, max_size=3, unique=True))
        payee = data.draw(st.sampled_from([None, None, *BANKS, insured, GHOST]), label="loss payee")
        sum_insured = data.draw(st.integers(1, 500_000), label="sum insured (fen)")
        args = {"policy_id": pid, "insured": insured, "lines": lines, "sum_insured": yuan(sum_insured),
                "premium": "1000.00", "start": POLICY_START, "end": POLICY_END, "perils": perils,
                **({"loss_payee": payee} if payee else {})}
        # The cover: per line, in order, the range named or the insured's lowest live serials.
        cover = [sorted(self._wanted(ln, insured, (AVAILABLE, PLEDGED))[2]) for ln in lines]
        out, _ = self._run(data, "bind_policy", actor, args)
        if out:
            assert actor == INSURER and insured in HOLDING and pid not in self.policies
            assert payee in (None, *EVERYONE)
            self.policies[pid] = {"insured": insured, "insurer": actor, "perils": set(perils),
                                  "loss_payee": payee or "", "covered": sum(q for _, q, _ in
                                                                             map(line_units, lines)),
                                  "sum": sum_insured, "lost": 0, "paid": 0, "cover": cover}
            assert not self.changes, "binding a policy moved units"

    def _file_claim(self, data) -> None:
        pid = self._choose(data, sorted(self.policies), ("POL-0",), "policy", 12)
        pol = self.policies.get(pid)
        parties = [pol["insured"], pol["loss_payee"] or pol["insured"]] if pol else []
        if pol and self.RULES_EDITION == 1:  # (edition 2: the insurer decides claims, not files them)
            parties.append(pol["insurer"])
        actor = self._actor(data, *parties) if parties else self._actor(data, INSURER)
        peril = self._choose(data, sorted(pol["perils"]) if pol else [], PERILS, "peril", 5)
        loss_date = self._choose(data, LOSS_DATES[1:4], LOSS_DATES, "loss date", 4)
        cid = self._new_id(data, "CL", self.claims)
        covered = pol["covered"] - pol["lost"] if pol else 0
        claimed = self._choose(data, range(1, covered + 1), range(1, 61), "claimed_t", 4)
        out, _ = self._run(data, "file_claim", actor, {
            "claim_id": cid, "policy_id": pid, "peril": peril, "loss_date": loss_date,
            "claimed_t": claimed, "description": "storm damage"})
        if out:
            assert pol is not None and actor in parties and cid not in self.claims
            assert peril in pol["perils"] and POLICY_START <= loss_date <= POLICY_END
            self.claims[cid] = {"policy": pid, "peril": peril, "claimed": claimed, "status": "pending",
                                "confirmed": None}
            assert not self.changes

    def _pick_claim(self, data, unconfirmed_loss: bool = False):
        """A pending claim, mostly (edition 2: mostly a confirmed one, or with `unconfirmed_loss`
        a physical one not confirmed yet, when there is one)."""
        pending = sorted(c for c, m in self.claims.items() if m["status"] == "pending")
        if self.RULES_EDITION >= 2:
            wanted = [c for c in pending if (self.claims[c]["peril"] in PHYSICAL
                                             and self.claims[c]["confirmed"] is None)
                      == unconfirmed_loss]
            pending = wanted or pending
        cid = self._choose(data, pending, (*sorted(self.claims), "CL-0"), "claim", 5)
        claim = self.claims.get(cid)
        pol = self.policies[claim["policy"]] if claim else None
        return cid, claim, pol

    @rule(data=st.data())
    def insurance(self, data) -> None:
        pending = any(c["status"] == "pending" for c in self.claims.values())
        what = data.draw(st.integers(0, 7), label="bind (0), file (1-2), approve (3-5), reject (6), "
                         "confirm (7)")
        if not self.policies or what == 0:
            self._bind_policy(data)
        elif not pending or what <= 2:
            self._file_claim(data)
        elif self.RULES_EDITION >= 2 and what in (3, 7):  # a loss is confirmed before its approval
            self._confirm_loss(data)
        elif what <= 5:
            self._approve_claim(data)
        else:
            self._reject_claim(data)

    def _confirm_loss(self, data) -> None:
        """Rules edition 2: the tickets' issuer or a regulator confirms a physical loss."""
        cid, claim, pol = self._pick_claim(data, unconfirmed_loss=True)
        actor = self._actor(data, ISSUER, REGULATOR)
        claimed = claim["claimed"] if claim else 10
        confirmed = self._choose(data, range(0, claimed + 1), range(0, 61), "confirmed_t", 5)
        out, _ = self._run(data, "confirm_loss", actor, {
            "claim_id": cid, "confirmed_t": confirmed, "report": "核查报告\n过火面积 3 亩"})
        if out:
            assert claim is not None and pol is not None and claim["status"] == "pending"
            assert actor in (ISSUER, REGULATOR) and claim["peril"] in PHYSICAL
            assert claim["confirmed"] is None and confirmed <= claim["claimed"]
            claim["confirmed"] = confirmed
            assert not self.changes

    def _affected(self, pol: dict[str, Any], approved: int) -> list[Unit]:
        """The units a claim's approval takes: live units of the insured in the cover, in order."""
        live = [(t, n) for line in pol["cover"] for t, n in line
                if self.units[(t, n)][:2] in ((pol["insured"], AVAILABLE), (pol["insured"], PLEDGED))]
        return live[:approved]

    def _approve_claim(self, data) -> None:
        cid, claim, pol = self._pick_claim(data)
        actor = self._actor(data, pol["insurer"] if pol else INSURER)
        claimed = claim["claimed"] if claim else 10
        if claim and claim["confirmed"] is not None:  # (mostly within what was confirmed)
            claimed = max(min(claimed, claim["confirmed"]), 1)
        approved = self._choose(data, range(1, claimed + 1), range(1, 61), "approved_t", 5)
        left = pol["sum"] - pol["paid"] if pol else 1000
        payout = data.draw(st.sampled_from([0, left, left + 1]) | st.integers(0, max(left, 0)),
                           label="payout (fen)")
        affected = self._affected(pol, approved) if pol else []
        before = {u: self.units[u] for u in affected}
        out, err = self._run(data, "approve_claim", actor, {
            "claim_id": cid, "approved_t": approved, "payout": yuan(payout)})
        physical = bool(claim) and claim["peril"] in PHYSICAL
        if err is not None:
            if err.code == "loss_not_confirmed":
                assert self.RULES_EDITION >= 2 and physical and claim is not None
                assert claim["confirmed"] is None or approved > claim["confirmed"]
            if err.code == "cover_exceeded":
                assert (pol["lost"] if physical else 0) + approved > pol["covered"] or (
                    physical and len(affected) < approved), "cover_exceeded although covered"
            return
        assert claim is not None and pol is not None
        assert actor == pol["insurer"] and claim["status"] == "pending"
        assert approved <= claim["claimed"], "approved more than claimed"
        assert payout <= pol["sum"] - pol["paid"], "paid beyond the sum insured"
        assert approved <= pol["covered"], "approved more tonnes than the policy covers"
        if physical and self.RULES_EDITION >= 2:
            assert claim["confirmed"] is not None and approved <= claim["confirmed"], \
                "a physical loss cancelled beyond what was confirmed"
        if physical:
            assert pol["lost"] + approved <= pol["covered"], "lost more than the cover"
            assert len(affected) == approved, "approved more tonnes than the insured still holds"
            pol["lost"] += approved
        pol["paid"] += payout
        claim["status"] = "approved"
        insured = pol["insured"]
        check_moves(self.changes, lambda t, old, new: old[0] == insured
                    and old[1] in (AVAILABLE, PLEDGED) and new == (insured, CANCELLED, f"reversal:{cid}"),
                    exact=set(affected) if physical else set(), what="approve_claim")
        # The payout split: each pledgee floor(payout * t / approved), the rest to the loss payee.
        expected: Counter = Counter()
        pledged_t = Counter(before[u][2] for u in affected if before[u][1] == PLEDGED)
        for p, t in sorted(pledged_t.items()):
            expected[self.pledges[p][1]] += payout * t // approved
        expected[pol["loss_payee"] or insured] += payout - sum(expected.values())
        paid = Counter({row["party"]: int(row["amount"].replace(".", "")) for row in out["payees"]})
        assert +paid == +expected, f"payees {dict(paid)}, expected {dict(+expected)}"
        assert sum(paid.values()) == payout

    def _reject_claim(self, data) -> None:
        cid, claim, pol = self._pick_claim(data)
        actor = self._actor(data, pol["insurer"] if pol else INSURER)
        out, _ = self._run(data, "reject_claim", actor, {"claim_id": cid, "reason": "not a loss"})
        if out:
            assert claim is not None and pol is not None
            assert actor == pol["insurer"] and claim["status"] == "pending"
            claim["status"] = "rejected"
            assert not self.changes

    # Retirement and compliance ---------------------------------------------------------------

    def _limits_in_force(self, scheme: str, period: str) -> tuple[dict[str, int], int] | None:
        return self.limits.get((scheme, period), DEFAULT_LIMITS.get(scheme))

    def _over_cap(self, key: tuple[str, str, str], by_standard: Counter) -> tuple[bool, bool]:
        """(some standard is not eligible, some cap would be exceeded) by the test's model."""
        limits = self._limits_in_force(key[1], key[2])
        if limits is None:
            return True, False
        standards_bp, total_bp = limits
        e = self.emissions.get(key, 0)
        used = self.used[key]
        ineligible = any(s == "SMCER" or s not in standards_bp for s in by_standard)
        over = any(s in standards_bp and used[s] + q > cap(e, standards_bp[s])
                   for s, q in by_standard.items())
        over |= sum(used.values()) + sum(by_standard.values()) > cap(e, total_bp)
        return ineligible, over

    def _headroom(self, key: tuple[str, str, str], ticket: str) -> int | None:
        """How many more tonnes of the ticket's standard the model lets the entity offset."""
        limits = self._limits_in_force(key[1], key[2])
        if key not in self.emissions or ticket not in self.tickets or limits is None:
            return None
        standards_bp, total_bp = limits
        standard, e, used = self.tickets[ticket][0], self.emissions[key], self.used[key]
        if standard not in standards_bp:
            return None
        return min(cap(e, standards_bp[standard]) - used[standard],
                   cap(e, total_bp) - sum(used.values()))

    @rule(data=st.data())
    def retire(self, data) -> None:
        purpose = data.draw(st.sampled_from(PURPOSES + ("compliance", "compliance")), label="purpose")
        if purpose == "compliance":  # mostly FFCER or CCER units of an entity with emissions
            eligible = sorted(t for t, (std, _q, _o) in self.tickets.items() if std != "SMCER")
            ticket = self._choose(data, eligible, (*sorted(self.tickets), UNKNOWN_TICKET), "ticket")
            holding = sorted({h for (t, _), (h, s, _r) in self.units.items()
                              if t == ticket and s == AVAILABLE})
            emitters = [h for h in holding if any(k[0] == h for k in self.emissions)]
            actor = self._choose(data, emitters or holding, ANYONE, "retiring holder")
        else:
            ticket = self._ticket(data)
            actor = self._holder_of(data, ticket, (AVAILABLE,), "retiring holder")
        lines = self._lines(data, actor, (AVAILABLE,), ticket)
        rid = self._new_id(data, "RT", self.retirement_ids)
        args: dict[str, Any] = {"retirement_id": rid, "purpose": purpose,
                                "beneficiary": "将乐县生态修复", "lines": lines}
        odd = data.draw(st.integers(0, 7), label="odd extras") == 7
        if purpose == "judicial_restoration":
            args["case_no"] = "(2021)闽0428刑初01号"
            args["court"] = self._choose(data, [COURT], (REGULATOR, GHOST, "h1"), "court")
            if odd:
                del args[data.draw(st.sampled_from(["case_no", "court"]))]
        elif purpose == "compliance":
            recorded = sorted((k[1], k[2]) for k in self.emissions if k[0] == actor)
            every = [(sc, pe) for sc in SCHEMES for pe in PERIODS]
            args["scheme"], args["period"] = self._choose(data, recorded, every, "scheme, period", 4)
            headroom = self._headroom((actor, args["scheme"], args["period"]), lines[0]["ticket_no"])
            if headroom is not None and data.draw(st.booleans(), label="right at the cap?"):
                q = headroom + data.draw(st.sampled_from([0, 1]), label="one over?")
                if q >= 1:
                    lines[0] = {"ticket_no": lines[0]["ticket_no"], "quantity_t": q}
            if odd:
                del args[data.draw(st.sampled_from(["scheme", "period"]))]
        elif odd:
            args.update(data.draw(st.sampled_from([{"case_no": "X-1", "court": COURT},
                                                   {"scheme": "fujian_ets", "period": "2021"}])))
        by_standard: Counter = Counter()
        for t, q, _ in map(line_units, lines):
            if t in self.tickets:
                by_standard[self.tickets[t][0]] += q
        key = (actor, args.get("scheme", ""), args.get("period", ""))
        wanted = [self._wanted(ln, actor, (AVAILABLE,)) for ln in lines]
        out, err = self._run(data, "retire", actor, args)
        if err is not None:
            if err.code == "cap_exceeded":
                assert purpose == "compliance" and self._over_cap(key, by_standard)[1], (
                    "cap_exceeded although the test's model finds room")
            if err.code == "emissions_not_recorded":
                assert key not in self.emissions
            if err.code == "standard_not_eligible":
                assert self._over_cap(key, by_standard)[0], "refused an eligible standard"
            return
        assert actor in HOLDING and not self.freezes[actor], f"frozen or non-holding {actor} retired"
        assert rid not in self.retirement_ids
        self.retirement_ids.add(rid)
        exact = set().union(*(e for _, _, e in wanted))
        check_moves(self.changes, lambda t, old, new: old == (actor, AVAILABLE, "")
                    and new == (actor, RETIRED, rid), counts={t: q for t, q, _ in wanted},
                    exact=exact, what="retire")
        if purpose == "compliance":
            assert key in self.emissions, "compliance retirement without recorded emissions"
            ineligible, over = self._over_cap(key, by_standard)
            assert not ineligible, f"ineligible standard used for compliance: {dict(by_standard)}"
            assert not over, f"compliance cap exceeded: {dict(by_standard)} on top of {dict(self.used[key])}"
            self.used[key].update(by_standard)
            # The cap, with the limits in force now, holds on the registry's own figures too.
            view = self.app.projection().compliance_view(*key)
            standards_bp, total_bp = self._limits_in_force(key[1], key[2])
            e = self.emissions[key]
            for s, row in view["standards"].items():
                assert row["used_t"] <= cap(e, standards_bp.get(s, 0)), f"{s} cap exceeded"
            assert view["used_t"] <= cap(e, total_bp), "total cap exceeded"

    @rule(data=st.data())
    def regulate_compliance(self, data) -> None:
        if data.draw(st.integers(0, 2), label="set limits?") == 2:
            self._set_limits(data)
        else:
            self._record_emissions(data)

    def _record_emissions(self, data) -> None:
        actor = self._actor(data, REGULATOR)
        eligible = sorted({h for (t, _), (h, s, _r) in self.units.items()
                           if s == AVAILABLE and self.tickets[t][0] != "SMCER"})
        entity = self._choose(data, eligible or HOLDING, ANYONE, "entity")
        every = [(sc, pe) for sc in SCHEMES for pe in PERIODS]
        key = (entity, *self._choose(data, [("fujian_ets", "2021"), ("national_ets", "2021")], every,
                                     "scheme, period", 3))
        e = data.draw(st.integers(0, 800), label="verified emissions")
        out, _ = self._run(data, "record_emissions", actor, {
            "entity": entity, "scheme": key[1], "period": key[2], "verified_emissions_t": e})
        if out:
            assert actor == REGULATOR and entity in HOLDING
            self.emissions[key] = e
            assert not self.changes

    def _set_limits(self, data) -> None:
        actor = self._actor(data, REGULATOR)
        scheme, period = data.draw(st.sampled_from(SCHEMES)), data.draw(st.sampled_from(PERIODS))
        bps = st.sampled_from([0, 100, 500, 1000, 3000, 10000])
        limits = data.draw(st.dictionaries(st.sampled_from(["FFCER", "CCER"] * 2 + ["SMCER"]), bps,
                                           min_size=1, max_size=3),
                           label="limits_bp")
        total = data.draw(bps, label="total_bp")
        out, _ = self._run(data, "set_limits", actor, {
            "scheme": scheme, "period": period, "limits_bp": limits, "total_bp": total})
        if out:
            assert actor == REGULATOR and not limits.get("SMCER"), "SMCER limit accepted"
            self.limits[(scheme, period)] = ({k: v for k, v in limits.items() if k != "SMCER"}, total)
            assert not self.changes

    # Accounts --------------------------------------------------------------------------------

    @rule(data=st.data())
    def freeze_or_unfreeze(self, data) -> None:
        if any(self.freezes.values()) and data.draw(st.integers(0, 2), label="freeze?") != 2:
            self._unfreeze(data)
        else:
            self._freeze(data)

    @rule(data=st.data())
    def mandate(self, data) -> None:
        if data.draw(st.integers(0, 4), label="revoke?") == 4:
            self._revoke_mandate(data)
        else:
            self._grant_mandate(data)

    def _freeze(self, data) -> None:
        actor = self._actor(data, REGULATOR, COURT)
        holder = self._choose(data, HOLDING, ANYONE, "holder")
        out, _ = self._run(data, "freeze", actor, {"holder": holder, "reason": "涉案冻结"})
        if out:
            assert actor in (REGULATOR, COURT) and holder in HOLDING
            assert actor not in self.freezes[holder], "froze twice by the same authority"
            self.freezes[holder].add(actor)
            assert not self.changes

    def _unfreeze(self, data) -> None:
        frozen = sorted(h for h, by in self.freezes.items() if by)
        holder = self._choose(data, frozen, ANYONE, "holder", 4)
        actor = self._actor(data, *sorted(self.freezes[holder]) or [REGULATOR])
        out, _ = self._run(data, "unfreeze", actor, {"holder": holder})
        if out:
            assert actor in self.freezes[holder], f"{actor} lifted a freeze it did not set"
            self.freezes[holder].discard(actor)
            assert not self.changes

    def _grant_mandate(self, data) -> None:
        holder = self._choose(data, [h for h in HOLDING if (h, EXCHANGE) not in self.mandates],
                              ANYONE, "holder")
        actor = self._actor(data, holder)
        exchange = self._choose(data, [EXCHANGE], (BANKS[0], GHOST, INSURER), "exchange")
        out, _ = self._run(data, "grant_mandate", actor, {"holder": holder, "exchange": exchange})
        if out:
            assert actor == holder and holder in HOLDING and exchange == EXCHANGE
            assert (holder, exchange) not in self.mandates
            self.mandates.add((holder, exchange))
            assert not self.changes

    def _revoke_mandate(self, data) -> None:
        holder = self._choose(data, HOLDING, ANYONE, "holder")
        actor = self._actor(data, holder)
        exchange = self._choose(data, [EXCHANGE], (BANKS[0], GHOST), "exchange")
        out, _ = self._run(data, "revoke_mandate", actor, {"holder": holder, "exchange": exchange})
        if out:
            assert actor == holder and (holder, exchange) in self.mandates
            self.mandates.discard((holder, exchange))
            assert not self.changes

    def _cancel_units(self, data) -> None:
        actor = self._actor(data, ISSUER)
        ticket = self._ticket(data)
        holder = self._holder_of(data, ticket, (AVAILABLE,), "holder")
        line = self._line(data, ticket, holder, (AVAILABLE,))
        cancellation = self._new_id(data, "CX", {c for _, c in self.cancellation_ids})
        t, q, exact = self._wanted(line, holder, (AVAILABLE,))
        out, _ = self._run(data, "cancel_units", actor, {
            "cancellation_id": cancellation, "holder": holder, **line, "reason": "double counting"})
        if out:
            assert actor == ISSUER
            assert (t, cancellation) not in self.cancellation_ids, "a cancellation id used twice on a ticket"
            self.cancellation_ids.add((t, cancellation))
            check_moves(self.changes, lambda tt, old, new: tt == t and old == (holder, AVAILABLE, "")
                        and new == (holder, CANCELLED, f"cancellation:{cancellation}"), counts={t: q}, exact=exact,
                        what="cancel_units")

    # Idempotency -----------------------------------------------------------------------------

    @rule(data=st.data())
    def idempotency(self, data) -> None:
        what = data.draw(st.integers(0, 4), label="replay (0-1), reuse (2-3), reuse refused (4)")
        if what <= 1:
            self._replay_earlier(data)
        elif what <= 3 or not self.refused_ids:
            self._reuse_command_id(data)
        else:
            self._reuse_refused_id(data)

    def _reuse_refused_id(self, data) -> None:
        """The id of a refused command is still free: another command may take it."""
        cid = data.draw(st.sampled_from(self.refused_ids), label="refused id")
        entity = data.draw(st.sampled_from(HOLDING), label="entity")
        key = (entity, "fujian_ets", "2021")
        e = data.draw(st.integers(0, 800), label="verified emissions")
        out, err = self._run(data, "record_emissions", REGULATOR, {
            "entity": entity, "scheme": key[1], "period": key[2], "verified_emissions_t": e}, cid=cid)
        assert err is None, f"the id {cid} of a refused command could not be used: {err!r}"
        self.refused_ids.remove(cid)
        self.emissions[key] = e

    def _replay_earlier(self, data) -> None:
        name, actor, cid, args, outcome = data.draw(st.sampled_from(self.history), label="replayed")
        self._replay(name, actor, cid, args, outcome)

    def _reuse_command_id(self, data) -> None:
        name, actor, cid, args, _ = data.draw(st.sampled_from(self.history), label="reused")
        peers = [p for p, r in ROLES.items() if r == ROLES.get(actor) and p != actor]
        if peers and data.draw(st.booleans(), label="same command, another actor of the role"):
            actor = data.draw(st.sampled_from(peers), label="other actor")
        else:
            name, actor, args = "freeze", REGULATOR, {"holder": "h1",
                                                      "reason": f"reuse of {cid} {next(self.ids)}"}
        before = self.app.log_position()
        try:
            self.app.submit(name, actor, cid, copy.deepcopy(args))
        except DomainError as e:
            assert e.code == "duplicate_command", f"reused id {cid}: {e.code} ({e.message})"
        else:
            raise AssertionError(f"command id {cid} was accepted again for other content")
        assert self.app.log_position() == before

    # Invariants ------------------------------------------------------------------------------

    @invariant()
    def registry_invariants(self) -> None:
        proj = self.app.projection()
        assert proj.position == self.app.log_position()
        units = self._check_tickets(proj)
        assert units == self.units, "the projection differs from the one taken after the command"
        self._check_final_units(proj, units)
        self._check_pledged_units(units)
        self._check_frozen(proj, units)
        self._check_pledges(proj, units)
        self._check_policies_and_claims(proj)
        self._check_compliance(proj)
        self.steps += 1
        if self.steps % 15 == 0:
            self._check_rebuild(proj)
        self.step_changed = None

    def _check_rebuild(self, live) -> None:
        """A projection replayed from position 0 agrees with the live, incrementally caught-up one."""
        fresh = self.app.projection(as_of=live.position)
        assert {n: t.blocks for n, t in fresh.tickets.items()} == {
            n: t.blocks for n, t in live.tickets.items()}, "rebuilt tickets differ"
        assert {p: (x.status, x.held) for p, x in fresh.pledges.items()} == {
            p: (x.status, x.held) for p, x in live.pledges.items()}, "rebuilt pledges differ"
        assert {k: dict(a.used_t) for k, a in fresh.compliance.items()} == {
            k: dict(a.used_t) for k, a in live.compliance.items()}, "rebuilt compliance differs"

    def _check_tickets(self, proj) -> dict[Unit, UnitState]:
        """Conservation: blocks partition 1..quantity; issued = available + pledged + retired + cancelled."""
        assert set(proj.tickets) == set(self.tickets), "tickets differ from the issued ones"
        units: dict[Unit, UnitState] = {}
        per_state: Counter = Counter()  # (ticket, state) -> units, counted serial by serial
        per_holder: Counter = Counter()  # (holder, state) -> units
        for no, t in proj.tickets.items():
            standard, quantity, _owner = self.tickets[no]
            assert (t.quantity_t, t.standard) == (quantity, standard)
            expected = 1
            for first, last, holder, state, ref in t.blocks:
                assert first == expected and last >= first, f"{no}: blocks break at {expected}"
                assert state in STATES and holder in HOLDING, (no, first, last, holder, state)
                assert (state == AVAILABLE) == (ref == ""), (no, first, last, state, ref)
                for n in range(first, last + 1):
                    assert (no, n) not in units, f"{serial(no, n)} is in two blocks"
                    units[(no, n)] = (holder, state, ref)
                    per_state[(no, state)] += 1
                    per_holder[(holder, state)] += 1
                expected = last + 1
            assert expected == quantity + 1, f"{no}: blocks cover {expected - 1} of {quantity} units"
            view = proj.ticket(no)
            counts = [view[f"{s}_t"] for s in STATES]
            assert min(counts) >= 0 and sum(counts) == view["issued_t"] == quantity, view
            assert counts == [per_state[(no, s)] for s in STATES], (no, counts)
        for h in HOLDING:
            totals = proj.balances(h)["totals"]
            assert totals == {f"{s}_t": per_holder[(h, s)] for s in STATES}, (h, totals)
        return units

    def _check_final_units(self, proj, units) -> None:
        """Retired and cancelled units never change; only retire/cancel/approve_claim make them."""
        for u, was in self.final_units.items():
            assert units[u] == was, f"final unit {serial(*u)} changed from {was} to {units[u]}"
        new = {u: v for u, v in units.items() if v[1] in (RETIRED, CANCELLED) and u not in self.final_units}
        if new:
            assert self.step_changed in FINALISERS, f"{self.step_changed} retired or cancelled units"
        for (t, _n), (holder, state, ref) in new.items():
            if state == RETIRED:
                r = proj.retirements[ref]
                assert r.holder == holder and any(t == line[0] for line in r.lines)
        self.final_units.update(new)

    def _check_pledged_units(self, units) -> None:
        """Pledged units leave their pledge only by release, enforcement or an approved claim."""
        for u, was in self.pledged_units.items():
            if units[u] != was:
                assert self.step_changed in PLEDGE_EXITS, (
                    f"{self.step_changed} moved pledged unit {serial(*u)}: {was} -> {units[u]}")
        now = {u: v for u, v in units.items() if v[1] == PLEDGED}
        if set(now) - set(self.pledged_units):
            assert self.step_changed == "pledge", f"{self.step_changed} pledged units"
        self.pledged_units = now

    def _check_frozen(self, proj, units) -> None:
        """A frozen holder keeps every available unit through transfers, retirements and pledges."""
        if self.step_changed in OUTFLOWS:
            for h, kept in self.frozen_available.items():
                lost = sorted(u for u in kept if units[u] != (h, AVAILABLE, ""))
                assert not lost, f"{self.step_changed} took {len(lost)} units from frozen {h}"
        frozen = {p for p, acct in proj.participants.items() if acct.frozen}
        assert frozen == {h for h, by in self.freezes.items() if by}
        for p, acct in proj.participants.items():
            assert set(acct.freezes) == self.freezes.get(p, set()), p
            assert {(p, x) for x in acct.mandates} == {m for m in self.mandates if m[0] == p}, p
        self.frozen_available = {h: {u for u, v in units.items() if v == (h, AVAILABLE, "")}
                                 for h in frozen}

    def _check_pledges(self, proj, units) -> None:
        """Each pledge holds exactly the units pledged under its id; its figures add up, none negative."""
        assert set(proj.pledges) == set(self.pledges)
        by_ref: dict[str, set[Unit]] = defaultdict(set)
        for u, (holder, state, ref) in units.items():
            if state == PLEDGED:
                by_ref[ref].add(u)
                assert ref in proj.pledges and proj.pledges[ref].pledgor == holder, (u, holder, ref)
        for pid, p in proj.pledges.items():
            assert (p.pledgor, p.pledgee) == self.pledges[pid]
            held = {(t, n) for t, rs in p.held.items() for a, b in rs for n in range(a, b + 1)}
            assert held == by_ref.get(pid, set()), f"pledge {pid} holds other units than the tickets say"
            figures = (p.pledged_t, p.released_t, p.enforced_t, p.impaired_t, p.original_t)
            assert min(figures) >= 0, (pid, figures)
            assert p.pledged_t == len(held), f"pledge {pid}: held ranges overlap"
            assert p.pledged_t + p.released_t + p.enforced_t + p.impaired_t == p.original_t, figures
            assert p.status in ("active", "released", "enforced")
            assert p.status == "active" or not held, f"{p.status} pledge {pid} still holds units"
            view = proj.pledge(pid)
            assert min(view[k] for k in ("pledged_t", "impaired_t", "released_t", "enforced_t")) >= 0

    def _check_policies_and_claims(self, proj) -> None:
        assert set(proj.policies) == set(self.policies)
        for pid, p in proj.policies.items():
            m = self.policies[pid]
            assert (p.insured, p.covered_t, p.sum_insured_fen) == (m["insured"], m["covered"], m["sum"])
            assert (p.lost_t, p.paid_fen) == (m["lost"], m["paid"]), pid
            assert p.still_covered_t >= 0 and p.remaining_fen >= 0, pid
            assert 0 <= p.lost_t <= p.covered_t and 0 <= p.paid_fen <= p.sum_insured_fen
            view = proj.policy(pid)
            assert not view["remaining_sum_insured"].startswith("-") and view["still_covered_t"] >= 0
        assert {c: x.status for c, x in proj.claims.items()} == {
            c: m["status"] for c, m in self.claims.items()}

    def _check_compliance(self, proj) -> None:
        assert set(proj.compliance) == set(self.emissions)
        for key, account in proj.compliance.items():
            assert account.verified_emissions_t == self.emissions[key]
            assert all(v >= 0 for v in account.used_t.values())
            assert +Counter(account.used_t) == +self.used[key], key
            view = proj.compliance_view(*key)
            assert view["used_t"] == sum(self.used[key].values()) and view["remaining_t"] >= 0
            limits = self._limits_in_force(key[1], key[2])
            standards_bp, total_bp = limits if limits else ({}, 0)
            assert {s: row["limit_bp"] for s, row in view["standards"].items()} == standards_bp
            assert view["limit_bp"] == total_bp
            for row in view["standards"].values():
                assert min(row["used_t"], row["remaining_t"], row["limit_t"]) >= 0


_SETTINGS: dict[str, Any] = dict(
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)
RegistryMachine.TestCase.settings = settings(max_examples=200, **_SETTINGS)
TestRegistryInvariants = RegistryMachine.TestCase


class RegistryMachine2(RegistryMachine):
    """The same machine on a registry founded with rules edition 2: consents are signed by
    Registry.submit as the rules ask (the insured's, a freezing court's), claims are filed by
    the insured or loss payee, and a physical loss is cancelled only as far as it was confirmed.
    Each run ends with a clean audit of its log: the audit decides every command again under
    edition 2 (and holds its records' times in order)."""

    RULES_EDITION = 2

    # Insurance has more steps to take here (bind, file, confirm, approve): drawn three times as
    # often, so that runs reach approvals of confirmed losses.
    @rule(data=st.data())
    def insurance_more(self, data) -> None:
        self.insurance(data)

    @rule(data=st.data())
    def insurance_once_more(self, data) -> None:
        self.insurance(data)

    def teardown(self) -> None:
        try:
            report = audit_database(self.app.recorder, workers=1)
            assert report.ok, report.failure
        finally:
            super().teardown()


RegistryMachine2.TestCase.settings = settings(max_examples=60, **_SETTINGS)
TestRegistryInvariantsEdition2 = RegistryMachine2.TestCase
