"""The generate_rollouts flow on a store of real states: groups written, progress and summary artifacts, and a
re-run that writes nothing."""
from __future__ import annotations

import asyncio

import duckdb

TICKERS = ["A", "AAP", "ABBV", "ABC"]


def test_generate_rollouts_flow_writes_groups_and_artifacts_and_reruns_idempotently(prefect_harness, shared_data, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from flows.rollouts import generate_rollouts
    from hitchhiker import db, prices, states
    from hitchhiker.policy import load_tokenizer

    path = tmp_path / "flow.duckdb"
    con = db.connect(path)
    prices.ingest_csv(con, [shared_data / "prices" / "sp500_5yr" / f"{t}_data.csv" for t in TICKERS])
    days = states.trading_days(con, "2016-03-01", "2016-03-02")
    ids = states.build_states(con, states.StatesConfig(mode="pairwise", style="trend"), days, TICKERS,
                              tokenizer=load_tokenizer())
    con.close()
    assert len(ids) == 12

    out = generate_rollouts(start="2016-03-01", end="2016-03-02", db=str(path), group_size=2,
                            replay_root=str(tmp_path / "replay"))
    assert out["groups_written"] == 12 and out["groups_skipped"] == 0 and out["states_left"] == 0
    assert out["policy_version"].startswith("base:") and 0 <= out["valid_rate"] <= 1 and out["tokens_per_s"] > 0
    con = duckdb.connect(str(path))
    assert con.execute("SELECT count(*), count(DISTINCT group_id) FROM replay").fetchall() == [(24, 12)]
    con.close()

    again = generate_rollouts(start="2016-03-01", end="2016-03-02", db=str(path), group_size=2,
                              replay_root=str(tmp_path / "replay"))
    assert (again["groups_written"], again["groups_skipped"]) == (0, 12)
    con = duckdb.connect(str(path))
    assert con.execute("SELECT count(*) FROM replay").fetchall() == [(24,)]
    con.close()

    async def artifacts():
        async with get_client() as client:
            tables = await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["rollouts-2016-03-01-2016-03-02"])))
            runs = {a.flow_run_id for a in tables}
            progress = await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=list(runs))))
            return tables, [a for a in progress if a.type == "progress"]

    tables, progress = asyncio.run(artifacts())
    assert len(tables) == 2 and len(progress) == 2  # one of each per run
    assert sorted(a.data for a in progress) == [100.0, 100.0]
    metrics = [{r["metric"]: r["value"] for r in _table(a.data)} for a in tables]
    written = sorted(m["groups written"] for m in metrics)
    assert written == [0, 12]
    first = next(m for m in metrics if m["groups written"] == 12)
    assert 0 <= first["valid-format rate"] <= 1 and first["completion tokens/s"] > 0
    shares = [v for k, v in first.items() if k.startswith("action ")]
    assert shares and abs(sum(shares) - 1.0) < 1e-3  # the action distribution (invalid included) sums to one


def _table(data) -> list[dict]:
    import json

    return json.loads(data) if isinstance(data, str) else data
