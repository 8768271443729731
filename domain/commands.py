"""Commands: what a participant asks of the registry, parsed and validated from plain data.

Every command names its actor and carries a command id (the client's idempotency key). Parsing
turns a JSON-like dict into a frozen command whose `payload()` is canonical: only str, int, bool,
lists and dicts with str keys, with money in integer fen. Unknown fields are refused.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from domain import values as V
from domain.errors import DomainError, invalid
from domain.genesis import EDITIONS

MAX_BATCH = 10_000
MAX_LINES = 1_000

Parser = Callable[[Any, str], Any]


def _optional(parser: Parser, default: Any = "") -> Parser:
    def parse(value: Any, name: str) -> Any:
        return default if value is None else parser(value, name)

    parse.optional = True  # type: ignore[attr-defined]
    parse.default = default  # type: ignore[attr-defined]
    parse.text = getattr(parser, "text", False)  # type: ignore[attr-defined]
    return parse


def _added(parser: Parser) -> Parser:
    """An optional argument added to a command after commands were recorded without it: left
    out of the parsed fields when absent, so that an old command's fields, and so its digest,
    stay what they were when it was signed."""
    parse = _optional(parser, None)
    parse.omitted = True  # type: ignore[attr-defined]
    return parse


def _enum(enum) -> Parser:
    return lambda value, name: V.choice(enum, value, name)


def _text(value: Any, name: str) -> str:
    return V.text(value, name)


_text.text = True  # type: ignore[attr-defined]  # human-readable: see TEXT_FIELDS


def _serial_text(value: Any, name: str) -> str:
    return V.text(value, name)  # a serial, parsed as one later: not kept as text


def _date(value: Any, name: str) -> str:
    return V.iso_date(value, name)


def _money(value: Any, name: str) -> int:
    return V.fen(value, name)


def _positive_money(value: Any, name: str) -> int:
    return V.fen(value, name, minimum=1)


_money.suffix = "_fen"  # type: ignore[attr-defined]
_positive_money.suffix = "_fen"  # type: ignore[attr-defined]


def _bp(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10000:
        raise invalid(f"{name} must be basis points, an integer from 0 to 10000 (1000 = 10%)", field=name)
    return value


def _limits(value: Any, name: str) -> dict[str, int]:
    if not isinstance(value, dict) or not value:
        raise invalid(f"{name} must map standards to basis points, like {{'FFCER': 1000}}", field=name)
    return {V.choice(V.Standard, k, f"{name} key"): _bp(v, f"{name}.{k}") for k, v in sorted(value.items())}


def _perils(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise invalid(f"{name} must be a non-empty list of perils", field=name)
    perils = sorted({V.choice(V.Peril, p, name) for p in value})
    if len(perils) != len(value):
        raise invalid(f"{name} lists a peril twice", field=name)
    return perils


def _line(value: Any, name: str) -> dict[str, Any]:
    """{ticket_no, quantity_t} or {ticket_no, first_serial, last_serial[, quantity_t]}."""
    if not isinstance(value, dict):
        raise invalid(f"{name} must be an object with ticket_no and quantity_t", field=name)
    unknown = set(value) - {"ticket_no", "quantity_t", "first_serial", "last_serial"}
    if unknown:
        raise invalid(f"{name} has unknown fields: {', '.join(sorted(unknown))}", field=name)
    ticket = V.ticket_no(value.get("ticket_no"), f"{name}.ticket_no")
    first, last = value.get("first_serial"), value.get("last_serial")
    if first is None and last is None:
        q = V.tonnes(value.get("quantity_t"), f"{name}.quantity_t")
        return {"ticket_no": ticket, "quantity_t": q}
    if first is None or last is None:
        raise invalid(f"{name} needs both first_serial and last_serial", field=name)
    t1, a = V.parse_serial(first, f"{name}.first_serial")
    t2, b = V.parse_serial(last, f"{name}.last_serial")
    if t1 != ticket or t2 != ticket:
        raise invalid(f"{name}'s serials must belong to ticket {ticket}", field=name)
    if b < a:
        raise invalid(f"{name}: last_serial comes before first_serial", field=name)
    q = b - a + 1
    if value.get("quantity_t") is not None and V.tonnes(value["quantity_t"], f"{name}.quantity_t") != q:
        raise invalid(f"{name}: quantity_t {value['quantity_t']} differs from the {q} serials given",
                      field=name)
    return {"ticket_no": ticket, "quantity_t": q, "first": a, "last": b}


def _lines(value: Any, name: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise invalid(f"{name} must be a non-empty list of lines", field=name)
    if len(value) > MAX_LINES:
        raise invalid(f"{name} has {len(value)} lines, at most {MAX_LINES} allowed", field=name)
    lines = [_line(v, f"{name}[{i}]") for i, v in enumerate(value)]
    seen: set[str] = set()
    for ln in lines:
        if ln["ticket_no"] in seen:
            raise invalid(f"{name} names ticket {ln['ticket_no']} twice; use one line per ticket",
                          field=name)
        seen.add(ln["ticket_no"])
    return lines


def _slug(value: Any, name: str) -> str:
    return V.slug(value, name)


def _ref(value: Any, name: str) -> str:
    return V.ref(value, name)


def _tonnes(value: Any, name: str) -> int:
    return V.tonnes(value, name)


def _tonnes0(value: Any, name: str) -> int:
    return V.tonnes(value, name, minimum=0)


def _ticket(value: Any, name: str) -> str:
    return V.ticket_no(value, name)


def _scheme(value: Any, name: str) -> str:
    return V.scheme(value, name)


def _cperiod(value: Any, name: str) -> str:
    return V.compliance_period(value, name)


def _area(value: Any, name: str) -> str:
    return V.area_mu(value, name)


_PUBLIC_KEY = re.compile(r"ed25519:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")


def _public_key(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _PUBLIC_KEY.fullmatch(value):
        raise invalid(f"{name} must be an Ed25519 public key like 'ed25519:<base64 of 32 bytes>'",
                      field=name)
    return value


def _key_id(value: Any, name: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{32}", value):
        raise invalid(f"{name} must be a key id of 32 lower-case hex digits", field=name)
    return value


@dataclass(frozen=True)
class Command:
    """A parsed command. `name` selects the handler; `fields` holds the canonical arguments."""

    name: str
    actor: str
    command_id: str
    fields: dict[str, Any] = field(default_factory=dict)

    SPECS: ClassVar[dict[str, dict[str, Parser]]] = {}

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def payload(self) -> dict[str, Any]:
        """The canonical form: what is hashed for idempotency (and later signed)."""
        return {"command": self.name, "actor": self.actor, "command_id": self.command_id,
                "args": self.fields}

    def digest(self) -> str:
        return hashlib.sha256(canonical_bytes(self.payload())).hexdigest()


def canonical_bytes(obj: Any) -> bytes:
    """Deterministic msgpack: maps with sorted str keys, no floats."""
    return msgpack.packb(_canonical(obj), use_bin_type=True)


_SCALARS = frozenset({str, int, bool, bytes, type(None)})
# A parsed batch item's keys, in sorted order: the order the parser builds the item in, so that
# _canonical can pass the item to msgpack as it is instead of sorting a copy of it.
_ITEM_KEYS = ("buyer", "first", "last", "mode", "price_fen", "quantity_t", "seller", "ticket_no",
              "trade_id")
_SORTED_SHAPES = frozenset({_ITEM_KEYS})
assert all(list(shape) == sorted(shape) for shape in _SORTED_SHAPES)


def _canonical(obj: Any) -> Any:
    # Scalars inside a dict or list are taken as they are, without a call each.
    if type(obj) is dict and tuple(obj) in _SORTED_SHAPES \
            and _SCALARS.issuperset(map(type, obj.values())):
        # Canonical already: its keys are str in sorted order (they equal a sorted shape) and
        # its values scalars, so the sorted copy below would equal it, order included. Only
        # for an exact dict: msgpack asks a subclass for its items, in an order of its own.
        return obj
    if isinstance(obj, dict):
        return {str(k): v if type(v) in _SCALARS else _canonical(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [v if type(v) in _SCALARS else _canonical(v) for v in obj]
    if isinstance(obj, float):
        raise invalid("floating-point numbers are not allowed in the ledger")
    return obj


def _spec(command_name: str, /, **fields: Parser) -> None:
    Command.SPECS[command_name] = fields


def _edition(value: Any, name: str) -> int:
    known = ", ".join(map(str, EDITIONS))
    if isinstance(value, bool) or not isinstance(value, int) or value not in EDITIONS:
        raise invalid(f"{name} {value!r} is not a rules edition this registry knows ({known})",
                      field=name)
    return value


_spec("initialise", origin=_ref, operator_id=_slug, name=_text, public_key=_public_key,
      rules_edition=_added(_edition))
_spec("register_participant", participant_id=_slug, name=_text, role=_enum(V.Role),
      public_key=_public_key)
_spec("rotate_key", participant_id=_slug, new_public_key=_public_key)
_spec("revoke_key", participant_id=_slug, key_id=_key_id, reason=_text)
_spec("register_project", project_id=_ref, name=_text, owner=_slug, county=_text, area_mu=_area,
      standard=_enum(V.Standard), methodology=_optional(_text))
_spec("issue_ticket", ticket_no=_ticket, project_id=_ref, standard=_enum(V.Standard),
      period_start=_date, period_end=_date, quantity_t=_tonnes)
_spec("grant_mandate", holder=_slug, exchange=_slug)
_spec("revoke_mandate", holder=_slug, exchange=_slug)

_TRANSFER_ITEM = dict(trade_id=_ref, seller=_slug, buyer=_slug, ticket_no=_ticket,
                      quantity_t=_optional(_tonnes, None), first_serial=_optional(_serial_text, None),
                      last_serial=_optional(_serial_text, None), price=_money,
                      mode=_enum(V.TradeMode))
_spec("transfer", **_TRANSFER_ITEM)


def _transfer_items(value: Any, name: str) -> list[dict[str, Any]]:
    """A batch's transfers, parsed in one pass over the items.

    The refusals are those of parsing every item, then looking for a repeated trade id, then
    checking each item's own rules (seller and buyer not the same, serials matching the
    quantity), each time at the first item that fails: so the pass only notes the trade ids and
    which items took the general path, and the later checks run after it.
    """
    if not isinstance(value, list) or not value:
        raise invalid(f"{name} must be a non-empty list of transfers", field=name)
    if len(value) > MAX_BATCH:
        raise DomainError("batch_too_large",
                          f"a batch holds at most {MAX_BATCH} transfers; this one has {len(value)}",
                          limit=MAX_BATCH, size=len(value))
    items = []
    trade_ids: set[str] = set()
    general = []  # the indices of the items that _check_transfer has still to check
    for i, v in enumerate(value):
        item = _plain_transfer(v)
        if item is None:
            try:
                item = _parse_fields(v, _TRANSFER_ITEM, f"{name}[{i}]")
            except DomainError as e:
                raise DomainError(e.code, f"{name}[{i}]: {e.message}", index=i, **e.details) from None
            general.append(i)
        trade_ids.add(item["trade_id"])
        items.append(item)
    if len(trade_ids) != len(items):  # a trade id is repeated: find its first repeat
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item["trade_id"] in seen:
                raise invalid(f"{name}[{i}] repeats trade_id {item['trade_id']}", field=name)
            seen.add(item["trade_id"])
    for i in general:
        checked = _check_transfer(items[i], f"{name}[{i}]")
        items[i] = {k: checked[k] for k in _ITEM_KEYS}  # in the order _plain_transfer gives
    return items


_MODES = {m.value: m.value for m in V.TradeMode}
_MAX_QUANTITY_T = V.MAX_QUANTITY_T
_is_ref = V.REF.fullmatch  # trade ids differ from item to item: each is matched

# A batch names the same few hundred participants, tickets and prices over and over (and the
# next batch names them again), so each distinct string is matched against its pattern once:
# these memos map every exact str that matched to itself (a price to its fen). Handing out the
# memo's copy also makes equal strings one object, which a pickled command then holds once.
# Only strings that matched are kept; a memo that is full is emptied and starts again.
_MEMO_MAX = 1 << 14
_SLUGS: dict[str, str] = {}
_TICKETS: dict[str, str] = {}
_PRICES: dict[str, int] = {}


def _remember(memo: dict[str, Any], s: str, value: Any) -> Any:
    if len(memo) >= _MEMO_MAX:
        memo.clear()
    memo[s] = value
    return value


def _new_match(memo: dict[str, str], pattern: re.Pattern[str], s: str) -> str | None:
    """s, remembered in `memo`, when it matches the pattern whole; else None."""
    return _remember(memo, s, s) if pattern.fullmatch(s) else None


def _new_price(s: str) -> int | None:
    """The fen of a price in yuan that V.fen would take, or None."""
    if not V.YUAN.fullmatch(s):
        return None
    whole, _, cents = s.partition(".")
    fen = int(whole) * 100 + int(cents.ljust(2, "0"))
    return _remember(_PRICES, s, fen) if fen <= V.MAX_FEN else None


def _plain_transfer(v: Any) -> dict[str, Any] | None:
    """The common batch item (a quantity, no serials) checked in one pass: the same dict as
    _check_transfer(_parse_fields(v, _TRANSFER_ITEM, ...)) would give, its keys in _ITEM_KEYS
    order, or None for anything else (which the general path then parses, or refuses with its
    own message)."""
    if type(v) is not dict or len(v) != 7:
        return None
    try:  # seven keys, and these seven: no others
        trade_id, seller, buyer = v["trade_id"], v["seller"], v["buyer"]
        ticket, q, price, mode = v["ticket_no"], v["quantity_t"], v["price"], v["mode"]
    except KeyError:
        return None
    # The types first: the memos are for exact str only (a list is not hashable, and a str
    # subclass must not pass for the str it equals: the general path keeps it as it is).
    if not (type(trade_id) is str and type(seller) is str and type(buyer) is str
            and type(ticket) is str and type(price) is str and type(mode) is str and type(q) is int
            and 1 <= q <= _MAX_QUANTITY_T and seller != buyer and _is_ref(trade_id)):
        return None
    seller = _SLUGS.get(seller) or _new_match(_SLUGS, V.SLUG, seller)
    buyer = _SLUGS.get(buyer) or _new_match(_SLUGS, V.SLUG, buyer)
    ticket = _TICKETS.get(ticket) or _new_match(_TICKETS, V.TICKET_NO, ticket)
    price_fen = _PRICES.get(price)
    if price_fen is None:  # (0 fen is a price)
        price_fen = _new_price(price)
    mode = _MODES.get(mode)
    if seller is None or buyer is None or ticket is None or price_fen is None or mode is None:
        return None
    return {"buyer": buyer, "first": 0, "last": 0, "mode": mode, "price_fen": price_fen,
            "quantity_t": q, "seller": seller, "ticket_no": ticket, "trade_id": trade_id}


_spec("settle_batch", batch_id=_ref, transfers=_transfer_items)
_spec("pledge", pledge_id=_ref, pledgor=_slug, loan_ref=_ref, secured_amount=_positive_money,
      maturity=_date, lines=_lines)
_spec("release_pledge", pledge_id=_ref, lines=_optional(_lines, None))
_spec("enforce_pledge", pledge_id=_ref, to=_optional(_slug))
_spec("bind_policy", policy_id=_ref, insured=_slug, lines=_lines, sum_insured=_positive_money,
      premium=_money, start=_date, end=_date, perils=_perils, loss_payee=_optional(_slug))
_spec("file_claim", claim_id=_ref, policy_id=_ref, peril=_enum(V.Peril), loss_date=_date,
      claimed_t=_tonnes, description=_optional(_text))
_spec("approve_claim", claim_id=_ref, approved_t=_tonnes, payout=_money)
_spec("reject_claim", claim_id=_ref, reason=_text)
_spec("retire", retirement_id=_ref, purpose=_enum(V.Purpose), beneficiary=_text,
      details=_optional(_text), lines=_lines, case_no=_optional(_text), court=_optional(_slug),
      scheme=_optional(_scheme), period=_optional(_cperiod))
_spec("record_emissions", entity=_slug, scheme=_scheme, period=_cperiod,
      verified_emissions_t=_tonnes0)
_spec("set_limits", scheme=_scheme, period=_cperiod, limits_bp=_limits, total_bp=_bp)
_spec("freeze", holder=_slug, reason=_text)
_spec("unfreeze", holder=_slug)
_spec("cancel_units", cancellation_id=_ref, ticket_no=_ticket, holder=_slug,
      quantity_t=_optional(_tonnes, None), first_serial=_optional(_serial_text, None),
      last_serial=_optional(_serial_text, None), reason=_text)
_spec("confirm_loss", claim_id=_ref, confirmed_t=_tonnes0, report=_text)
_spec("adopt_rules", edition=_edition)

COMMAND_NAMES = tuple(Command.SPECS)

# The human-readable text fields of each command: rules edition 2 checks them for display
# safety (values.display_text). The multi-line ones may hold line breaks and tabs.
TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    name: tuple(f for f, parser in spec.items() if getattr(parser, "text", False))
    for name, spec in Command.SPECS.items()}
MULTILINE_FIELDS = frozenset({"reason", "description", "details", "report"})

_R = V.Role
# Which roles may issue each command at all. Handlers refine this (the project's own issuer, the
# pledge's own bank, a holder acting for its own account); the auditor re-checks this table.
PERMISSIONS: dict[str, frozenset[str]] = {
    "initialise": frozenset({_R.OPERATOR}),
    "register_participant": frozenset({_R.OPERATOR}),
    "rotate_key": frozenset(r.value for r in _R),
    "revoke_key": frozenset(r.value for r in _R),
    "register_project": frozenset({_R.ISSUER}),
    "issue_ticket": frozenset({_R.ISSUER}),
    "grant_mandate": frozenset({_R.HOLDER, _R.BANK}),
    "revoke_mandate": frozenset({_R.HOLDER, _R.BANK}),
    "transfer": frozenset({_R.EXCHANGE}),
    "settle_batch": frozenset({_R.EXCHANGE}),
    "pledge": frozenset({_R.BANK}),
    "release_pledge": frozenset({_R.BANK}),
    "enforce_pledge": frozenset({_R.BANK}),
    "bind_policy": frozenset({_R.INSURER}),
    "file_claim": frozenset({_R.HOLDER, _R.BANK, _R.INSURER}),
    "approve_claim": frozenset({_R.INSURER}),
    "reject_claim": frozenset({_R.INSURER}),
    "retire": frozenset({_R.HOLDER, _R.BANK}),
    "record_emissions": frozenset({_R.REGULATOR}),
    "set_limits": frozenset({_R.REGULATOR}),
    "freeze": frozenset({_R.REGULATOR, _R.COURT}),
    "unfreeze": frozenset({_R.REGULATOR, _R.COURT}),
    "cancel_units": frozenset({_R.ISSUER}),
    "confirm_loss": frozenset({_R.ISSUER, _R.REGULATOR}),
    "adopt_rules": frozenset({_R.OPERATOR}),
}
assert set(PERMISSIONS) == set(Command.SPECS), set(Command.SPECS) ^ set(PERMISSIONS)


def check_permission(name: str, actor: str, role: str) -> None:
    if role not in PERMISSIONS[name]:
        allowed = " or ".join(V.a(r) for r in sorted(PERMISSIONS[name]))
        raise DomainError("not_authorized", f"{actor} is {V.a(role)}; only {allowed} may "
                          f"{name.replace('_', ' ')}", actor=actor, role=role, command=name)


def _parse_fields(data: Any, spec: dict[str, Parser], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise invalid(f"{where} must be an object")
    unknown = set(data) - set(spec)
    if unknown:
        raise invalid(f"{where} has unknown fields: {', '.join(sorted(unknown))}",
                      fields=sorted(unknown))
    out: dict[str, Any] = {}
    for key, parser in spec.items():
        value = data.get(key)
        if value is None:
            if not getattr(parser, "optional", False):
                raise invalid(f"{where} needs {key}", field=key)
            if getattr(parser, "omitted", False):
                continue
        out[key + getattr(parser, "suffix", "")] = parser(value, key)
    return out


def _check_transfer(item: dict[str, Any], where: str) -> dict[str, Any]:
    if item["seller"] == item["buyer"]:
        raise DomainError("same_party", f"{where}: seller and buyer are both {item['seller']}",
                          seller=item["seller"])
    return _check_units(item, where)


def _check_units(item: dict[str, Any], where: str) -> dict[str, Any]:
    line = {"ticket_no": item["ticket_no"], "quantity_t": item["quantity_t"],
            "first_serial": item["first_serial"], "last_serial": item["last_serial"]}
    parsed = _line({k: v for k, v in line.items() if v is not None}, where)
    item = dict(item)
    item["quantity_t"] = parsed["quantity_t"]
    item["first"] = parsed.get("first", 0)
    item["last"] = parsed.get("last", 0)
    del item["first_serial"], item["last_serial"]
    return item


def parse(data: Any) -> Command:
    """Parse {"command": name, "actor": id, "command_id": key, "args": {...}} into a Command."""
    if not isinstance(data, dict):
        raise invalid("a command must be an object with command, actor, command_id and args")
    unknown = set(data) - {"command", "actor", "command_id", "args"}
    if unknown:
        raise invalid(f"the command has unknown fields: {', '.join(sorted(unknown))}")
    name = data.get("command")
    if type(name) is not str or name not in Command.SPECS:  # (a dict or list is unhashable)
        raise invalid(f"unknown command {name!r}; known: {', '.join(COMMAND_NAMES)}", field="command")
    actor = V.slug(data.get("actor"), "actor")
    command_id = V.ref(data.get("command_id"), "command_id")
    return make(name, actor, command_id, data.get("args") or {})


def make(name: str, actor: str, command_id: str, args: dict[str, Any]) -> Command:
    """Build a command from its name and raw arguments, validating every field."""
    if name not in Command.SPECS:
        raise invalid(f"unknown command {name!r}", field="command")
    fields = _parse_fields(args, Command.SPECS[name], name)
    if name == "transfer":
        fields = _check_transfer(fields, name)
    elif name == "cancel_units":
        fields = _check_units(fields, name)
    elif name == "issue_ticket":
        V.period(fields["period_start"], fields["period_end"], "period")
    elif name == "bind_policy":
        V.period(fields["start"], fields["end"], "policy period")
    return Command(name=name, actor=V.slug(actor, "actor"), command_id=V.ref(command_id, "command_id"),
                   fields=fields)
