import torch
from torch.distributions import Beta

from hitchhiker.beta_head import BetaHead, BetaHeadConfig, policy_loss, sample_positions


def _head(seed=0):
    torch.manual_seed(seed)
    return BetaHead(3, hidden=8)


def test_stored_log_density_is_beta_log_prob_of_the_sample():
    head = _head()
    x = torch.randn(20, 3)
    pos, logp = sample_positions(head, x, 4, torch.Generator().manual_seed(1))
    alpha, beta = head(x)
    recomputed = Beta(alpha[:, None].expand(-1, 4), beta[:, None].expand(-1, 4)).log_prob(pos / 2)
    assert torch.allclose(logp, recomputed, atol=1e-6)
    assert ((pos > 0) & (pos < 2)).all()


def test_training_draws_vary_but_inference_is_deterministic():
    head = _head()
    x = torch.randn(5, 3)
    a, _ = sample_positions(head, x, 8, torch.Generator().manual_seed(1))
    b, _ = sample_positions(head, x, 8, torch.Generator().manual_seed(2))
    assert not torch.allclose(a, b)
    assert a.std(dim=1).min() > 0  # several draws of one state differ
    again, _ = sample_positions(head, x, 8, torch.Generator().manual_seed(1))
    assert torch.equal(a, again)  # seeded
    assert torch.equal(head.mean_position(x), head.mean_position(x.clone()))
    alpha, beta = head(x)
    assert torch.allclose(head.mean_position(x), 2 * alpha / (alpha + beta))


def test_reinforce_gradient_moves_mean_towards_rewarded_positions():
    head = _head()
    x = torch.zeros(64, 3)
    pos, logp = sample_positions(head, x, 1, torch.Generator().manual_seed(0))
    pos, logp = pos[:, 0], logp[:, 0]
    rewards = pos.clone()  # a larger position always pays more
    before = float(head.mean_position(x[:1]))
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    for _ in range(20):
        loss, _ = policy_loss(head, x, pos, rewards, logp, BetaHeadConfig())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(head.mean_position(x[:1])) > before + 0.1


def test_clip_and_kl_terms():
    head, prev = _head(0), _head(1)
    x = torch.randn(32, 3)
    pos, logp = sample_positions(head, x, 1, torch.Generator().manual_seed(0))
    r = torch.randn(32)
    plain, _ = policy_loss(head, x, pos[:, 0], r, logp[:, 0], BetaHeadConfig())
    clipped, _ = policy_loss(head, x, pos[:, 0], r, logp[:, 0], BetaHeadConfig(clip_eps=0.2))
    # on-policy (ratio 1) the clipped surrogate equals minus the mean advantage-weighted ratio, i.e. zero-mean advantages
    assert abs(float(clipped)) < 1e-6 and abs(float(plain)) > 0
    _, stats = policy_loss(head, x, pos[:, 0], r, logp[:, 0], BetaHeadConfig(kl_coef=1.0), previous=prev)
    assert stats["kl"] > 0
