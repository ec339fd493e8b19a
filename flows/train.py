"""Flow `train`: one GRPO (or DPO) run on the matured replay groups the parent checkpoint has not used yet.

A thin wrapper over hitchhiker.train. Meant for the GPU work pool (a deployment the daily flow triggers); the
run folder makes it resumable: a retried or restarted flow run with the same run_dir continues from the last
checkpoint without reusing or skipping a group. Training holds the store slot for its whole run (it reads the
buffer and registers checkpoints); artifacts: the per-step metrics table and a markdown summary.
"""
from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.slots import store_slot


@task
def train_run(db_path: str | None, algorithm: str, config: dict, run_dir: str | None, parent: str | None,
              model: str | None) -> dict:
    """Train under the store slot; returns the checkpoint id, path, steps and per-step metrics (small numbers)."""
    import time

    from hitchhiker import db
    from hitchhiker.replay import default_root, ensure_view
    from hitchhiker.rewards import ensure_advantages_view
    from hitchhiker.train import checkpoints
    from hitchhiker.train.config import DPOConfig, GRPOConfig

    run_dir = run_dir or str(checkpoints.default_checkpoints_root(db_path) / f"{algorithm}-{time.strftime('%Y%m%d-%H%M%S')}")
    with store_slot():
        con = db.connect(db_path)
        try:
            ensure_view(con, default_root(db_path))
            ensure_advantages_view(con)
            if algorithm == "grpo":
                from hitchhiker.train.grpo import train_grpo

                res = train_grpo(con, GRPOConfig(**config), run_dir, parent_id=parent, base_model=model)
            elif algorithm == "dpo":
                from hitchhiker.train.dpo import train_dpo

                res = train_dpo(con, DPOConfig(**config), run_dir, parent_id=parent, base_model=model)
            else:
                raise ValueError(f"algorithm {algorithm!r} is not 'grpo' or 'dpo'")
        finally:
            con.close()
    return {"checkpoint_id": res.checkpoint_id, "path": res.path, "steps": res.steps, "groups": len(res.groups_used),
            "run_dir": run_dir, "metrics": [{k: round(v, 6) if isinstance(v, float) else v for k, v in m.items()} for m in res.metrics]}


@flow(name="train")
def train_flow(db: str | None = None, algorithm: str = "grpo", parent: str | None = None, model: str | None = None,
               run_dir: str | None = None, config: dict | None = None) -> dict:
    """Train a checkpoint from the buffer (config: GRPOConfig / DPOConfig fields) and register it."""
    out = train_run(db, algorithm, config or {}, run_dir, parent, model)
    if out["metrics"]:
        create_table_artifact(table=out["metrics"], key="train-metrics", description=f"{algorithm} steps of {out['checkpoint_id']}")
    create_markdown_artifact(
        markdown=f"# {algorithm} checkpoint `{out['checkpoint_id']}`\n\n- parent: `{parent}`\n- steps: {out['steps']}\n"
                 f"- replay groups used: {out['groups']}\n- folder: `{out['path']}`\n- TensorBoard: `{out['run_dir']}/tensorboard`\n",
        key="train-summary", description="training run")
    get_run_logger().info("checkpoint %s after %d steps on %d groups", out["checkpoint_id"], out["steps"], out["groups"])
    return {k: out[k] for k in ("checkpoint_id", "path", "steps", "groups")}
