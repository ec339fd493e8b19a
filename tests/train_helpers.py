"""Shared by the training tests: a tiny random Llama with its own tokenizer, and synthetic stored groups."""
from __future__ import annotations

import random
from datetime import date, timedelta
from pathlib import Path

import torch

from hitchhiker.train.data import Group, Rollout

WORDS = "Stock A B trend UP DOWN FLAT . : ACTION Which higher return".split()


def tiny_model_dir(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (width 32) and a word-level tokenizer saved as a model folder (seconds, offline)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hitchhiker.default_model import build_tokenizer

    path = Path(path)
    if (path / "config.json").is_file():
        return path
    tok = build_tokenizer([" ".join(WORDS), "ACTION: A", "ACTION: B", "Stock A trend: UP. Stock B trend: DOWN."])
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_groups(model_dir: Path, n_groups: int, group_size: int = 4, seed: int = 0, temperature: float | None = None,
                start: date = date(2020, 1, 2)) -> list[Group]:
    """Groups sampled from the tiny model itself, with behaviour log-probs that are the model's own (or perturbed)."""
    from hitchhiker.policy import load_tokenizer

    tok = load_tokenizer(model_dir)
    rng = random.Random(seed)
    vocab = [tok.convert_tokens_to_ids(w) for w in ("A", "B", "UP", "DOWN", ".", "ACTION", ":")]
    groups = []
    for gi in range(n_groups):
        prompt = [tok.convert_tokens_to_ids(w) for w in ["<|user|>", "Stock", "A", "trend", ":", rng.choice(["UP", "DOWN"])]]
        prompt = prompt[: rng.randint(4, len(prompt))] + [tok.convert_tokens_to_ids("<|assistant|>")]
        rewards = [rng.choice([-1.0, 0.0, 1.0]) * 0.01 for _ in range(group_size)]
        mean = sum(rewards) / group_size
        std = (sum((r - mean) ** 2 for r in rewards) / max(group_size - 1, 1)) ** 0.5
        rollouts = []
        for s in range(group_size):
            completion = [rng.choice(vocab) for _ in range(rng.randint(1, 5))] + [tok.eos_token_id]
            rollouts.append(Rollout(
                rollout_id=f"g{gi}-{s}", prompt_ids=prompt, completion_ids=completion,
                behaviour_logprobs=[-rng.uniform(0.5, 4.0) for _ in completion],
                temperature=temperature if temperature is not None else rng.uniform(0.6, 0.8),
                advantage=(rewards[s] - mean) / (std + 1e-6), reward_usd=rewards[s], valid=rng.random() < 0.9,
            ))
        groups.append(Group(f"group-{seed}-{gi:04d}", f"state-{gi}", start + timedelta(days=gi // 4), "base:tiny",
                            std == 0.0, rollouts))
    return groups


def scripted_buffer(tmp_path: Path, model_dir: Path, n_days: int = 30, group_size: int = 4, seed: int = 0):
    """A real store: synthetic market -> trend states -> groups written to the replay (completions alternate
    'ACTION: A' / 'ACTION: B', one invalid) -> SQL rewards. Returns (con, replay_root, state_ids, policy_version)."""
    from datetime import datetime, timezone

    from hitchhiker import db, replay
    from hitchhiker.policy import load_tokenizer
    from hitchhiker.rewards import compute_rewards
    from hitchhiker.rollouts import group_id, load_states
    from hitchhiker.states import StatesConfig, build_states
    from hitchhiker.synthetic import SyntheticMarket, couples, trading_days, write_market

    con = db.connect(tmp_path / "buffer.duckdb")
    market = SyntheticMarket(n_couples=1, n_days=n_days, seed=seed)
    write_market(con, market)
    tok = load_tokenizer(model_dir)
    ids = build_states(con, StatesConfig(mode="pairwise", style="trend"), trading_days(market)[8:-2],
                       tickers=couples(market)[0], tokenizer=tok)
    root = replay.default_root(tmp_path / "buffer.duckdb")  # where the CLI looks for it
    version = "base:scripted"
    now = datetime.now(timezone.utc)
    for state in load_states(con, ids):
        gid = group_id(state.state_id, version)
        prompt = list(tok.apply_chat_template(state.messages, add_generation_prompt=True, tokenize=True, return_dict=False))
        rows = []
        for k in range(group_size):
            text = "ACTION: " + "AB"[k % 2] if k < group_size - 1 else "no idea"
            completion = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
            valid = k < group_size - 1
            rows.append({
                "rollout_id": f"{gid}-{k}", "state_id": state.state_id, "group_id": gid, "mode": state.mode,
                "policy_version": version, "sample_index": k, "temperature": 1.0, "top_p": 1.0, "prompt_ids": prompt,
                "completion": text, "completion_ids": completion, "token_logprobs": [-0.7] * len(completion),
                "logprob_sum": -0.7 * len(completion), "action": "AB"[k % 2] if valid else None,
                "proportion": (1.0 if k % 2 == 0 else 0.0) if valid else None, "position": None, "advisory_text": "",
                "valid": valid, "invalid_reason": None if valid else "last line is not 'ACTION: ...'", "created_at": now,
            })
        replay.write_group(root, state.decision_date, state.pair, gid, rows)
    replay.ensure_view(con, root)
    compute_rewards(con)
    return con, root, ids, version
