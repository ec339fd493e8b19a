"""Evaluation metrics, defined once: accuracy, reward, Sharpe, drawdown, turnover, action mix, and their uncertainty.

Everything here is pure numpy over plain arrays so that each definition can be checked by hand. Conventions:
- `reward_usd` is what $1 put to work on one decision earned over the horizon (the rewards stage's unit).
- The daily strategy return of a date is the mean `reward_usd` of that date's decisions: $1 of capital split
  equally over the day's decisions. Sharpe and drawdown are computed on that daily series.
- Confidence intervals come from a circular block bootstrap over decision dates: decisions of one date share
  the market, and nearby dates are autocorrelated, so resampling single decisions would be over-confident.
- p-values are clustered by date the same way: a t-test over one value per date (`t_test_p_greater`), never a
  binomial test over decisions, which would count a day's 20 correlated answers as 20 independent ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

TRADING_DAYS_PER_YEAR = 252


def pairwise_accuracy(chosen_return: Sequence[float], other_return: Sequence[float]) -> float:
    """Fraction of decisions whose chosen stock had the higher return; exact ties count as half right."""
    c, o = np.asarray(chosen_return, float), np.asarray(other_return, float)
    if c.size == 0:
        return float("nan")
    return float(np.mean(np.where(c > o, 1.0, np.where(c == o, 0.5, 0.0))))


# --- listwise (issue 20): a ranking of a basket against its legs' realized returns -----------------------------------
# A ranking is the legs best first, as 0-based prompt positions (A = 0) or the action text 'C>A>D>B'; `realized`
# holds each leg's return in prompt order.

def _ranks(ranking, k: int) -> np.ndarray:
    """Each leg's predicted rank (0 = best), in prompt order."""
    order = [ord(x.strip().upper()) - 65 for x in ranking.split(">")] if isinstance(ranking, str) else list(ranking)
    if sorted(order) != list(range(k)):
        raise ValueError(f"ranking {ranking!r} is not a permutation of the basket's {k} legs")
    ranks = np.empty(k)
    ranks[order] = np.arange(k)
    return ranks


def pair_ordering_accuracy(ranking, realized: Sequence[float]) -> float:
    """Share of the K(K-1)/2 pairs of legs the ranking orders like their realized returns; a realized tie is half."""
    r = np.asarray(realized, float)
    ranks, k = _ranks(ranking, r.size), r.size
    i, j = np.triu_indices(k, 1)
    ahead = ranks[i] < ranks[j]  # i ranked above j
    score = np.where(r[i] == r[j], 0.5, np.where((r[i] > r[j]) == ahead, 1.0, 0.0))
    return float(score.mean())


def top1_hit(ranking, realized: Sequence[float]) -> float:
    """1 when the first-ranked leg had the highest realized return; 1/m when it ties m legs at the top; else 0."""
    r = np.asarray(realized, float)
    ranks = _ranks(ranking, r.size)
    first = int(np.argmin(ranks))
    return 1.0 / int(np.sum(r == r.max())) if r[first] == r.max() else 0.0


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size)
    ranks[order] = np.arange(x.size, dtype=float)
    for v in np.unique(x):  # ties share their mean rank
        ranks[x == v] = ranks[x == v].mean()
    return ranks


def spearman(ranking, realized: Sequence[float]) -> float:
    """Spearman correlation of the ranking with the realized returns (ties: average ranks); NaN when every leg
    returned the same (no order to agree with)."""
    r = np.asarray(realized, float)
    predicted = -_ranks(ranking, r.size)  # higher = better, like a return
    actual = _average_ranks(r)
    if np.all(actual == actual[0]):
        return float("nan")
    return float(np.corrcoef(predicted, actual)[0, 1])


def per_date_mean(decision_dates: Sequence, values: Sequence[float]) -> tuple[float, dict]:
    """(mean over dates of each date's mean value, {date: that date's mean}); NaN values are skipped, and so is a
    date that has none left."""
    by_date: dict = {}
    for d, v in zip(decision_dates, values):
        if not math.isnan(v):
            by_date.setdefault(d, []).append(v)
    means = {d: float(np.mean(v)) for d, v in sorted(by_date.items())}
    return (float(np.mean(list(means.values()))) if means else float("nan")), means


def mean_spearman_per_date(decision_dates: Sequence, rankings: Sequence, realized: Sequence[Sequence[float]]) -> tuple[float, dict]:
    """(mean over dates of each date's mean Spearman, {date: that date's mean}); baskets with no order are skipped."""
    return per_date_mean(decision_dates, [spearman(rk, r) for rk, r in zip(rankings, realized)])


def listwise_summary(decision_dates: Sequence, top1: Sequence[float], rho: Sequence[float], first_letters: Sequence,
                     n_boot: int = 2000, seed: int = 0, block_length: int | None = None) -> dict:
    """The listwise metrics beside `summarize`'s (whose accuracy is the pair-ordering accuracy), with block-bootstrap
    CIs over dates: top-1 hit rate (decisions pooled, like accuracy), the mean over dates of each date's mean
    Spearman (a date whose baskets all have no realized order is left out), and the share of each first-ranked letter
    (a policy that always puts A first shows it; the full rankings are too many to plot). top1/rho per decision, an
    invalid answer scored 0 (no ranking is no skill; rho NaN: the basket's legs all returned the same)."""
    dates = np.asarray(decision_dates)
    t, r = np.asarray(top1, float), np.asarray(rho, float)
    day, inverse = np.unique(dates, return_inverse=True)
    n_day = np.bincount(inverse, minlength=len(day)).astype(float)
    kw = dict(n_boot=n_boot, seed=seed, block_length=block_length)
    mean_rho, by_date = per_date_mean(dates, r)
    rho_day = np.array(list(by_date.values()))
    letters = [x for x in first_letters if x]
    fractions = {x: letters.count(x) / len(t) for x in sorted(set(letters))}
    return {
        "top1_hit": float(t.mean()) if t.size else float("nan"),
        "top1_hit_ci": list(ratio_ci(np.bincount(inverse, weights=t, minlength=len(day)), n_day, **kw)),
        "spearman": mean_rho,
        "spearman_ci": list(mean_ci(rho_day, **kw)) if rho_day.size else None,
        "first_ranked_fractions": fractions,
    }


def mean_reward(reward_usd: Sequence[float]) -> float:
    """Mean reward_usd per decision (USD per $1)."""
    r = np.asarray(reward_usd, float)
    return float(r.mean()) if r.size else float("nan")


def daily_returns(decision_dates: Sequence, reward_usd: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique dates, mean reward_usd of each date's decisions): the strategy's daily return series."""
    d = np.asarray(decision_dates)
    r = np.asarray(reward_usd, float)
    dates, inverse = np.unique(d, return_inverse=True)
    sums = np.bincount(inverse, weights=r, minlength=len(dates))
    counts = np.bincount(inverse, minlength=len(dates))
    return dates, sums / counts


def sharpe(daily: Sequence[float], periods_per_year: int = TRADING_DAYS_PER_YEAR) -> float:
    """Annualized Sharpe ratio: mean / sample std (ddof=1) of daily returns x sqrt(252); NaN if undefined."""
    x = np.asarray(daily, float)
    if x.size < 2:
        return float("nan")
    sd = x.std(ddof=1)
    if sd == 0:
        return float("nan")
    return float(x.mean() / sd * math.sqrt(periods_per_year))


def equity_curve(daily: Sequence[float]) -> np.ndarray:
    """Value of $1 compounded through the daily returns (one value per day, after that day)."""
    return np.cumprod(1.0 + np.asarray(daily, float))


def max_drawdown(daily: Sequence[float]) -> float:
    """Largest fall of the equity curve from its running peak, as a positive fraction (the start, 1.0, is a peak)."""
    eq = equity_curve(daily)
    if eq.size == 0:
        return 0.0
    peak = np.maximum.accumulate(np.concatenate([[1.0], eq]))[1:]
    return float(np.max(1.0 - eq / peak))


def hit_rate(reward_usd: Sequence[float]) -> float:
    """Fraction of decisions that made money (reward_usd > 0)."""
    r = np.asarray(reward_usd, float)
    return float(np.mean(r > 0)) if r.size else float("nan")


def turnover(keys: Sequence, decision_dates: Sequence, exposure: Sequence[float]) -> float:
    """Mean |change of exposure| between consecutive decisions on the same instrument (pair or ticker).

    `exposure` must be expressed in a fixed orientation per key (e.g. +1 long the alphabetically first ticker of a
    pair, -1 long the second), not in the prompt's randomized A/B order. 0 = never trades, 2 = flips every time.
    """
    k, d, e = np.asarray(keys), np.asarray(decision_dates), np.asarray(exposure, float)
    if k.size == 0:
        return float("nan")
    order = np.lexsort((d, k))
    k, e = k[order], e[order]
    same = k[1:] == k[:-1]
    if not same.any():
        return 0.0
    return float(np.abs(np.diff(e))[same].mean())


def valid_rate(valid: Sequence[bool]) -> float:
    """Fraction of completions that parsed into an action."""
    v = np.asarray(valid, bool)
    return float(v.mean()) if v.size else float("nan")


@dataclass(frozen=True)
class ActionDistribution:
    fractions: dict[str, float]
    collapsed: bool  # one answer takes at least `collapse_threshold` of the decisions
    top_action: str | None


def action_distribution(actions: Sequence, collapse_threshold: float = 0.95) -> ActionDistribution:
    """Share of each action (None counts as 'invalid'); flags a policy that collapsed onto one answer."""
    names = ["invalid" if a is None or (isinstance(a, float) and math.isnan(a)) else str(a) for a in actions]
    if not names:
        return ActionDistribution({}, False, None)
    values, counts = np.unique(np.asarray(names), return_counts=True)
    fractions = {str(v): float(c) / len(names) for v, c in zip(values, counts)}
    top = max(fractions, key=fractions.get)
    return ActionDistribution(fractions, fractions[top] >= collapse_threshold, top)


# --- uncertainty -------------------------------------------------------------------------------------------------

def default_block_length(n: int) -> int:
    """n^(1/3), the usual rate for block bootstraps of means, at least 1."""
    return max(1, int(round(n ** (1.0 / 3.0))))


def block_bootstrap_indices(n: int, n_boot: int = 2000, block_length: int | None = None, seed: int = 0,
                            circular: bool = True) -> np.ndarray:
    """(n_boot, n) indices of circular (or moving) block bootstrap resamples of a series of length n."""
    if n < 1:
        raise ValueError("cannot bootstrap an empty series")
    b = min(block_length or default_block_length(n), n)
    rng = np.random.default_rng(seed)
    n_blocks = -(-n // b)
    last_start = n if circular else n - b + 1
    starts = rng.integers(0, last_start, size=(n_boot, n_blocks))
    idx = (starts[:, :, None] + np.arange(b)[None, None, :]).reshape(n_boot, n_blocks * b)[:, :n]
    return idx % n


def bootstrap_ci(statistic: Callable[[np.ndarray], np.ndarray], n: int, n_boot: int = 2000,
                 block_length: int | None = None, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of `statistic` over block-bootstrap resamples.

    `statistic(idx)` receives the (n_boot, n) index array and returns n_boot values (vectorized), so that one
    set of resamples can serve several series (paired differences use the same indices for both).
    """
    idx = block_bootstrap_indices(n, n_boot, block_length, seed)
    values = np.asarray(statistic(idx), float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _sharpe_rows(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 0, x.mean(axis=1) / sd * math.sqrt(TRADING_DAYS_PER_YEAR), np.nan)


def mean_ci(daily: Sequence[float], **kw) -> tuple[float, float]:
    """Block-bootstrap CI of the mean of a daily series."""
    x = np.asarray(daily, float)
    return bootstrap_ci(lambda idx: x[idx].mean(axis=1), len(x), **kw)


def sharpe_ci(daily: Sequence[float], **kw) -> tuple[float, float]:
    """Block-bootstrap CI of the annualized Sharpe ratio of a daily series."""
    x = np.asarray(daily, float)
    return bootstrap_ci(lambda idx: _sharpe_rows(x[idx]), len(x), **kw)


def ratio_ci(numerator_by_day: Sequence[float], denominator_by_day: Sequence[float], **kw) -> tuple[float, float]:
    """CI of sum(numerator)/sum(denominator) resampling days: accuracy (correct/decisions) or mean reward per decision."""
    num, den = np.asarray(numerator_by_day, float), np.asarray(denominator_by_day, float)
    return bootstrap_ci(lambda idx: num[idx].sum(axis=1) / den[idx].sum(axis=1), len(num), **kw)


def paired_difference_ci(a_daily: Sequence[float], b_daily: Sequence[float], **kw) -> tuple[float, float]:
    """CI of mean(a - b) for two daily series on the same dates (same resampled days for both)."""
    a, b = np.asarray(a_daily, float), np.asarray(b_daily, float)
    if a.shape != b.shape:
        raise ValueError(f"paired series differ in length: {a.shape} vs {b.shape}")
    d = a - b
    return bootstrap_ci(lambda idx: d[idx].mean(axis=1), len(d), **kw)


def binomial_p_greater(successes: int, trials: int, p: float = 0.5) -> float:
    """Exact one-sided binomial p-value P(X >= successes) for X ~ Bin(trials, p).

    Valid only for independent trials: decisions of one date share the market (and a policy's mood), so for a
    window of decisions use `t_test_p_greater` over dates instead."""
    if not 0 <= successes <= trials:
        raise ValueError(f"successes={successes} outside [0, trials={trials}]")
    if successes == 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    logs = [math.lgamma(trials + 1) - math.lgamma(i + 1) - math.lgamma(trials - i + 1)
            + i * math.log(p) + (trials - i) * math.log1p(-p) for i in range(successes, trials + 1)]
    m = max(logs)
    return float(min(1.0, math.exp(m) * sum(math.exp(v - m) for v in logs)))


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes' betacf)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for aa in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                   -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function (the CDF of Beta(a, b) at x)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with df degrees of freedom (no scipy: through the incomplete beta function)."""
    if math.isnan(t):
        return float("nan")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|), accurate far into the tail
    return tail if t >= 0 else 1.0 - tail


def t_test_p_greater(values: Sequence[float], null: float = 0.0) -> float:
    """One-sided one-sample t-test: p-value of mean(values) > null, with len(values) - 1 degrees of freedom.

    Give it one value per decision date (the day's mean reward, the day's accuracy, the day's paired difference):
    the decisions of one date are one cluster, so the test counts dates, not decisions. NaN with fewer than 2
    values; with no spread at all, 0 if every value is above `null` and 1 otherwise."""
    x = np.asarray(values, float) - null
    if x.size < 2:
        return float("nan")
    sd = x.std(ddof=1)
    if sd == 0 or not np.isfinite(sd):
        return 0.0 if x.mean() > 0 else 1.0
    return student_t_sf(float(x.mean() / (sd / math.sqrt(x.size))), x.size - 1)


def wilson_interval(successes: int, trials: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval (95 % by default) of a proportion successes/trials."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"successes={successes}, trials={trials}: need 0 <= successes <= trials, trials > 0")
    p, n = successes / trials, trials
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(decision_dates: Sequence, reward_usd: Sequence[float], valid: Sequence[bool], actions: Sequence,
              picked_better: Sequence[float] | None = None, keys: Sequence | None = None,
              exposure: Sequence[float] | None = None, n_boot: int = 2000, seed: int = 0,
              block_length: int | None = None) -> dict:
    """Every metric of one policy on one window, with block-bootstrap CIs over dates; JSON-ready.

    picked_better: per decision 1 (chose the better stock), 0, or 0.5 (tie); None for elementwise.
    accuracy_p_value_by_date: one-sided t-test that the mean daily accuracy is above 0.5, one value per date (the
    day's decisions are one cluster); no binomial p-value over decisions, which would count them as independent.
    """
    dates = np.asarray(decision_dates)
    r = np.asarray(reward_usd, float)
    if r.size == 0:
        raise ValueError("no decisions to summarize (empty evaluation window?)")
    day, inverse = np.unique(dates, return_inverse=True)
    n_day = np.bincount(inverse, minlength=len(day)).astype(float)
    reward_day = np.bincount(inverse, weights=r, minlength=len(day))
    daily = reward_day / n_day
    kw = dict(n_boot=n_boot, seed=seed, block_length=block_length)
    dist = action_distribution(actions)
    out = {
        "n_decisions": int(r.size),
        "n_days": int(len(day)),
        "mean_reward_usd": mean_reward(r),
        "mean_reward_usd_ci": list(ratio_ci(reward_day, n_day, **kw)),
        "sharpe": sharpe(daily),
        "sharpe_ci": list(sharpe_ci(daily, **kw)),
        "max_drawdown": max_drawdown(daily),
        "total_return": float(equity_curve(daily)[-1] - 1.0),
        "hit_rate": hit_rate(r),
        "valid_rate": valid_rate(valid),
        "action_fractions": dist.fractions,
        "collapsed": dist.collapsed,
        "turnover": turnover(keys, dates, exposure) if keys is not None and exposure is not None else None,
        "accuracy": None, "accuracy_ci": None, "accuracy_p_value_by_date": None,
    }
    if picked_better is not None:
        pb = np.asarray(picked_better, float)
        correct_day = np.bincount(inverse, weights=pb, minlength=len(day))
        out["accuracy"] = float(pb.mean())
        out["accuracy_ci"] = list(ratio_ci(correct_day, n_day, **kw))
        out["accuracy_p_value_by_date"] = t_test_p_greater(correct_day / n_day, 0.5)
    return out
