"""Pledges (抵质押): a holder's units held as collateral for a bank's loan.

Pledged units cannot be transferred, pledged again or retired. They leave the pledge only by
release (back to the pledgor), enforcement (to the bank or its buyer) or reversal (an insured
physical loss cancels them: the pledge is then impaired by that quantity).
"""

from __future__ import annotations

from domain import blocks as B
from domain.base import LedgerAggregate, aggregate_id
from domain.errors import DomainError

ACTIVE, RELEASED, ENFORCED = "active", "released", "enforced"

# lines: list of [ticket_no, [[first, last], ...]]
Lines = list


def lines_size(lines: Lines) -> int:
    return sum(B.size(ranges) for _, ranges in lines)


def _subtract(held: dict[str, list], lines: Lines) -> None:
    for ticket_no, ranges in lines:
        remaining = []
        for a, b in held.get(ticket_no, []):
            pieces = [(a, b)]
            for x, y in ranges:
                nxt = []
                for p, q in pieces:
                    if y < p or x > q:
                        nxt.append((p, q))
                        continue
                    if p < x:
                        nxt.append((p, x - 1))
                    if q > y:
                        nxt.append((y + 1, q))
                pieces = nxt
            remaining.extend(pieces)
        if remaining:
            held[ticket_no] = [list(r) for r in remaining]
        else:
            held.pop(ticket_no, None)


class Pledge(LedgerAggregate):
    @staticmethod
    def id_for(pledge_id: str):
        return aggregate_id("pledge", pledge_id)

    class Created(LedgerAggregate.Created):
        pledge_id: str
        pledgor: str
        pledgee: str
        loan_ref: str
        secured_fen: int
        maturity: str
        lines: list

    def __init__(self, pledge_id: str, pledgor: str, pledgee: str, loan_ref: str, secured_fen: int,
                 maturity: str, lines: list) -> None:
        self.pledge_id = pledge_id
        self.pledgor = pledgor
        self.pledgee = pledgee
        self.loan_ref = loan_ref
        self.secured_fen = secured_fen
        self.maturity = maturity
        self.original_lines = [[t, [list(r) for r in rs]] for t, rs in lines]
        self.held: dict[str, list] = {t: [list(r) for r in rs] for t, rs in lines}
        self.original_t = lines_size(lines)
        self.released_t = 0
        self.enforced_t = 0
        self.impaired_t = 0
        self.status = ACTIVE
        self.enforced_to = ""
        self.impairments: list[dict] = []

    @classmethod
    def create(cls, *, actor: str, command_id: str, pledge_id: str, **fields) -> Pledge:
        return cls._create(cls.Created, id=cls.id_for(pledge_id), actor=actor, command_id=command_id,
                           pledge_id=pledge_id, **fields)

    @property
    def pledged_t(self) -> int:
        return sum(B.size(rs) for rs in self.held.values())

    def check_invariants(self) -> None:
        assert self.pledged_t + self.released_t + self.enforced_t + self.impaired_t == self.original_t, (
            "pledge quantities do not add up"
        )
        assert self.status != RELEASED or self.pledged_t == 0

    def require_active(self, doing: str) -> None:
        if self.status != ACTIVE:
            raise DomainError(
                "pledge_not_active",
                f"pledge {self.pledge_id} is {self.status}; it cannot {doing}",
                pledge_id=self.pledge_id, status=self.status,
            )

    def require_pledgee(self, actor: str, doing: str) -> None:
        if actor != self.pledgee:
            raise DomainError(
                "not_authorized", f"only the pledgee {self.pledgee} may {doing} pledge {self.pledge_id}",
                pledge_id=self.pledge_id,
            )

    def held_on(self, ticket_no: str) -> list:
        return self.held.get(ticket_no, [])

    class Released(LedgerAggregate.Event):
        lines: list

        def apply(self, agg: Pledge) -> None:
            _subtract(agg.held, self.lines)
            agg.released_t += lines_size(self.lines)
            if not agg.held:
                agg.status = RELEASED

    class Enforced(LedgerAggregate.Event):
        to: str
        lines: list

        def apply(self, agg: Pledge) -> None:
            _subtract(agg.held, self.lines)
            agg.enforced_t += lines_size(self.lines)
            agg.enforced_to = self.to
            agg.status = ENFORCED

    class Impaired(LedgerAggregate.Event):
        claim_id: str
        lines: list

        def apply(self, agg: Pledge) -> None:
            _subtract(agg.held, self.lines)
            n = lines_size(self.lines)
            agg.impaired_t += n
            agg.impairments.append({"claim_id": self.claim_id, "quantity_t": n})

    def release(self, lines: Lines, actor: str, command_id: str) -> None:
        self._emit(self.Released, actor, command_id, lines=lines)

    def enforce(self, to: str, actor: str, command_id: str) -> Lines:
        lines = [[t, rs] for t, rs in sorted(self.held.items())]
        self._emit(self.Enforced, actor, command_id, to=to, lines=lines)
        return lines

    def impair(self, claim_id: str, lines: Lines, actor: str, command_id: str) -> None:
        self._emit(self.Impaired, actor, command_id, claim_id=claim_id, lines=lines)
