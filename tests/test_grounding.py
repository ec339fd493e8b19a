"""Grounding of hand-written advisory texts against hand-written states, with known supported/unsupported claims."""
import math

import pytest

from hitchhiker import grounding

FULL_PROMPT = (
    "Stock A: daily returns % (oldest first): 0.50, -1.20, 2.34. Close $41.10.\n"
    "Stock B: daily returns % (oldest first): -0.40, -0.80, -1.75. Close $118.25.\n"
    "Which stock, A or B, will have the higher return over the next trading day?"
)
FULL_FEATURES = {
    "A": {"returns_pct": [0.5, -1.2, 2.34], "close": 41.10, "return_5d_pct": 1.62},
    "B": {"returns_pct": [-0.4, -0.8, -1.75], "close": 118.25, "return_5d_pct": -2.93},
}
TREND_PROMPT = "Stock A trend: UP. Stock B trend: DOWN.\nWhich stock, A or B, will have the higher return?"


def judged(text, prompt=FULL_PROMPT, features=FULL_FEATURES, universe=()):
    g = grounding.check(text, prompt, features, universe)
    return [(c.kind, c.supported) for c in g.claims], g


def test_supported_numbers_and_directions():
    claims, g = judged("Stock A rose 2.3% yesterday while Stock B fell 1.75%. Stock B closed at $118.25.")
    # entities: A, B, B again; numbers: 2.3 % (A's 2.34 at one decimal), 1.75 % (B, a fall), $118.25 (B's close)
    assert g.n_claims == 6 and g.n_unsupported == 0, g.claims
    assert [c.subject for c in g.claims if c.kind == "number"] == ["A", "B", "B"]
    assert ("number", True) in claims and ("entity", True) in claims


def test_invented_number_is_unsupported():
    _, g = judged("Stock A gained 7.5% last week.")
    bad = [c for c in g.claims if not c.supported]
    assert len(bad) == 1 and bad[0].kind == "number" and "7.5" in bad[0].reason


def test_number_with_the_wrong_sign_is_unsupported():
    # B's 1.75 % was a loss, not a gain
    _, g = judged("Stock B gained 1.75% on the day.")
    bad = [c for c in g.claims if not c.supported]
    assert len(bad) == 1 and "opposite sign" in bad[0].reason


def test_number_of_the_other_stock_is_not_support():
    # 118.25 is B's price, not A's
    _, g = judged("Stock A trades at $118.25.")
    assert g.n_unsupported == 1


def test_direction_without_number():
    claims, g = judged("Stock B has been falling. Stock A is up.", prompt=TREND_PROMPT, features={})
    assert g.n_unsupported == 0 and ("direction", True) in claims
    _, g = judged("Stock A dropped sharply.", prompt=TREND_PROMPT, features={})
    bad = [c for c in g.claims if not c.supported]
    assert len(bad) == 1 and bad[0].kind == "direction" and "Stock A" in bad[0].reason


def test_a_trend_length_in_days_is_no_direction():
    # the synthetic market's features: trend_days (a count, always positive) beside the signed trend return
    features = {"A": {"trend": "UP", "trend_days": 5, "trend_return_pct": 4.85},
                "B": {"trend": "DOWN", "trend_days": 5, "trend_return_pct": -1.43}}
    _, g = judged("Stock B is UP.", prompt=TREND_PROMPT, features=features)
    bad = [c for c in g.claims if not c.supported]
    assert len(bad) == 1 and bad[0].kind == "direction" and "went up" in bad[0].reason
    _, g = judged("Stock B is DOWN. Stock A is UP.", prompt=TREND_PROMPT, features=features)
    assert g.n_unsupported == 0


def test_unknown_placeholder_and_real_ticker_are_unsupported():
    _, g = judged("Stock C looks better than AAPL, buy A.", universe=["AAPL", "MSFT", "A"])
    reasons = sorted(c.reason for c in g.claims if not c.supported)
    assert len(reasons) == 2 and "Stock C" in reasons[0] and "AAPL" in reasons[1]


def test_text_with_no_claims_and_rates():
    _, g = judged("Momentum favours the first one.")
    assert g.n_claims == 0
    assert math.isnan(grounding.unsupported_rate([g]))
    _, g1 = judged("Stock A gained 7.5%.")  # entity ok, number bad
    _, g2 = judged("Stock B fell 1.75%.")  # entity ok, number ok
    assert grounding.unsupported_rate([g, g1, g2]) == pytest.approx(1 / 4)


def test_features_as_json_text_and_elementwise_subject():
    prompt = "Stock A: daily returns % (oldest first): 1.10, -0.30.\nWhat position should be held?"
    g = grounding.check("The stock fell 0.3% yesterday but rose 1.1% before.", prompt,
                        '{"A": {"returns_pct": [1.1, -0.3]}}')
    assert g.n_claims == 2 and g.n_unsupported == 0, g.claims  # each clause judged with its own direction
    g = grounding.check("It rose 0.3% yesterday, after a 1.1% gain.", prompt, {"A": {"returns_pct": [1.1, -0.3]}})
    assert [c.supported for c in g.claims] == [False, True], g.claims


def test_extrapolation_bias():
    # follows the last return every time
    b = grounding.extrapolation_bias([1, -1, 1, -1], [0.02, -0.01, 0.005, -0.03])
    assert b["agreement_rate"] == 1.0 and b["beta"] > 0 and b["n"] == 4
    # contrarian every time
    b = grounding.extrapolation_bias([-1, 1, -1, 1], [0.02, -0.01, 0.005, -0.03])
    assert b["agreement_rate"] == 0.0 and b["beta"] < 0
    # always A: no relation; zero returns are left out of the agreement rate
    b = grounding.extrapolation_bias([1, 1, 1, 1], [0.02, -0.01, 0.0, -0.03])
    assert b["agreement_rate"] == pytest.approx(1 / 3) and b["n"] == 3 and b["beta"] == pytest.approx(0.0)


def test_volume_changes_are_not_price_directions():
    features = {"A": {"returns_pct": [-0.5, -1.0], "volume_changes_pct": [20.0, 35.0], "volatility_pct": 0.4}}
    prompt = "Stock A: returns % -0.50, -1.00; volume change % +20, +35."
    g = grounding.check("Stock A rose.", prompt, features)
    assert [c.supported for c in g.claims if c.kind == "direction"] == [False]
    g = grounding.check("Stock A fell.", prompt, features)
    assert [c.supported for c in g.claims if c.kind == "direction"] == [True]


FULL_RENDERING = """Decision date: 2022-10-07, after the close. Daily figures are oldest first.

Stock A
returns % (last 5 days): +1.87 +1.71 -1.44 +0.25 +0.43
5-day return: +2.82%; volatility: 0.41% per day; 2-day trend: UP
headlines, newest first:
<news>
2022-09-17: Stock A Shares Fall 18% On Weak Guidance
</news>

Stock B
returns % (last 5 days): +1.45 -0.61 +1.08 -1.96 -0.66
5-day return: -0.70%; volatility: 2.38% per day; 2-day trend: UP

Which stock, A or B, will have the higher return over the next trading day?"""


def test_sections_of_a_full_rendering_belong_to_their_stock():
    # no features at all: the numbers come from each stock's own section of the prompt
    ok = grounding.check("Stock A shares fell 18% in September; Stock B lost 0.7% over five days, "
                         "with volatility of 2.38% a day.", FULL_RENDERING)
    assert ok.n_unsupported == 0 and ok.n_claims == 5, ok.claims  # 2 entities, 3 numbers
    bad = grounding.check("Stock B gained 2.82% this week.", FULL_RENDERING)  # that was A's return
    assert bad.n_unsupported == 1 and "2.82" in [c for c in bad.claims if not c.supported][0].reason
