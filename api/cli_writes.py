"""The command line's write verbs: `carbon-ledger transfer`, `pledge`, `retire`, `freeze`, ...

Each verb builds one command from typed flags, signs it as `--as ID` with that participant's
key from `--keys`, and sends it to the registry at `--db` or to a server at `--url`. The outcome
is printed as a sentence (or `--json`), with the command id: a retry with `--command-id` of a
command that may or may not have been recorded gets its first outcome, never a second effect.
A refusal prints its code and sentence and exits 1, as every command does.

A pledge needs its pledgor's consent signature. With the pledgor's key in `--keys` it is signed
there and then; otherwise the pledgor signs it with `carbon-ledger consent pledge …` (the same
flags) and the bank passes the file with `--consent FILE`.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import re
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domain import commands as C
from domain import values as V
from domain.errors import CODES, DomainError
from ledger.as_of import CHINA
from ledger.keys import Keyring, public_text, read_private
from ledger.signing import (
    WINDOW_PAST_S,
    Signature,
    SignedCommand,
    canonical_json,
    check_base,
    content_digest,
    sign,
)

CONSENT_FORMAT = "carbon-ledger-consent/1"
MAX_BATCH_FILE_BYTES = 8 * 1024 * 1024  # a batch of 10,000 trades as CSV is about 1 MB
SHOWN_TRADES = 10  # a batch's sentence names this many trades, then counts the rest
SHOWN_RANGES = 3

Outcome = dict[str, Any]
Args = dict[str, Any]


# Flags --------------------------------------------------------------------------------------

def _tonnes(raw: str, option: str) -> int:
    if not re.fullmatch(r"[0-9]{1,13}", raw.strip()):
        raise DomainError("invalid_argument", f"{option} takes a whole number of tonnes, like "
                          f"100, not {raw!r}", field=option)
    return int(raw)


def _bp(raw: str, option: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", raw.strip()):
        raise DomainError("invalid_argument", f"{option} takes basis points, a whole number "
                          f"(1000 = 10%), not {raw!r}", field=option)
    return int(raw)


def _serials(raw: str, option: str) -> dict[str, str]:
    """FIRST..LAST, two serials of one ticket."""
    first, sep, last = raw.partition("..")
    if not sep or not first or not last:
        raise DomainError("invalid_argument", f"{option} takes FIRST..LAST, like "
                          f"SM-0000001-0000001..SM-0000001-0000100, not {raw!r}", field=option)
    return {"first_serial": first, "last_serial": last}


def _line(raw: str, option: str) -> dict[str, Any]:
    """TICKET:TONNES (the lowest serials) or FIRST..LAST (exactly those)."""
    if ".." in raw:
        serials = _serials(raw, option)
        ticket = serials["first_serial"].rsplit("-", 1)[0]
        return {"ticket_no": ticket, **serials}
    ticket, sep, quantity = raw.rpartition(":")
    if not sep or not ticket:
        raise DomainError("invalid_argument", f"{option} takes TICKET:TONNES (SM-0000001:100) or "
                          f"FIRST..LAST (SM-0000001-0000001..SM-0000001-0000100), not {raw!r}",
                          field=option)
    return {"ticket_no": ticket, "quantity_t": _tonnes(quantity, option)}


def _limit(raw: str, option: str) -> tuple[str, int]:
    standard, sep, bp = raw.partition("=")
    if not sep:
        raise DomainError("invalid_argument", f"{option} takes STANDARD=BASIS_POINTS, like "
                          f"FFCER=1000, not {raw!r}", field=option)
    return standard, _bp(bp, option)


@dataclass(frozen=True)
class Flag:
    """One flag (or positional argument) of a verb and the command argument it fills.

    Flags are parsed as text and converted when the command is built, so that a refusal names
    the flag, and the flags a person typed can be shown back (the consent hint)."""

    option: str  # "--trade-id", or a name without dashes for a positional argument
    arg: str | None  # the command argument; None when `convert` gives several (a dict)
    help: str
    required: bool = True
    convert: Callable[[str, str], Any] | None = None
    repeat: bool = False  # may be given several times: the argument is the list
    choices: Sequence[str] | None = None
    default: str | None = None
    group: str | None = None  # flags of one group are exclusive, one of them required

    @property
    def dest(self) -> str:
        return self.option.lstrip("-").replace("-", "_")

    @property
    def positional(self) -> bool:
        return not self.option.startswith("-")

    def add_to(self, parser: Any) -> None:
        kw: dict[str, Any] = {"help": self.help}
        if self.choices:
            kw["choices"] = list(self.choices)
        if self.positional:
            parser.add_argument(self.dest, metavar=self.dest.upper(), **kw)
            return
        kw["dest"] = self.dest
        if self.repeat:
            kw.update(action="append", default=[] if not self.required else None)
        else:
            kw["default"] = self.default
        parser.add_argument(self.option, required=self.required and self.group is None
                            and self.default is None, **kw)

    def value(self, raw: Any) -> Any:
        convert = self.convert or (lambda text, _option: text)
        if self.repeat:
            return [convert(r, self.option) for r in raw]
        return convert(raw, self.option)


@dataclass(frozen=True)
class Verb:
    name: str  # the CLI verb
    command: str  # the command it sends
    help: str
    flags: tuple[Flag, ...]
    say: Callable[[str, Outcome, Args], str]  # (actor, outcome, args) -> the sentence
    build: Callable[[Args, argparse.Namespace], Args] | None = None  # after the flags
    extra: Callable[[argparse.ArgumentParser], None] | None = None  # flags of its own
    consent_from: str | None = None  # the argument naming the party whose consent it needs
    sender: str = ""  # for `consent VERB`: the option naming who sends the command
    describe: Callable[[Args], str] | None = None  # for `consent VERB`: what is consented to

    def args(self, ns: argparse.Namespace) -> Args:
        out: Args = {}
        for f in self.flags:
            raw = getattr(ns, f.dest, None)
            if raw is None or (f.repeat and not raw):
                continue
            value = f.value(raw)
            if f.arg is None:
                out.update(value)
            elif f.repeat and f.arg.endswith(":map"):
                out[f.arg[:-4]] = dict(value)
            else:
                out[f.arg] = value
        return self.build(out, ns) if self.build else out

    def typed(self, ns: argparse.Namespace) -> list[str]:
        """The verb's flags as given, to show back."""
        out: list[str] = []
        for f in self.flags:
            raw = getattr(ns, f.dest, None)
            if raw is None or raw == [] or (f.default is not None and raw == f.default):
                continue
            for r in raw if f.repeat else [raw]:
                out += [r] if f.positional else [f.option, r]
        return out


# The sentences --------------------------------------------------------------------------------

def yuan(amount: Any) -> str:
    try:
        return f"¥{Decimal(str(amount)):,.2f}"
    except InvalidOperation:
        return f"¥{amount}"


def serials(ranges: Sequence[dict[str, Any]]) -> str:
    shown = [f"{r['first_serial']}..{r['last_serial']}" for r in ranges[:SHOWN_RANGES]]
    more = len(ranges) - SHOWN_RANGES
    return ", ".join(shown) + (f" and {more} more ranges" if more > 0 else "")


def lines(out_lines: Sequence[dict[str, Any]]) -> str:
    return "; ".join(f"{ln['quantity_t']:,} t of {ln['ticket_no']} (serials "
                     f"{serials(ln.get('serials', []))})" for ln in out_lines)


def _wanted(asked: Sequence[dict[str, Any]]) -> str:
    """Lines as asked for (before the registry picks the serials)."""
    return "; ".join(f"{ln['quantity_t']:,} t of {ln['ticket_no']}" if "quantity_t" in ln
                     else f"{ln['first_serial']}..{ln['last_serial']}" for ln in asked)


def _say_transfer(actor: str, o: Outcome, a: Args) -> str:
    return (f"{actor} settled trade {o['trade_id']}: {o['seller']} → {o['buyer']}, "
            f"{o['quantity_t']:,} t of {o['ticket_no']} (serials {serials(o['serials'])}) at "
            f"{yuan(a.get('price'))}")


def _say_batch(actor: str, o: Outcome, a: Args) -> str:
    trades = o["trades"]
    text = (f"{actor} settled batch {o['batch_id']}: {o['count']:,} trades, "
            f"{o['quantity_t']:,} t")
    for t in trades[:SHOWN_TRADES]:
        text += (f"\n  {t['trade_id']}: {t['seller']} → {t['buyer']}, {t['quantity_t']:,} t of "
                 f"{t['ticket_no']} ({serials(t['serials'])})")
    if len(trades) > SHOWN_TRADES:
        text += f"\n  and {len(trades) - SHOWN_TRADES:,} more trades (--json lists them all)"
    return text


def _say_pledge(actor: str, o: Outcome, a: Args) -> str:
    return (f"{actor} took pledge {o['pledge_id']} from {o['pledgor']}: {lines(o['lines'])}, "
            f"{o['pledged_t']:,} t in all, securing {yuan(a['secured_amount'])} (loan "
            f"{a['loan_ref']}) until {a['maturity']}")


def _say_release(actor: str, o: Outcome, a: Args) -> str:
    return (f"{actor} released {o['released_t']:,} t of pledge {o['pledge_id']}; "
            f"{o['pledged_t']:,} t stay pledged (pledge {o['status']})")


def _say_enforce(actor: str, o: Outcome, a: Args) -> str:
    return (f"{actor} enforced pledge {o['pledge_id']}: {o['enforced_t']:,} t to {o['to']} "
            f"(pledge {o['status']})")


def _say_retire(actor: str, o: Outcome, a: Args) -> str:
    purpose = o["purpose"].replace("_", " ")
    return (f"{o['holder']} retired {lines(o['lines'])} for {purpose}, beneficiary "
            f"{a['beneficiary']}; certificate {o['retirement_id']} (carbon-ledger proof "
            f"retirement {o['retirement_id']})")


def _say_freeze(actor: str, o: Outcome, a: Args) -> str:
    return f"{actor} froze {o['holder']}'s account (frozen by {', '.join(o['frozen_by'])})"


def _say_unfreeze(actor: str, o: Outcome, a: Args) -> str:
    if o["frozen"]:
        return (f"{actor} lifted its freeze on {o['holder']}; the account stays frozen by "
                f"{', '.join(o['frozen_by'])}")
    return f"{actor} lifted its freeze on {o['holder']}; the account is no longer frozen"


def _say_emissions(actor: str, o: Outcome, a: Args) -> str:
    return (f"{actor} recorded {o['verified_emissions_t']:,} t of verified emissions for "
            f"{o['entity']} in {o['scheme']} {o['period']}")


def _say_limits(actor: str, o: Outcome, a: Args) -> str:
    each = ", ".join(f"{s} {bp / 100:g}%" for s, bp in o["limits_bp"].items())
    return (f"{actor} set the offset limits of {o['scheme']} {o['period']}: {each}; "
            f"{o['total_bp'] / 100:g}% in all")


def _say_issue(actor: str, o: Outcome, a: Args) -> str:
    return (f"{actor} issued ticket {o['ticket_no']}: {o['quantity_t']:,} t (serials "
            f"{o['first_serial']}..{o['last_serial']}) to {o['owner']}")


def _say_register(actor: str, o: Outcome, a: Args) -> str:
    return (f"{actor} registered {o['participant_id']} ({o['role']}, {a['name']}) with key "
            f"{o['key_id']}")


def _say_project(actor: str, o: Outcome, a: Args) -> str:
    return (f"{actor} registered project {o['project_id']} ({a['name']}), owned by {a['owner']}, "
            f"{a['area_mu']} mu in {a['county']}, {a['standard']}")


def _say_mandate(actor: str, o: Outcome, a: Args) -> str:
    return f"{o['holder']} mandated {o['exchange']} to trade its units"


def _say_revoke_mandate(actor: str, o: Outcome, a: Args) -> str:
    return f"{o['holder']} withdrew {o['exchange']}'s trading mandate"


def _say_policy(actor: str, o: Outcome, a: Args) -> str:
    return (f"{actor} bound policy {o['policy_id']} for {o['insured']}: {o['covered_t']:,} t "
            f"covered against {', '.join(a['perils'])}, sum insured {yuan(a['sum_insured'])}, "
            f"{a['start']} to {a['end']}")


def _say_claim(actor: str, o: Outcome, a: Args) -> str:
    return (f"{actor} filed claim {o['claim_id']} under policy {o['policy_id']}: "
            f"{a['claimed_t']:,} t lost to {a['peril']} on {a['loss_date']} ({o['status']})")


def _say_confirm_loss(actor: str, o: Outcome, a: Args) -> str:
    return (f"{actor} confirmed the loss of claim {o['claim_id']} under policy {o['policy_id']}: "
            f"{o['confirmed_t']:,} t of the {o['claimed_t']:,} t claimed")


def _say_approve(actor: str, o: Outcome, a: Args) -> str:
    paid = ", ".join(f"{yuan(p['amount'])} to {p['party']} ({p['basis']})" for p in o["payees"])
    return (f"{actor} approved claim {o['claim_id']}: {o['approved_t']:,} t, payout "
            f"{yuan(o['payout'])}" + (f": {paid}" if paid else "")
            + (f"; {o['cancelled_t']:,} t cancelled" if o.get("cancelled_t") else ""))


def _say_reject(actor: str, o: Outcome, a: Args) -> str:
    return f"{actor} rejected claim {o['claim_id']}: {a['reason']}"


def _say_cancel(actor: str, o: Outcome, a: Args) -> str:
    return (f"{actor} cancelled {o['quantity_t']:,} t of {o['ticket_no']} held by {o['holder']} "
            f"(serials {serials(o['serials'])}); cancellation {o['cancellation_id']}")


def _say_revoke_key(actor: str, o: Outcome, a: Args) -> str:
    return f"{actor} revoked {o['participant_id']}'s key {o['key_id']}"


# The verbs ------------------------------------------------------------------------------------

def _register_key(args: Args, ns: argparse.Namespace) -> Args:
    """register: the participant's public key from --public-key, else from its key files."""
    if "public_key" in args:
        return args
    from api import cli

    folder = cli._keys_dir(ns)
    pid = args["participant_id"]
    pub = folder / f"{pid}.pub"
    if pub.exists():
        args["public_key"] = pub.read_text(encoding="ascii").strip()
    elif (folder / f"{pid}.key").exists():
        args["public_key"] = public_text(read_private(folder / f"{pid}.key"))
    else:
        raise DomainError("unknown_key", f"no public key for {pid}: pass --public-key (the "
                          f"participant's own, which it prints with `carbon-ledger keygen {pid}`), "
                          f"or make its key pair in {folder} with `carbon-ledger keygen {pid}`",
                          participant=pid)
    return args


def _own_holder(args: Args, ns: argparse.Namespace) -> Args:
    args.setdefault("holder", ns.actor)
    return args


QUANTITY = Flag("--quantity-t", "quantity_t", "tonnes: the lowest available serials",
                convert=_tonnes, group="units")
SERIALS = Flag("--serials", None, "FIRST..LAST: exactly these serials", convert=_serials,
               group="units")
LINES = Flag("--line", "lines", "TICKET:TONNES or FIRST..LAST; once per ticket", convert=_line,
             repeat=True)
PURPOSES = [p.value for p in V.Purpose]

VERBS: list[Verb] = [
    Verb("register", "register_participant", "register a participant (operator)", (
        Flag("participant_id", "participant_id", "the new participant's id"),
        Flag("--role", "role", "its role", choices=[r.value for r in V.Role if r != "operator"]),
        Flag("--name", "name", "its name"),
        Flag("--public-key", "public_key", "its public key (default: from --keys, <id>.pub)",
             required=False)), _say_register, build=_register_key),
    Verb("register-project", "register_project", "register a project (issuer)", (
        Flag("project_id", "project_id", "the project's id"),
        Flag("--name", "name", "its name"),
        Flag("--owner", "owner", "the holder that owns the forest"),
        Flag("--county", "county", "where it is"),
        Flag("--area-mu", "area_mu", "its area in mu (亩)"),
        Flag("--standard", "standard", "its standard", choices=[s.value for s in V.Standard]),
        Flag("--methodology", "methodology", "the methodology", required=False)), _say_project),
    Verb("issue", "issue_ticket", "issue a ticket to its project's owner (issuer)", (
        Flag("ticket_no", "ticket_no", "the new ticket's number, like SM-0000003"),
        Flag("--project", "project_id", "the project"),
        Flag("--standard", "standard", "the ticket's standard (the project's)",
             choices=[s.value for s in V.Standard]),
        Flag("--period-start", "period_start", "first day of the crediting period"),
        Flag("--period-end", "period_end", "last day of the crediting period"),
        Flag("--quantity-t", "quantity_t", "tonnes issued", convert=_tonnes)), _say_issue),
    Verb("grant-mandate", "grant_mandate", "let an exchange trade a holder's units (the holder)", (
        Flag("exchange", "exchange", "the exchange"),
        Flag("--holder", "holder", "the holder (default: --as)", required=False)),
         _say_mandate, build=_own_holder),
    Verb("revoke-mandate", "revoke_mandate", "withdraw an exchange's mandate (the holder)", (
        Flag("exchange", "exchange", "the exchange"),
        Flag("--holder", "holder", "the holder (default: --as)", required=False)),
         _say_revoke_mandate, build=_own_holder),
    Verb("transfer", "transfer", "settle one trade (exchange)", (
        Flag("--trade-id", "trade_id", "the exchange's trade id"),
        Flag("--seller", "seller", "the holder selling"),
        Flag("--buyer", "buyer", "the holder or bank buying"),
        Flag("--ticket", "ticket_no", "the ticket"),
        QUANTITY, SERIALS,
        Flag("--price", "price", "the price in yuan, like 15.00"),
        Flag("--mode", "mode", "how the trade was made", choices=[m.value for m in V.TradeMode],
             default="negotiated")), _say_transfer),
    Verb("pledge", "pledge", "pledge a holder's units to the bank (bank, with the pledgor's "
         "consent)", (
        Flag("--pledge-id", "pledge_id", "the pledge's id"),
        Flag("--pledgor", "pledgor", "the holder pledging"),
        Flag("--loan-ref", "loan_ref", "the bank's loan reference"),
        Flag("--secured-amount", "secured_amount", "the amount secured, in yuan"),
        Flag("--maturity", "maturity", "the loan's maturity, YYYY-MM-DD"),
        LINES), _say_pledge, consent_from="pledgor", sender="--bank", describe=lambda a: (
            f"{_wanted(a['lines'])} pledged, securing {yuan(a['secured_amount'])} (loan "
            f"{a['loan_ref']}) until {a['maturity']}")),
    Verb("release", "release_pledge", "release pledged units (the pledgee bank)", (
        Flag("pledge_id", "pledge_id", "the pledge"),
        Flag("--line", "lines", "TICKET:TONNES or FIRST..LAST to release (default: all)",
             convert=_line, repeat=True, required=False)), _say_release),
    Verb("enforce", "enforce_pledge", "enforce a pledge on default (the pledgee bank)", (
        Flag("pledge_id", "pledge_id", "the pledge"),
        Flag("--to", "to", "give the units to this buyer (default: the bank)",
             required=False)), _say_enforce),
    Verb("bind-policy", "bind_policy", "insure a holder's units (insurer)", (
        Flag("--policy-id", "policy_id", "the policy's id"),
        Flag("--insured", "insured", "the holder insured"),
        LINES,
        Flag("--sum-insured", "sum_insured", "the sum insured, in yuan"),
        Flag("--premium", "premium", "the premium, in yuan"),
        Flag("--start", "start", "first day of cover"),
        Flag("--end", "end", "last day of cover"),
        Flag("--peril", "perils", "a peril covered; once per peril", repeat=True,
             choices=[p.value for p in V.Peril]),
        Flag("--loss-payee", "loss_payee", "who is paid first (a pledgee bank)",
             required=False)), _say_policy, consent_from="insured", sender="--insurer",
        describe=lambda a: (f"{_wanted(a['lines'])} insured against {', '.join(a['perils'])} "
                            f"from {a['start']} to {a['end']}, sum insured "
                            f"{yuan(a['sum_insured'])}, premium {yuan(a['premium'])}")),
    Verb("file-claim", "file_claim", "claim a loss under a policy", (
        Flag("--claim-id", "claim_id", "the claim's id"),
        Flag("--policy", "policy_id", "the policy"),
        Flag("--peril", "peril", "what caused the loss", choices=[p.value for p in V.Peril]),
        Flag("--loss-date", "loss_date", "the day of the loss"),
        Flag("--claimed-t", "claimed_t", "tonnes lost", convert=_tonnes),
        Flag("--description", "description", "what happened", required=False)), _say_claim),
    Verb("confirm-loss", "confirm_loss", "confirm a claim's physical loss after a survey (the "
         "tickets' issuer, or a regulator)", (
        Flag("claim_id", "claim_id", "the claim"),
        Flag("--confirmed-t", "confirmed_t", "tonnes found lost", convert=_tonnes),
        Flag("--report", "report", "the survey's finding")), _say_confirm_loss),
    Verb("approve-claim", "approve_claim", "approve a claim (the policy's insurer)", (
        Flag("claim_id", "claim_id", "the claim"),
        Flag("--approved-t", "approved_t", "tonnes approved", convert=_tonnes),
        Flag("--payout", "payout", "the payout, in yuan")), _say_approve),
    Verb("reject-claim", "reject_claim", "reject a claim (the policy's insurer)", (
        Flag("claim_id", "claim_id", "the claim"),
        Flag("--reason", "reason", "why")), _say_reject),
    Verb("retire", "retire", "retire units for a purpose (the holder)", (
        Flag("--retirement-id", "retirement_id", "the retirement's id (its certificate's)"),
        Flag("--purpose", "purpose", "why", choices=PURPOSES),
        Flag("--beneficiary", "beneficiary", "on whose behalf"),
        LINES,
        Flag("--details", "details", "more about it", required=False),
        Flag("--scheme", "scheme", "compliance: the scheme", required=False),
        Flag("--period", "period", "compliance: the period", required=False),
        Flag("--case-no", "case_no", "judicial restoration: the case number", required=False),
        Flag("--court", "court", "judicial restoration: the court", required=False)), _say_retire),
    Verb("record-emissions", "record_emissions", "record verified emissions (regulator)", (
        Flag("entity", "entity", "the emitter"),
        Flag("scheme", "scheme", "the scheme, like fujian_ets"),
        Flag("period", "period", "the period, like 2021"),
        Flag("--verified-emissions-t", "verified_emissions_t", "verified emissions in tonnes",
             convert=_tonnes)), _say_emissions),
    Verb("set-limits", "set_limits", "set a scheme's offset limits for a period (regulator)", (
        Flag("scheme", "scheme", "the scheme"),
        Flag("period", "period", "the period"),
        Flag("--limit", "limits_bp:map", "STANDARD=BASIS_POINTS; once per standard",
             convert=_limit, repeat=True),
        Flag("--total-bp", "total_bp", "the limit over all standards, basis points",
             convert=_bp)), _say_limits),
    Verb("freeze", "freeze", "freeze an account (regulator or court)", (
        Flag("holder", "holder", "the account"),
        Flag("--reason", "reason", "why")), _say_freeze),
    Verb("unfreeze", "unfreeze", "lift one's own freeze (regulator or court)", (
        Flag("holder", "holder", "the account"),), _say_unfreeze),
    Verb("cancel", "cancel_units", "cancel a holder's available units (the ticket's issuer)", (
        Flag("ticket_no", "ticket_no", "the ticket"),
        Flag("--cancellation-id", "cancellation_id", "the cancellation's id"),
        Flag("--holder", "holder", "whose units"),
        QUANTITY, SERIALS,
        Flag("--reason", "reason", "why")), _say_cancel),
    Verb("revoke-key", "revoke_key", "revoke a participant's key (the participant, or the "
         "operator)", (
        Flag("participant_id", "participant_id", "whose key"),
        Flag("key_id", "key_id", "the key id"),
        Flag("--reason", "reason", "why")), _say_revoke_key),
]
BY_NAME = {v.name: v for v in VERBS}


# settle-batch: trades from a file ---------------------------------------------------------------

_BATCH_COLUMNS = ("trade_id", "seller", "buyer", "ticket_no", "quantity_t", "first_serial",
                  "last_serial", "price", "mode")


def read_batch(path: Path, default_mode: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(batch id if the file names one, the transfers) from a JSON or CSV file."""
    try:
        size = path.stat().st_size
        if size > MAX_BATCH_FILE_BYTES:
            raise DomainError("batch_too_large", f"{path} has {size:,} bytes; a batch file has at "
                              f"most {MAX_BATCH_FILE_BYTES:,}", size=size)
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DomainError("invalid_argument", f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise DomainError("invalid_argument", f"{path} is not UTF-8 text") from None
    batch_id = None
    if text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text, parse_float=_no_float)
        except json.JSONDecodeError as e:
            raise DomainError("invalid_argument", f"{path} is not valid JSON: {e}") from None
        if isinstance(data, dict):
            batch_id, data = data.get("batch_id"), data.get("transfers")
        if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
            raise DomainError("invalid_argument", f"{path} holds neither a list of transfers nor "
                              '{"batch_id": …, "transfers": [...]}')
        transfers = data
    else:
        transfers = _csv_transfers(path, text)
    for t in transfers:
        t.setdefault("mode", default_mode)
    return batch_id, transfers


def _no_float(text: str) -> Any:
    raise DomainError("invalid_argument", f"{text} is a fractional number; tonnes are integers "
                      "and money is a decimal string like \"15.00\"")


def _csv_transfers(path: Path, text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in reader.fieldnames or []]
    unknown = sorted(set(columns) - set(_BATCH_COLUMNS))
    if not columns or unknown:
        raise DomainError("invalid_argument", f"{path}: a CSV batch has a header row of "
                          f"{', '.join(_BATCH_COLUMNS)}" + (f"; unknown: {', '.join(unknown)}"
                                                            if unknown else ""))
    out = []
    for row in reader:
        item = {k.strip(): v.strip() for k, v in row.items() if k and v and v.strip()}
        if "quantity_t" in item:
            item["quantity_t"] = _tonnes(item["quantity_t"], f"{path} line {reader.line_num} "
                                         "quantity_t")
        out.append(item)
    return out


def _batch_args(args: Args, ns: argparse.Namespace) -> Args:
    batch_id, transfers = read_batch(Path(ns.file), ns.mode)
    return {"batch_id": ns.batch_id or batch_id, "transfers": transfers}


def _batch_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a CSV file (header row: "
                        + ",".join(_BATCH_COLUMNS) + ") or a JSON list of transfers")
    parser.add_argument("--batch-id", default=None,
                        help="the batch's id (default: the JSON file's batch_id)")
    parser.add_argument("--mode", default="negotiated", choices=[m.value for m in V.TradeMode],
                        help="the mode of rows that have none (default: negotiated)")


BATCH = Verb("settle-batch", "settle_batch", "settle a file of trades at once, all or nothing "
             "(exchange)", (), _say_batch, build=_batch_args, extra=_batch_flags)
VERBS.append(BATCH)
BY_NAME[BATCH.name] = BATCH


# Signing and sending ----------------------------------------------------------------------------

def _key(folder: Path, participant: str, role: str) -> Ed25519PrivateKey:
    try:
        return Keyring(folder).get(participant)
    except DomainError as e:
        if e.code != "unknown_key":
            raise
        raise DomainError("unknown_key", f"no private key for {participant}, the {role}, in "
                          f"{folder}: pass --keys DIR holding {participant}.key",
                          participant=participant) from None


def _keys_folder(ns: argparse.Namespace) -> Path:
    from api import cli

    if getattr(ns, "url", None) and not getattr(ns, "keys", None):
        raise DomainError("invalid_argument", "with --url, --keys DIR names the folder holding "
                          f"{ns.actor}.key")
    return cli._keys_dir(ns)


def _body(verb: Verb, ns: argparse.Namespace, actor: str) -> tuple[C.Command, Args, bytes]:
    from api.client import default_command_id

    args = verb.args(ns)
    command_id = ns.command_id or default_command_id(verb.command, actor, args)
    command = C.make(verb.command, actor, command_id, args)  # refuse bad flags before signing
    body = canonical_json({"command": verb.command, "actor": actor, "command_id": command_id,
                           "args": args})
    return command, args, body


def _consent_from_file(path: Path, verb: Verb, command: C.Command, args: Args,
                       body: bytes) -> Signature:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DomainError("invalid_argument", f"cannot read {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DomainError("invalid_argument", f"{path} is not a consent file (not JSON)") from None
    if not isinstance(data, dict) or data.get("format") != CONSENT_FORMAT:
        raise DomainError("invalid_argument", f"{path} is not a consent file ({CONSENT_FORMAT})")
    signed = data.get("command") or {}
    party = args[verb.consent_from or ""]
    if data.get("digest") != content_digest(body):
        differs = [k for k in ("command", "actor", "command_id") if signed.get(k) !=
                   {"command": command.name, "actor": command.actor,
                    "command_id": command.command_id}[k]]
        theirs = signed.get("args") if isinstance(signed.get("args"), dict) else {}
        differs += sorted(k for k in set(theirs) | set(args) if theirs.get(k) != args.get(k))
        raise DomainError("consent_missing", f"the consent in {path} was signed for another "
                          f"command than this one (they differ in {', '.join(differs) or 'their bytes'}): "
                          f"send the command {party} consented to, with the same flags and "
                          "--command-id", party=party)
    try:
        raw = data["signature"]
        sig = Signature(raw["signer"], raw["key_id"], raw["base"],
                        base64.b64decode(raw["signature"], validate=True))
        check_base(sig, body=body, method="POST", path="", consent=True)
    except (KeyError, TypeError, ValueError):
        raise DomainError("bad_signature", f"the consent signature in {path} is malformed") from None
    if sig.signer != party:
        raise DomainError("consent_missing", f"the consent in {path} is {sig.signer}'s; "
                          f"{verb.command} needs {party}'s", party=party)
    return sig


def _consent_hint(verb: Verb, ns: argparse.Namespace, command: C.Command, party: str,
                  folder: Path) -> DomainError:
    line = shlex.join(["carbon-ledger", "consent", verb.name, "--as", party, verb.sender,
                       command.actor, *verb.typed(ns), "--command-id", command.command_id,
                       "--out", "consent.json"])
    return DomainError("consent_missing", f"the {verb.command} (command id {command.command_id}) needs the consent "
                       f"signature of {party}, whose key is not in {folder}. {party} signs it "
                       f"with its own key: `{line}`; then run this command again with --consent "
                       f"consent.json within {WINDOW_PAST_S // 60} minutes of the signing",
                       party=party)


def run_verb(verb: Verb, ns: argparse.Namespace) -> int:
    from api import cli

    command, args, body = _body(verb, ns, ns.actor)
    folder = _keys_folder(ns)
    key = _key(folder, ns.actor, "signer")
    now = int(time.time())
    consent_keys: list[Ed25519PrivateKey] = []
    consent_sigs: list[Signature] = []
    if verb.consent_from and not _consent_needed(verb, ns, command, args):
        pass  # (a policy under rules edition 1 is bound by the insurer alone)
    elif verb.consent_from:
        party = args[verb.consent_from]
        if getattr(ns, "consent", None):
            consent_sigs.append(_consent_from_file(Path(ns.consent), verb, command, args, body))
        elif Keyring(folder).has(party):
            consent_keys.append(_key(folder, party, verb.consent_from))
        else:
            raise _consent_hint(verb, ns, command, party, folder)
    try:
        if getattr(ns, "url", None):
            outcome = _send(ns, verb, command, args, key, consent_keys, consent_sigs)
        else:
            sigs = [sign(key, command.actor, body, created=now)]
            sigs += [sign(k, args[verb.consent_from or ""], body, created=now, consent=True)
                     for k in consent_keys]
            outcome = cli._open(ns).execute(SignedCommand(body=body,
                                                          signatures=(*sigs, *consent_sigs)))
    except DomainError as e:
        if e.code in ("store_unavailable", "conflict"):
            raise DomainError(e.code, f"{e.message} (command id {command.command_id}: run again "
                              f"with --command-id {command.command_id})", **e.details) from None
        raise
    if ns.json:
        cli._print_json(outcome)
        return 0
    cli.out.print(verb.say(command.actor, outcome, args), markup=False, highlight=False)
    where = (f"log position {outcome['position']:,}" if outcome.get("position") is not None
             else "recorded")
    again = "; recorded before: this is its first outcome" if outcome.get("replayed") else ""
    cli.out.print(f"command id {command.command_id}, {where}{again}", markup=False,
                  highlight=False)
    return 0


def _consent_needed(verb: Verb, ns: argparse.Namespace, command: C.Command, args: Args) -> bool:
    """Whether the registry needs the consent of the party the verb names: a local registry
    says (by its rules edition); a server is assumed to follow the newest edition."""
    from api import cli

    if getattr(ns, "url", None) or verb.consent_from is None:
        return verb.consent_from is not None
    needed = cli._open(ns).consents_needed(command.name, command.actor, command.command_id, args)
    return args[verb.consent_from] in needed


def _send(ns: argparse.Namespace, verb: Verb, command: C.Command, args: Args,
          key: Ed25519PrivateKey, consent_keys: list[Ed25519PrivateKey],
          consent_sigs: list[Signature]) -> Outcome:
    import httpx

    from api.client import ApiError, Client

    client = Client(ns.url, command.actor, key)
    try:
        outcome = client.command(command.name, args, command.command_id, consents=consent_keys,
                                 consent_signatures=consent_sigs)
    except ApiError as e:
        if e.status >= 500:
            raise DomainError("store_unavailable", f"the registry at {ns.url} answered "
                              f"{e.status}: {e.detail[:200]}; it may or may not have recorded the "
                              "command") from None
        raise DomainError(e.code if e.code in CODES else "invalid_argument", e.detail) from None
    except httpx.HTTPError as e:
        raise DomainError("store_unavailable", f"the registry at {ns.url} could not be reached "
                          f"({type(e).__name__}: {e}); it may or may not have recorded the "
                          "command") from None
    finally:
        client.close()
    response = client.last_response
    if response is not None:
        position = response.headers.get("x-log-position")
        if position and position.isdigit():
            outcome["position"] = int(position)
        if response.headers.get("idempotent-replayed") == "true":
            outcome["replayed"] = True
    return outcome


# consent: a second party's signature, made where its key is -----------------------------------

def run_consent(verb: Verb, ns: argparse.Namespace) -> int:
    from api import cli

    command, args, body = _body(verb, ns, getattr(ns, verb.sender.lstrip("-")))
    party = args[verb.consent_from or ""]
    if ns.actor != party:
        raise DomainError("invalid_argument", f"{ns.actor} is not the {verb.consent_from} of this "
                          f"{verb.command} ({party} is): only {party} consents to it",
                          party=party)
    key = _key(cli._keys_dir(ns), party, verb.consent_from or "")
    created = int(time.time())
    sig = sign(key, party, body, created=created, consent=True)
    document = {"format": CONSENT_FORMAT,
                "command": {"command": command.name, "actor": command.actor,
                            "command_id": command.command_id, "args": args},
                "digest": content_digest(body),
                "signature": {**sig.to_record(),
                              "signature": base64.b64encode(sig.signature).decode("ascii")}}
    text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
    until = datetime.fromtimestamp(created + WINDOW_PAST_S, CHINA).isoformat(timespec="seconds")
    about = verb.describe(args) if verb.describe else json.dumps(args, ensure_ascii=False)
    sentence = (f"{party} consents to {command.actor}'s {verb.command} (command id "
                f"{command.command_id}): "
                f"{about}. {command.actor} sends it with the same flags and --consent FILE "
                f"by {until}")
    if ns.out:
        Path(ns.out).write_text(text, encoding="utf-8")
        cli.out.print(f"{sentence} (FILE: {ns.out})", markup=False, highlight=False)
    else:
        import sys

        sys.stdout.write(text)
        cli.err.print(sentence, markup=False, highlight=False)
    return 0


# Registering the verbs with the parser --------------------------------------------------------------

def add_verbs(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add every write verb, and `consent`, to the CLI's subcommands."""
    writes = argparse.ArgumentParser(add_help=False)
    writes.add_argument("--as", dest="actor", required=True, metavar="PARTICIPANT",
                        help="sign as this participant, with its key from --keys")
    writes.add_argument("--url", default=None,
                        help="send to a registry server instead of --db (--keys is then required)")
    writes.add_argument("--command-id", default=None, metavar="ID",
                        help="the idempotency key (default: made from the command's own id, or "
                        "new; printed: retry with it)")
    writes.add_argument("--json", action="store_true", help="print the outcome as JSON")
    for verb in VERBS:
        p = sub.add_parser(verb.name, parents=[common, writes], help=verb.help,
                           description=verb.help)
        _add_flags(p, verb)
        if verb.extra:
            verb.extra(p)
        if verb.consent_from:
            p.add_argument("--consent", default=None, metavar="FILE",
                           help=f"the {verb.consent_from}'s consent, from `carbon-ledger consent "
                           f"{verb.name}` (needed unless its key is in --keys)")
        p.set_defaults(func=lambda ns, v=verb: run_verb(v, ns))

    consent = sub.add_parser("consent", help="sign a second party's consent to a command, for "
                             "the party that sends it (a pledgor's, for a bank's pledge)")
    kinds = consent.add_subparsers(dest="consent_to", required=True, metavar="VERB")
    signer = argparse.ArgumentParser(add_help=False)
    signer.add_argument("--as", dest="actor", required=True, metavar="PARTICIPANT",
                        help="the consenting party, signing with its key from --keys")
    signer.add_argument("--command-id", default=None, metavar="ID",
                        help="the command id the sender will use (default: as the verb makes it)")
    signer.add_argument("--out", default=None, metavar="FILE",
                        help="write the consent here (default: standard output)")
    for verb in VERBS:
        if not verb.consent_from:
            continue
        p = kinds.add_parser(verb.name, parents=[common, signer],
                             help=f"consent to a {verb.name} as its {verb.consent_from}")
        p.add_argument(verb.sender, dest=verb.sender.lstrip("-"), required=True,
                       help="who sends the command")
        _add_flags(p, verb)
        p.set_defaults(func=lambda ns, v=verb: run_consent(v, ns), json=False)


def _add_flags(parser: argparse.ArgumentParser, verb: Verb) -> None:
    groups: dict[str, Any] = {}
    for f in verb.flags:
        if f.group is None:
            f.add_to(parser)
        else:
            if f.group not in groups:
                groups[f.group] = parser.add_mutually_exclusive_group(required=True)
            f.add_to(groups[f.group])
