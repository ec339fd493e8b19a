"""DPO from the replay buffer: the best and the worst valid completion of a group form a preference pair when the
market paid them differently enough; TRL's DPOTrainer trains on the pairs; the result joins the checkpoint registry.
"""
from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import torch

from hitchhiker import db
from hitchhiker.train import checkpoints as ckpts
from hitchhiker.train.config import DPOConfig
from hitchhiker.train.grpo import TrainResult
from hitchhiker.train.model import load_trainable


def preference_pairs(con, reward_spec: str, margin_usd: float = 0.0, policy_version: str | None = None,
                     exclude_groups: set[str] | frozenset = frozenset()) -> list[dict]:
    """Conversational pairs {prompt, chosen, rejected, group_id, ...} from sql/train/dpo_pairs.sql."""
    rel = con.execute(db.sql_text("train/dpo_pairs"),
                      {"reward_spec": reward_spec, "policy_version": policy_version, "margin_usd": margin_usd})
    cols = [d[0] for d in rel.description]
    pairs = []
    for values in rel.fetchall():
        row = dict(zip(cols, values))
        if row["group_id"] in exclude_groups:
            continue
        pairs.append({
            "group_id": row["group_id"],
            "prompt": json.loads(row["messages"]),
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
            "chosen_reward_usd": row["chosen_reward_usd"],
            "rejected_reward_usd": row["rejected_reward_usd"],
        })
    return pairs


def train_dpo(con, config: DPOConfig, run_dir: str | os.PathLike, parent_id: str | None = None,
              base_model: str | None = None, pairs: list[dict] | None = None) -> TrainResult:
    """Train on the buffer's preference pairs not yet in the parent's lineage, save and register a checkpoint."""
    from datasets import Dataset
    from trl import DPOConfig as TRLDPOConfig, DPOTrainer

    from hitchhiker.train.data import default_reward_spec

    config.check()
    run_dir = Path(run_dir)
    spec = config.reward_spec or default_reward_spec()
    parent_path = None
    if parent_id is not None:
        row = ckpts.get(con, parent_id)
        parent_path, base_model = Path(row["path"]), base_model or row["base_model"]
    if pairs is None:
        pairs = preference_pairs(con, spec, config.margin_usd, exclude_groups=set(ckpts.lineage_groups(con, parent_id)))
    if not pairs:
        raise ValueError(f"no preference pairs in the buffer under reward spec {spec!r} with margin {config.margin_usd}")
    groups = [p["group_id"] for p in pairs]
    base = ckpts.base_model_name(base_model)
    digest = hashlib.sha256(json.dumps([parent_id, base, groups, config.__dict__], default=str).encode()).hexdigest()[:12]
    run_id = f"dpo-{digest}"
    final = ckpts.latest_in_run(run_dir)
    if final is not None and ckpts.read_meta(final)["run_id"] == run_id:  # idempotent: this exact run is done
        meta = ckpts.read_meta(final)
        ckpts.register(con, meta, final, meta.get("train_metrics", {}), groups)
        return TrainResult(run_id, meta["checkpoint_id"], str(final), int(meta["step"]), groups)

    torch.manual_seed(config.seed)
    model, tokenizer = load_trainable(base, parent_path, config)
    args = TRLDPOConfig(
        output_dir=str(run_dir / "trl"), beta=config.beta, learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size, num_train_epochs=config.epochs, max_steps=config.max_steps,
        logging_steps=1, save_strategy="no", report_to="none", seed=config.seed, use_cpu=not torch.cuda.is_available(),
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
    meta = {
        "checkpoint_id": checkpoint_id, "parent_id": parent_id, "run_id": run_id, "base_model": base, "algorithm": "dpo",
        "finetune": config.finetune, "step": int(out.global_step), "reward_spec": spec,
        "created_at": datetime.now(timezone.utc).isoformat(), "groups_used": groups, "train_metrics": metrics,
    }
    path = ckpts.save(run_dir / checkpoint_id, trainer.model, tokenizer, meta)
    ckpts.register(con, meta, path, metrics, groups)
    return TrainResult(run_id, checkpoint_id, str(path), int(out.global_step), groups, [metrics])
