"""GRPO training from the replay buffer: an ordered plan of stored groups, cut into optimizer steps, checkpointed.

A run is fixed when it starts: the plan (which groups, in which order, with their tokens, behaviour log-probs and
SQL advantages) is written to `<run_dir>/plan.json`. Steps consume the plan in order; every checkpoint records
how far it got, so a run killed at any point resumes from its last checkpoint and ends having trained on exactly
the plan's groups, each once. Multi-GPU: the same code under `accelerate launch` (each process takes its share of
every step's groups; only the main process writes checkpoints and the database).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from hitchhiker.train import checkpoints as ckpts
from hitchhiker.train.config import GRPOConfig
from hitchhiker.train.data import Group, Rollout, collate, load_groups
from hitchhiker.train.loss import grpo_loss, per_token_logps, per_token_logps_shared_prompt
from hitchhiker.train.model import load_reference, load_trainable, trainable_parameters

PLAN_FILE = "plan.json"


@dataclass
class TrainResult:
    run_id: str
    checkpoint_id: str  # the run's last checkpoint (the new policy_version)
    path: str
    steps: int
    groups_used: list[str]  # the run's whole plan, in order
    metrics: list[dict] = field(default_factory=list)  # per optimizer step of this process's call


def plan_groups(con, config: GRPOConfig, parent_id: str | None = None, policy_version: str | None = None,
                start_date=None, end_date=None) -> list[Group]:
    """Matured groups not yet in the parent's lineage, in a seeded shuffled order (mixes dates within a step)."""
    used = set(ckpts.lineage_groups(con, parent_id))
    groups = [g for g in load_groups(con, config.reward_spec, config.advantage_column, policy_version, start_date, end_date)
              if g.group_id not in used]
    random.Random(config.shuffle_seed).shuffle(groups)
    return groups


def train_grpo(
    con,
    config: GRPOConfig,
    run_dir: str | os.PathLike,
    groups: list[Group] | None = None,
    parent_id: str | None = None,
    base_model: str | None = None,
    on_step_end: Callable[[int, dict], None] | None = None,
    carry_optimizer: bool = False,
) -> TrainResult:
    """Train (or resume the run in run_dir) and register its checkpoints; returns the last one.

    groups: the plan (default: plan_groups(con, config, parent_id)); ignored when run_dir already holds a plan.
    parent_id: a checkpoint id to continue from (None = the base model); base_model: a hub id/path (None = the
    default small model, or the parent's base). con may be None on non-main processes under accelerate.
    carry_optimizer: start from the parent checkpoint's optimizer state (the loop's consecutive runs behave as
    one long run; with one step per run, a fresh Adam would take sign-like first steps every time).
    """
    config.check()
    run_dir = Path(run_dir)
    use_bf16 = config.bf16 and torch.cuda.is_available()
    accelerator = _accelerator(use_bf16)
    if accelerator.is_main_process:
        plan = _read_plan(run_dir)
        if plan is None:
            plan = _new_plan(con, config, run_dir, groups, parent_id, base_model)
    accelerator.wait_for_everyone()
    plan = _read_plan(run_dir)
    if plan is None:
        raise FileNotFoundError(f"no plan in {run_dir}")
    if plan["config"] != _plan_config(config):
        raise ValueError(f"run {run_dir} was started with another config; use a new run_dir (started: {plan['config']})")
    run_id, base_model, parent_id = plan["run_id"], plan["base_model"], plan["parent_id"]
    plan_groups_ = [_group_from_json(g) for g in plan["groups"]]
    n_steps_total = math.ceil(len(plan_groups_) / config.groups_per_step)
    if config.max_steps is not None:
        n_steps_total = min(n_steps_total, config.max_steps)
    max_len = config.max_completion_length or max((len(r.completion_ids) for g in plan_groups_ for r in g.rollouts), default=1)

    latest = ckpts.latest_in_run(run_dir)
    start_from = latest if latest is not None else (Path(plan["parent_path"]) if plan["parent_path"] else None)
    torch.manual_seed(config.seed)  # the LoRA init of a fresh adapter
    model, tokenizer = load_trainable(base_model, start_from, config)
    ref_model = load_reference(base_model) if config.beta != 0.0 and config.finetune == "full" else None
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = _scheduler(optimizer, config, n_steps_total)
    step, last_saved_step = 0, 0
    if latest is not None:
        state = torch.load(latest / ckpts.TRAINER_STATE, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpts.set_rng_state(state["rng"])
        step = last_saved_step = int(state["step"])
    elif carry_optimizer and start_from is not None and (start_from / ckpts.TRAINER_STATE).is_file():
        optimizer.load_state_dict(torch.load(start_from / ckpts.TRAINER_STATE, weights_only=False)["optimizer"])
        for g in optimizer.param_groups:  # this run's learning rate, not the parent's last scheduled one
            g["lr"] = g["initial_lr"] = config.learning_rate
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if ref_model is not None:
        ref_model.to(accelerator.device)
    model.train()

    writer = _tensorboard(config, run_dir, step) if accelerator.is_main_process else None
    metrics_since_save: list[dict] = []
    all_metrics: list[dict] = []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    last_id = _checkpoint_id(run_id, step) if latest is not None else parent_id
    while step < n_steps_total:
        t0 = time.perf_counter()
        step_groups = plan_groups_[step * config.groups_per_step:(step + 1) * config.groups_per_step]
        mine = step_groups[accelerator.process_index::accelerator.num_processes]
        m = _optimizer_step(model, ref_model, optimizer, scheduler, accelerator, mine, config, pad_id, max_len)
        step += 1
        m.update(_group_metrics(step_groups), step=step, seconds=time.perf_counter() - t0, lr=scheduler.get_last_lr()[0])
        metrics_since_save.append(m)
        all_metrics.append(m)
        if writer is not None:
            for k, v in m.items():
                if k != "step":
                    writer.add_scalar(f"train/{k}", v, step)
        if on_step_end is not None:
            on_step_end(step, m)
        if step == n_steps_total or (config.save_every_steps and step % config.save_every_steps == 0):
            if accelerator.is_main_process:
                used = [g.group_id for g in plan_groups_[last_saved_step * config.groups_per_step:step * config.groups_per_step]]
                last_id = _save(con, accelerator.unwrap_model(model), tokenizer, optimizer, scheduler, config, plan, run_dir,
                                step, last_id, used, metrics_since_save)
            accelerator.wait_for_everyone()
            last_saved_step, metrics_since_save = step, []
    if writer is not None:
        writer.close()
    if accelerator.is_main_process and con is not None:
        _register_unregistered(con, run_dir)  # a run killed between its last save and its registration
    final = ckpts.latest_in_run(run_dir)
    if final is None:
        raise ValueError(f"run {run_id} has no groups to train on (empty plan)")
    return TrainResult(run_id, _checkpoint_id(run_id, n_steps_total), str(final), n_steps_total,
                       [g.group_id for g in plan_groups_[:n_steps_total * config.groups_per_step]], all_metrics)


def _accelerator(use_bf16: bool):
    """accelerate's process state is one per process: reuse it when something (a TRL trainer) set it up already;
    bf16 then comes from torch.autocast in the step, which does not depend on that state."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state:
        return Accelerator()
    return Accelerator(mixed_precision="bf16" if use_bf16 else "no", cpu=not torch.cuda.is_available())


def _optimizer_step(model, ref_model, optimizer, scheduler, accelerator, groups: list[Group], config: GRPOConfig,
                    pad_id: int, max_len: int) -> dict:
    """One optimizer step over these groups, in micro-batches of groups_per_micro_batch groups."""
    micro = [groups[i:i + config.groups_per_micro_batch] for i in range(0, len(groups), config.groups_per_micro_batch)]
    accumulation = max(len(micro), 1)
    tokens_in_step = float(sum(len(r.completion_ids) for g in groups for r in g.rollouts))
    totals: dict[str, float] = {"loss": 0.0, "clip_fraction": 0.0, "kl": 0.0, "is_weight_mean": 0.0}
    token_count = 0.0
    for chunk in micro:
        batch = collate([r for g in chunk for r in g.rollouts], pad_id, accelerator.device, share_prompts=config.share_prompts)
        logps_fn = per_token_logps_shared_prompt if config.share_prompts else per_token_logps
        with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=config.bf16 and accelerator.device.type == "cuda"):
            logps = logps_fn(model, batch)
            ref = _reference_logps(model, ref_model, batch, accelerator, logps_fn) if config.beta != 0.0 else None
            loss, m = grpo_loss(logps, batch, config, ref_logps=ref, accumulation_steps=accumulation,
                                tokens_in_step=tokens_in_step, max_completion_length=max_len)
        accelerator.backward(loss)
        totals["loss"] += float(loss.detach())
        for k in ("clip_fraction", "kl", "is_weight_mean"):
            totals[k] += m[k] * m["tokens"]
        token_count += m["tokens"]
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm) if config.max_grad_norm else None
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    out = {"loss": totals["loss"]}
    for k in ("clip_fraction", "kl", "is_weight_mean"):
        out[k] = totals[k] / max(token_count, 1.0)
    if grad_norm is not None:
        out["grad_norm"] = float(grad_norm)
    return out


def _reference_logps(model, ref_model, batch, accelerator, logps_fn) -> torch.Tensor:
    with torch.no_grad():
        if ref_model is not None:
            return logps_fn(ref_model, batch)
        with accelerator.unwrap_model(model).disable_adapter():  # LoRA: the base is the reference
            return logps_fn(model, batch)


def _group_metrics(groups: list[Group]) -> dict:
    rewards = [r.reward_usd for g in groups for r in g.rollouts]
    valid = [r.valid for g in groups for r in g.rollouts]
    n = max(len(rewards), 1)
    mean = sum(rewards) / n
    return {
        "reward_mean": mean,
        "reward_std": (sum((x - mean) ** 2 for x in rewards) / n) ** 0.5,
        "valid_rate": sum(valid) / n,
        "zero_variance_fraction": sum(g.zero_variance for g in groups) / max(len(groups), 1),
        "groups": float(len(groups)),
    }


def _scheduler(optimizer, config: GRPOConfig, total_steps: int):
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    if config.lr_scheduler == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, max(total_steps, 1))
    return get_constant_schedule_with_warmup(optimizer, config.warmup_steps)


def _tensorboard(config: GRPOConfig, run_dir: Path, step: int):
    from torch.utils.tensorboard import SummaryWriter

    # purge_step drops events a killed run logged after its last checkpoint, so curves do not double back
    return SummaryWriter(log_dir=str(config.logging_dir or run_dir / "tensorboard"), purge_step=step + 1 if step else None)


def _checkpoint_id(run_id: str, step: int) -> str:
    return f"{run_id}-s{step:05d}"


def _save(con, model, tokenizer, optimizer, scheduler, config, plan, run_dir, step, parent_id, used, metrics) -> str:
    checkpoint_id = _checkpoint_id(plan["run_id"], step)
    meta = {
        "checkpoint_id": checkpoint_id, "parent_id": parent_id, "run_id": plan["run_id"], "base_model": plan["base_model"],
        "algorithm": "grpo", "finetune": config.finetune, "step": step, "reward_spec": plan["reward_spec"],
        "created_at": datetime.now(timezone.utc).isoformat(), "groups_used": used, "train_metrics": _summary(metrics),
    }
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": ckpts.rng_state(), "step": step}
    path = ckpts.save(run_dir / checkpoint_id, model, tokenizer, meta, state)
    if con is not None:
        ckpts.register(con, meta, path, meta["train_metrics"], used)
    return checkpoint_id


def _register_unregistered(con, run_dir: Path) -> None:
    for d in sorted(Path(run_dir).iterdir()):
        if not d.name.startswith(".") and (d / ckpts.TRAINER_STATE).is_file():
            meta = ckpts.read_meta(d)
            ckpts.register(con, meta, d, meta.get("train_metrics", {}), meta.get("groups_used", []))


def _summary(metrics: list[dict]) -> dict:
    if not metrics:
        return {}
    keys = [k for k in metrics[0] if k != "step"]
    out = {k: sum(m.get(k, 0.0) for m in metrics) / len(metrics) for k in keys}
    out["steps"] = len(metrics)
    return out


# --- the plan ---------------------------------------------------------------------------------------------------


def _plan_config(config: GRPOConfig) -> dict:
    """The config fields that change what a run computes (logging and step limits may differ on resume)."""
    d = asdict(config)
    for k in ("logging_dir", "max_steps", "save_every_steps"):
        d.pop(k)
    return json.loads(json.dumps(d))


def _new_plan(con, config, run_dir: Path, groups, parent_id, base_model) -> dict:
    from hitchhiker.train.data import default_reward_spec

    parent_path = None
    if parent_id is not None and not parent_id.startswith("base:"):
        row = ckpts.get(con, parent_id)
        parent_path, base_model = row["path"], base_model or row["base_model"]
    reward_spec = config.reward_spec
    if groups is None:
        reward_spec = reward_spec or default_reward_spec()
        groups = plan_groups(con, config, parent_id)
    if not groups:
        raise ValueError("no matured replay groups to train on (need rollouts with rewards under the reward spec)")
    ids = [g.group_id for g in groups]
    if len(set(ids)) != len(ids):
        raise ValueError("the plan lists a replay group twice")
    base = ckpts.base_model_name(base_model)
    digest = hashlib.sha256(json.dumps([parent_id, base, ids, _plan_config(config)]).encode()).hexdigest()[:12]
    plan = {
        "run_id": f"grpo-{digest}", "parent_id": parent_id, "parent_path": parent_path, "base_model": base,
        "reward_spec": reward_spec,
        "config": _plan_config(config), "groups": [_group_to_json(g) for g in groups],
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{PLAN_FILE}.tmp"
    tmp.write_text(json.dumps(plan))
    os.replace(tmp, run_dir / PLAN_FILE)
    return plan


def _read_plan(run_dir: Path) -> dict | None:
    f = Path(run_dir) / PLAN_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def _group_to_json(g: Group) -> dict:
    d = asdict(g)
    d["decision_date"] = str(g.decision_date)
    return d


def _group_from_json(d: dict) -> Group:
    return Group(d["group_id"], d["state_id"], d["decision_date"], d["policy_version"], d["zero_variance"],
                 [Rollout(**r) for r in d["rollouts"]])
