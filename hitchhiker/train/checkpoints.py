"""Checkpoints: a folder per checkpoint, written atomically, and the `checkpoints` table that gives lineage.

Folder layout (hitchhiker.policy.load_policy reads it as a checkpoint):
    <run_dir>/<checkpoint_id>/
        adapter_config.json + adapter_model.safetensors   (LoRA)   or   config.json + model.safetensors (full)
        tokenizer files
        hitchhiker_checkpoint.json   {checkpoint_id, parent_id, run_id, base_model, algorithm, finetune, step, ...}
        trainer_state.pt             optimizer, scheduler, RNG states (what resume needs; absent for DPO)
A folder is complete or absent: it is written under a hidden temp name and renamed into place.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from hitchhiker import db
from hitchhiker.policy import CHECKPOINT_META, DEFAULT_MODEL_NAME, BUILDER_VERSION, default_model_path

TRAINER_STATE = "trainer_state.pt"
DEFAULT_BASE = f"{DEFAULT_MODEL_NAME}@{BUILDER_VERSION}"


def base_model_name(model: str | None) -> str:
    """What the registry records as base model: the hub id / path, or the default small model's versioned name."""
    return model or DEFAULT_BASE


def base_model_path(base_model: str) -> str:
    """Where to load a recorded base model from (the default small model resolves to its local cache)."""
    return str(default_model_path()) if base_model == DEFAULT_BASE else base_model


def default_checkpoints_root(db_file: str | os.PathLike | None) -> Path:
    """`<db file stem>_checkpoints/` beside the DuckDB file (as the replay root sits beside it)."""
    return db.beside(db_file, "checkpoints")


def save(
    path: Path,
    model,
    tokenizer,
    meta: dict,
    trainer_state: dict | None = None,
) -> Path:
    """Write a checkpoint folder atomically: weights/adapter, tokenizer, metadata, and (optionally) trainer state."""
    path = Path(path)
    if path.exists():
        return path  # idempotent: a folder that exists is complete (it was renamed into place whole)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        (work / CHECKPOINT_META).write_text(json.dumps(meta, indent=1, default=str))
        if trainer_state is not None:
            torch.save(trainer_state, work / TRAINER_STATE)
        os.replace(work, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def read_meta(path: str | os.PathLike) -> dict:
    f = Path(path) / CHECKPOINT_META
    if not f.is_file():
        raise FileNotFoundError(f"{path} is not a hitchhiker checkpoint (no {CHECKPOINT_META})")
    return json.loads(f.read_text())


def register(con, meta: dict, path: Path, train_metrics: dict, groups_used: list[str]) -> None:
    """Insert the checkpoint row (idempotent: registering the same checkpoint twice changes nothing)."""
    con.execute(
        """INSERT INTO checkpoints (checkpoint_id, parent_id, run_id, base_model, path, algorithm, finetune, step,
                                    reward_spec, created_at, train_metrics, groups_used)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (checkpoint_id) DO NOTHING""",
        [
            meta["checkpoint_id"], meta.get("parent_id"), meta["run_id"], meta["base_model"], str(Path(path).resolve()),
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


def rng_state() -> dict:
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_in_run(run_dir: Path) -> Path | None:
    """The checkpoint folder of a run with the most steps (hidden temp folders of a killed save are ignored)."""
    best, best_step = None, -1
    for d in Path(run_dir).iterdir() if Path(run_dir).is_dir() else []:
        if d.name.startswith(".") or not (d / CHECKPOINT_META).is_file():
            continue
        step = int(read_meta(d)["step"])
        if step > best_step:
            best, best_step = d, step
    return best
