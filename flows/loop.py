"""Flow `loop`: the learning loop (states -> rollouts -> rewards -> GRPO -> checkpoint -> held-out accuracy).

A thin wrapper over hitchhiker.loop (policy 'beta-head': hitchhiker.beta.loop): one task runs the iterations under
the store slot (each iteration reads and writes the store); artifacts: the held-out accuracy (Beta head: mean
reward) per evaluation (table) and a progress artifact.
"""
from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from flows.slots import store_slot


@task
def run_iterations(db_path: str | None, iterations: int, synthetic: bool, seed: int, train_start: str | None,
                   train_end: str | None, eval_start: str | None, eval_end: str | None, model: str | None,
                   eval_every: int, out_dir: str | None, policy: str = "llm", mode: str = "pairwise",
                   list_size: int = 4, teachers: dict[str, str] | None = None,
                   teacher_weighting: dict | None = None) -> dict:
    """Run the loop; returns the last checkpoint id and the evaluation rows (small numbers)."""
    from pathlib import Path

    from hitchhiker import db
    from hitchhiker.loop import loop_config, run_loop
    from hitchhiker.replay import default_root

    progress = create_progress_artifact(progress=0.0, description="loop iterations")
    with store_slot():
        con = db.connect(db_path)
        try:
            if policy == "beta-head":
                return _run_beta(con, db_path, iterations, synthetic, seed, train_start, train_end, eval_start, eval_end,
                                 out_dir, progress)
            cfg = loop_config(con, synthetic=synthetic, mode=mode, list_size=list_size, seed=seed,
                              train_start=train_start, train_end=train_end, eval_start=eval_start, eval_end=eval_end,
                              iterations=iterations, model=model, eval_every=eval_every, teachers=teachers or None,
                              teacher_weighting=teacher_weighting or {})
            out = Path(out_dir) if out_dir else db.beside(db_path, "loop")
            res = run_loop(con, cfg, out, default_root(db_path),
                           on_iteration=lambda r: update_progress_artifact(progress, 100.0 * r["iteration"] / iterations))
            weights = con.execute(db.sql_text("teachers/over_time"), [None]).fetchall() if teachers else []
        finally:
            con.close()
    rows = [{k: h[k] for k in ("iteration", "seconds", "accuracy", "valid_rate", "n", "n_unpriced", "p_value", "checkpoint_id")}
            for h in res.history]
    weight_rows = [{"decision_date": d.isoformat(), "teacher": t, "weight": w, "score": sc, "forced": f}
                   for d, t, w, sc, f, _ in weights]
    return {"checkpoint_id": res.checkpoint_id, "history": rows, "out_dir": res.out_dir, "teacher_weights": weight_rows}


def _run_beta(con, db_path, iterations, synthetic, seed, train_start, train_end, eval_start, eval_end, out_dir, progress) -> dict:
    """The Beta position head's loop (hitchhiker.beta.loop) on the same store, replay and registry."""
    from pathlib import Path

    from hitchhiker import db
    from hitchhiker.beta import loop as beta_loop
    from hitchhiker.replay import default_root
    from hitchhiker.states import trading_days
    from hitchhiker.synthetic import SyntheticMarket

    if synthetic:
        cfg = beta_loop.synthetic_setup(con, SyntheticMarket(seed=seed), iterations=iterations, seed=seed)
    else:
        cfg = beta_loop.BetaLoopConfig(train_dates=trading_days(con, train_start, train_end),
                                       eval_dates=trading_days(con, eval_start, eval_end), iterations=iterations, seed=seed)
    out = Path(out_dir) if out_dir else db.beside(db_path, "loop")
    res = beta_loop.run_beta_loop(con, cfg, out, default_root(db_path),
                                  on_iteration=lambda r: update_progress_artifact(progress, 100.0 * r["iteration"] / iterations))
    keys = ("iteration", "seconds", "mean_reward_usd", "random_mean_reward_usd", "mean_position", "n", "checkpoint_id")
    return {"checkpoint_id": res.checkpoint_id, "history": [{k: h[k] for k in keys} for h in res.history],
            "out_dir": res.out_dir, "report_path": res.report_path}


@flow(name="loop")
def loop_flow(iterations: int = 10, db: str | None = None, synthetic: bool = False, seed: int = 0,
              train_start: str | None = None, train_end: str | None = None, eval_start: str | None = None,
              eval_end: str | None = None, model: str | None = None, eval_every: int = 5, out_dir: str | None = None,
              policy: str = "llm", mode: str = "pairwise", list_size: int = 4,
              teachers: dict[str, str] | None = None, teacher_weighting: dict | None = None) -> dict:
    """`hitchhiker loop` as a flow: N iterations, held-out greedy accuracy (listwise: pair-ordering accuracy; policy
    'beta-head': the Beta head's held-out mean reward beside the random baseline's) as a table artifact.
    teachers: {policy_version: checkpoint id, folder or 'base'}: the student trains on their groups (issue 21); the
    teachers' weights per date become a second table artifact. teacher_weighting: hitchhiker.teachers.TeachersConfig's
    half_life_dates, temperature, floor, stale_days, stale_share."""
    if policy not in ("llm", "beta-head"):
        raise ValueError(f"policy {policy!r} is not 'llm' or 'beta-head'")
    out = run_iterations(db, iterations, synthetic, seed, train_start, train_end, eval_start, eval_end, model, eval_every,
                         out_dir, policy, mode, list_size, teachers, teacher_weighting)
    if policy == "beta-head":
        create_table_artifact(table=out["history"], key="loop-beta-head", description="held-out mean reward_usd")
        last = out["history"][-1]
        get_run_logger().info("loop (beta-head): held-out mean reward %+.5f (random %+.5f) after %d iterations; "
                              "checkpoint %s", last["mean_reward_usd"], last["random_mean_reward_usd"],
                              last["iteration"], out["checkpoint_id"])
        return {"checkpoint_id": out["checkpoint_id"], "mean_reward_usd": last["mean_reward_usd"],
                "random_mean_reward_usd": last["random_mean_reward_usd"], "out_dir": out["out_dir"],
                "report_path": out["report_path"]}
    create_table_artifact(table=out["history"], key="loop-accuracy", description=f"held-out greedy {mode} accuracy")
    if out["teacher_weights"]:
        create_table_artifact(table=out["teacher_weights"], key="loop-teacher-weights",
                              description="teachers' weights per decision date (sql/teachers/over_time.sql)")
    last = out["history"][-1]
    get_run_logger().info("loop: accuracy %.3f after %d iterations; checkpoint %s", last["accuracy"], last["iteration"], out["checkpoint_id"])
    return {"checkpoint_id": out["checkpoint_id"], "accuracy": last["accuracy"], "out_dir": out["out_dir"]}
