"""The registry's first record: who operates it, and the edition of the rulebook it follows.

Later records pin the operator's key here. The rules edition says which rules decide each
command: the edition in force at a command is the one adopted last before it (at the genesis,
or by a later `adopt_rules`). A registry that never adopted one follows edition 1, the rules
registries were written under before editions existed; `verify` re-decides every command with
the edition that was in force at its position, so old logs verify as they were written.
"""

from __future__ import annotations

from domain.base import LedgerAggregate, aggregate_id

# Each edition and what it adds to the one before.
EDITIONS: dict[int, str] = {
    1: "the rules before editions were introduced",
    2: "a policy is bound with the insured's consent; only the insured or its loss payee files a "
       "claim; a physical loss is cancelled only after the ticket's issuer or a regulator "
       "confirmed it, and units a court froze only with the court's consent; human-readable "
       "text is refused when it could display otherwise than it reads; no record is dated "
       "before the one before it",
}
LATEST_EDITION = max(EDITIONS)


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
        self.rules_edition = 1  # until one is adopted (Created carries none: see RulesAdopted)

    @classmethod
    def create(cls, *, actor: str, command_id: str, origin: str, operator_id: str,
               operator_key: str) -> Genesis:
        return cls._create(cls.Created, id=cls.id_for(), actor=actor, command_id=command_id,
                           origin=origin, operator_id=operator_id, operator_key=operator_key)

    class RulesAdopted(LedgerAggregate.Event):
        """The registry follows `edition` from the next command on (an event of its own, not a
        field of Created: genesis records written before editions must replay unchanged)."""

        edition: int

        def apply(self, agg: Genesis) -> None:
            agg.rules_edition = self.edition

    def adopt(self, edition: int, actor: str, command_id: str) -> None:
        self._emit(self.RulesAdopted, actor, command_id, edition=edition)
