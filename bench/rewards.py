"""Rewards + advantages for 1,000,000 synthetic rollouts over real prices (505 tickers): SQL vs pandas, one run.

The prices are ../shared/data/prices/sp500_5yr (real). The rollouts are synthetic: 125,000 states (half pairwise,
half elementwise, random tickers and decision dates) x 8 samples with random actions, 5 % invalid. Both sides start
from the same store (prices, states and replay in one DuckDB database) and end with the same things: a row with the
columns of `rewards` for every matured rollout, stored in a DuckDB table, and every rollout's group advantages
(reward_usd, advantage, advantage_drgrpo, group_size, zero_variance) in hand.

- SQL: hitchhiker.rewards.compute_rewards (sql/rewards.sql into `rewards`), then the `advantages` view read into a
  temp table.
- pandas, the baseline: the three tables read into DataFrames, the same calendar rule and formulas with merges,
  merge_asof and vectorized numpy, the rows appended to a copy of `rewards`, the advantages by groupby transforms.

Before the result is printed the two are checked to agree on every row: dates and flags equal, numbers to 1e-9.
Runs alternate (SQL, pandas, SQL, ...) and medians are compared, so load on a shared machine hits both alike.
DuckDB uses its default threads (the machine's cores); pandas runs on one. Targets: SQL >= 10x faster than pandas,
and under 2 s.
Run: .venv/bin/python bench/rewards.py [--rollouts N] [--repeats 3]
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _result import report  # noqa: E402  (bench/ is the script's own folder on sys.path)

from hitchhiker import db, rewards  # noqa: E402

PRICES = ROOT.parent / "shared" / "data" / "prices" / "sp500_5yr"
GROUP_SIZE = 8
SEARCH_DAYS = 3  # pandas: common days are first searched within each leg's next h + 3 own days (then all later days)
REWARD_COLUMNS = ["rollout_id", "reward_spec", "state_id", "group_id", "policy_version", "decision_date", "mode", "valid",
                  "ticker_a", "ticker_b", "entry_date", "exit_date", "weight_a", "weight_b", "return_a", "return_b",
                  "cost_usd", "risk_usd", "reward_usd", "flags", "computed_at"]
ADVANTAGE_COLUMNS = ["rollout_id", "reward_usd", "advantage", "advantage_drgrpo", "group_size", "zero_variance"]


def load_prices(con) -> None:
    con.execute(
        "INSERT INTO prices SELECT Name, date, open, high, low, close, NULL, volume, NULL, 'csv', now() "
        "FROM read_csv($f, header = true, columns = {'date': 'DATE', 'open': 'DOUBLE', 'high': 'DOUBLE', "
        "'low': 'DOUBLE', 'close': 'DOUBLE', 'volume': 'BIGINT', 'Name': 'VARCHAR'})",
        {"f": str(PRICES / "*_data.csv")},
    )


def synthetic(con, n_rollouts: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """States and replay rows drawn over real (ticker, date) price rows."""
    rng = np.random.default_rng(seed)
    px = con.execute("SELECT ticker, date FROM prices ORDER BY ticker, date").df()
    n_states = n_rollouts // GROUP_SIZE
    a = px.iloc[rng.integers(0, len(px), n_states)].reset_index(drop=True)
    b_ticker = px["ticker"].to_numpy()[rng.integers(0, len(px), n_states)]
    pairwise = (np.arange(n_states) % 2 == 0) & (b_ticker != a["ticker"].to_numpy())
    states = pd.DataFrame({
        "state_id": [f"S{i}" for i in range(n_states)],
        "decision_date": a["date"].to_numpy(),
        "ticker_a": a["ticker"].to_numpy(),
        "ticker_b": np.where(pairwise, b_ticker, None),
        "mode": np.where(pairwise, "pairwise", "elementwise"),
        "history_days": 20,
    })
    k = np.tile(np.arange(GROUP_SIZE), n_states)
    st = states.loc[states.index.repeat(GROUP_SIZE)].reset_index(drop=True)
    u = rng.integers(0, 6, len(st))
    pw = st["mode"].to_numpy() == "pairwise"
    replay = pd.DataFrame({
        "rollout_id": st["state_id"] + "-" + k.astype(str),
        "state_id": st["state_id"],
        "group_id": "G" + st["state_id"],
        "decision_date": st["decision_date"],
        "mode": st["mode"],
        "policy_version": "base:bench",
        "action": np.where(pw, np.where(u % 2 == 0, "A", "B"), np.array(["buy", "hold", "sell"])[u % 3]),
        "proportion": np.where(pw, np.where(u % 2 == 0, 1.0, 0.0), np.nan),
        "position": np.where(pw, np.nan, np.array([1.0, 0.0, -1.0])[u % 3]),
        "valid": rng.random(len(st)) >= 0.05,
    })
    return states, replay


def store(con, states: pd.DataFrame, replay: pd.DataFrame) -> None:
    con.execute("DROP VIEW IF EXISTS replay")
    con.register("st", states)
    con.execute(
        "INSERT INTO states (state_id, decision_date, decision_time, mode, style, tickers, pair, action_format, "
        "horizon_days, history_days, messages, features, anonymized, prompt_tokens, builder_version, created_at) "
        "SELECT state_id, decision_date, now(), mode, 'trend', "
        "IF(ticker_b IS NULL, [ticker_a], [ticker_a, ticker_b]), ticker_a, 'choice', 1, history_days, '[]', '{}', "
        "true, 10, 'bench', now() FROM st")
    con.register("rp", replay)
    con.execute("CREATE TABLE replay AS SELECT * FROM rp")
    con.unregister("st")
    con.unregister("rp")


def fresh_outputs(con) -> None:
    """Empty `rewards` (and `rewards_pandas`, the same columns) between runs."""
    con.execute("DROP VIEW IF EXISTS advantages")
    con.execute("DROP TABLE IF EXISTS rewards")
    con.execute(db.sql_text("migrations/004_rewards"))
    con.execute("CREATE OR REPLACE TABLE rewards_pandas AS FROM rewards LIMIT 0")
    con.execute("DROP TABLE IF EXISTS adv")


# ---- SQL ---------------------------------------------------------------------------------------------------------

def run_sql(con, spec: rewards.RewardSpec) -> dict:
    counts = rewards.compute_rewards(con, spec)
    read_advantages(con, spec)
    return counts


def read_advantages(con, spec: rewards.RewardSpec) -> None:
    con.execute("CREATE OR REPLACE TEMP TABLE adv AS SELECT rollout_id, reward_usd, advantage, advantage_drgrpo, "
                "group_size, zero_variance FROM advantages WHERE reward_spec = ?", [spec.reward_spec])


def io_floor(con, spec: rewards.RewardSpec) -> float:
    """What the SQL side pays with no reward computation at all: appending the finished 1M rows to an empty table
    of `rewards`' columns, and reading the advantages. pandas / this bounds any SQL stage's ratio from above."""
    con.execute("CREATE OR REPLACE TEMP TABLE rewards_copy AS FROM rewards LIMIT 0")
    t0 = time.perf_counter()
    con.execute("INSERT INTO rewards_copy FROM rewards")
    read_advantages(con, spec)
    return time.perf_counter() - t0


# ---- pandas ------------------------------------------------------------------------------------------------------

def run_pandas(con, spec: rewards.RewardSpec) -> pd.DataFrame:
    """The baseline: read the store, compute, append the rows to `rewards_pandas`; returns the advantages."""
    computed_at = datetime.now(timezone.utc)
    prices = con.execute("SELECT ticker, date, open, close, adj_close FROM prices").df()
    states = con.execute("SELECT state_id, tickers[1] AS ticker_a, tickers[2] AS ticker_b, history_days FROM states").df()
    replay = con.execute("SELECT rollout_id, state_id, group_id, policy_version, decision_date, mode, action, proportion, "
                         "position, valid FROM replay").df()
    rows = pandas_rewards(prices, states, replay, spec)
    rows["reward_spec"] = spec.reward_spec
    rows["computed_at"] = computed_at
    con.register("pandas_rows", rows[REWARD_COLUMNS])
    con.execute("INSERT INTO rewards_pandas BY NAME SELECT * FROM pandas_rows")
    con.unregister("pandas_rows")
    g = rows.groupby(["state_id", "policy_version"])["reward_usd"]
    mean, std = g.transform("mean"), g.transform("std").fillna(0.0)
    return pd.DataFrame({
        "rollout_id": rows["rollout_id"],
        "reward_usd": rows["reward_usd"],
        "advantage": (rows["reward_usd"] - mean) / (std + 1e-4),
        "advantage_drgrpo": rows["reward_usd"] - mean,
        "group_size": g.transform("size"),
        "zero_variance": g.transform("min") == g.transform("max"),
    })


def pandas_calendar(px: pd.DataFrame, m: pd.DataFrame, h: int) -> pd.DataFrame:
    """Per market (market_id, ticker_a, tb, decision_date): the pair's first and h-th common trading day after T."""
    w = h + SEARCH_DAYS
    firsts = {}
    for leg in ("ticker_a", "tb"):  # each leg's first own trading day after T
        left = m[["market_id", leg, "decision_date"]].rename(columns={leg: "ticker"}).sort_values("decision_date")
        right = px[["ticker", "date", "day_no"]].rename(columns={"date": "decision_date"}).sort_values("decision_date")
        j = pd.merge_asof(left, right, on="decision_date", by="ticker", direction="forward", allow_exact_matches=False)
        firsts[leg] = j.set_index("market_id")["day_no"]
    m = m.assign(a_first=m["market_id"].map(firsts["ticker_a"]), b_first=m["market_id"].map(firsts["tb"]))
    f = m.dropna(subset=["a_first", "b_first"])
    win = f.loc[f.index.repeat(w)].copy()
    win["day_no"] = win["a_first"].astype(int) + np.tile(np.arange(w), len(f))
    win = win.merge(px[["ticker", "day_no", "date"]], left_on=["ticker_a", "day_no"], right_on=["ticker", "day_no"])
    win = win.merge(px[["ticker", "date", "day_no"]].rename(columns={"day_no": "b_day"}), left_on=["tb", "date"],
                    right_on=["ticker", "date"])
    win = win[win["b_day"] < win["b_first"] + w].sort_values(["market_id", "date"])
    win["n"] = win.groupby("market_id").cumcount() + 1
    cal = win[win["n"] == 1][["market_id", "date"]].rename(columns={"date": "first_day"}).merge(
        win[win["n"] == h][["market_id", "date"]].rename(columns={"date": "exit_date"}), on="market_id")
    last = px.groupby("ticker")["day_no"].max()
    found = win.groupby("market_id").size().reindex(f["market_id"], fill_value=0).to_numpy()
    full = (f["a_first"] + w - 1 <= f["ticker_a"].map(last)) | (f["b_first"] + w - 1 <= f["tb"].map(last))
    undecided = f[(found < h) & full.to_numpy()]
    if len(undecided):  # the rare market whose legs miss many days: search every later day
        j = undecided.merge(px[["ticker", "date"]], left_on="ticker_a", right_on="ticker")
        j = j[j["date"] > j["decision_date"]].merge(px[["ticker", "date"]], left_on=["tb", "date"], right_on=["ticker", "date"])
        j = j.sort_values(["market_id", "date"])
        j["n"] = j.groupby("market_id").cumcount() + 1
        c2 = j[j["n"] == 1][["market_id", "date"]].rename(columns={"date": "first_day"}).merge(
            j[j["n"] == h][["market_id", "date"]].rename(columns={"date": "exit_date"}), on="market_id")
        cal = pd.concat([cal[~cal["market_id"].isin(undecided["market_id"])], c2])
    return cal


def pandas_rewards(prices: pd.DataFrame, states: pd.DataFrame, replay: pd.DataFrame, spec: rewards.RewardSpec) -> pd.DataFrame:
    """Every matured rollout's reward row (the columns of `rewards` but reward_spec and computed_at)."""
    if spec.risk_lambda or spec.entry != "next_open":
        raise ValueError("the pandas baseline implements entry='next_open' without a risk penalty")
    px = prices.sort_values(["ticker", "date"]).reset_index(drop=True)
    px["day_no"] = px.groupby("ticker").cumcount() + 1
    factor = (px["adj_close"] / px["close"]).fillna(1.0)
    px["close_adj"] = px["adj_close"].fillna(px["close"])
    px["open_adj"] = px["open"].fillna(px["close"]) * factor
    px["open_imputed"] = px["open"].isna()
    d = replay.merge(states[["state_id", "ticker_a", "ticker_b"]], on="state_id")
    d["tb"] = d["ticker_b"].fillna(d["ticker_a"])
    m = d[["ticker_a", "tb", "decision_date"]].drop_duplicates().reset_index(drop=True)
    m["market_id"] = np.arange(len(m))
    m = m.merge(pandas_calendar(px, m, spec.horizon_days), on="market_id")
    # priced on T's own calendar only: both legs trade on T, and the entry is within the gap
    for leg in ("ticker_a", "tb"):
        m = m.merge(px[["ticker", "date"]], left_on=[leg, "decision_date"], right_on=["ticker", "date"]).drop(
            columns=["ticker", "date"])
    gap = (pd.to_datetime(m["first_day"]) - pd.to_datetime(m["decision_date"])).dt.days
    m = m[gap <= spec.max_entry_gap_days].copy()
    m["entry_date"] = m["first_day"]
    imputed = np.zeros(len(m), dtype=bool)
    for leg, tag in (("ticker_a", "a"), ("tb", "b")):
        entry = px[["ticker", "date", "open_adj", "open_imputed"]].rename(columns={"open_adj": f"entry_{tag}"})
        m = m.merge(entry, left_on=[leg, "entry_date"], right_on=["ticker", "date"]).drop(columns=["ticker", "date"])
        imputed |= m.pop("open_imputed").to_numpy()
        exit_ = px[["ticker", "date", "close_adj"]].rename(columns={"close_adj": f"exit_{tag}"})
        m = m.merge(exit_, left_on=[leg, "exit_date"], right_on=["ticker", "date"]).drop(columns=["ticker", "date"])
        m[f"return_{tag}"] = m[f"exit_{tag}"] / m[f"entry_{tag}"] - 1.0
    m["flags"] = np.where(imputed, "open_imputed", None)
    d = d.merge(m[["ticker_a", "tb", "decision_date", "entry_date", "exit_date", "return_a", "return_b", "flags"]],
                on=["ticker_a", "tb", "decision_date"])
    elem = d["mode"].to_numpy() == "elementwise"
    is_a = d["action"].to_numpy() == "A"
    if spec.pairwise == "long_short":
        wa, wb = np.where(is_a, 1.0, -1.0), np.where(is_a, -1.0, 1.0)
    else:
        w = d["proportion"].fillna(pd.Series(np.where(is_a, 1.0, 0.0), index=d.index)).to_numpy()
        wa, wb = w, 1.0 - w
    valid = d["valid"].to_numpy()
    wa = np.where(valid, np.where(elem, d["position"].to_numpy(), wa), 0.0)
    wb = np.where(valid & ~elem, wb, 0.0)
    d["weight_a"], d["weight_b"] = wa, wb
    d["return_b"] = d["return_b"].where(~elem)
    d["cost_usd"] = spec.cost_bps / 1e4 * (np.abs(wa) + np.abs(wb))
    d["risk_usd"] = 0.0
    gain = wa * d["return_a"].to_numpy() + np.where(elem, 0.0, wb * d["return_b"].to_numpy())
    d["reward_usd"] = np.where(valid, gain - d["cost_usd"].to_numpy(), -spec.invalid_penalty_usd)
    return d.drop(columns=["tb", "action", "proportion", "position"])


# ---- the run -----------------------------------------------------------------------------------------------------

def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn, *args):
    c0, t0 = _cpu_s(), time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0, _cpu_s() - c0


def check_agreement(con, pandas_adv: pd.DataFrame) -> float:
    """Largest |SQL - pandas| over every number; raises unless rows, dates, flags and group sizes are equal."""
    rows = con.execute("""
        SELECT count(*) FILTER (WHERE s.rollout_id IS NULL OR p.rollout_id IS NULL) AS unmatched,
               count(*) FILTER (WHERE s.entry_date <> p.entry_date OR s.exit_date <> p.exit_date
                                 OR s.flags IS DISTINCT FROM p.flags OR s.valid <> p.valid OR s.mode <> p.mode
                                 OR s.ticker_b IS DISTINCT FROM p.ticker_b OR s.decision_date <> p.decision_date) AS differ,
               max(greatest(abs(s.reward_usd - p.reward_usd), abs(s.return_a - p.return_a),
                            coalesce(abs(s.return_b - p.return_b), 0), abs(s.weight_a - p.weight_a),
                            abs(s.weight_b - p.weight_b), abs(s.cost_usd - p.cost_usd), abs(s.risk_usd - p.risk_usd))) AS diff,
               count(*) FILTER (WHERE (s.return_b IS NULL) <> (p.return_b IS NULL)) AS null_differ
        FROM rewards AS s FULL JOIN rewards_pandas AS p USING (rollout_id)""").fetchall()[0]
    assert rows[0] == 0 and rows[1] == 0 and rows[3] == 0, f"SQL and pandas rows differ: {rows}"
    con.register("pandas_adv", pandas_adv)
    adv = con.execute("""
        SELECT count(*) FILTER (WHERE s.rollout_id IS NULL OR p.rollout_id IS NULL
                                 OR s.group_size <> p.group_size OR s.zero_variance <> p.zero_variance),
               max(greatest(abs(s.advantage - p.advantage), abs(s.advantage_drgrpo - p.advantage_drgrpo)))
        FROM adv AS s FULL JOIN pandas_adv AS p USING (rollout_id)""").fetchall()[0]
    con.unregister("pandas_adv")
    assert adv[0] == 0, f"SQL and pandas advantages differ on {adv[0]} rows"
    diff = max(rows[2], adv[1])
    assert diff < 1e-9, diff
    return diff


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rollouts", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    spec = rewards.RewardSpec()  # risk_lambda = 0: the pandas baseline has no volatility term
    con = duckdb.connect()
    db.migrate(con)
    load_prices(con)
    states, replay = synthetic(con, args.rollouts)
    store(con, states, replay)
    del states, replay
    n_tickers = con.execute("SELECT count(DISTINCT ticker) FROM prices").fetchall()[0][0]

    sql_runs, pandas_runs = [], []
    for _ in range(args.repeats):
        fresh_outputs(con)
        counts, wall, cpu = timed(run_sql, con, spec)
        sql_runs.append((wall, cpu))
        pandas_adv, wall, cpu = timed(run_pandas, con, spec)
        pandas_runs.append((wall, cpu))
        diff = check_agreement(con, pandas_adv)

    floor_s = statistics.median(io_floor(con, spec) for _ in range(args.repeats))
    sql_s = statistics.median(w for w, _ in sql_runs)
    pandas_s = statistics.median(w for w, _ in pandas_runs)
    ratio = pandas_s / sql_s
    print(f"rollouts {args.rollouts:,} over {n_tickers} tickers; rewarded (matured) {counts['inserted']:,}, "
          f"waiting {counts['waiting']:,}, never priced {counts['unpriceable']:,}; {args.repeats} alternating runs, medians")
    print("sql (compute_rewards into `rewards` + advantages): " + ", ".join(f"{w:.2f} s (cpu {c:.2f} s)" for w, c in sql_runs))
    print("pandas (read store, same rows into a table + advantages): "
          + ", ".join(f"{w:.2f} s (cpu {c:.2f} s)" for w, c in pandas_runs) + f"   max |sql - pandas| = {diff:.2e}")
    sql_cpu = statistics.median(c for _, c in sql_runs)
    pandas_cpu = statistics.median(c for _, c in pandas_runs)
    print(f"cpu time (user + sys, all threads; less sensitive to other load): sql {sql_cpu:.2f} s, "
          f"pandas {pandas_cpu:.2f} s, pandas/sql {pandas_cpu / sql_cpu:.2f}")
    print(f"sql input/output alone (append the finished rows to an empty table + read advantages): {floor_s:.2f} s; "
          f"the ratio of a reward computation taking no time would be {pandas_s / floor_s:.1f}")
    return report("rewards", ratio, ">=", 10, checks=(("sql_seconds", sql_s, "<", 2.0),))


if __name__ == "__main__":
    sys.exit(main())
