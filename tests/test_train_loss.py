"""The trainer scores each completion under the distribution it was sampled from (its temperature and top_p): on
rollouts drawn by the HF sampler from the default small model, the trainer's per-token log-probs at the sampling
weights equal the stored behaviour log-probs, so the importance ratio starts at 1, with top_p < 1, top_p = 1 and a
batch mixing both; a token outside the current policy's nucleus gives no NaN in the loss or its gradients."""
from __future__ import annotations

import pytest
import torch

from hitchhiker import rollouts
from hitchhiker.policy import load_policy
from hitchhiker.rollouts import SamplingConfig
from hitchhiker.sampling import sampling_logprobs
from hitchhiker.states import example_prompts
from hitchhiker.train.config import GRPOConfig
from hitchhiker.train.data import Rollout, collate
from hitchhiker.train.loss import (grpo_loss, importance_weights, per_token_logps,
                                   per_token_logps_shared_prompt)

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def policy():
    return load_policy()


def _sample(policy, top_p: float, seed: int, n_groups: int = 3, group_size: int = 4) -> list[Rollout]:
    """Rollouts drawn by the HF sampler (sample_token_groups) at temperatures in [0.7, 1.7], never 1 exactly."""
    config = SamplingConfig(group_size=group_size, temperature=1.2, temperature_eps=0.5, top_p=top_p,
                            max_new_tokens=10, seed=seed)
    texts = example_prompts(n_groups, seed=seed)
    prompts = [policy.prompt_ids([{"role": "user", "content": t}]) for t in texts]
    gids = [f"{seed}-{top_p}-{g}" for g in range(n_groups)]
    generators = [rollouts.group_generator(seed, g) for g in gids]
    temperatures = 0.7 + torch.rand(n_groups, group_size, generator=torch.Generator().manual_seed(seed)).double()
    samples = rollouts.sample_token_groups(policy, prompts, temperatures, generators, config)
    out = []
    for g, (prompt, temps, group) in enumerate(zip(prompts, temperatures.tolist(), samples)):
        for k, (t, (ids, lps)) in enumerate(zip(temps, group)):
            assert t != 1.0
            out.append(Rollout(f"{gids[g]}-{k}", prompt, ids, lps, t, advantage=float(k % 3 - 1), reward_usd=0.0,
                               valid=True, top_p=top_p))
    return out


def _max_diff(logps: torch.Tensor, batch: dict) -> float:
    mask = batch["completion_mask"].bool()
    return float((logps - batch["behaviour_logps"]).abs()[mask].max())


def _check_scores_equal_stored(policy, rows: list[Rollout]) -> dict:
    """Both trainer scoring paths equal the stored log-probs and the ratio is 1; returns the measured differences."""
    pad = policy.tokenizer.pad_token_id
    batch = collate(rows, pad, share_prompts=True)
    with torch.no_grad():
        logps = per_token_logps(policy.model, batch)
        shared = per_token_logps_shared_prompt(policy.model, batch)
        full_softmax = per_token_logps(policy.model, batch, nucleus=False)
    diffs = {"per_token_logps": _max_diff(logps, batch), "shared_prompt": _max_diff(shared, batch),
             "full_softmax": _max_diff(full_softmax, batch)}
    print(f"max |trainer - stored| over {int(batch['completion_mask'].sum())} tokens: {diffs}")
    assert diffs["per_token_logps"] < TOLERANCE and diffs["shared_prompt"] < TOLERANCE
    for mode in ("token_truncate", "sequence_truncate"):
        weights = importance_weights(logps, batch, GRPOConfig(is_mode=mode))
        assert float((weights - 1).abs().max()) < 1e-4  # per sequence: up to 10 tokens' differences summed
    return diffs


def test_top_p_below_one_scores_equal_the_stored_behaviour_logprobs(policy):
    rows = _sample(policy, top_p=0.9, seed=0)
    diffs = _check_scores_equal_stored(policy, rows)
    # the nucleus matters on these rollouts: the full softmax is off by far more than the tolerance
    assert diffs["full_softmax"] > 1e-2


def test_top_p_one_scores_equal_the_stored_behaviour_logprobs(policy):
    diffs = _check_scores_equal_stored(policy, _sample(policy, top_p=1.0, seed=1))
    assert diffs["full_softmax"] == diffs["per_token_logps"]  # top_p = 1 is the full tempered softmax


def test_a_batch_mixing_top_p_is_scored_per_row(policy):
    by_top_p = [_sample(policy, top_p=p, seed=2 + i, n_groups=2) for i, p in enumerate((0.9, 1.0, 0.5))]
    mixed = [r for rows in zip(*by_top_p) for r in rows]  # interleaved: neighbouring rows differ in top_p
    assert len({r.top_p for r in mixed[:3]}) == 3
    _check_scores_equal_stored(policy, mixed)


def _outside_nucleus_batch(policy) -> tuple[dict, tuple[int, int]]:
    """Stored top_p = 0.5 rollouts where one token is replaced by one the current policy's nucleus excludes, its
    behaviour log-prob kept finite (as if an older policy had sampled it)."""
    rows = _sample(policy, top_p=0.5, seed=5, n_groups=2)
    batch = collate(rows, policy.tokenizer.pad_token_id)
    row, pos = 1, 0
    with torch.no_grad():
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)[row:row + 1]
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)[row:row + 1]
        logits = policy.model(input_ids=ids, attention_mask=mask).logits[0, batch["prompt_ids"].size(1) - 1 + pos]
        logp = sampling_logprobs(logits[None], batch["temperature"][row], 0.5)[0]
    outside = torch.nonzero(torch.isinf(logp)).flatten()
    assert len(outside) > 0
    batch["completion_ids"][row, pos] = outside[0]
    batch["behaviour_logps"][row, pos] = -3.0
    return batch, (row, pos)


@pytest.mark.parametrize("pi_old", ["behaviour", "proximal"])
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo"])
def test_a_token_outside_the_nucleus_gives_no_nan_in_loss_or_gradients(policy, pi_old, loss_type):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(policy.model_path)  # trainable copy of the same weights
    model.train()
    batch, (row, pos) = _outside_nucleus_batch(policy)
    logps = per_token_logps(model, batch)
    assert torch.isinf(logps[row, pos]) and torch.isfinite(logps[batch["completion_mask"].bool()]).sum() > 1
    with torch.no_grad():
        ref = per_token_logps(model, batch, nucleus=False)
    assert bool(torch.isfinite(ref).all())  # the reference's full softmax gives every token mass: a finite KL
    config = GRPOConfig(pi_old=pi_old, loss_type=loss_type, beta=0.04)
    loss, metrics = grpo_loss(logps, batch, config, ref_logps=ref)
    assert torch.isfinite(loss) and all(v == v for v in metrics.values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)  # the other tokens still train
    if pi_old == "proximal":  # pi_prox / pi_behaviour = 0 on that token
        weights = importance_weights(logps.detach(), batch, config)
        assert float(weights[row, pos]) == 0.0 and bool(torch.isfinite(weights).all())


def test_is_mode_none_trains_a_teachers_rows_as_the_students_own(policy):
    """is_mode 'none' (issue 21's teachers): rows whose behaviour log-probs are another model's get no importance
    weight, so the loss equals the loss of the same rows had the student sampled them; the truncated weight differs."""
    batch = collate(_sample(policy, top_p=1.0, seed=2), policy.tokenizer.pad_token_id, share_prompts=True)
    with torch.no_grad():
        logps = per_token_logps(policy.model, batch)
    batch["advantages"] = torch.linspace(-1.0, 1.0, batch["advantages"].numel())
    teacher = dict(batch, behaviour_logps=torch.where(batch["completion_mask"].bool(), logps - 0.7, 0.0))  # surer
    own = dict(batch, behaviour_logps=logps)
    none, _ = grpo_loss(logps, teacher, GRPOConfig(is_mode="none"))
    truncated, metrics = grpo_loss(logps, teacher, GRPOConfig(is_mode="token_truncate"))
    as_own, _ = grpo_loss(logps, own, GRPOConfig(is_mode="token_truncate"))
    assert float(none) == pytest.approx(float(as_own), abs=1e-7)
    assert metrics["is_weight_mean"] == pytest.approx(float(torch.exp(torch.tensor(0.7))), rel=1e-4)
    assert abs(float(truncated) - float(none)) > 1e-4
