"""Carbon tickets (林业碳票): issued quantities whose units are tracked serial by serial.

The ticket is the consistency boundary for its units: every movement of a unit is an event of
its ticket, so "each unit has one holder and one state" and conservation are checked in one place.
Command methods decide (and may refuse); event `apply` methods only change state, so that
history always loads whatever today's rules are.
"""

from __future__ import annotations

from collections.abc import Sequence

from domain import blocks as B
from domain.base import LedgerAggregate, id_memo
from domain.errors import DomainError
from domain.values import UnitState, format_serial

AVAILABLE = UnitState.AVAILABLE.value
PLEDGED = UnitState.PLEDGED.value
RETIRED = UnitState.RETIRED.value
CANCELLED = UnitState.CANCELLED.value


def _ranges(ranges: Sequence[Sequence[int]]) -> list[list[int]]:
    return [[int(a), int(b)] for a, b in ranges]


class Ticket(LedgerAggregate):
    id_for = staticmethod(id_memo("ticket"))

    class Issued(LedgerAggregate.Created):
        ticket_no: str
        project_id: str
        standard: str
        period_start: str
        period_end: str
        quantity_t: int
        issuer: str
        owner: str

    def __init__(self, ticket_no: str, project_id: str, standard: str, period_start: str,
                 period_end: str, quantity_t: int, issuer: str, owner: str) -> None:
        self.ticket_no = ticket_no
        self.project_id = project_id
        self.standard = standard
        self.period_start = period_start
        self.period_end = period_end
        self.quantity_t = quantity_t
        self.issuer = issuer
        self.owner = owner
        self.blocks: list[B.Block] = [(1, quantity_t, B.interned(owner), AVAILABLE, "")]

    @classmethod
    def issue(cls, *, actor: str, command_id: str, ticket_no: str, **fields) -> Ticket:
        return cls._create(cls.Issued, id=cls.id_for(ticket_no), actor=actor, command_id=command_id,
                           ticket_no=ticket_no, **fields)

    # Reading -------------------------------------------------------------------------------

    def serial(self, n: int) -> str:
        return format_serial(self.ticket_no, n)

    def count(self, holder: str | None = None, state: str | None = None, ref: str | None = None) -> int:
        return B.count(self.blocks, holder, state, ref)

    def totals(self, holder: str | None = None) -> dict[str, int]:
        out = {s.value: 0 for s in UnitState}
        for first, last, h, s, _ in self.blocks:
            if holder is None or h == holder:
                out[s] += last - first + 1
        return out

    def check_invariants(self) -> None:
        B.check_partition(self.blocks, self.quantity_t)
        for first, last, _holder, state, ref in self.blocks:
            assert state in (AVAILABLE, PLEDGED, RETIRED, CANCELLED), state
            assert (state == AVAILABLE) == (ref == ""), (first, last, state, ref)

    # Deciding which units ----------------------------------------------------------------------

    def units_of(self, holder: str, quantity: int, *, state: str = AVAILABLE, ref: str = "",
                 doing: str, first: int | None = None, last: int | None = None) -> list[list[int]]:
        """The serial ranges a command acts on: the range asked for, or the lowest serials.

        Refuses with the numbers when the holder's units in that state do not suffice.
        """
        if first is not None and last is not None:
            if last > self.quantity_t:
                raise DomainError(
                    "units_unavailable",
                    f"ticket {self.ticket_no} has serials 1 to {self.quantity_t}; "
                    f"{self.serial(last)} does not exist",
                    ticket_no=self.ticket_no,
                )
            wanted = [(first, last)]
            have = B.covered_by(self.blocks, wanted, holder, state, ref)
            if have != last - first + 1:
                pledged = B.covered_by_state(self.blocks, wanted, holder, PLEDGED) if state == AVAILABLE else 0
                code = "units_pledged" if pledged else "units_unavailable"
                raise DomainError(
                    code,
                    f"{holder} holds {have} of the {last - first + 1} units "
                    f"{self.serial(first)}..{self.serial(last)} as {state}"
                    + (f" ({pledged} of them are pledged)" if pledged else "")
                    + f"; cannot {doing}",
                    ticket_no=self.ticket_no, holder=holder, held_t=have,
                    requested_t=last - first + 1,
                )
            return _ranges(wanted)
        ranges = B.select(self.blocks, holder, state, ref, quantity)
        have = B.size(ranges)
        if have < quantity:
            if state == AVAILABLE:
                pledged = self.count(holder, PLEDGED)
                if pledged and have + pledged >= quantity:
                    raise DomainError(
                        "units_pledged",
                        f"{holder} has {have} t available on {self.ticket_no} and {pledged} t pledged; "
                        f"pledged units cannot {doing} ({quantity} t asked)",
                        ticket_no=self.ticket_no, holder=holder, available_t=have,
                        pledged_t=pledged, requested_t=quantity,
                    )
                raise DomainError(
                    "insufficient_available",
                    f"{holder} has {have} t available on {self.ticket_no}; cannot {doing} {quantity} t",
                    ticket_no=self.ticket_no, holder=holder, available_t=have, requested_t=quantity,
                )
            raise DomainError(
                "insufficient_available",
                f"{holder} has {have} t {state} on {self.ticket_no}"
                + (f" under {ref}" if ref else "") + f"; cannot {doing} {quantity} t",
                ticket_no=self.ticket_no, holder=holder, held_t=have, requested_t=quantity,
            )
        return _ranges(ranges)

    def insured_units(self, holder: str, ranges: Sequence[Sequence[int]]) -> list[B.Block]:
        """The blocks within `ranges` that `holder` still has in a live state (available or pledged)."""
        out = []
        for a, b in ranges:
            for first, last, h, s, r in B.overlapping(self.blocks, a, b):
                if h == holder and s in (AVAILABLE, PLEDGED):
                    out.append((max(first, a), min(last, b), h, s, r))
        return out

    # Events --------------------------------------------------------------------------------

    class Transferred(LedgerAggregate.Event):
        trade_id: str
        exchange: str
        seller: str
        buyer: str
        ranges: list

        def apply(self, agg: Ticket) -> None:
            B.reassign_in_place(agg.blocks, self.ranges, self.buyer, AVAILABLE, "")

    class Pledged(LedgerAggregate.Event):
        pledge_id: str
        pledgor: str
        ranges: list

        def apply(self, agg: Ticket) -> None:
            B.reassign_in_place(agg.blocks, self.ranges, self.pledgor, PLEDGED, self.pledge_id)

    class PledgeReleased(LedgerAggregate.Event):
        pledge_id: str
        pledgor: str
        ranges: list

        def apply(self, agg: Ticket) -> None:
            B.reassign_in_place(agg.blocks, self.ranges, self.pledgor, AVAILABLE, "")

    class PledgeEnforced(LedgerAggregate.Event):
        pledge_id: str
        pledgor: str
        to: str
        ranges: list

        def apply(self, agg: Ticket) -> None:
            B.reassign_in_place(agg.blocks, self.ranges, self.to, AVAILABLE, "")

    class Retired(LedgerAggregate.Event):
        retirement_id: str
        holder: str
        ranges: list

        def apply(self, agg: Ticket) -> None:
            B.reassign_in_place(agg.blocks, self.ranges, self.holder, RETIRED, self.retirement_id)

    class Cancelled(LedgerAggregate.Event):
        """Units taken out of existence: an issuer's administrative cancellation or a reversal."""

        cancellation_ref: str
        holder: str
        reason: str
        ranges: list

        def apply(self, agg: Ticket) -> None:
            B.reassign_in_place(agg.blocks, self.ranges, self.holder, CANCELLED, self.cancellation_ref)

    def transfer(self, *, ranges, trade_id: str, exchange: str, seller: str, buyer: str,
                 actor: str, command_id: str) -> None:
        self._emit(self.Transferred, actor, command_id, trade_id=trade_id, exchange=exchange,
                   seller=seller, buyer=buyer, ranges=ranges)

    def pledge(self, *, ranges, pledge_id: str, pledgor: str, actor: str, command_id: str) -> None:
        self._emit(self.Pledged, actor, command_id, pledge_id=pledge_id, pledgor=pledgor, ranges=ranges)

    def release(self, *, ranges, pledge_id: str, pledgor: str, actor: str, command_id: str) -> None:
        self._emit(self.PledgeReleased, actor, command_id, pledge_id=pledge_id, pledgor=pledgor,
                   ranges=ranges)

    def enforce(self, *, ranges, pledge_id: str, pledgor: str, to: str, actor: str,
                command_id: str) -> None:
        self._emit(self.PledgeEnforced, actor, command_id, pledge_id=pledge_id, pledgor=pledgor,
                   to=to, ranges=ranges)

    def retire(self, *, ranges, retirement_id: str, holder: str, actor: str, command_id: str) -> None:
        self._emit(self.Retired, actor, command_id, retirement_id=retirement_id, holder=holder,
                   ranges=ranges)

    def cancel(self, *, ranges, cancellation_ref: str, holder: str, reason: str, actor: str,
               command_id: str) -> None:
        self._emit(self.Cancelled, actor, command_id, cancellation_ref=cancellation_ref,
                   holder=holder, reason=reason, ranges=ranges)
