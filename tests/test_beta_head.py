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
    cfg = BetaHeadConfig(epochs=30, patience=10)
    out = train_head(head, (x, pos, pos * slope, logp), val, cfg, previous=None)
    assert out["val_mean_reward"] >= start and out["val_mean_reward"] > 0.002  # optimum 0.01, start ~0
    with torch.no_grad():
        assert float(val[1](head.mean_position(val_x)).mean()) == pytest.approx(out["val_mean_reward"])
    # a validation that any change makes worse (best at the incoming positions): the head comes back as it went in
    before = copy.deepcopy(head.state_dict())
    with torch.no_grad():
        p0 = head.mean_position(val_x)
    worse = (val_x, lambda p: -((p - p0) ** 2))
    out = train_head(head, (x, pos, pos * slope, logp), worse, BetaHeadConfig(epochs=5, patience=2), previous=_head(1))
    assert out["best_epoch"] == -1 and all(torch.equal(before[k], v) for k, v in head.state_dict().items())
