"""DPO from a training batch of preference pairs (the best and the worst valid completion of a group, when the market
paid them differently enough; selected by the orchestrator, hitchhiker/batches.py). TRL's DPOTrainer trains on them;
the checkpoint is committed under the run URL like GRPO's, and the orchestrator registers it.
"""
from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from hitchhiker import storage
from hitchhiker.train import batch as batches
from hitchhiker.train import checkpoints as ckpts
from hitchhiker.train.config import DPOConfig
from hitchhiker.train.grpo import TrainResult
from hitchhiker.train.model import load_trainable


def train_dpo_batch(batch_url: str, run_url: str | os.PathLike) -> TrainResult:
    """Train on a committed DPO batch and commit one checkpoint under run_url; a run already done returns it."""
    from datasets import Dataset
    from trl import DPOConfig as TRLDPOConfig, DPOTrainer

    meta = batches.read_meta(batch_url)
    if meta["algorithm"] != "dpo":
        raise ValueError(f"batch {batch_url} is a {meta['algorithm']} batch, not dpo")
    config = DPOConfig(**meta["config"])
    config.check()
    run_url, run_id, groups = str(run_url), f"dpo-{meta['batch_id'][:12]}", meta["groups"]
    done = ckpts.committed_in_run(run_url)
    if done:  # idempotent: this exact run is done
        url, cmeta = done[-1]
        if cmeta.get("batch_id") != meta["batch_id"]:
            raise ValueError(f"run {run_url} holds a checkpoint of another batch ({cmeta['checkpoint_id']}); use a new run URL")
        return TrainResult(run_id, cmeta["checkpoint_id"], url, int(cmeta["step"]), groups, [], [cmeta["checkpoint_id"]])

    pairs = batches.read_pairs(batch_url)
    parent_path = storage.fetch_dir(meta["parent_url"]) if meta.get("parent_url") else None
    torch.manual_seed(config.seed)
    model, tokenizer = load_trainable(meta["base_model"], parent_path, config)
    with tempfile.TemporaryDirectory(prefix="hitchhiker-dpo-") as work:
        args = TRLDPOConfig(
            output_dir=str(Path(work) / "trl"), beta=config.beta, learning_rate=config.learning_rate,
            per_device_train_batch_size=config.batch_size, num_train_epochs=config.epochs, max_steps=config.max_steps,
            logging_steps=1, save_strategy="no", report_to="none", seed=config.seed,
            use_cpu=not torch.cuda.is_available(),
            # TRL defaults to activation checkpointing: a GPU memory saver that only costs time on CPU
            disable_tqdm=True, dataloader_num_workers=0,
            **{"bf16": torch.cuda.is_available(), "gradient_checkpointing": torch.cuda.is_available(), **config.extra},
        )
        dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        out = trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    metrics = {
        "loss": float(out.training_loss), "steps": int(out.global_step), "pairs": len(pairs),
        "first_loss": float(logs[0]["loss"]) if logs else None,
        "rewards_accuracy": float(logs[-1].get("rewards/accuracies", float("nan"))) if logs else None,
        "reward_margin_usd_mean": sum(p["chosen_reward_usd"] - p["rejected_reward_usd"] for p in pairs) / len(pairs),
    }
    checkpoint_id = f"{run_id}-s{int(out.global_step):05d}"
    cmeta = {
        "checkpoint_id": checkpoint_id, "parent_id": meta.get("parent_id"), "run_id": run_id,
        "base_model": meta["base_model"], "algorithm": "dpo", "finetune": config.finetune, "step": int(out.global_step),
        "reward_spec": meta["reward_spec"], "batch_id": meta["batch_id"],
        "created_at": datetime.now(timezone.utc).isoformat(), "groups_used": groups, "train_metrics": metrics,
    }
    url = ckpts.save(run_url, checkpoint_id, trainer.model, tokenizer, cmeta)
    return TrainResult(run_id, checkpoint_id, url, int(out.global_step), groups, [metrics], [checkpoint_id])
