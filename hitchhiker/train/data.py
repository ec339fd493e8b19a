"""Training data from the replay buffer: groups of stored rollouts with their SQL advantages, and their batches.

Nothing is re-generated or re-tokenized: the prompt and completion token ids, the sampling temperature and the
behaviour log-probabilities are the ones the sampler stored, so the trainer scores exactly what was sampled.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import torch

from hitchhiker import db


@dataclass
class Rollout:
    rollout_id: str
    prompt_ids: list[int]
    completion_ids: list[int]
    behaviour_logprobs: list[float]  # per completion token, under the temperature-scaled sampling distribution
    temperature: float
    advantage: float
    reward_usd: float
    valid: bool


@dataclass
class Group:
    group_id: str
    state_id: str
    decision_date: date
    policy_version: str
    zero_variance: bool
    rollouts: list[Rollout]


def default_reward_spec() -> str:
    """The rewards stage's default spec name (its RewardSpec's versioned name)."""
    from hitchhiker.rewards import RewardSpec

    spec = RewardSpec()
    name = spec.reward_spec
    return name() if callable(name) else str(name)


def load_groups(
    con,
    reward_spec: str | None = None,
    advantage_column: str = "advantage",
    policy_version: str | None = None,
    start_date: date | None = None,
    end_date: date | None = None,
) -> list[Group]:
    """Matured groups (every rollout has a reward under reward_spec), ordered by decision date then group id."""
    if advantage_column not in ("advantage", "advantage_drgrpo"):
        raise ValueError(f"advantage_column {advantage_column!r} is not 'advantage' or 'advantage_drgrpo'")
    spec = reward_spec or default_reward_spec()
    rows = con.execute(
        db.sql_text("train/groups"),
        {"reward_spec": spec, "policy_version": policy_version, "start_date": start_date, "end_date": end_date},
    ).fetchall()
    cols = [d[0] for d in con.description]
    groups: dict[str, Group] = {}
    for values in rows:
        row = dict(zip(cols, values))
        g = groups.get(row["group_id"])
        if g is None:
            g = groups[row["group_id"]] = Group(
                row["group_id"], row["state_id"], row["decision_date"], row["policy_version"], bool(row["zero_variance"]), []
            )
        completion, logprobs = list(row["completion_ids"] or []), list(row["token_logprobs"] or [])
        if len(completion) != len(logprobs) or not completion:
            raise ValueError(
                f"rollout {row['rollout_id']}: {len(completion)} completion tokens but {len(logprobs)} behaviour log-probs"
            )
        g.rollouts.append(
            Rollout(
                row["rollout_id"], list(row["prompt_ids"]), completion, logprobs, float(row["temperature"]),
                float(row[advantage_column]), float(row["reward_usd"]), bool(row["valid"]),
            )
        )
    return list(groups.values())


def collate(rollouts: list[Rollout], pad_token_id: int, device: torch.device | str = "cpu",
            share_prompts: bool = False) -> dict[str, torch.Tensor]:
    """TRL's layout: prompts left-padded, completions right-padded, masks for both, one row per rollout.

    share_prompts: also the distinct prompts (group_prompt_ids/_mask, left-padded to the same width) and each row's
    index into them (row_group), for per_token_logps_shared_prompt.
    """
    n = len(rollouts)
    p_len = max(len(r.prompt_ids) for r in rollouts)
    c_len = max(len(r.completion_ids) for r in rollouts)
    prompt_ids = torch.full((n, p_len), pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((n, p_len), dtype=torch.long)
    completion_ids = torch.full((n, c_len), pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros((n, c_len), dtype=torch.long)
    behaviour = torch.zeros((n, c_len), dtype=torch.float32)
    for i, r in enumerate(rollouts):
        p, c = len(r.prompt_ids), len(r.completion_ids)
        prompt_ids[i, p_len - p:] = torch.tensor(r.prompt_ids)
        prompt_mask[i, p_len - p:] = 1
        completion_ids[i, :c] = torch.tensor(r.completion_ids)
        completion_mask[i, :c] = 1
        behaviour[i, :c] = torch.tensor(r.behaviour_logprobs, dtype=torch.float32)
    out = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "behaviour_logps": behaviour,
        "temperature": torch.tensor([r.temperature for r in rollouts], dtype=torch.float32),
        "advantages": torch.tensor([r.advantage for r in rollouts], dtype=torch.float32),
    }
    if share_prompts:
        distinct: dict[tuple, int] = {}
        row_group = [distinct.setdefault(tuple(r.prompt_ids), len(distinct)) for r in rollouts]
        rows = list(distinct)
        out["group_prompt_ids"] = torch.full((len(rows), p_len), pad_token_id, dtype=torch.long)
        out["group_prompt_mask"] = torch.zeros((len(rows), p_len), dtype=torch.long)
        for i, ids in enumerate(rows):
            out["group_prompt_ids"][i, p_len - len(ids):] = torch.tensor(ids)
            out["group_prompt_mask"][i, p_len - len(ids):] = 1
        out["row_group"] = torch.tensor(row_group, dtype=torch.long)
    return {k: v.to(device) for k, v in out.items()}
