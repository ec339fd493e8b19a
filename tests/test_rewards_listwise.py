"""Listwise rewards (issue 20) against a pure-Python reference written from the issue's rules, not from the SQL:
a basket's trading days are the dates on which all K legs have prices; entry, exit, the entry gap, adjustment,
costs and the risk penalty follow the pair rules; top_bottom is r_first - r_last - 2 cost, rank_weighted weighs
rank i by (K + 1 - 2i) scaled so that the longs sum to +1 and the shorts to -1. Real sp500_5yr prices with
holidays, ten-day gaps and missing opens; K = 3, 4 and 5."""
from __future__ import annotations

import itertools
from collections import Counter
import random
import statistics
from datetime import date, timedelta

import pandas as pd
import pytest

from hitchhiker import contract, db, rewards

TICKERS = ["O", "DHR", "ES", "ICE", "BMY", "AAPL", "REGN", "VRTX", "FTV", "UA"]
# windows with gaps of 10 days on O/DHR/ES (March 2015), DHR's missing open (2015-07-17) and others (2016-01-12),
# Christmas / New Year, Thanksgiving, July 4th, and the end of the data (not matured)
WINDOWS = [("2015-03-02", "2015-03-24"), ("2015-07-13", "2015-07-21"), ("2016-01-07", "2016-01-14"),
           ("2015-12-21", "2016-01-06"), ("2016-11-21", "2016-11-29"), ("2016-06-28", "2016-07-06"),
           ("2018-01-31", "2018-02-10")]
HISTORY_DAYS = 5
SPECS = [rewards.RewardSpec(listwise=lw, horizon_days=h, entry=e, risk_lambda=lam, cost_bps=7.5)
         for lw, h, e, lam in itertools.product(rewards.LISTWISE_STYLES, [1, 3], rewards.ENTRIES, [0.0, 0.5])]


@pytest.fixture(scope="module")
def market(shared_data):
    con = db.connect(":memory:")
    files = [str(shared_data / "prices" / "sp500_5yr" / f"{t}_data.csv") for t in TICKERS]
    con.execute(
        "INSERT INTO prices SELECT Name, date, open, high, low, close, NULL, volume, NULL, 'csv', now() "
        "FROM read_csv($f, header = true, columns = {'date': 'DATE', 'open': 'DOUBLE', 'high': 'DOUBLE', "
        "'low': 'DOUBLE', 'close': 'DOUBLE', 'volume': 'BIGINT', 'Name': 'VARCHAR'})", {"f": files})
    px: dict[str, dict[date, tuple]] = {}
    for t, d, o, c, a in con.execute("SELECT ticker, date, open, close, adj_close FROM prices").fetchall():
        px.setdefault(t, {})[d] = (o, c, a)
    rng = random.Random(20)
    rows = []
    for (first, last), k in itertools.product(WINDOWS, (3, 4, 5)):
        d = date.fromisoformat(first)
        while d <= date.fromisoformat(last):  # every calendar day: weekends and holidays must price nothing
            for _ in range(3):
                basket = rng.sample(TICKERS, k)
                ranking = rng.sample(contract.LETTERS[:k], k)
                valid = rng.random() > 0.05
                rows.append({"decision_id": len(rows), "decision_date": d, "mode": "listwise", "ticker_a": basket[0],
                             "ticker_b": basket[1], "tickers": basket, "action": ">".join(ranking) if valid else None,
                             "proportion": None, "position": None, "valid": valid, "history_days": HISTORY_DAYS})
            d += timedelta(days=1)
    frame = pd.DataFrame(rows)
    for c in ("proportion", "position"):
        frame[c] = frame[c].astype("float64")
    return con, px, frame


def reference(row: dict, px: dict, spec: rewards.RewardSpec) -> dict | None:
    """The reward of one listwise decision, or None when it has none (not a trading day of every leg, beyond the
    entry gap, not matured)."""
    legs = row["tickers"]
    k, T = len(legs), row["decision_date"]
    common = set.intersection(*(set(px[t]) for t in legs))
    if T not in common:
        return None
    after = sorted(d for d in common if d > T)
    if len(after) < spec.horizon_days:
        return None
    entry = after[0] if spec.entry == "next_open" else T
    if spec.entry == "next_open" and (entry - T).days > spec.max_entry_gap_days:
        return None
    exit_ = after[spec.horizon_days - 1]

    def adj(t, d, which):
        o, c, a = px[t][d]
        f = a / c if a is not None and c else 1.0
        return ((c if o is None else o) if which == "open" else c) * f

    rets, sigmas, imputed = [], [], False
    for t in legs:
        buy = adj(t, entry, "open" if spec.entry == "next_open" else "close")
        imputed |= spec.entry == "next_open" and px[t][entry][0] is None
        rets.append(adj(t, exit_, "close") / buy - 1.0)
        own = sorted(d for d in px[t] if d <= T)[-(HISTORY_DAYS + 1):]  # the ticker's own days, T's window
        daily = [adj(t, b, "close") / adj(t, a, "close") - 1.0 for a, b in zip(own, own[1:])]
        sigmas.append(statistics.stdev(daily) if len(daily) >= 2 else 0.0)
    if not row["valid"]:
        return {"reward_usd": -spec.invalid_penalty_usd, "entry_date": entry, "exit_date": exit_, "imputed": imputed}
    rank = {letter: i + 1 for i, letter in enumerate(row["action"].split(">"))}
    if spec.listwise == "top_bottom":
        w = [1.0 if rank[contract.LETTERS[j]] == 1 else -1.0 if rank[contract.LETTERS[j]] == k else 0.0 for j in range(k)]
    else:
        raw = [k + 1 - 2 * rank[contract.LETTERS[j]] for j in range(k)]
        longs = sum(x for x in raw if x > 0)
        w = [x / longs for x in raw]
        assert abs(sum(x for x in w if x > 0) - 1) < 1e-15 and abs(sum(x for x in w if x < 0) + 1) < 1e-15
    gross = sum(abs(x) for x in w)
    reward = (sum(wi * ri for wi, ri in zip(w, rets)) - spec.cost_bps / 1e4 * gross
              - spec.risk_lambda * sum(abs(wi) * s for wi, s in zip(w, sigmas)))
    return {"reward_usd": reward, "entry_date": entry, "exit_date": exit_, "imputed": imputed}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.listwise}-h{s.horizon_days}-{s.entry}-risk{s.risk_lambda:g}")
def test_listwise_sql_equals_the_python_reference(market, spec):
    con, px, frame = market
    rewards.set_spec_variables(con, spec)
    with rewards.flat_decisions(con, frame):
        got = con.execute(f"SELECT decision_id, reward_usd, entry_date, exit_date, flags FROM ({db.sql_text('rewards')})").fetchall()
    got = {r[0]: r[1:] for r in got}
    want = {r["decision_id"]: reference(r, px, spec) for r in frame.to_dict("records")}
    want = {i: w for i, w in want.items() if w is not None}
    assert set(got) == set(want)
    worst = max(abs(got[i][0] - w["reward_usd"]) for i, w in want.items())
    for i, w in want.items():
        assert (got[i][1], got[i][2]) == (w["entry_date"], w["exit_date"]), i
        assert ("open_imputed" in (got[i][3] or "")) == w["imputed"], i
    print(f"{spec.reward_spec}: {len(want)} of {len(frame)} priced, max |SQL - reference| = {worst:.2e}")
    assert worst <= 1e-12
    sizes = {len(frame["tickers"][i]) for i in want}
    assert sizes == {3, 4, 5}
    assert len(want) < len(frame) - 100  # weekends, holidays, gaps and the end of the data price nothing
    if spec.entry == "next_open":
        assert any(w["imputed"] for w in want.values())  # the real missing opens were reached


def test_listwise_states_to_rollouts_to_rewards_to_advantages_and_training_groups(tmp_path):
    """End to end on the shipped prices with the small default model: the rollouts stage samples listwise groups into
    the replay buffer (partition key: the sorted tickers), the rewards stage prices them on their own baskets, and the
    advantages view and the training groups take them as they are."""
    from pathlib import Path

    from hitchhiker import prices, rollouts, states
    from hitchhiker.policy import PolicyConfig, load_tokenizer

    path = tmp_path / "lw.duckdb"
    con = db.connect(path)
    prices.ingest_csv(con, str(Path(__file__).resolve().parent.parent / "hitchhiker" / "data" / "prices"))
    days = states.trading_days(con, "2016-03-01", "2016-03-02")
    ids = states.build_states(con, states.StatesConfig(mode="listwise", style="trend", list_size=3, max_lists_per_date=2),
                              days, tokenizer=load_tokenizer())
    assert len(ids) == 4
    con.close()
    root = tmp_path / "replay"
    summary = rollouts.generate_dates(path, "2016-03-01", "2016-03-02", PolicyConfig(),
                                      rollouts.SamplingConfig(group_size=4, max_new_tokens=12), root, mode="listwise")
    assert (summary["states"], summary["groups_written"], summary["states_failed"]) == (4, 4, {})
    con = db.connect(path)
    counts = rewards.compute_rewards(con, rewards.RewardSpec(listwise="rank_weighted"), root)
    assert (counts["inserted"], counts["waiting"], counts["unpriceable"]) == (16, 0, 0)
    # the replay partition is the state's pair (sorted tickers joined by '-'), the reward is priced on its basket
    assert con.execute("SELECT count(*) FROM replay AS r JOIN states AS s USING (state_id) "
                       "WHERE r.pair = s.pair AND r.pair = array_to_string(list_sort(s.tickers), '-')").fetchall() == [(16,)]
    rows = con.execute("SELECT r.valid, r.reward_usd, r.tickers, r.weights, s.tickers, p.action, p.invalid_reason "
                       "FROM rewards AS r JOIN states AS s USING (state_id) JOIN replay AS p USING (rollout_id)").fetchall()
    for valid, reward, tickers, weights, state_tickers, action, why in rows:
        assert tickers == state_tickers and len(weights) == 3
        if valid:
            assert sorted(weights) == [-1.0, 0.0, 1.0] and action.count(">") == 2
        else:
            assert reward == -0.02 and weights == [0.0, 0.0, 0.0] and why
    print(f"valid rankings: {sum(r[0] for r in rows)} of {len(rows)}; reasons: {sorted({r[6] for r in rows if r[6]})[:3]}")
    adv = con.execute("SELECT count(*), count(DISTINCT group_id), sum(group_size) FROM advantages").fetchall()[0]
    assert adv[:2] == (16, 4)
    train = con.execute(db.sql_text("train/groups"), {"reward_spec": counts["reward_spec"], "policy_version": None,
                                                      "start_date": None, "end_date": None}).df()
    assert len(train) == 16 and train["group_id"].nunique() == 4  # the GRPO batch's rows: listwise groups as they are
    print(f"advantages: {adv}; training rows: {len(train)}")
    con.close()


def test_preview_reads_listwise_rows_beside_the_other_modes(market, tmp_path):
    con, px, _ = market
    f = tmp_path / "mixed.csv"
    f.write_text("decision_date,mode,ticker_a,ticker_b,tickers,action,proportion\n"
                 "2016-03-01,listwise,,,AAPL|BMY|ICE|O,C>A>D>B,\n"
                 "2016-03-01,pairwise,AAPL,BMY,,A,\n"
                 "2016-03-01,elementwise,AAPL,,,buy,\n"
                 "2016-03-01,listwise,,,AAPL|BMY|ICE,,\n")
    for spec in (rewards.RewardSpec(), rewards.RewardSpec(listwise="rank_weighted")):
        out = rewards.preview(con, f, spec)
        assert out["status"].tolist() == ["rewarded"] * 4
        assert out["tickers"][0] == "AAPL|BMY|ICE|O" and out["ticker_a"][0] == "AAPL" and out["ticker_b"][0] == "BMY"
        row = {"tickers": ["AAPL", "BMY", "ICE", "O"], "decision_date": date(2016, 3, 1), "valid": True, "action": "C>A>D>B"}
        assert abs(out["reward_usd"][0] - reference(row, px, spec)["reward_usd"]) <= 1e-12
        assert out["reward_usd"][3] == -spec.invalid_penalty_usd
    only = tmp_path / "only.csv"
    only.write_text("decision_date,mode,tickers,action\n2016-03-01,listwise,AAPL|BMY|ICE|O,C>A>D>B\n")
    assert list(rewards.preview(con, only)["status"]) == ["rewarded"]  # a file of listwise rows only
    for body, message in [
        ("2016-03-01,listwise,AAPL|BMY|ICE|O,C>A>A>B", "line 2: .*duplicate letter A"),
        ("2016-03-01,listwise,AAPL|BMY|ICE|O,C>A>B", "line 2: .*missing letter D"),
        ("2016-03-01,listwise,AAPL|BMY|ICE,C>A>D", "line 2: .*unknown letter D"),
        ("2016-03-01,listwise,AAPL|BMY,A>B", "line 2: tickers 'AAPL|BMY' must be 3 to 8 distinct"),
        ("2016-03-01,listwise,AAPL|AAPL|ICE,A>B>C", "line 2: tickers .* distinct"),
        ("2016-03-01,listwise,,A>B>C", "line 2: listwise needs a tickers column"),
        ("2016-03-01,listwise,AAPL|BMY|NOPE,A>B>C", "no prices in the store: NOPE"),
    ]:
        bad = tmp_path / "bad.csv"
        bad.write_text("decision_date,mode,tickers,action\n" + body + "\n")
        with pytest.raises(ValueError, match=message):
            rewards.preview(con, bad)


def test_an_unpriced_basket_says_why_like_a_pair(market):
    """Preview/compute's reasons (sql/rewards/unpriced.sql) for the baskets the SQL leaves out, against the rules:
    no trading on T, a leg without a price on T (and later ones), the entry beyond the gap, or not matured yet."""
    con, px, frame = market
    spec = rewards.RewardSpec()
    rewards.set_spec_variables(con, spec)
    with rewards.flat_decisions(con, frame):
        priced = {r[0] for r in con.execute(f"SELECT decision_id FROM ({db.sql_text('rewards')})").fetchall()}
        con.execute("CREATE OR REPLACE TEMP VIEW unpriced_markets AS SELECT * FROM decision_markets "
                    f"WHERE market_key NOT IN ({','.join(map(str, priced))})")
        got = {r[0]: (r[1], r[2]) for r in con.execute(db.sql_text("rewards/unpriced")).fetchall()}
        con.execute("DROP VIEW unpriced_markets")
    open_days = set().union(*(set(p) for p in px.values()))
    last = max(open_days)
    kinds = Counter()
    for row in frame.to_dict("records"):
        if row["decision_id"] in priced:
            continue
        T, legs = row["decision_date"], row["tickers"]
        status, reason = got[row["decision_id"]]
        later = sorted(d for d in set.intersection(*(set(px[t]) for t in legs)) if d > T)
        if T > last:
            want = ("not_matured", "not matured")
        elif T not in open_days:
            want = ("error", "no trading on")
        elif any(T not in px[t] and max(px[t]) > T for t in legs):
            want = ("error", f"no price on {T} for " + ", ".join(t for t in legs if T not in px[t] and max(px[t]) > T))
        elif later and (later[0] - T).days > spec.max_entry_gap_days:
            want = ("error", f"entry {later[0]}")
        else:
            want = ("not_matured", "not matured")
        assert status == want[0] and reason.startswith(want[1]), (row, status, reason)
        kinds[reason.split(" ")[0] + " " + reason.split(" ")[1]] += 1
    print(dict(kinds))
    assert {"no trading", "no price", "not matured:"} <= set(kinds) and any(k.startswith("entry") for k in kinds)
