"""Rule baselines on hand-made prices: point-in-time past returns, and each rule's decisions."""
from datetime import date

import duckdb
import pandas as pd
import pytest

from hitchhiker import baselines, db

# closes of two stocks on five trading days (a weekend in between)
DAYS = [date(2017, 1, 5), date(2017, 1, 6), date(2017, 1, 9), date(2017, 1, 10), date(2017, 1, 11)]
CLOSES = {"UPP": [10.0, 11.0, 12.0, 12.5, 99.0], "DWN": [20.0, 19.0, 18.0, 18.9, 1.0]}


@pytest.fixture
def con():
    c = duckdb.connect()
    db.migrate(c)
    for t, closes in CLOSES.items():
        for d, px in zip(DAYS, closes):
            c.execute("INSERT INTO prices VALUES (?, ?, NULL, NULL, NULL, ?, NULL, 1000, NULL, 'test', now())", [t, d, px])
    yield c
    c.close()


def _states(rows, mode="pairwise"):
    return pd.DataFrame([{"state_id": f"s{i}", "decision_date": d, "mode": mode, "tickers": list(t),
                          "pair": "-".join(sorted(t)), "history_days": h} for i, (d, t, h) in enumerate(rows)])


def test_past_returns_are_point_in_time(con):
    st = _states([(DAYS[3], ("UPP", "DWN"), 2), (DAYS[1], ("DWN", "UPP"), 3)])
    r = baselines.past_returns(con, st).set_index("state_id")
    # on Jan 10: last return 12.5/12 - 1; over 2 trading days 12.5/11 - 1; the 99.0 of Jan 11 is never used
    assert r.loc["s0", "last_return_a"] == pytest.approx(12.5 / 12 - 1)
    assert r.loc["s0", "past_return_a"] == pytest.approx(12.5 / 11 - 1)
    assert r.loc["s0", "last_return_b"] == pytest.approx(18.9 / 18 - 1)
    assert r.loc["s0", "past_return_b"] == pytest.approx(18.9 / 19 - 1)
    # on Jan 6 there are not 3 earlier trading days: no past return (a tie for the rules), last return exists
    assert pd.isna(r.loc["s1", "past_return_a"]) and r.loc["s1", "last_return_a"] == pytest.approx(19 / 20 - 1)
    con.execute("UPDATE prices SET close = 5000 WHERE date = ?", [DAYS[4]])
    got = baselines.past_returns(con, st).set_index("state_id")
    assert got.drop(columns="past_returns").equals(r.drop(columns="past_returns"))
    # every leg's past return in prompt order (what the listwise rules sort): the same numbers as a/b
    for state_id, legs in got["past_returns"].items():
        expected = [r.loc[state_id, "past_return_a"], r.loc[state_id, "past_return_b"]]
        pd.testing.assert_series_equal(pd.Series(legs), pd.Series(expected))


def test_pairwise_rules(con):
    st = _states([(DAYS[3], ("UPP", "DWN"), 2), (DAYS[3], ("DWN", "UPP"), 2), (DAYS[2], ("DWN", "UPP"), 2)])
    ret = baselines.past_returns(con, st)
    assert list(baselines.decide("momentum", st, ret)["action"]) == ["A", "B", "B"]  # UPP rose more every time
    assert list(baselines.decide("mean_reversion", st, ret)["action"]) == ["B", "A", "A"]
    a = baselines.decide("always_a", st)
    assert list(a["action"]) == ["A"] * 3 and list(a["proportion"]) == [1.0] * 3
    assert list(a["ticker_a"]) == ["UPP", "DWN", "DWN"] and list(a["ticker_b"]) == ["DWN", "UPP", "UPP"]
    assert list(a.columns) == baselines.DECISION_COLUMNS
    with pytest.raises(ValueError, match="needs past returns"):
        baselines.decide("momentum", st)
    with pytest.raises(ValueError, match="not one of"):
        baselines.decide("always_buy", st)


def test_random_is_seeded_per_state_and_balanced():
    st = _states([(DAYS[0], ("UPP", "DWN"), 2)] * 2000).assign(state_id=[f"s{i}" for i in range(2000)])
    first = baselines.decide("random", st, seed=1)
    share_a = (first["action"] == "A").mean()
    assert 0.45 < share_a < 0.55
    # the same state gets the same coin whatever the order of the rows
    shuffled = baselines.decide("random", st.iloc[::-1], seed=1).set_index("state_id")["action"]
    assert first.set_index("state_id")["action"].equals(shuffled.loc[first["state_id"]])
    assert not first["action"].equals(baselines.decide("random", st, seed=2)["action"])


def test_buy_and_hold_holds_the_universe_of_each_day():
    st = _states([(DAYS[3], ("UPP", "DWN"), 2), (DAYS[3], ("DWN", "XYZ"), 2), (DAYS[4], ("UPP", "DWN"), 2)])
    bh = baselines.decide("buy_and_hold", st)
    assert sorted(zip(bh["decision_date"], bh["ticker_a"])) == [
        (DAYS[3], "DWN"), (DAYS[3], "UPP"), (DAYS[3], "XYZ"), (DAYS[4], "DWN"), (DAYS[4], "UPP")]
    assert set(bh["mode"]) == {"elementwise"} and set(bh["position"]) == {1.0} and bh["state_id"].isna().all()


def test_elementwise_rules(con):
    st = _states([(DAYS[3], ("UPP",), 2), (DAYS[3], ("DWN",), 3)], mode="elementwise")
    ret = baselines.past_returns(con, st)
    m = baselines.decide("momentum", st, ret)
    assert list(m["action"]) == ["buy", "sell"] and list(m["position"]) == [1.0, -1.0]  # DWN 18.9/20 - 1 < 0
    assert list(baselines.decide("mean_reversion", st, ret)["action"]) == ["sell", "buy"]
    assert list(baselines.decide("always_buy", st)["position"]) == [1.0, 1.0]
    assert set(baselines.decide("random", st)["action"]) <= {"buy", "hold", "sell"}
    with pytest.raises(ValueError, match="no states"):
        baselines.decide("random", st.iloc[:0])


def test_listwise_rules(con):
    for d, px in zip(DAYS, [30.0, 30.0, 30.0, 31.5, 30.0]):  # a third stock: +5 % over 2 days to Jan 10
        con.execute("INSERT INTO prices VALUES ('MID', ?, NULL, NULL, NULL, ?, NULL, 1000, NULL, 'test', now())", [d, px])
    # Jan 10 over 2 days: UPP 12.5/11 - 1 = +13.6 %, MID +5 %, DWN 18.9/19 - 1 = -0.5 %; Jan 6 has no 3-day history
    st = _states([(DAYS[3], ("DWN", "UPP", "MID"), 2), (DAYS[3], ("MID", "DWN", "UPP"), 2),
                  (DAYS[1], ("DWN", "MID", "UPP"), 3)], mode="listwise")
    ret = baselines.past_returns(con, st)
    m = baselines.decide("momentum", st, ret)
    assert list(m["action"]) == ["B>C>A", "C>A>B", "A>B>C"]  # no history: every return 0, ties keep the prompt order
    assert list(baselines.decide("mean_reversion", st, ret)["action"]) == ["A>C>B", "B>A>C", "A>B>C"]
    assert [list(t) for t in m["tickers"]] == [list(t) for t in st["tickers"]]  # the basket the rewards SQL prices
    assert list(m["ticker_a"]) == ["DWN", "MID", "DWN"] and m["valid"].all()
    with pytest.raises(ValueError, match="not one of"):
        baselines.decide("always_a", st)

    many = _states([(DAYS[3], ("DWN", "UPP", "MID"), 2)] * 3000, mode="listwise").assign(
        state_id=[f"s{i}" for i in range(3000)])
    rand = baselines.decide("random", many, seed=1)
    assert all(sorted(a.split(">")) == ["A", "B", "C"] for a in rand["action"])
    shares = rand["action"].value_counts(normalize=True)
    assert len(shares) == 6 and shares.between(0.14, 0.19).all()  # each of the 3! orders about 1/6
    again = baselines.decide("random", many.iloc[::-1], seed=1).set_index("state_id")["action"]
    assert rand.set_index("state_id")["action"].equals(again.loc[rand["state_id"]])  # per state, not per row
