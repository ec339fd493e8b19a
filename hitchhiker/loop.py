"""The learning loop: states -> groups sampled by the current checkpoint -> SQL rewards -> GRPO -> checkpoint -> eval.

Each iteration takes the next slice of training dates, builds their states (idempotent), samples a group per
state with the current policy into the replay buffer, computes rewards and advantages in SQL, trains one GRPO run
on exactly those groups (continuing the previous checkpoint, optimizer state included), and measures greedy
pairwise accuracy on held-out dates that come strictly after every training date plus the reward horizon.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable

import torch

from hitchhiker import contract, db
from hitchhiker.rewards import RewardSpec
from hitchhiker.rollouts import SamplingConfig
from hitchhiker.states import StatesConfig
from hitchhiker.train.config import GRPOConfig

log = logging.getLogger(__name__)


def _default_states() -> StatesConfig:
    return StatesConfig(mode=contract.PAIRWISE, style="trend", max_pairs_per_date=20)


def _default_sampling() -> SamplingConfig:
    return SamplingConfig(group_size=16, temperature=1.0, temperature_eps=0.0, max_new_tokens=8, groups_per_batch=8)


def _default_grpo() -> GRPOConfig:
    return GRPOConfig(finetune="full", learning_rate=3e-4, loss_type="dr_grpo", advantage_column="advantage",
                      groups_per_step=8, groups_per_micro_batch=8, beta=0.0)


@dataclass
class LoopConfig:
    """Defaults: the configuration that learns with the default small model on CPU (see issue 6)."""

    train_dates: list[date] = field(default_factory=list)
    eval_dates: list[date] = field(default_factory=list)  # held out: strictly after train dates + horizon
    iterations: int = 10
    states_per_iteration: int = 16  # one group per state; / grpo.groups_per_step = optimizer steps per iteration
    ticker_groups: list[list[str]] | None = None  # build pairs only within each list (None: one universe)
    model: str | None = None  # None = the default small model
    eval_every: int = 1
    max_eval_states: int | None = None
    time_budget_s: float | None = None  # stop after the iteration that passes it
    target_accuracy: float | None = None  # stop at the first evaluation that reaches it
    seed: int = 0
    states: StatesConfig = field(default_factory=_default_states)
    sampling: SamplingConfig = field(default_factory=_default_sampling)
    grpo: GRPOConfig = field(default_factory=_default_grpo)
    reward: RewardSpec = field(default_factory=RewardSpec)


@dataclass
class LoopResult:
    checkpoint_id: str | None
    history: list[dict]  # one row per evaluation: iteration, seconds, accuracy, valid_rate, n, p_value, ...
    out_dir: str
    iterations: list[dict] = field(default_factory=list)  # one row per iteration: sampling valid rate, timings, ...


def run_loop(con, config: LoopConfig, out_dir: str | Path, replay_root: str | Path,
             on_iteration: Callable[[dict], None] | None = None) -> LoopResult:
    """Run the loop; evaluations (iteration 0 = before any GRPO step) are returned and logged to TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter

    from hitchhiker import rollouts
    from hitchhiker.policy import PolicyConfig, load_policy
    from hitchhiker.rewards import compute_rewards
    from hitchhiker import registry
    from hitchhiker.batches import load_groups, train_grpo

    check_held_out_dates(con, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(out_dir / "tensorboard"))
    started = time.perf_counter()
    eval_ids = _build(con, config, config.eval_dates)
    if config.max_eval_states is not None:
        eval_ids = eval_ids[: config.max_eval_states]
    if not eval_ids:
        raise ValueError("no held-out states were built for eval_dates (do prices exist for them?)")
    checkpoint_id, checkpoint_path = None, None
    history: list[dict] = []
    iterations: list[dict] = []

    def policy():
        return load_policy(PolicyConfig(model=config.model, checkpoint=checkpoint_path, checkpoint_id=checkpoint_id))

    def evaluate(iteration: int, extra: dict) -> None:
        row = {"iteration": iteration, "seconds": time.perf_counter() - started,
               **greedy_accuracy(con, policy(), eval_ids, config.reward), **extra}
        history.append(row)
        for k in ("accuracy", "valid_rate", "p_value", "p_value_by_date", "n_unpriced"):
            writer.add_scalar(f"eval/{k}", row[k], iteration)
        if row["n_unpriced"]:
            log.warning("iteration %d: %d of %d held-out states have no outcome yet (their reward has not exited in "
                        "prices) and are not in the accuracy", iteration, row["n_unpriced"], len(eval_ids))
        if on_iteration is not None:
            on_iteration(row)

    evaluate(0, {"checkpoint_id": None})
    per_date = None
    for it in range(1, config.iterations + 1):
        t0 = time.perf_counter()
        ids, per_date = _iteration_states(con, config, it, per_date)
        current = policy()
        t1 = time.perf_counter()
        sampled = rollouts.generate(con, current, ids, config.sampling, replay_root)
        t2 = time.perf_counter()
        # the spec name returned, not recomputed: it hashes sql/rewards.sql, which a user may edit mid-run
        spec_name = compute_rewards(con, config.reward, replay_root)["reward_spec"]
        wanted = {rollouts.group_id(s, current.policy_version) for s in ids}
        groups = [g for g in load_groups(con, spec_name, config.grpo.advantage_column, current.policy_version) if g.group_id in wanted]
        t3 = time.perf_counter()
        grpo = GRPOConfig(**{**config.grpo.__dict__, "reward_spec": spec_name})
        result = train_grpo(con, grpo, out_dir / f"iter{it:04d}", groups=groups, parent_id=checkpoint_id,
                            base_model=config.model, carry_optimizer=True)
        t4 = time.perf_counter()
        checkpoint_id, checkpoint_path = result.checkpoint_id, result.path
        step = result.metrics[-1] if result.metrics else {}
        for k, v in step.items():
            writer.add_scalar(f"train/{k}", v, it)
        writer.add_scalar("train/sample_valid_rate", sampled["valid_rate"] or 0.0, it)
        extra = {"checkpoint_id": checkpoint_id, "sample_valid_rate": sampled["valid_rate"],
                 "reward_mean": step.get("reward_mean"), "zero_variance_fraction": step.get("zero_variance_fraction"),
                 "seconds_states": t1 - t0, "seconds_sampling": t2 - t1, "seconds_rewards": t3 - t2, "seconds_train": t4 - t3}
        iterations.append({"iteration": it, **extra})
        over_budget = config.time_budget_s is not None and time.perf_counter() - started > config.time_budget_s
        if it % config.eval_every == 0 or it == config.iterations or over_budget:
            evaluate(it, extra)
            if config.target_accuracy is not None and history[-1]["accuracy"] >= config.target_accuracy:
                break
        if over_budget:
            break
    writer.close()
    assert checkpoint_id is None or registry.get(con, checkpoint_id)
    return LoopResult(checkpoint_id, history, str(out_dir), iterations)


def pair_outcomes(con, state_ids: list[str], spec: RewardSpec = RewardSpec()) -> dict[str, tuple[float, float]]:
    """(return_a, return_b) of each pairwise state over its reward's window (`spec`'s horizon and entry on the reward
    calendar), priced by the rewards stage's own sql/rewards.sql; a state whose reward has not exited yet is absent."""
    from hitchhiker import rewards

    frame = con.execute(db.sql_text("train/pair_outcomes"), {"state_ids": list(state_ids)}).df()
    if frame.empty:
        return {}
    rewards.set_spec_variables(con, spec)
    with rewards.flat_decisions(con, frame):
        rows = con.execute(f"SELECT decision_id, return_a, return_b FROM ({db.sql_text('rewards')})").fetchall()
    return {sid: (ra, rb) for sid, ra, rb in rows}


def greedy_accuracy(con, policy, state_ids: list[str], spec: RewardSpec = RewardSpec(), batch_size: int = 64) -> dict:
    """Greedy pairwise decisions on these states: accuracy (picked the stock with the higher return over the reward's
    window, `pair_outcomes`; invalid = wrong), valid-format rate, one-sided p-values against chance (`p_value`: exact
    binomial over decisions, which treats a date's decisions as independent; `p_value_by_date`: a t-test over the daily
    accuracies, one cluster per date, the one to trust when dates hold many decisions), and n_unpriced: the states
    left out because they have no outcome (reward not exited yet, or not pairwise)."""
    from hitchhiker.metrics import binomial_p_greater, t_test_p_greater
    from hitchhiker.rollouts import load_states

    states = load_states(con, state_ids)
    truth = pair_outcomes(con, state_ids, spec)
    n_unpriced = sum(s.state_id not in truth for s in states)
    tok = policy.tokenizer
    correct = valid = n = 0
    actions = {"A": 0, "B": 0}
    by_date: dict = {}  # decision date -> [correct, decisions]
    for i in range(0, len(states), batch_size):
        chunk = [s for s in states[i:i + batch_size] if s.state_id in truth]
        if not chunk:
            continue
        prompts = [policy.prompt_ids(s.messages) for s in chunk]
        width = max(len(p) for p in prompts)
        pad = tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=policy.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=policy.device)
        with torch.no_grad():
            out = policy.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=8,
                                        pad_token_id=pad, eos_token_id=policy.eos_token_ids)
        for s, row in zip(chunk, out[:, width:].tolist()):
            text = tok.decode([t for t in row if t not in policy.eos_token_ids and t != pad], skip_special_tokens=True)
            parsed = contract.parse(text, s.mode)
            ra, rb = truth[s.state_id]
            n += 1
            right = parsed.valid and (parsed.action == "A") == (ra > rb) and ra != rb
            day = by_date.setdefault(s.decision_date, [0, 0])
            day[0], day[1] = day[0] + right, day[1] + 1
            if parsed.valid:
                valid += 1
                actions[parsed.action] += 1
                correct += right
    if n == 0:
        raise ValueError(f"none of the {len(states)} evaluation states has a matured outcome in prices")
    return {"accuracy": correct / n, "valid_rate": valid / n, "n": n, "correct": correct, "n_unpriced": n_unpriced,
            "p_value": binomial_p_greater(correct, n),
            "p_value_by_date": t_test_p_greater([c / k for c, k in by_date.values()], 0.5),
            "n_dates": len(by_date), "share_a": actions["A"] / max(valid, 1)}


def check_held_out_dates(con, config) -> None:
    """Held-out dates must come after every training date's reward window (no overlap of what was learned): after the
    latest exit, on the reward calendar, of a decision on the last training date by any pair (pairwise) or stock
    (elementwise) of the store (sql/train/last_training_exit.sql).
    config: any loop's config with train_dates, eval_dates, states.mode, states.horizon_days and reward.horizon_days
    (the LLM loop's and the Beta head's)."""
    from hitchhiker import rewards

    if not config.train_dates or not config.eval_dates:
        raise ValueError("train_dates and eval_dates must both be non-empty")
    horizon = max(config.states.horizon_days, config.reward.horizon_days)
    rewards.ensure_calendar(con)
    last_exit = con.execute(db.sql_text("train/last_training_exit"), {
        "last_train_date": max(config.train_dates), "horizon_days": horizon,
        "pairwise": config.states.mode == contract.PAIRWISE}).fetchall()[0][0]
    if last_exit is None or min(config.eval_dates) <= last_exit:
        raise ValueError(f"held-out dates must come after the last training date {max(config.train_dates)} plus its "
                         f"{horizon}-day reward horizon (ends {last_exit}); first eval date is {min(config.eval_dates)}")


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str | None):
    """The policy's tokenizer, loaded once per process: the loop builds states every iteration (used read-only)."""
    from hitchhiker.policy import load_tokenizer

    return load_tokenizer(name)


def _build(con, config: LoopConfig, dates) -> list[str]:
    from hitchhiker.states import build_states

    tok = _tokenizer(config.states.tokenizer or config.model)  # prompt tokens counted with the policy's own
    ids: list[str] = []
    for tickers in config.ticker_groups or [None]:
        ids += build_states(con, config.states, list(dates), tickers=tickers, tokenizer=tok)
    rows = con.execute("SELECT state_id FROM states WHERE list_contains(?, state_id) ORDER BY decision_date, state_id",
                       [ids]).fetchall()
    return [r[0] for r in rows]


def _iteration_states(con, config: LoopConfig, iteration: int, per_date: int | None) -> tuple[list[str], int]:
    """The states of the iteration's slice of training dates (cycling when the dates run out)."""
    if per_date is None:  # states per date: measured on the first training date
        per_date = max(len(_build(con, config, config.train_dates[:1])), 1)
    dates_per_iteration = max(1, -(-config.states_per_iteration // per_date))
    chosen = training_slice(config.train_dates, dates_per_iteration, iteration)
    return _build(con, config, chosen)[: config.states_per_iteration], per_date


def training_slice(dates: list[date], n: int, iteration: int) -> list[date]:
    """The iteration's training dates: the next n of the sorted dates, cycling when they run out (the LLM loop's
    and the Beta head's)."""
    dates = sorted(dates)
    start = ((iteration - 1) * n) % len(dates)
    return [dates[(start + k) % len(dates)] for k in range(min(n, len(dates)))]


def synthetic_setup(con, market=None, eval_dates: int = 60, gap_days: int = 3, **overrides) -> LoopConfig:
    """Write a synthetic learnable market into `prices` and return a LoopConfig over it: training dates first,
    then a gap longer than the reward horizon, then `eval_dates` held-out dates (n_couples states per date)."""
    from hitchhiker.synthetic import SyntheticMarket, couples, trading_days, write_market

    market = market or SyntheticMarket()
    write_market(con, market)
    days = trading_days(market)
    states = overrides.get("states") or _default_states()
    warmup = max(states.history_days, states.trend_days, market.trend_days) + 2  # states need that much history
    last = len(days) - 2  # the last held-out date still needs its next session
    eval_start = last - eval_dates
    if eval_start - gap_days <= warmup:
        raise ValueError(f"a market of {market.n_days} days is too short for {eval_dates} held-out dates")
    return LoopConfig(train_dates=days[warmup:eval_start - gap_days], eval_dates=days[eval_start:last],
                      ticker_groups=couples(market), **overrides)
