"""The demo story told in sentences (ledger.narration): every step of the story has its own
sentence with the story's figures, and any other step, known or not, is told without error."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.commands import COMMAND_NAMES
from domain.errors import DomainError
from ledger import demo
from ledger.application import Registry
from ledger.keys import Keyring
from ledger.narration import CHAPTERS, NARRATORS, Line, Step, narrate, sentence, yuan

NAMES = {pid: name for pid, _, name in demo.PARTICIPANTS}


def names(participant_id: str) -> str:
    return NAMES.get(participant_id, participant_id)


def story_steps() -> list[Step]:
    app = Registry("sqlite:///:memory:", keyring=Keyring())
    steps = []
    try:
        for name, actor, command_id, args in demo.story():
            try:
                steps.append(Step(name, actor, command_id, args,
                                  app.submit(name, actor, command_id, args)))
            except DomainError as e:
                steps.append(Step(name, actor, command_id, args, refusal=(e.code, e.message)))
    finally:
        app.close()
    return steps


STEPS = story_steps()
LINES = narrate(STEPS, names)
TEXT = "\n".join(line.text for line in LINES)


def test_every_story_command_has_a_narrator_of_its_own() -> None:
    assert {s.name for s in STEPS} <= set(NARRATORS)
    assert set(NARRATORS) <= set(COMMAND_NAMES)  # no narrator for a command that is gone
    for step in STEPS:
        assert not sentence(step, names).startswith(f"{names(step.actor)}: "), step.name


def test_the_chapters_follow_the_story() -> None:
    chapters = list(dict.fromkeys(line.chapter for line in LINES))
    assert chapters == [CHAPTERS[c] for c in ("accounts", "issuance", "trading", "pledge",
                                              "insurance", "retirement", "compliance")]


def test_runs_of_registrations_and_mandates_are_one_sentence_each() -> None:
    accounts = [line for line in LINES if line.chapter == CHAPTERS["accounts"]]
    assert len(accounts) == 2  # the operator's opening, then the twelve registrations
    assert accounts[1].text.startswith("The operator registers 12 participants: 三明市林业局 (issuer)")
    assert "6 holders let 福建沙县农村产权交易中心 trade their units: 常口村, " in TEXT
    assert len(LINES) == len(STEPS) - 11 - 5


def test_the_sentences_carry_the_figures() -> None:
    for expected in (
        "三明市林业局 issues ticket SM-0000001 to 常口村: 12,723 t of SMCER sequestered 2016–2020",
        "福建通海镍业 buys 2,723 t of SM-0000001 from 常口村 at ¥15.00/t (¥40,845.00), settled by "
        "福建沙县农村产权交易中心 as trade SX-2021-0001.",
        "金森碳汇 pledges 18,294 t: 10,000 t of SM-0000001 and 8,294 t of SM-0000002 to "
        "兴业银行三明分行 as collateral for a loan of ¥5,000,000.00 (CIB-SM-2021-LOAN-001, due "
        "2024-12-31)",
        "2022-03: a fire destroys 500 t; 金森碳汇 claims under policy POL-2021-001",
        "approves claim CLM-2022-001: 500 t lost, 500 t cancelled, pledge PL-2021-001 impaired; "
        "it pays ¥5,000.00 to 兴业银行三明分行 (pledgee of PL-2021-001).",
        "retires 523 t of SM-0000002 for judicial restoration, ordered by 将乐县人民法院 in case "
        "2021闽0428刑初01号",
        "福建通海镍业 retires 5,000 t of FFCER-0000001 to offset its fujian_ets 2021 emissions",
    ):
        assert expected in TEXT, expected


def test_the_refusal_says_what_was_asked_and_why() -> None:
    [refused] = [line for line in LINES if line.refused]
    assert refused.chapter == CHAPTERS["compliance"]
    assert refused.text.startswith("Refused: 福建通海镍业 retires 1 t of FFCER-0000001")
    assert "— cap_exceeded: tonghai-nickel in fujian_ets 2021 may offset at most 5000 t" in refused.text


def test_a_step_the_narrator_does_not_know_gets_a_plain_sentence() -> None:
    """Such as a step a later command adds to the story before its narrator is written."""
    step = Step("survey_forest", "sanming-forestry", "survey/CLM-9", {"claim_id": "CLM-9",
                "surveyed_t": 40}, {"claim_id": "CLM-9", "surveyed_t": 40, "position": 99})
    [line] = narrate([step], names)
    assert line.chapter == CHAPTERS["other"]
    assert line.text == "三明市林业局: survey forest (claim CLM-9, surveyed 40 t)."


def test_a_loss_confirmation_is_told_as_the_survey_it_is() -> None:
    step = Step("confirm_loss", "sanming-forestry", "loss/CLM-9", {"claim_id": "CLM-9",
                "confirmed_t": 40}, {"claim_id": "CLM-9", "confirmed_t": 40, "position": 99})
    [line] = narrate([step], names)
    assert line.chapter == CHAPTERS["insurance"]
    assert line.text == ("三明市林业局 confirms the loss of claim CLM-9 after its survey: "
                         "40 t lost.")


def test_a_known_command_of_an_unexpected_shape_falls_back_to_the_plain_sentence() -> None:
    step = Step("transfer", "shaxian-exchange", "t-1", {"trade_id": "T-1"}, {"position": 5})
    assert sentence(step, names) == "福建沙县农村产权交易中心: transfer (trade T-1)."


def test_money_is_exact() -> None:
    assert yuan("0.10") == "¥0.10" and yuan("123456789012345.67") == "¥123,456,789,012,345.67"


scalars = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.text(max_size=6)
values = scalars | st.lists(scalars, max_size=2) | st.dictionaries(
    st.sampled_from(["ticket_no", "quantity_t", "amount", "party"]), scalars, max_size=2) | \
    st.lists(st.dictionaries(st.sampled_from(["ticket_no", "quantity_t", "amount"]), scalars,
                             max_size=2), max_size=2)
fields = st.dictionaries(st.sampled_from(["holder", "ticket_no", "quantity_t", "price", "lines",
                                          "pledge_id", "claim_id", "purpose", "payees", "name",
                                          "role", "transfers", "limits_bp", "total_bp", "x"]),
                         values, max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([*COMMAND_NAMES, "something_new"]), fields, fields | st.none(),
       st.booleans())
def test_any_step_is_told_without_error(name: str, args: dict[str, Any],
                                        outcome: dict[str, Any] | None, refused: bool) -> None:
    step = Step(name, "actor-x", "id-1", args, None if refused else outcome or {},
                ("invalid_argument", "no") if refused else None)
    lines = narrate([step, step], names)
    assert lines and all(isinstance(line, Line) and line.text for line in lines)
    assert all(line.chapter in CHAPTERS.values() for line in lines)
