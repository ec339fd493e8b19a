"""The compute_rewards flow and `hitchhiker rewards compute` over a real Parquet replay buffer beside the store."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

from hitchhiker import db, replay, rewards
from price_helpers import insert_sp500_prices

TICKERS = ["BMY", "ICE"]
DAYS = [date(2015, 12, 22), date(2015, 12, 23), date(2015, 12, 24), date(2015, 12, 31)]


def _store(path: Path, shared: Path, last_price_day: date) -> None:
    """Prices up to last_price_day, one pairwise and one elementwise state per day, groups of 4 as Parquet files."""
    con = db.connect(path)
    insert_sp500_prices(con, shared, TICKERS, "2015-11-01", last_price_day)
    root = replay.default_root(path)
    for day in DAYS:
        for mode, tickers in (("pairwise", TICKERS), ("elementwise", TICKERS[:1])):
            state_id = f"s-{mode}-{day}"
            pair = "-".join(sorted(tickers))
            con.execute(
                "INSERT INTO states (state_id, decision_date, decision_time, mode, style, tickers, pair, action_format, "
                "horizon_days, history_days, messages, features, anonymized, prompt_tokens, builder_version, created_at) "
                "VALUES (?, ?, now(), ?, 'trend', ?, ?, 'choice', 1, 20, '[]', '{}', true, 1, 'test', now())",
                [state_id, day, mode, tickers, pair])
            group_id = f"g-{state_id}"
            actions = ["A", "B", "A", None] if mode == "pairwise" else ["buy", "sell", "hold", None]
            rows = [{"rollout_id": f"{group_id}-{k}", "state_id": state_id, "group_id": group_id, "mode": mode,
                     "policy_version": "base:test", "sample_index": k, "temperature": 0.7, "top_p": 1.0,
                     "prompt_ids": [1], "completion": f"ACTION: {a}", "completion_ids": [2], "token_logprobs": [-0.1],
                     "logprob_sum": -0.1, "action": a, "valid": a is not None,
                     "proportion": (1.0 if a == "A" else 0.0) if mode == "pairwise" and a else None,
                     "position": {"buy": 1.0, "sell": -1.0, "hold": 0.0}.get(a) if mode == "elementwise" else None,
                     "advisory_text": "", "invalid_reason": None if a else "empty completion",
                     "created_at": datetime.now(timezone.utc)} for k, a in enumerate(actions)]
            replay.write_group(root, day, pair, group_id, rows)
    con.close()


def test_compute_rewards_flow_and_artifact(prefect_harness, shared_data, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.rewards import compute_rewards

    path = tmp_path / "flow.duckdb"
    _store(path, shared_data, last_price_day=date(2015, 12, 30))
    first = compute_rewards(db=str(path))
    # 22nd, 23rd and 24th have matured (exit 23rd, 24th, 28th); the 31st waits for 2016-01-04.
    assert (first["inserted"], first["waiting"]) == (24, 8)
    again = compute_rewards(db=str(path))
    assert (again["pending"], again["inserted"], again["total"]) == (8, 0, 24)

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[first["artifact_key"]])))

    tables = [a.data for a in asyncio.run(artifacts())]
    assert tables and all(d in tables[0] for d in ("2015-12-22", "2015-12-24", "invalid_rate", "mean_reward_usd"))
    con = db.connect(path, read_only=True)
    by_date = rewards.summary_by_date(con, first["reward_spec"])
    con.close()
    assert [r["decision_date"] for r in by_date] == DAYS[:3]
    assert all(r["matured"] == 8 and r["invalid_rate"] == 0.25 for r in by_date)


def test_rewards_compute_cli(shared_data, tmp_path):
    path = tmp_path / "cli.duckdb"
    _store(path, shared_data, last_price_day=date(2016, 1, 8))
    exe = str(Path(sys.executable).parent / "hitchhiker")
    p = subprocess.run([exe, "rewards", "compute", "--db", str(path), "--horizon-days", "2"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "32 rewarded, 0 waiting" in p.stdout and "(4 decision date(s) read)" in p.stdout  # the folder is given
    con = db.connect(path, read_only=True)
    n, groups = con.execute("SELECT count(*), count(DISTINCT group_id) FROM advantages a JOIN replay r USING (rollout_id, group_id)").fetchone()
    con.close()
    assert (n, groups) == (32, 8)
    p = subprocess.run([exe, "rewards", "compute", "--db", str(path), "--entry", "sometime"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "sometime" in p.stderr
    # judged (issue 21): every rollout judged once ('ACTION: A' alone claims nothing: neutral), the dollars unchanged
    judged = [exe, "rewards", "compute", "--db", str(path), "--horizon-days", "2", "--judge", "grounding",
              "--judge-shift-usd", "0.01"]
    p = subprocess.run(judged, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "32 rewarded, 0 waiting" in p.stdout, p.stderr
    con = db.connect(path, read_only=True)
    assert con.execute("SELECT judge, label, count(*) FROM judgements GROUP BY ALL").fetchall() == [("grounding-v1", 0, 32)]
    assert con.execute("SELECT count(*) FROM rewards a JOIN rewards b USING (rollout_id) WHERE a.reward_spec LIKE "
                       "'%judge=grounding-v1,judge_shift_usd=0.01,%' AND b.reward_spec NOT LIKE '%judge%' AND "
                       "a.reward_usd = b.reward_usd AND a.shaped_reward_usd = a.reward_usd").fetchone()[0] == 32
    con.close()
    p = subprocess.run(judged[:-4] + ["--judge", "gpt"], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "judge 'gpt': use 'grounding' or 'lm:" in p.stderr


def test_compute_reads_only_the_dates_with_unrewarded_groups(shared_data, tmp_path):
    """With the replay folder given, the files of dates whose groups all have rewards are not opened."""
    import pytest

    path = tmp_path / "pruned.duckdb"
    _store(path, shared_data, last_price_day=date(2015, 12, 30))
    root = replay.default_root(path)
    con = db.connect(path)
    first = rewards.compute_rewards(con, rewards.RewardSpec(), root)
    assert (first["dates_read"], first["inserted"], first["waiting"]) == (4, 24, 8)

    # The 23rd is finished: make its files unreadable. A run that opened them would fail (the whole view does).
    # (Not the 22nd: creating the view reads the schema of the first file in path order.)
    for f in (root / "decision_date=2015-12-23").rglob("*.parquet"):
        f.write_bytes(b"not parquet")
    with pytest.raises(Exception, match="(?i)parquet|magic"):
        rewards.compute_rewards(con, rewards.RewardSpec())
    again = rewards.compute_rewards(con, rewards.RewardSpec(), root)
    assert (again["dates_read"], again["pending"], again["inserted"], again["total"]) == (1, 8, 0, 24)  # the 31st waits

    # A new group on a finished date (another policy version) opens that date again, and only it.
    rows = con.execute("SELECT * EXCLUDE (decision_date, pair) FROM replay WHERE decision_date = DATE '2015-12-24' "
                       "AND mode = 'pairwise'").to_arrow_table().to_pylist()
    new = [{**r, "rollout_id": r["rollout_id"].replace("g-", "g2-"), "group_id": "g2-" + r["state_id"],
            "policy_version": "ckpt:2"} for r in rows]
    replay.write_group(root, date(2015, 12, 24), "BMY-ICE", new[0]["group_id"], new)
    third = rewards.compute_rewards(con, rewards.RewardSpec(), root)
    assert (third["dates_read"], third["inserted"], third["total"]) == (2, 4, 28)

    # Prices of the new year mature the 31st.
    files = [str(shared_data / "prices" / "sp500_5yr" / f"{t}_data.csv") for t in TICKERS]
    con.execute(
        "INSERT INTO prices SELECT Name, date, open, high, low, close, NULL, volume, NULL, 'csv', now() "
        "FROM read_csv($f, header = true, columns = {'date': 'DATE', 'open': 'DOUBLE', 'high': 'DOUBLE', "
        "'low': 'DOUBLE', 'close': 'DOUBLE', 'volume': 'BIGINT', 'Name': 'VARCHAR'}) "
        "WHERE date BETWEEN DATE '2015-12-31' AND DATE '2016-01-08'", {"f": files})
    fourth = rewards.compute_rewards(con, rewards.RewardSpec(), root)
    assert (fourth["dates_read"], fourth["inserted"], fourth["waiting"], fourth["total"]) == (1, 8, 0, 36)
    fifth = rewards.compute_rewards(con, rewards.RewardSpec(), root)
    assert (fifth["dates_read"], fifth["pending"], fifth["total"]) == (0, 0, 36)
    con.close()
