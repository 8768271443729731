"""Value types and their parsing: ids, serials, tonnes, money in fen, dates, enumerations.

Everything that enters the ledger passes through these parsers, so the ledger holds only
str, int and bool values (no floats anywhere) in canonical form.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from domain.errors import invalid


class Role(StrEnum):
    OPERATOR = "operator"
    ISSUER = "issuer"
    REGULATOR = "regulator"
    EXCHANGE = "exchange"
    BANK = "bank"
    INSURER = "insurer"
    COURT = "court"
    HOLDER = "holder"


class Standard(StrEnum):
    SMCER = "SMCER"
    FFCER = "FFCER"
    CCER = "CCER"


class TradeMode(StrEnum):
    NEGOTIATED = "negotiated"
    AUCTION = "auction"
    LISTING = "listing"


class Purpose(StrEnum):
    VOLUNTARY = "voluntary"
    COMPLIANCE = "compliance"
    EVENT_NEUTRALITY = "event_neutrality"
    JUDICIAL_RESTORATION = "judicial_restoration"
    TREE_PLANTING_DUTY = "tree_planting_duty"
    CARBON_INCLUSIVE = "carbon_inclusive"


class Peril(StrEnum):
    FIRE = "fire"
    PEST = "pest"
    TYPHOON = "typhoon"
    FREEZE = "freeze"
    LANDSLIDE = "landslide"
    PRICE_INDEX = "price_index"


PHYSICAL_PERILS = frozenset(p for p in Peril if p is not Peril.PRICE_INDEX)


class UnitState(StrEnum):
    AVAILABLE = "available"
    PLEDGED = "pledged"
    RETIRED = "retired"
    CANCELLED = "cancelled"


# Roles whose participants may hold units (receive transfers, issuances or enforced pledges).
HOLDING_ROLES = frozenset({Role.HOLDER, Role.BANK})

MAX_ID_LEN = 64
MAX_TEXT_LEN = 2000
MAX_QUANTITY_T = 10**12  # a sanity bound far above any forest; keeps arithmetic small
MAX_FEN = 10**17

# Patterns are matched with fullmatch: "$" would also accept a trailing newline.
_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
_TICKET_NO = re.compile(r"[A-Z][A-Z0-9]*-[0-9]{7}")
_SERIAL = re.compile(r"(?P<ticket>[A-Z][A-Z0-9]*-[0-9]{7})-(?P<n>[0-9]{7}|[1-9][0-9]{7,11})")
_YUAN = re.compile(r"(0|[1-9][0-9]{0,14})(\.[0-9]{1,2})?")
# The patterns for fast paths that check a value in place of the functions below.
SLUG, REF, TICKET_NO, YUAN = _SLUG, _REF, _TICKET_NO, _YUAN
_PERIOD = re.compile(r"([0-9]{4})(?:-([0-9]{4}))?")
_SCHEME = re.compile(r"[a-z][a-z0-9_]{1,31}")


def a(word: str) -> str:
    """'an insurer', 'a bank': roles in sentences."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _require_str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise invalid(f"{field} must be a string, got {type(value).__name__}", field=field)
    return value


def slug(value: Any, field: str = "id") -> str:
    """A participant id: lower-case ASCII letters, digits and inner hyphens, at most 64."""
    s = _require_str(value, field)
    if not _SLUG.fullmatch(s):
        raise invalid(
            f"{field} {s!r} is not a slug (a-z, 0-9 and inner '-', 1 to 64 characters)",
            field=field,
        )
    return s


def ref(value: Any, field: str) -> str:
    """An external reference (trade id, pledge id, command id, case number in ASCII ...)."""
    s = _require_str(value, field)
    if not _REF.fullmatch(s):
        raise invalid(
            f"{field} {s!r} must be 1 to 128 ASCII letters, digits or ._:/- starting with a letter or digit",
            field=field,
        )
    return s


def text(value: Any, field: str, *, required: bool = True, max_len: int = MAX_TEXT_LEN) -> str:
    """Free UTF-8 text such as a name or a reason; Chinese is welcome, control characters are not."""
    if value is None and not required:
        return ""
    s = _require_str(value, field)
    if required and not s.strip():
        raise invalid(f"{field} must not be empty", field=field)
    if len(s) > max_len:
        raise invalid(f"{field} is {len(s)} characters long, at most {max_len} allowed", field=field)
    for i, ch in enumerate(s) if not s.isprintable() else ():
        if ord(ch) < 32 and ch not in "\n\t":
            raise invalid(f"{field} contains control character U+{ord(ch):04X} at character "
                          f"{i + 1}: {_CONTROL}", field=field, character=f"U+{ord(ch):04X}",
                          at=i + 1)
    return s


# Rules edition 2: human-readable text shows what its bytes say. The lists are written out here
# rather than read from Python's Unicode database (unicodedata), whose version follows the
# Python release: an auditor on another Python must refuse and accept exactly the same texts.
# (first, last, why) ranges of code points refused anywhere in a text.
_DIRECTION = "a direction control makes the text display in another order, or otherwise than " \
             "its characters read"
_INVISIBLE = "an invisible character can hide or join words that a reader cannot see"
_CONTROL = "control characters have no place in text a person reads"
_SEPARATOR = "a line or paragraph separator breaks the text where a reader does not expect it"
_PRIVATE = "a private-use character shows whatever a font makes of it"
_NONCHARACTER = "a noncharacter is not text"
_REFUSED_RANGES: tuple[tuple[int, int, str], ...] = tuple(sorted((
    (0x0000, 0x001F, _CONTROL), (0x007F, 0x009F, _CONTROL),
    (0x00AD, 0x00AD, _INVISIBLE),  # soft hyphen
    (0x061C, 0x061C, _DIRECTION),  # Arabic letter mark
    (0x0600, 0x0605, _INVISIBLE), (0x06DD, 0x06DD, _INVISIBLE), (0x070F, 0x070F, _INVISIBLE),
    (0x115F, 0x1160, _INVISIBLE), (0x17B4, 0x17B5, _INVISIBLE), (0x180E, 0x180E, _INVISIBLE),
    (0x200B, 0x200B, _INVISIBLE),  # zero width space
    (0x200E, 0x200F, _DIRECTION),  # left-to-right and right-to-left marks
    (0x2028, 0x2029, _SEPARATOR),
    (0x202A, 0x202E, _DIRECTION),  # embeddings, pop, overrides
    (0x2060, 0x2065, _INVISIBLE),  # word joiner, invisible operators
    (0x2066, 0x2069, _DIRECTION),  # isolates
    (0x206A, 0x206F, _INVISIBLE),  # deprecated format characters
    (0x2800, 0x2800, _INVISIBLE),  # braille pattern blank
    (0x3164, 0x3164, _INVISIBLE), (0xFFA0, 0xFFA0, _INVISIBLE),  # Hangul fillers
    (0xE000, 0xF8FF, _PRIVATE),
    (0xFDD0, 0xFDEF, _NONCHARACTER),
    (0xFEFF, 0xFEFF, _INVISIBLE),  # zero width no-break space (byte order mark)
    (0xFFF9, 0xFFFB, _INVISIBLE),  # interlinear annotation
    (0x1D173, 0x1D17A, _INVISIBLE),  # musical format characters
    (0xE0000, 0xE007F, _INVISIBLE),  # tags
    (0xF0000, 0x10FFFF, _PRIVATE),  # planes 15 and 16 (their last two are noncharacters: below)
)))
# Characters that are allowed but show nothing by themselves: joiners, the grapheme joiner,
# variation selectors. A text must hold at least one character outside these and white space.
_TRANSPARENT = frozenset([0x200C, 0x200D, 0x034F, *range(0xFE00, 0xFE10),
                          *range(0xE0100, 0xE01F0)])
_WHITE_SPACE = frozenset([0x0009, 0x000A, 0x000B, 0x000C, 0x000D, 0x0020, 0x0085, 0x00A0,
                          0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F,
                          0x3000])
MULTILINE_CONTROLS = frozenset("\n\t")  # allowed in the fields that hold several lines
_FIRST_REFUSED = 0x7F  # below it, only C0 controls are refused: a fast path for ASCII


def _refused(code: int) -> str | None:
    """Why a code point is refused in human-readable text, or None."""
    if (code & 0xFFFE) == 0xFFFE:  # U+FFFE, U+FFFF in every plane
        return _NONCHARACTER
    for first, last, why in _REFUSED_RANGES:
        if first <= code <= last:
            return why
        if code < first:
            break
    return None


def _character_name(ch: str) -> str:
    import unicodedata  # names are for the message only: no verdict depends on them

    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X} ({name})" if name else f"U+{ord(ch):04X}"


def display_text(value: str, field: str, *, multiline: bool = False) -> str:
    """Rules edition 2's check of a human-readable text: `value`, or a refusal naming the field
    and the character (at 1-based character positions) when the text could display otherwise
    than its characters read, or shows nothing at all. `multiline`: the field may hold line
    breaks and tabs (a reason, a description), not only one line (a name)."""
    visible = False
    for i, ch in enumerate(value):
        code = ord(ch)
        if code < _FIRST_REFUSED and code >= 0x20:
            visible = visible or code != 0x20
            continue
        why = _refused(code)
        if why is not None and not (multiline and ch in MULTILINE_CONTROLS):
            if ch in MULTILINE_CONTROLS:
                why = f"{field} holds one line: line breaks and tabs belong to longer texts"
            raise invalid(f"{field} contains {_character_name(ch)} at character {i + 1}: {why}",
                          field=field, character=f"U+{code:04X}", at=i + 1)
        if code not in _WHITE_SPACE and code not in _TRANSPARENT:
            visible = True
    if not visible:
        if not value.strip():
            raise invalid(f"{field} must not be empty", field=field)
        raise invalid(f"{field} has nothing visible in it: only spaces, joiners or variation "
                      "selectors", field=field)
    return value


def ticket_no(value: Any, field: str = "ticket_no") -> str:
    s = _require_str(value, field)
    if not _TICKET_NO.fullmatch(s):
        raise invalid(
            f"{field} {s!r} is not a ticket number like 'SM-0000001' (upper-case prefix, '-', 7 digits)",
            field=field,
        )
    return s


def format_serial(ticket: str, n: int) -> str:
    return f"{ticket}-{n:07d}"


def parse_serial(value: Any, field: str = "serial") -> tuple[str, int]:
    """'SM-0000001-0002723' -> ('SM-0000001', 2723)."""
    s = _require_str(value, field)
    m = _SERIAL.fullmatch(s)
    if not m or int(m.group("n")) < 1:
        raise invalid(f"{field} {s!r} is not a serial like 'SM-0000001-0000001'", field=field)
    return m.group("ticket"), int(m.group("n"))


def tonnes(value: Any, field: str = "quantity_t", *, minimum: int = 1) -> int:
    """Whole tonnes: an int (never a bool or float), at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(
            f"{field} must be a whole number of tonnes, got {value!r}", field=field
        )
    if value < minimum:
        raise invalid(f"{field} must be at least {minimum}, got {value}", field=field)
    if value > MAX_QUANTITY_T:
        raise invalid(f"{field} {value} is above the limit of {MAX_QUANTITY_T}", field=field)
    return value


def fen(value: Any, field: str, *, minimum: int = 0) -> int:
    """Money: a decimal string in yuan with at most 2 decimals ("15.00"), kept as integer fen."""
    if isinstance(value, str):
        if not _YUAN.fullmatch(value):
            raise invalid(
                f"{field} {value!r} is not an amount in yuan with at most 2 decimals, like '15.00'",
                field=field,
            )
        try:
            amount = int(Decimal(value) * 100)
        except InvalidOperation:  # pragma: no cover - the regex already guards this
            raise invalid(f"{field} {value!r} is not a number", field=field) from None
    else:
        raise invalid(f"{field} must be a decimal string like '15.00', got {value!r}", field=field)
    if amount < minimum:
        raise invalid(f"{field} must be at least {yuan(minimum)}, got {yuan(amount)}", field=field)
    if amount > MAX_FEN:
        raise invalid(f"{field} is above the limit", field=field)
    return amount


def yuan(amount_fen: int) -> str:
    """Fen as an exact decimal string in yuan: 1500 -> '15.00'."""
    sign = "-" if amount_fen < 0 else ""
    whole, cents = divmod(abs(amount_fen), 100)
    return f"{sign}{whole}.{cents:02d}"


def area_mu(value: Any, field: str = "area_mu") -> str:
    """An area in mu as an exact decimal string (ints accepted), at most 2 decimals."""
    if isinstance(value, bool) or isinstance(value, float):
        raise invalid(f"{field} must be an integer or decimal string, not {value!r}", field=field)
    if isinstance(value, int):
        value = str(value)
    s = _require_str(value, field)
    if not _YUAN.fullmatch(s) or Decimal(s) <= 0:
        raise invalid(f"{field} {s!r} must be a positive number with at most 2 decimals", field=field)
    return s


def iso_date(value: Any, field: str) -> str:
    s = _require_str(value, field)
    try:
        parsed = date.fromisoformat(s)
    except ValueError:
        raise invalid(f"{field} {s!r} is not a date like '2021-05-18'", field=field) from None
    if parsed.isoformat() != s:
        raise invalid(f"{field} {s!r} must be written as YYYY-MM-DD", field=field)
    return s


def period(start: Any, end: Any, field: str) -> tuple[str, str]:
    a = iso_date(start, f"{field}_start")
    b = iso_date(end, f"{field}_end")
    if b < a:
        raise invalid(f"{field} ends ({b}) before it starts ({a})", field=field)
    return a, b


def choice(enum: type[StrEnum], value: Any, field: str) -> str:
    s = _require_str(value, field)
    try:
        return str(enum(s))
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise invalid(f"{field} {s!r} is not one of: {allowed}", field=field) from None


def compliance_period(value: Any, field: str = "period") -> str:
    """A compliance period label such as '2021' or '2021-2022'."""
    s = _require_str(value, field)
    m = _PERIOD.fullmatch(s)
    if not m or (m.group(2) and m.group(2) <= m.group(1)):
        raise invalid(f"{field} {s!r} must be a year like '2021' or a span like '2021-2022'", field=field)
    return s


def scheme(value: Any, field: str = "scheme") -> str:
    s = _require_str(value, field)
    if not _SCHEME.fullmatch(s):
        raise invalid(f"{field} {s!r} must be a lower-case name like 'fujian_ets'", field=field)
    return s
