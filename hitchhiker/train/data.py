"""Training data: groups of stored rollouts with their SQL advantages (read from a training batch), and their tensors.

Nothing is re-generated or re-tokenized: the prompt and completion token ids, the sampling temperature and top_p and
the behaviour log-probabilities are the ones the sampler stored, so the trainer scores exactly what was sampled,
under the distribution it was sampled from.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import torch


@dataclass
class Rollout:
    rollout_id: str
    prompt_ids: list[int]
    completion_ids: list[int]
    behaviour_logprobs: list[float]  # per completion token, under the sampling distribution (temperature, top_p)
    temperature: float
    advantage: float
    reward_usd: float
    valid: bool
    top_p: float = 1.0  # the nucleus it was sampled from (1 = the full distribution)


@dataclass
class Group:
    group_id: str
    state_id: str
    decision_date: date
    policy_version: str
    zero_variance: bool
    rollouts: list[Rollout]


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
        "top_p": torch.tensor([r.top_p for r in rollouts], dtype=torch.float32),
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
