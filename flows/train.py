"""Flow `train`: one GRPO (or DPO, ORPO) run from a training batch on shared storage; and the store-side tasks around it.

The flow is what the gpu work pool runs (deployment `train/train`): it takes a batch URL and a run URL, never opens
the DuckDB store and never takes the store slot, so a training of hours blocks no other daily run. A retried or
restarted flow run with the same URLs continues from the run's last committed checkpoint without reusing or skipping
a group. Artifacts: the per-step metrics table and a markdown summary.

The orchestrator's side (CPU pool, under the store slot for well under a second each): `prepare_training` reads
the lineage and the advantages from the store, then (slot free) the groups' tokens from the replay files and writes
the batch (hitchhiker/batches.py), then records the run; `register_training` registers the run's committed
checkpoints with their lineage (hitchhiker/registry.py), also those of a run that finished while nobody waited.
"""
from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.slots import store_slot


@task
def train_run(batch_url: str, run_url: str) -> dict:
    """Train from the batch (GRPO, DPO or ORPO, as the batch says); returns the checkpoints, steps and per-step
    metrics."""
    from hitchhiker.train import batch

    algorithm = batch.read_meta(batch_url)["algorithm"]
    if algorithm in batch.PREFERENCE_ALGORITHMS:
        from hitchhiker.train.preference import train_pairs_batch

        res = train_pairs_batch(batch_url, run_url, algorithm)
    else:
        from hitchhiker.train.grpo import train_batch

        res = train_batch(batch_url, run_url)
    return {"checkpoint_id": res.checkpoint_id, "path": res.path, "steps": res.steps, "groups": len(res.groups_used),
            "checkpoints": res.checkpoints, "run_url": run_url,
            "metrics": [{k: round(v, 6) if isinstance(v, float) else v for k, v in m.items()} for m in res.metrics]}


@flow(name="train")
def train_flow(batch_url: str, run_url: str) -> dict:
    """Train a run from a committed training batch; checkpoints are committed under run_url (the store is not
    opened: the orchestrator registers them)."""
    out = train_run(batch_url, run_url)
    if out["metrics"]:
        create_table_artifact(table=out["metrics"], key="train-metrics", description=f"steps of {out['checkpoint_id']}")
    create_markdown_artifact(
        markdown=f"# checkpoint `{out['checkpoint_id']}`\n\n- batch: `{batch_url}`\n- steps: {out['steps']}\n"
                 f"- replay groups used: {out['groups']}\n- committed: `{out['path']}`\n",
        key="train-summary", description="training run")
    get_run_logger().info("checkpoint %s after %d steps on %d groups", out["checkpoint_id"], out["steps"], out["groups"])
    return {k: out[k] for k in ("checkpoint_id", "path", "steps", "groups", "checkpoints")}


@task
def prepare_training(db_path: str, storage: str | None, run_url: str, algorithm: str, config: dict,
                     parent: str | None, model: str | None) -> dict:
    """Under the store slot: the batch of groups the parent has not used, written to storage; the run recorded.
    A run URL already recorded keeps its batch (a re-triggered training resumes it)."""
    from hitchhiker import batches, db, registry, replay, storage as files
    from hitchhiker.rewards import ensure_advantages_view
    from hitchhiker.train.config import PREFERENCE_CONFIGS, GRPOConfig

    root, replay_root = files.location(db_path, storage, "batches"), files.location(db_path, storage, "replay")
    if algorithm != "grpo" and algorithm not in PREFERENCE_CONFIGS:
        raise ValueError(f"algorithm {algorithm!r} is not 'grpo', 'dpo' or 'orpo'")
    with store_slot():
        con = db.connect(db_path)
        try:
            known = con.execute("SELECT batch_url FROM train_runs WHERE run_url = ?", [run_url]).fetchone()
            if known is not None:
                return {"batch_url": known[0], "run_url": run_url, "resumed": True}
            ensure_advantages_view(con)
            if algorithm in PREFERENCE_CONFIGS:  # pairs are one row per group: read under the slot
                replay.ensure_view(con, replay_root)
                batch_url = batches.write_pairs_batch(con, PREFERENCE_CONFIGS[algorithm](**config), root,
                                                      parent_id=parent, base_model=model)
                registry.record_run(con, run_url, batch_url)
                return {"batch_url": batch_url, "run_url": run_url, "resumed": False}
            selection = batches.StoreSelection.read(con, GRPOConfig(**config), parent, model)
        finally:
            con.close()
    # GRPO: the groups' tokens are read from the replay files with the store closed (its slot free for other runs)
    detached = selection.detached(replay_root)
    try:
        batch_url = batches.write_grpo_batch(detached, GRPOConfig(**config), root, selection=selection)
    finally:
        detached.close()
    with store_slot():
        con = db.connect(db_path)
        try:
            registry.record_run(con, run_url, batch_url)
        finally:
            con.close()
    return {"batch_url": batch_url, "run_url": run_url, "resumed": False}


@task
def register_training(db_path: str, run_url: str | None = None) -> dict:
    """Under the store slot: register the committed checkpoints of one run (or of every recorded run)."""
    from hitchhiker import db, registry

    with store_slot():
        con = db.connect(db_path)
        try:
            runs = {run_url: registry.register_run(con, run_url)} if run_url else registry.register_known_runs(con)
        finally:
            con.close()
    return runs
