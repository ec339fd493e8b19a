"""Grounding of advisory text in the state it was written for, and the extrapolation bias of decisions.

A claim is something checkable in the advisory text: a number (a percentage or a $ price), a direction said of
a stock ("Stock A rose", "B fell 2.3%"), or an entity ("Stock C", a real ticker). Each is compared with what the
prompt itself showed (its text and the state's `features` JSON, keyed by placeholder "A"/"B"); one that the
prompt does not support counts as unsupported. The unsupported-claim rate is the seed's "hallucination",
measured. The checks are lenient on purpose (a direction is supported if any return shown for that stock has
that sign; a number if it matches a shown number at the claim's own precision), so a high rate is a real signal.

Extrapolation bias (Chen et al., SSRN 4941906): how much a decision follows the most recent return.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

UP_WORDS = {"rose", "rise", "rises", "rising", "up", "gained", "gain", "gains", "climbed", "climbs", "increased",
            "increase", "rallied", "rally", "jumped", "advanced", "higher", "surged", "uptrend", "bullish"}
DOWN_WORDS = {"fell", "fall", "falls", "falling", "down", "dropped", "drop", "drops", "declined", "decline",
              "declines", "lost", "loses", "slid", "slipped", "plunged", "sank", "lower", "decreased", "downtrend",
              "bearish", "tumbled"}
# Upper-case words that are not tickers even when a universe contains them as symbols ("A" is Agilent).
NOT_TICKERS = {"A", "B", "I", "ACTION", "UP", "DOWN", "FLAT", "USD", "US", "CEO", "EPS", "ETF", "AI", "IPO", "Q"}

_SENTENCE_SPLIT = re.compile(r"(?<!\d)[.!?;](?!\d)|\n")
_CLAUSE_SPLIT = re.compile(r",(?!\d{3}\b)|\b(?:while|but|and|whereas|although|though)\b", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\bstock\s+([A-Z])\b", re.IGNORECASE)
_BARE_LETTER = re.compile(r"\b([AB])\b")
_PERCENT = re.compile(r"([+-]?\d+(?:\.\d+)?)\s*(?:%|percent\b)", re.IGNORECASE)
_PRICE = re.compile(r"\$\s?(\d+(?:,\d{3})*(?:\.\d+)?)")
_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
_WORD = re.compile(r"[A-Za-z]+")
_TICKER_WORD = re.compile(r"\b[A-Z]{1,5}\b")


@dataclass
class Claim:
    kind: str  # 'number' | 'direction' | 'entity'
    text: str  # the words of the advisory text the claim came from
    subject: str | None  # placeholder letter ('A'/'B') or None when the sentence names no stock
    supported: bool
    reason: str = ""
    direction: int = 0  # a direction claim's sign: +1 the stock went up, -1 down (0 for the other kinds)


@dataclass
class Grounding:
    claims: list[Claim] = field(default_factory=list)

    @property
    def n_claims(self) -> int:
        return len(self.claims)

    @property
    def n_unsupported(self) -> int:
        return sum(not c.supported for c in self.claims)


@dataclass
class _Facts:
    numbers: list[float]  # every number shown anywhere in the prompt or features
    unsigned: list[float]  # numbers the prompt text shows without a sign ("Shares Fall 18%"): any direction fits
    by_subject: dict[str, list[float]]  # numbers shown for one stock
    signs: dict[str, set[int]]  # directions shown for one stock (+1 / -1) from returns and trend words
    subjects: set[str]
    text_upper_words: set[str]


def check(advisory_text: str, prompt_text: str, features: dict | str | None = None,
          universe: Iterable[str] = ()) -> Grounding:
    """Extract the claims of `advisory_text` and judge each against the prompt and its features.

    universe: real ticker symbols; any of them named in the advice but absent from the prompt is unsupported
    (an anonymized prompt shows none, so naming one is a hallucination or a leak of pretraining memory).
    """
    facts = _facts(prompt_text, features)
    universe = {u.upper() for u in universe} - NOT_TICKERS
    out = Grounding()
    single = next(iter(facts.subjects)) if len(facts.subjects) == 1 else None
    for sentence in _SENTENCE_SPLIT.split(advisory_text or ""):
        if not sentence.strip():
            continue
        out.claims.extend(_entity_claims(sentence, facts, universe))
        # A clause without a stock of its own ("..., but fell 2%") speaks of the last one named.
        subject = single
        for clause in _CLAUSE_SPLIT.split(sentence):
            subject = _subject(clause, facts) or subject
            numbers = _number_claims(clause, subject, facts)
            out.claims.extend(numbers)
            out.claims.extend(_direction_claims(clause, subject, facts, has_number=bool(numbers)))
    return out


def prompt_text(messages_json: str) -> str:
    """A state's chat messages (its `messages` JSON) as the one text the checks read."""
    return "\n".join(m.get("content", "") for m in json.loads(messages_json))


def unsupported_rate(groundings: Sequence[Grounding]) -> float:
    """Unsupported claims / all claims over many advisory texts (NaN when nobody claimed anything)."""
    total = sum(g.n_claims for g in groundings)
    return sum(g.n_unsupported for g in groundings) / total if total else float("nan")


def extrapolation_bias(exposure: Sequence[float], last_return: Sequence[float]) -> dict:
    """How much decisions follow the most recent return.

    exposure: pairwise +1 (chose A) / -1 (chose B), or an elementwise position; last_return: pairwise the most
    recent daily return of A minus that of B, elementwise the stock's own. Returns agreement_rate (sign of the
    decision equals sign of the last return, over decisions where both are non-zero: 0.5 = none, 1 = pure
    extrapolation, 0 = pure reversal), beta (OLS slope of exposure on last return, per unit of return) and n.
    """
    e, r = np.asarray(exposure, float), np.asarray(last_return, float)
    keep = np.isfinite(e) & np.isfinite(r)
    e, r = e[keep], r[keep]
    nz = (np.sign(e) != 0) & (np.sign(r) != 0)
    agreement = float(np.mean(np.sign(e[nz]) == np.sign(r[nz]))) if nz.any() else float("nan")
    beta = float(np.cov(e, r, ddof=1)[0, 1] / np.var(r, ddof=1)) if len(r) > 1 and np.var(r) > 0 else float("nan")
    return {"agreement_rate": agreement, "beta": beta, "n": int(nz.sum())}


# --- facts of the prompt ---------------------------------------------------------------------------------------

def _facts(prompt_text: str, features: dict | str | None) -> _Facts:
    if isinstance(features, str):
        features = json.loads(features)
    features = features or {}
    subjects = {m.upper() for m in _PLACEHOLDER.findall(prompt_text)} | {
        str(k).upper() for k in features if len(str(k)) == 1}
    numbers = [float(x) for x in _NUMBER.findall(prompt_text)]
    unsigned = [float(x) for x in _NUMBER.findall(prompt_text) if x[0] not in "+-"]
    by_subject: dict[str, list[float]] = {s: [] for s in subjects}
    signs: dict[str, set[int]] = {s: set() for s in subjects}
    for key, value in features.items():
        s = str(key).upper()
        for name, x in _flatten(value, str(key)):
            if isinstance(x, str):
                word = x.strip().lower()
                if word in UP_WORDS:
                    signs.setdefault(s, set()).add(1)
                elif word in DOWN_WORDS:
                    signs.setdefault(s, set()).add(-1)
                continue
            numbers.append(x)
            by_subject.setdefault(s, []).append(x)
            lowered = name.lower()  # price moves only: a volume change, or a trend's length in days, has no direction
            if (any(t in lowered for t in ("ret", "change", "trend", "momentum")) and "vol" not in lowered
                    and not lowered.endswith("days") and x != 0):
                signs.setdefault(s, set()).add(1 if x > 0 else -1)
    # Text about exactly one stock gives that stock's numbers and trend words too: a sentence that names only it
    # ("Stock A trend: UP."), or the lines under a header line "Stock A" up to the next blank line (full prompts).
    for line in _SENTENCE_SPLIT.split(prompt_text) + _sections(prompt_text):
        named = {m.upper() for m in _PLACEHOLDER.findall(line)}
        if len(named) != 1:
            continue
        s = named.pop()
        vals = [float(x) for x in _NUMBER.findall(_PLACEHOLDER.sub(" ", line))]
        by_subject.setdefault(s, []).extend(vals)
        words = {w.lower() for w in _WORD.findall(line)}
        if words & UP_WORDS:
            signs.setdefault(s, set()).add(1)
        if words & DOWN_WORDS:
            signs.setdefault(s, set()).add(-1)
    return _Facts(numbers, unsigned, by_subject, signs, subjects, set(_TICKER_WORD.findall(prompt_text)))


_HEADER = re.compile(r"^\s*stock\s+[A-Z]\s*:?\s*$", re.IGNORECASE)


def _sections(prompt_text: str) -> list[str]:
    """Blocks that start with a header line naming one stock, up to the next blank line or header."""
    blocks, current = [], None
    for line in prompt_text.split("\n"):
        if _HEADER.match(line):
            current = [line]
            blocks.append(current)
        elif not line.strip():
            current = None
        elif current is not None:
            current.append(line)
    return ["\n".join(b) for b in blocks]


def _flatten(value, name: str):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, f"{name}.{k}")
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _flatten(v, name)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, (int, float)):
        if math.isfinite(value):
            yield name, float(value)
    elif isinstance(value, str):
        yield name, value


# --- claims ----------------------------------------------------------------------------------------------------

def _subject(sentence: str, facts: _Facts) -> str | None:
    named = [m.upper() for m in _PLACEHOLDER.findall(sentence)]
    if not named:
        named = [m for m in _BARE_LETTER.findall(sentence) if m in facts.subjects]
    known = [s for s in named if s in facts.subjects]
    return known[0] if known else None


def _entity_claims(sentence: str, facts: _Facts, universe: set[str]) -> list[Claim]:
    claims = []
    for m in _PLACEHOLDER.finditer(sentence):
        s = m.group(1).upper()
        ok = s in facts.subjects
        claims.append(Claim("entity", m.group(0), s, ok, "" if ok else f"the prompt shows no Stock {s}"))
    for word in _TICKER_WORD.findall(sentence):
        if word in universe and word not in facts.text_upper_words:
            claims.append(Claim("entity", word, None, False, f"ticker {word} is not in the prompt"))
    return claims


def _matches(claim: float, decimals: int, candidates: Iterable[float]) -> list[float]:
    """Shown numbers equal to the claim at the claim's own precision (magnitudes: the sign is a direction)."""
    tol = 0.5 * 10.0 ** (-decimals) + 1e-9
    return [c for c in candidates if abs(abs(c) - abs(claim)) <= tol]


def _number_claims(sentence: str, subject: str | None, facts: _Facts) -> list[Claim]:
    claims = []
    direction = _direction_of(sentence)
    for rx, kind in ((_PERCENT, "percent"), (_PRICE, "price")):
        for m in rx.finditer(sentence):
            raw = m.group(1).replace(",", "")
            value = float(raw)
            decimals = len(raw.split(".")[1]) if "." in raw else 0
            pool = facts.by_subject.get(subject) if subject else None
            hits = _matches(value, decimals, pool if pool else facts.numbers)
            if not hits:
                claims.append(Claim("number", m.group(0), subject, False, f"{kind} {raw} is not shown in the prompt"))
                continue
            sign = direction or (-1 if raw.startswith("-") else 0)
            signed_ok = any(h == 0 or (h > 0) == (sign > 0) for h in hits) or _matches(value, decimals, facts.unsigned)
            if kind == "percent" and sign and not signed_ok:
                claims.append(Claim("number", m.group(0), subject, False,
                                    f"{raw}% is shown with the opposite sign"))
                continue
            claims.append(Claim("number", m.group(0), subject, True))
    return claims


def _direction_of(sentence: str) -> int:
    words = {w.lower() for w in _WORD.findall(sentence)}
    up, down = bool(words & UP_WORDS), bool(words & DOWN_WORDS)
    return 1 if up and not down else -1 if down and not up else 0


def _direction_claims(sentence: str, subject: str | None, facts: _Facts, has_number: bool) -> list[Claim]:
    direction = _direction_of(sentence)
    if not direction or has_number or subject is None:
        return []  # a direction tied to a number was judged with the number; one about no stock is not checkable
    word = "up" if direction > 0 else "down"
    ok = direction in facts.signs.get(subject, set())
    return [Claim("direction", f"{subject} {word}", subject, ok,
                  "" if ok else f"nothing shown for Stock {subject} went {word}", direction)]
