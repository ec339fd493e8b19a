"""Reliability of the listwise learning loop (issue 20): bench/learning.py's seeds on the market of triples.

Each seed runs the loop on `SyntheticMarket(basket_size=3)` (K = 3 baskets ranked UP > FLAT > DOWN by their trend
words) until the held-out pair-ordering accuracy of the greedy rankings is >= 0.8 (p < 0.001 on >= 200 baskets) or
10 minutes. Prints each curve, the median time to 0.8 and the RESULT line (fraction of seeds reaching 0.8 within
10 minutes; target >= 0.8). The baseline is the loop's own start: the warmed-up model before any GRPO step.

    .venv/bin/python bench/learning_listwise.py [--seeds 5] [--budget-s 600]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _result import report  # noqa: E402  (bench/ is the script's own folder on sys.path)
from learning import TARGET, run_seeds  # noqa: E402


def main() -> int:
    return report("learning_listwise", run_seeds("listwise"), ">=", TARGET)


if __name__ == "__main__":
    sys.exit(main())
