"""The record of an accepted command: its id, digest and outcome, for idempotent retries and audit."""

from __future__ import annotations

from domain.base import LedgerAggregate, aggregate_id


class CommandRecord(LedgerAggregate):
    @staticmethod
    def id_for(command_id: str):
        return aggregate_id("command", command_id)

    class Accepted(LedgerAggregate.Created):
        name: str
        digest: str
        body: bytes  # the command exactly as signed (canonical JSON)
        method: str
        path: str
        signatures: list  # [{"signer", "key_id", "base", "signature"}, ...]
        outcome: dict

    def __init__(self, name: str, digest: str, body: bytes, method: str, path: str,
                 signatures: list, outcome: dict, actor: str, command_id: str) -> None:
        self.name = name
        self.digest = digest
        self.body = body
        self.method = method
        self.path = path
        self.signatures = signatures
        self.outcome = outcome
        self.actor = actor
        self.command_id = command_id

    @classmethod
    def accept(cls, *, actor: str, command_id: str, name: str, digest: str, body: bytes,
               method: str, path: str, signatures: list, outcome: dict) -> CommandRecord:
        return cls._create(cls.Accepted, id=cls.id_for(command_id), actor=actor, command_id=command_id,
                           name=name, digest=digest, body=body, method=method, path=path,
                           signatures=signatures, outcome=outcome)
