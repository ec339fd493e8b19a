"""The loop learns: prices -> states -> rollouts -> SQL rewards -> GRPO, on the synthetic market, default model, CPU."""
from __future__ import annotations

import pytest

from hitchhiker import db
from hitchhiker.loop import run_loop, synthetic_setup
from hitchhiker.metrics import binomial_p_greater
from hitchhiker.synthetic import SyntheticMarket

BUDGET_S = 600  # the loop stops learning after this (the acceptance's 10 minutes); bench/learning.py times it


def _learn(tmp_path, seed: int):
    con = db.connect(tmp_path / f"seed{seed}.duckdb")
    cfg = synthetic_setup(con, SyntheticMarket(seed=seed), eval_dates=60, iterations=80, eval_every=4,
                          states_per_iteration=32, target_accuracy=0.9, time_budget_s=BUDGET_S - 60, seed=seed)
    cfg.sampling.seed = cfg.grpo.seed = cfg.grpo.shuffle_seed = seed
    res = run_loop(con, cfg, tmp_path / f"loop{seed}", tmp_path / f"replay{seed}")
    return con, cfg, res


def _beats_random_and_base(con, cfg, res, tmp_path) -> None:
    """Issue 7's acceptance: through the evaluation stage (dollar rewards from the SQL, block bootstrap), the trained
    checkpoint beats the random baseline and the untrained base model, with intervals that exclude zero."""
    from hitchhiker.evaluate import EvalConfig, evaluate
    from hitchhiker.gate import paired_difference

    run = evaluate(con, res.checkpoint_id, min(cfg.eval_dates), max(cfg.eval_dates),
                   EvalConfig(style="trend", n_boot=1000, reports_dir=str(tmp_path / "reports")))
    base = next(s for s, k in run.kinds.items() if k == "base")
    for other in ("baseline:random", base):
        for metric in ("mean_reward_usd", "accuracy"):
            diff, lo, hi = paired_difference(run, run.candidate, other, metric)
            print(f"{run.candidate} - {other} ({metric}): {diff:+.4f} [{lo:+.4f}, {hi:+.4f}]")
            assert lo > 0, (other, metric, diff, lo, hi)
    assert run.report_path.is_file() and "baseline:random" in run.report_path.read_text()


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_grpo_loop_learns(tmp_path):
    from hitchhiker.default_model import default_model_path

    default_model_path()  # built (once, cached) before the clock starts: the budget is for learning
    outcomes = []
    for seed in (0, 1):  # the acceptance allows two fixed seeds: one must meet every condition below
        con, cfg, res = _learn(tmp_path, seed)
        start, end = res.history[0], res.history[-1]
        print(f"seed {seed} (iteration, seconds, accuracy, valid rate):",
              [(h["iteration"], round(h["seconds"]), round(h["accuracy"], 3), round(h["valid_rate"], 3))
               for h in res.history])
        # before any GRPO step (the warmed-up model): valid format, accuracy not distinguishable from a coin
        assert start["iteration"] == 0 and start["n"] >= 200
        assert start["valid_rate"] >= 0.95
        assert binomial_p_greater(start["correct"], start["n"]) > 1e-3
        assert binomial_p_greater(start["n"] - start["correct"], start["n"]) > 1e-3
        # valid format throughout: every greedy evaluation, and the sampled groups on average
        sampled = [i["sample_valid_rate"] for i in res.iterations]
        valid = min(h["valid_rate"] for h in res.history) >= 0.95 and sum(sampled) / len(sampled) >= 0.95
        learned = end["accuracy"] >= 0.8 and end["p_value"] < 1e-3 and end["n"] >= 200
        outcomes.append(dict(seed=seed, accuracy=end["accuracy"], p_value=end["p_value"], seconds=end["seconds"],
                             n=end["n"], min_valid_rate=min(h["valid_rate"] for h in res.history),
                             mean_sample_valid_rate=sum(sampled) / len(sampled)))
        if valid and learned:
            _beats_random_and_base(con, cfg, res, tmp_path)
            con.close()
            break
        con.close()
    else:
        raise AssertionError(f"no seed learned with a valid format throughout: {outcomes}")
    print("learned:", outcomes[-1])  # (seconds: printed; bench/learning.py times it)


LISTWISE_HELD = 0.8  # held-out pair-ordering accuracy: issue 20's acceptance


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_grpo_loop_learns_to_rank_baskets(tmp_path):
    """The listwise loop learns on the market of triples (ranked UP > FLAT > DOWN by their trend words): the held-out
    pair-ordering accuracy goes from chance to >= 0.8 within the 10-minute budget, with valid greedy rankings at every
    evaluation. Measured on the 2026-12-04 build of the default model (seed 0): 0.483 to 0.826 at iteration 92 and
    0.881 at 104 (about 190 s alone on 2 cores); at temperature 1 with a symmetric clip the same build stalled at
    0.708 (loop.synthetic_setup says why it samples at 1.2 with clip-higher)."""
    from hitchhiker.default_model import default_model_path

    default_model_path()
    outcomes = []
    for seed in (0, 1):  # two fixed seeds allowed: one must meet every condition
        con = db.connect(tmp_path / f"list{seed}.duckdb")
        cfg = synthetic_setup(con, SyntheticMarket(seed=seed, basket_size=3), eval_dates=60, iterations=250,
                              eval_every=4, states_per_iteration=32, target_accuracy=LISTWISE_HELD,
                              time_budget_s=BUDGET_S - 60, seed=seed)
        assert cfg.states.mode == "listwise" and cfg.states.list_size == 3
        cfg.sampling.seed = cfg.grpo.seed = cfg.grpo.shuffle_seed = seed
        res = run_loop(con, cfg, tmp_path / f"list-loop{seed}", tmp_path / f"list-replay{seed}")
        con.close()
        start, end = res.history[0], res.history[-1]
        print(f"listwise seed {seed} (iteration, seconds, pair-ordering accuracy, valid rate):",
              [(h["iteration"], round(h["seconds"]), round(h["accuracy"], 3), round(h["valid_rate"], 3)) for h in res.history])
        assert start["iteration"] == 0 and start["n"] == 240  # 60 held-out dates x 4 triples
        assert start["valid_rate"] >= 0.95 and start["accuracy"] <= 0.6 and start["p_value"] > 1e-3
        sampled = [i["sample_valid_rate"] for i in res.iterations]
        # the held-out rankings (greedy) valid at every evaluation; the sampled ones start lower (about 0.6 in the
        # first iteration: temperature 1.2 on a format the warm-up taught a 2-layer model) and GRPO's invalid penalty
        # lifts them (to about 0.95 from iteration 60), so their mean over the run is held to 0.85
        valid = min(h["valid_rate"] for h in res.history) >= 0.95 and sum(sampled) / len(sampled) >= 0.85
        learned = end["accuracy"] >= LISTWISE_HELD and end["p_value_by_date"] < 1e-3 and end["seconds"] <= BUDGET_S
        outcomes.append(dict(seed=seed, accuracy=end["accuracy"], seconds=end["seconds"], iteration=end["iteration"],
                             min_valid_rate=min(h["valid_rate"] for h in res.history),
                             mean_sample_valid_rate=sum(sampled) / len(sampled)))
        if valid and learned:
            break
    else:
        raise AssertionError(f"no seed learned to rank with a valid format throughout: {outcomes}")
    print("learned to rank:", outcomes[-1])


def test_loop_cli_and_flow_on_the_synthetic_market(tmp_path, prefect_harness):
    import os
    import subprocess
    import sys

    from flows.loop import loop_flow

    p = subprocess.run([sys.executable, "-m", "hitchhiker.cli", "loop", "--db", str(tmp_path / "cli.duckdb"), "--synthetic",
                        "--iterations", "2", "--eval-every", "1"], capture_output=True, text=True, timeout=900, env=os.environ)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("held-out accuracy") == 3 and "last checkpoint: grpo-" in p.stdout
    con = db.connect(tmp_path / "cli.duckdb", read_only=True)
    assert con.execute("SELECT count(*) FROM checkpoints").fetchone()[0] == 2
    con.close()
    p = subprocess.run([sys.executable, "-m", "hitchhiker.cli", "loop", "--db", str(tmp_path / "list.duckdb"), "--synthetic",
                        "--mode", "listwise", "--iterations", "1", "--eval-every", "1"], capture_output=True, text=True,
                       timeout=900, env=os.environ)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("held-out accuracy") == 2 and "valid 1.000" in p.stdout
    con = db.connect(tmp_path / "list.duckdb", read_only=True)
    assert con.execute("SELECT DISTINCT mode, len(tickers) FROM states").fetchall() == [("listwise", 3)]
    assert con.execute("SELECT count(*) FROM checkpoints").fetchone()[0] == 1
    con.close()
    out = loop_flow(iterations=1, db=str(tmp_path / "flow.duckdb"), synthetic=True, eval_every=1)
    assert out["checkpoint_id"].startswith("grpo-") and 0.0 <= out["accuracy"] <= 1.0


def test_loop_config_names_what_is_wrong(tmp_path):
    from hitchhiker.loop import loop_config

    con = db.connect(tmp_path / "bad.duckdb")
    with pytest.raises(ValueError, match="mode 'elementwise': the LLM loop runs 'pairwise' or 'listwise'"):
        loop_config(con, synthetic=True, mode="elementwise")
    with pytest.raises(ValueError, match="list_size must be an integer from 3 to 8, got 9"):
        loop_config(con, synthetic=False, mode="listwise", list_size=9, train_start="2016-01-04",
                    train_end="2016-02-01", eval_start="2016-03-01", eval_end="2016-04-01")
    with pytest.raises(ValueError, match="give train_start/train_end/eval_start/eval_end"):
        loop_config(con, synthetic=False, train_start="2016-01-04")
    assert con.execute("SELECT count(*) FROM prices").fetchall() == [(0,)]  # nothing written
    cfg = loop_config(con, synthetic=True, mode="listwise", iterations=2)
    assert (cfg.states.mode, cfg.states.list_size, cfg.sampling.max_new_tokens, cfg.grpo.learning_rate,
            cfg.sampling.temperature, cfg.grpo.epsilon_high, cfg.states_per_iteration) == (
        "listwise", 3, 12, 1e-4, 1.2, 0.28, 32)
    assert cfg.ticker_groups[0] == ["SYN00A", "SYN00B", "SYN00C"] and cfg.iterations == 2
    con.close()
