"""The demo story told in sentences: what each command did, as a bank officer would say it.

A narrator is chosen by the command's name and whether it was accepted, and reads only the
command's arguments and its outcome, so a step added to the story (ledger.demo) is told too: a
command with no narrator of its own gets a plain sentence naming who did what. Consecutive
registrations and mandates are told as one sentence each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

Names = Callable[[str], str]  # a participant's id -> the name people know it by

CHAPTERS: dict[str, str] = {
    "accounts": "登记 Accounts",
    "issuance": "签发 Issuance",
    "trading": "交易 Trading",
    "pledge": "质押 Pledge",
    "insurance": "保险 Insurance",
    "retirement": "注销 Retirement",
    "compliance": "履约 Compliance",
    "freezes": "冻结 Freezes",
    "other": "其他 Other commands",
}


@dataclass(frozen=True)
class Step:
    """One command of the story and what became of it."""

    name: str
    actor: str
    command_id: str
    args: dict[str, Any]
    outcome: dict[str, Any] | None = None  # None when refused
    refusal: tuple[str, str] | None = None  # (code, message)


@dataclass(frozen=True)
class Line:
    chapter: str
    text: str
    refused: bool = False


def tonnes(n: Any) -> str:
    return f"{int(n):,} t"


def yuan(amount: Any) -> str:
    """'5000000.00' -> '¥5,000,000.00' (exact: money is a decimal string, never a float)."""
    return f"¥{Decimal(str(amount)):,.2f}"


def _month(date: Any) -> str:
    return str(date)[:7]


def _lines(lines: Iterable[dict[str, Any]]) -> str:
    parts = []
    for line in lines:
        if "quantity_t" in line:
            parts.append(f"{tonnes(line['quantity_t'])} of {line['ticket_no']}")
        else:
            parts.append(f"{line.get('first_serial')}..{line.get('last_serial')}")
    return _and(parts)


def _and(parts: Sequence[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _quantity(f: dict[str, Any]) -> str:
    if "quantity_t" in f:
        return tonnes(f["quantity_t"])
    return f"serials {f.get('first_serial')}..{f.get('last_serial')}"


# One sentence per command: f holds the arguments and, when accepted, the outcome over them.

def _initialise(f: dict[str, Any], n: Names) -> str:
    return f"{f['name']} opens the registry {f['origin']} as its operator."


def _register_participant(f: dict[str, Any], n: Names) -> str:
    return f"The operator registers {f['name']} as {f['role']}."


def _register_participants(fs: list[dict[str, Any]], n: Names) -> str:
    return (f"The operator registers {len(fs)} participants: "
            + _and([f"{f['name']} ({f['role']})" for f in fs]) + ".")


def _rotate_key(f: dict[str, Any], n: Names) -> str:
    now = f" (now {f['key_id']})" if f.get("key_id") else ""
    return f"{n(f['participant_id'])} replaces its signing key{now}."


def _revoke_key(f: dict[str, Any], n: Names) -> str:
    return f"{n(f['participant_id'])}'s key {f['key_id']} is revoked: {f['reason']}."


def _register_project(f: dict[str, Any], n: Names) -> str:
    return (f"{n(f['_actor'])} registers project {f['project_id']} {f['name']}: {f['area_mu']} mu "
            f"of forest in {f['county']}, owned by {n(f['owner'])}, measured as {f['standard']}.")


def _issue_ticket(f: dict[str, Any], n: Names) -> str:
    owner = f" to {n(f['owner'])}" if f.get("owner") else ""
    return (f"{n(f['_actor'])} issues ticket {f['ticket_no']}{owner}: {tonnes(f['quantity_t'])} "
            f"of {f['standard']} sequestered {str(f['period_start'])[:4]}–"
            f"{str(f['period_end'])[:4]} on project {f['project_id']}.")


def _grant_mandate(f: dict[str, Any], n: Names) -> str:
    return f"{n(f['holder'])} lets {n(f['exchange'])} trade its units."


def _grant_mandates(fs: list[dict[str, Any]], n: Names) -> str:
    exchanges = sorted({f["exchange"] for f in fs})
    if len(exchanges) > 1:
        return " ".join(_grant_mandate(f, n) for f in fs)
    return (f"{len(fs)} holders let {n(exchanges[0])} trade their units: "
            + _and([n(f["holder"]) for f in fs]) + ".")


def _revoke_mandate(f: dict[str, Any], n: Names) -> str:
    return f"{n(f['holder'])} withdraws {n(f['exchange'])}'s mandate to trade its units."


def _transfer(f: dict[str, Any], n: Names) -> str:
    price = ""
    if f.get("price") is not None:
        price = f" at {yuan(f['price'])}/t"
        if "quantity_t" in f:
            price += f" ({yuan(Decimal(str(f['price'])) * int(f['quantity_t']))})"
    return (f"{n(f['buyer'])} buys {_quantity(f)} of {f['ticket_no']} from {n(f['seller'])}"
            f"{price}, settled by {n(f['_actor'])} as trade {f['trade_id']}.")


def _settle_batch(f: dict[str, Any], n: Names) -> str:
    trades = f.get("transfers") or []
    total = sum(int(t.get("quantity_t") or 0) for t in trades)
    return (f"{n(f['_actor'])} settles batch {f['batch_id']}: {len(trades):,} trades, "
            f"{tonnes(total)} in all, recorded together or not at all.")


def _pledge(f: dict[str, Any], n: Names) -> str:
    pledged = f" {tonnes(f['pledged_t'])}:" if "pledged_t" in f else ""
    return (f"{n(f['pledgor'])} pledges{pledged} {_lines(f['lines'])} to {n(f['_actor'])} as "
            f"collateral for a loan of {yuan(f['secured_amount'])} ({f['loan_ref']}, due "
            f"{f['maturity']}); pledged units cannot move until released.")


def _release_pledge(f: dict[str, Any], n: Names) -> str:
    which = f" {_lines(f['lines'])} of" if f.get("lines") else ""
    return f"{n(f['_actor'])} releases{which} pledge {f['pledge_id']}."


def _enforce_pledge(f: dict[str, Any], n: Names) -> str:
    to = f", giving the units to {n(f['to'])}" if f.get("to") else ", taking the units"
    return f"{n(f['_actor'])} enforces pledge {f['pledge_id']}{to}."


def _bind_policy(f: dict[str, Any], n: Names) -> str:
    perils = _and(list(f.get("perils") or []))
    payee = f"; loss payee {n(f['loss_payee'])}" if f.get("loss_payee") else ""
    return (f"{n(f['_actor'])} insures {n(f['insured'])}'s {_lines(f['lines'])} against {perils}, "
            f"{f['start']} to {f['end']}: sum insured {yuan(f['sum_insured'])}, premium "
            f"{yuan(f['premium'])}{payee}.")


def _file_claim(f: dict[str, Any], n: Names) -> str:
    return (f"{_month(f['loss_date'])}: a {f['peril']} destroys {tonnes(f['claimed_t'])}; "
            f"{n(f['_actor'])} claims under policy {f['policy_id']} (claim {f['claim_id']}).")


def _confirm_loss(f: dict[str, Any], n: Names) -> str:
    return (f"{n(f['_actor'])} confirms the loss of claim {f['claim_id']} after its survey: "
            f"{tonnes(f['confirmed_t'])} lost.")


def _adopt_rules(f: dict[str, Any], n: Names) -> str:
    return f"{n(f['_actor'])} adopts rules edition {f['edition']} from the next command on."


def _approve_claim(f: dict[str, Any], n: Names) -> str:
    text = f"{n(f['_actor'])} approves claim {f['claim_id']}: {tonnes(f['approved_t'])} lost"
    if f.get("cancelled_t"):
        text += f", {tonnes(f['cancelled_t'])} cancelled"
    if f.get("impaired_pledges"):
        text += f", pledge {_and(list(f['impaired_pledges']))} impaired"
    payees = f.get("payees")
    if payees:
        text += "; it pays " + _and([f"{yuan(p['amount'])} to {n(p['party'])} ({p['basis']})"
                                     for p in payees])
    else:
        text += f"; payout {yuan(f['payout'])}"
    return text + "."


def _reject_claim(f: dict[str, Any], n: Names) -> str:
    return f"{n(f['_actor'])} rejects claim {f['claim_id']}: {f['reason']}."


PURPOSES = {"judicial_restoration": "judicial restoration", "compliance": "compliance",
            "voluntary": "a voluntary offset", "carbon_inclusive": "carbon inclusion (碳普惠)"}


def _retire(f: dict[str, Any], n: Names) -> str:
    what = f"{n(f['_actor'])} retires {_lines(f['lines'])}"
    if f.get("purpose") == "compliance":
        return (f"{what} to offset its {f.get('scheme')} {f.get('period')} emissions "
                f"(retirement {f['retirement_id']}).")
    order = f", ordered by {n(f['court'])} in case {f['case_no']}" if f.get("court") else ""
    purpose = PURPOSES.get(f["purpose"], str(f["purpose"]).replace("_", " "))
    return (f"{what} for {purpose}{order}, on behalf of {f['beneficiary']} "
            f"(retirement {f['retirement_id']}).")


def _record_emissions(f: dict[str, Any], n: Names) -> str:
    return (f"{n(f['_actor'])} records {n(f['entity'])}'s verified emissions for {f['scheme']} "
            f"{f['period']}: {tonnes(f['verified_emissions_t'])}.")


def _set_limits(f: dict[str, Any], n: Names) -> str:
    limits = _and([f"{std} {bp / 100:g}%" for std, bp in (f.get("limits_bp") or {}).items()])
    return (f"{n(f['_actor'])} sets the offset limits for {f['scheme']} {f['period']}: {limits}, "
            f"{f['total_bp'] / 100:g}% in all.")


def _freeze(f: dict[str, Any], n: Names) -> str:
    return f"{n(f['_actor'])} freezes {n(f['holder'])}'s account: {f['reason']}."


def _unfreeze(f: dict[str, Any], n: Names) -> str:
    return f"{n(f['_actor'])} lifts its freeze on {n(f['holder'])}'s account."


def _cancel_units(f: dict[str, Any], n: Names) -> str:
    return (f"{n(f['_actor'])} cancels {_quantity(f)} of {f['ticket_no']} held by "
            f"{n(f['holder'])} (cancellation {f['cancellation_id']}).")


@dataclass(frozen=True)
class Narrator:
    chapter: str
    one: Callable[[dict[str, Any], Names], str]
    many: Callable[[list[dict[str, Any]], Names], str] | None = None  # a run of accepted ones


NARRATORS: dict[str, Narrator] = {
    "initialise": Narrator("accounts", _initialise),
    "adopt_rules": Narrator("accounts", _adopt_rules),
    "register_participant": Narrator("accounts", _register_participant, _register_participants),
    "rotate_key": Narrator("accounts", _rotate_key),
    "revoke_key": Narrator("accounts", _revoke_key),
    "register_project": Narrator("issuance", _register_project),
    "issue_ticket": Narrator("issuance", _issue_ticket),
    "cancel_units": Narrator("issuance", _cancel_units),
    "grant_mandate": Narrator("trading", _grant_mandate, _grant_mandates),
    "revoke_mandate": Narrator("trading", _revoke_mandate),
    "transfer": Narrator("trading", _transfer),
    "settle_batch": Narrator("trading", _settle_batch),
    "pledge": Narrator("pledge", _pledge),
    "release_pledge": Narrator("pledge", _release_pledge),
    "enforce_pledge": Narrator("pledge", _enforce_pledge),
    "bind_policy": Narrator("insurance", _bind_policy),
    "file_claim": Narrator("insurance", _file_claim),
    "confirm_loss": Narrator("insurance", _confirm_loss),
    "approve_claim": Narrator("insurance", _approve_claim),
    "reject_claim": Narrator("insurance", _reject_claim),
    "retire": Narrator("retirement", _retire),
    "record_emissions": Narrator("compliance", _record_emissions),
    "set_limits": Narrator("compliance", _set_limits),
    "freeze": Narrator("freezes", _freeze),
    "unfreeze": Narrator("freezes", _unfreeze),
}

# Ids an outcome may name, in the order a generic sentence lists them.
_ID_FIELDS = ("participant_id", "project_id", "ticket_no", "trade_id", "batch_id", "pledge_id",
              "policy_id", "claim_id", "retirement_id", "cancellation_id", "holder", "entity")


def _generic(name: str, f: dict[str, Any], n: Names) -> str:
    """A command no narrator knows: who did what, and the ids and tonnes it names."""
    parts = [f"{k.replace('_id', '').replace('_', ' ')} {f[k]}" for k in _ID_FIELDS
             if f.get(k) not in (None, "")]
    for k in sorted(f):
        if k.endswith("_t") and isinstance(f[k], int):
            parts.append(f"{k[:-2].replace('_', ' ')} {tonnes(f[k])}")
    detail = f" ({', '.join(parts)})" if parts else ""
    return f"{n(f['_actor'])}: {name.replace('_', ' ')}{detail}."


def chapter_of(step: Step) -> str:
    if step.name == "retire" and step.args.get("purpose") == "compliance":
        return CHAPTERS["compliance"]
    narrator = NARRATORS.get(step.name)
    return CHAPTERS[narrator.chapter if narrator else "other"]


def _fields(step: Step) -> dict[str, Any]:
    return {**step.args, **(step.outcome or {}), "_actor": step.actor}


def sentence(step: Step, names: Names) -> str:
    """The step in one sentence; a refusal says what was asked and why it was refused."""
    narrator = NARRATORS.get(step.name)
    f = _fields(step)
    try:
        text = narrator.one(f, names) if narrator else _generic(step.name, f, names)
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError):  # a shape never seen
        text = _generic(step.name, f, names)
    if step.refusal is None:
        return text
    code, message = step.refusal
    return f"Refused: {text.rstrip('.')} — {code}: {message}"


def narrate(steps: Iterable[Step], names: Names) -> list[Line]:
    """The story's lines in order, each under its chapter."""
    lines: list[Line] = []
    run: list[Step] = []

    def flush() -> None:
        if not run:
            return
        narrator = NARRATORS.get(run[0].name)
        if len(run) > 1 and narrator is not None and narrator.many is not None:
            try:
                lines.append(Line(chapter_of(run[0]), narrator.many([_fields(s) for s in run],
                                                                    names)))
            except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError):
                lines.extend(Line(chapter_of(s), sentence(s, names)) for s in run)
        else:
            lines.extend(Line(chapter_of(s), sentence(s, names)) for s in run)
        run.clear()

    for step in steps:
        if step.refusal is not None:
            flush()
            lines.append(Line(chapter_of(step), sentence(step, names), refused=True))
            continue
        if run and run[0].name != step.name:
            flush()
        run.append(step)
    flush()
    return lines
