"""The action contract: what the prompt asks the model to write, and the one parser that reads it back.

States (the prompt's instructions) and rollouts (the parser) both use this module, so the format is
defined in one place. A completion is free advisory text followed by a final line:

    pairwise:     ACTION: A            (or B; with proportions: "ACTION: A 0.70", the fraction put in A)
    elementwise:  ACTION: buy          (or hold / sell; with numeric positions: "ACTION: 1.25", in [0, 2])
    listwise:     ACTION: C > A > D > B  (the K letters of the basket, best first, each exactly once)

The parser is lenient about whitespace and case (a word-level tokenizer decodes "ACTION : A"), strict
about everything else: the action line must be the last non-empty line and hold nothing more.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

PAIRWISE = "pairwise"
ELEMENTWISE = "elementwise"
LISTWISE = "listwise"
ALL_MODES = (PAIRWISE, ELEMENTWISE, LISTWISE)  # also the modes the default small model is warmed up on
LETTERS = "ABCDEFGH"  # prompt letters; a listwise basket holds MIN_LIST_SIZE..MAX_LIST_SIZE stocks
MIN_LIST_SIZE, MAX_LIST_SIZE = 3, 8
POSITIONS = {"buy": 1.0, "hold": 0.0, "sell": -1.0}

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_ACTION_LINE = re.compile(r"^\s*ACTION\s*:\s*(?P<body>.*?)\s*$", re.IGNORECASE)
_PAIR_BODY = re.compile(rf"^(?P<choice>[AB])(?:\s+(?P<prop>{_NUMBER}))?$", re.IGNORECASE)
_NUMBER_BODY = re.compile(rf"^{_NUMBER}$")


@dataclass(frozen=True)
class ParsedAction:
    """What a completion decided. For invalid output, `valid` is False and `invalid_reason` says why."""

    valid: bool
    action: str | None = None  # 'A'/'B' (pairwise), 'buy'/'hold'/'sell'/'<number>' (elementwise), 'C>A>D>B' (listwise)
    proportion: float | None = None  # pairwise: fraction of $1 in A, in [0, 1]
    position: float | None = None  # elementwise: -1/0/1 or a number in [0, 2]
    advisory_text: str = ""
    invalid_reason: str | None = None
    ranking: tuple[str, ...] | None = None  # listwise: the letters, best first



def instructions(
    mode: str, horizon_days: int = 1, with_proportion: bool = False, numeric_position: bool = False, brief: bool = False,
    list_size: int | None = None,
) -> str:
    """The answer format the prompt asks for, in words the parser below accepts.

    brief: one short line for the minimal 'trend' rendering (a tiny model reads ~40 tokens in all).
    """
    _check_mode(mode)
    if horizon_days < 1:
        raise ValueError(f"horizon_days must be >= 1, got {horizon_days}")
    days = "trading day" if horizon_days == 1 else f"{horizon_days} trading days"
    if mode == LISTWISE:
        letters = LETTERS[:check_list_size(list_size)]
        order = " > ".join(letters)
        if brief:
            return f"Rank the stocks by return over the next {days}, best first. End with ACTION: {order} (in your order)"
        return (
            f"Rank the {len(letters)} stocks {', '.join(letters)} by their return over the next {days}, best first. "
            f"Write at most two short sentences of advice first, then end with exactly one final line:\n"
            f"ACTION: {order}  (your order, best first, each letter exactly once)"
        )
    if brief:
        if mode == PAIRWISE:
            ask = f"Which stock will do better over the next {days}?"
            end = "ACTION: A 0.70 (A or B, then the fraction in A)" if with_proportion else "ACTION: A or ACTION: B"
        else:
            ask = f"What position in the stock for the next {days}?"
            end = "ACTION: 1.25 (a position from 0 to 2)" if numeric_position else "ACTION: buy or ACTION: hold or ACTION: sell"
        return f"{ask} End with {end}"
    if mode == PAIRWISE:
        task = f"Which stock, A or B, will have the higher return over the next {days}?"
        last = "ACTION: A 0.70  (A or B, then the fraction of $1 to put in A, between 0 and 1)" if with_proportion else "ACTION: A  (or ACTION: B)"
    else:
        task = f"What position should be held in the stock over the next {days}?"
        last = "ACTION: 1.25  (a position between 0 and 2; 1 is fully invested)" if numeric_position else "ACTION: buy  (or hold, or sell)"
    return (
        f"{task} Write at most two short sentences of advice first, "
        f"then end with exactly one final line:\n{last}"
    )


def parse(completion: str, mode: str, with_proportion: bool = False, list_size: int | None = None) -> ParsedAction:
    """Parse a completion into an action; never raises on model output, returns valid=False with a reason.

    Elementwise accepts both buy/hold/sell and a number in [0, 2], whichever the prompt asked for. Listwise needs
    the basket's `list_size` (the caller's; a bad one raises ValueError).
    """
    _check_mode(mode)
    if mode == LISTWISE:
        check_list_size(list_size)
    lines = [ln for ln in (completion or "").replace("\r", "\n").split("\n") if ln.strip()]
    if not lines:
        return ParsedAction(False, invalid_reason="empty completion")
    m = _ACTION_LINE.match(lines[-1])
    if not m:
        return ParsedAction(False, advisory_text=_advisory(lines), invalid_reason="last line is not 'ACTION: ...'")
    advisory = _advisory(lines[:-1])
    body = m.group("body")
    if mode == LISTWISE:
        return _parse_ranking(body, list_size, advisory)
    if mode == PAIRWISE:
        pm = _PAIR_BODY.match(body)
        if not pm:
            return ParsedAction(False, advisory_text=advisory, invalid_reason=f"pairwise action {body!r} is not A or B")
        choice = pm.group("choice").upper()
        prop = pm.group("prop")
        if prop is None:
            if with_proportion:
                return ParsedAction(False, choice, advisory_text=advisory, invalid_reason="proportion missing")
            return ParsedAction(True, choice, proportion=1.0 if choice == "A" else 0.0, advisory_text=advisory)
        w = float(prop)
        if not 0.0 <= w <= 1.0:
            return ParsedAction(False, choice, advisory_text=advisory, invalid_reason=f"proportion {w} outside [0, 1]")
        return ParsedAction(True, choice, proportion=w, advisory_text=advisory)
    word = body.lower()
    if word in POSITIONS:
        return ParsedAction(True, word, position=POSITIONS[word], advisory_text=advisory)
    if _NUMBER_BODY.match(body):
        p = float(body)
        if not 0.0 <= p <= 2.0:
            return ParsedAction(False, body, advisory_text=advisory, invalid_reason=f"position {p} outside [0, 2]")
        return ParsedAction(True, f"{p:g}", position=p, advisory_text=advisory)
    return ParsedAction(False, advisory_text=advisory, invalid_reason=f"elementwise action {body!r} is not buy/hold/sell or a number")


def _parse_ranking(body: str, k: int, advisory: str) -> ParsedAction:
    parts = [p.strip().upper() for p in body.split(">")]
    bad = [p for p in parts if len(p) != 1 or not p.isalpha()]
    if bad:
        return ParsedAction(False, advisory_text=advisory,
                            invalid_reason=f"listwise action {body!r} is not letters separated by '>'")
    allowed = LETTERS[:k]
    unknown = sorted({p for p in parts if p not in allowed})
    if unknown:
        return ParsedAction(False, advisory_text=advisory,
                            invalid_reason=f"unknown letter {', '.join(unknown)} (the basket is {'/'.join(allowed)})")
    dup = sorted({p for p in parts if parts.count(p) > 1})
    if dup:
        return ParsedAction(False, advisory_text=advisory, invalid_reason=f"duplicate letter {', '.join(dup)}")
    missing = [x for x in allowed if x not in parts]
    if missing:
        return ParsedAction(False, advisory_text=advisory, invalid_reason=f"missing letter {', '.join(missing)}")
    return ParsedAction(True, ">".join(parts), advisory_text=advisory, ranking=tuple(parts))


def check_list_size(list_size) -> int:
    """A basket size from MIN_LIST_SIZE to MAX_LIST_SIZE, or ValueError naming it."""
    if isinstance(list_size, bool) or not isinstance(list_size, int) or not MIN_LIST_SIZE <= list_size <= MAX_LIST_SIZE:
        raise ValueError(f"list_size must be an integer from {MIN_LIST_SIZE} to {MAX_LIST_SIZE}, got {list_size!r}")
    return list_size


def _advisory(lines: list[str]) -> str:
    return "\n".join(ln.strip() for ln in lines).strip()


def _check_mode(mode: str) -> None:
    if mode not in ALL_MODES:
        raise ValueError(f"mode {mode!r} is not one of {ALL_MODES}")
