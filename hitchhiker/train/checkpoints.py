"""Checkpoints as files: a folder per checkpoint under its run's URL, committed by a manifest written last.

Folder layout (hitchhiker.policy.load_policy reads it as a checkpoint; on object storage it is fetched first):
    <run_url>/<checkpoint_id>/
        adapter_config.json + adapter_model.safetensors   (LoRA)   or   config.json + model.safetensors (full)
        tokenizer files
        hitchhiker_checkpoint.json   {checkpoint_id, parent_id, run_id, base_model, algorithm, finetune, step, ...}
        trainer_state.pt             optimizer, scheduler, RNG states (what resume needs; absent for DPO, ORPO)
        MANIFEST.json                written last: every file's size and sha256, and the metadata above
A checkpoint without a manifest does not exist for loading, resuming or registration (hitchhiker.storage.commit_dir:
locally a hidden temp folder, fsynced and renamed; on object storage the manifest object after the files). The
registry (the `checkpoints` table) is the orchestrator's: hitchhiker/registry.py. No duckdb here.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import torch

from hitchhiker import faults, storage
from hitchhiker.default_model import BUILDER_VERSION, DEFAULT_MODEL_NAME, default_model_path
from hitchhiker.policy import CHECKPOINT_META

TRAINER_STATE = "trainer_state.pt"
DEFAULT_BASE = f"{DEFAULT_MODEL_NAME}@{BUILDER_VERSION}"


def base_model_name(model: str | None) -> str:
    """What the registry records as base model: the hub id / path, or the default small model's versioned name."""
    return model or DEFAULT_BASE


def base_model_path(base_model: str) -> str:
    """Where to load a recorded base model from (the default small model resolves to its local cache)."""
    return str(default_model_path()) if base_model == DEFAULT_BASE else base_model


def save(run_url: str | os.PathLike, checkpoint_id: str, model, tokenizer, meta: dict,
         trainer_state: dict | None = None) -> str:
    """Commit a checkpoint at <run_url>/<checkpoint_id>: weights/adapter, tokenizer, metadata, (optionally) trainer
    state, then the manifest. Idempotent: a committed checkpoint is not written again. Returns its URL."""
    url = storage.join(run_url, checkpoint_id)
    if storage.committed(url):
        return url
    with tempfile.TemporaryDirectory(prefix=f"hitchhiker-{checkpoint_id}-") as work:
        work = Path(work)
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        (work / CHECKPOINT_META).write_text(json.dumps(meta, indent=1, default=str))
        if trainer_state is not None:
            torch.save(trainer_state, work / TRAINER_STATE)
        faults.point("checkpoint.before-commit")
        storage.commit_dir(work, url, meta)
        faults.point("checkpoint.after-commit")
    return url


def read_meta(url: str | os.PathLike) -> dict:
    """A committed checkpoint's metadata (from its manifest); a clear error for anything else."""
    if not storage.committed(url):
        raise FileNotFoundError(f"{url} is not a committed hitchhiker checkpoint (no {storage.MANIFEST})")
    return storage.read_manifest(url)["meta"]


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


def committed_in_run(run_url: str | os.PathLike) -> list[tuple[str, dict]]:
    """(url, meta) of every committed checkpoint of a run, by step (folders of a killed save have no manifest)."""
    found = [(url, storage.read_manifest(url)["meta"]) for url in storage.committed_children(run_url)]
    found = [(url, meta) for url, meta in found if "checkpoint_id" in meta]
    return sorted(found, key=lambda um: int(um[1]["step"]))


def latest_in_run(run_url: str | os.PathLike) -> str | None:
    """The URL of the run's committed checkpoint with the most steps (None: none yet)."""
    found = committed_in_run(run_url)
    return found[-1][0] if found else None
