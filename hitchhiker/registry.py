"""The checkpoint registry: the `checkpoints` table (lineage, groups used) and the training runs it registers from.

Only the orchestrator (the side holding the store) writes it. A trainer, local or on a GPU box, commits checkpoint
folders under a run URL (hitchhiker/train/checkpoints.py); `register_run` reads the committed ones (never a folder
without a manifest) and inserts them, with their lineage checked against the run's training batch. Idempotent:
registering again changes nothing, so a daily run that finds a run finished while it was down just registers it.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone

from hitchhiker import db, faults
from hitchhiker.train import batch as batches
from hitchhiker.train import checkpoints as ckpts


def register(con, meta: dict, url: str, train_metrics: dict, groups_used: list[str]) -> None:
    """Insert the checkpoint row (idempotent: registering the same checkpoint twice changes nothing)."""
    con.execute(
        """INSERT INTO checkpoints (checkpoint_id, parent_id, run_id, base_model, path, algorithm, finetune, step,
                                    reward_spec, created_at, train_metrics, groups_used)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (checkpoint_id) DO NOTHING""",
        [
            meta["checkpoint_id"], meta.get("parent_id"), meta["run_id"], meta["base_model"], str(url),
            meta["algorithm"], meta["finetune"], int(meta["step"]), meta.get("reward_spec"),
            meta.get("created_at") or datetime.now(timezone.utc), json.dumps(train_metrics), list(groups_used),
        ],
    )


def get(con, checkpoint_id: str) -> dict:
    """The registry row of a checkpoint; a clear error naming the id when it is unknown."""
    rel = con.execute("SELECT * FROM checkpoints WHERE checkpoint_id = ?", [checkpoint_id])
    row = rel.fetchone()
    if row is None:
        raise ValueError(f"checkpoint {checkpoint_id!r} is not in the checkpoints table")
    return dict(zip([d[0] for d in rel.description], row))


def lineage_groups(con, checkpoint_id: str | None) -> list[str]:
    """Every replay group that trained this checkpoint or any of its ancestors (empty for a base model)."""
    if checkpoint_id is None or checkpoint_id.startswith("base:"):
        return []
    get(con, checkpoint_id)
    return [g for (_, g) in con.execute(db.sql_text("train/lineage"), {"checkpoint_id": checkpoint_id}).fetchall()]


def record_run(con, run_url: str, batch_url: str) -> None:
    """Remember a run before it starts, so its checkpoints are registered even if the orchestrator goes down."""
    meta = batches.read_meta(batch_url)
    con.execute("INSERT INTO train_runs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_url) DO NOTHING",
                [str(run_url), str(batch_url), meta["batch_id"], meta["algorithm"], meta.get("parent_id"),
                 datetime.now(timezone.utc)])
    faults.point("train-runs.after-insert")
    (known,) = con.execute("SELECT batch_url FROM train_runs WHERE run_url = ?", [str(run_url)]).fetchone()
    if known != str(batch_url):
        raise ValueError(f"run {run_url} was started with batch {known}, not {batch_url}: use a new run URL")


def register_run(con, run_url: str, batch_url: str | None = None) -> list[str]:
    """Register every committed checkpoint of a run, in step order; returns their ids. Each one's lineage must be the
    batch's: its batch_id, its parent (the batch's parent, then the previous checkpoint) and its groups (the next
    slice of the batch's groups)."""
    if batch_url is None:
        row = con.execute("SELECT batch_url FROM train_runs WHERE run_url = ?", [str(run_url)]).fetchone()
        if row is None:
            raise ValueError(f"run {run_url} is not in train_runs (record_run first)")
        batch_url = row[0]
    batch = batches.read_meta(batch_url)
    expected_parent, consumed, ids = batch.get("parent_id"), 0, []
    for url, meta in ckpts.committed_in_run(run_url):
        used = list(meta.get("groups_used", []))
        problems = [what for what, ok in (
            ("batch", meta.get("batch_id") == batch["batch_id"]),
            ("parent", meta.get("parent_id") == expected_parent),
            ("groups", used == batch["groups"][consumed:consumed + len(used)]),
        ) if not ok]
        if problems:
            raise ValueError(f"checkpoint {url} does not continue batch {batch_url} ({', '.join(problems)} differ)")
        register(con, meta, url, meta.get("train_metrics", {}), used)
        faults.point("registry.checkpoint-inserted")
        expected_parent, consumed = meta["checkpoint_id"], consumed + len(used)
        ids.append(meta["checkpoint_id"])
    return ids


def unfinished_runs(con) -> list[tuple[str, str]]:
    """(run_url, batch_url) of the recorded GRPO runs whose registered checkpoints stop before their batch's last step,
    oldest first: killed, or still going. Such a run is resumed, never replaced: once its first checkpoints are
    registered, the groups it has not reached count as untrained, and a new run over them would start from another
    parent and train a different lineage."""
    out = []
    for run_url, batch_url in con.execute("SELECT run_url, batch_url FROM train_runs WHERE algorithm = 'grpo' "
                                          "ORDER BY started_at").fetchall():
        meta = batches.read_meta(batch_url)
        steps = math.ceil(len(meta["groups"]) / meta["config"]["groups_per_step"])
        if meta["config"].get("max_steps") is not None:
            steps = min(steps, meta["config"]["max_steps"])
        (done,) = con.execute("SELECT coalesce(max(step), 0) FROM checkpoints WHERE starts_with(path, ?)",
                              [str(run_url).rstrip("/") + "/"]).fetchone()
        if done < steps:
            out.append((run_url, batch_url))
    return out


def register_known_runs(con) -> dict[str, list[str]]:
    """Register what every recorded run has committed so far (a run finished while the orchestrator was down)."""
    return {run_url: register_run(con, run_url, batch_url)
            for run_url, batch_url in con.execute("SELECT run_url, batch_url FROM train_runs ORDER BY started_at").fetchall()}
