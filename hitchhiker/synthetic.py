"""A synthetic learnable market written into `prices`: the recent trend decides which stock of a couple wins tomorrow.

Tickers come in couples (SYN00A/SYN00B, SYN01A/SYN01B, ...). Every trading day, inside each couple, one stock's
`trend_days` close-to-close return is positive and the other's negative (which is which is a coin flip), and the
next session's open-to-close return is +drift for the stock whose trend is up and -drift for the other. So:
  - a pairwise 'trend' state of a couple reads "Stock A trend: UP. Stock B trend: DOWN." (or the reverse), and
  - the reward stage (entry at the next open, exit at that day's close) pays the stock whose trend was UP.
The trend is a legitimate point-in-time signal (the last trend_days closes, all known at decision time); the
overnight gaps carry the randomness that makes the next trend word unpredictable from earlier ones.
Pairs across couples are not decidable from trend words alone, so states are built per couple (`couples`).

Listwise variant (issue 20, `basket_size=3`): triples SYN00A/SYN00B/SYN00C; every day one stock of a triple shows an
UP trend, one FLAT (a trend_days return of exactly 0) and one DOWN (a seeded permutation), and the next session
pays +drift, 0 and -drift (plus the small noise): a listwise 'trend' state of a triple (K = 3) is fully ranked by
its trend words, UP > FLAT > DOWN. The pairwise market (`basket_size=2`) draws exactly what it always drew.
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
    basket_size: int = 2  # 2: couples (pairwise); 3: triples ranked UP > FLAT > DOWN (listwise)

    def tickers(self) -> list[str]:
        return [t for c in couples(self) for t in c]


def couples(market: SyntheticMarket) -> list[list[str]]:
    """The market's groups of basket_size tickers (couples, or triples for the listwise variant)."""
    return [[f"SYN{i:02d}{x}" for x in "ABC"[:market.basket_size]] for i in range(market.n_couples)]


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
    if market.basket_size not in (2, 3):
        raise ValueError(f"basket_size must be 2 (couples) or 3 (triples: UP, FLAT, DOWN), got {market.basket_size!r}")
    rng = random.Random(market.seed)
    days = trading_days(market)
    rows = []
    for group in couples(market):
        # log closes per ticker; the first trend_days + 1 days are a quiet random warm-up history
        logc = {t: [math.log(50 + 50 * rng.random())] for t in group}
        opens = {t: [math.exp(logc[t][0])] for t in group}
        for _ in range(1, market.trend_days + 1):
            for t in group:
                o = logc[t][-1] + rng.gauss(0, 0.01)
                opens[t].append(math.exp(o))
                logc[t].append(o + rng.gauss(0, 0.01))
        (_couple_days if market.basket_size == 2 else _triple_days)(market, rng, group, logc, opens, len(days))
        for t in group:
            for i, d in enumerate(days):
                o, c = opens[t][i], math.exp(logc[t][i])
                rows.append({"ticker": t, "date": d, "open": o, "high": max(o, c), "low": min(o, c), "close": c,
                             "adj_close": c, "volume": 1_000_000.0})
    return rows


def _session(market: SyntheticMarket, c: list[float], opens: list[float], intraday: float, target: float) -> None:
    """Append a day whose overnight gap makes the trend over the last trend_days closes hit `target`."""
    gap = target - (c[-1] - c[-market.trend_days]) - intraday
    o = c[-1] + gap
    opens.append(math.exp(o))
    c.append(o + intraday)


def _couple_days(market: SyntheticMarket, rng: random.Random, couple, logc, opens, n_days: int) -> None:
    for _ in range(market.trend_days + 1, n_days):
        up_today = rng.random() < 0.5  # which stock of the couple will show an UP trend after today's close
        for k, t in enumerate(couple):
            c = logc[t]
            prev_trend = c[-1] - c[-1 - market.trend_days]
            intraday = math.copysign(market.drift, prev_trend) + rng.gauss(0, market.noise)
            sign = 1.0 if (k == 0) == up_today else -1.0
            _session(market, c, opens[t], intraday, sign * rng.uniform(market.trend_min, market.trend_max))


def _triple_days(market: SyntheticMarket, rng: random.Random, triple, logc, opens, n_days: int) -> None:
    """The listwise variant: per day a seeded permutation of the trend targets (+x, 0, -x) over the triple."""
    # the sign (+1, 0, -1) of each stock's current trend: it decides the next session's drift
    word = {t: (1 if logc[t][-1] > logc[t][0] else -1) for t in triple}
    for _ in range(market.trend_days + 1, n_days):
        signs = [1, 0, -1]
        rng.shuffle(signs)  # which stock will show UP, FLAT and DOWN after today's close
        for t, sign in zip(triple, signs):
            intraday = word[t] * market.drift + rng.gauss(0, market.noise)
            # 0 for FLAT: an exact 0.00 % trend
            _session(market, logc[t], opens[t], intraday, sign * rng.uniform(market.trend_min, market.trend_max))
            word[t] = sign


def write_market(con, market: SyntheticMarket = SyntheticMarket()) -> IngestReport:
    """Write the market into `prices` (idempotent: the same market upserts the same rows)."""
    import pandas as pd

    return ingest_bars(con, pd.DataFrame(bars(market)), source="synthetic")
