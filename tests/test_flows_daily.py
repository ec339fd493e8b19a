"""The daily and backfill flows in process, on the shipped demo data and the default small model.

Small on purpose: four tickers (six pairs a day), the one-line "trend" prompt, groups of four.
The deployment/worker path, retries, the UI and concurrent runs are in test_server.py.
"""
from __future__ import annotations

from datetime import date

import pytest

from flows.daily import backfill, daily
from hitchhiker import db, demo_data, replay

DAY = "2016-03-01"  # a Tuesday of the demo data
PRICES = str(demo_data.paths()["prices_dir"])
TICKERS = ["AAPL", "AMZN", "JPM", "XOM"]
SMALL = dict(style="trend", group_size=4, n_boot=200, retry_delay_s=0)

# (table, key columns): every stored row is unique on its key; a duplicate would show as count > distinct count.
KEYS = {
    "prices": "ticker, date",
    "news": "news_id",
    "states": "state_id",
    "replay": "rollout_id",
    "rewards": "rollout_id, reward_spec",
    "checkpoints": "checkpoint_id",
    "promotions": "candidate",
}


def store_counts(db_file) -> dict[str, tuple[int, int]]:
    """{table: (rows, distinct keys)} read through a read-only connection."""
    con = db.connect(db_file, read_only=True)
    try:
        out = {}
        for table, key in KEYS.items():
            out[table] = con.execute(f"SELECT count(*), count(DISTINCT ({key})) FROM {table}").fetchall()[0]
        return out
    finally:
        con.close()


def replay_files(db_file) -> dict[str, int]:
    root = replay.default_root(db_file)
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.glob(replay.GLOB)}


def test_closed_market_missing_data_and_no_history_are_clear_skips(prefect_harness, db_file):
    saturday = daily(date="2016-03-05", db=str(db_file), prices_csv=PRICES, tickers=TICKERS, **SMALL)
    assert saturday["status"] == "skipped" and "2016-03-05 is not a trading day" in saturday["reason"]
    later = daily(date="2019-01-02", db=str(db_file), ingest=False, tickers=TICKERS, **SMALL)
    assert later["status"] == "skipped"
    assert later["reason"].startswith("no prices for 2019-01-02 yet (the latest stored date is 2018-02-07)")
    # The second trading day of the data: no ticker has 10 days of history, so no state and nothing to sample.
    early = daily(date="2013-02-11", db=str(db_file), ingest=False, tickers=TICKERS, **SMALL)
    assert early["status"] == "done" and early["states"]["states"] == 0
    assert early["rollouts"]["groups_written"] == 0
    counts = store_counts(db_file)
    assert counts["states"] == (0, 0) and counts["replay"] == (0, 0)
    with pytest.raises(ValueError, match="date '2016-02-30' is not a date"):
        daily(date="2016-02-30", db=str(db_file), ingest=False)


@pytest.mark.slow
def test_backfill_trains_when_enough_groups_matured_and_gates_on_later_days(prefect_harness, db_file):
    # Days 1-2 (6 groups a day): training (in process: train_deployment=None) starts once 12 matured groups exist
    # that no checkpoint has used, on day 2. The candidate trained on days 1-2, whose rewards exit on day 3; its
    # gate needs 2 later decision days whose own rewards have matured: days 4 and 5, known on day 6.
    options = dict(SMALL, min_new_groups=12, train_deployment=None, eval_days=2,
                   train_config={"groups_per_step": 6, "groups_per_micro_batch": 6})
    retry_delay_s = options.pop("retry_delay_s")
    first = backfill(start="2016-03-01", end="2016-03-02", db=str(db_file), demo=True, tickers=TICKERS,
                     retry_delay_s=retry_delay_s, options=options)
    assert [(r["date"], r["train"], r["gate"]) for r in first] == [
        ("2016-03-01", "skipped", "skipped"), ("2016-03-02", "completed", "skipped")]
    counts = store_counts(db_file)
    # 4 tickers -> 6 pairs a day, groups of 4; the demo data holds the next day's prices, so all have matured.
    assert {t: counts[t][0] for t in ("prices", "states", "replay", "rewards")} == {
        "prices": 12590, "states": 12, "replay": 48, "rewards": 48}
    # Days 3-6 without training (a weekend in between): the gate waits until day 6, then decides once.
    later = backfill(start="2016-03-03", end="2016-03-08", db=str(db_file), prices_csv=PRICES, tickers=TICKERS,
                     retry_delay_s=retry_delay_s, options=dict(options, train=False))
    assert [r["date"] for r in later] == ["2016-03-03", "2016-03-04", "2016-03-07", "2016-03-08"]
    assert [r["gate"] for r in later][:3] == ["skipped"] * 3 and later[3]["gate"] in ("promoted", "kept")

    con = db.connect(db_file, read_only=True)
    try:
        checkpoints = con.execute("SELECT checkpoint_id, parent_id, len(groups_used) FROM checkpoints").fetchall()
        gated = con.execute("SELECT p.candidate, p.champion_before, e.window_start, e.window_end FROM promotions AS p "
                            "JOIN evaluations AS e ON e.run_id = p.run_id AND e.subject = p.candidate").fetchall()
        sampled_by = con.execute("SELECT DISTINCT policy_version FROM replay").fetchall()
    finally:
        con.close()
    assert [(parent, n) for _, parent, n in checkpoints] == [(None, 12)]  # from the base model, on days 1-2
    assert gated == [(checkpoints[0][0], None, date(2016, 3, 4), date(2016, 3, 7))]
    assert len(sampled_by) == 1 and sampled_by[0][0].startswith("base:")  # the gate ran after the last sampling
    assert all(rows == keys for rows, keys in store_counts(db_file).values())

    # Running a day again, after the gate, changes nothing and duplicates nothing, whatever the gate decided: the
    # ingest is an upsert, states are content-keyed, a day's states are sampled once, rewards are an anti-join.
    # Training is due (the 24 groups of days 3-6 are unused) but this server has no train deployment: a logged skip.
    before, files = store_counts(db_file), replay_files(db_file)
    again = daily(date="2016-03-01", db=str(db_file), demo=True, tickers=TICKERS, retry_delay_s=retry_delay_s,
                  **dict(options, min_new_groups=1, train_deployment="train/train"))
    assert again["status"] == "done" and again["states"] == {"states": 6, "new": 0}
    assert (again["ingest"]["prices_inserted"], again["ingest"]["prices_updated"], again["ingest"]["news_inserted"]) == (0, 0, 0)
    assert (again["ingest"]["names_added"], again["ingest"]["names_missing"]) == (0, 0)  # the demo's names, recorded once
    assert again["rollouts"]["groups_written"] == 0 and again["rollouts"]["groups_skipped"] == 6
    assert again["rewards"]["inserted"] == 0 and again["gate"]["status"] == "skipped"
    assert again["train"]["status"] == "skipped" and "no deployment 'train/train'" in again["train"]["reason"]
    assert store_counts(db_file) == before and replay_files(db_file) == files
