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
    with pytest.raises(ValueError, match="rankwise"):
        parse("ACTION: A", "rankwise")
    with pytest.raises(ValueError, match="list_size"):  # listwise needs the basket's size: a caller's error
        parse("ACTION: A>B>C", "listwise")
    with pytest.raises(ValueError, match="horizon_days"):
        instructions(PAIRWISE, 0)


@pytest.mark.parametrize("text,k,ranking", [
    ("Energy leads.\nACTION: C > A > D > B", 4, "CAD B"),
    ("ACTION: C>A>D>B", 4, "CADB"),
    ("action : b >a> c", 3, "BAC"),
    ("ACTION: H>G>F>E>D>C>B>A", 8, "HGFEDCBA"),
])
def test_listwise_ranking_best_first_each_letter_once(text, k, ranking):
    ranking = ranking.replace(" ", "")
    got = parse(text, "listwise", list_size=k)
    assert got.valid and got.ranking == tuple(ranking) and got.action == ">".join(ranking)
    assert got.proportion is None and got.position is None


@pytest.mark.parametrize("body,k,reason", [
    ("C>A>A>B", 4, "duplicate letter A"),
    ("C>A>D", 4, "missing letter B"),
    ("C>A>E>B", 4, "unknown letter E"),
    ("D>A>B", 3, "unknown letter D"),
    ("C>A>>B", 4, "is not letters separated by '>'"),
    ("CADB", 4, "is not letters separated by '>'"),
    ("C A D B", 4, "is not letters separated by '>'"),
    ("", 4, "is not letters separated by '>'"),
])
def test_listwise_invalid_rankings_say_why(body, k, reason):
    got = parse(f"advice\nACTION: {body}", "listwise", list_size=k)
    assert not got.valid and got.ranking is None and reason in got.invalid_reason
    assert got.advisory_text == "advice"


def test_listwise_instructions_are_parsed_back():
    for k in range(3, 9):
        for brief in (False, True):
            text = instructions("listwise", list_size=k, brief=brief)
            example = text.split("ACTION: ", 1)[1].split("  (")[0].split(" (")[0]
            assert parse(f"ACTION: {example}", "listwise", list_size=k).valid
    for k in (2, 9, None):
        with pytest.raises(ValueError, match="list_size"):
            instructions("listwise", list_size=k)
