"""Benchmark: building states with set-based SQL vs a straightforward per-state pandas loop, in the same run.

Real data: every price file of ../shared/data/prices/sp500_5yr and the Benzinga headline sample. Two workloads:
pairwise states for 50 tickers x 250 trading days (max 20 pairs per date) and elementwise states for 500 tickers
x 20 trading days. Both builders render through the same code (hitchhiker.render), count tokens with the same
tokenizer (the default small model's, trained here on example_prompts) the same way (states._fit_and_hash: one
batch per build, a fresh piece cache each) and store rows the same way; they differ in how the numbers are found:
one SQL pass over all (date, ticker) at once vs pandas slicing per state. The baseline must produce 100 % the same
states (state_id and prompt_tokens; else FAIL), so the race is between equal outputs.

    .venv/bin/python bench/states.py [--quick]

Ends with `RESULT states ratio=<baseline time / hitchhiker time> target=>=10 PASS|FAIL`.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import math
import re
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _result import report  # noqa: E402  (bench/ is the script's own folder on sys.path)

from hitchhiker import contract, db, states  # noqa: E402
from hitchhiker.render import StockView, anonymize, clean_headline  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
warnings.filterwarnings("ignore", message="The inplace keyword")  # raised inside duckdb's .df() by pandas 3
PRICE_COLUMNS = "{'date': 'DATE', 'open': 'DOUBLE', 'high': 'DOUBLE', 'low': 'DOUBLE', 'close': 'DOUBLE', 'volume': 'BIGINT', 'Name': 'VARCHAR'}"
TARGET = 10.0


def load_real_data(con) -> None:
    """Prices of all 505 tickers and the dated Benzinga headlines, straight into the tables."""
    con.execute(f"""
        INSERT INTO prices
        SELECT Name, date, open, high, low, close, NULL, volume, NULL, 'csv:sp500_5yr', now()
        FROM read_csv('{SHARED}/prices/sp500_5yr/*_data.csv', columns={PRICE_COLUMNS}, header = true)
    """)
    text = (SHARED / "news" / "benzinga_analyst_ratings_sample.csv").read_text()
    header, *body = text.split("\n")
    lines = [header]
    for ln in body:  # 4 titles hold a bare newline: glue continuation lines back onto their row
        if re.match(r"^\d+,", ln):
            lines.append(ln)
        elif ln.strip() and len(lines) > 1:
            lines[-1] += " " + ln
    rows = [r for r in csv.DictReader(io.StringIO("\n".join(lines))) if r.get("stock")]
    df = pd.DataFrame({"ticker": [r["stock"] for r in rows], "title": [r["title"] for r in rows], "date": [r["date"] for r in rows]})
    df["published_at"] = pd.to_datetime(df["date"], utc=True)
    con.register("raw_news", df)
    con.execute("""
        INSERT INTO news
        SELECT md5(concat_ws('|', ticker, date, title)), ticker, published_at, title, NULL, NULL, 'csv:benzinga', NULL, now()
        FROM raw_news ON CONFLICT DO NOTHING
    """)
    con.unregister("raw_news")


# --- the baseline: one state at a time, pandas slicing ---------------------------------------------------------

def baseline_build(con, config: states.StatesConfig, days, tickers, tok) -> list[str]:
    """The same states, found the straightforward way: per state, slice each stock's history and headlines."""
    prices = con.execute(
        "SELECT ticker, date, coalesce(adj_close, close) AS price, volume FROM prices WHERE ticker IN (SELECT unnest(?::VARCHAR[])) ORDER BY ticker, date",
        [tickers],
    ).df()
    news = con.execute(
        "SELECT ticker, published_at, title, news_id FROM news WHERE ticker IN (SELECT unnest(?::VARCHAR[]))", [tickers]
    ).df()
    names = states._company_names(con, tickers)
    by_ticker = {t: g.reset_index(drop=True) for t, g in prices.groupby("ticker")}
    news_by = {t: g for t, g in news.groupby("ticker")}
    drafts = []
    need = max(config.history_days, config.trend_days)
    for day in days:
        cutoff = pd.Timestamp(states.decision_time(day, config))
        eligible = []
        for t in tickers:
            g = by_ticker.get(t)
            if g is None:
                continue
            hist = g[g["date"] <= pd.Timestamp(day)]
            if len(hist) > need and hist["date"].iloc[-1] == pd.Timestamp(day):
                eligible.append(t)
        if config.mode == contract.PAIRWISE:
            draws = []
            for a, b in itertools.combinations(sorted(eligible), 2):
                draw = _md5_number(f"{config.seed}|draw|{day}|{a}|{b}")
                low_is_a = _md5_number(f"{config.seed}|order|{day}|{a}|{b}") % 2 == 0
                draws.append((draw, a, b, [a, b] if low_is_a else [b, a]))
            combos = [(order, f"{a}-{b}") for _, a, b, order in sorted(draws)[: config.max_pairs_per_date]]
        else:
            combos = [([t], t) for t in eligible]
        for order, pair in combos:
            stocks, stamps = [], []
            for i, t in enumerate(order):
                view, stamp = _stock_view(by_ticker[t], news_by.get(t), day, cutoff, config, order, names, i)
                stocks.append(view)
                stamps.append(stamp)
            drafts.append(states._Draft(day, cutoff.to_pydatetime(), order, pair, stocks, stamps, [t in names for t in order]))
    drafts.sort(key=lambda d: (d.decision_date, d.pair))
    # rendering, token counting (a fresh counter with its own piece cache, all prompts in one batch) and storing are
    # hitchhiker's own, as in build_states: the race is only over how the numbers are found
    rows = states._fit_and_hash(drafts, config, states._TokenCounter(tok))
    states._insert(con, rows)
    return [r["state_id"] for r in rows]


def _stock_view(g, news, day, cutoff, config, order, names, i):
    hist = g[g["date"] <= pd.Timestamp(day)]
    price = hist["price"]
    rets = (price / price.shift(1) - 1) * 100
    vols = (hist["volume"] / hist["volume"].shift(1).replace(0, float("nan")) - 1) * 100
    window = rets.iloc[-config.history_days:]
    hist_ret = (price.iloc[-1] / price.iloc[-1 - config.history_days] - 1) * 100
    trend_ret = _round((price.iloc[-1] / price.iloc[-1 - config.trend_days] - 1) * 100, 2)
    heads = []
    if news is not None and config.style == "full" and config.max_headlines > 0:
        recent = news[(news["published_at"] <= cutoff) & (news["published_at"] > cutoff - timedelta(days=config.news_lookback_days))]
        recent = recent.sort_values(["published_at", "news_id"], ascending=[False, True]).head(config.max_headlines)
        for p, title in zip(recent["published_at"], recent["title"]):
            text = clean_headline(title, 10 * config.max_headline_chars)
            if config.anonymize:
                for j, other in enumerate(order):
                    text = anonymize(text, other, names.get(other, ()), f"Stock {'AB'[j]}")
            heads.append((p.to_pydatetime(), clean_headline(text, config.max_headline_chars)))
    letter = "AB"[i]
    tz = states.ZoneInfo(config.exchange_tz)
    view = StockView(
        label=f"Stock {letter}" if config.anonymize else f"Stock {letter} ({order[i]})",
        returns_pct=[_round(x, 2) + 0.0 for x in window],
        volume_changes_pct=[None if pd.isna(x) else _round(x, 0) + 0.0 for x in vols.iloc[-config.history_days:]],
        history_return_pct=_round(hist_ret, 2) + 0.0,
        volatility_pct=_round(float(window.std()), 2),
        trend="UP" if trend_ret > 0 else "DOWN" if trend_ret < 0 else "FLAT",
        trend_return_pct=trend_ret + 0.0,
        headlines=[(p.astimezone(tz).date(), x) for p, x in heads],
    )
    return view, [p for p, _ in heads]


def _round(x: float, digits: int) -> float:
    # SQL's round: halves away from zero (Python's round sends 3.125 to 3.12, SQL to 3.13)
    scale = 10.0 ** digits
    return math.copysign(math.floor(abs(x) * scale + 0.5) / scale, x)


def _md5_number(text: str) -> int:
    return int.from_bytes(hashlib.md5(text.encode()).digest(), "little")  # DuckDB's md5_number


# --- the race ----------------------------------------------------------------------------------------------------

def race(con, name, config, days, tickers, tok, rounds: int) -> tuple[float, float, int, float]:
    """Best-of-`rounds` seconds for hitchhiker and for the baseline, each on a fresh states table."""
    ours, base = [], []
    for _ in range(rounds):
        _cold()
        con.execute("DELETE FROM states")
        t0, c0 = time.perf_counter(), time.process_time()
        ids = states.build_states(con, config, days, tickers, tokenizer=tok)
        ours.append(time.perf_counter() - t0)
        print(f"  hitchhiker cpu {time.process_time() - c0:.2f}s", flush=True)
        got = con.execute("SELECT state_id, prompt_tokens FROM states").fetchall()
        _cold()
        con.execute("DELETE FROM states")
        t0, c0 = time.perf_counter(), time.process_time()
        baseline_build(con, config, days, tickers, tok)
        base.append(time.perf_counter() - t0)
        print(f"  baseline cpu {time.process_time() - c0:.2f}s", flush=True)
    # same ids (same content) and the same token counts; a state either side lacks counts against the share
    theirs = set(con.execute("SELECT state_id, prompt_tokens FROM states").fetchall())
    same = len(set(got) & theirs) / max(len(set(got) | theirs), 1)
    t, b = min(ours), min(base)
    print(
        f"{name:<34} states={len(ids):>6}  hitchhiker {t:7.2f}s ({1000 * t / len(ids):6.1f} s/1000)  "
        f"baseline {b:7.2f}s ({1000 * b / len(ids):6.1f} s/1000)  x{b / t:5.1f}  identical states {same:.1%}",
        flush=True,
    )
    return t, b, len(ids), same


def _cold() -> None:
    """Empty the headline caches, so that neither builder profits from the other's work."""
    from hitchhiker import render

    for cached in (render.clean_headline, render.anonymize, render._scrubber):
        cached.cache_clear()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tenth of the dates, one round (a smoke run)")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    from hitchhiker.default_model import build_tokenizer

    tok = build_tokenizer(states.example_prompts(2000))
    con = db.connect(":memory:")
    t0 = time.perf_counter()
    load_real_data(con)
    n_prices, n_news = (con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("prices", "news"))
    print(f"loaded {n_prices} price rows, {n_news} headlines in {time.perf_counter() - t0:.1f}s", flush=True)
    all_tickers = [r[0] for r in con.execute("SELECT DISTINCT ticker FROM prices ORDER BY ticker").fetchall()]
    year = states.trading_days(con, "2016-01-01", "2016-12-31")
    step = 10 if args.quick else 1
    workloads = [
        ("pairwise 50 tickers x 250 dates", states.StatesConfig(mode="pairwise", max_pairs_per_date=20), year[:250:step], all_tickers[:50]),
        ("elementwise 500 tickers x 20 dates", states.StatesConfig(mode="elementwise"), year[-20::step], all_tickers[:500]),
    ]
    total_ours = total_base = 0.0
    identical = 1.0
    for name, config, days, tickers in workloads:
        t, b, n, same = race(con, name, config, days, tickers, tok, args.rounds)
        total_ours += t
        total_base += b
        identical = min(identical, same)
    print(f"identical states (id and token count), worst workload: {identical:.2%}")
    # a faster builder of different states is no win: every state must be the same
    return report("states", total_base / total_ours, ">=", TARGET, checks=(("identical_share", identical, ">=", 1.0),))


if __name__ == "__main__":
    sys.exit(main())
