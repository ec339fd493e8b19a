"""The synthetic market: every couple's pairwise 'trend' state is decided by its trend words, and pays accordingly."""
from __future__ import annotations

import json

import pytest

from hitchhiker import db
from hitchhiker.synthetic import SyntheticMarket, couples, trading_days, write_market
from train_helpers import tiny_model_dir


def test_trend_word_decides_the_next_session(tmp_path):
    from hitchhiker.loop import outcomes as pair_outcomes
    from hitchhiker.policy import load_tokenizer
    from hitchhiker.states import StatesConfig, build_states

    market = SyntheticMarket(n_couples=2, n_days=40, seed=3)
    con = db.connect(tmp_path / "s.duckdb")
    report = write_market(con, market)
    assert report.inserted == 2 * 2 * 40
    assert write_market(con, market).inserted == 0  # idempotent
    tok = load_tokenizer(tiny_model_dir(tmp_path / "tiny"))
    days = trading_days(market)[10:38]
    cfg = StatesConfig(mode="pairwise", style="trend")
    ids = []
    for couple in couples(market):
        ids += build_states(con, cfg, days, tickers=couple, tokenizer=tok)
    assert len(ids) == 2 * len(days)
    outcomes = pair_outcomes(con, ids)  # every state's day has a next session: all priced
    assert set(outcomes) == set(ids)
    a_first = 0
    for sid, messages, features in con.execute(
        "SELECT state_id, messages, features FROM states WHERE list_contains(?, state_id)", [ids]
    ).fetchall():
        text = json.loads(messages)[-1]["content"]
        f = json.loads(features)
        words = (f["A"]["trend"], f["B"]["trend"])
        assert sorted(words) == ["DOWN", "UP"], words  # always decidable: one up, one down
        assert f"Stock A trend: {words[0]}." in text and f"Stock B trend: {words[1]}." in text
        ra, rb = outcomes[sid]
        assert (ra > rb) == (words[0] == "UP")  # the stock trending up wins the next session
        assert abs(ra - rb) > 0.01
        a_first += words[0] == "UP"
    assert 0.25 < a_first / len(ids) < 0.75  # which of A/B is up is not fixed


def test_bad_market_is_refused():
    from hitchhiker.synthetic import bars

    with pytest.raises(ValueError, match="noise"):
        bars(SyntheticMarket(noise=0.01, drift=0.01))


def test_the_listwise_variant_is_fully_ranked_by_its_trend_words(tmp_path):
    """Triples: every listwise 'trend' state (K = 3) shows UP, FLAT and DOWN once, and the rewards SQL's realized
    legs rank exactly that way, so a ranking UP > FLAT > DOWN orders every pair right."""
    import numpy as np
    import pandas as pd

    from hitchhiker import baselines, metrics
    from hitchhiker.evaluate import priced_for
    from hitchhiker.policy import load_tokenizer
    from hitchhiker.states import StatesConfig, build_states

    market = SyntheticMarket(n_couples=2, n_days=60, seed=5, basket_size=3)
    assert couples(market) == [["SYN00A", "SYN00B", "SYN00C"], ["SYN01A", "SYN01B", "SYN01C"]]
    con = db.connect(tmp_path / "l.duckdb")
    assert write_market(con, market).inserted == 2 * 3 * 60
    tok = load_tokenizer(tiny_model_dir(tmp_path / "tiny"))
    days = trading_days(market)[10:58]
    cfg = StatesConfig(mode="listwise", style="trend", list_size=3, max_lists_per_date=1)
    ids = [i for triple in couples(market) for i in build_states(con, cfg, days, tickers=triple, tokenizer=tok)]
    assert len(ids) == 2 * len(days)
    states = con.execute("SELECT state_id, decision_date, mode, tickers, pair, history_days, features FROM states "
                         "WHERE list_contains(?, state_id) ORDER BY state_id", [ids]).df()
    rank = {"UP": 0, "FLAT": 1, "DOWN": 2}
    by_words = []
    for f in states["features"]:
        words = [json.loads(f)[x]["trend"] for x in "ABC"]
        assert sorted(words) == ["DOWN", "FLAT", "UP"], words
        by_words.append(">".join(sorted("ABC", key=lambda x: rank[words["ABC".index(x)]])))
    decisions = baselines.fixed_decisions(states, "words", by_words, np.nan, np.nan)
    priced, _ = priced_for(con, decisions)
    assert priced["reward_usd"].notna().all()
    accuracy = [metrics.pair_ordering_accuracy(a, r) for a, r in zip(by_words, priced["leg_returns"])]
    assert accuracy == [1.0] * len(ids)
    firsts = pd.Series([a[0] for a in by_words]).value_counts(normalize=True)
    assert len(firsts) == 3 and firsts.min() > 0.15  # which letter is UP is not fixed
    with pytest.raises(ValueError, match="basket_size"):
        write_market(con, SyntheticMarket(basket_size=4))
