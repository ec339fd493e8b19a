"""Judges of rollouts (issue 21): a label per rollout, -1 rejected, 0 neutral, +1 accepted, with its reason.

Two judges:
- `grounding` (the default): the rule-based checker of hitchhiker.grounding on the rollout's advisory text against
  its own prompt and features. Any unsupported claim: -1. Every claim supported and at least one direction claim that
  argues for the action: +1, i.e. the stock the action puts first went up (pairwise: the chosen one; listwise: the
  first-ranked; elementwise: a buy) or the one it puts last went down (pairwise: the other; listwise: the
  last-ranked; elementwise: a sell). Otherwise 0: nothing checkable, only stock names or numbers, or true directions
  that do not argue for the action (a stock named alone is no reason: 'Stock A is.' earns nothing).
- `lm:<hub id or local path>`: a causal LM asked, after the prompt and the completion, whether the advice is
  supported by the data shown, answering one word; the first word of its greedy answer must be exactly `accepted`,
  `neutral` or `rejected` (case and trailing punctuation aside), else the label is 0 with the answer in the reason.

A judge's stored name is versioned like a reward spec: `grounding-v<N>` changes when the rules do; an LM judge's
name carries a hash of its weights and of the question asked. `judge_rollouts` judges each (rollout, judge) once:
a re-run judges only the rollouts without a row, in one transaction (nothing half-written).
Written by hand: no library labels advisory text against a state; the LM judge uses transformers' generate.
"""
from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd

from hitchhiker import contract, db, grounding

log = logging.getLogger(__name__)

GROUNDING = "grounding"
GROUNDING_VERSION = 1  # bump when the rule below or hitchhiker.grounding's checks change what a label is
ANY = "*"  # _action_ends: any subject (elementwise prompts show one stock)
LABELS = {"rejected": -1, "neutral": 0, "accepted": 1}
LM_QUESTION = ("Is the advice above supported by the data shown and consistent with its action? "
               "Answer with one word: accepted, neutral or rejected.\nAnswer:")


@dataclass(frozen=True)
class Judgement:
    label: int
    reason: str


def judge_name(judge: str) -> str:
    """The versioned name under which `judge`'s labels are stored ('grounding' -> 'grounding-v1'; 'lm:<model>' ->
    'lm:<model>@<weights sha256[:12]>-q<question sha256[:8]>')."""
    if judge == GROUNDING:
        return f"{GROUNDING}-v{GROUNDING_VERSION}"
    if judge.startswith("lm:") and len(judge) > 3:
        return f"{judge}@{_weights_sha(judge[3:])}-q{hashlib.sha256(LM_QUESTION.encode()).hexdigest()[:8]}"
    raise ValueError(f"judge {judge!r}: use 'grounding' or 'lm:<hub id or local model folder>'")


@functools.lru_cache(maxsize=8)
def _weights_sha(model: str) -> str:
    """sha256 of a local model's weight files (one read); a hub id's resolved snapshot's, read from the local cache."""
    path = Path(model)
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors"]))
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not files:
        raise ValueError(f"judge model {model!r}: no *.safetensors or *.bin weights in {path}")
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def grounding_judgement(completion: str, mode: str, prompt_text: str, features, universe, list_size: int | None) -> Judgement:
    """The rule-based grounding judge's label for one completion (the rule in the module docstring)."""
    parsed = contract.parse(completion or "", mode, list_size=list_size)
    checked = grounding.check(parsed.advisory_text, prompt_text, features, universe)
    bad = [c for c in checked.claims if not c.supported]
    if bad:
        return Judgement(-1, "unsupported: " + "; ".join(f"{c.kind} {c.text.strip()!r} ({c.reason})" for c in bad[:3]))
    directions = [c for c in checked.claims if c.kind == "direction"]
    if not directions:
        return Judgement(0, "no direction claimed" if checked.claims else "nothing checkable")
    ends = _action_ends(parsed, mode)
    if ends is None:
        return Judgement(0, f"claims supported, action invalid ({parsed.invalid_reason})")
    first, last = ends
    for c in directions:
        if (c.direction > 0 and first in (c.subject, ANY)) or (c.direction < 0 and last in (c.subject, ANY)):
            return Judgement(1, f"{len(checked.claims)} claim(s) supported; '{c.text}' argues for the action")
    return Judgement(0, f"{len(checked.claims)} claim(s) supported, none argues for the action")


def _action_ends(parsed, mode: str) -> tuple[str | None, str | None] | None:
    """(the stock the action puts first, the one it puts last): the subjects a direction claim argues for the action
    with, up for the first and down for the last; None for an invalid action."""
    if not parsed.valid:
        return None
    if mode == contract.LISTWISE:
        return parsed.ranking[0], parsed.ranking[-1]
    if mode == contract.PAIRWISE:
        return parsed.action, "B" if parsed.action == "A" else "A"
    # elementwise: one stock, whatever the prompt calls it
    return (ANY, None) if parsed.position > 0 else (None, ANY) if parsed.position < 0 else (None, None)


class LMJudge:
    """A causal LM answering one word per rollout (greedy, so a re-judging gives the same label)."""

    def __init__(self, model: str, max_prompt_tokens: int = 1024):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.max_prompt_tokens = max_prompt_tokens

    def __call__(self, prompt_text: str, completion: str) -> Judgement:
        import torch

        text = f"{prompt_text}\n\nAdvice:\n{completion}\n\n{LM_QUESTION}"
        ids = self.tokenizer(text, return_tensors="pt").input_ids[:, -self.max_prompt_tokens:]
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        answer = self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        return parse_lm_answer(answer)


def parse_lm_answer(answer: str) -> Judgement:
    """Strict: the first word, lower-cased, trailing punctuation dropped, must be one of the three labels."""
    words = answer.split()
    word = words[0].lower().rstrip(".,;:!") if words else ""
    if word in LABELS:
        return Judgement(LABELS[word], f"judge answered {word!r}")
    return Judgement(0, f"judge answer {answer.strip()[:40]!r} is not accepted/neutral/rejected: neutral")


def judge_rollouts(con: duckdb.DuckDBPyConnection, judge: str, replay_root=None) -> dict:
    """Judge every rollout of `replay` that has no judgement by `judge` yet and store the labels in one transaction.

    judge: 'grounding' or 'lm:<model>'. replay_root: as for rewards.compute_rewards (None: the `replay` relation as
    it is). Returns {judge (the stored, versioned name), pending, inserted, labels: {-1: n, 0: n, 1: n}}.
    """
    name = judge_name(judge)
    if replay_root is not None:
        from hitchhiker import replay

        replay.ensure_view(con, replay_root)
    todo = con.execute(db.sql_text("judge/pending"), [name]).df()
    lm = LMJudge(judge[3:]) if judge.startswith("lm:") and len(todo) else None
    universe = [t for (t,) in con.execute("SELECT DISTINCT ticker FROM prices").fetchall()]
    rows = []
    for r in todo.itertuples(index=False):
        prompt = grounding.prompt_text(r.messages)
        j = lm(prompt, r.completion or "") if lm else grounding_judgement(
            r.completion, r.mode, prompt, r.features, universe, len(r.tickers) if r.mode == contract.LISTWISE else None)
        rows.append((r.rollout_id, name, j.label, j.reason, r.decision_date))
    judged_at = datetime.now(timezone.utc)
    frame = pd.DataFrame(rows, columns=["rollout_id", "judge", "label", "reason", "decision_date"]).assign(
        judged_at=judged_at)
    with db.transaction(con):
        if len(frame):
            con.register("new_judgements", frame)
            try:
                con.execute("INSERT INTO judgements BY NAME SELECT rollout_id, judge, CAST(label AS TINYINT) AS label, "
                            "reason, CAST(decision_date AS DATE) AS decision_date, judged_at FROM new_judgements "
                            "ON CONFLICT DO NOTHING")
            finally:
                con.unregister("new_judgements")
    counts = frame["label"].value_counts().to_dict() if len(frame) else {}
    log.info("judge %s: %d rollout(s) judged", name, len(frame))
    return {"judge": name, "pending": len(todo), "inserted": len(frame),
            "labels": {k: int(counts.get(k, 0)) for k in (-1, 0, 1)}}
