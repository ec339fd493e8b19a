"""The Beta head's loop: states -> groups sampled by the current head -> SQL rewards -> PPO-clip -> checkpoint -> eval.

The same stages as the LLM loop (hitchhiker/loop.py), with the head as the policy: every iteration samples a group
of positions per state of its slice of training dates into the replay buffer, prices them with the rewards stage,
trains a copy of the current head on exactly those groups (passes of PPO's clipped ratio to the stored behaviour
density with group-relative advantages; optional KL to the current head), early-stopped on a validation window, and
registers the result in `checkpoints` (algorithm 'beta-head', with its parent and the groups it consumed). The
validation window starts after the reward exit of the last training date (split_dates), and held-out dates after
every training and validation date plus the reward horizon; their decisions are the deterministic mean position,
paid by sql/rewards.sql like the project's random baseline beside them. The last head then goes through the
evaluation stage (hitchhiker/evaluate.py) side by side with the baselines (and, optionally, the LLM).

Idempotent: the run id hashes the configuration and the dates, and an iteration whose checkpoint folder exists is
loaded instead of trained, so a re-run writes no second group, reward or checkpoint.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable

import duckdb
import numpy as np
import pandas as pd
import torch

from hitchhiker import baselines, contract, db
from hitchhiker.beta.features import FeatureSpec, feature_matrix, infer_spec, load_inputs
from hitchhiker.beta.head import HEAD_VERSION, BetaHead, BetaHeadConfig, load_head, save_head, train_head
from hitchhiker.rewards import RewardSpec
from hitchhiker.states import StatesConfig


def _default_states() -> StatesConfig:
    return StatesConfig(mode=contract.ELEMENTWISE, style="full", action_format="numeric")


@dataclass
class BetaLoopConfig:
    """Defaults: what beats the random baseline on the synthetic market within a minute on one CPU core."""

    train_dates: list[date] = field(default_factory=list)
    eval_dates: list[date] = field(default_factory=list)  # held out: after train and validation dates + horizon
    val_days: int = 20  # the last val_days training dates are kept out of training: the early-stopping window
    # (training then ends where its last reward exits before that window: see split_dates)
    tickers: list[str] | None = None  # None: every ticker in prices
    iterations: int = 5
    states_per_iteration: int = 256  # one group per state
    group_size: int = 8
    embedding_model: str | None = None  # a causal LM whose mean-pooled prompt embedding the head also reads
    time_budget_s: float | None = None  # stop after the iteration that passes it
    final_evaluation: bool = True  # run the evaluation stage on the held-out window at the end (stored, report)
    compare_base_model: bool = False  # ... with the base LLM deciding on the same states too
    n_boot: int = 1000
    seed: int = 0
    states: StatesConfig = field(default_factory=_default_states)
    head: BetaHeadConfig = field(default_factory=BetaHeadConfig)
    reward: RewardSpec = field(default_factory=RewardSpec)


@dataclass
class BetaLoopResult:
    checkpoint_id: str
    history: list[dict]  # one row per evaluation: iteration, seconds, mean_reward_usd, random_mean_reward_usd, ...
    out_dir: str
    report_path: str | None = None  # the evaluation stage's report of the last head


def synthetic_setup(con: duckdb.DuckDBPyConnection, market=None, eval_dates: int = 60, **overrides) -> BetaLoopConfig:
    """Write the synthetic learnable market (hitchhiker/synthetic.py) and a BetaLoopConfig over its dates."""
    from hitchhiker import loop
    from hitchhiker.synthetic import SyntheticMarket

    market = market or SyntheticMarket()
    dates = loop.synthetic_setup(con, market, eval_dates=eval_dates)
    return BetaLoopConfig(train_dates=dates.train_dates, eval_dates=dates.eval_dates, tickers=market.tickers(),
                          **overrides)


def run_beta_loop(con: duckdb.DuckDBPyConnection, config: BetaLoopConfig, out_dir: str | Path, replay_root: str | Path,
                  on_iteration: Callable[[dict], None] | None = None) -> BetaLoopResult:
    """Run the loop; evaluations (iteration 0 = the untrained head) are returned and passed to on_iteration."""
    from hitchhiker.beta.rollouts import sample_groups, training_rows
    from hitchhiker.loop import check_held_out_dates, training_slice
    from hitchhiker.policy import load_tokenizer
    from hitchhiker.rewards import compute_rewards
    from hitchhiker.states import build_states

    if config.group_size < 2:
        raise ValueError(f"group_size {config.group_size}: the advantage is group-relative (reward minus its state's "
                         f"group mean), so a group of one has no signal; use 2 or more")
    check_held_out_dates(con, config)  # the LLM loop's rule
    train_dates, val_dates = split_dates(con, config)
    out_dir = Path(out_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide MLP: thread start-up costs more than the arithmetic
    try:
        started = time.perf_counter()
        tok = load_tokenizer(config.states.tokenizer)  # prompt_tokens counted as for every other state
        build = lambda days: _ordered(con, build_states(con, config.states, days, tickers=config.tickers, tokenizer=tok))  # noqa: E731
        per_date = len(build(train_dates[:1]))  # states per training date, to cut the dates into slices
        val_ids, eval_ids = build(val_dates), build(config.eval_dates)
        if not per_date or not val_ids or not eval_ids:
            raise ValueError(f"no states built for the {'training' if not per_date else 'validation' if not val_ids else 'held-out'} "
                             f"dates (do prices exist for them, with {config.states.history_days} days of history?)")
        dates_per_iteration = -(-config.states_per_iteration // per_date)

        def iteration_ids(it: int) -> list[str]:
            """Training states are built slice by slice, as the iterations reach them (a short run builds few)."""
            return build(training_slice(train_dates, dates_per_iteration, it))[:config.states_per_iteration]

        first = iteration_ids(1)
        spec = infer_spec(con, first, config.embedding_model)
        run_id = _run_id(config, spec, train_dates, val_dates)
        run_dir = out_dir / run_id
        val = Pricing(con, val_ids, config.reward)
        held_out = Pricing(con, eval_ids, config.reward)
        random_reward = held_out.mean_reward(baselines.decide("random", held_out.states, seed=config.seed))

        torch.manual_seed(config.seed)
        head = BetaHead(spec.n_features, config.head.hidden)
        head.fit_scaling(feature_matrix(con, spec, first))  # inputs of the first slice only: nothing later
        windows = {"training_dates": [str(train_dates[0]), str(train_dates[-1])],
                   "validation_dates": [str(val_dates[0]), str(val_dates[-1])]}
        ckpt_id, step = _checkpoint(con, run_dir, run_id, 0, head, spec, config, None, [], {}, 0, windows=windows)
        head, _ = load_head(run_dir / ckpt_id)
        history: list[dict] = []

        def evaluate(iteration: int, extra: dict) -> None:
            positions = held_out.positions(head, spec)
            row = {"iteration": iteration, "seconds": time.perf_counter() - started, "checkpoint_id": ckpt_id,
                   "mean_reward_usd": held_out.mean_reward(held_out.decisions(positions, "beta_head")),
                   "random_mean_reward_usd": random_reward, "mean_position": float(positions.mean()),
                   "n": len(eval_ids), **extra}
            history.append(row)
            if on_iteration is not None:
                on_iteration(row)

        evaluate(0, {})
        for it in range(1, config.iterations + 1):
            ids = iteration_ids(it)
            t0 = time.perf_counter()
            sampled = sample_groups(con, head, spec, ckpt_id, ids, config.group_size, replay_root, config.seed)
            t1 = time.perf_counter()
            spec_name = compute_rewards(con, config.reward, replay_root)["reward_spec"]
            x, pos, rew, adv, blogp = training_rows(con, spec, sampled["group_ids"], spec_name)
            t2 = time.perf_counter()
            new = copy.deepcopy(head).train()
            path = run_dir / f"{run_id}-i{it:04d}"
            fit = {}
            if not path.exists():  # a re-run loads the folder instead of training again (idempotent)
                fit = train_head(new, (x, pos, adv, blogp), (val.x(spec), val.reward_fn()), config.head, previous=head)
            last_epoch = fit["history"][-1] if fit.get("history") else {}
            metrics = {"reward_mean": float(rew.mean()), "reward_std": float(rew.std()), "rollouts": len(rew),
                       **{k: v for k, v in fit.items() if k != "history"},
                       **{k: last_epoch[k] for k in ("loss", "kl", "clip_frac", "adv_std") if k in last_epoch}}
            steps = -(-len(x) // config.head.batch_size) * fit.get("epochs_run", 0)
            ckpt_id, step = _checkpoint(con, run_dir, run_id, it, new, spec, config, ckpt_id, sampled["group_ids"],
                                        metrics, step + steps, spec_name, windows)
            head, _ = load_head(run_dir / ckpt_id)
            t3 = time.perf_counter()
            over = config.time_budget_s is not None and time.perf_counter() - started > config.time_budget_s
            evaluate(it, {"train_reward_mean": metrics["reward_mean"], "val_mean_reward_usd": fit.get("val_mean_reward"),
                          "sample_mean_position": sampled["mean_position"], "seconds_sampling": t1 - t0,
                          "seconds_rewards": t2 - t1, "seconds_train": t3 - t2})
            if over:
                break
        report = _final_evaluation(con, config, ckpt_id, run_dir) if config.final_evaluation else None
    finally:
        torch.set_num_threads(threads)
    return BetaLoopResult(ckpt_id, history, str(out_dir), report)


class Pricing:
    """A fixed set of states and the rewards stage's price of any decisions on them (sql/rewards.sql, one spec)."""

    def __init__(self, con, state_ids: list[str], spec: RewardSpec):
        self.con, self.spec = con, spec
        self.states = load_inputs(con, state_ids)
        self._x: torch.Tensor | None = None
        self._unit: np.ndarray | None = None

    def x(self, spec: FeatureSpec) -> torch.Tensor:
        if self._x is None:
            self._x = feature_matrix(self.con, spec, list(self.states["state_id"]), self.states)
        return self._x

    def positions(self, head: BetaHead, spec: FeatureSpec) -> np.ndarray:
        with torch.no_grad():
            return head.eval().mean_position(self.x(spec)).double().numpy()

    def decisions(self, positions, name: str) -> pd.DataFrame:
        positions = np.asarray(positions, dtype=float)
        return baselines.fixed_decisions(self.states, name, [repr(float(p)) for p in positions], np.nan, positions)

    def rewards(self, decisions: pd.DataFrame) -> np.ndarray:
        from hitchhiker.evaluate import rewards_for

        r, _ = rewards_for(self.con, decisions, self.spec)
        return r.to_numpy()

    def mean_reward(self, decisions: pd.DataFrame) -> float:
        r = self.rewards(decisions)
        if np.isnan(r).all():
            raise ValueError("none of the states has a matured reward (prices after the horizon missing)")
        return float(np.nanmean(r))

    def reward_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """positions -> reward_usd for these states, without a query per call.

        For a position p >= 0 the rewards SQL pays p * r - p * cost - lambda * p * sigma: linear in p. So the price
        of p = 1 from the SQL (once) times p is the SQL's own price of p (tested equal), and early stopping can
        score every epoch. Unmatured states count 0.
        """
        if self._unit is None:
            self._unit = np.nan_to_num(self.rewards(self.decisions(np.ones(len(self.states)), "unit")))
        unit = torch.tensor(self._unit, dtype=torch.float32)
        return lambda p: p * unit


def split_dates(con: duckdb.DuckDBPyConnection, config: BetaLoopConfig) -> tuple[list[date], list[date]]:
    """(training dates, validation dates): the last val_days dates validate; training keeps the earlier dates whose
    rewards have all exited before the first validation date.

    Early stopping picks the head by its validation reward, so a training reward still open on a validation date
    would let the same market move both train and select the head. The exit is the reward calendar's
    (sql/train/last_training_exit.sql, the loop's held-out rule, with the longer of the states' and the reward's
    horizons); it is monotone in the decision date, so training dates are dropped from the end until the last one
    exits in time (one date with a 1-day horizon, h dates with h days).
    """
    from hitchhiker import rewards

    dates = sorted(config.train_dates)
    if config.val_days < 1 or len(dates) <= config.val_days:
        raise ValueError(f"{len(dates)} training dates leave none for training after a {config.val_days}-day "
                         f"validation window (val_days >= 1 and fewer than the training dates)")
    train, val = dates[:-config.val_days], dates[-config.val_days:]
    horizon = max(config.states.horizon_days, config.reward.horizon_days)
    rewards.ensure_calendar(con)
    while train:
        ((last_exit, _),) = con.execute(db.sql_text("train/last_training_exit"), {
            "last_train_date": train[-1], "horizon_days": horizon, "pairwise": config.states.mode == contract.PAIRWISE,
        }).fetchall()
        if last_exit is not None and last_exit < val[0]:
            return train, val
        train.pop()
    raise ValueError(f"no training date's {horizon}-day reward exits before the validation window starts on {val[0]} "
                     f"(fewer training dates than the horizon, or a smaller val_days)")


def _ordered(con, ids: list[str]) -> list[str]:
    rows = con.execute("SELECT state_id FROM states WHERE state_id IN (SELECT unnest(?::VARCHAR[])) "
                       "ORDER BY decision_date, pair, state_id", [ids]).fetchall()
    return [r[0] for r in rows]


def _run_id(config: BetaLoopConfig, spec: FeatureSpec, train_dates, val_dates) -> str:
    key = [HEAD_VERSION, spec.to_json(), asdict(config.head), asdict(config.states), asdict(config.reward),
           [str(d) for d in train_dates], [str(d) for d in val_dates], config.tickers, config.states_per_iteration,
           config.group_size, config.seed]
    return "beta-head-" + hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:12]


def _checkpoint(con, run_dir: Path, run_id: str, iteration: int, head: BetaHead, spec: FeatureSpec,
                config: BetaLoopConfig, parent_id: str | None, groups: list[str], metrics: dict, step: int,
                reward_spec: str | None = None, windows: dict | None = None) -> tuple[str, int]:
    """Save (unless present) and register one head checkpoint; returns (its id, its step)."""
    from hitchhiker import registry
    from hitchhiker.policy import CHECKPOINT_META

    checkpoint_id = f"{run_id}-i{iteration:04d}"
    path = run_dir / checkpoint_id
    if path.exists():  # written whole by an earlier run: its metadata, not this run's numbers, is the truth
        meta = json.loads((path / CHECKPOINT_META).read_text())
    else:
        meta = {"checkpoint_id": checkpoint_id, "parent_id": parent_id, "run_id": run_id,
                "base_model": f"{HEAD_VERSION}:features" + (f"+{spec.embedding_model}" if spec.embedding_model else ""),
                "algorithm": "beta-head", "finetune": "full", "step": step, "reward_spec": reward_spec,
                "iteration": iteration, "features": spec.to_json(), "config": asdict(config.head),
                "train_metrics": metrics, "groups_used": list(groups), **(windows or {})}
        save_head(path, head, meta)
    registry.register(con, meta, str(path.resolve()), meta["train_metrics"], meta["groups_used"])
    return checkpoint_id, int(meta["step"])


def _final_evaluation(con, config: BetaLoopConfig, checkpoint_id: str, run_dir: Path) -> str:
    """The evaluation stage on the held-out window: the head's mean positions beside the baselines, stored."""
    from hitchhiker import evaluate
    from hitchhiker.beta.rollouts import checkpoint_decider

    cfg = evaluate.EvalConfig(mode=contract.ELEMENTWISE, style=config.states.style, n_boot=config.n_boot,
                              seed=config.seed, include_base_model=config.compare_base_model)
    run = evaluate.evaluate(con, checkpoint_id, min(config.eval_dates), max(config.eval_dates), cfg, spec=config.reward,
                            policies={checkpoint_id: checkpoint_decider(con, run_dir / checkpoint_id)})
    return str(run.report_path)
