"""Seconds per optimizer step: hitchhiker's GRPO trainer on stored groups vs TRL's GRPOTrainer, equal work.

Same model (the default small model, full fine-tuning, float32 CPU or bf16 CUDA), same batch (8 prompts x 16
completions per step, the synthetic market's real 'trend' prompts), same loss (dr_grpo, beta 0). TRL generates
its completions each step (that is how it works); hitchhiker reads them from the buffer (stored completions of the
same length TRL generates, 'ACTION: A<|end|>'), so the difference is what not re-generating buys. Each side runs in
its own subprocess so that its peak memory (max RSS, and CUDA peak when on GPU) is its own.

    .venv/bin/python bench/train.py [--steps 8]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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


def run_hitchhiker(work: Path, steps: int, share_prompts: bool = True) -> dict:
    import torch

    from hitchhiker.default_model import default_model_path
    from hitchhiker.policy import load_tokenizer
    from hitchhiker.train.config import GRPOConfig
    from hitchhiker.train.data import Group, Rollout
    from hitchhiker.batches import train_grpo

    tok = load_tokenizer()
    rng = random.Random(0)
    groups = []
    for i, messages in enumerate((_prompts(work) * 10)[: PROMPTS * steps]):
        prompt = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
        rollouts = []
        for k in range(GENERATIONS):
            completion = tok.encode(f"ACTION: {rng.choice('AB')}", add_special_tokens=False) + [tok.eos_token_id]
            rollouts.append(Rollout(f"{i}-{k}", prompt, completion, [-0.7] * len(completion), 1.0, rng.gauss(0, 1),
                                    rng.choice([-0.02, 0.02]), True))
        groups.append(Group(f"g{i:05d}", f"s{i}", "2021-01-04", "base:bench", False, rollouts))
    cfg = GRPOConfig(finetune="full", groups_per_step=PROMPTS, groups_per_micro_batch=PROMPTS, learning_rate=3e-4,
                     loss_type="dr_grpo", reward_spec="bench", bf16=True, share_prompts=share_prompts)
    res = train_grpo(None, cfg, work / "hh-run", groups=groups, base_model=str(default_model_path()))
    per_step = [m["seconds"] for m in res.metrics[1:]]  # the first step pays one-time setup
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
    prompts = (_prompts(work) * 10)[: PROMPTS * (steps + 1)]
    stamps: list[float] = []
    lengths: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    def reward(completions, **kw):
        lengths.append(sum(1 for _ in completions))
        return [random.choice([-0.02, 0.02]) for _ in completions]

    cuda = torch.cuda.is_available()
    args = GRPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=PROMPTS * GENERATIONS,
                      num_generations=GENERATIONS, max_completion_length=8, temperature=1.0, learning_rate=3e-4,
                      loss_type="dr_grpo", beta=0.0, max_steps=steps + 1, logging_steps=1, save_strategy="no",
                      report_to="none", use_cpu=not cuda, bf16=cuda, disable_tqdm=True, seed=0, shuffle_dataset=False)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, processing_class=tok,
                          train_dataset=Dataset.from_list([{"prompt": m} for m in prompts]), callbacks=[Clock()])
    trainer.train()
    per_step = [b - a for a, b in zip(stamps, stamps[1:])]  # from the end of step 1: setup excluded
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
    print(f"RESULT train ratio={ratio:.3f} target=<=1.0 {'PASS' if ratio <= 1.0 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
