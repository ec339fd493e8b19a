"""DPO and ORPO from a training batch of preference pairs (the best and the worst valid completion of a group, when
the market paid them differently enough; selected by the orchestrator, hitchhiker/batches.py). TRL's DPOTrainer or
ORPOTrainer trains on them; the checkpoint is committed under the run URL like GRPO's, and the orchestrator registers
it.

DPO raises the chosen answer's log-likelihood ratio against a reference model (the parent, or the base model: the
LoRA adapter disabled) over the rejected one's. ORPO (Hong et al. 2024) needs no reference: its loss is the chosen
answer's negative log-likelihood plus beta (the paper's lambda) times -log sigmoid of the log odds ratio of chosen
over rejected, so it fine-tunes toward the chosen answers and away from the rejected ones in one term.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

from hitchhiker import storage
from hitchhiker.train import batch as batches
from hitchhiker.train import checkpoints as ckpts
from hitchhiker.train.config import PREFERENCE_CONFIGS
from hitchhiker.train.grpo import TrainResult
from hitchhiker.train.model import load_trainable


def train_dpo_batch(batch_url: str, run_url: str | os.PathLike) -> TrainResult:
    """Train DPO on a committed DPO batch and commit one checkpoint under run_url; a run already done returns it."""
    return train_pairs_batch(batch_url, run_url, "dpo")


def train_orpo_batch(batch_url: str, run_url: str | os.PathLike) -> TrainResult:
    """Train ORPO on a committed ORPO batch and commit one checkpoint under run_url; a run already done returns it."""
    return train_pairs_batch(batch_url, run_url, "orpo")


def _trl_trainer(algorithm: str, model, tokenizer, dataset, args: dict):
    """TRL's trainer of the algorithm; args: its config's fields."""
    if algorithm == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer(model=model, args=DPOConfig(**args), train_dataset=dataset, processing_class=tokenizer)
    from trl.import_utils import TRLExperimentalWarning

    with warnings.catch_warnings():  # ORPO lives in trl.experimental, which warns on import that its API may change
        warnings.simplefilter("ignore", TRLExperimentalWarning)
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    return ORPOTrainer(model=model, args=ORPOConfig(**args), train_dataset=dataset, processing_class=tokenizer)


def train_pairs_batch(batch_url: str, run_url: str | os.PathLike, algorithm: str) -> TrainResult:
    """Train `algorithm` ('dpo' | 'orpo') on a committed batch of that algorithm's pairs; commit one checkpoint."""
    from datasets import Dataset

    if algorithm not in PREFERENCE_CONFIGS:
        raise ValueError(f"algorithm {algorithm!r} is not a preference algorithm {tuple(PREFERENCE_CONFIGS)}")
    meta = batches.read_meta(batch_url)
    if meta["algorithm"] != algorithm:
        raise ValueError(f"batch {batch_url} is a {meta['algorithm']} batch, not {algorithm}")
    config = PREFERENCE_CONFIGS[algorithm](**meta["config"])
    config.check()
    run_url, run_id, groups = str(run_url), f"{algorithm}-{meta['batch_id'][:12]}", meta["groups"]
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
    with tempfile.TemporaryDirectory(prefix=f"hitchhiker-{algorithm}-") as work:
        args = dict(
            output_dir=str(Path(work) / "trl"), beta=config.beta, learning_rate=config.learning_rate,
            per_device_train_batch_size=config.batch_size, num_train_epochs=config.epochs, max_steps=config.max_steps,
            logging_steps=1, save_strategy="no", report_to="none", seed=config.seed,
            use_cpu=not torch.cuda.is_available(),
            # TRL defaults to activation checkpointing: a GPU memory saver that only costs time on CPU
            disable_tqdm=True, dataloader_num_workers=0,
            **{"bf16": torch.cuda.is_available(), "gradient_checkpointing": torch.cuda.is_available(), **config.extra},
        )
        dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
        trainer = _trl_trainer(algorithm, model, tokenizer, dataset, args)
        out = trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    metrics = {
        "loss": float(out.training_loss), "steps": int(out.global_step), "pairs": len(pairs),
        "first_loss": float(logs[0]["loss"]) if logs else None,
        "rewards_accuracy": float(logs[-1].get("rewards/accuracies", float("nan"))) if logs else None,
        "reward_margin_usd_mean": sum(p["chosen_reward_usd"] - p["rejected_reward_usd"] for p in pairs) / len(pairs),
    }
    if algorithm == "orpo" and logs:  # the last step's loss = nll_loss - beta * log_odds_ratio (mean log sigmoid)
        metrics.update({"last_loss": float(logs[-1]["loss"]),
                        **{k: float(logs[-1].get(k, float("nan"))) for k in ("nll_loss", "log_odds_ratio")}})
    checkpoint_id = f"{run_id}-s{int(out.global_step):05d}"
    cmeta = {
        "checkpoint_id": checkpoint_id, "parent_id": meta.get("parent_id"), "run_id": run_id,
        "base_model": meta["base_model"], "algorithm": algorithm, "finetune": config.finetune,
        "step": int(out.global_step), "reward_spec": meta["reward_spec"], "batch_id": meta["batch_id"],
        "created_at": datetime.now(timezone.utc).isoformat(), "groups_used": groups, "train_metrics": metrics,
    }
    url = ckpts.save(run_url, checkpoint_id, trainer.model, tokenizer, cmeta)
    return TrainResult(run_id, checkpoint_id, url, int(out.global_step), groups, [metrics], [checkpoint_id])
