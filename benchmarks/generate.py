"""A realistic registry of a given size, generated deterministically for the benchmarks.

About 1,000 participants (issuers, exchanges, banks, insurers, courts, a regulator, holders),
10,000 tickets at 1M events (scaled down for smaller sizes), trades settled mostly in end-of-day
batches, pledges with releases and enforcements, policies and claims, retirements of every
purpose, and compliance. Every command is signed; checkpoints are made as in production.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from domain.errors import DomainError
from domain.genesis import LATEST_EDITION
from ledger.application import Registry
from ledger.keys import Keyring

PURPOSES = ["voluntary", "event_neutrality", "judicial_restoration", "tree_planting_duty",
            "carbon_inclusive", "compliance"]


@dataclass
class World:
    """What the generator knows about who holds what, so that its commands mostly succeed."""

    holders: list[str] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)
    banks: list[str] = field(default_factory=list)
    insurers: list[str] = field(default_factory=list)
    courts: list[str] = field(default_factory=list)
    mandate: dict[str, str] = field(default_factory=dict)  # holder -> exchange
    available: dict[tuple[str, str], int] = field(default_factory=dict)  # (holder, ticket) -> t
    standard: dict[str, str] = field(default_factory=dict)
    pledges: list[tuple[str, str, str]] = field(default_factory=list)  # (pledge, bank, pledgor)
    policies: list[tuple[str, str]] = field(default_factory=list)  # (policy, insurer)
    emitters: list[str] = field(default_factory=list)


def generate(url: str, keys: Path | None, events: int, seed: int = 20211118,
             progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Fill an empty registry at `url` until it holds about `events` records."""
    rng = random.Random(seed)
    app = Registry(url, keyring=Keyring(keys))
    if app.log_position():
        raise DomainError("already_exists", f"{url} is not empty")
    started = time.perf_counter()
    w = World()
    scale = max(events / 1_000_000, 0.01)
    n_tickets = max(int(10_000 * scale), 30)
    n_holders = max(int(960 * min(1.0, scale * 4)), 30)
    n = {"cmd": 0}

    def run(name: str, actor: str, cid: str, args: dict) -> dict | None:
        n["cmd"] += 1
        try:
            return app.submit(name, actor, cid, args)
        except DomainError:
            return None

    run("initialise", "registry", "init", {"origin": "bench.carbon-ledger/registry",
                                           "operator_id": "registry", "name": "bench operator",
                                           "rules_edition": LATEST_EDITION})
    roles = ([("issuer", f"issuer-{i}") for i in range(5)] + [("regulator", "regulator")]
             + [("exchange", f"exchange-{i}") for i in range(3)]
             + [("bank", f"bank-{i}") for i in range(20)]
             + [("insurer", f"insurer-{i}") for i in range(10)]
             + [("court", f"court-{i}") for i in range(5)]
             + [("holder", f"holder-{i:04d}") for i in range(n_holders)])
    for role, pid in roles:
        run("register_participant", "registry", f"reg/{pid}",
            {"participant_id": pid, "name": f"{pid} 参与方", "role": role})
        {"holder": w.holders, "exchange": w.exchanges, "bank": w.banks, "insurer": w.insurers,
         "court": w.courts}.get(role, []).append(pid)
    for h in w.holders:
        ex = rng.choice(w.exchanges)
        w.mandate[h] = ex
        run("grant_mandate", h, f"mandate/{h}", {"holder": h, "exchange": ex})
    w.emitters = w.holders[: max(len(w.holders) // 20, 3)]
    for e in w.emitters:
        run("record_emissions", "regulator", f"em/{e}", {"entity": e, "scheme": "fujian_ets",
                                                         "period": "2025",
                                                         "verified_emissions_t": rng.randint(50_000, 500_000)})
    for t in range(n_tickets):
        issuer = f"issuer-{t % 5}"
        owner = rng.choice(w.holders)
        standard = rng.choice(["SMCER", "FFCER", "FFCER", "CCER"])
        project = f"P-{t:05d}"
        run("register_project", issuer, f"proj/{project}", {
            "project_id": project, "name": f"林场 {t}", "owner": owner, "county": "三明",
            "area_mu": rng.randint(500, 20_000), "standard": standard, "methodology": "m"})
        no = f"T-{t:07d}"
        q = rng.randint(1_000, 50_000)
        run("issue_ticket", issuer, f"issue/{no}", {
            "ticket_no": no, "project_id": project, "standard": standard,
            "period_start": "2020-01-01", "period_end": "2024-12-31", "quantity_t": q})
        w.available[(owner, no)] = q
        w.standard[no] = standard
        if progress:
            progress(app.log_position(), events)

    def pick_holding(min_t: int) -> tuple[str, str, int] | None:
        for _ in range(50):
            (h, no), q = rng.choice(list_holdings)
            if q >= min_t:
                return h, no, q
        return None

    batch_no = 0
    while app.log_position() < events:
        list_holdings = [(k, v) for k, v in w.available.items() if v > 0]
        # An end-of-day batch per exchange.
        for ex in w.exchanges:
            items = []
            for i in range(min(1000, max(10, (events - app.log_position()) // 2))):
                found = pick_holding(2)
                if not found:
                    break
                seller, no, q = found
                if w.mandate.get(seller) != ex:
                    continue
                buyer = rng.choice(w.holders)
                if buyer == seller:
                    continue
                t = rng.randint(1, max(1, q // 4))
                items.append({"trade_id": f"B{batch_no}-{i}", "seller": seller, "buyer": buyer,
                              "ticket_no": no, "quantity_t": t,
                              "price": f"{rng.randint(800, 9000) // 100}.{rng.randint(0, 99):02d}",
                              "mode": rng.choice(["negotiated", "auction", "listing"])})
                w.available[(seller, no)] = w.available.get((seller, no), 0) - t
                w.available[(buyer, no)] = w.available.get((buyer, no), 0) + t
            if items and run("settle_batch", ex, f"batch/{ex}/{batch_no}",
                             {"batch_id": f"B{batch_no}", "transfers": items}) is None:
                _refresh(app, w)  # keep the model honest if the registry said no
            batch_no += 1
        list_holdings = [(k, v) for k, v in w.available.items() if v > 0]
        _lifecycle(run, rng, w, batch_no, pick_holding)
        if progress:
            progress(app.log_position(), events)
    cp = app.operator_checkpointer()
    if cp is not None:
        cp.make()
    elapsed = time.perf_counter() - started
    result = {"events": app.log_position(), "commands": n["cmd"], "seconds": elapsed,
              "tickets": n_tickets, "participants": len(roles) + 1}
    app.close()
    return result


def _refresh(app: Registry, w: World) -> None:
    w.available.clear()
    for no, ticket in app.projection().tickets.items():
        for _first, _last, h, s, _r in ticket.blocks:
            if s == "available":
                w.available[(h, no)] = w.available.get((h, no), 0) + _last - _first + 1


def _lifecycle(run: Callable, rng: random.Random, w: World, k: int,
               pick: Callable[[int], tuple[str, str, int] | None]) -> None:
    """A round of single commands: pledges, releases, enforcements, insurance, retirements."""
    for j in range(20):
        tag = f"{k}-{j}"
        found = pick(10)
        if not found:
            return
        h, no, q = found
        roll = rng.random()
        if roll < 0.25:  # pledge
            bank = rng.choice(w.banks)
            t = rng.randint(1, q // 2)
            if run("pledge", bank, f"pledge/PL-{tag}", {
                    "pledge_id": f"PL-{tag}", "pledgor": h, "loan_ref": f"LN-{tag}",
                    "secured_amount": f"{t * 20}.00", "maturity": "2027-12-31",
                    "lines": [{"ticket_no": no, "quantity_t": t}]}):
                w.available[(h, no)] -= t
                w.pledges.append((f"PL-{tag}", bank, h))
        elif roll < 0.40 and w.pledges:  # release or enforce an earlier pledge
            pid, bank, pledgor = w.pledges.pop(rng.randrange(len(w.pledges)))
            if rng.random() < 0.7:
                run("release_pledge", bank, f"release/{pid}", {"pledge_id": pid})
            else:
                run("enforce_pledge", bank, f"enforce/{pid}", {"pledge_id": pid})
        elif roll < 0.50:  # insurance
            insurer = rng.choice(w.insurers)
            t = rng.randint(1, q)
            if run("bind_policy", insurer, f"policy/POL-{tag}", {
                    "policy_id": f"POL-{tag}", "insured": h,
                    "lines": [{"ticket_no": no, "quantity_t": t}], "sum_insured": f"{t * 10}.00",
                    "premium": f"{t // 10}.00", "start": "2024-01-01", "end": "2027-12-31",
                    "perils": ["fire", "pest", "typhoon", "price_index"]}):
                w.policies.append((f"POL-{tag}", insurer))
                if rng.random() < 0.4:
                    lost = max(1, t // 20)
                    peril = rng.choice(["fire", "pest", "price_index"])
                    run("file_claim", h, f"claim/CLM-{tag}", {
                        "claim_id": f"CLM-{tag}", "policy_id": f"POL-{tag}", "peril": peril,
                        "loss_date": "2025-06-01", "claimed_t": lost})
                    if rng.random() < 0.7:
                        if peril != "price_index":  # the ticket's issuer confirms the loss
                            run("confirm_loss", f"issuer-{int(no[2:]) % 5}",
                                f"claim/CLM-{tag}/confirm", {
                                    "claim_id": f"CLM-{tag}", "confirmed_t": lost,
                                    "report": f"核查报告 {tag}"})
                        if run("approve_claim", insurer, f"claim/CLM-{tag}/approve", {
                                "claim_id": f"CLM-{tag}", "approved_t": lost,
                                "payout": f"{lost * 5}.00"}) and peril != "price_index":
                            w.available[(h, no)] = 0  # unknown which units went: stop using them
                    else:
                        run("reject_claim", insurer, f"claim/CLM-{tag}/reject", {
                            "claim_id": f"CLM-{tag}", "reason": "not proven"})
        else:  # retirement of some purpose
            purpose = rng.choice(PURPOSES)
            t = rng.randint(1, max(1, q // 10))
            args = {"retirement_id": f"RT-{tag}", "purpose": purpose,
                    "beneficiary": f"受益人 {tag}", "lines": [{"ticket_no": no, "quantity_t": t}]}
            if purpose == "judicial_restoration":
                args.update(case_no=f"(2025)闽{tag}刑初", court=rng.choice(w.courts))
            if purpose == "compliance":
                if h not in w.emitters or w.standard[no] == "SMCER":
                    continue
                args.update(scheme="fujian_ets", period="2025")
            if run("retire", h, f"retire/RT-{tag}", args):
                w.available[(h, no)] -= t
