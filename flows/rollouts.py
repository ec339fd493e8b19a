"""Flows `generate_rollouts` and `sample_snapshot`: sample a group for every state of some decision dates that has
none yet for the policy, on the machine that holds the store or on another one.

`generate_rollouts` is a thin wrapper over hitchhiker.rollouts.generate_dates. The model is loaded and the groups are
sampled outside the store slot; the DuckDB file is held (under `store_slot()`) only to read the states and, at the
end, to point the view `replay` at the Parquet root. Parquet files need no slot: each group is its own file, renamed
into place (or one PUT on object storage). Other flows (the daily flow) call it as a subflow with these parameter
names.

Off the store's machine, in three steps (hitchhiker.snapshots): the task `snapshot_states` (orchestrator, under the
slot) exports the missing states and the resolved policy to `<storage>/snapshots/<id>`; the flow `sample_snapshot`
(deployment `sample_snapshot/rollouts`, gpu pool) samples them into the replay under the storage URL without
opening the store; the task `point_replay_view` (orchestrator, under the slot) points the view `replay` at that root.
Artifacts of both flows: a progress bar while sampling, and a summary table (valid-format rate, action
distribution, tokens/s).
"""
from __future__ import annotations

import contextlib
import re

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from flows.slots import store_slot


@task
def sample_groups(db: str | None, start: str, end: str, model: str | None, checkpoint: str | None, group_size: int,
                  mode: str | None, replay_root: str | None, max_states: int | None, seed: int,
                  backend: str = "hf") -> dict:
    """Sample and write the missing groups; returns the run's summary (counts, rates, action counts)."""
    from hitchhiker.policy import PolicyConfig
    from hitchhiker.rollouts import SamplingConfig, generate_dates

    return generate_dates(db, start, end, PolicyConfig(model=model, checkpoint=checkpoint),
                          SamplingConfig(group_size=group_size, seed=seed, backend=backend), replay_root, mode=mode,
                          max_states=max_states, progress=_progress(f"groups sampled, {start} .. {end}"),
                          hold_store=store_slot)


def _progress(description: str):
    """A progress artifact, and the (done, total) callback that updates it."""
    progress_id = create_progress_artifact(progress=0.0, description=description)

    def progress(done: int, total: int) -> None:
        update_progress_artifact(progress_id, 100.0 * done / total if total else 100.0)

    return progress


@task
def attach_summary(summary: dict, start: str, end: str) -> str:
    """A table artifact: one row per metric, then one per action (share of the run's rollouts)."""
    n = summary["rollouts"]
    rows = [
        {"metric": "policy_version", "value": summary["policy_version"]},
        {"metric": "states in range", "value": summary["states"]},
        {"metric": "groups written", "value": summary["groups_written"]},
        {"metric": "groups skipped (already there)", "value": summary["groups_skipped"]},
        {"metric": "states that cannot be sampled (skipped, see the log)", "value": len(summary["states_failed"])},
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


def _log_failed(summary: dict) -> None:
    for state_id, why in summary["states_failed"].items():
        get_run_logger().warning("state %s skipped, its group cannot be sampled or stored: %s", state_id, why)


@flow(name="generate_rollouts")
def generate_rollouts(start: str, end: str | None = None, db: str | None = None, model: str | None = None,
                      checkpoint: str | None = None, group_size: int = 8, mode: str | None = None,
                      replay_root: str | None = None, max_states: int | None = None, seed: int = 0,
                      storage: str | None = None, backend: str = "hf") -> dict:
    """Groups for the states of [start, end] (end defaults to start) with none yet for the policy; idempotent.
    The replay is replay_root, else <storage>/replay, else the folder beside the store.

    checkpoint: a checkpoint folder or a checkpoint_id from the `checkpoints` table (None: the base model);
    mode: 'pairwise' or 'elementwise' (None: both); max_states: at most this many new groups in this run;
    backend: 'hf' or 'vllm' (one vLLM engine per worker process, kept across flow runs).
    """
    from hitchhiker import replay

    end = end or start
    summary = sample_groups(db, start, end, model, checkpoint, group_size, mode,
                            replay_root or replay.root_for(db, storage), max_states, seed, backend)
    key = attach_summary(summary, start, end)
    get_run_logger().info("rollouts %s..%s by %s: %d groups written, %d already there, valid rate %s, %.0f tokens/s "
                          "(artifact %s)", start, end, summary["policy_version"], summary["groups_written"],
                          summary["groups_skipped"], summary["valid_rate"], summary["tokens_per_s"], key)
    _log_failed(summary)
    return {k: summary[k] for k in ("groups_written", "groups_skipped", "states_left", "valid_rate", "tokens_per_s",
                                    "policy_version", "states_failed")}


@task
def snapshot_states(db: str | None, start: str, end: str | None = None, checkpoint: str | None = None,
                    model: str | None = None, mode: str | None = None, storage: str | None = None,
                    replay_root: str | None = None, max_states: int | None = None) -> dict:
    """Under the store slot: export the states of [start, end] with no group yet for the policy (checkpoint: a folder,
    URL or checkpoint_id; None: the base model) to `<storage>/snapshots/<id>` for `sample_snapshot`.

    storage: the storage URL (None: $HITCHHIKER_STORAGE, else the folders beside the database); replay_root: where
    the groups go (None: the storage's replay). Returns {snapshot_url (None when no state is missing), states,
    states_in_range, states_left, policy_version, replay_root}."""
    from hitchhiker import db as store
    from hitchhiker import replay, snapshots
    from hitchhiker.storage import location

    end = end or start
    if not store.db_path(db).is_file():
        raise store.StoreError(f"database {store.db_path(db)} does not exist (build states first, or pass db)")
    replay_root = replay_root or replay.root_for(db, storage)
    with store_slot(), contextlib.closing(store.connect(db)) as con:
        out = snapshots.snapshot_dates(con, start, end, location(db, storage, "snapshots"), replay_root, model,
                                       checkpoint, mode, max_states)
    get_run_logger().info("snapshot of %s..%s for %s: %d states to sample (%d in range, %d left for later) at %s",
                          start, end, out["policy_version"], out["states"], out["states_in_range"], out["states_left"],
                          out["snapshot_url"])
    return {**out, "replay_root": replay_root}


@task
def point_replay_view(db: str | None, replay_root: str) -> None:
    """Under the store slot: point the view `replay` at the root a `sample_snapshot` run wrote to."""
    from hitchhiker import db as store
    from hitchhiker import replay

    with store_slot(), contextlib.closing(store.connect(db)) as con:
        replay.ensure_view(con, replay_root)


@task
def sample_snapshot_groups(snapshot_url: str, replay_root: str, group_size: int, seed: int,
                           max_new_tokens: int, backend: str = "hf") -> dict:
    """Sample the snapshot's groups missing under replay_root; returns the run's summary."""
    from hitchhiker import snapshots
    from hitchhiker.rollouts import SamplingConfig

    config = SamplingConfig(group_size=group_size, seed=seed, max_new_tokens=max_new_tokens, backend=backend)
    summary = snapshots.sample_snapshot(snapshot_url, replay_root, config,
                                        progress=_progress(f"groups sampled, snapshot {snapshot_url}"))
    return {**summary, "states_left": 0}


@flow(name="sample_snapshot")
def sample_snapshot(snapshot_url: str, replay_root: str, group_size: int = 8, seed: int = 0,
                    max_new_tokens: int = 48, backend: str = "hf") -> dict:
    """Groups for the states of a snapshot (written by the task `snapshot_states`) by its policy, into the replay
    under replay_root (a folder or a storage URL); idempotent. Never opens the store nor takes its slot: it runs on
    the gpu pool; the orchestrator points the view at replay_root afterwards (`point_replay_view`)."""
    summary = sample_snapshot_groups(snapshot_url, replay_root, group_size, seed, max_new_tokens, backend)
    start, end = summary["first_date"], summary["last_date"]
    key = attach_summary(summary, start, end)
    _log_failed(summary)
    get_run_logger().info("rollouts %s..%s (snapshot %s) by %s: %d groups written, %d already there, valid rate %s, "
                          "%.0f tokens/s (artifact %s)", start, end, snapshot_url, summary["policy_version"],
                          summary["groups_written"], summary["groups_skipped"], summary["valid_rate"],
                          summary["tokens_per_s"], key)
    return {**{k: summary[k] for k in ("groups_written", "groups_skipped", "states", "valid_rate", "tokens_per_s",
                                       "policy_version")}, "replay_root": summary["root"]}
