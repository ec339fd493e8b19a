"""Listwise states (issue 20): baskets of K distinct tickers, no basket twice on a date, a fair letter shuffle,
and the same point-in-time, budget, anonymization and news-fence rules as pairs, on the real data.

The leakage properties cover listwise states in test_leakage.py; the contract's listwise parser in test_contract.py."""
from __future__ import annotations

import json
import re
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

from hitchhiker import contract, db, listwise, prices, render, states
from hitchhiker.states import StatesConfig, build_states
from states_helpers import small_tokenizer

SHIPPED = Path(__file__).resolve().parent.parent / "hitchhiker" / "data" / "prices"
# chi-square critical values at p = 0.001 by degrees of freedom (no scipy in the venv)
CHI2_001 = {2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458, 7: 24.322, 27: 55.476}
REAL = ["A", "AAP", "ABBV", "ABC"]
REAL_NAMES = {"A": ["Agilent Technologies", "Agilent"], "AAP": ["Advance Auto Parts"], "ABBV": ["AbbVie"],
              "ABC": ["AmerisourceBergen Corporation", "AmerisourceBergen"]}


@pytest.fixture(scope="module")
def tok():
    return small_tokenizer()


@pytest.fixture(scope="module")
def shipped():
    """The 10 shipped tickers' daily prices 2013-02..2018-02, the (date, ticker)s with 11 prices up to the date
    (what a state of history_days=10 needs) and each (date, ticker)'s next-session close-to-close return."""
    con = db.connect(":memory:")
    prices.ingest_csv(con, str(SHIPPED))
    rows = con.execute("""
        SELECT date, ticker, row_number() OVER w AS n, lead(close) OVER w / close - 1 AS next_ret
        FROM prices WINDOW w AS (PARTITION BY ticker ORDER BY date) ORDER BY date, ticker""").fetchall()
    eligible = [(d, t) for d, t, n, _ in rows if n >= 11]
    nxt = {(d, t): r for d, t, _, r in rows if r is not None}
    return con, eligible, nxt


def _chi2(counts: list[int]) -> float:
    e = sum(counts) / len(counts)
    return sum((c - e) ** 2 / e for c in counts)


@pytest.mark.parametrize("k", [3, 4, 5, 8])
def test_baskets_are_k_distinct_eligible_tickers_never_twice_on_a_date(shipped, k):
    _, eligible, _ = shipped
    baskets = listwise.draw_baskets(db.connect(":memory:"), eligible, k, 20, seed=0)
    ok = set(eligible)
    per_date = Counter(d for d, _, _ in baskets)
    n_dates = len({d for d, _ in eligible})
    assert len(per_date) == n_dates and max(per_date.values()) == 20  # 10 tickers: C(10, k) >= 45 sets, room for 20
    seen = set()
    for d, tickers, pair in baskets:
        assert len(tickers) == k == len(set(tickers))
        assert all((d, t) in ok for t in tickers)
        assert pair == "-".join(sorted(tickers))
        assert (d, frozenset(tickers)) not in seen, (d, tickers)
        seen.add((d, frozenset(tickers)))


def test_the_letter_of_the_best_realized_stock_is_uniform_and_letters_are_independent_of_tickers(shipped):
    _, eligible, nxt = shipped
    for k in (3, 4, 5):
        baskets = listwise.draw_baskets(db.connect(":memory:"), eligible, k, 20, seed=0)
        best = Counter()
        for d, tickers, _ in baskets:
            if all((d, t) in nxt for t in tickers):
                rets = [nxt[(d, t)] for t in tickers]
                best[rets.index(max(rets))] += 1
        counts = [best[i] for i in range(k)]
        stat = _chi2(counts)
        print(f"K={k}: best realized stock by letter {counts}, chi2={stat:.2f} (df={k - 1}, p=0.001 at {CHI2_001[k - 1]})")
        assert sum(counts) > 20_000 and stat < CHI2_001[k - 1]
        if k == 4:  # each ticker sits at each letter equally often: a shuffle, not a fixed (e.g. sorted) order
            tickers = sorted({t for _, t in eligible})
            by = Counter((t, i) for _, ts, _ in baskets for i, t in enumerate(ts))
            stat = 0.0
            for t in tickers:
                row = [by[(t, i)] for i in range(k)]
                stat += _chi2(row)
            print(f"ticker x letter independence: chi2={stat:.2f} (df=27, p=0.001 at {CHI2_001[27]})")
            assert stat < CHI2_001[27]


def test_baskets_are_deterministic_per_seed_and_depend_only_on_their_own_date(shipped):
    _, eligible, _ = shipped
    con = db.connect(":memory:")
    one = [e for e in eligible if e[0] == date(2016, 3, 1)]
    alone = listwise.draw_baskets(con, one, 4, 20, seed=0)
    in_all = [b for b in listwise.draw_baskets(con, eligible, 4, 20, seed=0) if b[0] == date(2016, 3, 1)]
    assert alone == in_all == listwise.draw_baskets(con, one, 4, 20, seed=0)
    assert listwise.draw_baskets(con, one, 4, 20, seed=1) != alone


def test_bad_list_size_or_count_is_a_clear_error(shipped):
    _, eligible, _ = shipped
    for k in (2, 9, "4", None):
        with pytest.raises(ValueError, match="list_size"):
            StatesConfig(mode="listwise", list_size=k)
    with pytest.raises(ValueError, match="max_lists_per_date"):
        StatesConfig(mode="listwise", max_lists_per_date=0)
    with pytest.raises(ValueError, match="list_size"):
        listwise.draw_baskets(db.connect(":memory:"), eligible, 2, 20, seed=0)


@pytest.fixture(scope="module")
def real(shared_data, tok):
    """A, AAP, ABBV, ABC and the Benzinga headlines; listwise states of 2016-03 for K = 3 and 4."""
    from hitchhiker import news

    con = db.connect(":memory:")
    prices.ingest_csv(con, [shared_data / "prices" / "sp500_5yr" / f"{t}_data.csv" for t in REAL])
    news.ingest_csv(con, shared_data / "news" / "benzinga_analyst_ratings_sample.csv")
    states.set_company_names(con, REAL_NAMES)
    days = states.trading_days(con, "2016-03-01", "2016-03-31")
    for k in (3, 4):
        build_states(con, StatesConfig(mode="listwise", list_size=k, max_prompt_tokens=1024), days, REAL, tokenizer=tok)
    got = con.execute("SELECT decision_date, tickers, pair, messages, features, placeholders, prompt_tokens, action_format "
                      "FROM states WHERE mode = 'listwise' ORDER BY decision_date, pair").fetchall()
    return con, days, got


def test_real_listwise_states_anonymized_fenced_within_budget_and_before_the_cutoff(real):
    con, days, got = real
    assert len(got) == len(days) * (4 + 1)  # C(4, 3) baskets of 3, the one basket of 4
    shown = 0
    for day, tickers, pair, messages, features, placeholders, tokens, fmt in got:
        messages, features = json.loads(messages), json.loads(features)
        k = len(tickers)
        assert fmt == "ranking" and tokens <= 1024 and pair == "-".join(sorted(tickers))
        assert json.loads(placeholders) == {f"Stock {contract.LETTERS[i]}": t for i, t in enumerate(tickers)}
        assert sorted(features) == list(contract.LETTERS[:k])
        assert messages[0]["content"] == render.SYSTEM_FULL  # headlines are data between the fences, not instructions
        user = messages[1]["content"]
        assert user.endswith(contract.instructions("listwise", list_size=k))
        text = "\n".join(m["content"] for m in messages).lower()
        for names in REAL_NAMES.values():
            assert not any(n.lower() in text for n in names)
        for t in tickers:
            assert not re.search(rf"\(({t})\)|\$({t})\b" + (rf"|\b{t}\b" if len(t) > 1 else ""), user, re.IGNORECASE if len(t) > 2 else 0)
        for i in range(k):
            block = user.split(f"\n\nStock {contract.LETTERS[i]}\n", 1)[1].split("\n\n", 1)[0]
            n = features[contract.LETTERS[i]]["headlines"]
            if n:
                fenced = block.split(render.NEWS_OPEN + "\n", 1)[1].split("\n" + render.NEWS_CLOSE, 1)[0].split("\n")
                assert len(fenced) == n and all(date.fromisoformat(x[:10]) <= day for x in fenced)
                shown += n
    assert shown > 100
    # AAP's Barclays initiation came out at 16:29 New York time on 2016-03-30: after that day's close
    late = "Barclays Initiates Coverage on Stock"
    with_aap = {d: [m for dd, ts, _, m, *_ in got if dd == d and "AAP" in ts] for d in (date(2016, 3, 30), date(2016, 3, 31))}
    assert with_aap[date(2016, 3, 30)] and not any(late in m for m in with_aap[date(2016, 3, 30)])
    assert all(late in m for m in with_aap[date(2016, 3, 31)])


def test_rebuilding_listwise_states_is_idempotent(real, tok):
    con, days, got = real
    before = con.execute("SELECT count(*) FROM states").fetchall()[0][0]
    build_states(con, StatesConfig(mode="listwise", list_size=3, max_prompt_tokens=1024), days[:3], REAL, tokenizer=tok)
    assert con.execute("SELECT count(*) FROM states").fetchall()[0][0] == before
