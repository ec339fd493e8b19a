"""The build_states flow on a temp store: both modes, counts returned, a markdown artifact with one prompt per mode."""
from __future__ import annotations

import asyncio

from states_helpers import DAYS, MARKET, market_store


def test_build_states_flow_writes_states_and_a_prompt_artifact(prefect_harness, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.states import build_states
    from hitchhiker import db, states
    from hitchhiker.default_model import build_tokenizer

    build_tokenizer(states.example_prompts(300)).save_pretrained(tmp_path / "tok")
    path = tmp_path / "flow.duckdb"
    con = market_store(*MARKET)
    con.execute(f"ATTACH '{path}' AS f")
    con.execute("COPY FROM DATABASE memory TO f")
    con.close()

    out = build_states(start=DAYS[18].isoformat(), end=DAYS[20].isoformat(), tickers=["AAA", "BBB", "CCC"],
                       db_path=str(path), tokenizer=str(tmp_path / "tok"))
    assert [r["mode"] for r in out] == ["pairwise", "elementwise"]
    assert [(r["trading_days"], r["states"], r["new"]) for r in out] == [(3, 9, 9), (3, 9, 9)]
    again = build_states(decision_date=DAYS[20].isoformat(), mode="pairwise", tickers=["AAA", "BBB", "CCC"],
                         db_path=str(path), tokenizer=str(tmp_path / "tok"))
    assert again == [{"mode": "pairwise", "trading_days": 1, "states": 3, "new": 0}]  # idempotent
    con = db.connect(path, read_only=True)
    assert con.execute("SELECT mode, count(*) FROM states GROUP BY mode ORDER BY mode").fetchall() == [
        ("elementwise", 9), ("pairwise", 9)]
    con.close()

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["states-prompts"])))

    markdown = [a.data for a in asyncio.run(artifacts())]
    assert markdown and any("## pairwise" in m and "## elementwise" in m and "Stock B trend" not in m and
                            "Stock A" in m and "ACTION: A" in m and "ACTION: buy" in m for m in markdown)
