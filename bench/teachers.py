"""Teacher ensembles (issue 21): does a student learn faster from a trained and an untrained teacher, weighted by
their rewards, than from its own samples?

On the synthetic market (couples whose 5-day trend decides the next session; `--market-seed`): a teacher is a
checkpoint of the learning loop on that market after `--teacher-iterations` (48: its held-out accuracy 1.0 and its
sampled answers right ~98 % of the time; at 20, where its greedy accuracy first reached 0.9, its samples were still at
chance); then, for each seed (the loop's, sampling's and training's), from the default small model, two students
run the loop until their held-out greedy accuracy reaches 0.8 (p < 0.001 on >= 200 states):
one sampling its own groups (the baseline: the loop as it is), one trained on groups split between the trained
teacher, the untrained base model and itself by the teachers' weights (hitchhiker.teachers, floor 0.5: each teacher
keeps >= 1/6 of a group), with the loop's teacher_grpo: the student's own rows as the advantages' baseline
(advantage_self) and no importance weight on the teachers' rows (is_mode 'none'). Prints the curves and the trained
teacher's weight per date, then
`RESULT teachers ratio=<iterations self-only / iterations mixed, summed over the seeds> target=>=1.0` (a student
that does not reach 0.8 within --max-iterations counts one more).

    .venv/bin/python bench/teachers.py [--seeds 5] [--first-seed 0] [--market-seed 0] [--max-iterations 40]
        [--teacher-iterations 48]
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
# The loop's teacher_grpo (the student's own rows as the advantages' baseline, no importance weight on the teachers'
# rows) is its default; the floor gives the student's own share (>= 1/6 of a group) its rows for that baseline.
WEIGHTING = {"floor": 0.5}


def _loop(work: Path, name: str, market: int, seed: int, iterations: int, target: float, teachers: dict | None = None,
          eval_every: int = 2):
    """(first iteration at target or None, curve, teacher weights, checkpoint path) of one loop run."""
    con = db.connect(work / f"{name}.duckdb")
    cfg = synthetic_setup(con, SyntheticMarket(seed=market), eval_dates=60, iterations=iterations, eval_every=eval_every,
                          target_accuracy=target, seed=seed)
    cfg.sampling.seed = cfg.grpo.seed = cfg.grpo.shuffle_seed = seed
    cfg.teachers = teachers
    cfg.teacher_weighting = dict(WEIGHTING)
    res = run_loop(con, cfg, work / f"{name}-loop", work / f"{name}-replay")
    reached = [h["iteration"] for h in res.history if h["accuracy"] >= target and h["p_value"] < 1e-3 and h["n"] >= 200]
    curve = [(h["iteration"], round(h["seconds"]), round(h["accuracy"], 3)) for h in res.history]
    weights = con.execute("SELECT decision_date, teacher, round(weight, 3) FROM teacher_weights ORDER BY 1, 2").fetchall()
    path = registry.get(con, res.checkpoint_id)["path"] if res.checkpoint_id else None
    con.close()
    return (reached[0] if reached else None), curve, weights, path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--market-seed", type=int, default=0)
    ap.add_argument("--max-iterations", type=int, default=40)
    ap.add_argument("--teacher-iterations", type=int, default=48)
    args = ap.parse_args()
    default_model_path()
    totals = {"self": 0, "mixed": 0}
    with tempfile.TemporaryDirectory(prefix="hh-bench-teachers-") as tmp:
        work = Path(tmp)
        m = args.market_seed
        _, curve, _, teacher = _loop(work, "teacher", m, m, args.teacher_iterations, 1.1, eval_every=4)
        print(f"teacher (market {m}) after {args.teacher_iterations} iterations: curve {curve}", flush=True)
        learned = curve[-1][2] >= 0.9  # a teacher that did not learn: nothing to compare, FAIL
        for seed in range(args.first_seed, args.first_seed + args.seeds) if learned else ():
            runs = {}
            for name, teachers in (("self", None), ("mixed", {"trained": teacher, "untrained": "base", "self": "self"})):
                reached, curve, weights, _ = _loop(work, f"{name}{seed}", m, seed, args.max_iterations, TARGET, teachers)
                runs[name] = reached or args.max_iterations + 1  # not reached: counted as one more than the run
                totals[name] += runs[name]
                print(f"seed {seed}: student on {name} groups: {TARGET} at iteration {reached}; curve {curve}", flush=True)
                if teachers:
                    print(f"seed {seed}: trained teacher's weight by date:", [w for _, t, w in weights if t == "trained"])
            print(f"seed {seed}: iterations to {TARGET}: self-only {runs['self']}, mixed {runs['mixed']}", flush=True)
    print(f"iterations to {TARGET} over {args.seeds} seeds: self-only {totals['self']}, mixed {totals['mixed']}")
    return report("teachers", totals["self"] / totals["mixed"] if learned else 0.0, ">=", 1.0)


if __name__ == "__main__":
    sys.exit(main())
