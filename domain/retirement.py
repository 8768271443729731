"""Retirements (注销): units taken out of circulation for a purpose and a beneficiary, forever."""

from __future__ import annotations

from domain.base import LedgerAggregate, aggregate_id


class Retirement(LedgerAggregate):
    @staticmethod
    def id_for(retirement_id: str):
        return aggregate_id("retirement", retirement_id)

    class Recorded(LedgerAggregate.Created):
        retirement_id: str
        holder: str
        purpose: str
        beneficiary: str
        details: str
        lines: list  # [[ticket_no, standard, [[first, last], ...]], ...]
        quantity_t: int
        case_no: str
        court: str
        entity: str
        scheme: str
        period: str

    def __init__(self, retirement_id: str, holder: str, purpose: str, beneficiary: str, details: str,
                 lines: list, quantity_t: int, case_no: str, court: str, entity: str, scheme: str,
                 period: str) -> None:
        self.retirement_id = retirement_id
        self.holder = holder
        self.purpose = purpose
        self.beneficiary = beneficiary
        self.details = details
        self.lines = lines
        self.quantity_t = quantity_t
        self.case_no = case_no
        self.court = court
        self.entity = entity
        self.scheme = scheme
        self.period = period

    @classmethod
    def record(cls, *, actor: str, command_id: str, retirement_id: str, **fields) -> Retirement:
        return cls._create(cls.Recorded, id=cls.id_for(retirement_id), actor=actor,
                           command_id=command_id, retirement_id=retirement_id, **fields)
