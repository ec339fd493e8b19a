"""Seconds per optimizer step: hitchhiker's GRPO trainer on stored groups vs TRL's GRPOTrainer, equal work.

Same model (the default small model, full fine-tuning, float32 CPU or bf16 CUDA), same batch (8 prompts x 16
completions per step, the synthetic market's real 'trend' prompts), same loss (dr_grpo, beta 0, constant learning
rate, grad clip 1.0) and the same stored completions ('ACTION: A<|end|>', with their rewards): hitchhiker's trainer
reads them as stored groups, TRL's GRPOTrainer gets them from a `rollout_func` that hands it the stored completions
instead of generating (so neither side generates; the race is the training step alone). Both are timed the same
way, end of one optimizer step to the end of the next, the first step (setup) left out. Each side runs in its own
subprocess so that its peak memory (max RSS, and CUDA peak when on GPU) is its own.

    .venv/bin/python bench/train.py [--steps 8]     (--steps 2 for a quick run)
Ends with: RESULT train ratio=<hitchhiker s/step / TRL s/step> target=<=1.0 PASS|FAIL
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _result import report  # noqa: E402  (bench/ is the script's own folder on sys.path)

PROMPTS, GENERATIONS = 8, 16


def _prompts(work: Path) -> list[list[dict]]:
    from hitchhiker import db
    from hitchhiker.loop import _build, synthetic_setup

    con = db.connect(work / "bench.duckdb")
    cfg = synthetic_setup(con, eval_dates=20)
    ids = _build(con, cfg, cfg.train_dates[:40])
    rows = con.execute("SELECT messages FROM states WHERE list_contains(?, state_id) ORDER BY state_id", [ids]).fetchall()
    con.close()
    return [json.loads(m) for (m,) in rows]


def stored_groups(work: Path, tok, steps: int) -> list[tuple]:
    """The stored rollouts both sides train on: per prompt its messages and a group of GENERATIONS completions."""
    from hitchhiker.train.data import Group, Rollout

    rng = random.Random(0)
    out = []
    for i, messages in enumerate((_prompts(work) * 10)[: PROMPTS * (steps + 1)]):  # + 1: the untimed first step
        prompt = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
        rewards = [rng.choice([-0.02, 0.02]) for _ in range(GENERATIONS)]
        mean = statistics.mean(rewards)
        rollouts = []
        for k in range(GENERATIONS):
            completion = tok.encode(f"ACTION: {rng.choice('AB')}", add_special_tokens=False) + [tok.eos_token_id]
            # the advantage TRL computes for dr_grpo (reward - group mean, not scaled)
            rollouts.append(Rollout(f"{i}-{k}", prompt, completion, [-0.7] * len(completion), 1.0, rewards[k] - mean,
                                    rewards[k], True))
        out.append((messages, Group(f"g{i:05d}", f"s{i}", date(2021, 1, 4), "base:bench", False, rollouts)))
    return out


def _per_step(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:])]  # from the end of step 1: one-time setup excluded


def run_hitchhiker(work: Path, steps: int, share_prompts: bool = True) -> dict:
    import torch

    from hitchhiker.default_model import default_model_path
    from hitchhiker.policy import load_tokenizer
    from hitchhiker.train.config import GRPOConfig
    from hitchhiker.batches import train_grpo

    tok = load_tokenizer()
    groups = [g for _, g in stored_groups(work, tok, steps)]
    cfg = GRPOConfig(finetune="full", groups_per_step=PROMPTS, groups_per_micro_batch=PROMPTS, learning_rate=3e-4,
                     loss_type="dr_grpo", reward_spec="bench", bf16=True, share_prompts=share_prompts)
    stamps: list[float] = []
    train_grpo(None, cfg, work / "hh-run", groups=groups, base_model=str(default_model_path()),
               on_step_end=lambda step, m: stamps.append(time.perf_counter()))
    per_step = _per_step(stamps)
    return {"seconds_per_step": statistics.median(per_step), "steps": len(per_step),
            "completion_tokens_per_step": sum(len(r.completion_ids) for g in groups[:PROMPTS] for r in g.rollouts),
            "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}


def run_trl(work: Path, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from hitchhiker.default_model import default_model_path
    from hitchhiker.policy import load_tokenizer

    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    path = default_model_path()
    tok = load_tokenizer(path)
    stored = stored_groups(work, tok, steps)
    served = 0  # the stored groups handed out so far, in dataset order (shuffle_dataset=False)
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    def stored_rollouts(prompts: list, trainer) -> dict:
        """TRL's generation step replaced by the stored completions of these prompts' groups."""
        nonlocal served
        per_prompt = PROMPTS * GENERATIONS // len(prompts)  # 1 when TRL repeats each prompt, GENERATIONS when not
        out = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "stored_reward": []}
        for j, messages in enumerate(prompts):
            group_messages, group = stored[served + j * per_prompt // GENERATIONS]
            assert messages == group_messages, "TRL's prompts out of step with the stored groups"
            for k in range(per_prompt):
                r = group.rollouts[(j * per_prompt + k) % GENERATIONS]
                out["prompt_ids"].append(r.prompt_ids)
                out["completion_ids"].append(r.completion_ids)
                out["logprobs"].append(r.behaviour_logprobs)
                out["stored_reward"].append(r.reward_usd)
        served += PROMPTS
        return out

    def reward(completions, stored_reward, **kw):
        return stored_reward

    cuda = torch.cuda.is_available()
    args = GRPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=PROMPTS * GENERATIONS,
                      num_generations=GENERATIONS, max_completion_length=8, temperature=1.0, learning_rate=3e-4,
                      lr_scheduler_type="constant", max_grad_norm=1.0, weight_decay=0.0,
                      loss_type="dr_grpo", beta=0.0, max_steps=steps + 1, logging_steps=1, save_strategy="no",
                      report_to="none", use_cpu=not cuda, bf16=cuda, disable_tqdm=True, seed=0, shuffle_dataset=False)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, processing_class=tok,
                          train_dataset=Dataset.from_list([{"prompt": m} for m, _ in stored]), callbacks=[Clock()],
                          rollout_func=stored_rollouts)
    trainer.train()
    per_step = _per_step(stamps)
    logged = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    mean_len = statistics.mean(h["completions/mean_length"] for h in logged) if logged else None
    return {"seconds_per_step": statistics.median(per_step), "steps": len(per_step),
            "completion_tokens_per_step": mean_len * PROMPTS * GENERATIONS if mean_len else None,
            "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--side", choices=["hitchhiker", "hitchhiker-full-forward", "trl"], default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        with tempfile.TemporaryDirectory(prefix=f"hh-bench-train-{args.side}-") as tmp:
            if args.side == "trl":
                out = run_trl(Path(tmp), args.steps)
            else:  # the full-forward variant (no shared prompt cache) is reported for reference, not in the ratio
                out = run_hitchhiker(Path(tmp), args.steps, share_prompts=args.side == "hitchhiker")
        out["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("JSON " + json.dumps(out))
        return 0
    from hitchhiker.default_model import default_model_path

    default_model_path()
    results = {}
    for side in ("hitchhiker", "hitchhiker-full-forward", "trl"):
        proc = subprocess.run([sys.executable, __file__, "--side", side, "--steps", str(args.steps)],
                              capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON ")]
        if proc.returncode or not lines:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{side} side failed")
        results[side] = json.loads(lines[-1][5:])
        r = results[side]
        print(f"{side:>23}: {r['seconds_per_step']:.3f} s/step (median of {r['steps']}), "
              f"{r['completion_tokens_per_step']} completion tokens/step, peak RSS {r['max_rss_mib']:.0f} MiB"
              + (f", CUDA peak {r['cuda_peak_mib']:.0f} MiB" if r["cuda_peak_mib"] else ""), flush=True)
    ratio = results["hitchhiker"]["seconds_per_step"] / results["trl"]["seconds_per_step"]
    return report("train", ratio, "<=", 1.0)


if __name__ == "__main__":
    sys.exit(main())
