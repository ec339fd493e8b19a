"""The GRPO loss over stored rollouts.

Why not TRL's GRPOTrainer with a `rollout_func` that replays the buffer: TRL scores every completion with one
temperature (`args.temperature`), while hitchhiker samples each completion of a group at its own temperature
(stored per row), so the new policy's log-probabilities must be computed per row with that row's temperature to
be comparable with the stored behaviour log-probabilities; TRL also recomputes advantages from reward functions
within its generation batch, where ours come from SQL (`advantages` view) over whole groups; and its training loop
is driven by prompts to generate from, where ours consumes an ordered plan of stored groups that checkpoints must
record exactly. The loss itself is TRL's `_compute_loss` (clipped ratio, truncated importance weights against the
sampler, k3 KL with the bias correction, the same aggregations), checked equal to it within 1e-6 in
tests/test_train_grpo.py by calling TRL's own method on identical tensors.

The policy is scored under the distribution each completion was sampled from: the row's temperature and top_p
(the nucleus taken under the scored policy's own logits and renormalized; hitchhiker.sampling.sampling_logprobs,
the sampler's own function), so the ratio to the stored behaviour log-probs is 1 at the sampling weights whatever
the top_p. TRL scores the full softmax, which with top_p < 1 biases the ratio by the mass outside the nucleus.
The reference model (the KL term) is scored at the row's temperature over the full softmax, as TRL does: the
reference's own nucleus could exclude a token the policy samples and make the KL infinite.
"""
from __future__ import annotations

import torch

from hitchhiker.sampling import sampling_logprobs
from hitchhiker.train.config import GRPOConfig


def completion_logps(logits: torch.Tensor, batch: dict[str, torch.Tensor], nucleus: bool = True) -> torch.Tensor:
    """log-probs (B, T) of batch["completion_ids"] given the logits (B, T, vocab) that predict them, under each
    row's sampling distribution: hitchhiker.sampling.sampling_logprobs at the row's temperature and, when nucleus,
    its top_p (the nucleus taken under these logits; a token outside it scores -inf, ratio 0: grpo_loss handles it).
    nucleus=False: the full tempered softmax (the reference model's log-probs for the KL)."""
    temperature = batch["temperature"].to(logits.device)[:, None, None]
    top_p = batch["top_p"].to(logits.device)[:, None, None] if nucleus else 1.0
    logps = sampling_logprobs(logits, temperature, top_p)
    return logps.gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)


def per_token_logps(model, batch: dict[str, torch.Tensor], nucleus: bool = True) -> torch.Tensor:
    """log pi(completion token | prefix) per completion position (B, T), each row under the distribution it was
    sampled from (its temperature and top_p: completion_logps), for a batch from hitchhiker.train.data.collate.

    At the weights that sampled a rollout this equals its stored behaviour log-probs (tested to 1e-5), so the
    importance ratio starts at 1. nucleus=False: the full tempered softmax (what the reference model is scored with).
    """
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    n_completion = batch["completion_ids"].size(1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask)).logits
    # position t predicts token t + 1: the logits for completion token i sit one position earlier
    return completion_logps(logits[:, -n_completion - 1:-1, :], batch, nucleus)


def per_token_logps_shared_prompt(model, batch: dict[str, torch.Tensor], nucleus: bool = True) -> torch.Tensor:
    """per_token_logps, with each group's prompt encoded once and its KV cache shared by the group's completions.

    A group's completions all continue the same prompt, and prompts are ~10x longer than the 4-token completions of
    the default model, so this cuts the trained tokens by about that factor; the result equals per_token_logps (same
    positions and masks; tested to 1e-5). Gradients flow through the shared cache into the prompt's forward pass.
    Needs batch["group_prompt_ids"], ["group_prompt_mask"] and ["row_group"] (collate(..., share_prompts=True)).
    """
    prompt_positions = _positions(batch["group_prompt_mask"])
    out = model(input_ids=batch["group_prompt_ids"], attention_mask=batch["group_prompt_mask"],
                position_ids=prompt_positions, use_cache=True)
    cache, row_group = out.past_key_values, batch["row_group"]
    cache.reorder_cache(row_group)  # one cache row per completion (index_select: differentiable)
    first = out.logits[:, -1, :].index_select(0, row_group)  # predicts each completion's first token
    attention = torch.cat([batch["group_prompt_mask"].index_select(0, row_group), batch["completion_mask"]], dim=1)
    positions = _positions(attention[:, :-1])[:, prompt_positions.size(1):]  # as per_token_logps numbers them
    rest = model(input_ids=batch["completion_ids"][:, :-1], attention_mask=attention[:, :-1], past_key_values=cache,
                 position_ids=positions, use_cache=True).logits
    return completion_logps(torch.cat([first.unsqueeze(1), rest], dim=1), batch, nucleus)


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each token's position in its own sequence, not counting the left padding: the positions the sampler used
    (RoPE is relative, but its angles are rounded in float32, so shifted positions give log-probs ~1e-5 apart)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def importance_weights(prox_logps: torch.Tensor, batch: dict[str, torch.Tensor], config: GRPOConfig) -> torch.Tensor | None:
    """Truncated importance weights min(pi_prox / pi_behaviour, cap): per token (B, T) or per sequence (B, 1);
    None for is_mode 'none' (no correction)."""
    if config.is_mode == "none":
        return None
    # where, not a product: prox_logps is -inf at a token outside the proximal policy's nucleus (weight 0 then),
    # which may also be a padding position, and -inf * 0 is NaN
    diff = torch.where(batch["completion_mask"].bool(), prox_logps - batch["behaviour_logps"], 0.0)
    if config.is_mode == "sequence_truncate":
        diff = diff.sum(dim=-1, keepdim=True)
    return torch.clamp(torch.exp(diff), max=config.is_cap)


def grpo_loss(
    logps: torch.Tensor,
    batch: dict[str, torch.Tensor],
    config: GRPOConfig,
    *,
    prox_logps: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    accumulation_steps: int = 1,
    tokens_in_step: float | None = None,
    max_completion_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one micro-batch (already divided for gradient accumulation) and its metrics.

    logps: the trained policy's per-token log-probs (with grad); prox_logps: the same model at the start of the
    optimizer step (default: logps detached, exact when each micro-batch is seen once per step); ref_logps: the
    reference model's (needed when beta > 0); tokens_in_step: completion tokens in the whole step ('dapo').

    With top_p < 1 a token can fall outside the current policy's nucleus (logps = -inf, pi = 0): its ratio is 0,
    so it adds no gradient (the clipped term is 0 or constant) and no KL (pi puts no mass on it), and with
    pi_old='proximal' a token outside the proximal policy's nucleus gets importance weight 0; the -inf never
    reaches an exp or a product, so neither the loss nor the gradients hold NaN.
    """
    mask = batch["completion_mask"].to(logps.dtype)
    advantages = batch["advantages"].to(logps.dtype).unsqueeze(1)
    is_weight = None
    if config.pi_old == "behaviour":
        old = batch["behaviour_logps"]
    else:
        old = logps.detach() if prox_logps is None else prox_logps
        is_weight = importance_weights(old, batch, config)
    # the tokens both distributions can sample; elsewhere safe finite stand-ins, masked out below (a NaN in a branch
    # that torch.where discards still poisons the gradient)
    inside = torch.isfinite(logps) & torch.isfinite(old)
    logps = torch.where(inside, logps, 0.0)
    old = torch.where(inside, old, 0.0)
    coef_1 = torch.where(inside, torch.exp(logps - old), 0.0)
    coef_2 = torch.clamp(coef_1, 1 - config.epsilon_low, 1 + config.epsilon_high)
    per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    if is_weight is not None:
        per_token_loss = per_token_loss * is_weight
    kl = None
    if config.beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs the reference model's log-probs")
        kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1  # k3 estimator of KL(pi || ref)
        kl = torch.where(inside, kl * coef_1, 0.0)  # TRL's use_bias_correction_kl: the tokens were sampled from pi_old
        per_token_loss = per_token_loss + config.beta * kl

    if config.loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accumulation_steps
    elif config.loss_type == "bnpo":
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0) / accumulation_steps
    elif config.loss_type == "dr_grpo":
        length = max_completion_length or config.max_completion_length or mask.size(1)
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * length) / accumulation_steps
    elif config.loss_type == "dapo":
        normalizer = tokens_in_step if tokens_in_step is not None else mask.sum()
        loss = (per_token_loss * mask).sum() / torch.as_tensor(normalizer, dtype=logps.dtype).clamp(min=1.0)
    else:
        raise ValueError(f"loss_type {config.loss_type!r} is not one of grpo, bnpo, dr_grpo, dapo")

    with torch.no_grad():
        n_tokens = mask.sum().clamp(min=1.0)
        clipped = ((coef_1 < 1 - config.epsilon_low) & (advantages < 0)) | ((coef_1 > 1 + config.epsilon_high) & (advantages > 0))
        metrics = {
            "clip_fraction": float((clipped.float() * mask).sum() / n_tokens),
            "kl": float((kl * mask).sum() / n_tokens) if kl is not None else 0.0,
            "is_weight_mean": float((is_weight.expand_as(mask) * mask).sum() / n_tokens) if is_weight is not None else 1.0,
            "tokens": float(mask.sum()),
        }
    return loss, metrics
