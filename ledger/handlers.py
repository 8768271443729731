"""How each command is decided: the rules that span aggregates, and the events they trigger.

A handler reads and changes aggregates only through its unit of work, and is deterministic
given the aggregates' state and the command: the registry runs it to decide a command, and the
auditor runs it again over the replayed log to prove that every recorded event is exactly what
the rules make of the signed command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from uuid import UUID

from domain import blocks as B
from domain import commands as C
from domain.base import LedgerAggregate
from domain.compliance import ComplianceAccount, SchemeLimits, limits_for
from domain.errors import DomainError
from domain.genesis import Genesis
from domain.insurance import Claim, Policy, split_payout
from domain.participant import Participant
from domain.pledge import Pledge
from domain.project import Project
from domain.retirement import Retirement
from domain.ticket import AVAILABLE, PLEDGED, Ticket
from domain.trade import Trade
from domain.values import (
    HOLDING_ROLES,
    PHYSICAL_PERILS,
    Purpose,
    Role,
    a,
    display_text,
    format_serial,
    yuan,
)
from ledger import keys as K

A = TypeVar("A", bound=LedgerAggregate)
Loader = Callable[[UUID], LedgerAggregate | None]


_ABSENT = object()


class UnitOfWork:
    """The aggregates one command loaded (None for one that does not exist) and the ones it
    created. The versions it read are those of the loaded aggregates it did not change."""

    def __init__(self, load: Loader,
                 known: tuple[dict[str, Participant], dict[str, Ticket]] | None = None) -> None:
        """`known`: participants and tickets by id and number, shared by units of work whose
        `load` gives the same object for an id every time (the audit's replayed state, which
        changes them in place); it is filled as they are found."""
        self.load = load
        self.loaded: dict[UUID, LedgerAggregate | None] = {}
        self.created: list[LedgerAggregate] = []
        # participants and tickets found, by id and number: a batch asks for the same ones again
        # and again, and one lookup of a string replaces making its aggregate id and finding it
        self._participants: dict[str, Participant] = {}
        self._tickets: dict[str, Ticket] = {}
        # (without shared ones, a unit of work's own are the only ones it knows)
        self._known_participants, self._known_tickets = (
            known if known is not None else (self._participants, self._tickets))

    def find(self, cls: type[A], aggregate_id: UUID) -> A | None:
        agg = self.loaded.get(aggregate_id, _ABSENT)
        if agg is _ABSENT:
            agg = self.load(aggregate_id)
            if agg is not None and not isinstance(agg, cls):
                raise AssertionError(f"{aggregate_id} is a {type(agg).__name__}, not a {cls.__name__}")
            self.loaded[aggregate_id] = agg
        return agg  # type: ignore[return-value]

    def get(self, cls: type[A], aggregate_id: UUID, missing: Callable[[], DomainError]) -> A:
        agg = self.find(cls, aggregate_id)
        if agg is None:
            raise missing()
        return agg

    def add(self, agg: LedgerAggregate) -> LedgerAggregate:
        agg_id = agg.__dict__["_id"]
        # (an id found absent already, as absent() leaves it, is not looked up again)
        if self.loaded.get(agg_id, _ABSENT) is not None and self.find(type(agg), agg_id) is not None:
            raise AssertionError("add() of an aggregate that exists")
        self.loaded[agg_id] = agg
        self.created.append(agg)
        return agg

    def changed(self) -> list[LedgerAggregate]:
        # _pending_events: the library's list behind the pending_events property, read without
        # a property call per aggregate (a batch loads a thousand)
        return [a for a in self.loaded.values() if a is not None and a._pending_events]

    def read_set(self) -> list[tuple[UUID, int]]:
        """(id, version read) of every aggregate loaded and not changed (0: it did not exist).
        Call it before the changed aggregates' events are collected."""
        return [(agg_id, agg.version if agg is not None else 0)
                for agg_id, agg in self.loaded.items()
                if agg is None or not agg._pending_events]

    # Lookups that refuse with the domain's codes --------------------------------------------

    def participant(self, participant_id: str) -> Participant:
        found = self._participants.get(participant_id)
        return found if found is not None else self._find_participant(participant_id)

    def _find_participant(self, participant_id: str) -> Participant:
        return self._find_named(self._participants, self._known_participants, participant_id,
                                Participant, Participant.id_for, lambda: DomainError(
            "unknown_participant", f"no participant {participant_id} is registered",
            participant_id=participant_id))

    def ticket(self, ticket_no: str) -> Ticket:
        found = self._tickets.get(ticket_no)
        return found if found is not None else self._find_ticket(ticket_no)

    def _find_ticket(self, ticket_no: str) -> Ticket:
        return self._find_named(self._tickets, self._known_tickets, ticket_no, Ticket,
                                Ticket.id_for, lambda: DomainError(
            "unknown_ticket", f"no ticket {ticket_no} has been issued", ticket_no=ticket_no))

    def _find_named(self, mine: dict[str, Any], known: dict[str, Any], name: str, cls: type[A],
                    id_for: Callable[[str], UUID], missing: Callable[[], DomainError]) -> A:
        """A participant or ticket not found by this unit of work yet (`mine`): from the shared
        `known` ones when there, noted as find() notes it; else found by its id."""
        found = known.get(name)
        if found is not None:
            self.loaded[found.__dict__["_id"]] = found
        else:
            found = known[name] = self.get(cls, id_for(name), missing)
        mine[name] = found
        return found

    def pledge(self, pledge_id: str) -> Pledge:
        return self.get(Pledge, Pledge.id_for(pledge_id), lambda: DomainError(
            "unknown_pledge", f"no pledge {pledge_id} exists", pledge_id=pledge_id))

    def policy(self, policy_id: str) -> Policy:
        return self.get(Policy, Policy.id_for(policy_id), lambda: DomainError(
            "unknown_policy", f"no policy {policy_id} exists", policy_id=policy_id))

    def claim(self, claim_id: str) -> Claim:
        return self.get(Claim, Claim.id_for(claim_id), lambda: DomainError(
            "unknown_claim", f"no claim {claim_id} exists", claim_id=claim_id))

    def absent(self, cls: type[LedgerAggregate], aggregate_id: UUID, what: str) -> None:
        if self.find(cls, aggregate_id) is not None:
            raise DomainError("already_exists", f"{what} is already recorded")


def rules_edition(uow: UnitOfWork, cmd: C.Command) -> int:
    """The rules edition in force for this command: the genesis's, as the command found it (so
    it is in the command's read set: an adoption committed meanwhile makes it decided again);
    for the genesis command itself, the edition it founds the registry with."""
    genesis = uow.find(Genesis, Genesis.id_for())
    if genesis is not None:
        return genesis.rules_edition
    return (cmd.get("rules_edition") or 1) if cmd.name == "initialise" else 1


def check_texts(uow: UnitOfWork, cmd: C.Command) -> None:
    """Rules edition 2: every human-readable text of the command displays as it reads."""
    if rules_edition(uow, cmd) >= 2:
        for name in C.TEXT_FIELDS[cmd.name]:
            value = cmd.fields.get(name)
            if value:  # (an optional text left out is "")
                display_text(value, name, multiline=name in C.MULTILINE_FIELDS)


class Handlers:
    """One method per command name: decide with a unit of work, return the outcome."""

    def table(self) -> dict[str, Callable[[UnitOfWork, C.Command], dict[str, Any]]]:
        out = {}
        for name in C.COMMAND_NAMES:
            handler = getattr(self, f"_{name}")
            # (commands without text, the trades among them, do not look the edition up)
            out[name] = _with_text_check(handler) if C.TEXT_FIELDS[name] else handler
        return out

    # Handlers: decide, trigger events, return the outcome ----------------------------------------

    def _initialise(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        if cmd.actor != cmd["operator_id"]:
            raise DomainError("not_authorized", "the registry is initialised by its own operator")
        uow.absent(Genesis, Genesis.id_for(), "the registry's genesis")
        public = self._valid_public_key(cmd["public_key"])
        genesis = Genesis.create(actor=cmd.actor, command_id=cmd.command_id, origin=cmd["origin"],
                                 operator_id=cmd["operator_id"], operator_key=public)
        uow.add(genesis)
        edition = cmd.get("rules_edition")
        if edition is not None and edition > 1:
            genesis.adopt(edition, cmd.actor, cmd.command_id)
        uow.add(Participant.register(cmd["operator_id"], cmd["name"], Role.OPERATOR.value, public,
                                     K.key_id(public), cmd.actor, cmd.command_id))
        outcome = {"origin": cmd["origin"], "operator_id": cmd["operator_id"],
                   "operator_key": public, "key_id": K.key_id(public)}
        if edition is not None:  # (a genesis written before editions has none in its outcome)
            outcome["rules_edition"] = edition
        return outcome

    def _adopt_rules(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        genesis = uow.get(Genesis, Genesis.id_for(), lambda: DomainError(
            "unknown_participant", "the registry is not initialised"))
        if cmd.actor != genesis.operator_id:
            raise DomainError("not_authorized", f"only the registry's operator {genesis.operator_id} "
                              "adopts a rules edition")
        current, edition = genesis.rules_edition, cmd["edition"]
        if edition <= current:
            raise DomainError("invalid_argument", f"the registry follows rules edition {current}; "
                              f"edition {edition} is not newer, and an edition once adopted is not "
                              "left", field="edition", current=current, edition=edition)
        genesis.adopt(edition, cmd.actor, cmd.command_id)
        return {"edition": edition, "previous_edition": current}

    def _register_participant(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        pid = cmd["participant_id"]
        if cmd["role"] == Role.OPERATOR:
            raise DomainError("not_authorized", "a registry has one operator, recorded at initialisation")
        uow.absent(Participant, Participant.id_for(pid), f"participant {pid}")
        public = self._valid_public_key(cmd["public_key"])
        uow.add(Participant.register(pid, cmd["name"], cmd["role"], public, K.key_id(public),
                                     cmd.actor, cmd.command_id))
        return {"participant_id": pid, "role": cmd["role"], "key_id": K.key_id(public)}

    def _rotate_key(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        participant = self._key_owner(uow, cmd, "rotate")
        public = self._valid_public_key(cmd["new_public_key"])
        old = participant.rotate_key(public, K.key_id(public), cmd.actor, cmd.command_id)
        return {"participant_id": participant.participant_id, "old_key_id": old,
                "key_id": K.key_id(public), "by": cmd.actor}

    def _revoke_key(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        participant = self._key_owner(uow, cmd, "revoke")
        participant.revoke_key(cmd["key_id"], cmd["reason"], cmd.actor, cmd.command_id)
        return {"participant_id": participant.participant_id, "key_id": cmd["key_id"],
                "by": cmd.actor}

    @staticmethod
    def _key_owner(uow: UnitOfWork, cmd: C.Command, doing: str) -> Participant:
        participant = uow.participant(cmd["participant_id"])
        actor = uow.participant(cmd.actor)
        if participant.role == Role.OPERATOR:
            raise DomainError("not_authorized", "the operator's key is pinned by the genesis record; "
                              f"it cannot {doing} it here")
        if cmd.actor != participant.participant_id and actor.role != Role.OPERATOR:
            raise DomainError("not_authorized", f"only {participant.participant_id} itself, or the "
                              f"registry operator when its key is lost, may {doing} its key")
        return participant

    @staticmethod
    def _valid_public_key(text: str) -> str:
        K.raw_public(text)
        return text

    def _register_project(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        self._holder(uow, cmd["owner"])
        pid = cmd["project_id"]
        uow.absent(Project, Project.id_for(pid), f"project {pid}")
        fields = {k: cmd[k] for k in ("project_id", "name", "owner", "county", "area_mu", "standard",
                                      "methodology")}
        uow.add(Project.register(actor=cmd.actor, command_id=cmd.command_id, issuer=cmd.actor, **fields))
        return {"project_id": pid}

    def _issue_ticket(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        project = uow.get(Project, Project.id_for(cmd["project_id"]), lambda: DomainError(
            "unknown_project", f"no project {cmd['project_id']} is registered",
            project_id=cmd["project_id"]))
        if project.issuer != cmd.actor:
            raise DomainError("not_authorized", f"project {project.project_id} was registered by "
                              f"{project.issuer}; only it may issue tickets for it")
        if project.standard != cmd["standard"]:
            raise DomainError("standard_mismatch", f"project {project.project_id} is a "
                              f"{project.standard} project; the ticket says {cmd['standard']}")
        no = cmd["ticket_no"]
        uow.absent(Ticket, Ticket.id_for(no), f"ticket {no}")
        uow.add(Ticket.issue(actor=cmd.actor, command_id=cmd.command_id, ticket_no=no,
                             project_id=project.project_id, standard=cmd["standard"],
                             period_start=cmd["period_start"], period_end=cmd["period_end"],
                             quantity_t=cmd["quantity_t"], issuer=cmd.actor, owner=project.owner))
        return {"ticket_no": no, "owner": project.owner, "quantity_t": cmd["quantity_t"],
                "first_serial": f"{no}-{1:07d}", "last_serial": f"{no}-{cmd['quantity_t']:07d}"}

    def _grant_mandate(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        holder = self._own_account(uow, cmd, "grant a trading mandate")
        uow.participant(cmd["exchange"]).require_role(Role.EXCHANGE, doing="receive a trading mandate")
        holder.grant_mandate(cmd["exchange"], cmd.actor, cmd.command_id)
        return {"holder": holder.participant_id, "exchange": cmd["exchange"]}

    def _revoke_mandate(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        holder = self._own_account(uow, cmd, "revoke a trading mandate")
        holder.revoke_mandate(cmd["exchange"], cmd.actor, cmd.command_id)
        return {"holder": holder.participant_id, "exchange": cmd["exchange"]}

    def _transfer(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        return self._settle_one(uow, cmd, cmd.fields, batch_id="")

    def _settle_batch(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        results = []
        for i, item in enumerate(cmd["transfers"]):
            try:
                results.append(self._settle_one(uow, cmd, item, batch_id=cmd["batch_id"]))
            except DomainError as e:
                raise DomainError(e.code, f"transfer {i} ({item['trade_id']}) of batch "
                                  f"{cmd['batch_id']}: {e.message}; nothing in the batch was recorded",
                                  index=i, trade_id=item["trade_id"], **e.details) from None
        return {"batch_id": cmd["batch_id"], "count": len(results),
                "quantity_t": sum(r["quantity_t"] for r in results), "trades": results}

    def _settle_one(self, uow: UnitOfWork, cmd: C.Command, item: dict[str, Any],
                    batch_id: str) -> dict[str, Any]:
        exchange, seller_id, buyer_id = cmd.actor, item["seller"], item["buyer"]
        seller = uow.participant(seller_id)
        self._holder(uow, buyer_id)
        seller.require_mandate(exchange)
        seller.require_not_frozen("transfer units out")
        trade_uuid = Trade.id_for(exchange, item["trade_id"])
        uow.absent(Trade, trade_uuid, f"trade {item['trade_id']} of {exchange}")
        ticket = uow.ticket(item["ticket_no"])
        ranges = ticket.units_of(seller_id, item["quantity_t"], doing="transfer",
                                 first=item["first"] or None, last=item["last"] or None)
        ticket.transfer(ranges=ranges, trade_id=item["trade_id"], exchange=exchange, seller=seller_id,
                        buyer=buyer_id, actor=cmd.actor, command_id=cmd.command_id)
        uow.add(Trade.settle(actor=cmd.actor, command_id=cmd.command_id, exchange=exchange,
                             trade_id=item["trade_id"], id=trade_uuid, seller=seller_id, buyer=buyer_id,
                             ticket_no=ticket.ticket_no, quantity_t=item["quantity_t"], ranges=ranges,
                             price_fen=item["price_fen"], mode=item["mode"], batch_id=batch_id))
        return {"trade_id": item["trade_id"], "ticket_no": ticket.ticket_no, "seller": seller_id,
                "buyer": buyer_id, "quantity_t": item["quantity_t"],
                "serials": self._serials(ticket, ranges)}

    def _pledge(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        bank = uow.participant(cmd.actor)
        bank.require_role(Role.BANK, doing="take pledges")
        pledgor = uow.participant(cmd["pledgor"])
        if pledgor.participant_id == bank.participant_id:
            raise DomainError("same_party", f"{bank.participant_id} cannot pledge units to itself")
        pledgor.require_not_frozen("pledge units")
        pid = cmd["pledge_id"]
        uow.absent(Pledge, Pledge.id_for(pid), f"pledge {pid}")
        lines = []
        for line in cmd["lines"]:
            ticket = uow.ticket(line["ticket_no"])
            ranges = ticket.units_of(pledgor.participant_id, line["quantity_t"], doing="be pledged",
                                     first=line.get("first"), last=line.get("last"))
            ticket.pledge(ranges=ranges, pledge_id=pid, pledgor=pledgor.participant_id,
                          actor=cmd.actor, command_id=cmd.command_id)
            lines.append([ticket.ticket_no, ranges])
        pledge = Pledge.create(actor=cmd.actor, command_id=cmd.command_id, pledge_id=pid,
                               pledgor=pledgor.participant_id, pledgee=bank.participant_id,
                               loan_ref=cmd["loan_ref"], secured_fen=cmd["secured_amount_fen"],
                               maturity=cmd["maturity"], lines=lines)
        uow.add(pledge)
        return {"pledge_id": pid, "pledgor": pledgor.participant_id, "pledgee": bank.participant_id,
                "pledged_t": pledge.pledged_t, "lines": self._lines_out(uow, lines)}

    def _release_pledge(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        pledge = uow.pledge(cmd["pledge_id"])
        pledge.require_pledgee(cmd.actor, "release")
        pledge.require_active("be released")
        if cmd["lines"] is None:
            lines = [[t, rs] for t, rs in sorted(pledge.held.items())]
        else:
            lines = []
            for line in cmd["lines"]:
                ticket = uow.ticket(line["ticket_no"])
                ranges = ticket.units_of(pledge.pledgor, line["quantity_t"], state=PLEDGED,
                                         ref=pledge.pledge_id, doing="be released",
                                         first=line.get("first"), last=line.get("last"))
                lines.append([ticket.ticket_no, ranges])
        for ticket_no, ranges in lines:
            uow.ticket(ticket_no).release(ranges=ranges, pledge_id=pledge.pledge_id,
                                          pledgor=pledge.pledgor, actor=cmd.actor,
                                          command_id=cmd.command_id)
        released = B.size(r for _, rs in lines for r in rs)
        pledge.release(lines, cmd.actor, cmd.command_id)
        return {"pledge_id": pledge.pledge_id, "released_t": released, "status": pledge.status,
                "pledged_t": pledge.pledged_t}

    def _enforce_pledge(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        pledge = uow.pledge(cmd["pledge_id"])
        pledge.require_pledgee(cmd.actor, "enforce")
        pledge.require_active("be enforced")
        to = cmd["to"] or pledge.pledgee
        self._holder(uow, to)
        lines = pledge.enforce(to, cmd.actor, cmd.command_id)
        for ticket_no, ranges in lines:
            uow.ticket(ticket_no).enforce(ranges=ranges, pledge_id=pledge.pledge_id,
                                          pledgor=pledge.pledgor, to=to, actor=cmd.actor,
                                          command_id=cmd.command_id)
        moved = B.size(r for _, rs in lines for r in rs)
        return {"pledge_id": pledge.pledge_id, "to": to, "enforced_t": moved, "status": pledge.status}

    def _bind_policy(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        insured = self._holder(uow, cmd["insured"])
        if cmd["loss_payee"]:
            uow.participant(cmd["loss_payee"])
        pid = cmd["policy_id"]
        uow.absent(Policy, Policy.id_for(pid), f"policy {pid}")
        lines = []
        for line in cmd["lines"]:
            ticket = uow.ticket(line["ticket_no"])
            live = [b for b in ticket.blocks if b[2] == insured.participant_id and b[3] in (AVAILABLE, PLEDGED)]
            have = B.count(live)
            if have < line["quantity_t"]:
                raise DomainError(
                    "insufficient_available",
                    f"{insured.participant_id} holds {have} t of {ticket.ticket_no} that can be insured; "
                    f"the policy asks to cover {line['quantity_t']} t",
                    ticket_no=ticket.ticket_no, held_t=have, requested_t=line["quantity_t"])
            if line.get("first"):
                wanted = [(line["first"], line["last"])]
                n = sum(B.covered_by_state(ticket.blocks, wanted, insured.participant_id, s)
                        for s in (AVAILABLE, PLEDGED))
                if n != line["quantity_t"]:
                    raise DomainError("units_unavailable", f"{insured.participant_id} does not hold "
                                      f"all of the serials to insure on {ticket.ticket_no}")
                ranges = [list(r) for r in wanted]
            else:
                ranges = [list(r) for r in B.normalise(
                    r for r in self._lowest(live, line["quantity_t"]))]
            lines.append([ticket.ticket_no, ranges])
        covered = sum(B.size(rs) for _, rs in lines)
        uow.add(Policy.bind(actor=cmd.actor, command_id=cmd.command_id, policy_id=pid,
                            insurer=cmd.actor, insured=insured.participant_id, lines=lines,
                            covered_t=covered, sum_insured_fen=cmd["sum_insured_fen"],
                            premium_fen=cmd["premium_fen"], start=cmd["start"], end=cmd["end"],
                            perils=cmd["perils"], loss_payee=cmd["loss_payee"]))
        return {"policy_id": pid, "insured": insured.participant_id, "covered_t": covered}

    @staticmethod
    def _lowest(blocks: Iterable[B.Block], quantity: int) -> list[tuple[int, int]]:
        out, need = [], quantity
        for first, last, *_ in blocks:
            if need <= 0:
                break
            take = min(need, last - first + 1)
            out.append((first, first + take - 1))
            need -= take
        return out

    def _file_claim(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        policy = uow.policy(cmd["policy_id"])
        if rules_edition(uow, cmd) >= 2:
            # The insured, or its loss payee, says it lost something: the insurer that pays
            # cannot be the one who claims the loss.
            if cmd.actor not in (policy.insured, policy.loss_payee):
                payee = f" or its loss payee {policy.loss_payee}" if policy.loss_payee else ""
                raise DomainError("not_authorized", f"only the insured {policy.insured}{payee} may "
                                  f"file a claim on policy {policy.policy_id}; its insurer "
                                  f"{policy.insurer} decides claims, it does not file them")
        elif cmd.actor not in (policy.insured, policy.insurer, policy.loss_payee):
            raise DomainError("not_authorized", f"only the insured {policy.insured}, its insurer or "
                              f"its loss payee may file a claim on policy {policy.policy_id}")
        policy.check_claim(cmd["peril"], cmd["loss_date"])
        cid = cmd["claim_id"]
        uow.absent(Claim, Claim.id_for(cid), f"claim {cid}")
        uow.add(Claim.file(actor=cmd.actor, command_id=cmd.command_id, claim_id=cid,
                           policy_id=policy.policy_id, claimant=cmd.actor, peril=cmd["peril"],
                           loss_date=cmd["loss_date"], claimed_t=cmd["claimed_t"],
                           description=cmd["description"]))
        return {"claim_id": cid, "policy_id": policy.policy_id, "status": "pending"}

    def _approve_claim(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        claim = uow.claim(cmd["claim_id"])
        policy = uow.policy(claim.policy_id)
        if cmd.actor != policy.insurer:
            raise DomainError("not_authorized", f"only the insurer {policy.insurer} may settle "
                              f"claims on policy {policy.policy_id}")
        claim.require_pending("approved")
        approved, payout = cmd["approved_t"], cmd["payout_fen"]
        physical = claim.peril in PHYSICAL_PERILS
        if physical and rules_edition(uow, cmd) >= 2:
            claim.require_confirmed_loss(approved, self._confirmers(uow, policy))
        policy.check_settlement(approved, payout, physical)
        # The insured units still alive within the policy's cover, lowest serials first.
        affected: list[tuple[Ticket, B.Block]] = []
        need = approved
        for ticket_no, ranges in policy.lines:
            ticket = uow.ticket(ticket_no)
            for first, last, holder, state, ref in ticket.insured_units(policy.insured, ranges):
                if need == 0:
                    break
                take = min(need, last - first + 1)
                affected.append((ticket, (first, first + take - 1, holder, state, ref)))
                need -= take
        if need and physical:
            have = approved - need
            raise DomainError(
                "cover_exceeded",
                f"{policy.insured} still holds {have} t of the units policy {policy.policy_id} covers; "
                f"the approval asks for {approved} t", policy_id=policy.policy_id, held_t=have,
                approved_t=approved)
        pledged: dict[str, tuple[str, int]] = {}
        for _, (first, last, _h, state, ref) in affected:
            if state == PLEDGED:
                pledgee = uow.pledge(ref).pledgee
                prev = pledged.get(ref, (pledgee, 0))[1]
                pledged[ref] = (pledgee, prev + last - first + 1)
        payees = split_payout(payout, approved, pledged, policy.loss_payee, policy.insured)
        cancelled: list[list] = []
        if physical:
            groups: dict[tuple[str, str], list] = {}
            for ticket, (first, last, _h, state, ref) in affected:
                key = (ticket.ticket_no, ref if state == PLEDGED else "")
                groups.setdefault(key, []).append([first, last])
            for (ticket_no, pledge_id), ranges in groups.items():
                ranges = [list(r) for r in B.normalise(ranges)]
                cancelled.append([ticket_no, pledge_id, ranges])
            by_ticket: dict[str, list] = {}
            for ticket_no, _pid, ranges in cancelled:
                by_ticket.setdefault(ticket_no, []).extend(ranges)
            for ticket_no, ranges in by_ticket.items():
                uow.ticket(ticket_no).cancel(
                    ranges=[list(r) for r in B.normalise(ranges)],
                    cancellation_ref=f"reversal:{claim.claim_id}", holder=policy.insured,
                    reason=f"{claim.peril} loss of {claim.loss_date} under policy {policy.policy_id}",
                    actor=cmd.actor, command_id=cmd.command_id)
            impairments: dict[str, list] = {}
            for ticket_no, pledge_id, ranges in cancelled:
                if pledge_id:
                    impairments.setdefault(pledge_id, []).append([ticket_no, ranges])
            for pledge_id, lines in impairments.items():
                uow.pledge(pledge_id).impair(claim.claim_id, lines, cmd.actor, cmd.command_id)
        claim.approve(approved, payout, cancelled, payees, cmd.actor, cmd.command_id)
        policy.settle(claim.claim_id, approved if physical else 0, payout, cmd.actor, cmd.command_id)
        return {
            "claim_id": claim.claim_id, "status": "approved", "approved_t": approved,
            "payout": yuan(payout), "cancelled_t": approved if physical else 0,
            "payees": [{"party": p, "amount": yuan(a), "basis": b} for p, a, b in payees],
            "impaired_pledges": sorted({pid for _t, pid, _r in cancelled if pid}),
        }

    def _confirm_loss(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        claim = uow.claim(cmd["claim_id"])
        policy = uow.policy(claim.policy_id)
        actor = uow.participant(cmd.actor)
        if actor.role == Role.ISSUER:
            others = sorted({uow.ticket(t).issuer for t, _ in policy.lines} - {cmd.actor})
            if others:
                raise DomainError("not_authorized", f"policy {policy.policy_id} covers tickets "
                                  f"issued by {', '.join(others)}; only {self._confirmers(uow, policy)} "
                                  f"confirms the loss of claim {claim.claim_id}",
                                  claim_id=claim.claim_id)
        claim.require_pending("confirmed")
        if claim.peril not in PHYSICAL_PERILS:
            raise DomainError("invalid_argument", f"claim {claim.claim_id} is for {claim.peril}: "
                              "it cancels no tonnes, and there is no physical loss to confirm",
                              field="claim_id", peril=claim.peril)
        claim.confirm_loss(cmd.actor, cmd["confirmed_t"], cmd["report"], cmd.actor, cmd.command_id)
        return {"claim_id": claim.claim_id, "policy_id": policy.policy_id,
                "confirmed_t": cmd["confirmed_t"], "confirmed_by": cmd.actor,
                "claimed_t": claim.claimed_t}

    @staticmethod
    def _confirmers(uow: UnitOfWork, policy: Policy) -> str:
        """Who may confirm a loss under the policy, in words: its tickets' issuer, or a
        regulator."""
        issuers = sorted({uow.ticket(t).issuer for t, _ in policy.lines})
        return (f"the tickets' issuer {issuers[0]} or a regulator" if len(issuers) == 1
                else "a regulator")

    def _reject_claim(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        claim = uow.claim(cmd["claim_id"])
        policy = uow.policy(claim.policy_id)
        if cmd.actor != policy.insurer:
            raise DomainError("not_authorized", f"only the insurer {policy.insurer} may settle "
                              f"claims on policy {policy.policy_id}")
        claim.require_pending("rejected")
        claim.reject(cmd["reason"], cmd.actor, cmd.command_id)
        return {"claim_id": claim.claim_id, "status": "rejected"}

    def _retire(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        holder = uow.participant(cmd.actor)
        if holder.role not in HOLDING_ROLES:
            raise DomainError("not_authorized", f"{holder.participant_id} is {a(holder.role)} and "
                              "holds no units to retire")
        holder.require_not_frozen("retire units")
        rid, purpose = cmd["retirement_id"], cmd["purpose"]
        uow.absent(Retirement, Retirement.id_for(rid), f"retirement {rid}")
        case_no, court, scheme, period = cmd["case_no"], cmd["court"], cmd["scheme"], cmd["period"]
        if purpose == Purpose.JUDICIAL_RESTORATION:
            if not case_no or not court:
                raise DomainError("invalid_argument", "a judicial_restoration retirement needs "
                                  "case_no and court", field="case_no")
            uow.participant(court).require_role(Role.COURT, doing="order judicial restoration")
        elif case_no or court:
            raise DomainError("invalid_argument", "case_no and court belong to judicial_restoration "
                              "retirements only", field="case_no")
        if purpose == Purpose.COMPLIANCE:
            if not scheme or not period:
                raise DomainError("invalid_argument", "a compliance retirement needs scheme and period",
                                  field="scheme")
        elif scheme or period:
            raise DomainError("invalid_argument", "scheme and period belong to compliance "
                              "retirements only", field="scheme")
        lines, by_standard = [], {}
        for line in cmd["lines"]:
            ticket = uow.ticket(line["ticket_no"])
            ranges = ticket.units_of(holder.participant_id, line["quantity_t"], doing="retire",
                                     first=line.get("first"), last=line.get("last"))
            ticket.retire(ranges=ranges, retirement_id=rid, holder=holder.participant_id,
                          actor=cmd.actor, command_id=cmd.command_id)
            lines.append([ticket.ticket_no, ticket.standard, ranges])
            by_standard[ticket.standard] = by_standard.get(ticket.standard, 0) + line["quantity_t"]
        if purpose == Purpose.COMPLIANCE:
            entity = holder.participant_id
            account = uow.find(ComplianceAccount, ComplianceAccount.id_for(entity, scheme, period))
            if account is None:
                raise DomainError(
                    "emissions_not_recorded",
                    f"no verified emissions are recorded for {entity} in {scheme} {period}",
                    entity=entity, scheme=scheme, period=period)
            limits = uow.find(SchemeLimits, SchemeLimits.id_for(scheme, period))
            account.use(rid, by_standard, limits_for(scheme, limits), cmd.actor, cmd.command_id)
        quantity = sum(by_standard.values())
        uow.add(Retirement.record(
            actor=cmd.actor, command_id=cmd.command_id, retirement_id=rid,
            holder=holder.participant_id, purpose=purpose, beneficiary=cmd["beneficiary"],
            details=cmd["details"], lines=lines, quantity_t=quantity, case_no=case_no, court=court,
            entity=holder.participant_id if purpose == Purpose.COMPLIANCE else "",
            scheme=scheme, period=period))
        return {"retirement_id": rid, "holder": holder.participant_id, "purpose": purpose,
                "quantity_t": quantity,
                "lines": [{"ticket_no": t, "standard": s, "quantity_t": B.size(rs),
                           "serials": self._serials(uow.ticket(t), rs)} for t, s, rs in lines]}

    def _record_emissions(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        entity, scheme, period = cmd["entity"], cmd["scheme"], cmd["period"]
        self._holder(uow, entity)  # an enterprise that holds and retires units
        account = uow.find(ComplianceAccount, ComplianceAccount.id_for(entity, scheme, period))
        if account is None:
            uow.add(ComplianceAccount.open(actor=cmd.actor, command_id=cmd.command_id, entity=entity,
                                           scheme=scheme, period=period,
                                           verified_emissions_t=cmd["verified_emissions_t"]))
        else:
            account.revise(cmd["verified_emissions_t"], cmd.actor, cmd.command_id)
        return {"entity": entity, "scheme": scheme, "period": period,
                "verified_emissions_t": cmd["verified_emissions_t"]}

    def _set_limits(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        scheme, period, limits, total = cmd["scheme"], cmd["period"], cmd["limits_bp"], cmd["total_bp"]
        if "SMCER" in limits and limits["SMCER"]:
            raise DomainError("standard_not_eligible", "SMCER is not eligible for compliance "
                              "offsetting in any scheme", standard="SMCER")
        limits = {k: v for k, v in limits.items() if k != "SMCER"}
        current = uow.find(SchemeLimits, SchemeLimits.id_for(scheme, period))
        if current is None:
            uow.add(SchemeLimits.set(actor=cmd.actor, command_id=cmd.command_id, scheme=scheme,
                                     period=period, standards_bp=limits, total_bp=total))
        else:
            current.change(limits, total, cmd.actor, cmd.command_id)
        return {"scheme": scheme, "period": period, "limits_bp": limits, "total_bp": total}

    def _freeze(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        account = self._holder(uow, cmd["holder"])
        account.freeze(cmd.actor, cmd["reason"], cmd.actor, cmd.command_id)
        return {"holder": account.participant_id, "frozen": True, "frozen_by": sorted(account.freezes)}

    def _unfreeze(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        account = uow.participant(cmd["holder"])
        account.unfreeze(cmd.actor, cmd.actor, cmd.command_id)
        return {"holder": account.participant_id, "frozen": account.frozen,
                "frozen_by": sorted(account.freezes)}

    def _cancel_units(self, uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        ticket = uow.ticket(cmd["ticket_no"])
        if ticket.issuer != cmd.actor:
            raise DomainError("not_authorized", f"ticket {ticket.ticket_no} was issued by "
                              f"{ticket.issuer}; only it may cancel its units")
        uow.participant(cmd["holder"])
        ref = f"cancellation:{cmd['cancellation_id']}"
        if any(b[4] == ref for b in ticket.blocks):
            raise DomainError("already_exists", f"cancellation {cmd['cancellation_id']} of ticket "
                              f"{ticket.ticket_no} is already recorded",
                              cancellation_id=cmd["cancellation_id"])
        ranges = ticket.units_of(cmd["holder"], cmd["quantity_t"], doing="be cancelled",
                                 first=cmd["first"] or None, last=cmd["last"] or None)
        ticket.cancel(ranges=ranges, cancellation_ref=ref,
                      holder=cmd["holder"], reason=cmd["reason"], actor=cmd.actor,
                      command_id=cmd.command_id)
        return {"cancellation_id": cmd["cancellation_id"], "ticket_no": ticket.ticket_no,
                "holder": cmd["holder"], "quantity_t": cmd["quantity_t"],
                "serials": self._serials(ticket, ranges)}

    # Small shared pieces -------------------------------------------------------------------

    @staticmethod
    def _holder(uow: UnitOfWork, participant_id: str) -> Participant:
        p = uow.participant(participant_id)
        if p.role not in HOLDING_ROLES:
            raise DomainError("not_authorized", f"{participant_id} is {a(p.role)}; only holders and "
                              "banks hold units", participant_id=participant_id, role=p.role)
        return p

    @staticmethod
    def _own_account(uow: UnitOfWork, cmd: C.Command, doing: str) -> Participant:
        if cmd.actor != cmd["holder"]:
            raise DomainError("not_authorized", f"only {cmd['holder']} may {doing} for its own account")
        return Handlers._holder(uow, cmd["holder"])

    @staticmethod
    def _serials(ticket: Ticket, ranges: Iterable[Iterable[int]]) -> list[dict[str, Any]]:
        no = ticket.ticket_no  # (ticket.serial(n) is format_serial(ticket.ticket_no, n))
        return [{"first_serial": format_serial(no, a), "last_serial": format_serial(no, b),
                 "quantity_t": b - a + 1} for a, b in ranges]

    def _lines_out(self, uow: UnitOfWork, lines: list) -> list[dict[str, Any]]:
        return [{"ticket_no": t, "quantity_t": B.size(rs), "serials": self._serials(uow.ticket(t), rs)}
                for t, rs in lines]


def _with_text_check(handler: Callable[[UnitOfWork, C.Command], dict[str, Any]]
                     ) -> Callable[[UnitOfWork, C.Command], dict[str, Any]]:
    def decide(uow: UnitOfWork, cmd: C.Command) -> dict[str, Any]:
        check_texts(uow, cmd)
        return handler(uow, cmd)

    decide.__name__ = decide.__qualname__ = handler.__name__
    return decide
