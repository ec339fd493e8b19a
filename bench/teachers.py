"""Teacher ensembles (issue 21): does a student learn faster from a trained and an untrained teacher, weighted by
their rewards, than from its own samples?

On the synthetic market (couples whose 5-day trend decides the next session): a teacher is a checkpoint of the
learning loop on the same market after `--teacher-iterations` (48: its held-out accuracy 1.0 and its sampled answers
right ~98 % of the time; at 20, where its greedy accuracy first reached 0.9, its samples were still at chance); then,
from the default small model and the same seeds, two students
run the loop until their held-out greedy accuracy reaches 0.8 (p < 0.001 on >= 200 states): one sampling its own
groups (the baseline: the loop as it is), one trained on groups split between the trained teacher, the untrained
base model and itself by the teachers' weights (hitchhiker.teachers). Prints both curves and the trained teacher's weight per
date, then `RESULT teachers ratio=<iterations self-only / iterations mixed> target=>=1.0`.

    .venv/bin/python bench/teachers.py [--seed 0] [--max-iterations 80] [--teacher-iterations 48]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _result import report  # noqa: E402  (bench/ is the script's own folder on sys.path)

from hitchhiker import db, registry  # noqa: E402
from hitchhiker.default_model import default_model_path  # noqa: E402
from hitchhiker.loop import run_loop, synthetic_setup  # noqa: E402
from hitchhiker.synthetic import SyntheticMarket  # noqa: E402

TARGET = 0.8


def _loop(work: Path, name: str, seed: int, iterations: int, target: float, teachers: dict | None = None,
          eval_every: int = 2):
    con = db.connect(work / f"{name}.duckdb")
    cfg = synthetic_setup(con, SyntheticMarket(seed=seed), eval_dates=60, iterations=iterations, eval_every=eval_every,
                          target_accuracy=target, seed=seed)
    cfg.sampling.seed = cfg.grpo.seed = cfg.grpo.shuffle_seed = seed
    cfg.teachers = teachers
    res = run_loop(con, cfg, work / f"{name}-loop", work / f"{name}-replay")
    reached = [h["iteration"] for h in res.history if h["accuracy"] >= target and h["p_value"] < 1e-3 and h["n"] >= 200]
    curve = [(h["iteration"], round(h["seconds"]), round(h["accuracy"], 3)) for h in res.history]
    weights = con.execute("SELECT decision_date, teacher, round(weight, 3) FROM teacher_weights ORDER BY 1, 2").fetchall()
    path = registry.get(con, res.checkpoint_id)["path"] if res.checkpoint_id else None
    con.close()
    return (reached[0] if reached else None), curve, weights, path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-iterations", type=int, default=80)
    ap.add_argument("--teacher-iterations", type=int, default=48)
    args = ap.parse_args()
    default_model_path()
    with tempfile.TemporaryDirectory(prefix="hh-bench-teachers-") as tmp:
        work = Path(tmp)
        _, curve, _, teacher = _loop(work, "teacher", args.seed, args.teacher_iterations, 1.1, eval_every=4)
        print(f"teacher (seed {args.seed}, {args.teacher_iterations} iterations): curve {curve}", flush=True)
        ratio = 0.0  # a teacher that did not learn: nothing to compare, FAIL
        if curve[-1][2] >= 0.9:
            self_it, self_curve, _, _ = _loop(work, "self", args.seed, args.max_iterations, TARGET)
            print(f"student, own samples: {TARGET} at iteration {self_it}; curve {self_curve}", flush=True)
            mixed_it, mixed_curve, weights, _ = _loop(work, "mixed", args.seed, args.max_iterations, TARGET,
                                                      teachers={"trained": teacher, "untrained": "base", "self": "self"})
            print(f"student, teachers' samples: {TARGET} at iteration {mixed_it}; curve {mixed_curve}", flush=True)
            print("trained teacher's weight by date:", [w for _, t, w in weights if t == "trained"])
            # not reached: counted as one more than the run
            ratio = (self_it or args.max_iterations + 1) / (mixed_it or args.max_iterations + 1)
    return report("teachers", ratio, ">=", 1.0)


if __name__ == "__main__":
    sys.exit(main())
