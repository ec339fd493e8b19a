"""The Beta head's loop learns the synthetic market on CPU; registry, replay and eval are shared.

How long it takes is bench/beta_head.py's (its `default_loop_seconds` check: <= 120 s a seed), not a test's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hitchhiker import db, replay
from hitchhiker.beta.loop import run_beta_loop, synthetic_setup
from hitchhiker.synthetic import SyntheticMarket


@pytest.mark.slow
def test_beta_head_beats_random_on_held_out_dates(tmp_path):
    from hitchhiker.default_model import default_model_path

    default_model_path()  # the tokenizer that counts prompt tokens, built (once, cached) before the clock starts
    con = db.connect(tmp_path / "beta.duckdb")
    # stops after the iteration that passes 75 s (the final evaluation takes ~10 s more): on a quiet 2-core machine
    # all 4 iterations run in about a minute; on a busy one fewer do, and 2 are enough to pass
    cfg = synthetic_setup(con, SyntheticMarket(seed=0), eval_dates=60, iterations=4, n_boot=500, time_budget_s=75)
    res = run_beta_loop(con, cfg, tmp_path / "loop", tmp_path / "replay")
    first, last = res.history[0], res.history[-1]
    print([(h["iteration"], round(h["seconds"]), round(h["mean_reward_usd"], 5)) for h in res.history])
    # held-out rewards are the rewards SQL's price of the mean positions; the random baseline's likewise
    assert last["n"] == 480 and last["iteration"] >= 2
    random_reward = last["random_mean_reward_usd"]
    assert abs(random_reward) < 0.002 and abs(first["mean_reward_usd"]) < 0.002  # untrained: no better than chance
    # the best a position in [0, 2] can do here is ~ +0.0095 per $1 (2 * 1 % minus 2 * 5 bps, half the states)
    assert last["mean_reward_usd"] >= random_reward + 0.005, res.history

    # the evaluation stage stored the same number beside the baselines, with intervals over dates
    rows = {s: (m, json.loads(x)) for s, m, x in con.execute(
        "SELECT subject, mean_reward_usd, metrics FROM evaluations").fetchall()}
    head_reward, head_metrics = rows[res.checkpoint_id]
    assert head_reward == pytest.approx(last["mean_reward_usd"], abs=1e-12)
    assert head_metrics["mean_reward_usd_ci"][0] > rows["baseline:random"][1]["mean_reward_usd_ci"][1]
    assert set(rows) >= {"baseline:random", "baseline:always_buy", "baseline:momentum"}

    # the registry: a chain of beta-head checkpoints, each trained on the groups its parent sampled
    chain = con.execute("SELECT checkpoint_id, parent_id, algorithm, groups_used FROM checkpoints ORDER BY checkpoint_id").fetchall()
    assert len(chain) == last["iteration"] + 1 and {c[2] for c in chain} == {"beta-head"}
    for (parent, _, _, _), (child, child_parent, _, groups) in zip(chain, chain[1:]):
        assert child_parent == parent and len(groups) == cfg.states_per_iteration
        versions = con.execute("SELECT DISTINCT policy_version FROM replay WHERE group_id IN (SELECT unnest(?::VARCHAR[]))",
                               [groups]).fetchall()
        assert versions == [(parent,)]
    n_files = len(list((tmp_path / "replay").glob(replay.GLOB)))
    n_rewards = con.execute("SELECT count(*) FROM rewards").fetchall()[0][0]

    # idempotent: the same loop again samples, prices and trains nothing new and ends on the same checkpoint
    cfg.final_evaluation = False  # (not part of the run's identity; already checked above)
    again = run_beta_loop(con, cfg, tmp_path / "loop", tmp_path / "replay")
    assert again.checkpoint_id == res.checkpoint_id
    assert [h["mean_reward_usd"] for h in again.history] == [h["mean_reward_usd"] for h in res.history]
    assert len(list((tmp_path / "replay").glob(replay.GLOB))) == n_files
    assert con.execute("SELECT count(*) FROM rewards").fetchall()[0][0] == n_rewards
    assert con.execute("SELECT count(*) FROM checkpoints").fetchall()[0][0] == len(chain)
    con.close()


def test_held_out_dates_must_follow_training(tmp_path):
    con = db.connect(tmp_path / "b.duckdb")
    cfg = synthetic_setup(con, SyntheticMarket(n_days=80), eval_dates=20)
    cfg.eval_dates = cfg.train_dates[-5:]
    with pytest.raises(ValueError, match="held-out dates must come after"):
        run_beta_loop(con, cfg, tmp_path / "loop", tmp_path / "replay")
    cfg = synthetic_setup(con, SyntheticMarket(n_days=80), eval_dates=20, val_days=500)
    with pytest.raises(ValueError, match="validation window"):
        run_beta_loop(con, cfg, tmp_path / "loop", tmp_path / "replay")
    cfg = synthetic_setup(con, SyntheticMarket(n_days=80), eval_dates=20, group_size=1)
    with pytest.raises(ValueError, match="group-relative"):  # a group of one has no advantage
        run_beta_loop(con, cfg, tmp_path / "loop", tmp_path / "replay")
    con.close()


def test_validation_window_starts_after_the_last_training_rewards_exit(tmp_path):
    """Early stopping must not select the head on a market move a training reward still held."""
    from hitchhiker import evaluate, registry
    from hitchhiker.beta.head import load_head
    from hitchhiker.beta.loop import split_dates
    from hitchhiker.rewards import RewardSpec
    from hitchhiker.synthetic import trading_days

    con = db.connect(tmp_path / "b.duckdb")
    market = SyntheticMarket(n_days=80, n_couples=2)
    cfg = synthetic_setup(con, market, eval_dates=20, iterations=1, group_size=4, final_evaluation=False,
                          states_per_iteration=10_000)  # one iteration trains on every training date
    days = trading_days(market)  # every ticker trades every one of them: the h-th after T is T's exit
    dates = sorted(cfg.train_dates)
    for horizon in (1, 3):
        cfg.reward = RewardSpec(horizon_days=horizon)
        train, val = split_dates(con, cfg)
        assert val == dates[-cfg.val_days:] and train == dates[:len(train)]
        # the last training decision's exit is the trading day before the first validation date: the gap is h days
        assert days.index(val[0]) - days.index(train[-1]) == horizon + 1

    # through the loop, from the rewards it stored: the checkpoint's last training exit precedes its validation window
    cfg.reward = RewardSpec(horizon_days=2)
    res = run_beta_loop(con, cfg, tmp_path / "loop", tmp_path / "replay")
    _, meta = load_head(registry.get(con, res.checkpoint_id)["path"])
    last_decision, last_exit = evaluate.training_cutoff(con, res.checkpoint_id)
    assert str(last_decision) == meta["training_dates"][1]  # the loop did train on its last training date
    first_val = meta["validation_dates"][0]
    assert str(last_exit) < first_val, (last_exit, first_val)
    assert str(days[days.index(last_exit) + 1]) == first_val  # and no date more than needed was dropped
    con.close()


def test_loop_cli_with_the_beta_head_and_its_evaluation(tmp_path):
    from hitchhiker import evaluate

    dbf = tmp_path / "cli.duckdb"
    p = subprocess.run([sys.executable, "-m", "hitchhiker.cli", "loop", "--policy", "beta-head", "--db", str(dbf),
                        "--synthetic", "--iterations", "1"], capture_output=True, text=True, timeout=600, env=os.environ)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("held-out mean reward_usd") == 2 and "last checkpoint: beta-head-" in p.stdout, p.stdout
    checkpoint = p.stdout.split("last checkpoint: ")[1].split(";")[0]
    report = p.stdout.split("evaluation report: ")[1].strip()
    assert report.endswith("report.md") and checkpoint in open(report).read()
    # the evaluation stage takes the head's checkpoint id like any other (its mean position decides), here beside
    # the base LLM deciding on the same states, as `hitchhiker eval --checkpoint <id> --mode elementwise` does
    con = db.connect(dbf)
    ((start, end),) = con.execute("SELECT min(window_start), min(window_start) + 6 FROM evaluations").fetchall()
    run = evaluate.evaluate(con, checkpoint, start, end, evaluate.EvalConfig(mode="elementwise", style="full", n_boot=50))
    con.close()
    assert run.kinds[checkpoint] == "checkpoint" and "base" in run.kinds.values() and "baseline:random" in run.kinds
    assert run.summaries[checkpoint]["n_decisions"] == run.n_states == 5 * 8 and run.summaries[checkpoint]["valid_rate"] == 1.0


def test_loop_flow_with_the_beta_head(tmp_path, prefect_harness):
    from flows.loop import loop_flow

    out = loop_flow(iterations=1, db=str(tmp_path / "flow.duckdb"), synthetic=True, policy="beta-head")
    assert out["checkpoint_id"].startswith("beta-head-") and out["report_path"].endswith("report.md")
    assert out["mean_reward_usd"] > out["random_mean_reward_usd"]
    with pytest.raises(ValueError, match="policy 'gpt' is not"):
        loop_flow(iterations=1, db=str(tmp_path / "flow.duckdb"), synthetic=True, policy="gpt")
