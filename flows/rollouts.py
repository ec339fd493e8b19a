"""Flow `generate_rollouts`: sample a group for every state of some decision dates that has none yet for the policy.

A thin wrapper over hitchhiker.rollouts.generate_dates. The model is loaded and the groups are sampled outside the
store slot; the DuckDB file is held (under `store_slot()`) only to read the states and, at the end, to point the
view `replay` at the Parquet root. Parquet files need no slot: each group is its own file, renamed into place.
Artifacts: a progress bar while sampling, and a summary table (valid-format rate, action distribution, tokens/s).
Other flows (the daily flow) call this one as a subflow with these parameter names.
"""
from __future__ import annotations

import re

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from flows.slots import store_slot


@task
def sample_groups(db: str | None, start: str, end: str, model: str | None, checkpoint: str | None, group_size: int,
                  mode: str | None, replay_root: str | None, max_states: int | None, seed: int) -> dict:
    """Sample and write the missing groups; returns the run's summary (counts, rates, action counts)."""
    from hitchhiker.policy import PolicyConfig
    from hitchhiker.rollouts import SamplingConfig, generate_dates

    progress_id = create_progress_artifact(progress=0.0, description=f"groups sampled, {start} .. {end}")

    def progress(done: int, total: int) -> None:
        update_progress_artifact(progress_id, 100.0 * done / total if total else 100.0)

    return generate_dates(db, start, end, PolicyConfig(model=model, checkpoint=checkpoint),
                          SamplingConfig(group_size=group_size, seed=seed), replay_root, mode=mode,
                          max_states=max_states, progress=progress, hold_store=store_slot)


@task
def attach_summary(summary: dict, start: str, end: str) -> str:
    """A table artifact: one row per metric, then one per action (share of the run's rollouts)."""
    n = summary["rollouts"]
    rows = [
        {"metric": "policy_version", "value": summary["policy_version"]},
        {"metric": "states in range", "value": summary["states"]},
        {"metric": "groups written", "value": summary["groups_written"]},
        {"metric": "groups skipped (already there)", "value": summary["groups_skipped"]},
        {"metric": "states left (max_states)", "value": summary["states_left"]},
        {"metric": "rollouts", "value": n},
        {"metric": "valid-format rate", "value": None if summary["valid_rate"] is None else round(summary["valid_rate"], 4)},
        {"metric": "completion tokens/s", "value": round(summary["tokens_per_s"], 1)},
    ]
    rows += [{"metric": f"action {action}", "value": round(count / n, 4)}
             for action, count in sorted(summary["actions"].items(), key=lambda kv: -kv[1])]
    key = re.sub(r"[^a-z0-9-]", "-", f"rollouts-{start}-{end}".lower())
    create_table_artifact(table=rows, key=key, description=(
        f"Rollouts {start} .. {end} by {summary['policy_version']}: {summary['groups_written']} groups written, "
        f"{summary['groups_skipped']} already there (action rows: share of this run's rollouts)"))
    return key


@flow(name="generate_rollouts")
def generate_rollouts(start: str, end: str | None = None, db: str | None = None, model: str | None = None,
                      checkpoint: str | None = None, group_size: int = 8, mode: str | None = None,
                      replay_root: str | None = None, max_states: int | None = None, seed: int = 0) -> dict:
    """Groups for the states of [start, end] (end defaults to start) with none yet for the policy; idempotent.

    checkpoint: a checkpoint folder or a checkpoint_id from the `checkpoints` table (None: the base model);
    mode: 'pairwise' or 'elementwise' (None: both); max_states: at most this many new groups in this run.
    """
    end = end or start
    summary = sample_groups(db, start, end, model, checkpoint, group_size, mode, replay_root, max_states, seed)
    key = attach_summary(summary, start, end)
    get_run_logger().info("rollouts %s..%s by %s: %d groups written, %d already there, valid rate %s, %.0f tokens/s "
                          "(artifact %s)", start, end, summary["policy_version"], summary["groups_written"],
                          summary["groups_skipped"], summary["valid_rate"], summary["tokens_per_s"], key)
    return {k: summary[k] for k in ("groups_written", "groups_skipped", "states_left", "valid_rate", "tokens_per_s",
                                    "policy_version")}
