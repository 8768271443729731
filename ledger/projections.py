"""Read models rebuilt from the notification log: balances, supply, pledges, policies, compliance,
history — as of now or as of any earlier log position.

A projection replays the log into in-memory aggregates (the same classes, the same `apply`
methods as the write side, so the two cannot drift apart) and keeps small indexes beside them.
Command records and trade records are not replayed here: they are looked up by id in the store.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.utils import resolve_topic

from domain import blocks as B
from domain.base import LedgerAggregate
from domain.command import CommandRecord
from domain.compliance import ComplianceAccount, SchemeLimits, cap_t, limits_for
from domain.errors import DomainError
from domain.genesis import Genesis
from domain.insurance import Claim, Policy
from domain.participant import Participant
from domain.pledge import Pledge
from domain.project import Project
from domain.retirement import Retirement
from domain.ticket import Ticket
from domain.trade import Trade
from domain.values import UnitState, format_serial, yuan
from ledger.commitments import StateCommitment

if TYPE_CHECKING:
    from ledger.application import Registry

PAGE = 1000
STATES = [s.value for s in UnitState]
SKIPPED_PREFIXES = _SKIPPED_PREFIXES = tuple(
    f"{cls.__module__}:{cls.__qualname__}." for cls in (CommandRecord, Trade)
)
_TRADE_PREFIX = f"{Trade.__module__}:{Trade.__qualname__}."
_RECORD_PREFIX = f"{CommandRecord.__module__}:{CommandRecord.__qualname__}."

# Events that name holders other than the one obvious from the aggregate, for holder histories.
_HOLDER_FIELDS = ("seller", "buyer", "pledgor", "to", "holder", "owner", "insured", "entity")


@dataclass
class Progress:
    done: int
    total: int
    elapsed_s: float


class Projection:
    """Every read model at one log position. `catch_up()` applies what was recorded since."""

    def __init__(self, app: Registry) -> None:
        self.app = app
        self.position = 0  # the last record applied (always the end of a command)
        self.as_of = 0  # the position asked for: the state after every command ending by then
        self.events_applied = 0
        self.aggregates: dict[UUID, LedgerAggregate] = {}
        self.tickets: dict[str, Ticket] = {}
        self.participants: dict[str, Participant] = {}
        self.projects: dict[str, Project] = {}
        self.pledges: dict[str, Pledge] = {}
        self.policies: dict[str, Policy] = {}
        self.claims: dict[str, Claim] = {}
        self.retirements: dict[str, Retirement] = {}
        self.compliance: dict[tuple[str, str, str], ComplianceAccount] = {}
        self.limits: dict[tuple[str, str], SchemeLimits] = {}
        self.genesis: Genesis | None = None
        self.commitment = StateCommitment()
        self._classes: dict[str, type] = {}
        self._by_stored_id: dict[Any, LedgerAggregate] = {}  # aggregates by id as the store gives it
        self._holder_fields: dict[str, tuple[str, ...]] = {}
        self._transcoder = app.mapper.transcoder
        self.key_owner: dict[str, str] = {}  # key id -> participant id
        # key id -> the command positions from which, and until which, the key signs
        self.key_positions: dict[str, dict[str, int | None]] = {}
        self.trade_ids: set[str] = set()  # every trade's aggregate id, in hex
        self.record_ids: set[str] = set()  # every command record's aggregate id, in hex
        self.holder_tickets: dict[str, set[str]] = {}
        # (record position, command position) of each event that concerns a ticket or a holder
        self.ticket_history: dict[str, list[tuple[int, int]]] = {}
        self.holder_history: dict[str, list[tuple[int, int]]] = {}

    # Catching up ---------------------------------------------------------------------------

    def catch_up(self, upto: int | None = None,
                 progress: Callable[[Progress], None] | None = None) -> int:
        """Apply notifications after `position` up to `upto` (inclusive; None = the end)."""
        big = upto is not None or progress is not None or self.position == 0
        # A long replay makes millions of small objects that live on: the cyclic collector would
        # scan them again and again (a third of a rebuild's time) for no garbage.
        paused = big and gc.isenabled()
        if paused:
            gc.disable()
        try:
            return self._catch_up(upto, progress)
        finally:
            if paused:
                gc.enable()

    def _catch_up(self, upto: int | None, progress: Callable[[Progress], None] | None) -> int:
        recorder = self.app.recorder
        # Without a bound or progress to report, reading until a page comes back short is one
        # query when nothing is new (the common case on the write path).
        if upto is None and progress is None:
            end = 1 << 62
        else:
            end = recorder.max_notification_id() or 0
            if upto is not None:
                end = min(end, upto)
        start_t = time.perf_counter()
        applied = 0
        total = max(end - self.position, 0) if end < 1 << 62 else 0
        # Events are applied a whole command at a time. A command's position is that of its last
        # record (its CommandRecord, where it commits): as of N means every command whose position
        # is N or less, so no read ever shows half of a command.
        pending: list[Any] = []
        read_to = self.position
        while read_to < end:
            batch = recorder.select_raw(read_to + 1, PAGE, stop=end if end < 1 << 62 else None,
                                        without_state=_SKIPPED_PREFIXES)
            if not batch:
                break
            done, pending = self._apply_commands(pending + batch if pending else batch)
            applied += done
            read_to = batch[-1][0]
            if len(batch) < PAGE and end == 1 << 62:
                break
            if progress:
                progress(Progress(applied, total, time.perf_counter() - start_t))
        self.events_applied += applied
        self.as_of = min(end, upto) if upto is not None else self.position
        return applied

    def take(self, rows: list[tuple[Any, ...]]) -> None:
        """Apply records this process has just written right after `position` (whole commands,
        as (position, originator id, version, topic, state) rows): no need to read them back."""
        done, pending = self._apply_commands(rows)
        self.events_applied += done
        self.as_of = self.position
        if pending:
            raise AssertionError(f"records after position {self.position} end inside a command")

    def _apply_commands(self, rows: list[tuple[Any, ...]]) -> tuple[int, list[tuple[Any, ...]]]:
        """Apply every whole command in `rows` (a command ends with its record) and move
        `position` to the last; (records applied, the records of a command not ended yet)."""
        start = 0
        for i, row in enumerate(rows):
            if row[3].startswith(_RECORD_PREFIX):
                self._apply_command(rows[start:i + 1], row[0])
                self.position = row[0]
                start = i + 1
        return start, rows[start:]

    def _apply_command(self, rows: list[tuple[Any, ...]], command_position: int) -> None:
        """Apply the records of one command (its position is that of its last record)."""
        apply = self._apply
        for row in rows:
            topic = row[3]
            if topic.startswith(_SKIPPED_PREFIXES):
                # Only whether a trade id or a command id is taken matters here.
                oid = row[1]
                (self.trade_ids if topic.startswith(_TRADE_PREFIX) else self.record_ids).add(
                    oid.hex if isinstance(oid, UUID) else oid)
            else:
                apply(row, command_position)

    def _apply(self, row: tuple[Any, ...], command_position: int) -> None:
        position, oid, version, topic, state = row
        agg = self._by_stored_id.get(oid)
        if agg is None:
            originator_id = oid if isinstance(oid, UUID) else UUID(oid)
            agg = self.aggregates.get(originator_id)
            if agg is not None:
                self._by_stored_id[oid] = agg
        if agg is None:
            event = self._decode(topic, originator_id, version, state)
            agg = event.mutate(None)
            self.aggregates[originator_id] = self._by_stored_id[oid] = agg
        else:  # the log is the store's own: no need for the library's id and version checks
            event = self._decode(topic, agg._id, version, state)
            event.apply(agg)
            agg._version = version
            agg._modified_on = event.timestamp
        self.commitment.touch(agg)
        pos = (position, command_position)
        if isinstance(agg, Ticket):
            ticket_no = agg.ticket_no
            if version == 1:
                self.tickets[ticket_no] = agg
            hist = self.ticket_history.get(ticket_no)
            if hist is None:
                hist = self.ticket_history[ticket_no] = []
            hist.append(pos)
            fields = self._holder_fields.get(topic)
            if fields is None:
                names = getattr(type(event), "__dataclass_fields__", {})
                fields = self._holder_fields[topic] = tuple(f for f in _HOLDER_FIELDS if f in names)
            holder_tickets, holder_history = self.holder_tickets, self.holder_history
            for f in fields:
                holder = getattr(event, f)
                if holder:
                    held = holder_tickets.get(holder)
                    if held is None:
                        held = holder_tickets[holder] = set()
                    held.add(ticket_no)
                    hist = holder_history.get(holder)
                    if hist is None:
                        holder_history[holder] = [pos]
                    elif hist[-1] != pos:
                        hist.append(pos)
        else:
            if event.originator_version == 1:
                self._index(agg)
            if isinstance(agg, Participant):  # registration, keys, freezes, mandates
                self.holder_history.setdefault(agg.participant_id, []).append(pos)
                for key_id, entry in agg.keys.items():
                    self.key_owner[key_id] = agg.participant_id
                    span = self.key_positions.setdefault(key_id, {"valid_from_position": command_position,
                                                                  "valid_until_position": None})
                    if entry["status"] != "active" and span["valid_until_position"] is None:
                        span["valid_until_position"] = command_position

    def _decode(self, topic: str, originator_id: UUID, version: int, state: bytes) -> Any:
        """The stored event as a domain event: the mapper's work, minus its per-event overheads."""
        cls = self._classes.get(topic)
        if cls is None:
            cls = self._classes[topic] = resolve_topic(topic)
            if getattr(cls, "class_version", 1) > 1:
                raise NotImplementedError(f"{topic} has versions: upcast it before projecting")
        fields = self._transcoder.decode(bytes(state))
        fields["originator_id"] = originator_id
        fields["originator_version"] = version
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", fields)
        return event

    def _index(self, agg: LedgerAggregate) -> None:
        if isinstance(agg, Participant):
            self.participants[agg.participant_id] = agg
        elif isinstance(agg, Project):
            self.projects[agg.project_id] = agg
        elif isinstance(agg, Pledge):
            self.pledges[agg.pledge_id] = agg
        elif isinstance(agg, Policy):
            self.policies[agg.policy_id] = agg
        elif isinstance(agg, Claim):
            self.claims[agg.claim_id] = agg
        elif isinstance(agg, Retirement):
            self.retirements[agg.retirement_id] = agg
        elif isinstance(agg, ComplianceAccount):
            self.compliance[(agg.entity, agg.scheme, agg.period)] = agg
        elif isinstance(agg, SchemeLimits):
            self.limits[(agg.scheme, agg.period)] = agg
        elif isinstance(agg, Genesis):
            self.genesis = agg

    # Views -------------------------------------------------------------------------------------

    def _require_participant(self, participant_id: str) -> Participant:
        p = self.participants.get(participant_id)
        if p is None:
            raise DomainError("unknown_participant", f"no participant {participant_id} is registered"
                              f" (as of position {self.as_of})", participant_id=participant_id)
        return p

    def _require_ticket(self, ticket_no: str) -> Ticket:
        t = self.tickets.get(ticket_no)
        if t is None:
            raise DomainError("unknown_ticket", f"no ticket {ticket_no} has been issued"
                              f" (as of position {self.as_of})", ticket_no=ticket_no)
        return t

    @staticmethod
    def _totals(counts: dict[str, int]) -> dict[str, int]:
        return {f"{s}_t": counts.get(s, 0) for s in STATES}

    @staticmethod
    def _block(ticket_no: str, blk: B.Block, with_holder: bool) -> dict[str, Any]:
        first, last, holder, state, ref = blk
        out: dict[str, Any] = {"first_serial": format_serial(ticket_no, first),
                               "last_serial": format_serial(ticket_no, last),
                               "quantity_t": last - first + 1}
        if with_holder:
            out["holder"] = holder
        out["state"] = state
        if state == "pledged":
            out["pledge_id"] = ref
        elif state == "retired":
            out["retirement_id"] = ref
        elif state == "cancelled":
            out["cancelled_by"] = ref
        return out

    def balances(self, holder: str) -> dict[str, Any]:
        participant = self._require_participant(holder)
        totals = dict.fromkeys(STATES, 0)
        tickets = []
        for ticket_no in sorted(self.holder_tickets.get(holder, ())):
            ticket = self.tickets[ticket_no]
            mine = [b for b in ticket.blocks if b[2] == holder]
            if not mine:
                continue
            counts = dict.fromkeys(STATES, 0)
            for first, last, _h, state, _r in mine:
                counts[state] += last - first + 1
            for s in STATES:
                totals[s] += counts[s]
            tickets.append({"ticket_no": ticket_no, "standard": ticket.standard,
                            **self._totals(counts),
                            "blocks": [self._block(ticket_no, b, False) for b in mine]})
        return {"holder": holder, "name": participant.name, "as_of": self.as_of,
                "frozen": participant.frozen, "totals": self._totals(totals), "tickets": tickets}

    def ticket(self, ticket_no: str) -> dict[str, Any]:
        t = self._require_ticket(ticket_no)
        return {"ticket_no": ticket_no, "standard": t.standard, "project_id": t.project_id,
                "issuer": t.issuer, "owner": t.owner, "period_start": t.period_start,
                "period_end": t.period_end, "issued_t": t.quantity_t, **self._totals(t.totals()),
                "as_of": self.as_of,
                "blocks": [self._block(ticket_no, b, True) for b in t.blocks]}

    def supply(self) -> list[dict[str, Any]]:
        return [{"ticket_no": no, "standard": t.standard, "issued_t": t.quantity_t,
                 **self._totals(t.totals())} for no, t in sorted(self.tickets.items())]

    def pledge(self, pledge_id: str) -> dict[str, Any]:
        p = self.pledges.get(pledge_id)
        if p is None:
            raise DomainError("unknown_pledge", f"no pledge {pledge_id} exists", pledge_id=pledge_id)
        return self._pledge_view(p)

    def _pledge_view(self, p: Pledge) -> dict[str, Any]:
        return {"pledge_id": p.pledge_id, "pledgor": p.pledgor, "pledgee": p.pledgee,
                "status": p.status, "pledged_t": p.pledged_t, "impaired_t": p.impaired_t,
                "released_t": p.released_t, "enforced_t": p.enforced_t, "original_t": p.original_t,
                "enforced_to": p.enforced_to, "loan_ref": p.loan_ref,
                "secured_amount": yuan(p.secured_fen), "maturity": p.maturity,
                "impairments": list(p.impairments),
                "lines": [{"ticket_no": t, "pledged_t": B.size(rs),
                           "serials": [{"first_serial": format_serial(t, a),
                                        "last_serial": format_serial(t, b)} for a, b in rs]}
                          for t, rs in sorted(p.held.items())]}

    def pledge_register(self, bank: str | None = None) -> list[dict[str, Any]]:
        return [self._pledge_view(p) for _, p in sorted(self.pledges.items())
                if bank is None or p.pledgee == bank]

    def policy(self, policy_id: str) -> dict[str, Any]:
        p = self.policies.get(policy_id)
        if p is None:
            raise DomainError("unknown_policy", f"no policy {policy_id} exists", policy_id=policy_id)
        return {"policy_id": p.policy_id, "insurer": p.insurer, "insured": p.insured,
                "loss_payee": p.loss_payee, "covered_t": p.covered_t, "lost_t": p.lost_t,
                "still_covered_t": p.still_covered_t, "sum_insured": yuan(p.sum_insured_fen),
                "paid": yuan(p.paid_fen), "remaining_sum_insured": yuan(p.remaining_fen),
                "premium": yuan(p.premium_fen), "start": p.start, "end": p.end,
                "perils": p.perils, "claims": [self.claim(c) for c in p.claims]
                + [self.claim(c.claim_id) for c in self.claims.values()
                   if c.policy_id == p.policy_id and c.claim_id not in p.claims]}

    def claim(self, claim_id: str) -> dict[str, Any]:
        c = self.claims.get(claim_id)
        if c is None:
            raise DomainError("unknown_claim", f"no claim {claim_id} exists", claim_id=claim_id)
        return {"claim_id": c.claim_id, "policy_id": c.policy_id, "claimant": c.claimant,
                "peril": c.peril, "loss_date": c.loss_date, "claimed_t": c.claimed_t,
                "status": c.status, "approved_t": c.approved_t, "payout": yuan(c.payout_fen),
                "payees": [{"party": p, "amount": yuan(a), "basis": b} for p, a, b in c.payees],
                "cancelled": [{"ticket_no": t, "pledge_id": pid, "quantity_t": B.size(rs)}
                              for t, pid, rs in c.cancelled],
                "reason": c.reason,
                "loss_confirmation": {"by": c.loss_confirmed_by, "confirmed_t": c.loss_confirmed_t,
                                      "report": c.loss_report} if c.loss_confirmed_by else None}

    def policies_view(self) -> list[dict[str, Any]]:
        return [self.policy(pid) for pid in sorted(self.policies)]

    def retirement(self, retirement_id: str) -> dict[str, Any]:
        r = self.retirements.get(retirement_id)
        if r is None:
            raise DomainError("unknown_retirement", f"no retirement {retirement_id} exists",
                              retirement_id=retirement_id)
        out = {"retirement_id": r.retirement_id, "holder": r.holder, "purpose": r.purpose,
               "beneficiary": r.beneficiary, "details": r.details, "quantity_t": r.quantity_t,
               "lines": [{"ticket_no": t, "standard": s, "quantity_t": B.size(rs),
                          "serials": [{"first_serial": format_serial(t, a),
                                       "last_serial": format_serial(t, b)} for a, b in rs]}
                         for t, s, rs in r.lines]}
        if r.case_no:
            out.update(case_no=r.case_no, court=r.court)
        if r.scheme:
            out.update(entity=r.entity, scheme=r.scheme, period=r.period)
        return out

    def retirements_view(self) -> list[dict[str, Any]]:
        return [self.retirement(rid) for rid in sorted(self.retirements)]

    def compliance_view(self, entity: str, scheme: str, period: str) -> dict[str, Any]:
        account = self.compliance.get((entity, scheme, period))
        limits = limits_for(scheme, self.limits.get((scheme, period)))
        standards_bp, total_bp = limits if limits else ({}, 0)
        emissions = account.verified_emissions_t if account else None
        used = dict(account.used_t) if account else {}
        total_cap = cap_t(emissions or 0, total_bp)
        total_used = sum(used.values())
        total_left = max(total_cap - total_used, 0)
        # What can still be used is bounded by both the total cap and each standard's own cap.
        per_standard = {}
        for standard, bp in sorted(standards_bp.items()):
            cap = cap_t(emissions or 0, bp)
            u = used.get(standard, 0)
            per_standard[standard] = {"limit_bp": bp, "limit_t": cap, "used_t": u,
                                      "remaining_t": min(max(cap - u, 0), total_left)}
        remaining = min(total_left, sum(v["remaining_t"] for v in per_standard.values()))
        return {"entity": entity, "scheme": scheme, "period": period,
                "verified_emissions_t": emissions, "emissions_recorded": account is not None,
                "limit_bp": total_bp, "limit_t": total_cap, "used_t": total_used,
                "remaining_t": remaining, "standards": per_standard,
                "retirements": list(account.retirements) if account else [], "as_of": self.as_of}

    def participant(self, participant_id: str) -> dict[str, Any]:
        p = self._require_participant(participant_id)
        return {"participant_id": p.participant_id, "name": p.name, "role": p.role,
                "frozen": p.frozen, "frozen_by": sorted(p.freezes), "mandates": sorted(p.mandates),
                "keys": [{"key_id": k, **v, **self.key_positions.get(k, {})}
                         for k, v in p.keys.items()]}

    def project(self, project_id: str) -> dict[str, Any]:
        p = self.projects.get(project_id)
        if p is None:
            raise DomainError("unknown_project", f"no project {project_id} is registered",
                              project_id=project_id)
        return {"project_id": p.project_id, "name": p.name, "owner": p.owner, "county": p.county,
                "area_mu": p.area_mu, "standard": p.standard, "methodology": p.methodology,
                "issuer": p.issuer,
                "tickets": sorted(no for no, t in self.tickets.items() if t.project_id == project_id)}

    def history_positions(self, *, ticket: str | None = None,
                          holder: str | None = None) -> list[tuple[int, int]]:
        if ticket is not None:
            self._require_ticket(ticket)
            return list(self.ticket_history.get(ticket, []))
        if holder is not None:
            self._require_participant(holder)
            return list(self.holder_history.get(holder, []))
        raise ValueError("history needs a ticket or a holder")

    def history(self, *, ticket: str | None = None, holder: str | None = None) -> list[dict[str, Any]]:
        """The events of a ticket or a holder; `position` is their command's, `record` their own."""
        out = []
        for record, command in self.history_positions(ticket=ticket, holder=holder):
            found = self.app.recorder.select_notifications(record, 1, stop=record)
            if found:
                out.append(self.describe(found[0], command))
        return out

    def describe(self, notification: Any, command_position: int | None = None) -> dict[str, Any]:
        """One recorded event as a plain dict: position, time, type, actor, command id, fields."""
        event = self.app.mapper.to_domain_event(notification)
        return describe_event(event, notification.id,
                              getattr(self.aggregates.get(event.originator_id), "ticket_no", None),
                              command_position)


def describe_event(event: Any, record: int, ticket_no: str | None,
                   command_position: int | None = None) -> dict[str, Any]:
    fields = {k: v for k, v in vars(event).items()
              if k not in ("originator_id", "originator_version", "timestamp", "originator_topic",
                           "actor", "command_id")}
    ranges = fields.pop("ranges", None)
    out: dict[str, Any] = {"position": command_position or record, "record": record,
                           "time": event.timestamp.isoformat(),
                           "event": type(event).__qualname__, "actor": event.actor,
                           "command_id": event.command_id}
    if ticket_no:
        out["ticket_no"] = ticket_no
    out.update(fields)
    if ranges is not None:
        out["quantity_t"] = B.size(ranges)
        if ticket_no:
            out["serials"] = [{"first_serial": format_serial(ticket_no, a),
                               "last_serial": format_serial(ticket_no, b)} for a, b in ranges]
    return out
