"""A synthetic learnable market written into `prices`: the recent trend decides which stock of a couple wins tomorrow.

Tickers come in couples (SYN00A/SYN00B, SYN01A/SYN01B, ...). Every trading day, inside each couple, one stock's
`trend_days` close-to-close return is positive and the other's negative (which is which is a coin flip), and the
next session's open-to-close return is +drift for the stock whose trend is up and -drift for the other. So:
  - a pairwise 'trend' state of a couple reads "Stock A trend: UP. Stock B trend: DOWN." (or the reverse), and
  - the reward stage (entry at the next open, exit at that day's close) pays the stock whose trend was UP.
The trend is a legitimate point-in-time signal (the last trend_days closes, all known at decision time); the
overnight gaps carry the randomness that makes the next trend word unpredictable from earlier ones.
Pairs across couples are not decidable from trend words alone, so states are built per couple (`couples`).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import date, timedelta

from hitchhiker.prices import IngestReport, ingest_bars


@dataclass
class SyntheticMarket:
    """How the synthetic market is drawn. trend_days must equal the states stage's StatesConfig.trend_days."""

    n_couples: int = 4
    n_days: int = 300  # trading days (Monday to Friday) from start
    start: date = date(2021, 1, 4)
    trend_days: int = 5
    drift: float = 0.01  # next-session open-to-close return of the trending-up stock (+) and the other (-)
    noise: float = 0.002  # std of the intraday noise: small enough that the sign always follows the trend
    trend_min: float = 0.01  # |trend_days log-return| drawn in [trend_min, trend_max]: never rounds to FLAT
    trend_max: float = 0.05
    seed: int = 0

    def tickers(self) -> list[str]:
        return [t for c in couples(self) for t in c]


def couples(market: SyntheticMarket) -> list[list[str]]:
    return [[f"SYN{i:02d}A", f"SYN{i:02d}B"] for i in range(market.n_couples)]


def trading_days(market: SyntheticMarket) -> list[date]:
    days, d = [], market.start
    while len(days) < market.n_days:
        if d.weekday() < 5:
            days.append(d)
        d += timedelta(days=1)
    return days


def bars(market: SyntheticMarket) -> list[dict]:
    """Daily OHLCV rows (long format, adj_close = close) for every ticker of the market."""
    if market.noise * 4 >= market.drift:
        raise ValueError(f"noise {market.noise} must be well below drift {market.drift} for the trend to decide the sign")
    rng = random.Random(market.seed)
    days = trading_days(market)
    rows = []
    for couple in couples(market):
        # log closes per ticker; the first trend_days + 1 days are a quiet random warm-up history
        logc = {t: [math.log(50 + 50 * rng.random())] for t in couple}
        opens = {t: [math.exp(logc[t][0])] for t in couple}
        for _ in range(1, market.trend_days + 1):
            for t in couple:
                o = logc[t][-1] + rng.gauss(0, 0.01)
                opens[t].append(math.exp(o))
                logc[t].append(o + rng.gauss(0, 0.01))
        for i in range(market.trend_days + 1, len(days)):
            up_today = rng.random() < 0.5  # which stock of the couple will show an UP trend after today's close
            for k, t in enumerate(couple):
                c = logc[t]
                prev_trend = c[-1] - c[-1 - market.trend_days]
                intraday = math.copysign(market.drift, prev_trend) + rng.gauss(0, market.noise)
                sign = 1.0 if (k == 0) == up_today else -1.0
                target = sign * rng.uniform(market.trend_min, market.trend_max)
                # choose the overnight gap so that the trend over the last trend_days closes hits the target
                gap = target - (c[-1] - c[-market.trend_days]) - intraday
                o = c[-1] + gap
                opens[t].append(math.exp(o))
                c.append(o + intraday)
        for t in couple:
            for i, d in enumerate(days):
                o, c = opens[t][i], math.exp(logc[t][i])
                rows.append({"ticker": t, "date": d, "open": o, "high": max(o, c), "low": min(o, c), "close": c,
                             "adj_close": c, "volume": 1_000_000.0})
    return rows


def write_market(con, market: SyntheticMarket = SyntheticMarket()) -> IngestReport:
    """Write the market into `prices` (idempotent: the same market upserts the same rows)."""
    import pandas as pd

    return ingest_bars(con, pd.DataFrame(bars(market)), source="synthetic")
