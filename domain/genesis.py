"""The registry's first record: who operates it. Later records pin the operator's key here."""

from __future__ import annotations

from domain.base import LedgerAggregate, aggregate_id


class Genesis(LedgerAggregate):
    @staticmethod
    def id_for():
        return aggregate_id("genesis")

    class Created(LedgerAggregate.Created):
        origin: str
        operator_id: str
        operator_key: str

    def __init__(self, origin: str, operator_id: str, operator_key: str) -> None:
        self.origin = origin
        self.operator_id = operator_id
        self.operator_key = operator_key  # pinned: checkpoints are signed with this key

    @classmethod
    def create(cls, *, actor: str, command_id: str, origin: str, operator_id: str,
               operator_key: str) -> Genesis:
        return cls._create(cls.Created, id=cls.id_for(), actor=actor, command_id=command_id,
                           origin=origin, operator_id=operator_id, operator_key=operator_key)
