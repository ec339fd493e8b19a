"""The learning loop: states -> groups sampled by the current checkpoint -> SQL rewards -> GRPO -> checkpoint -> eval.

Each iteration takes the next slice of training dates, builds their states (idempotent), samples a group per
state with the current policy into the replay buffer, computes rewards and advantages in SQL, trains one GRPO run
on exactly those groups (continuing the previous checkpoint, optimizer state included), and measures greedy
accuracy (pairwise: the right stock picked; listwise: the pairs of a basket ordered right) on held-out dates that
come strictly after every training date plus the reward horizon.
"""
from __future__ import annotations

import dataclasses
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


SELF = "self"  # a teacher source: the student itself, at its current checkpoint


def _listwise_states() -> StatesConfig:
    """The synthetic listwise market's states: one basket per triple and date, its trend words only."""
    return StatesConfig(mode=contract.LISTWISE, style="trend", list_size=3, max_lists_per_date=1)


def _ranking_tokens(list_size: int) -> int:
    """New tokens a ranking of list_size letters needs: about 3 a letter with the default model (`▁C`, `▁`, `>`)."""
    return max(12, 3 * list_size + 3)


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
    # Teachers (issue 21): {policy_version: checkpoint id, folder, 'base' or 'self'} whose samples, split by the teachers'
    # weights (teachers.TeachersConfig: weighting; its teachers and reward_spec are filled from here), make the groups
    # the student trains on, instead of the student's own samples. None: the student samples itself.
    teachers: dict[str, str] | None = None
    teacher_weighting: dict = field(default_factory=dict)  # TeachersConfig fields: half_life_dates, floor, ...
    # GRPOConfig fields that replace grpo's when the groups are the teachers': the student's own rows as the baseline
    # and no importance weight on the teachers' rows. With grpo's defaults (group mean, truncated ratio) a student
    # never left chance in 80 iterations on a 98 %-right teacher's groups (bench/teachers.py; README, Teachers).
    teacher_grpo: dict = field(default_factory=lambda: {"advantage_column": "advantage_self", "is_mode": "none"})


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
               **greedy_accuracy(con, policy(), eval_ids, config.reward, max_new_tokens=config.sampling.max_new_tokens),
               **extra}
        history.append(row)
        for k in ("accuracy", "valid_rate", "p_value", "p_value_by_date", "n_unpriced"):
            writer.add_scalar(f"eval/{k}", row[k], iteration)
        if row["n_unpriced"]:
            log.warning("iteration %d: %d of %d held-out states have no outcome yet (their reward has not exited in "
                        "prices) and are not in the accuracy", iteration, row["n_unpriced"], len(eval_ids))
        if on_iteration is not None:
            on_iteration(row)

    evaluate(0, {"checkpoint_id": None})
    mixed = _teachers(con, config) if config.teachers else None
    train = {**config.grpo.__dict__, **(config.teacher_grpo if mixed else {})}
    per_date = None
    for it in range(1, config.iterations + 1):
        t0 = time.perf_counter()
        ids, per_date = _iteration_states(con, config, it, per_date)
        if config.states.mode != contract.ELEMENTWISE:
            check_training_exits(con, ids, config)
        t1 = time.perf_counter()
        if mixed is None:
            current = policy()
            sampled = rollouts.generate(con, current, ids, config.sampling, replay_root)
            key, version = current.policy_version, current.policy_version
        else:
            from hitchhiker.teachers import group_key, sample_with_teachers

            teachers, weighting = mixed
            student = checkpoint_id or "start"
            if SELF in teachers:  # the student samples its share too: its current checkpoint, a new round each time
                teachers = {**teachers, SELF: dataclasses.replace(policy(), policy_version=SELF)}
            sampled = sample_with_teachers(con, teachers, ids, config.sampling, weighting, replay_root, round_key=student)
            key, version = group_key(weighting, student), None
        t2 = time.perf_counter()
        # the spec name returned, not recomputed: it hashes sql/rewards.sql, which a user may edit mid-run
        spec_name = compute_rewards(con, config.reward, replay_root)["reward_spec"]
        wanted = {rollouts.group_id(s, key) for s in ids}
        groups = [g for g in load_groups(con, spec_name, train["advantage_column"], version) if g.group_id in wanted]
        t3 = time.perf_counter()
        grpo = GRPOConfig(**{**train, "reward_spec": spec_name})
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


def _teachers(con, config: LoopConfig):
    """({policy_version: Policy}, TeachersConfig) of the loop's teachers, loaded once (the student's own share,
    teacher 'self', is loaded at each iteration)."""
    from hitchhiker.policy import PolicyConfig, load_policy
    from hitchhiker.rollouts import resolve_checkpoint
    from hitchhiker.teachers import TeachersConfig

    policies = {}
    for version, source in config.teachers.items():
        if source == SELF:
            if version != SELF:
                raise ValueError(f"teacher {version!r}: the student samples as teacher 'self' (give self=self)")
            policies[version] = None  # loaded each iteration: the student's current checkpoint
            continue
        if source == "base":
            policy = load_policy(PolicyConfig(model=config.model))
        else:
            path, checkpoint_id = resolve_checkpoint(con, source)
            policy = load_policy(PolicyConfig(model=config.model, checkpoint=path, checkpoint_id=checkpoint_id))
        policies[version] = dataclasses.replace(policy, policy_version=version)
    wrong = sorted(set(config.teacher_grpo) - {f.name for f in dataclasses.fields(GRPOConfig)})
    if wrong:
        raise ValueError(f"teacher_grpo {wrong}: not a GRPOConfig field")
    unknown = sorted(set(config.teacher_weighting) - {f.name for f in dataclasses.fields(TeachersConfig)} | (
        set(config.teacher_weighting) & {"teachers", "reward_spec"}))
    if unknown:
        raise ValueError(f"teacher_weighting {unknown}: not a weighting setting (half_life_dates, temperature, floor, "
                         "stale_days, stale_share, seed)")
    weighting = TeachersConfig(teachers=sorted(policies), reward_spec=config.reward.reward_spec,
                               **{"seed": config.seed, **config.teacher_weighting})
    return policies, weighting


def outcomes(con, state_ids: list[str], spec: RewardSpec = RewardSpec()) -> dict[str, tuple[float, ...]]:
    """The realized returns of each pairwise or listwise state's legs in prompt order ((return_a, return_b) for a
    pair, one per letter for a basket) over its reward's window (`spec`'s horizon and entry on the reward calendar),
    priced by the rewards stage's own sql/rewards.sql; a state whose reward has not exited yet is absent."""
    return {sid: legs for sid, (legs, _) in _priced_prompt_order(con, state_ids, spec).items()}


def _priced_prompt_order(con, state_ids: list[str], spec: RewardSpec) -> dict[str, tuple[tuple[float, ...], date]]:
    """(legs' returns in prompt order, exit date) of each pairwise or listwise state, by sql/train/outcomes.sql."""
    from hitchhiker import rewards

    frame = con.execute(db.sql_text("train/outcomes"), {"state_ids": list(state_ids)}).df()
    if frame.empty:
        return {}
    rewards.set_spec_variables(con, spec)
    with rewards.flat_decisions(con, frame):
        rows = con.execute(f"SELECT decision_id, mode, return_a, return_b, leg_returns, exit_date "
                           f"FROM ({db.sql_text('rewards')})").fetchall()
    return {sid: ((ra, rb) if mode == contract.PAIRWISE else tuple(legs), exit_date)
            for sid, mode, ra, rb, legs, exit_date in rows}


def greedy_accuracy(con, policy, state_ids: list[str], spec: RewardSpec = RewardSpec(), batch_size: int = 64,
                    max_new_tokens: int = 8) -> dict:
    """Greedy decisions on these pairwise or listwise states, scored against `outcomes` (the realized returns over the
    reward's window): `accuracy` is the share of decisions that picked the stock with the higher return (pairwise)
    or the mean pair-ordering accuracy of the rankings (listwise: the share of the K(K-1)/2 pairs ordered like their
    returns, a tie half); an invalid answer scores 0. Also the valid-format rate, one-sided p-values against chance
    (`p_value`: pairwise an exact binomial over decisions, listwise a t-test over the decisions' scores, both treating
    a date's decisions as independent; `p_value_by_date`: a t-test over the daily accuracies, one cluster per date,
    the one to trust when dates hold many decisions), and n_unpriced: the states left out because they have no
    outcome (reward not exited yet, or elementwise)."""
    from hitchhiker.metrics import binomial_p_greater, pair_ordering_accuracy, t_test_p_greater
    from hitchhiker.rollouts import load_states

    states = load_states(con, state_ids)
    truth = outcomes(con, state_ids, spec)
    n_unpriced = sum(s.state_id not in truth for s in states)
    tok = policy.tokenizer
    valid = n = 0
    scores: list[float] = []
    firsts: dict[str, int] = {}  # the letter picked (pairwise) or ranked first (listwise) -> decisions
    by_date: dict = {}  # decision date -> [score sum, decisions]
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
            out = policy.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                        pad_token_id=pad, eos_token_id=policy.eos_token_ids)
        for s, row in zip(chunk, out[:, width:].tolist()):
            text = tok.decode([t for t in row if t not in policy.eos_token_ids and t != pad], skip_special_tokens=True)
            legs = truth[s.state_id]
            listwise = s.mode == contract.LISTWISE
            parsed = contract.parse(text, s.mode, list_size=len(legs) if listwise else None)
            n += 1
            if not parsed.valid:
                score = 0.0
            elif listwise:
                score = pair_ordering_accuracy(">".join(parsed.ranking), legs)
            else:
                score = float((parsed.action == "A") == (legs[0] > legs[1]) and legs[0] != legs[1])
            scores.append(score)
            day = by_date.setdefault(s.decision_date, [0.0, 0])
            day[0], day[1] = day[0] + score, day[1] + 1
            if parsed.valid:
                valid += 1
                first = parsed.ranking[0] if listwise else parsed.action
                firsts[first] = firsts.get(first, 0) + 1
    if n == 0:
        raise ValueError(f"none of the {len(states)} evaluation states has a matured outcome in prices")
    correct = sum(scores)
    pairwise = not any(s.mode == contract.LISTWISE for s in states)  # every score a 0/1 pick: exact binomial
    return {"accuracy": correct / n, "valid_rate": valid / n, "n": n,
            "correct": int(correct) if pairwise else correct, "n_unpriced": n_unpriced,
            "p_value": binomial_p_greater(int(correct), n) if pairwise else t_test_p_greater(scores, 0.5),
            "p_value_by_date": t_test_p_greater([c / k for c, k in by_date.values()], 0.5),
            "n_dates": len(by_date), "share_a": firsts.get("A", 0) / max(valid, 1)}


def check_training_exits(con, state_ids: list[str], config) -> None:
    """Every training state's reward must exit before the first held-out date: the exact check, per iteration, of what
    `check_held_out_dates` bounds in advance (for a listwise basket, whose legs share fewer trading days than any of
    its pairs, that bound is a lower one)."""
    exits = [e for _, e in _priced_prompt_order(con, state_ids, config.reward).values()]
    if exits and max(exits) >= min(config.eval_dates):
        raise ValueError(f"a training state's reward exits on {max(exits)}, on or after the first held-out date "
                         f"{min(config.eval_dates)}: move the held-out dates later")


def check_held_out_dates(con, config) -> None:
    """Held-out dates must come after every training date's reward window (no overlap of what was learned): after the
    latest exit, on the reward calendar, of a decision on the last training date by any pair (pairwise, and listwise:
    a basket exits no earlier than any of its pairs, so this bounds it from below and the LLM loop checks each
    iteration's baskets exactly, `check_training_exits`) or stock (elementwise) of the store
    (sql/train/last_training_exit.sql).
    config: any loop's config with train_dates, eval_dates, states.mode, states.horizon_days and reward.horizon_days
    (the LLM loop's and the Beta head's)."""
    from hitchhiker import rewards

    if not config.train_dates or not config.eval_dates:
        raise ValueError("train_dates and eval_dates must both be non-empty")
    horizon = max(config.states.horizon_days, config.reward.horizon_days)
    rewards.ensure_calendar(con)
    last_exit = con.execute(db.sql_text("train/last_training_exit"), {
        "last_train_date": max(config.train_dates), "horizon_days": horizon,
        "pairwise": config.states.mode != contract.ELEMENTWISE}).fetchall()[0][0]
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
    then a gap longer than the reward horizon, then `eval_dates` held-out dates (n_couples states per date).
    A market of triples (`basket_size=3`) loops on listwise states (K = 3, answers of up to 12 new tokens), 32 baskets
    an iteration (at 16 the seed that reaches 0.83 at iteration 92 with 32 stalled at 0.77), at a third of the pairwise
    learning rate, sampled at temperature 1.2 with DAPO's clip-higher (epsilon_high 0.28, TRL's name):
    at 3e-4 the default model's rankings collapsed onto two answers (pair-ordering 0.71, no variance left in the
    groups) and never left them; at 1e-4, temperature 1 and a symmetric clip they reached 0.88 with one build of the
    default model and stalled at 0.71 with another (seed 0), and the wider exploration lifts that build to 0.83 at
    iteration 92 and 0.88 at 104 (seed 0; issue 20's figures in the README)."""
    from hitchhiker.synthetic import SyntheticMarket, couples, trading_days, write_market

    market = market or SyntheticMarket()
    if market.basket_size > 2:
        lists = _listwise_states()
        overrides = {"states": lists, "states_per_iteration": 32,
                     "sampling": dataclasses.replace(_default_sampling(), temperature=1.2,
                                                     max_new_tokens=_ranking_tokens(lists.list_size)),
                     "grpo": dataclasses.replace(_default_grpo(), learning_rate=1e-4, epsilon_high=0.28), **overrides}
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


def loop_config(con, *, synthetic: bool, mode: str = contract.PAIRWISE, list_size: int = 4, seed: int = 0,
                train_start=None, train_end=None, eval_start=None, eval_end=None, tickers: list[str] | None = None,
                **overrides) -> LoopConfig:
    """The LoopConfig that `hitchhiker loop` and the `loop` flow run: the synthetic market (pairwise: couples;
    listwise: triples, K = 3), or real dates (listwise: baskets of `list_size` within `tickers`, answers of up to
    `_ranking_tokens(list_size)` new tokens)."""
    from hitchhiker.states import trading_days
    from hitchhiker.synthetic import SyntheticMarket

    if mode not in (contract.PAIRWISE, contract.LISTWISE):
        raise ValueError(f"mode {mode!r}: the LLM loop runs 'pairwise' or 'listwise' states")
    if synthetic:
        market = SyntheticMarket(seed=seed, basket_size=3 if mode == contract.LISTWISE else 2)
        return synthetic_setup(con, market, seed=seed, **overrides)
    if not all([train_start, train_end, eval_start, eval_end]):
        raise ValueError("give train_start/train_end/eval_start/eval_end (--train-start ... --eval-end), or synthetic")
    cfg = LoopConfig(train_dates=trading_days(con, train_start, train_end), eval_dates=trading_days(con, eval_start, eval_end),
                     ticker_groups=[tickers] if tickers else None, seed=seed, **overrides)
    if mode == contract.LISTWISE:
        cfg.states = dataclasses.replace(cfg.states, mode=mode, list_size=list_size)
        cfg.sampling = dataclasses.replace(cfg.sampling, max_new_tokens=_ranking_tokens(list_size))
    return cfg
