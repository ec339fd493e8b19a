"""Flow `build_states`: point-in-time states for a decision date or a date range, one task per mode.

A thin wrapper over hitchhiker.states. The tokenizer (possibly the default small model, built on first use) is
loaded before the store slot is taken, so the DuckDB file is held only while states are computed and written.
The run's markdown artifact shows one rendered prompt per mode, exactly as the policy will read it.
"""
from __future__ import annotations

import json

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.slots import store_slot

MODES = ("pairwise", "elementwise")


@task
def build_mode(db_path: str | None, config: dict, first: str, last: str, tickers: list[str] | None) -> dict:
    """Build one mode's states for the trading days in [first, last]; counts and one example prompt."""
    from hitchhiker import db, states
    from hitchhiker.policy import load_tokenizer

    cfg = states.StatesConfig(**config)
    tok = load_tokenizer(cfg.tokenizer)
    with store_slot():
        con = db.connect(db_path)
        try:
            days = states.trading_days(con, first, last)
            before = con.execute("SELECT count(*) FROM states").fetchone()[0]
            ids = states.build_states(con, cfg, days, tickers, tokenizer=tok)
            new = con.execute("SELECT count(*) FROM states").fetchone()[0] - before
            example = con.execute(
                "SELECT state_id, decision_date, pair, messages, prompt_tokens FROM states WHERE state_id = ?", [ids[0]]
            ).fetchone() if ids else None
        finally:
            con.close()
    out = {"mode": cfg.mode, "trading_days": len(days), "states": len(ids), "new": new, "example": None}
    if example:
        state_id, day, pair, messages, tokens = example
        out["example"] = {"state_id": state_id, "decision_date": str(day), "pair": pair,
                          "messages": json.loads(messages), "prompt_tokens": tokens}
    return out


@flow(name="build_states")
def build_states(
    decision_date: str | None = None,
    start: str | None = None,
    end: str | None = None,
    mode: str = "both",
    tickers: list[str] | None = None,
    style: str = "full",
    db_path: str | None = None,
    tokenizer: str | None = None,
    max_pairs_per_date: int = 20,
    max_prompt_tokens: int = 1024,
) -> list[dict]:
    """States of `decision_date`, or of every trading day in [start, end]; mode pairwise, elementwise or both."""
    if (decision_date is None) == (start is None):
        raise ValueError("give either decision_date or start (with end)")
    first, last = (decision_date, decision_date) if decision_date else (start, end or start)
    modes = MODES if mode == "both" else (mode,)
    if any(m not in MODES for m in modes):
        raise ValueError(f"mode {mode!r} is not pairwise, elementwise or both")
    results = []
    for m in modes:
        config = {"mode": m, "style": style, "tokenizer": tokenizer, "max_pairs_per_date": max_pairs_per_date,
                  "max_prompt_tokens": max_prompt_tokens}
        results.append(build_mode(db_path, config, first, last, tickers))
    logger = get_run_logger()
    for r in results:
        logger.info("%s: %d states (%d new) over %d trading days", r["mode"], r["states"], r["new"], r["trading_days"])
    create_markdown_artifact(key="states-prompts", markdown=_markdown(first, last, results),
                             description="one rendered prompt per mode")
    return [{k: v for k, v in r.items() if k != "example"} for r in results]


def _markdown(first: str, last: str, results: list[dict]) -> str:
    lines = [f"# States {first} .. {last}", ""]
    for r in results:
        lines.append(f"## {r['mode']}: {r['states']} states ({r['new']} new) over {r['trading_days']} trading days")
        ex = r["example"]
        if ex is None:
            lines += ["", "_no state: no trading day, or no ticker with enough history_", ""]
            continue
        lines += ["", f"`{ex['state_id'][:16]}` {ex['decision_date']} {ex['pair']} ({ex['prompt_tokens']} prompt tokens)", ""]
        for message in ex["messages"]:
            lines += [f"**{message['role']}**", "", "```text", message["content"], "```", ""]
    return "\n".join(lines)
