"""Forest carbon-sink projects (碳汇项目)."""

from __future__ import annotations

from domain.base import LedgerAggregate, aggregate_id


class Project(LedgerAggregate):
    @staticmethod
    def id_for(project_id: str):
        return aggregate_id("project", project_id)

    class Registered(LedgerAggregate.Created):
        project_id: str
        name: str
        owner: str
        county: str
        area_mu: str
        standard: str
        methodology: str
        issuer: str

    def __init__(self, project_id: str, name: str, owner: str, county: str, area_mu: str,
                 standard: str, methodology: str, issuer: str) -> None:
        self.project_id = project_id
        self.name = name
        self.owner = owner
        self.county = county
        self.area_mu = area_mu
        self.standard = standard
        self.methodology = methodology
        self.issuer = issuer

    @classmethod
    def register(cls, *, actor: str, command_id: str, **fields: str) -> Project:
        return cls._create(cls.Registered, id=cls.id_for(fields["project_id"]), actor=actor,
                           command_id=command_id, **fields)
