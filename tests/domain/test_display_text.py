"""Rules edition 2's check of human-readable text: what a certificate shows is what its bytes say.

`values.display_text` refuses, in a name, a beneficiary, a reason or any other text a person
reads: direction controls (U+202E and the rest), invisible formatting characters, control
characters (line breaks and tabs only where a field may hold several lines), line and paragraph
separators, private-use characters and noncharacters; and a text with nothing visible in it.
Chinese, ordinary punctuation and spaces pass unchanged. The lists are the code's own, not
Python's Unicode database, so every auditor decides the same on any Python.
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import commands as C
from domain import values as V
from domain.errors import DomainError

BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069",
        "\u200e", "\u200f", "\u061c"]
INVISIBLE = ["\u200b", "\u2060", "\u2061", "\u2064", "\ufeff", "\u00ad", "\u180e", "\u206a",
             "\ufff9", "\U000e0001", "\U000e0041", "\U0001d173", "\u3164", "\u115f", "\u1160",
             "\uffa0", "\u17b4", "\u17b5", "\u2800"]
CONTROLS = ["\x00", "\x07", "\x1b", "\r", "\x7f", "\x80", "\x85", "\x9f"]
SEPARATORS = ["\u2028", "\u2029"]
PRIVATE = ["\ue000", "\uf8ff", "\U000f0000", "\U0010fffd"]
NONCHARACTERS = ["\ufdd0", "\ufdef", "\ufffe", "\uffff", "\U0001fffe", "\U0010ffff"]
REFUSED = BIDI + INVISIBLE + CONTROLS + SEPARATORS + PRIVATE + NONCHARACTERS


def refusal(value: str, field: str = "name", *, multiline: bool = False) -> DomainError:
    with pytest.raises(DomainError) as info:
        V.display_text(value, field, multiline=multiline)
    assert info.value.code == "invalid_argument"
    assert info.value.details["field"] == field
    assert field in info.value.message
    return info.value


@pytest.mark.parametrize("value", [
    "三明市林业局", "福建林业碳票登记簿 (demo registry operator)", "常口村生态公益林",
    "将乐县 forest-fire restoration (碳汇+生态司法)", "2021闽0428刑初01号",
    "Ünïcödé café, naïve — “quoted” ‘text’ … 100% #1 @ & * / \\ | ~ ^ ` ' \" ; : ! ?",
    "全角　空格", "a\u00a0b", "emoji 🌲🔥", "family 👨\u200d👩\u200d👧", "فارسی\u200cنامه",
    "e\u0301", "variation 葛\U000e0100", "x" * V.MAX_TEXT_LEN,
])
def test_ordinary_text_passes_unchanged(value: str) -> None:
    assert V.display_text(value, "name") == value
    assert V.display_text(value, "description", multiline=True) == value


@pytest.mark.parametrize("ch", REFUSED)
def test_each_refused_character_is_named_with_its_code_point(ch: str) -> None:
    err = refusal(f"Evil{ch}Corp 碳汇")
    assert f"U+{ord(ch):04X}" in err.message
    assert "at character 5" in err.message
    assert err.details["character"] == f"U+{ord(ch):04X}"
    name = unicodedata.name(ch, "")
    if name:
        assert name in err.message


def test_the_right_to_left_override_says_what_it_does() -> None:
    err = refusal("invoice for \u202ecod.exe", "beneficiary")
    assert err.message.startswith("beneficiary contains U+202E (RIGHT-TO-LEFT OVERRIDE) at "
                                  "character 13")
    assert "otherwise than its characters" in err.message


@pytest.mark.parametrize("ch", ["\n", "\t"])
def test_line_breaks_and_tabs_only_in_fields_of_several_lines(ch: str) -> None:
    assert V.display_text(f"first{ch}second", "reason", multiline=True) == f"first{ch}second"
    err = refusal(f"first{ch}second", "name")
    assert f"U+{ord(ch):04X}" in err.message and "one line" in err.message


@pytest.mark.parametrize("value", ["\u200d", "\u200c\u200d", " \u200d ", "\u3000\u200c",
                                   "\ufe0f", "\u034f", "\U000e0100"])
def test_text_with_nothing_visible_is_refused(value: str) -> None:
    err = refusal(value, "beneficiary")
    assert "nothing visible" in err.message


def test_a_zero_width_space_only_text_is_refused_by_its_character() -> None:
    err = refusal("\u200b\u200b", "beneficiary")
    assert "U+200B" in err.message and "ZERO WIDTH SPACE" in err.message


@pytest.mark.parametrize("value", ["", "   ", "\u3000"])
def test_blank_text_is_still_refused_as_empty(value: str) -> None:
    err = refusal(value)
    assert "must not be empty" in err.message or "nothing visible" in err.message


def test_the_first_offending_character_is_the_one_named() -> None:
    err = refusal("a\u202ab\u200bc")
    assert "U+202A" in err.message and "U+200B" not in err.message


# Properties -------------------------------------------------------------------------------------

VISIBLE = st.characters(categories=("L", "N", "P", "S"), exclude_characters="".join(REFUSED))
SAFE_TEXT = st.lists(st.one_of(VISIBLE, st.sampled_from([" ", "\u3000", "\u200d", "\u0301"])),
                     min_size=1, max_size=40).map("".join).filter(
    lambda s: any(unicodedata.category(c)[0] in "LNPS" and c not in REFUSED for c in s))


@settings(max_examples=300, deadline=None)
@given(SAFE_TEXT)
def test_text_of_visible_characters_always_passes_unchanged(value: str) -> None:
    assert V.display_text(value, "name") == value


@settings(max_examples=300, deadline=None)
@given(SAFE_TEXT, st.sampled_from(REFUSED), st.data())
def test_one_refused_character_anywhere_is_always_refused_and_named(value: str, ch: str,
                                                                    data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(value)))
    text = value[:at] + ch + value[at:]
    err = refusal(text, "details", multiline=True)
    assert f"U+{ord(ch):04X}" in err.message
    assert f"at character {at + 1}" in err.message


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_any_text_is_either_returned_unchanged_or_refused_with_the_field(value: str) -> None:
    """No text makes the check raise anything but a refusal naming the field."""
    try:
        assert V.display_text(value, "county") == value
    except DomainError as e:
        assert e.code == "invalid_argument" and "county" in e.message


# Which fields are text -----------------------------------------------------------------------

def test_every_human_readable_field_of_every_command_is_listed() -> None:
    assert C.TEXT_FIELDS["register_participant"] == ("name",)
    assert C.TEXT_FIELDS["retire"] == ("beneficiary", "details", "case_no")
    assert set(C.TEXT_FIELDS["register_project"]) == {"name", "county", "methodology"}
    assert C.TEXT_FIELDS["file_claim"] == ("description",)
    assert C.TEXT_FIELDS["confirm_loss"] == ("report",)
    for name in ("transfer", "settle_batch", "pledge", "issue_ticket", "approve_claim"):
        assert C.TEXT_FIELDS[name] == (), name
    # serials are parsed as serials, not kept as text
    assert "first_serial" not in C.TEXT_FIELDS["cancel_units"]
    assert set(C.MULTILINE_FIELDS) == {"reason", "description", "details", "report"}
