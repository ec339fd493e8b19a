"""Rewards in SQL against a pure-Python reference on real prices; maturity, idempotence, advantages, preview."""
from __future__ import annotations

import itertools
import json
import random
import statistics
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from hitchhiker import db, replay, rewards, storage
from s3_server import s3  # noqa: F401 (fixture)

CSV_TICKERS = ["O", "DHR", "ES", "ICE", "BMY", "AAPL", "BHF", "WRK", "REGN", "VRTX", "FTV", "UA"]
YAHOO_FILES = ["chart-AAPL-2020-08-31-to-2020-11-07.json",
               "historical-via-chart-MSFT-dividends-2021-02-01-to-2022-01-31.csv.json",
               "historical-via-chart-NVDA-split-2021-02-01-to-2022-01-31.csv.json"]
# (tickers, decision dates): gaps of 10 days on O/DHR/ES (March 2015), missing opens (2015-07-17, 2016-01-12, ...),
# holidays (Christmas, New Year, Thanksgiving, July 4th), real adj_close with dividends and a split (Yahoo), and the
# end of the data (unmatured).
MARKETS = [
    (("O", "AAPL"), ("2015-03-02", "2015-03-24")),
    (("DHR", "O"), ("2015-03-04", "2015-03-23")),
    (("ES", "ICE"), ("2015-07-14", "2015-07-20")),
    (("O", "DHR"), ("2016-01-08", "2016-01-13")),
    (("BMY", "ICE"), ("2015-12-22", "2016-01-05")),
    (("AAPL", "BMY"), ("2016-11-22", "2016-11-28")),
    (("BHF", "WRK"), ("2017-07-21", "2017-07-27")),
    (("REGN", "VRTX"), ("2015-05-08", "2015-05-13")),
    (("REGN", "VRTX"), ("2015-06-05", "2015-06-10")),
    (("FTV", "UA"), ("2016-06-28", "2016-07-05")),
    (("UA", "DHR"), ("2016-04-01", "2016-04-08")),
    (("MSFT", "NVDA"), ("2021-06-29", "2021-07-22")),
    (("NVDA", "MSFT"), ("2021-08-16", "2021-08-20")),
    (("MSFT", "NVDA"), ("2021-11-15", "2021-11-29")),
    (("MSFT", "NVDA"), ("2022-01-24", "2022-01-30")),
    (("AAPL", "ICE"), ("2018-01-31", "2018-02-08")),
    (("AAPL", "AAPL"), ("2020-08-28", "2020-09-04")),
    (("AAPL", "AAPL"), ("2020-11-02", "2020-11-08")),
]
HISTORY_DAYS = 5
SPECS = [rewards.RewardSpec(horizon_days=h, entry=e, pairwise=p, risk_lambda=lam)
         for h, e, p, lam in itertools.product([1, 3], ["next_open", "decision_close"], ["long_short", "allocation"], [0.0, 0.5])]
SPECS.append(rewards.RewardSpec(cost_bps=12.5, invalid_penalty_usd=0.05))


def _load_prices(con, shared: Path) -> None:
    files = [str(shared / "prices" / "sp500_5yr" / f"{t}_data.csv") for t in CSV_TICKERS]
    con.execute(
        "INSERT INTO prices SELECT Name, date, open, high, low, close, NULL, volume, NULL, 'csv', now() "
        "FROM read_csv($f, header = true, columns = {'date': 'DATE', 'open': 'DOUBLE', 'high': 'DOUBLE', "
        "'low': 'DOUBLE', 'close': 'DOUBLE', 'volume': 'BIGINT', 'Name': 'VARCHAR'})", {"f": files})
    rows = []
    for name in YAHOO_FILES:  # real Yahoo chart payloads: raw close and a split/dividend-adjusted close
        r = json.loads((shared / "yahoo_chart" / name).read_text())["response"]["bodyJson"]["chart"]["result"][0]
        q, adj = r["indicators"]["quote"][0], r["indicators"]["adjclose"][0]["adjclose"]
        for i, ts in enumerate(r["timestamp"]):
            rows.append({"ticker": r["meta"]["symbol"], "date": datetime.fromtimestamp(ts, timezone.utc).date(),
                         "open": q["open"][i], "close": q["close"][i], "adj_close": adj[i]})
    _insert(con, "INSERT INTO prices (ticker, date, open, close, adj_close, source, ingested_at) "
                 "SELECT ticker, date, open, close, adj_close, 'yahoo', now() FROM batch", rows, PRICE_SCHEMA)


# One INSERT ... SELECT per batch: executemany runs one statement per row (tens of seconds for the fixture).
PRICE_SCHEMA = pa.schema([("ticker", pa.string()), ("date", pa.date32()), ("open", pa.float64()),
                          ("close", pa.float64()), ("adj_close", pa.float64())])
REPLAY_SCHEMA = pa.schema([("rollout_id", pa.string()), ("state_id", pa.string()), ("group_id", pa.string()),
                           ("decision_date", pa.date32()), ("pair", pa.string()), ("mode", pa.string()),
                           ("policy_version", pa.string()), ("sample_index", pa.int32()), ("action", pa.string()),
                           ("proportion", pa.float64()), ("position", pa.float64()), ("valid", pa.bool_())])
STATE_SCHEMA = pa.schema([("state_id", pa.string()), ("decision_date", pa.date32()), ("mode", pa.string()),
                          ("tickers", pa.list_(pa.string())), ("pair", pa.string()), ("history_days", pa.int32())])


def _insert(con, sql: str, rows: list[dict], schema: pa.Schema) -> None:
    con.register("batch", pa.Table.from_pylist(rows, schema=schema))
    try:
        con.execute(sql)
    finally:
        con.unregister("batch")


def _decisions(con) -> list[dict]:
    """Rollouts over MARKETS: every calendar day of each range (weekends and holidays too), groups of 4."""
    rng = random.Random(5)
    out = []
    for (ta, tb), span in MARKETS:
        start, end = (date.fromisoformat(s) for s in span)
        for day in (date.fromordinal(o) for o in range(start.toordinal(), end.toordinal() + 1)):
            for mode in ("pairwise", "elementwise"):
                if mode == "pairwise" and ta == tb:
                    continue
                state = f"s-{ta}-{tb}-{day}-{mode}"
                for k in range(4):
                    valid = rng.random() > 0.1
                    row = {"rollout_id": f"{state}-{k}", "state_id": state, "group_id": f"g-{state}", "decision_date": day,
                           "mode": mode, "policy_version": "base:test", "tickers": [ta, tb] if mode == "pairwise" else [ta],
                           "action": None, "proportion": None, "position": None, "valid": valid}
                    if valid and mode == "pairwise":
                        row["action"] = rng.choice("AB")
                        row["proportion"] = round(rng.random(), 2) if k % 2 else (1.0 if row["action"] == "A" else 0.0)
                    elif valid:
                        row["position"] = rng.choice([-1.0, 0.0, 1.0, round(rng.uniform(0, 2), 3)])
                        row["action"] = f"{row['position']:g}"
                    out.append(row)
    return out


def _store_decisions(con, rows: list[dict]) -> None:
    con.execute("DROP VIEW IF EXISTS replay")
    con.execute("CREATE TABLE replay (rollout_id VARCHAR, state_id VARCHAR, group_id VARCHAR, decision_date DATE, "
                "pair VARCHAR, mode VARCHAR, policy_version VARCHAR, sample_index INTEGER, action VARCHAR, "
                "proportion DOUBLE, position DOUBLE, valid BOOLEAN)")
    _insert(con, "INSERT INTO replay BY NAME SELECT * FROM batch", [
        {**{k: r[k] for k in ("rollout_id", "state_id", "group_id", "decision_date", "mode", "policy_version", "action",
                              "proportion", "position", "valid")},
         "pair": "-".join(sorted(r["tickers"])), "sample_index": int(r["rollout_id"][-1])} for r in rows], REPLAY_SCHEMA)
    states = {r["state_id"]: r for r in rows}
    _insert(con,
            "INSERT INTO states (state_id, decision_date, decision_time, mode, style, tickers, pair, action_format, horizon_days, "
            "history_days, messages, features, anonymized, prompt_tokens, builder_version, created_at) "
            "SELECT state_id, decision_date, now(), mode, 'trend', tickers, pair, 'choice', 1, history_days, '[]', '{}', true, 1, "
            "'test', now() FROM batch",
            [{"state_id": s, "decision_date": r["decision_date"], "mode": r["mode"], "tickers": r["tickers"],
              "pair": "-".join(sorted(r["tickers"])), "history_days": HISTORY_DAYS} for s, r in states.items()], STATE_SCHEMA)


@pytest.fixture(scope="module")
def store(shared_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("rewards") / "rewards.duckdb"
    con = db.connect(path)
    _load_prices(con, shared_data)
    rows = _decisions(con)
    _store_decisions(con, rows)
    prices = {}
    for t, d, o, c, a in con.execute("SELECT ticker, date, open, close, adj_close FROM prices ORDER BY ticker, date").fetchall():
        prices.setdefault(t, []).append((d, o, c, a))
    yield con, rows, prices
    con.close()


# ---- the reference: plain Python, written from the definitions, not from the SQL ----------------------

def reference(row: dict, prices: dict, spec: rewards.RewardSpec, cache: dict | None = None) -> dict | None:
    """The reward of one decision, or None when it has none (not matured, or an error: see outcome)."""
    status, reward = outcome(row, prices, spec, cache)
    return reward


def outcome(row: dict, prices: dict, spec: rewards.RewardSpec, cache: dict | None = None) -> tuple[str, dict | None]:
    """('rewarded', the reward), ('not_matured', None) or ('error', None) for one decision.

    An error: T is not a trading day of every leg (nothing traded on T, or a leg has a price after T but none on T),
    or (next_open) the first common trading day after T is more than max_entry_gap_days calendar days after T. A leg
    whose prices end before T has not matured (its prices may still come). cache: a dict kept across calls on the
    same `prices`, so that each pair's calendar is built once.
    """
    legs = row["tickers"]
    cache = {} if cache is None else cache
    if tuple(legs) not in cache:
        by_date = [{d: (o, c, a) for d, o, c, a in prices[t]} for t in legs]
        cache[tuple(legs)] = by_date, sorted(set.intersection(*(set(b) for b in by_date)))
    by_date, common = cache[tuple(legs)]
    t_day = row["decision_date"]
    later = [d for d in common if d > t_day]
    if "market days" not in cache:
        cache["market days"] = {d for rows_ in prices.values() for d, *_ in rows_}
    if t_day > max(cache["market days"]):
        return "not_matured", None
    if t_day not in cache["market days"]:
        return "error", None
    missing = [t for t, b in zip(legs, by_date) if t_day not in b]
    if any(prices[t][-1][0] > t_day for t in missing):
        return "error", None
    if missing:
        return "not_matured", None
    if spec.entry == "next_open" and later and (later[0] - t_day).days > spec.max_entry_gap_days:
        return "error", None
    if len(later) < spec.horizon_days:
        return "not_matured", None
    exit_day = later[spec.horizon_days - 1]

    def adj(o_c_a, which):
        o, c, a = o_c_a
        factor = a / c if a is not None else 1.0
        if which == "open":
            return (o if o is not None else c) * factor
        return a if a is not None else c

    if spec.entry == "next_open":
        entry_day = later[0]
        entry = [adj(b[entry_day], "open") for b in by_date]
        imputed = any(b[entry_day][0] is None for b in by_date)
    else:
        entry_day = t_day
        entry = [adj(b[t_day], "close") for b in by_date]
        imputed = False
    exit_ = [adj(b[exit_day], "close") for b in by_date]
    ret = [x / e - 1 for x, e in zip(exit_, entry)]
    sigma = []
    for t in legs:
        if ("sigma", t, t_day) not in cache:
            closes = [adj((o, c, a), "close") for d, o, c, a in prices[t] if d <= t_day]
            rets = [closes[i] / closes[i - 1] - 1 for i in range(max(1, len(closes) - HISTORY_DAYS), len(closes))]
            cache["sigma", t, t_day] = statistics.stdev(rets) if len(rets) >= 2 else 0.0
        sigma.append(cache["sigma", t, t_day])
    if not row["valid"]:
        w = [0.0, 0.0]
    elif row["mode"] == "elementwise":
        w = [row["position"], 0.0]
    elif spec.pairwise == "long_short":
        w = [1.0, -1.0] if row["action"] == "A" else [-1.0, 1.0]
    else:
        w = [row["proportion"], 1 - row["proportion"]]
    cost = spec.cost_bps / 10_000 * (abs(w[0]) + abs(w[1]))
    risk = spec.risk_lambda * sum(abs(wi) * s for wi, s in zip(w, sigma))
    gain = sum(wi * r for wi, r in zip(w, ret))
    reward = gain - cost - risk if row["valid"] else -spec.invalid_penalty_usd
    return "rewarded", {"reward_usd": reward, "entry_date": entry_day, "exit_date": exit_day, "return_a": ret[0],
                        "open_imputed": imputed}


def _sql_rows(con, spec) -> dict:
    rows = con.execute("SELECT rollout_id, reward_usd, entry_date, exit_date, return_a, flags FROM rewards "
                       "WHERE reward_spec = ?", [spec.reward_spec]).fetchall()
    return {r[0]: r[1:] for r in rows}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.reward_spec.split(":")[1].rsplit(",sql", 1)[0])
def test_sql_agrees_with_python_reference(store, spec):
    con, rows, prices = store
    counts = rewards.compute_rewards(con, spec)
    got = _sql_rows(con, spec)
    cache = {}
    outcomes = {r["rollout_id"]: outcome(r, prices, spec, cache) for r in rows}
    want = {k: reward for k, (_, reward) in outcomes.items()}
    matured = {k for k, v in want.items() if v is not None}
    status = [s for s, _ in outcomes.values()]
    assert set(got) == matured
    assert (counts["inserted"], counts["waiting"], counts["unpriceable"]) == (
        len(matured), status.count("not_matured"), status.count("error"))
    # some decisions are at the end of the data, some on weekends, holidays or in a gap of one leg's prices
    assert len(matured) and status.count("not_matured") and status.count("error")
    for rid in matured:
        reward, entry, exit_, ret_a, flags = got[rid]
        w = want[rid]
        assert abs(reward - w["reward_usd"]) <= 1e-12, rid
        assert abs(ret_a - w["return_a"]) <= 1e-12, rid
        assert (entry, exit_) == (w["entry_date"], w["exit_date"]), rid
        assert ("open_imputed" in (flags or "")) == w["open_imputed"], rid
    if spec.entry == "next_open":  # the real missing opens were reached
        assert any(w["open_imputed"] for w in want.values() if w)


def test_calendar_crosses_gaps_and_holidays(store):
    con, rows, prices = store
    spec = rewards.RewardSpec(horizon_days=3)
    counts = rewards.compute_rewards(con, spec)
    got = {s: (e, x) for s, e, x in con.execute(
        "SELECT state_id, entry_date, exit_date FROM rewards WHERE reward_spec = ?", [spec.reward_spec]).fetchall()}
    # O has no prices 2015-03-09..20 while AAPL has: the pair's first common day after 03-06 is 03-23, 17 days after
    # T, beyond the default gap of 5 days: never rewarded, reported; a wider gap enters there.
    assert "s-O-AAPL-2015-03-06-pairwise" not in got and counts["unpriceable"] > 0
    wide = rewards.RewardSpec(horizon_days=3, max_entry_gap_days=20)
    rewards.compute_rewards(con, wide)
    assert con.execute("SELECT DISTINCT entry_date, exit_date FROM rewards WHERE reward_spec = ? AND state_id = ?",
                       [wide.reward_spec, "s-O-AAPL-2015-03-06-pairwise"]).fetchall() == [(date(2015, 3, 23), date(2015, 3, 25))]
    # Christmas 2015 (Friday): decided on the 24th, the position runs on the 28th, 29th and 30th.
    assert got["s-BMY-ICE-2015-12-24-pairwise"] == (date(2015, 12, 28), date(2015, 12, 30))
    # July 4th 2021 (observed Monday the 5th).
    assert got["s-MSFT-NVDA-2021-07-02-pairwise"] == (date(2021, 7, 6), date(2021, 7, 8))


def test_unmatured_absent_then_appear_when_prices_added(store, tmp_path):
    con, rows, prices = store
    path = tmp_path / "late.duckdb"
    late = db.connect(path)
    cut = date(2015, 12, 30)
    held = con.execute("SELECT * FROM prices WHERE date > ?", [cut]).df()
    late.register("all_prices", con.execute("SELECT * FROM prices").df())
    late.execute("INSERT INTO prices SELECT * FROM all_prices WHERE date <= ?", [cut])
    sub = [r for r in rows if r["tickers"] in (["BMY", "ICE"], ["BMY"])]
    _store_decisions(late, sub)
    spec = rewards.RewardSpec()
    first = rewards.compute_rewards(late, spec)
    have = dict(late.execute("SELECT rollout_id, reward_usd FROM rewards").fetchall())
    assert all(r["decision_date"] < cut for r in sub if r["rollout_id"] in have)
    assert not any(r["rollout_id"] in have for r in sub if r["decision_date"] >= cut)
    assert first["waiting"] > 0 and first["inserted"] == len(have)
    late.register("held", held)
    late.execute("INSERT INTO prices SELECT * FROM held")
    second = rewards.compute_rewards(late, spec)
    assert second["pending"] == first["waiting"] + first["unpriceable"] and second["inserted"] > 0
    now = dict(late.execute("SELECT rollout_id, reward_usd FROM rewards").fetchall())
    assert {k: now[k] for k in have} == have  # earlier rows untouched
    all_prices = {}
    for t, d, o, c, a in late.execute("SELECT ticker, date, open, close, adj_close FROM prices ORDER BY ticker, date").fetchall():
        all_prices.setdefault(t, []).append((d, o, c, a))
    for r in sub:
        want = reference(r, all_prices, spec)
        assert (r["rollout_id"] in now) == (want is not None)
        if want:
            assert abs(now[r["rollout_id"]] - want["reward_usd"]) <= 1e-12
    late.close()


def test_rerun_changes_nothing(store):
    con, rows, prices = store
    spec = rewards.RewardSpec(horizon_days=2)
    first = rewards.compute_rewards(con, spec)
    before = con.execute("SELECT * FROM rewards ORDER BY rollout_id, reward_spec").fetchall()
    again = rewards.compute_rewards(con, spec)
    after = con.execute("SELECT * FROM rewards ORDER BY rollout_id, reward_spec").fetchall()
    assert before == after
    assert again["inserted"] == 0 and again["pending"] == first["waiting"] + first["unpriceable"]
    assert again["total"] == first["total"] and again["unpriceable_states"] == first["unpriceable_states"]


def test_repeated_rollout_is_refused(store, tmp_path):
    con, rows, prices = store
    dup = db.connect(tmp_path / "dup.duckdb")
    dup.register("p", con.execute("SELECT * FROM prices WHERE ticker IN ('BMY', 'ICE')").df())
    dup.execute("INSERT INTO prices SELECT * FROM p")
    sub = [r for r in rows if r["tickers"] == ["BMY", "ICE"]][:8]
    _store_decisions(dup, sub + sub[:1])  # the same rollout twice in the replay buffer
    with pytest.raises(ValueError, match=f"more than once.*{sub[0]['rollout_id']}"):
        rewards.compute_rewards(dup, rewards.RewardSpec())
    assert dup.execute("SELECT count(*) FROM rewards").fetchall() == [(0,)]  # nothing half-written
    dup.execute("CREATE OR REPLACE TABLE replay AS SELECT DISTINCT * FROM replay")
    assert rewards.compute_rewards(dup, rewards.RewardSpec())["inserted"] == len(sub)
    dup.close()

def test_spec_name_is_versioned():
    base = rewards.RewardSpec()
    assert base.reward_spec == rewards.RewardSpec().reward_spec
    names = {rewards.RewardSpec(**kw).reward_spec for kw in
             [{}, {"horizon_days": 2}, {"entry": "decision_close"}, {"pairwise": "allocation"}, {"cost_bps": 1.0},
              {"risk_lambda": 0.1}, {"invalid_penalty_usd": 0.5}, {"max_entry_gap_days": 10},
              {"listwise": "rank_weighted"}]}
    assert len(names) == 9
    assert base.reward_spec.endswith(",sql=" + rewards.sql_sha256()[:8])
    # the default gap is not in the name, so the default spec keeps the parameters of its name
    assert base.reward_spec == ("usd1:h=1,entry=next_open,pairwise=long_short,cost_bps=5,risk_lambda=0,"
                                "invalid_penalty_usd=0.02,listwise=top_bottom,sql=" + rewards.sql_sha256()[:8])
    assert ",max_entry_gap_days=10," in rewards.RewardSpec(max_entry_gap_days=10).reward_spec
    for bad in [{"horizon_days": 0}, {"entry": "open"}, {"pairwise": "x"}, {"cost_bps": -1}, {"risk_lambda": float("nan")},
                {"max_entry_gap_days": 0}, {"max_entry_gap_days": 2.5}, {"max_entry_gap_days": True}, {"listwise": "x"}]:
        with pytest.raises(ValueError):
            rewards.RewardSpec(**bad)


def test_advantages_match_grpo_definitions(store):
    con, rows, prices = store
    spec = rewards.RewardSpec()
    rewards.compute_rewards(con, spec)
    adv = con.execute("SELECT a.state_id, a.reward_usd, a.advantage, a.advantage_drgrpo, a.group_size, a.zero_variance "
                      "FROM advantages AS a JOIN replay AS r USING (rollout_id) WHERE a.reward_spec = ?",
                      [spec.reward_spec]).fetchall()
    groups = {}
    for s, r, *_ in adv:
        groups.setdefault(s, []).append(r)
    assert len(adv) == con.execute("SELECT count(*) FROM rewards WHERE reward_spec = ?", [spec.reward_spec]).fetchone()[0]
    zero = 0
    for s, r, a, a_dr, n, zv in adv:
        g = groups[s]
        mean, std = statistics.fmean(g), statistics.stdev(g) if len(g) > 1 else 0.0
        assert n == len(g) and zv == (max(g) == min(g))
        assert abs(a_dr - (r - mean)) <= 1e-12 and abs(a - (r - mean) / (std + 1e-4)) <= 1e-9
        zero += zv
    assert zero > 0  # e.g. hold/invalid-only groups exist


def test_advantages_view_in_migration_is_the_sql_file():
    assert db.sql_text("advantages").strip().split("CREATE OR REPLACE VIEW")[1] in db.sql_text("migrations/015_advantage_self")


def _write_actions(path: Path) -> None:
    path.write_text(
        "decision_date,mode,ticker_a,ticker_b,action,proportion\n"
        "2015-03-06,pairwise,O,AAPL,A,\n"
        "2015-07-16,pairwise,ES,ICE,B,0.25\n"
        "2015-07-16,elementwise,DHR,,buy,\n"
        "2016-01-11,elementwise,O,,1.5,\n"
        "2016-01-11,elementwise,O,,,\n"
        "2018-02-07,pairwise,AAPL,ICE,A,\n")


def test_preview_uses_the_same_sql(store, tmp_path):
    con, rows, prices = store
    csv = tmp_path / "actions.csv"
    _write_actions(csv)
    spec = rewards.RewardSpec(pairwise="allocation")
    out = rewards.preview(con, csv, spec)
    assert list(out.columns) == ["decision_date", "mode", "ticker_a", "ticker_b", "action", "proportion",
                                 "entry_date", "exit_date", "reward_usd", "flags", "status", "reason"]
    assert out["status"].tolist() == ["error"] + ["rewarded"] * 4 + ["not_matured"]
    refs = [
        reference({"tickers": ["O", "AAPL"], "decision_date": date(2015, 3, 6), "mode": "pairwise", "valid": True, "action": "A", "proportion": 1.0}, prices, spec),
        reference({"tickers": ["ES", "ICE"], "decision_date": date(2015, 7, 16), "mode": "pairwise", "valid": True, "action": "B", "proportion": 0.25}, prices, spec),
        reference({"tickers": ["DHR"], "decision_date": date(2015, 7, 16), "mode": "elementwise", "valid": True, "position": 1.0}, prices, spec),
        reference({"tickers": ["O"], "decision_date": date(2016, 1, 11), "mode": "elementwise", "valid": True, "position": 1.5}, prices, spec),
        reference({"tickers": ["O"], "decision_date": date(2016, 1, 11), "mode": "elementwise", "valid": False}, prices, spec),
    ]
    for i, ref in enumerate(refs):
        if ref is not None:
            assert abs(out["reward_usd"][i] - ref["reward_usd"]) <= 1e-12
    assert refs[0] is None and out["reward_usd"].isna()[0]  # O/AAPL 03-06: entry 03-23, beyond the gap
    assert out["flags"][2] == "open_imputed"  # DHR has no open on 2015-07-17
    assert out["reward_usd"][4] == -spec.invalid_penalty_usd
    assert out["reward_usd"].isna()[5]  # 2018-02-07 is the last day of the data: not matured
    assert out["reason"][5].startswith("not matured")


def test_preview_never_prices_a_decision_on_another_day_silently(store, tmp_path):
    """No data on T, a Saturday, a leg without a price on T, an entry beyond the gap: error rows naming the reason;
    not matured says so; a wider gap prices the gap's row on its real entry day."""
    con, rows, prices = store
    csv = tmp_path / "far.csv"
    csv.write_text(
        "decision_date,mode,ticker_a,ticker_b,action\n"
        "2010-01-04,pairwise,O,AAPL,A\n"      # before any price in the store (it starts 2013-02-08)
        "2015-07-18,pairwise,ES,ICE,B\n"      # a Saturday
        "2015-07-18,elementwise,DHR,,buy\n"   # a Saturday
        "2015-03-10,pairwise,O,AAPL,A\n"      # O has no price 2015-03-09..20
        "2015-03-06,pairwise,O,AAPL,A\n"      # O and AAPL next trade together on 03-23
        "2018-02-07,pairwise,AAPL,ICE,A\n"    # the last day of the data
        "2015-07-16,pairwise,ES,ICE,B\n")
    out = rewards.preview(con, csv)
    assert out["status"].tolist() == ["error"] * 5 + ["not_matured", "rewarded"]
    reasons = out["reason"].tolist()
    assert reasons[0] == "no trading on 2010-01-04 (no prices in the store on that date)"
    assert reasons[1] == reasons[2] == "no trading on 2015-07-18 (no prices in the store on that date)"
    assert reasons[3] == "no price on 2015-03-10 for O"
    assert reasons[4] == ("entry 2015-03-23 (the first trading day of both legs after T) is 17 days after T, more "
                          "than max_entry_gap_days=5")
    assert reasons[5] == "not matured: the exit day, trading day 1 after T, is not in prices yet"
    assert out["reason"].isna().tolist() == [False] * 6 + [True]
    assert out["reward_usd"].notna().tolist() == [False] * 6 + [True]
    assert out["entry_date"].isna().tolist() == [True] * 6 + [False]
    close = rewards.preview(con, csv, rewards.RewardSpec(entry="decision_close"))
    assert close["status"].tolist() == ["error"] * 4 + ["rewarded", "not_matured", "rewarded"]
    assert close["reason"][3] == "no price on 2015-03-10 for O"
    wide = rewards.preview(con, csv, rewards.RewardSpec(max_entry_gap_days=20))
    assert wide["status"][4] == "rewarded" and str(wide["entry_date"][4])[:10] == "2015-03-23"
    assert wide["reward_usd"][4] == pytest.approx(reference(
        {"tickers": ["O", "AAPL"], "decision_date": date(2015, 3, 6), "mode": "pairwise", "valid": True, "action": "A"},
        prices, rewards.RewardSpec(max_entry_gap_days=20))["reward_usd"], abs=1e-12)


def test_states_that_cannot_be_priced_are_reported_and_the_rest_of_their_date_rewarded(store, tmp_path):
    """A state whose market is broken (a pairwise state with one ticker) or beyond the entry gap gets no reward and is
    reported; it never blocks the other states of its date, and a re-run reports it again and adds nothing."""
    con, rows, prices = store
    one = db.connect(tmp_path / "one.duckdb")
    one.register("p", con.execute("SELECT * FROM prices").df())
    one.execute("INSERT INTO prices SELECT * FROM p")
    sub = [r for r in rows if r["decision_date"] in (date(2015, 3, 6), date(2015, 7, 16), date(2015, 12, 22))]
    _store_decisions(one, sub)
    broken = "s-ES-ICE-2015-07-16-pairwise"
    one.execute("UPDATE states SET tickers = ['ES'] WHERE state_id = ?", [broken])
    counts = rewards.compute_rewards(one, rewards.RewardSpec())
    rewarded = {s for (s,) in one.execute("SELECT DISTINCT state_id FROM rewards").fetchall()}
    assert rewarded == {"s-ES-ICE-2015-07-16-elementwise", "s-BMY-ICE-2015-12-22-pairwise",
                        "s-BMY-ICE-2015-12-22-elementwise"}
    assert (counts["pending"], counts["inserted"], counts["waiting"], counts["unpriceable"]) == (32, 12, 0, 20)
    reasons = counts["unpriceable_states"]
    # O and DHR have no prices 2015-03-09..20: every state of 03-06 would enter on 03-23
    gap = {f"s-{m}-2015-03-06-{mode}" for m in ("O-AAPL", "DHR-O") for mode in ("pairwise", "elementwise")}
    assert set(reasons) == gap | {broken}
    assert reasons[broken] == "a pairwise decision on a state without a ticker B"
    assert all(reasons[s].startswith("entry 2015-03-23 ") and reasons[s].endswith("more than max_entry_gap_days=5")
               for s in gap)
    again = rewards.compute_rewards(one, rewards.RewardSpec())
    assert (again["inserted"], again["unpriceable"], again["unpriceable_states"]) == (0, 20, reasons)
    one.close()


@pytest.mark.parametrize("text, message", [
    ("decision_date,mode,ticker_a,action\n2015-13-01,pairwise,O,A\n", "line 2: decision_date"),
    ("decision_date,mode,ticker_a,ticker_b,action\n2015-03-06,pairwise,O,,A\n", "needs a ticker_b"),
    ("decision_date,mode,ticker_a,ticker_b,action\n2015-03-06,elementwise,O,,maybe\n", "line 2: action 'maybe'"),
    ("decision_date,mode,ticker_a,ticker_b,action\n2015-03-06,elementwise,ZZZZ,,buy\n", "ZZZZ"),
    ("date,mode\n2015-03-06,elementwise\n", "missing column"),
    ("", "bad.csv: empty file"),
    ("\n\n", "bad.csv: empty file"),
    ("decision_date,mode,ticker_a,action\n", "bad.csv: no decisions"),
])
def test_preview_bad_input_names_it(store, tmp_path, text, message):
    con, *_ = store
    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    with pytest.raises(ValueError, match=message):
        rewards.preview(con, csv)


def test_preview_cli(store, tmp_path):
    con, *_ = store
    path = tmp_path / "cli.duckdb"
    cli_con = db.connect(path)
    cli_con.register("p", con.execute("SELECT * FROM prices").df())
    cli_con.execute("INSERT INTO prices SELECT * FROM p")
    cli_con.close()
    csv, out = tmp_path / "actions.csv", tmp_path / "out.csv"
    _write_actions(csv)
    exe = str(Path(sys.executable).parent / "hitchhiker")
    p = subprocess.run([exe, "rewards", "preview", "--db", str(path), "--actions", str(csv), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    got = duckdb.sql(f"SELECT * FROM read_csv('{out}')").fetchall()
    assert len(got) == 6
    lib = rewards.preview(con, csv)
    assert abs(got[1][8] - lib["reward_usd"][1]) <= 1e-12 and got[0][10] == "error"
    p = subprocess.run([exe, "rewards", "preview", "--db", str(path), "--actions", str(tmp_path / "absent.csv")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "absent.csv" in p.stderr and "Traceback" not in p.stderr
    (tmp_path / "empty.csv").write_text("")
    p = subprocess.run([exe, "rewards", "preview", "--db", str(path), "--actions", str(tmp_path / "empty.csv")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "empty.csv: empty file" in p.stderr and "Traceback" not in p.stderr


def _write_replay(root, rows: list[dict]) -> None:
    """rows (from _decisions) as one replay file per group under root."""
    groups = {}
    for r in rows:
        groups.setdefault(r["group_id"], []).append(r)
    for gid, members in groups.items():
        first = members[0]
        replay.write_group(root, first["decision_date"], "-".join(sorted(first["tickers"])), gid, [
            {**{k: r[k] for k in ("rollout_id", "state_id", "group_id", "mode", "policy_version", "action", "proportion",
                                  "position", "valid")},
             "sample_index": int(r["rollout_id"][-1]), "temperature": 0.7, "top_p": 1.0, "prompt_ids": [1],
             "completion": "", "completion_ids": [2], "token_logprobs": [-0.1], "logprob_sum": -0.1, "advisory_text": "",
             "invalid_reason": None if r["valid"] else "test", "created_at": datetime(2016, 1, 4, tzinfo=timezone.utc)}
            for r in members])


def test_compute_rewards_over_an_s3_replay_root(store, s3, tmp_path):
    """The same groups on S3 and in a local folder get the same rewards; on S3 too the finished dates are not read."""
    con, rows, prices = store
    cut = date(2015, 12, 30)  # the 30th and 31st wait for the next year's prices
    sub = [r for r in rows if r["tickers"] in (["BMY", "ICE"], ["BMY"]) and date(2015, 12, 26) <= r["decision_date"] <= date(2015, 12, 31)]
    days = sorted({r["decision_date"] for r in sub})
    roots = {"s3": s3.url("rewards/replay"), "local": tmp_path / "replay"}
    got, stores = {}, {}
    for name, root in roots.items():
        stores[name] = db.connect(tmp_path / f"{name}.duckdb")
        stores[name].register("p", con.sql("SELECT * FROM prices WHERE ticker IN ('BMY', 'ICE')").to_arrow_table())
        stores[name].execute("INSERT INTO prices SELECT * FROM p WHERE date <= ?", [cut])
        _store_decisions(stores[name], sub)  # the states; the rollouts are read from the files instead
        stores[name].execute("DROP TABLE replay")
        _write_replay(root, sub)
        counts = rewards.compute_rewards(stores[name], rewards.RewardSpec(), root)
        # the 26th and 27th are a weekend: no trading on T, never rewarded
        assert (counts["dates_read"], counts["waiting"], counts["unpriceable"]) == (len(days), 16, 16)
        got[name] = stores[name].execute("SELECT rollout_id, reward_usd, entry_date, exit_date, flags FROM rewards "
                                         "ORDER BY rollout_id").fetchall()
    assert got["s3"] == got["local"] and len(got["s3"]) == len(sub) - 32
    for rollout_id, reward_usd, *_ in got["s3"][:8]:
        want = reference(next(r for r in sub if r["rollout_id"] == rollout_id), prices, rewards.RewardSpec())
        assert abs(reward_usd - want["reward_usd"]) <= 1e-12

    # A finished date's objects made unreadable: a run that opened them would fail.
    s3_store = stores["s3"]
    for url in storage.glob(storage.join(roots["s3"], "decision_date=2015-12-28/pair=*/*.parquet")):
        storage.write_bytes(url, b"not parquet")
    again = rewards.compute_rewards(s3_store, rewards.RewardSpec(), roots["s3"])
    assert (again["dates_read"], again["pending"], again["inserted"]) == (4, 32, 0)  # the weekend's dates are open
    s3_store.execute("INSERT INTO prices SELECT * FROM p WHERE date > ?", [cut])
    last = rewards.compute_rewards(s3_store, rewards.RewardSpec(), roots["s3"])
    assert (last["dates_read"], last["inserted"], last["waiting"], last["total"]) == (4, 16, 0, len(sub) - 16)
    for c in stores.values():
        c.close()
