"""Shared by the states tests: a small synthetic market (4 tickers, ~7 weeks of weekdays, headlines at all hours),
a store holding it, the states built from it as comparable rows, and the default small model's tokenizer."""
from __future__ import annotations

import functools
import random
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pandas as pd

from hitchhiker import db, states
from hitchhiker.states import StatesConfig, build_states

NY = ZoneInfo("America/New_York")
TICKERS = ["AAA", "BBB", "CCC", "DDD"]
NAMES = {"AAA": ["Alpha Corp"], "BBB": ["Beta Industries Inc"], "CCC": ["Gamma Holdings"], "DDD": ["Delta Labs"]}


@functools.cache
def small_tokenizer():
    """The default small model's tokenizer recipe (hitchhiker.default_model), trained on example prompts: no model build."""
    from hitchhiker.default_model import build_tokenizer

    return build_tokenizer(states.example_prompts(300))


def weekdays(start: date, n: int, skip=()) -> list[date]:
    out, d = [], start
    while len(out) < n:
        if d.weekday() < 5 and d not in skip:
            out.append(d)
        d += timedelta(days=1)
    return out


# 2021-03-01 .. mid April: crosses the US DST switch (03-14); Good Friday 04-02 is a holiday.
DAYS = weekdays(date(2021, 3, 1), 34, skip={date(2021, 4, 2)})
GAP = DAYS[16]  # DDD does not trade that day


def synthetic_market(seed: int = 0) -> tuple[list[tuple], list[tuple]]:
    """(prices, news): rows (ticker, date, close, volume) and (news_id, ticker, published_at UTC, title)."""
    rng = random.Random(seed)
    prices, news = [], []
    for t in TICKERS:
        px = rng.uniform(20, 200)
        for d in DAYS:
            px *= 1 + rng.gauss(0, 0.02)
            if not (t == "DDD" and d == GAP):
                prices.append((t, d, round(px, 2), rng.randint(10_000, 1_000_000)))
        for k in range(30):  # headlines at any hour of any day, weekends included
            day = DAYS[0] + timedelta(days=rng.randrange(0, 50))
            at = datetime.combine(day, time(rng.randrange(24), rng.randrange(60)), tzinfo=NY)
            title = rng.choice([
                f"{NAMES[t][0]} shares rise after {t} beats estimates {k}",
                f"Analyst downgrades {NAMES[t][0]} (NYSE: {t}) to Sell {k}",
                f"Market wrap {k}: stocks mixed",
            ])
            news.append((f"{t}-{k}", t, at.astimezone(timezone.utc), title))
    return prices, news


MARKET = synthetic_market()


def market_store(prices: list[tuple], news: list[tuple]):
    """An in-memory store holding these prices and headlines and the companies' names."""
    con = db.connect(":memory:")
    p = pd.DataFrame(prices, columns=["ticker", "date", "close", "volume"])
    n = pd.DataFrame(news, columns=["news_id", "ticker", "published_at", "title"])
    con.register("p", p)
    con.register("n", n)
    con.execute("INSERT INTO prices (ticker, date, open, high, low, close, adj_close, volume, source, ingested_at) "
                "SELECT ticker, date, close, close, close, close, close, volume, 'test', now() FROM p")
    con.execute("INSERT INTO news (news_id, ticker, published_at, title, source, ingested_at) "
                "SELECT news_id, ticker, published_at, title, 'test', now() FROM n")
    con.unregister("p")
    con.unregister("n")
    states.set_company_names(con, NAMES)
    return con


DECISION_DATE = 1  # the column of a snapshot row (after state_id)


def snapshot(con, config: StatesConfig, dates, tok, tickers=None) -> list[tuple]:
    """Every stored column but created_at, in a stable order: what 'byte-identical' compares."""
    build_states(con, config, dates, tickers, tokenizer=tok)
    return con.execute("SELECT * EXCLUDE (created_at) FROM states ORDER BY state_id").fetchall()


_BASE: dict = {}


def base_snapshot(config: StatesConfig, dates: tuple, tok, tickers: tuple | None = None) -> list[tuple]:
    """The unaltered market's states, built once per SQL folder, config, dates and universe (hypothesis revisits them)."""
    key = (db.SQL_DIR, config, dates, tickers)
    if key not in _BASE:
        _BASE[key] = snapshot(market_store(*MARKET), config, list(dates), tok, tickers)
    return _BASE[key]
