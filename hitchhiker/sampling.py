"""The distribution a completion token is drawn from, shared by the sampler and the trainer.

The HF sampler (hitchhiker.rollouts) stores each sampled token's log-probability under this distribution (the
behaviour log-prob, GRPO's pi_old), and the trainer (hitchhiker.train.loss) scores the new policy under the same one,
row by row (each row's own temperature and top_p), so that the importance ratio pi_theta / pi_old compares like with
like. One implementation for both: a copy that drifted (a different tie rule at the nucleus edge, say) would bias
the ratio. Only torch is imported here, so the sampler machines and the trainer can both import it.
"""
from __future__ import annotations

import torch


def sampling_logprobs(logits: torch.Tensor, temperatures: torch.Tensor | float,
                      top_p: torch.Tensor | float = 1.0) -> torch.Tensor:
    """log_softmax(logits / temperature) over the last dim, restricted to and renormalized over the top-p nucleus
    where top_p < 1 (-inf outside it, so the probability there is 0).

    logits: (..., vocab); temperatures and top_p: a float, or one value per row broadcastable to logits[..., :1]
    ((n, 1) for (n, vocab) logits, (n, 1, 1) for (n, positions, vocab)). Rows with top_p >= 1 get the plain
    tempered log_softmax, bit for bit, whatever the other rows' top_p.
    """
    logp = torch.log_softmax(logits.float() / temperatures, dim=-1)
    top_p = torch.as_tensor(top_p, dtype=logp.dtype, device=logp.device)
    truncated = top_p < 1.0
    if not bool(truncated.any()):
        return logp
    # The nucleus: the most likely tokens whose mass reaches top_p (a token is kept when the mass strictly above
    # it is below top_p, so the first token is always kept) — the set vLLM's and HF's top-p keep.
    sorted_logp, order = torch.sort(logp, descending=True, dim=-1)
    probs = sorted_logp.exp()
    above = probs.cumsum(-1) - probs
    drop = torch.zeros_like(logp, dtype=torch.bool).scatter(-1, order, above >= top_p)
    nucleus = torch.log_softmax(logp.masked_fill(drop, float("-inf")), dim=-1)
    # top_p = 1 rows keep logp itself: above >= 1 can hold by rounding for the least likely tokens
    return torch.where(truncated, nucleus, logp)
