"""The state commitment: a Merkle root over the current state of every entity, sorted by key.

Signed inside each checkpoint, it lets anyone prove what is true *now* (this pledge is active,
these units are pledged to it and not cancelled), not only that something once happened.
Each leaf is RFC 9162's leaf hash of the canonical JSON {"key": K, "value": V}, for keys

  participant/<id>   role, name, freezes, keys (with their status)
  ticket/<no>        standard, project, issued tonnes, and every serial block
  pledge/<id>        parties, status, quantities, the ranges still pledged
  policy/<id>        parties, cover, what is still covered, sums
  retirement/<id>    holder, purpose, beneficiary, details, the ranges retired
  compliance/<entity>/<scheme>/<period>   verified emissions and offsets used by standard

and the leaves are ordered by key (byte order of the UTF-8 key).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import Any

from domain.base import LedgerAggregate
from domain.compliance import ComplianceAccount
from domain.insurance import Policy
from domain.participant import Participant
from domain.pledge import Pledge
from domain.retirement import Retirement
from domain.ticket import Ticket
from ledger import merkle
from ledger.signing import canonical_json


def _ranges(ranges: Any) -> list[list[int]]:
    return [[int(a), int(b)] for a, b in ranges]


def entry(agg: LedgerAggregate) -> tuple[str, dict[str, Any]] | None:
    """The (key, value) an aggregate contributes to the state commitment, or None."""
    key = key_of(agg)
    return None if key is None else (key, _value(agg))


def _value(agg: LedgerAggregate) -> dict[str, Any]:
    """What the commitment holds of an aggregate that has a key (see key_of)."""
    if isinstance(agg, Ticket):
        return {
            "ticket_no": agg.ticket_no, "standard": agg.standard, "project_id": agg.project_id,
            "issuer": agg.issuer, "issued_t": agg.quantity_t,
            "blocks": [[f, last, h, s, r] for f, last, h, s, r in agg.blocks]}
    if isinstance(agg, Pledge):
        return {
            "pledge_id": agg.pledge_id, "pledgor": agg.pledgor, "pledgee": agg.pledgee,
            "status": agg.status, "original_t": agg.original_t, "pledged_t": agg.pledged_t,
            "impaired_t": agg.impaired_t, "released_t": agg.released_t, "enforced_t": agg.enforced_t,
            "enforced_to": agg.enforced_to, "loan_ref": agg.loan_ref, "maturity": agg.maturity,
            "held": {t: _ranges(rs) for t, rs in sorted(agg.held.items())}}
    if isinstance(agg, Policy):
        return {
            "policy_id": agg.policy_id, "insurer": agg.insurer, "insured": agg.insured,
            "loss_payee": agg.loss_payee, "covered_t": agg.covered_t, "lost_t": agg.lost_t,
            "start": agg.start, "end": agg.end, "perils": list(agg.perils),
            "lines": [[t, _ranges(rs)] for t, rs in agg.lines]}
    if isinstance(agg, Retirement):
        return {
            "retirement_id": agg.retirement_id, "holder": agg.holder, "purpose": agg.purpose,
            "beneficiary": agg.beneficiary, "details": agg.details, "quantity_t": agg.quantity_t,
            "case_no": agg.case_no, "court": agg.court, "scheme": agg.scheme, "period": agg.period,
            "lines": [[t, s, _ranges(rs)] for t, s, rs in agg.lines]}
    if isinstance(agg, Participant):
        return {
            "participant_id": agg.participant_id, "name": agg.name, "role": agg.role,
            "frozen_by": sorted(agg.freezes), "mandates": sorted(agg.mandates),
            "keys": {k: dict(v) for k, v in sorted(agg.keys.items())}}
    if isinstance(agg, ComplianceAccount):
        return {
            "entity": agg.entity, "scheme": agg.scheme, "period": agg.period,
            "verified_emissions_t": agg.verified_emissions_t,
            "used_t": dict(sorted(agg.used_t.items()))}
    raise TypeError(f"{type(agg).__name__} is not committed to")


def key_of(agg: LedgerAggregate) -> str | None:
    """The commitment key of an aggregate, without building its value."""
    if isinstance(agg, Ticket):
        return f"ticket/{agg.ticket_no}"
    if isinstance(agg, Pledge):
        return f"pledge/{agg.pledge_id}"
    if isinstance(agg, Participant):
        return f"participant/{agg.participant_id}"
    if isinstance(agg, Policy):
        return f"policy/{agg.policy_id}"
    if isinstance(agg, Retirement):
        return f"retirement/{agg.retirement_id}"
    if isinstance(agg, ComplianceAccount):
        return f"compliance/{agg.entity}/{agg.scheme}/{agg.period}"
    return None


def leaf_bytes(key: str, value: dict[str, Any]) -> bytes:
    return canonical_json({"key": key, "value": value}, checked=True)


class StateCommitment:
    """Leaf hashes of every committed entity, kept up to date as aggregates change."""

    def __init__(self) -> None:
        self._aggregates: dict[str, LedgerAggregate] = {}
        self._leaves: dict[str, bytes] = {}
        self._keys: list[str] = []  # sorted
        self._dirty: set[str] = set()
        self._touched: dict[int, LedgerAggregate] = {}  # changed since the last refresh

    def touch(self, agg: LedgerAggregate) -> None:
        """Note that an aggregate changed; its leaf is recomputed at the next root().

        Cheap on purpose (a replay touches an aggregate at every event): the key is found once
        per aggregate and refresh."""
        self._touched[id(agg)] = agg

    def _sort_in(self) -> None:
        for agg in self._touched.values():
            key = key_of(agg)
            if key is None:
                continue
            if key not in self._aggregates:
                insort(self._keys, key)
            self._aggregates[key] = agg
            self._dirty.add(key)
        self._touched.clear()

    def _refresh(self) -> None:
        self._sort_in()
        for key in self._dirty:
            found = entry(self._aggregates[key])
            assert found is not None
            self._leaves[key] = merkle.leaf_hash(leaf_bytes(key, found[1]))
        self._dirty.clear()

    def leaf_hashes(self) -> list[bytes]:
        self._refresh()
        return [self._leaves[k] for k in self._keys]

    def root(self) -> bytes:
        return merkle.root(self.leaf_hashes())

    def __len__(self) -> int:
        self._sort_in()
        return len(self._keys)

    def value(self, key: str) -> dict[str, Any] | None:
        self._sort_in()
        agg = self._aggregates.get(key)
        found = entry(agg) if agg is not None else None
        return found[1] if found else None

    def prove(self, keys: list[str]) -> list[dict[str, Any]]:
        """Each leaf's value, its index among the sorted leaves, and its inclusion proof."""
        tree = merkle.MerkleTree(self.leaf_hashes())
        out = []
        for key in keys:
            i = bisect_left(self._keys, key)
            if i == len(self._keys) or self._keys[i] != key:
                raise KeyError(key)
            found = entry(self._aggregates[key])
            assert found is not None
            out.append({"key": key, "value": found[1], "index": i, "size": tree.size,
                        "proof": tree.inclusion_proof(i)})
        return out
