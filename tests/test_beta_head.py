import copy

import pytest
import torch
from torch.distributions import Beta

from hitchhiker.beta.head import BetaHead, BetaHeadConfig, policy_loss, sample_positions


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: with several threads on a busy machine, thread hand-offs cost 100x the arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    advantages = pos - pos.mean()  # a larger position always pays more
    with torch.no_grad():
        before = float(head.mean_position(x[:1]))
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    for _ in range(20):
        loss, _ = policy_loss(head, x, pos, advantages, logp, BetaHeadConfig(clip_eps=None))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(head.mean_position(x[:1])) > before + 0.1


def _grads(head, loss) -> torch.Tensor:
    head.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten().clone() for p in head.parameters()])


def test_default_is_the_clipped_ratio_and_a_sample_clipped_in_its_advantages_direction_gives_no_gradient():
    assert BetaHeadConfig().clip_eps == 0.2
    head = _head()
    x = torch.randn(4, 3)
    pos = torch.tensor([0.5, 1.0, 1.5, 0.8])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    with torch.no_grad():
        logp_now = head.dist(x).log_prob(pos / 2)
    # ratios now / behaviour: 1.5 with A > 0 and 0.5 with A < 0 have left [0.8, 1.2] in their advantage's direction
    # (clipped); 0.5 with A > 0 left it against it, and 1.0 is inside (both still push)
    ratio = torch.tensor([1.5, 0.5, 0.5, 1.0])
    behaviour = logp_now - ratio.log()
    cfg = BetaHeadConfig()
    got = _grads(head, policy_loss(head, x, pos, adv, behaviour, cfg)[0])
    # d/dθ ratio * A = ratio * A * d/dθ log p: the two unclipped samples' terms, weighted by their ratio, over n = 4
    logp = head.dist(x).log_prob(pos / 2)
    want = _grads(head, -(ratio[2:] * adv[2:] * logp[2:]).sum() / 4)
    assert torch.allclose(got, want, atol=1e-6) and want.abs().sum() > 0
    for i in (0, 1):  # alone, each clipped sample gives exactly no gradient; plain REINFORCE would push on it
        sl = slice(i, i + 1)
        assert _grads(head, policy_loss(head, x[sl], pos[sl], adv[sl], behaviour[sl], cfg)[0]).abs().max() == 0
        plain = BetaHeadConfig(clip_eps=None)
        assert _grads(head, policy_loss(head, x[sl], pos[sl], adv[sl], behaviour[sl], plain)[0]).abs().max() > 0
    _, stats = policy_loss(head, x, pos, adv, behaviour, cfg)
    assert stats["clip_frac"] == 0.75  # three of four ratios are outside [0.8, 1.2]


def test_first_pass_is_reinforce_and_later_passes_are_ratio_weighted():
    head = _head()
    x = torch.randn(256, 3)
    pos, logp = sample_positions(head, x, 1, torch.Generator().manual_seed(0))
    pos, logp = pos[:, 0], logp[:, 0]
    adv = (pos - 1.0) * torch.sign(x[:, 0])  # a larger position pays when feature 0 is positive
    adv = adv - adv.mean()
    clipped, plain = BetaHeadConfig(), BetaHeadConfig(clip_eps=None)
    # on-policy (the head that sampled, ratio 1): the clipped surrogate's gradient is REINFORCE's
    first = _grads(head, policy_loss(head, x, pos, adv, logp, clipped)[0])
    assert torch.allclose(first, _grads(head, policy_loss(head, x, pos, adv, logp, plain)[0]), atol=1e-7)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(5):  # more passes over the same samples
        loss, stats = policy_loss(head, x, pos, adv, logp, clipped)
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss, stats = policy_loss(head, x, pos, adv, logp, clipped)
    assert stats["clip_frac"] > 0
    got = _grads(head, loss)
    reinforce = _grads(head, policy_loss(head, x, pos, adv, logp, plain)[0])
    assert not torch.allclose(got, reinforce, atol=1e-6)
    # what it is instead: each sample's REINFORCE term weighted by its ratio to the stored density, and no term for
    # the samples clipped in their advantage's direction
    new_logp = head.dist(x).log_prob(pos / 2)
    ratio = torch.exp(new_logp - logp).detach()
    pushes = ~(((ratio > 1.2) & (adv > 0)) | ((ratio < 0.8) & (adv < 0)))
    assert torch.allclose(got, _grads(head, -(pushes * ratio * adv * new_logp).mean()), atol=1e-6)


def test_kl_term():
    head, prev = _head(0), _head(1)
    x = torch.randn(32, 3)
    pos, logp = sample_positions(head, x, 1, torch.Generator().manual_seed(0))
    _, stats = policy_loss(head, x, pos[:, 0], torch.randn(32), logp[:, 0], BetaHeadConfig(kl_coef=1.0), previous=prev)
    assert stats["kl"] > 0


def test_scaling_keeps_constant_features_finite():
    head = _head()
    x = torch.tensor([[1.0, 10.0, 5.0], [3.0, 10.0, 7.0]])  # the middle feature never varies
    head.fit_scaling(x)
    assert head.std[1] == 1.0 and torch.allclose(head.mean, x.mean(0))
    assert torch.isfinite(head.mean_position(torch.tensor([[2.0, 11.0, 6.0]]))).all()


def test_save_and_load_round_trip(tmp_path):
    from hitchhiker.beta.head import load_head, save_head

    head = _head()
    head.fit_scaling(torch.randn(10, 3))
    x = torch.randn(4, 3)
    path = save_head(tmp_path / "ckpt", head, {"checkpoint_id": "ckpt"})
    loaded, meta = load_head(path)
    assert meta["checkpoint_id"] == "ckpt" and meta["head"]["n_features"] == 3
    assert torch.equal(loaded.mean_position(x), head.mean_position(x))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp folder left behind
    save_head(path, _head(1), {"checkpoint_id": "other"})  # an existing folder is complete: kept as it was
    assert load_head(path)[1]["checkpoint_id"] == "ckpt"
    with pytest.raises(FileNotFoundError, match="not a Beta head checkpoint"):
        load_head(tmp_path)


def test_train_head_learns_and_early_stopping_never_returns_a_worse_head():
    from hitchhiker.beta.head import train_head

    torch.manual_seed(0)
    x = torch.randn(2048, 3)
    slope = torch.sign(x[:, 0]) * 0.01  # reward = p * slope: p = 2 pays when feature 0 is positive, p = 0 otherwise
    head = BetaHead(3, hidden=16)
    head.fit_scaling(x)
    pos, logp = sample_positions(head, x, 1, torch.Generator().manual_seed(0))
    pos, logp = pos[:, 0], logp[:, 0]
    val_x = torch.randn(256, 3)
    val = (val_x, lambda p: p * torch.sign(val_x[:, 0]) * 0.01)
    with torch.no_grad():
        start = float(val[1](head.mean_position(val_x)).mean())
    cfg = BetaHeadConfig(epochs=30, patience=10)  # the default objective: clipped ratio to the sampling density
    adv = pos * slope - (pos * slope).mean()
    out = train_head(head, (x, pos, adv, logp), val, cfg, previous=None)
    # optimum 0.01, start ~0; one batch moves the head only as far as the clip lets it from the density that sampled
    # (plain REINFORCE's 30 passes over this batch reach ~0.006 on it: further, on samples no longer its own)
    assert out["val_mean_reward"] > start + 0.001
    assert out["history"][-1]["clip_frac"] > 0.2  # the head left the sampling density: the clip is what binds
    with torch.no_grad():
        assert float(val[1](head.mean_position(val_x)).mean()) == pytest.approx(out["val_mean_reward"])
    # a validation that any change makes worse (best at the incoming positions): the head comes back as it went in
    before = copy.deepcopy(head.state_dict())
    with torch.no_grad():
        p0 = head.mean_position(val_x)
    worse = (val_x, lambda p: -((p - p0) ** 2))
    out = train_head(head, (x, pos, adv, logp), worse, BetaHeadConfig(epochs=5, patience=2), previous=_head(1))
    assert out["best_epoch"] == -1 and all(torch.equal(before[k], v) for k, v in head.state_dict().items())
