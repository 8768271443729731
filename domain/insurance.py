"""Insurance (林业碳汇保险): policies over a holder's units, claims, and reversals of lost tonnes."""

from __future__ import annotations

from domain.base import LedgerAggregate, aggregate_id
from domain.errors import DomainError
from domain.values import yuan

PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"


class Policy(LedgerAggregate):
    @staticmethod
    def id_for(policy_id: str):
        return aggregate_id("policy", policy_id)

    class Bound(LedgerAggregate.Created):
        policy_id: str
        insurer: str
        insured: str
        lines: list  # [[ticket_no, [[first, last], ...]], ...]
        covered_t: int
        sum_insured_fen: int
        premium_fen: int
        start: str
        end: str
        perils: list
        loss_payee: str

    def __init__(self, policy_id: str, insurer: str, insured: str, lines: list, covered_t: int,
                 sum_insured_fen: int, premium_fen: int, start: str, end: str, perils: list,
                 loss_payee: str) -> None:
        self.policy_id = policy_id
        self.insurer = insurer
        self.insured = insured
        self.lines = [[t, [list(r) for r in rs]] for t, rs in lines]
        self.covered_t = covered_t
        self.sum_insured_fen = sum_insured_fen
        self.premium_fen = premium_fen
        self.start = start
        self.end = end
        self.perils = list(perils)
        self.loss_payee = loss_payee
        self.lost_t = 0  # tonnes cancelled by approved physical-loss claims
        self.paid_fen = 0
        self.claims: list[str] = []

    @classmethod
    def bind(cls, *, actor: str, command_id: str, policy_id: str, **fields) -> Policy:
        return cls._create(cls.Bound, id=cls.id_for(policy_id), actor=actor, command_id=command_id,
                           policy_id=policy_id, **fields)

    @property
    def still_covered_t(self) -> int:
        return self.covered_t - self.lost_t

    @property
    def remaining_fen(self) -> int:
        return self.sum_insured_fen - self.paid_fen

    def check_invariants(self) -> None:
        assert 0 <= self.lost_t <= self.covered_t
        assert 0 <= self.paid_fen <= self.sum_insured_fen

    def check_claim(self, peril: str, loss_date: str) -> None:
        if peril not in self.perils:
            raise DomainError(
                "peril_not_covered",
                f"policy {self.policy_id} covers {', '.join(self.perils)}, not {peril}",
                policy_id=self.policy_id, peril=peril,
            )
        if not (self.start <= loss_date <= self.end):
            raise DomainError(
                "outside_policy_period",
                f"loss date {loss_date} is outside policy {self.policy_id}'s period "
                f"{self.start} to {self.end}",
                policy_id=self.policy_id, loss_date=loss_date, start=self.start, end=self.end,
            )

    def check_settlement(self, approved_t: int, payout_fen: int, physical: bool) -> None:
        if not physical and approved_t > self.covered_t:
            raise DomainError(
                "cover_exceeded",
                f"policy {self.policy_id} covers {self.covered_t} t; the approval asks for "
                f"{approved_t} t", policy_id=self.policy_id, covered_t=self.covered_t,
                approved_t=approved_t,
            )
        if physical and approved_t > self.still_covered_t:
            raise DomainError(
                "cover_exceeded",
                f"policy {self.policy_id} still covers {self.still_covered_t} t; "
                f"the approval asks for {approved_t} t",
                policy_id=self.policy_id, still_covered_t=self.still_covered_t, approved_t=approved_t,
            )
        if payout_fen > self.remaining_fen:
            raise DomainError(
                "sum_insured_exceeded",
                f"policy {self.policy_id} has {yuan(self.remaining_fen)} yuan of sum insured left; "
                f"the payout is {yuan(payout_fen)} yuan",
                policy_id=self.policy_id, remaining=yuan(self.remaining_fen), payout=yuan(payout_fen),
            )

    class ClaimSettled(LedgerAggregate.Event):
        claim_id: str
        lost_t: int
        payout_fen: int

        def apply(self, agg: Policy) -> None:
            agg.lost_t += self.lost_t
            agg.paid_fen += self.payout_fen
            agg.claims.append(self.claim_id)

    def settle(self, claim_id: str, lost_t: int, payout_fen: int, actor: str, command_id: str) -> None:
        self._emit(self.ClaimSettled, actor, command_id, claim_id=claim_id, lost_t=lost_t,
                   payout_fen=payout_fen)


class Claim(LedgerAggregate):
    @staticmethod
    def id_for(claim_id: str):
        return aggregate_id("claim", claim_id)

    class Filed(LedgerAggregate.Created):
        claim_id: str
        policy_id: str
        claimant: str
        peril: str
        loss_date: str
        claimed_t: int
        description: str

    def __init__(self, claim_id: str, policy_id: str, claimant: str, peril: str, loss_date: str,
                 claimed_t: int, description: str) -> None:
        self.claim_id = claim_id
        self.policy_id = policy_id
        self.claimant = claimant
        self.peril = peril
        self.loss_date = loss_date
        self.claimed_t = claimed_t
        self.description = description
        self.status = PENDING
        self.approved_t = 0
        self.payout_fen = 0
        self.cancelled: list = []
        self.payees: list = []
        self.reason = ""
        # The physical loss as confirmed by the ticket's issuer or a regulator (rules edition 2
        # approves a physical-loss claim only after this, and for at most the tonnes confirmed).
        self.loss_confirmed_by = ""
        self.loss_confirmed_t = 0
        self.loss_report = ""

    @classmethod
    def file(cls, *, actor: str, command_id: str, claim_id: str, **fields) -> Claim:
        return cls._create(cls.Filed, id=cls.id_for(claim_id), actor=actor, command_id=command_id,
                           claim_id=claim_id, **fields)

    def require_pending(self, doing: str) -> None:
        if self.status != PENDING:
            raise DomainError(
                "claim_not_pending", f"claim {self.claim_id} is {self.status}; it cannot be {doing}",
                claim_id=self.claim_id, status=self.status,
            )

    class LossConfirmed(LedgerAggregate.Event):
        by: str  # the ticket's issuer or a regulator
        confirmed_t: int
        report: str  # the survey's reference or findings

        def apply(self, agg: Claim) -> None:
            agg.loss_confirmed_by = self.by
            agg.loss_confirmed_t = self.confirmed_t
            agg.loss_report = self.report

    def confirm_loss(self, by: str, confirmed_t: int, report: str, actor: str,
                     command_id: str) -> None:
        if self.loss_confirmed_by:
            raise DomainError(
                "already_exists", f"the loss of claim {self.claim_id} was confirmed by "
                f"{self.loss_confirmed_by} already ({self.loss_confirmed_t} t)",
                claim_id=self.claim_id, confirmed_by=self.loss_confirmed_by)
        if confirmed_t > self.claimed_t:
            raise DomainError(
                "claim_exceeded", f"claim {self.claim_id} is for {self.claimed_t} t; the "
                f"confirmation says {confirmed_t} t were lost", claim_id=self.claim_id,
                claimed_t=self.claimed_t, confirmed_t=confirmed_t)
        self._emit(self.LossConfirmed, actor, command_id, by=by, confirmed_t=confirmed_t,
                   report=report)

    def require_confirmed_loss(self, approved_t: int, confirmers: str) -> None:
        """Rules edition 2: a physical loss is cancelled only as far as it was confirmed. (More
        than was claimed is refused as that, by approve.)"""
        if approved_t > self.claimed_t:
            return
        if not self.loss_confirmed_by:
            raise DomainError(
                "loss_not_confirmed", f"claim {self.claim_id} is for a {self.peril} loss: its "
                f"tonnes are cancelled only once {confirmers} has confirmed the loss "
                "(confirm_loss)", claim_id=self.claim_id, approved_t=approved_t)
        if approved_t > self.loss_confirmed_t:
            raise DomainError(
                "loss_not_confirmed", f"{self.loss_confirmed_by} confirmed "
                f"{self.loss_confirmed_t} t lost for claim {self.claim_id}; the approval grants "
                f"{approved_t} t", claim_id=self.claim_id, confirmed_t=self.loss_confirmed_t,
                approved_t=approved_t)

    class Approved(LedgerAggregate.Event):
        approved_t: int
        payout_fen: int
        cancelled: list  # [[ticket_no, pledge_id_or_empty, [[first, last], ...]], ...]
        payees: list  # [[party, amount_fen, basis], ...]

        def apply(self, agg: Claim) -> None:
            agg.status = APPROVED
            agg.approved_t = self.approved_t
            agg.payout_fen = self.payout_fen
            agg.cancelled = self.cancelled
            agg.payees = self.payees

    class Rejected(LedgerAggregate.Event):
        reason: str

        def apply(self, agg: Claim) -> None:
            agg.status = REJECTED
            agg.reason = self.reason

    def approve(self, approved_t: int, payout_fen: int, cancelled: list, payees: list, actor: str,
                command_id: str) -> None:
        if approved_t > self.claimed_t:
            raise DomainError(
                "claim_exceeded",
                f"claim {self.claim_id} is for {self.claimed_t} t; the approval grants {approved_t} t",
                claim_id=self.claim_id, claimed_t=self.claimed_t, approved_t=approved_t,
            )
        self._emit(self.Approved, actor, command_id, approved_t=approved_t, payout_fen=payout_fen,
                   cancelled=cancelled, payees=payees)

    def reject(self, reason: str, actor: str, command_id: str) -> None:
        self._emit(self.Rejected, actor, command_id, reason=reason)


def split_payout(payout_fen: int, approved_t: int, pledged: dict[str, tuple[str, int]],
                 loss_payee: str, insured: str) -> list[list]:
    """Who receives a payout: each pledgee for its pledged share, the rest to the loss payee or insured.

    `pledged` maps pledge_id -> (pledgee, tonnes of the loss that were pledged to it). Shares are
    floored to the fen; the remainder goes to the loss payee (or insured), so the parts add up.
    """
    payees: list[list] = []
    given = 0
    for pledge_id, (pledgee, t) in sorted(pledged.items()):
        share = payout_fen * t // approved_t if approved_t else 0
        if share:
            payees.append([pledgee, share, f"pledgee of {pledge_id}"])
            given += share
    rest = payout_fen - given
    if rest:
        payees.append([loss_payee or insured, rest, "loss payee" if loss_payee else "insured"])
    # The same party may appear twice (a bank both pledgee and loss payee): merge.
    merged: dict[str, list] = {}
    for party, amount, basis in payees:
        if party in merged:
            merged[party][1] += amount
            merged[party][2] += f"; {basis}"
        else:
            merged[party] = [party, amount, basis]
    return list(merged.values())
