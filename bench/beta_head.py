"""Benchmark: the Beta head's default objective (PPO-clipped passes over each iteration's groups) vs one pass of plain
REINFORCE (the on-policy baseline: each sample used once, by the head that drew it), on equal work.

Both run the Beta head's whole loop (hitchhiker.beta.loop.run_beta_loop: states -> groups sampled by the current
head -> SQL rewards -> training -> checkpoint) on the synthetic market (SyntheticMarket(seed=s), 60 held-out dates)
for the same seeds, iterations, states and group size; only BetaHeadConfig differs. The figure is the held-out mean
reward_usd of the mean positions per $1 (the rewards SQL's price), random ~ 0.000, best possible ~ 0.0095.
A third row, 4 clipped passes, shows where the gain comes from.

    .venv/bin/python bench/beta_head.py [--seeds 5] [--iterations 4]

Ends with `RESULT beta_head ratio=<default / one-pass REINFORCE, mean over seeds after the last iteration>
target=>=1.1 PASS|FAIL`, after a CHECK that the default's loop takes at most 120 s a seed on CPU (the Beta head's
"learns within two minutes", formerly asserted by tests/test_beta_loop.py).
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
from hitchhiker.beta.head import BetaHeadConfig  # noqa: E402
from hitchhiker.beta.loop import run_beta_loop, synthetic_setup  # noqa: E402
from hitchhiker.default_model import default_model_path  # noqa: E402
from hitchhiker.synthetic import SyntheticMarket  # noqa: E402

TARGET = 1.1
LOOP_BUDGET_S = 120.0  # the default objective's whole loop, per seed, on CPU
OBJECTIVES = {
    "default: clipped, <= 200 passes": BetaHeadConfig(),
    "clipped, 4 passes": BetaHeadConfig(epochs=4),
    "one pass, plain REINFORCE (baseline)": BetaHeadConfig(epochs=1, clip_eps=None),
}


def one_run(work: Path, name: str, head: BetaHeadConfig, seed: int, iterations: int) -> dict:
    folder = work / f"{abs(hash(name)) % 10**8}-{seed}"
    con = db.connect(folder.with_suffix(".duckdb"))
    cfg = synthetic_setup(con, SyntheticMarket(seed=seed), eval_dates=60, iterations=iterations, n_boot=200,
                          final_evaluation=False)
    cfg.head = head
    started = time.perf_counter()
    res = run_beta_loop(con, cfg, folder / "loop", folder / "replay")
    con.close()
    return {"curve": [h["mean_reward_usd"] for h in res.history[1:]], "seconds": time.perf_counter() - started}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=4)
    args = ap.parse_args()
    default_model_path()  # the tokenizer that counts prompt tokens, built once before any run
    finals: dict[str, list[float]] = {}
    loop_seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, head in OBJECTIVES.items():
            runs = [one_run(Path(tmp), name, head, s, args.iterations) for s in range(args.seeds)]
            finals[name] = [r["curve"][-1] for r in runs]
            loop_seconds[name] = max(r["seconds"] for r in runs)
            per_iteration = [statistics.mean(r["curve"][i] for r in runs) for i in range(args.iterations)]
            print(f"{name}: held-out mean reward_usd by iteration {[round(x, 4) for x in per_iteration]}; after "
                  f"{args.iterations}: {statistics.mean(finals[name]):.4f} [{min(finals[name]):.4f}, "
                  f"{max(finals[name]):.4f}] over {args.seeds} seeds; loop {statistics.mean(r['seconds'] for r in runs):.1f} s/seed")
    names = list(OBJECTIVES)
    ratio = statistics.mean(finals[names[0]]) / statistics.mean(finals[names[-1]])
    return report("beta_head", ratio, ">=", TARGET,
                  checks=(("default_loop_seconds", loop_seconds[names[0]], "<=", LOOP_BUDGET_S),))


if __name__ == "__main__":
    sys.exit(main())
