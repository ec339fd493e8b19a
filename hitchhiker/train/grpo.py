"""GRPO training from a training batch: an ordered plan of stored groups, cut into optimizer steps, checkpointed.

A run is fixed by its batch (hitchhiker/train/batch.py: which groups, in which order, with their tokens, behaviour
log-probs and SQL advantages, and the config), written by the orchestrator to shared storage. Steps consume the
plan in order; every checkpoint, committed under the run URL, records how far it got, so a run killed at any point
resumes from its last committed checkpoint and ends having trained on exactly the batch's groups, each once.
Nothing here opens the store: the orchestrator registers the checkpoints (hitchhiker/registry.py). Multi-GPU: the
same code under `accelerate launch` / `torchrun` (each process takes its share of every step's micro-batches, and
ends with the weights one process would reach: see _optimizer_step; only the main process writes checkpoints):
`accelerate launch --num_processes N -m hitchhiker.train.grpo BATCH_URL RUN_URL`.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
import os
from typing import Callable

import torch

from hitchhiker import storage
from hitchhiker.train import batch as batches
from hitchhiker.train import checkpoints as ckpts
from hitchhiker.train.config import GRPOConfig
from hitchhiker.train.data import Group, collate
from hitchhiker.train.loss import grpo_loss, per_token_logps, per_token_logps_shared_prompt
from hitchhiker.train.model import load_reference, load_trainable, trainable_parameters

@dataclass
class TrainResult:
    run_id: str
    checkpoint_id: str  # the run's last checkpoint (the new policy_version)
    path: str  # its URL (a local folder or an object-storage prefix)
    steps: int
    groups_used: list[str]  # the run's whole plan, in order
    metrics: list[dict] = field(default_factory=list)  # per optimizer step of this process's call
    checkpoints: list[str] = field(default_factory=list)  # every committed checkpoint of the run, by step


def train_batch(
    batch_url: str,
    run_url: str | os.PathLike,
    on_step_end: Callable[[int, dict], None] | None = None,
    logging_dir: str | None = None,
) -> TrainResult:
    """Train on a committed GRPO batch (or resume the run at run_url); checkpoints are committed under run_url.

    The config, parent checkpoint and base model come from the batch's manifest. logging_dir: TensorBoard (default
    <run_url>/tensorboard for a local run, else under $HITCHHIKER_HOME/runs/<run_id>)."""
    meta = batches.read_meta(batch_url)
    if meta["algorithm"] != "grpo":
        raise ValueError(f"batch {batch_url} is a {meta['algorithm']} batch, not grpo")
    config = GRPOConfig(**meta["config"])
    config.check()
    run_url = str(run_url)
    run_id, base_model, parent_id = f"grpo-{meta['batch_id'][:12]}", meta["base_model"], meta.get("parent_id")
    committed = ckpts.committed_in_run(run_url)
    other = [m["checkpoint_id"] for _, m in committed if m.get("batch_id") != meta["batch_id"]]
    if other:
        raise ValueError(f"run {run_url} holds checkpoints of another batch ({other[0]}); use a new run URL")
    use_bf16 = config.bf16 and torch.cuda.is_available()
    accelerator = _accelerator(use_bf16)
    plan_groups_ = batches.read_groups(batch_url)
    if [g.group_id for g in plan_groups_] != meta["groups"]:
        raise ValueError(f"batch {batch_url}: its rollouts do not hold the groups its manifest lists")
    n_steps_total = math.ceil(len(plan_groups_) / config.groups_per_step)
    if config.max_steps is not None:
        n_steps_total = min(n_steps_total, config.max_steps)
    max_len = config.max_completion_length or max((len(r.completion_ids) for g in plan_groups_ for r in g.rollouts), default=1)

    latest = committed[-1][0] if committed else None
    start_url = latest or meta.get("parent_url")
    start_from = storage.fetch_dir(start_url) if start_url else None
    torch.manual_seed(config.seed)  # the LoRA init of a fresh adapter
    model, tokenizer = load_trainable(base_model, start_from, config)
    ref_model = load_reference(base_model) if config.beta != 0.0 and config.finetune == "full" else None
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = _scheduler(optimizer, config, n_steps_total)
    step, last_saved_step = 0, 0
    if latest is not None:
        state = torch.load(start_from / ckpts.TRAINER_STATE, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpts.set_rng_state(state["rng"])
        step = last_saved_step = int(state["step"])
    elif meta.get("carry_optimizer") and start_from is not None and (start_from / ckpts.TRAINER_STATE).is_file():
        optimizer.load_state_dict(torch.load(start_from / ckpts.TRAINER_STATE, weights_only=False)["optimizer"])
        for g in optimizer.param_groups:  # this run's learning rate, not the parent's last scheduled one
            g["lr"] = g["initial_lr"] = config.learning_rate
    # The scheduler is not prepared: accelerate's prepared scheduler steps num_processes times per optimizer step
    # (it assumes each process's data loader shrank by that factor), while a step here is the whole batch's step on
    # any number of processes; stepped once, the learning rate follows the same schedule as on one process.
    model, optimizer = accelerator.prepare(model, optimizer)
    if ref_model is not None:
        ref_model.to(accelerator.device)
    model.train()

    writer = _tensorboard(logging_dir or config.logging_dir or _default_logs(run_url, run_id), step) if accelerator.is_main_process else None
    metrics_since_save: list[dict] = []
    all_metrics: list[dict] = []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    last_id = committed[-1][1]["checkpoint_id"] if committed else parent_id
    while step < n_steps_total:
        t0 = time.perf_counter()
        step_groups = plan_groups_[step * config.groups_per_step:(step + 1) * config.groups_per_step]
        m = _optimizer_step(model, ref_model, optimizer, scheduler, accelerator, step_groups, config, pad_id, max_len)
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
                last_id = _save(accelerator.unwrap_model(model), tokenizer, optimizer, scheduler, config, meta, run_id,
                                run_url, step, last_id, used, metrics_since_save)
            accelerator.wait_for_everyone()
            last_saved_step, metrics_since_save = step, []
    if writer is not None:
        writer.close()
    final = ckpts.committed_in_run(run_url)
    if not final:
        raise ValueError(f"run {run_id} has no groups to train on (empty plan)")
    return TrainResult(run_id, _checkpoint_id(run_id, n_steps_total), final[-1][0], n_steps_total,
                       [g.group_id for g in plan_groups_[:n_steps_total * config.groups_per_step]], all_metrics,
                       [m["checkpoint_id"] for _, m in final])


def _default_logs(run_url: str, run_id: str) -> str:
    if storage.is_local(run_url):
        return storage.join(run_url, "tensorboard")
    return str(storage.hitchhiker_home() / "runs" / run_id / "tensorboard")


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
    """One optimizer step over the step's groups, in micro-batches of groups_per_micro_batch groups; under several
    processes (accelerate launch) each process takes every num_processes-th micro-batch of the step.

    Several processes give the gradient one process gives (up to float summation order), for every loss_type:
    grpo_loss normalises a micro-batch as its share of the whole step (divided by the step's number of micro-batches,
    or for dapo by the step's completion tokens, both counted over the step, not over this process's share), so the
    step's gradient is the SUM over its micro-batches; DDP AVERAGES the processes' gradients, so each process scales
    its loss by num_processes. Micro-batches are cut from the whole step before they are shared out, so each one
    (and bnpo's per-micro-batch token mean) holds the same rollouts whatever the process count. A process with no
    micro-batch (a step with fewer of them than processes) still joins the gradient all-reduce, with a zero loss;
    gradients are all-reduced once, on each process's last backward (no_sync before), so processes with more
    micro-batches than others do not wait on each other.
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    micro = [groups[i:i + config.groups_per_micro_batch] for i in range(0, len(groups), config.groups_per_micro_batch)]
    accumulation = max(len(micro), 1)
    tokens_in_step = float(sum(len(r.completion_ids) for g in groups for r in g.rollouts))
    work = [(chunk, float(world)) for chunk in micro[rank::world]] or [(micro[0], 0.0)]
    totals = torch.zeros(5, dtype=torch.float64)  # loss, clip_fraction * tokens, kl * tokens, is_weight * tokens, tokens
    for i, (chunk, scale) in enumerate(work):
        batch = collate([r for g in chunk for r in g.rollouts], pad_id, accelerator.device, share_prompts=config.share_prompts)
        logps_fn = per_token_logps_shared_prompt if config.share_prompts else per_token_logps
        with accelerator.no_sync(model) if i < len(work) - 1 else contextlib.nullcontext():
            with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=config.bf16 and accelerator.device.type == "cuda"):
                logps = logps_fn(model, batch)
                ref = _reference_logps(model, ref_model, batch, accelerator, logps_fn) if config.beta != 0.0 else None
                loss, m = grpo_loss(logps, batch, config, ref_logps=ref, accumulation_steps=accumulation,
                                    tokens_in_step=tokens_in_step, max_completion_length=max_len)
            accelerator.backward(loss * scale)  # x * 1.0 == x: one process computes what it did before
        if scale:
            totals += torch.tensor([float(loss.detach()), m["clip_fraction"] * m["tokens"], m["kl"] * m["tokens"],
                                    m["is_weight_mean"] * m["tokens"], m["tokens"]], dtype=torch.float64)
    if world > 1:  # the step's metrics, every process's micro-batches together
        totals = accelerator.reduce(totals.to(accelerator.device), reduction="sum").cpu()
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm) if config.max_grad_norm else None
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    out = {"loss": float(totals[0])}
    for k, total in zip(("clip_fraction", "kl", "is_weight_mean"), totals[1:4]):
        out[k] = float(total) / max(float(totals[4]), 1.0)
    if grad_norm is not None:
        out["grad_norm"] = float(grad_norm)
    return out


def _reference_logps(model, ref_model, batch, accelerator, logps_fn) -> torch.Tensor:
    """The reference's log-probs for the KL: each row's temperature, the full softmax (no nucleus; see loss.py)."""
    with torch.no_grad():
        if ref_model is not None:
            return logps_fn(ref_model, batch, nucleus=False)
        with accelerator.unwrap_model(model).disable_adapter():  # LoRA: the base is the reference
            return logps_fn(model, batch, nucleus=False)


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


def _tensorboard(log_dir: str, step: int):
    from torch.utils.tensorboard import SummaryWriter

    # purge_step drops events a killed run logged after its last checkpoint, so curves do not double back
    return SummaryWriter(log_dir=str(log_dir), purge_step=step + 1 if step else None)


def _checkpoint_id(run_id: str, step: int) -> str:
    return f"{run_id}-s{step:05d}"


def _save(model, tokenizer, optimizer, scheduler, config, batch_meta, run_id, run_url, step, parent_id, used, metrics) -> str:
    checkpoint_id = _checkpoint_id(run_id, step)
    meta = {
        "checkpoint_id": checkpoint_id, "parent_id": parent_id, "run_id": run_id, "base_model": batch_meta["base_model"],
        "algorithm": "grpo", "finetune": config.finetune, "step": step, "reward_spec": batch_meta["reward_spec"],
        "batch_id": batch_meta["batch_id"], "created_at": datetime.now(timezone.utc).isoformat(), "groups_used": used,
        "train_metrics": _summary(metrics),
    }
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": ckpts.rng_state(), "step": step}
    ckpts.save(run_url, checkpoint_id, model, tokenizer, meta, state)
    return checkpoint_id


def _summary(metrics: list[dict]) -> dict:
    if not metrics:
        return {}
    keys = [k for k in metrics[0] if k != "step"]
    out = {k: sum(m.get(k, 0.0) for m in metrics) / len(metrics) for k in keys}
    out["steps"] = len(metrics)
    return out


def plan_config(config: GRPOConfig) -> dict:
    """The config fields that change what a run computes, as the batch records them."""
    return json.loads(json.dumps(asdict(config)))


def main(argv: list[str] | None = None) -> int:
    """`python -m hitchhiker.train.grpo BATCH_URL RUN_URL`, or the same under `accelerate launch -m` / `torchrun -m`
    on several GPUs or nodes (each process trains its share of every step; the main process commits checkpoints).
    On several nodes both URLs must be storage that every node reads (object storage, a shared file system): every
    process reads the batch, and the run's committed checkpoints to resume from."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m hitchhiker.train.grpo", description=main.__doc__)
    p.add_argument("batch_url", help="a committed GRPO training batch (hitchhiker.batches.write_grpo_batch)")
    p.add_argument("run_url", help="where the run's checkpoints are committed; a run already there resumes")
    p.add_argument("--logging-dir", default=None, help="TensorBoard (default: <run_url>/tensorboard when local)")
    args = p.parse_args(argv)
    from accelerate.state import PartialState

    def report(step: int, m: dict) -> None:  # the metrics are the step's (all processes'): print them once
        if PartialState().is_main_process:
            print(f"step {step}: loss {m['loss']:.6f} reward_mean {m['reward_mean']:.4f} lr {m['lr']:.3g}"
                  + (f" grad_norm {m['grad_norm']:.4f}" if "grad_norm" in m else ""), flush=True)

    res = train_batch(args.batch_url, args.run_url, logging_dir=args.logging_dir, on_step_end=report)
    if PartialState().is_main_process:
        print(f"checkpoint {res.checkpoint_id}: {res.steps} steps on {len(res.groups_used)} groups -> {res.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
