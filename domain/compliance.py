"""Compliance offsetting (抵消): verified emissions, offset limits per scheme and period, usage.

Limits are in basis points of verified emissions (1000 = 10%) and are floored to whole tonnes.
The usage record of an (entity, scheme, period) is one aggregate, so two compliance retirements
racing for the last tonnes conflict on it and the loser is re-checked against the cap.
"""

from __future__ import annotations

from domain.base import LedgerAggregate, aggregate_id
from domain.errors import DomainError

# scheme -> (per-standard limits, limit on all offsets together), in basis points
DEFAULT_LIMITS: dict[str, tuple[dict[str, int], int]] = {
    "fujian_ets": ({"FFCER": 1000, "CCER": 500}, 1000),
    "national_ets": ({"CCER": 500}, 500),
}
NEVER_ELIGIBLE = frozenset({"SMCER"})


def cap_t(emissions_t: int, bp: int) -> int:
    return emissions_t * bp // 10000


def percent(bp: int) -> str:
    whole, frac = divmod(bp, 100)
    return f"{whole}%" if not frac else f"{whole}.{frac:02d}".rstrip("0") + "%"


class SchemeLimits(LedgerAggregate):
    """Offset limits that a regulator set for a scheme and period, overriding the defaults."""

    @staticmethod
    def id_for(scheme: str, period: str):
        return aggregate_id("limits", scheme, period)

    class Set(LedgerAggregate.Created):
        scheme: str
        period: str
        standards_bp: dict
        total_bp: int

    def __init__(self, scheme: str, period: str, standards_bp: dict, total_bp: int) -> None:
        self.scheme = scheme
        self.period = period
        self.standards_bp = dict(standards_bp)
        self.total_bp = total_bp

    class Changed(LedgerAggregate.Event):
        standards_bp: dict
        total_bp: int

        def apply(self, agg: SchemeLimits) -> None:
            agg.standards_bp = dict(self.standards_bp)
            agg.total_bp = self.total_bp

    @classmethod
    def set(cls, *, actor: str, command_id: str, scheme: str, period: str, standards_bp: dict,
            total_bp: int) -> SchemeLimits:
        return cls._create(cls.Set, id=cls.id_for(scheme, period), actor=actor, command_id=command_id,
                           scheme=scheme, period=period, standards_bp=standards_bp, total_bp=total_bp)

    def change(self, standards_bp: dict, total_bp: int, actor: str, command_id: str) -> None:
        self._emit(self.Changed, actor, command_id, standards_bp=standards_bp, total_bp=total_bp)


def limits_for(scheme: str, limits: SchemeLimits | None) -> tuple[dict[str, int], int] | None:
    if limits is not None:
        return dict(limits.standards_bp), limits.total_bp
    return DEFAULT_LIMITS.get(scheme)


class ComplianceAccount(LedgerAggregate):
    @staticmethod
    def id_for(entity: str, scheme: str, period: str):
        return aggregate_id("compliance", entity, scheme, period)

    class Opened(LedgerAggregate.Created):
        entity: str
        scheme: str
        period: str
        verified_emissions_t: int

    def __init__(self, entity: str, scheme: str, period: str, verified_emissions_t: int) -> None:
        self.entity = entity
        self.scheme = scheme
        self.period = period
        self.verified_emissions_t = verified_emissions_t
        self.used_t: dict[str, int] = {}
        self.retirements: list[str] = []

    @classmethod
    def open(cls, *, actor: str, command_id: str, entity: str, scheme: str, period: str,
             verified_emissions_t: int) -> ComplianceAccount:
        return cls._create(cls.Opened, id=cls.id_for(entity, scheme, period), actor=actor,
                           command_id=command_id, entity=entity, scheme=scheme, period=period,
                           verified_emissions_t=verified_emissions_t)

    @property
    def total_used_t(self) -> int:
        return sum(self.used_t.values())

    class EmissionsRevised(LedgerAggregate.Event):
        verified_emissions_t: int

        def apply(self, agg: ComplianceAccount) -> None:
            agg.verified_emissions_t = self.verified_emissions_t

    class OffsetUsed(LedgerAggregate.Event):
        retirement_id: str
        standard: str
        quantity_t: int

        def apply(self, agg: ComplianceAccount) -> None:
            agg.used_t[self.standard] = agg.used_t.get(self.standard, 0) + self.quantity_t
            agg.retirements.append(self.retirement_id)

    def revise(self, verified_emissions_t: int, actor: str, command_id: str) -> None:
        self._emit(self.EmissionsRevised, actor, command_id, verified_emissions_t=verified_emissions_t)

    def use(self, retirement_id: str, by_standard: dict[str, int],
            limits: tuple[dict[str, int], int] | None, actor: str, command_id: str) -> None:
        """Record offsets used by a compliance retirement, refusing when a limit would be exceeded."""
        where = f"{self.entity} in {self.scheme} {self.period}"
        if limits is None:
            raise DomainError(
                "standard_not_eligible", f"scheme {self.scheme} {self.period} has no offset limits",
                scheme=self.scheme, period=self.period,
            )
        standards_bp, total_bp = limits
        e = self.verified_emissions_t
        for standard, q in sorted(by_standard.items()):
            if standard in NEVER_ELIGIBLE or standard not in standards_bp:
                raise DomainError(
                    "standard_not_eligible",
                    f"{standard} may not be used for compliance in {self.scheme} {self.period}",
                    standard=standard, scheme=self.scheme, period=self.period,
                )
            used = self.used_t.get(standard, 0)
            cap = cap_t(e, standards_bp[standard])
            if used + q > cap:
                raise DomainError(
                    "cap_exceeded",
                    f"{where} may offset at most {cap} t with {standard} "
                    f"({percent(standards_bp[standard])} of {e} t verified emissions); "
                    f"{used} t used, {q} t more asked",
                    entity=self.entity, standard=standard, limit_t=cap, used_t=used, requested_t=q,
                )
        total_cap = cap_t(e, total_bp)
        asked = sum(by_standard.values())
        if self.total_used_t + asked > total_cap:
            raise DomainError(
                "cap_exceeded",
                f"{where} may offset at most {total_cap} t in all ({percent(total_bp)} of {e} t "
                f"verified emissions); {self.total_used_t} t used, {asked} t more asked",
                entity=self.entity, limit_t=total_cap, used_t=self.total_used_t, requested_t=asked,
            )
        for standard, q in sorted(by_standard.items()):
            self._emit(self.OffsetUsed, actor, command_id, retirement_id=retirement_id,
                       standard=standard, quantity_t=q)
