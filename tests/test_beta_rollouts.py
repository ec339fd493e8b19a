"""The Beta head in the replay buffer: its groups are replay rows, priced by the rewards SQL, with the stored density."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.distributions import Beta

from hitchhiker import contract, replay
from hitchhiker.beta.features import feature_matrix, infer_spec
from hitchhiker.beta.head import BetaHead, load_head, save_head
from hitchhiker.beta.loop import Pricing
from hitchhiker.beta.rollouts import checkpoint_decider, mean_position_decisions, sample_groups, training_rows
from hitchhiker.rewards import RewardSpec, compute_rewards

from beta_helpers import synthetic_store


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    """A store whose states each have one group of 4 positions sampled by a saved (untrained) head."""
    tmp = tmp_path_factory.mktemp("beta_rollouts")
    con, ids, _ = synthetic_store(tmp / "r.duckdb", n_days=40)
    spec = infer_spec(con, ids)
    torch.manual_seed(0)
    head = BetaHead(spec.n_features, hidden=8)
    head.fit_scaling(feature_matrix(con, spec, ids))
    path = save_head(tmp / "ckpt", head, {"checkpoint_id": "ckpt", "features": spec.to_json()})
    out = sample_groups(con, head, spec, "ckpt", ids, 4, tmp / "replay", seed=0)
    yield con, ids, spec, path, tmp / "replay", out
    con.close()


def _replay(con) -> pd.DataFrame:
    return con.execute("SELECT * FROM replay ORDER BY rollout_id").df()


def test_groups_are_elementwise_replay_rows_named_after_the_checkpoint(sampled):
    con, ids, _, _, root, out = sampled
    assert out["groups_written"] == len(ids) and out["rollouts"] == 4 * len(ids)
    rows = _replay(con)
    assert len(rows) == 4 * len(ids) and set(rows["state_id"]) == set(ids)
    assert (rows["mode"] == "elementwise").all() and (rows["policy_version"] == "ckpt").all() and rows["valid"].all()
    assert ((rows["position"] > 0) & (rows["position"] < 2)).all()
    assert all(sorted(v) == [0, 1, 2, 3] for v in rows.groupby("group_id")["sample_index"].apply(list))
    for _, r in rows.head(20).iterrows():
        parsed = contract.parse(r["completion"], "elementwise")  # the contract reads back exactly the position
        assert parsed.valid and parsed.position == r["position"] and r["action"] == repr(r["position"])
        assert list(r["token_logprobs"]) == [r["logprob_sum"]] and len(r["prompt_ids"]) == len(r["completion_ids"]) == 0
    # idempotent: a second call writes nothing and leaves the files as they were
    files = sorted(p.name for p in root.glob(replay.GLOB))
    head, meta = load_head(sampled[3])
    again = sample_groups(con, head, sampled[2], "ckpt", ids, 4, root, seed=0)
    assert again["groups_written"] == 0 and again["groups_skipped"] == len(ids)
    assert sorted(p.name for p in root.glob(replay.GLOB)) == files


def test_stored_log_density_is_beta_log_prob_of_half_the_position(sampled):
    con, _, _, path, _, _ = sampled
    rows = _replay(con)
    head, meta = load_head(path)  # the checkpoint from disk, not the object that sampled
    from hitchhiker.beta.features import FeatureSpec

    spec = FeatureSpec.from_json(meta["features"])
    x = feature_matrix(con, spec, list(rows["state_id"]))
    with torch.no_grad():
        alpha, beta = head(x)
    position = torch.tensor(rows["position"].to_numpy(), dtype=torch.float32)
    recomputed = Beta(alpha, beta).log_prob(position / 2)  # the stored density is that of x = p / 2
    stored = torch.tensor(rows["logprob_sum"].to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(stored, recomputed, atol=1e-5, rtol=1e-5)
    # the density of the position itself would be log 2 lower: the stored one is not that
    assert not torch.allclose(stored, recomputed - np.log(2.0), atol=1e-3)


def test_training_draws_vary_while_decisions_are_deterministic(sampled):
    con, ids, spec, path, _, _ = sampled
    rows = _replay(con)
    assert (rows.groupby("group_id")["position"].nunique() == 4).all()  # a group's draws differ
    head, _ = load_head(path)
    states = pd.DataFrame({"state_id": ids})
    first = mean_position_decisions(con, head, spec, states)
    second = checkpoint_decider(con, path)(states)
    assert first["position"].tolist() == second["position"].tolist()  # same state -> same position
    with torch.no_grad():
        alpha, beta = head(feature_matrix(con, spec, ids))
    np.testing.assert_allclose(first["position"], (2 * alpha / (alpha + beta)).numpy(), rtol=1e-6)
    assert first["valid"].all() and set(first["action"]) <= {f"{0.25 * k:g}" for k in range(9)}


def test_rewards_sql_pays_the_sampled_positions(sampled):
    """p * r - |p| * cost - lambda * |p| * sigma, checked against the prices by hand (pandas), risk penalty on."""
    con, ids, spec, _, _, _ = sampled
    reward_spec = RewardSpec(risk_lambda=0.5)
    compute_rewards(con, reward_spec)
    got = con.execute("SELECT p.state_id, p.position, w.reward_usd FROM rewards AS w JOIN replay AS p USING (rollout_id) "
                      "WHERE w.reward_spec = ?", [reward_spec.reward_spec]).df()
    assert len(got) == 4 * len(ids)
    prices = con.execute("SELECT ticker, date, open, close FROM prices ORDER BY ticker, date").df()
    states = con.execute("SELECT state_id, decision_date, tickers[1] AS ticker, history_days FROM states").df()
    expected = {}
    for s in states.itertuples():
        px = prices[prices["ticker"] == s.ticker].reset_index(drop=True)
        t = px.index[px["date"] == s.decision_date][0]
        r = px["close"][t + 1] / px["open"][t + 1] - 1  # next session: open to close (horizon 1, entry next_open)
        sigma = (px["close"] / px["close"].shift(1) - 1)[t - s.history_days + 1:t + 1].std()
        expected[s.state_id] = (r, sigma)
    want = [p * expected[s][0] - p * 5e-4 - 0.5 * p * expected[s][1] for s, p in zip(got["state_id"], got["position"])]
    np.testing.assert_allclose(got["reward_usd"], want, rtol=1e-9, atol=1e-12)
    # what the trainer reads: the same rewards with the stored positions and densities
    gids = list(con.execute("SELECT DISTINCT group_id FROM replay").df()["group_id"])
    x, pos, rew, adv, blogp = training_rows(con, spec, gids, reward_spec.reward_spec)
    assert x.shape == (4 * len(ids), spec.n_features) and len(pos) == len(rew) == len(adv) == len(blogp) == 4 * len(ids)
    assert sorted(rew.tolist()) == pytest.approx(sorted(got["reward_usd"].tolist()), abs=1e-7)
    # the advantage is group-relative: each reward minus the mean reward of its state's group of 4
    rows = con.execute("SELECT r.state_id FROM replay AS r WHERE r.group_id IN (SELECT unnest(?::VARCHAR[])) "
                       "ORDER BY r.decision_date, r.group_id, r.sample_index", [gids]).fetchall()
    means = got.groupby("state_id")["reward_usd"].mean()
    want_adv = rew.double() - torch.tensor([means[s] for (s,) in rows], dtype=torch.float64)
    assert torch.allclose(adv.double(), want_adv, atol=1e-7) and adv.abs().sum() > 0
    with pytest.raises(ValueError, match="no reward|none of the"):
        training_rows(con, spec, gids, "usd1:no-such-spec")


def test_validation_reward_fn_equals_the_sql_price(sampled):
    con, ids, spec, _, _, _ = sampled
    pricing = Pricing(con, ids, RewardSpec(risk_lambda=0.3, cost_bps=7))
    p = torch.rand(len(ids), generator=torch.Generator().manual_seed(0)) * 2
    fast = pricing.reward_fn()(p).double().numpy()
    sql = pricing.rewards(pricing.decisions(p.double().numpy(), "check"))
    np.testing.assert_allclose(fast, sql, rtol=1e-5, atol=1e-8)
