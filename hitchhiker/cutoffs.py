"""Knowledge cutoffs: the last date a model can know about, and whether an evaluation window lies before it.

A model that read about a window's market moves can pick the better stock by memory, so its score there says
nothing about what it can do on unseen dates. Two cutoffs bound what a candidate may know:

- its base model's **knowledge cutoff**: the training-data cutoff its model card states (`KNOWLEDGE_CUTOFFS`, each
  value quoted from the card; a model whose card states none is not listed, and its cutoff is unknown until a
  setting supplies one: the `override` of `knowledge_cutoff`, `--knowledge-cutoff` on the command line). The default
  small model (hitchhiker.default_model) is trained from scratch on synthetic prompts only
  (`states.example_prompts`: made-up numbers and headlines, random answers), so it knows no market at all;
- the **training cutoff** of a checkpoint's lineage: the last reward exit of any replay group that trained it or an
  ancestor (`lineage_exit`; `hitchhiker.evaluate.training_cutoff` and its walk-forward check read it too).

`contamination` turns both into one plain-words note for a window (None when clean); evaluation reports, the
look-ahead audit and the promotion gate call it. This module sits below `hitchhiker.evaluate`, which imports it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import duckdb

from hitchhiker import db
from hitchhiker.states import as_date

# Training-data cutoffs stated on model cards, by hub id. A month-only statement ("December 2023") is read as the
# month's last day: data from anywhere in that month may be in the model. Models whose cards state no cutoff (Qwen2.5,
# Mistral 7B, Gemma 2 among them) are deliberately absent: their cutoff is unknown, never guessed.
_LLAMA2 = "2022-09-30"  # Llama 2 card, Data Freshness: "The pretraining data has a cutoff of September 2022,
_LLAMA2_CHAT = "2023-07-31"  # but some tuning data is more recent, up to July 2023." (the chat models are tuned)
_LLAMA3_1 = "2023-12-31"  # Llama 3.1 card, table "Knowledge cutoff": December 2023 (8B, 70B, 405B)
_LLAMA3_2 = "2023-12-31"  # Llama 3.2 card, table "Knowledge cutoff": December 2023 (1B, 3B)
_GEMMA3 = "2024-08-31"  # Gemma 3 card (ai.google.dev), Training Dataset: "The knowledge cutoff date for the training
#                         data was August 2024." (the Hugging Face copy of the card omits the sentence)
_PHI3 = "2023-10-31"  # Phi-3 / Phi-3.5 mini cards, Status: "a static model trained on an offline dataset with cutoff
#                       date October 2023"
KNOWLEDGE_CUTOFFS: dict[str, str] = {
    **{f"meta-llama/Llama-2-{s}-hf": _LLAMA2 for s in ("7b", "13b", "70b")},
    **{f"meta-llama/Llama-2-{s}-chat-hf": _LLAMA2_CHAT for s in ("7b", "13b", "70b")},
    # Llama 3 card, Data Freshness: "The pretraining data has a cutoff of March 2023 for the 8B and December 2023 for
    # the 70B models respectively."
    "meta-llama/Meta-Llama-3-8B": "2023-03-31", "meta-llama/Meta-Llama-3-8B-Instruct": "2023-03-31",
    "meta-llama/Meta-Llama-3-70B": "2023-12-31", "meta-llama/Meta-Llama-3-70B-Instruct": "2023-12-31",
    **{f"meta-llama/{p}Llama-3.1-{s}": _LLAMA3_1 for p in ("", "Meta-")
       for s in ("8B", "8B-Instruct", "70B", "70B-Instruct", "405B", "405B-Instruct")},
    **{f"meta-llama/Llama-3.2-{s}": _LLAMA3_2 for s in ("1B", "1B-Instruct", "3B", "3B-Instruct")},
    **{f"google/gemma-3-{s}-{k}": _GEMMA3 for s in ("270m", "1b", "4b", "12b", "27b") for k in ("pt", "it")},
    "microsoft/Phi-3-mini-4k-instruct": _PHI3, "microsoft/Phi-3-mini-128k-instruct": _PHI3,
    "microsoft/Phi-3.5-mini-instruct": _PHI3,
}


BETA_HEAD_PREFIX = "beta-head"  # base_model of a Beta position head checkpoint (hitchhiker.beta.head.HEAD_VERSION)


@dataclass(frozen=True)
class KnowledgeCutoff:
    """What a base model can know: `cutoff` (None: unknown, or no market knowledge at all) and where that comes from."""

    model: str
    cutoff: date | None
    source: str  # 'setting', 'model card', 'no market data' or 'unknown'

    @property
    def knows_markets(self) -> bool:
        return self.source != "no market data"


def knowledge_cutoff(model: str | None, override: date | str | None = None) -> KnowledgeCutoff:
    """The knowledge cutoff of a base model (hub id, local path, None = the default small model).

    override: a setting for this model (a date), which wins over the table; needed for any model not listed."""
    from pathlib import Path

    from hitchhiker.default_model import DEFAULT_MODEL_NAME, _default_model_dir

    name = model or DEFAULT_MODEL_NAME
    if override is not None:
        return KnowledgeCutoff(name, as_date(override, "knowledge cutoff"), "setting")
    # the registry records it as 'hitchhiker-tiny@<builder version>'; flows may name its cached folder
    if name.startswith(DEFAULT_MODEL_NAME) or Path(name).expanduser().absolute() == _default_model_dir().absolute():
        return KnowledgeCutoff(name, None, "no market data")
    if name.startswith(BETA_HEAD_PREFIX):  # 'beta-head-v1:features[+<embedding model>]' (hitchhiker.beta.loop)
        # A position head starts from random weights and learns only from the store's features; what a pretrained
        # model may know can reach it only through headline embeddings, so it knows what its embedding model knows.
        _, _, embedding = name.partition("+")
        if not embedding:
            return KnowledgeCutoff(name, None, "no market data")
        inner = knowledge_cutoff(embedding, override)
        return KnowledgeCutoff(name, inner.cutoff, inner.source)
    stated = {k.lower(): v for k, v in KNOWLEDGE_CUTOFFS.items()}.get(name.lower())
    if stated is not None:
        return KnowledgeCutoff(name, date.fromisoformat(stated), "model card")
    return KnowledgeCutoff(name, None, "unknown")


def lineage_exit(con: duckdb.DuckDBPyConnection, checkpoint_id: str) -> tuple[date | None, date | None, str | None]:
    """(last decision date trained on, last reward exit date, problem) over a checkpoint's lineage; Nones if untrained.

    problem: why the lineage cannot be checked (groups missing from the replay, states unknown, exits not priced)."""
    from hitchhiker import rewards

    rewards.ensure_calendar(con)
    try:
        rows = con.execute(db.sql_text("evaluate/lineage_groups"), {"checkpoint_id": checkpoint_id}).fetchall()
    except duckdb.CatalogException as e:  # no replay view yet: nothing the lineage names can be found
        rows, missing_view = None, str(e).splitlines()[0]
    else:
        missing_view = None
    if rows is None:
        return None, None, f"its training groups cannot be read ({missing_view})"
    if not rows:
        return None, None, None
    last = max((d for _, d, _, _ in rows if d is not None), default=None)
    missing = [g for g, d, _, _ in rows if d is None]
    if missing:
        return last, None, (f"{len(missing)} of {len(rows)} training groups are not in the replay buffer (e.g. "
                            f"{missing[0]}), so its training dates cannot be checked")
    unknown = [g for g, _, known, _ in rows if not known]
    if unknown:
        return last, None, (f"the states of {len(unknown)} of {len(rows)} training groups are not in `states` (e.g. "
                            f"{unknown[0]}), so their reward windows cannot be checked")
    exits = [x for _, _, _, x in rows]
    try:
        ((stored,),) = con.execute(
            "SELECT max(w.exit_date) FROM rewards AS w JOIN replay AS r USING (rollout_id) "
            "WHERE r.group_id IN (SELECT unnest(?::VARCHAR[]))", [[g for g, _, _, _ in rows]]).fetchall()
    except duckdb.CatalogException:
        stored = None
    known = [x for x in [*exits, stored] if x is not None]
    if None in exits and stored is None:
        return last, None, (f"it trained on decisions up to {last} whose rewards exit after the last price in the "
                            "store: no later date can be evaluated yet")
    return last, max(known), None


def contamination(con: duckdb.DuckDBPyConnection, candidate: str, model: str | None, start: date | str,
                  end: date | str, override: date | str | None = None) -> str | None:
    """A plain-words note when the window [start, end] may be known to the candidate, None when it is clean.

    candidate: a checkpoint id, 'base' or 'base:<model>'. model: its base model (None: the checkpoint's recorded base,
    else the default small model). override: the base model's knowledge cutoff (a setting; see knowledge_cutoff).
    Contaminated: the window starts on or before the base model's knowledge cutoff, or that cutoff is unknown (a
    model that read the web may know any past window), or the window starts on or before the last reward exit of the
    checkpoint's lineage, or that lineage cannot be checked."""
    start, end = as_date(start, "start"), as_date(end, "end")
    is_checkpoint = not (candidate == "base" or candidate.startswith("base:"))
    if model is None and candidate.startswith("base:") and "@" not in candidate:
        model = candidate[5:]
    if model is None and is_checkpoint:
        rows = con.execute("SELECT base_model FROM checkpoints WHERE checkpoint_id = ?", [candidate]).fetchall()
        model = rows[0][0] if rows else None
    notes = []
    known = knowledge_cutoff(model, override)
    if known.source == "unknown":
        notes.append(f"the knowledge cutoff of {known.model} is unknown (its model card states none, and no "
                     "setting gives one): it may have read about any past window; set it (--knowledge-cutoff)")
    elif known.cutoff is not None and start <= known.cutoff:
        part = "the whole window" if end <= known.cutoff else f"{start} .. {known.cutoff} of the window"
        notes.append(f"{known.model} has a knowledge cutoff of {known.cutoff} ({known.source}): {part} lies before "
                     "it, so the model may have read how those days ended")
    if is_checkpoint:
        last, exit_date, problem = lineage_exit(con, candidate)
        if problem:
            notes.append(f"the training data of {candidate} cannot be checked: {problem}")
        elif exit_date is not None and start <= exit_date:
            notes.append(f"{candidate} was trained on decisions up to {last} whose rewards exit {exit_date}: the "
                         f"window starting {start} overlaps what it was trained on")
    return "; ".join(notes) if notes else None
