"""Reliability of the learning loop: 5 seeds of the synthetic-market loop with the default small model on CPU.

Each seed runs prices -> states -> rollouts -> SQL rewards -> GRPO with held-out greedy evaluation every 2
iterations, until accuracy >= 0.8 (p < 0.001 on >= 200 held-out states) or 10 minutes. Prints each
accuracy-vs-wall-time curve, the median time to 0.8, and the RESULT line (fraction of seeds reaching 0.8 within
10 minutes; target >= 0.8). The baseline is the same loop's own start: the warmed-up model before any GRPO step.

    .venv/bin/python bench/learning.py [--seeds 5] [--budget-s 600]

bench/learning_listwise.py runs the same on the market of triples (issue 20, `one_seed(..., mode="listwise")`).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _result import report  # noqa: E402  (bench/ is the script's own folder on sys.path)

from hitchhiker import db  # noqa: E402
from hitchhiker.loop import run_loop, synthetic_setup  # noqa: E402
from hitchhiker.default_model import default_model_path  # noqa: E402
from hitchhiker.synthetic import SyntheticMarket  # noqa: E402

TARGET = 0.8


def one_seed(work: Path, seed: int, budget_s: float, mode: str = "pairwise") -> dict:
    con = db.connect(work / f"{mode}-seed{seed}.duckdb")
    market = SyntheticMarket(seed=seed, basket_size=3 if mode == "listwise" else 2)
    cfg = synthetic_setup(con, market, eval_dates=60, iterations=500, eval_every=2,
                          target_accuracy=TARGET, time_budget_s=budget_s, seed=seed)
    cfg.sampling.seed = cfg.grpo.seed = cfg.grpo.shuffle_seed = seed
    res = run_loop(con, cfg, work / f"{mode}-loop{seed}", work / f"{mode}-replay{seed}")
    con.close()
    reached = [h for h in res.history if h["accuracy"] >= TARGET and h["p_value"] < 1e-3 and h["n"] >= 200]
    return {"seed": seed, "curve": [(round(h["seconds"], 1), round(h["accuracy"], 3), round(h["valid_rate"], 3)) for h in res.history],
            "start": res.history[0]["accuracy"], "end": res.history[-1]["accuracy"],
            "seconds_to_target": reached[0]["seconds"] if reached and reached[0]["seconds"] <= budget_s else None,
            "min_valid_rate": min(h["valid_rate"] for h in res.history)}


def main() -> int:
    return report("learning", run_seeds("pairwise"), ">=", TARGET)


def run_seeds(mode: str) -> float:
    """Run the seeds the command line asks for; print each curve and the median; the fraction that reached TARGET."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=600.0)
    ap.add_argument("--first-seed", type=int, default=0)
    args = ap.parse_args()
    default_model_path()  # build (or find) the default model before any clock starts
    results = []
    with tempfile.TemporaryDirectory(prefix="hh-bench-learning-") as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            t = time.perf_counter()
            r = one_seed(Path(tmp), seed, args.budget_s, mode)
            results.append(r)
            print(f"seed {seed}: start {r['start']:.3f} end {r['end']:.3f} time to {TARGET}: {r['seconds_to_target']} s "
                  f"(wall {time.perf_counter() - t:.0f} s, min valid {r['min_valid_rate']:.3f})", flush=True)
            print(f"  curve (seconds, held-out accuracy, valid-format rate): {r['curve']}", flush=True)
    times = [r["seconds_to_target"] for r in results if r["seconds_to_target"] is not None]
    ratio = len(times) / len(results)
    print(f"median time to {TARGET}: {statistics.median(times):.0f} s" if times else f"no seed reached {TARGET}")
    return ratio


if __name__ == "__main__":
    sys.exit(main())
