"""The demo story: Sanming's first carbon tickets, from issuance to a refused compliance retirement.

Public facts (ticket 0000001 to 常口村, 12,723 t; 2,723 t to 福建通海镍业 at ¥15; 10,000 t to
金森碳汇 at ¥10; 金森碳汇's 18,294 t pledge to 兴业银行三明分行 for ¥5M; 将乐's 523 t judicial
restoration) plus illustrative figures. Each step is a plain command, so the same story can be
posted over HTTP or loaded in-process. The registry follows the latest rules edition: the
policy is bound with the insured's consent, and the forestry bureau confirms the fire's loss
before the insurer approves the claim.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from domain.genesis import LATEST_EDITION

# Where ops/demo builds its registry: var/demo/ in the checkout, or this folder when set.
DEMO_DIR_ENV = "CARBON_LEDGER_DEMO_DIR"


def demo_dir() -> Path:
    chosen = os.environ.get(DEMO_DIR_ENV)
    return Path(chosen) if chosen else Path(__file__).resolve().parents[1] / "var" / "demo"


def demo_registry_path() -> Path | None:
    """The demo's registry file, when ops/demo has made one."""
    path = demo_dir() / "registry.db"
    return path if path.is_file() else None

OPERATOR = ("registry", "福建林业碳票登记簿 (demo registry operator)")
ORIGIN = "carbon-ledger.demo/sanming"

PARTICIPANTS = [
    ("sanming-forestry", "issuer", "三明市林业局"),
    ("fujian-eco", "regulator", "福建省生态环境厅"),
    ("shaxian-exchange", "exchange", "福建沙县农村产权交易中心"),
    ("cib-sanming", "bank", "兴业银行三明分行"),
    ("picc-fujian", "insurer", "中国人保财险福建省分公司"),
    ("jiangle-court", "court", "将乐县人民法院"),
    ("changkou-village", "holder", "常口村"),
    ("tonghai-nickel", "holder", "福建通海镍业"),
    ("jinsen-carbon", "holder", "金森碳汇"),
    ("xiayang-farm", "holder", "夏阳国有林场"),
    ("jiangle-defendant", "holder", "森林火灾案被告人 (defendant in a forest-fire case)"),
    ("longyan-farm", "holder", "龙岩国有林场"),
]

Step = tuple[str, str, str, dict[str, Any]]  # (command, actor, command_id, args)


def story() -> Iterator[Step]:
    """Every command of the demo, in order. The last one is refused with cap_exceeded."""
    op_id, op_name = OPERATOR
    yield "initialise", op_id, "demo-init", {"origin": ORIGIN, "operator_id": op_id, "name": op_name,
                                             "rules_edition": LATEST_EDITION}
    for pid, role, name in PARTICIPANTS:
        yield "register_participant", op_id, f"demo-register-{pid}", {
            "participant_id": pid, "name": name, "role": role}
    issuer = "sanming-forestry"
    yield "register_project", issuer, "demo-project-SM-P-001", {
        "project_id": "SM-P-001", "name": "常口村生态公益林", "owner": "changkou-village",
        "county": "将乐县", "area_mu": 3197, "standard": "SMCER",
        "methodology": "三明林业碳票碳减排量计量方法 (growth increment)"}
    yield "register_project", issuer, "demo-project-SM-P-002", {
        "project_id": "SM-P-002", "name": "夏阳国有林场森林经营", "owner": "xiayang-farm",
        "county": "沙县区", "area_mu": 2500, "standard": "SMCER",
        "methodology": "三明林业碳票碳减排量计量方法 (growth increment)"}
    yield "register_project", issuer, "demo-project-FJ-P-001", {
        "project_id": "FJ-P-001", "name": "龙岩国有林场碳汇", "owner": "longyan-farm",
        "county": "新罗区", "area_mu": 30000, "standard": "FFCER",
        "methodology": "福建林业碳汇 (FFCER) 森林经营方法学"}
    for ticket_no, project, standard, start, end, qty in [
        ("SM-0000001", "SM-P-001", "SMCER", "2016-01-01", "2020-12-31", 12_723),
        ("SM-0000002", "SM-P-002", "SMCER", "2016-01-01", "2020-12-31", 9_000),
        ("FFCER-0000001", "FJ-P-001", "FFCER", "2019-01-01", "2021-12-31", 20_000),
    ]:
        yield "issue_ticket", issuer, f"demo-issue-{ticket_no}", {
            "ticket_no": ticket_no, "project_id": project, "standard": standard,
            "period_start": start, "period_end": end, "quantity_t": qty}
    exchange = "shaxian-exchange"
    for holder in ("changkou-village", "xiayang-farm", "longyan-farm", "jinsen-carbon",
                   "tonghai-nickel", "jiangle-defendant"):
        yield "grant_mandate", holder, f"demo-mandate-{holder}", {"holder": holder, "exchange": exchange}
    for trade_id, seller, buyer, ticket_no, qty, price in [
        ("SX-2021-0001", "changkou-village", "tonghai-nickel", "SM-0000001", 2_723, "15.00"),
        ("SX-2021-0002", "changkou-village", "jinsen-carbon", "SM-0000001", 10_000, "10.00"),
        ("SX-2021-0003", "xiayang-farm", "jinsen-carbon", "SM-0000002", 8_294, "10.00"),
        ("SX-2021-0004", "xiayang-farm", "jiangle-defendant", "SM-0000002", 523, "332.50"),
        ("SX-2021-0005", "longyan-farm", "tonghai-nickel", "FFCER-0000001", 6_000, "25.00"),
    ]:
        yield "transfer", exchange, f"trade/{exchange}/{trade_id}", {
            "trade_id": trade_id, "seller": seller, "buyer": buyer, "ticket_no": ticket_no,
            "quantity_t": qty, "price": price, "mode": "negotiated"}
    yield "pledge", "cib-sanming", "pledge/PL-2021-001", {
        "pledge_id": "PL-2021-001", "pledgor": "jinsen-carbon", "loan_ref": "CIB-SM-2021-LOAN-001",
        "secured_amount": "5000000.00", "maturity": "2024-12-31",
        "lines": [{"ticket_no": "SM-0000001", "quantity_t": 10_000},
                  {"ticket_no": "SM-0000002", "quantity_t": 8_294}]}
    yield "bind_policy", "picc-fujian", "policy/POL-2021-001", {
        "policy_id": "POL-2021-001", "insured": "jinsen-carbon",
        "lines": [{"ticket_no": "SM-0000002", "quantity_t": 8_294}],
        "sum_insured": "82940.00", "premium": "1658.80", "start": "2021-06-01", "end": "2024-05-31",
        "perils": ["fire", "pest", "freeze", "landslide"], "loss_payee": "cib-sanming"}
    yield "file_claim", "jinsen-carbon", "claim/CLM-2022-001", {
        "claim_id": "CLM-2022-001", "policy_id": "POL-2021-001", "peril": "fire",
        "loss_date": "2022-03-14", "claimed_t": 500,
        "description": "山火烧毁约 40 亩林地 (fire destroyed about 40 mu)"}
    # The forestry bureau that issued the ticket surveys the burned stand and confirms the loss.
    yield "confirm_loss", issuer, "claim/CLM-2022-001/confirm", {
        "claim_id": "CLM-2022-001", "confirmed_t": 500,
        "report": "三明市林业局火灾核查：过火面积约 40 亩，损失 500 t (fire survey: about 40 mu "
                  "burned, 500 t lost)"}
    yield "approve_claim", "picc-fujian", "claim/CLM-2022-001/approve", {
        "claim_id": "CLM-2022-001", "approved_t": 500, "payout": "5000.00"}
    yield "retire", "jiangle-defendant", "retirement/RT-2021-001", {
        "retirement_id": "RT-2021-001", "purpose": "judicial_restoration",
        "beneficiary": "将乐县 forest-fire restoration (碳汇+生态司法)",
        "details": "substitute restoration ordered by 将乐县人民法院",
        "lines": [{"ticket_no": "SM-0000002", "quantity_t": 523}],
        "case_no": "2021闽0428刑初01号", "court": "jiangle-court"}
    yield "record_emissions", "fujian-eco", "emissions/tonghai-nickel/fujian_ets/2021", {
        "entity": "tonghai-nickel", "scheme": "fujian_ets", "period": "2021",
        "verified_emissions_t": 50_000}
    yield "retire", "tonghai-nickel", "retirement/RT-2022-001", {
        "retirement_id": "RT-2022-001", "purpose": "compliance", "beneficiary": "福建通海镍业",
        "details": "Fujian ETS 2021 compliance offset",
        "lines": [{"ticket_no": "FFCER-0000001", "quantity_t": 5_000}],
        "scheme": "fujian_ets", "period": "2021"}
    # One tonne more is over the 10% cap: the registry must refuse it and record nothing.
    yield "retire", "tonghai-nickel", "retirement/RT-2022-002", {
        "retirement_id": "RT-2022-002", "purpose": "compliance", "beneficiary": "福建通海镍业",
        "details": "one tonne over the cap",
        "lines": [{"ticket_no": "FFCER-0000001", "quantity_t": 1}],
        "scheme": "fujian_ets", "period": "2021"}


EXPECTED_REFUSALS = {"retirement/RT-2022-002": "cap_exceeded"}
# The parties that sign their consent to a step, beside its actor (a client posting the story
# over HTTP signs with their keys too; Registry.submit finds them by itself).
CONSENTS: dict[str, tuple[str, ...]] = {"pledge/PL-2021-001": ("jinsen-carbon",),
                                        "policy/POL-2021-001": ("jinsen-carbon",)}


def load(app: Any) -> int:
    """Submit the whole story to a registry that signs with its keyring; returns refusals seen."""
    from domain.errors import DomainError

    refused = 0
    for name, actor, command_id, args in story():
        try:
            app.submit(name, actor, command_id, args)
        except DomainError as e:
            if EXPECTED_REFUSALS.get(command_id) != e.code:
                raise
            refused += 1
    return refused
