"""The action contract: every format the prompt asks for parses back, and bad output is invalid with a reason."""
import re

import pytest

from hitchhiker import contract
from hitchhiker.contract import ELEMENTWISE, PAIRWISE, instructions, parse

FORMATS = [
    (PAIRWISE, {"with_proportion": False}),
    (PAIRWISE, {"with_proportion": True}),
    (ELEMENTWISE, {"numeric_position": False}),
    (ELEMENTWISE, {"numeric_position": True}),
]


@pytest.mark.parametrize("brief", [False, True])
@pytest.mark.parametrize("mode,flags", FORMATS)
def test_the_example_answer_in_the_instructions_parses(mode, flags, brief):
    text = instructions(mode, 3, brief=brief, **flags)
    assert "ACTION:" in text and ("3 trading days" in text)
    example = re.search(r"ACTION: \S+(?: \d\.\d+)?", text).group(0)
    got = parse(f"Some advice.\n{example}", mode, with_proportion=flags.get("with_proportion", False))
    assert got.valid, (text, example, got)
    assert got.advisory_text == "Some advice."


def test_brief_instructions_are_short():
    # the tiny default model reads ~40 tokens in all: the instruction is one short line
    for mode, flags in FORMATS:
        text = instructions(mode, brief=True, **flags)
        assert "\n" not in text and len(text.split()) <= 24, text


def test_pairwise_choices_and_proportions():
    assert parse("ACTION: A", PAIRWISE) == contract.ParsedAction(True, "A", proportion=1.0)
    assert parse("b looks better\naction : b", PAIRWISE).action == "B"
    assert parse("ACTION : B", PAIRWISE).proportion == 0.0  # a word-level tokenizer decodes with spaces
    got = parse("A is cheaper.\nACTION: A 0.70", PAIRWISE, with_proportion=True)
    assert got.valid and got.proportion == pytest.approx(0.7) and got.advisory_text == "A is cheaper."
    assert parse("ACTION: A", PAIRWISE, with_proportion=True).invalid_reason == "proportion missing"
    assert not parse("ACTION: A 1.5", PAIRWISE, with_proportion=True).valid


@pytest.mark.parametrize(
    "completion,reason",
    [
        ("", "empty completion"),
        ("   \n  ", "empty completion"),
        ("I think A.", "last line is not 'ACTION: ...'"),
        ("ACTION: A\nbecause reasons", "last line is not 'ACTION: ...'"),
        ("ACTION: C", "pairwise action 'C' is not A or B"),
        ("ACTION: A or B", "pairwise action 'A or B' is not A or B"),
    ],
)
def test_bad_pairwise_output_is_invalid_with_a_reason(completion, reason):
    got = parse(completion, PAIRWISE)
    assert not got.valid and got.invalid_reason == reason


def test_elementwise_words_and_numbers():
    assert parse("ACTION: buy", ELEMENTWISE).position == 1.0
    assert parse("ACTION: SELL", ELEMENTWISE).position == -1.0
    assert parse("ACTION: hold", ELEMENTWISE).position == 0.0
    got = parse("Trend is up.\nACTION: 1.25", ELEMENTWISE)
    assert got.valid and got.position == 1.25 and got.action == "1.25"
    assert parse("ACTION: 2.5", ELEMENTWISE).invalid_reason == "position 2.5 outside [0, 2]"
    assert not parse("ACTION: maybe", ELEMENTWISE).valid


def test_unknown_mode_is_an_error_not_invalid_output():
    with pytest.raises(ValueError, match="listwise"):
        parse("ACTION: A", "listwise")
    with pytest.raises(ValueError, match="horizon_days"):
        instructions(PAIRWISE, 0)
