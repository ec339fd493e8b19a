"""Metric definitions on small hand-computed cases, and bootstrap coverage on a known distribution."""
import math

import numpy as np
import pytest

from hitchhiker import metrics


def test_sharpe_by_hand():
    daily = [0.01, -0.01, 0.02, 0.0]
    mean = 0.005
    sd = math.sqrt(((0.005) ** 2 + (0.015) ** 2 + (0.015) ** 2 + (0.005) ** 2) / 3)  # ddof = 1
    assert metrics.sharpe(daily) == pytest.approx(mean / sd * math.sqrt(252), rel=1e-12)
    assert math.isnan(metrics.sharpe([0.01, 0.01]))  # zero volatility: undefined, not infinite
    assert math.isnan(metrics.sharpe([0.01]))


def test_max_drawdown_by_hand():
    # equity 1.1, 0.55, 0.66: peak 1.1, trough 0.55 -> 50 %
    assert metrics.max_drawdown([0.1, -0.5, 0.2]) == pytest.approx(0.5, rel=1e-12)
    # a loss on day one is measured from the starting dollar
    assert metrics.max_drawdown([-0.2, 0.1]) == pytest.approx(0.2, rel=1e-12)
    assert metrics.max_drawdown([0.01, 0.02]) == 0.0
    # two drawdowns, the second deeper: 1.2 -> 0.96 (20 %), then 1.44 -> 0.864 (40 %)
    assert metrics.max_drawdown([0.2, -0.2, 0.5, -0.4]) == pytest.approx(0.4, rel=1e-12)


def test_accuracy_hit_rate_valid_rate_turnover():
    assert metrics.pairwise_accuracy([0.02, -0.01, 0.0, 0.03], [0.01, 0.01, 0.0, 0.05]) == pytest.approx(1.5 / 4)
    assert metrics.hit_rate([0.1, -0.1, 0.0, 0.2]) == 0.5
    assert metrics.valid_rate([True, False, True, True]) == 0.75
    # pair X: +1, +1, -1 (one flip = 2); pair Y: -1, +1 (flip = 2); 3 consecutive steps, sum |diff| = 0 + 2 + 2
    keys = ["X", "X", "X", "Y", "Y"]
    dates = ["2016-01-04", "2016-01-05", "2016-01-06", "2016-01-04", "2016-01-05"]
    assert metrics.turnover(keys, dates, [1, 1, -1, -1, 1]) == pytest.approx(4 / 3)
    # order of rows does not matter, dates do
    assert metrics.turnover(keys[::-1], dates[::-1], [1, -1, -1, 1, 1]) == pytest.approx(4 / 3)


def test_daily_returns_average_within_a_date():
    dates, daily = metrics.daily_returns(["d2", "d1", "d2"], [0.03, 0.01, -0.01])
    assert list(dates) == ["d1", "d2"] and np.allclose(daily, [0.01, 0.01])


def test_action_distribution_flags_collapse():
    d = metrics.action_distribution(["A"] * 96 + ["B"] * 4)
    assert d.collapsed and d.top_action == "A" and d.fractions == {"A": 0.96, "B": 0.04}
    d = metrics.action_distribution(["A", "B", None, "B"])
    assert not d.collapsed and d.fractions["invalid"] == 0.25


def test_binomial_test_exact_values():
    # P(X >= 9 | n=10, p=.5) = (10 + 1) / 1024
    assert metrics.binomial_p_greater(9, 10) == pytest.approx(11 / 1024, rel=1e-12)
    assert metrics.binomial_p_greater(0, 10) == 1.0
    assert metrics.binomial_p_greater(160, 200) < 1e-15
    with pytest.raises(ValueError):
        metrics.binomial_p_greater(11, 10)


def test_student_t_tail_by_hand():
    # closed forms: df=1 is Cauchy, df=2 has P(T > t) = 1/2 - t / (2 sqrt(2 + t^2))
    for t in (-3.0, -0.5, 0.0, 0.3, 1.0, 2.5, 10.0, 1e3):
        assert metrics.student_t_sf(t, 1) == pytest.approx(0.5 - math.atan(t) / math.pi, abs=1e-14)
        assert metrics.student_t_sf(t, 2) == pytest.approx(0.5 - t / (2 * math.sqrt(2 + t * t)), abs=1e-14)
    # table values: t(0.95, 19) = 1.729133, t(0.975, 4) = 2.776445; a huge df is the normal
    assert metrics.student_t_sf(1.729133, 19) == pytest.approx(0.05, abs=1e-6)
    assert metrics.student_t_sf(2.776445, 4) == pytest.approx(0.025, abs=1e-6)
    assert metrics.student_t_sf(1.959964, 1e7) == pytest.approx(0.025, abs=1e-6)
    # far tails keep their relative precision (df=2: ~ 1 / (2 t^2))
    assert metrics.student_t_sf(1e4, 2) == pytest.approx(0.5 - 1e4 / (2 * math.sqrt(2 + 1e8)), rel=1e-6)
    assert math.isnan(metrics.student_t_sf(float("nan"), 3)) and metrics.student_t_sf(float("inf"), 3) == 0.0


def test_t_test_p_greater_by_hand():
    x = [0.02, 0.01, 0.03, -0.01]  # mean 0.0125, t = 1.4638501 with 3 df, p = 0.1197213
    t = 0.0125 / (np.std(x, ddof=1) / 2)
    assert metrics.t_test_p_greater(x) == pytest.approx(metrics.student_t_sf(t, 3), rel=1e-12)
    # df=3 closed form: P(T > t) = 1/2 - (u / (1 + u^2) + atan(u)) / pi with u = t / sqrt(3)
    u = t / math.sqrt(3)
    assert metrics.t_test_p_greater(x) == pytest.approx(0.5 - (u / (1 + u * u) + math.atan(u)) / math.pi, abs=1e-14)
    assert metrics.t_test_p_greater([0.6, 0.7, 0.5], 0.5) == pytest.approx(metrics.student_t_sf(0.1 / (0.1 / math.sqrt(3)), 2))
    assert metrics.t_test_p_greater([0.0, 0.0, 0.0]) == 1.0 and metrics.t_test_p_greater([0.2, 0.2]) == 0.0
    assert math.isnan(metrics.t_test_p_greater([0.1]))


def test_wilson_interval_by_hand():
    lo, hi = metrics.wilson_interval(10, 200)
    assert (lo, hi) == (pytest.approx(0.027383, abs=1e-6), pytest.approx(0.089578, abs=1e-6))
    assert metrics.wilson_interval(0, 200)[0] == 0.0 and metrics.wilson_interval(200, 200)[1] == 1.0
    with pytest.raises(ValueError):
        metrics.wilson_interval(3, 0)


def test_clustered_decisions_fool_the_binomial_test_not_the_test_over_dates():
    """A coin-flipping policy whose answers move together within a date (a mood per day): the binomial p-value over
    decisions rejects chance far more often than 5 %; the t-test over daily accuracies stays near 5 %."""
    rng = np.random.default_rng(23)
    reps, n_dates, per_date = 400, 20, 20
    binomial = by_date = 0
    for _ in range(reps):
        mood = rng.random((n_dates, 1)) < 0.5
        picked = np.where(rng.random((n_dates, per_date)) < 0.8, mood, rng.random((n_dates, per_date)) < 0.5)
        s = metrics.summarize(np.repeat(np.arange(n_dates), per_date), np.zeros(picked.size), np.ones(picked.size, bool),
                              ["A"] * picked.size, picked_better=picked.ravel().astype(float), n_boot=20)
        by_date += s["accuracy_p_value_by_date"] < 0.05
        binomial += metrics.binomial_p_greater(int(picked.sum()), picked.size) < 0.05
    assert binomial / reps > 0.3
    assert by_date / reps <= 0.08, by_date / reps


def test_block_bootstrap_indices_are_blocks():
    idx = metrics.block_bootstrap_indices(10, n_boot=5, block_length=3, seed=1)
    assert idx.shape == (5, 10) and idx.min() >= 0 and idx.max() < 10
    # within a block, indices advance by one (mod n): positions 0-1, 1-2 are inside the first block
    assert np.all((idx[:, 1] - idx[:, 0]) % 10 == 1) and np.all((idx[:, 2] - idx[:, 1]) % 10 == 1)
    assert np.array_equal(idx, metrics.block_bootstrap_indices(10, n_boot=5, block_length=3, seed=1))


def test_bootstrap_coverage_on_a_known_distribution():
    """The 95 % interval of the mean covers the true mean about 95 % of the time (iid normal, known mean)."""
    rng = np.random.default_rng(7)
    true_mean, hits, reps = 0.001, 0, 300
    for rep in range(reps):
        x = rng.normal(true_mean, 0.01, size=250)
        lo, hi = metrics.mean_ci(x, n_boot=400, seed=rep)
        hits += lo <= true_mean <= hi
    coverage = hits / reps
    assert 0.89 <= coverage <= 0.99, coverage


def test_block_bootstrap_keeps_coverage_under_autocorrelation():
    """AR(1) daily returns: blocks keep coverage near nominal; resampling single days (block 1) falls short."""
    rng = np.random.default_rng(11)
    phi, reps, n = 0.6, 200, 300
    hits_block = hits_iid = 0
    for rep in range(reps):
        e = rng.normal(0, 1, size=n + 50)
        x = np.empty_like(e)
        x[0] = e[0]
        for t in range(1, len(e)):
            x[t] = phi * x[t - 1] + e[t]
        x = x[50:]  # true mean 0
        lo, hi = metrics.mean_ci(x, n_boot=300, seed=rep, block_length=15)
        hits_block += lo <= 0 <= hi
        lo, hi = metrics.mean_ci(x, n_boot=300, seed=rep, block_length=1)
        hits_iid += lo <= 0 <= hi
    assert hits_block / reps >= 0.85
    assert hits_iid / reps < hits_block / reps - 0.1


def test_sharpe_ci_covers_the_true_sharpe():
    rng = np.random.default_rng(3)
    mu, sd = 0.001, 0.01
    true = mu / sd * math.sqrt(252)
    hits, reps = 0, 150
    for rep in range(reps):
        lo, hi = metrics.sharpe_ci(rng.normal(mu, sd, size=500), n_boot=300, seed=rep)
        hits += lo <= true <= hi
    assert 0.87 <= hits / reps <= 0.99


def test_paired_difference_ci_excludes_zero_only_for_a_real_edge():
    rng = np.random.default_rng(5)
    market = rng.normal(0, 0.01, size=300)
    better = market + 0.002 + rng.normal(0, 0.001, size=300)
    lo, hi = metrics.paired_difference_ci(better, market, seed=0)
    assert lo > 0
    same = market + rng.normal(0, 0.001, size=300)
    lo, hi = metrics.paired_difference_ci(same, market, seed=0)
    assert lo < 0 < hi
    with pytest.raises(ValueError):
        metrics.paired_difference_ci([1.0, 2.0], [1.0])


def test_summarize_is_consistent_with_the_parts():
    dates = ["d1", "d1", "d2", "d3", "d3", "d4"]
    rewards = [0.01, -0.02, 0.03, 0.0, 0.02, -0.01]
    s = metrics.summarize(dates, rewards, [True] * 5 + [False], ["A", "B", "A", "A", "B", None],
                          picked_better=[1, 0, 1, 0.5, 1, 0], n_boot=200)
    _, daily = metrics.daily_returns(dates, rewards)
    assert s["n_decisions"] == 6 and s["n_days"] == 4
    assert s["mean_reward_usd"] == pytest.approx(np.mean(rewards))
    assert s["sharpe"] == pytest.approx(metrics.sharpe(daily))
    assert s["max_drawdown"] == pytest.approx(metrics.max_drawdown(daily))
    assert s["accuracy"] == pytest.approx(3.5 / 6)
    # daily accuracies 0.5, 1, 0.75, 0: one value per date, against a coin's 0.5
    assert s["accuracy_p_value_by_date"] == pytest.approx(metrics.t_test_p_greater([0.5, 1.0, 0.75, 0.0], 0.5))
    assert "accuracy_p_value" not in s  # the binomial over decisions is gone from summaries
    assert s["valid_rate"] == pytest.approx(5 / 6)
    lo, hi = s["mean_reward_usd_ci"]
    assert lo <= s["mean_reward_usd"] <= hi
    with pytest.raises(ValueError):
        metrics.summarize([], [], [], [])


# --- listwise (issue 20) -------------------------------------------------------------------------------------------

def test_pair_ordering_accuracy_by_hand():
    realized = [0.01, 0.03, -0.02, 0.00]  # A, B, C, D: true order B > A > D > C
    assert metrics.pair_ordering_accuracy("B>A>D>C", realized) == 1.0
    assert metrics.pair_ordering_accuracy("C>D>A>B", realized) == 0.0
    # A>B>C>D: pairs AB wrong, AC right, AD right, BC right, BD right, CD wrong -> 4/6
    assert metrics.pair_ordering_accuracy("A>B>C>D", realized) == pytest.approx(4 / 6, abs=1e-15)
    assert metrics.pair_ordering_accuracy([1, 0, 3, 2], realized) == 1.0  # prompt positions, best first
    # a realized tie is half, whichever way it is ordered: A = B here
    assert metrics.pair_ordering_accuracy("A>B>C", [0.01, 0.01, 0.0]) == pytest.approx((0.5 + 1 + 1) / 3)
    assert metrics.pair_ordering_accuracy("B>A>C", [0.01, 0.01, 0.0]) == pytest.approx((0.5 + 1 + 1) / 3)
    with pytest.raises(ValueError, match="permutation"):
        metrics.pair_ordering_accuracy("A>A>B", [0.0, 0.1, 0.2])


def test_top1_hit_by_hand():
    realized = [0.01, 0.03, -0.02]
    assert metrics.top1_hit("B>A>C", realized) == 1.0
    assert metrics.top1_hit("A>B>C", realized) == 0.0
    assert metrics.top1_hit("A>C>B", [0.02, 0.02, 0.0]) == 0.5  # tied at the top with one other leg
    assert metrics.top1_hit("C>A>B", [0.02, 0.02, 0.0]) == 0.0


def test_spearman_by_hand_and_mean_per_date():
    realized = [0.01, 0.03, -0.02, 0.00]
    assert metrics.spearman("B>A>D>C", realized) == pytest.approx(1.0)
    assert metrics.spearman("C>D>A>B", realized) == pytest.approx(-1.0)
    # A>B>C>D: predicted scores A3 B2 C1 D0 vs realized ranks A2 B3 C0 D1: d = 1,1,1,1 -> 1 - 6*4/(4*15) = 0.6
    assert metrics.spearman("A>B>C>D", realized) == pytest.approx(0.6, abs=1e-12)
    assert math.isnan(metrics.spearman("A>B>C", [0.0, 0.0, 0.0]))
    mean, per_date = metrics.mean_spearman_per_date(
        ["d1", "d1", "d2", "d2"], ["B>A>D>C", "A>B>C>D", "C>D>A>B", "A>B>C"],
        [realized, realized, realized, [0.0, 0.0, 0.0]])
    assert per_date == {"d1": pytest.approx(0.8), "d2": pytest.approx(-1.0)}  # d2's flat basket is skipped
    assert mean == pytest.approx((0.8 - 1.0) / 2)  # each date counts once, whatever its number of baskets


def test_random_rankings_score_chance():
    rng = np.random.default_rng(0)
    acc, top, rho = [], [], []
    for _ in range(4000):
        realized = rng.normal(size=5)
        ranking = list(rng.permutation(5))
        acc.append(metrics.pair_ordering_accuracy(ranking, realized))
        top.append(metrics.top1_hit(ranking, realized))
        rho.append(metrics.spearman(ranking, realized))
    assert abs(np.mean(acc) - 0.5) < 0.02 and abs(np.mean(top) - 0.2) < 0.02 and abs(np.mean(rho)) < 0.03
