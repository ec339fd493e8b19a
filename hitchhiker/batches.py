"""The store's side of training: which groups (or preference pairs) a run trains on, written as a training batch to
shared storage; the run itself (in this process, or a GPU worker's deployment); its checkpoints registered.

    plan_groups / preference_pairs   select from the store (replay + advantages, minus the parent's lineage)
    write_grpo_batch / write_pairs_batch   a committed batch under <storage>/batches (hitchhiker/train/batch.py)
    train_grpo / train_pairs         batch + run + registration in one call (the CLI, the loop, in-process flows);
                                     train_dpo and train_orpo are train_pairs of one algorithm

The trainer (hitchhiker/train/) never opens the store; only this module and hitchhiker/registry.py do.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import date

from hitchhiker import db, registry, storage
from hitchhiker.train import batch as batches
from hitchhiker.train import checkpoints as ckpts
from hitchhiker.train.config import ADVANTAGE_COLUMNS, DPOConfig, GRPOConfig, ORPOConfig, PreferenceConfig
from hitchhiker.train.data import Group, Rollout
from hitchhiker.train.grpo import TrainResult, plan_config

RUN_BATCHES = "batch"  # train_grpo/train_pairs keep their batch inside the run folder: <run>/batch/<batch_id>/


def default_reward_spec() -> str:
    """The rewards stage's default spec name (its RewardSpec's versioned name)."""
    from hitchhiker.rewards import RewardSpec

    spec = RewardSpec()
    name = spec.reward_spec
    return name() if callable(name) else str(name)


def load_groups(
    con,
    reward_spec: str | None = None,
    advantage_column: str = "advantage",
    policy_version: str | None = None,
    start_date: date | None = None,
    end_date: date | None = None,
) -> list[Group]:
    """Matured groups (every rollout has a reward under reward_spec), ordered by decision date then group id."""
    if advantage_column not in ADVANTAGE_COLUMNS:
        raise ValueError(f"advantage_column {advantage_column!r} is not one of {ADVANTAGE_COLUMNS}")
    spec = reward_spec or default_reward_spec()
    rows = con.execute(
        db.sql_text("train/groups"),
        {"reward_spec": spec, "policy_version": policy_version, "start_date": start_date, "end_date": end_date},
    ).fetchall()
    cols = [d[0] for d in con.description]
    groups: dict[str, Group] = {}
    for values in rows:
        row = dict(zip(cols, values))
        g = groups.get(row["group_id"])
        if g is None:
            g = groups[row["group_id"]] = Group(
                row["group_id"], row["state_id"], row["decision_date"], row["policy_version"], bool(row["zero_variance"]), []
            )
        completion, logprobs = list(row["completion_ids"] or []), list(row["token_logprobs"] or [])
        if len(completion) != len(logprobs) or not completion:
            raise ValueError(
                f"rollout {row['rollout_id']}: {len(completion)} completion tokens but {len(logprobs)} behaviour log-probs"
            )
        g.rollouts.append(
            Rollout(
                row["rollout_id"], list(row["prompt_ids"]), completion, logprobs, float(row["temperature"]),
                float(row[advantage_column]), float(row["reward_usd"]), bool(row["valid"]), float(row["top_p"]),
            )
        )
    return list(groups.values())


def plan_groups(con, config: GRPOConfig, parent_id: str | None = None, policy_version: str | None = None,
                start_date=None, end_date=None, used: set[str] | None = None) -> list[Group]:
    """Matured groups not yet in the parent's lineage, in a seeded shuffled order (mixes dates within a step).
    used: the lineage's groups when con is not the store (detached_selection)."""
    used = set(registry.lineage_groups(con, parent_id)) if used is None else used
    groups = [g for g in load_groups(con, config.reward_spec, config.advantage_column, policy_version, start_date, end_date)
              if g.group_id not in used]
    random.Random(config.shuffle_seed).shuffle(groups)
    return groups


def preference_pairs(con, reward_spec: str, margin_usd: float = 0.0, policy_version: str | None = None,
                     exclude_groups: set[str] | frozenset = frozenset()) -> list[dict]:
    """Conversational pairs {prompt, chosen, rejected, group_id, ...} from sql/train/dpo_pairs.sql."""
    import json

    rel = con.execute(db.sql_text("train/dpo_pairs"),
                      {"reward_spec": reward_spec, "policy_version": policy_version, "margin_usd": margin_usd})
    cols = [d[0] for d in rel.description]
    pairs = []
    for values in rel.fetchall():
        row = dict(zip(cols, values))
        if row["group_id"] in exclude_groups:
            continue
        pairs.append({
            "group_id": row["group_id"],
            "prompt": json.loads(row["messages"]),
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
            "chosen_reward_usd": row["chosen_reward_usd"],
            "rejected_reward_usd": row["rejected_reward_usd"],
        })
    return pairs


def _lineage_meta(con, parent_id: str | None, base_model: str | None) -> dict:
    """parent_id, parent_url and base_model of a batch (the parent's base unless one is named)."""
    parent_url = None
    if parent_id is not None and not parent_id.startswith("base:"):
        row = registry.get(con, parent_id)
        parent_url, base_model = row["path"], base_model or row["base_model"]
    return {"parent_id": parent_id, "parent_url": parent_url, "base_model": ckpts.base_model_name(base_model)}


@dataclass
class StoreSelection:
    """What a GRPO batch needs from the store itself, read in well under a second: the lineage (parent, base model,
    the groups it used) and the advantage rows under the spec. The tokens are then read from the replay's files by
    an in-memory DuckDB (`detached`), with the store closed and its slot free."""

    meta: dict
    used: set[str]
    reward_spec: str
    advantages: object  # pyarrow.Table: the `advantages` rows under reward_spec

    @classmethod
    def read(cls, con, config: GRPOConfig, parent_id: str | None = None, base_model: str | None = None) -> StoreSelection:
        spec = config.reward_spec or default_reward_spec()
        rows = con.sql("SELECT * FROM advantages WHERE reward_spec = $spec", params={"spec": spec}).to_arrow_table()
        return cls(_lineage_meta(con, parent_id, base_model), set(registry.lineage_groups(con, parent_id)), spec, rows)

    def detached(self, replay_root: str):
        """An in-memory DuckDB holding `advantages` (these rows) and the view `replay` over replay_root."""
        import duckdb

        from hitchhiker import replay

        mem = duckdb.connect()
        mem.register("selected_advantages", self.advantages)
        mem.execute("CREATE VIEW advantages AS SELECT * FROM selected_advantages")
        replay.ensure_view(mem, replay_root)
        return mem


def write_grpo_batch(con, config: GRPOConfig, batches_root: str, groups: list[Group] | None = None,
                     parent_id: str | None = None, base_model: str | None = None, carry_optimizer: bool = False,
                     selection: StoreSelection | None = None) -> str:
    """Select the groups (default: plan_groups) and write them as a committed GRPO batch; returns its URL.

    carry_optimizer: the run starts from the parent checkpoint's optimizer state (the loop's consecutive runs
    behave as one long run; with one step per run, a fresh Adam would take sign-like first steps every time).
    selection: the store's part read beforehand (StoreSelection.read); con is then its detached connection."""
    config.check()
    if selection is not None:
        meta, reward_spec = selection.meta, selection.reward_spec  # the default spec when config names none, as below
    else:
        meta, reward_spec = _lineage_meta(con, parent_id, base_model), config.reward_spec or default_reward_spec()
    if groups is None:
        groups = plan_groups(con, config, parent_id, used=selection.used if selection is not None else None)
    if not groups:
        raise ValueError("no matured replay groups to train on (need rollouts with rewards under the reward spec)")
    return batches.write_grpo_batch(batches_root, groups, {**meta, "reward_spec": reward_spec,
                                                          "config": plan_config(config), "carry_optimizer": carry_optimizer})


def write_pairs_batch(con, config: PreferenceConfig, batches_root: str, parent_id: str | None = None,
                      base_model: str | None = None, pairs: list[dict] | None = None) -> str:
    """The buffer's preference pairs not yet in the parent's lineage, as a committed batch of the config's algorithm
    (a DPOConfig: DPO, an ORPOConfig: ORPO); returns its URL."""
    config.check()
    spec = config.reward_spec or default_reward_spec()
    meta = _lineage_meta(con, parent_id, base_model)
    if pairs is None:
        pairs = preference_pairs(con, spec, config.margin_usd, exclude_groups=set(registry.lineage_groups(con, parent_id)))
    if not pairs:
        raise ValueError(f"no preference pairs in the buffer under reward spec {spec!r} with margin {config.margin_usd}")
    return batches.write_pairs_batch(batches_root, pairs, {**meta, "reward_spec": spec, "config": plan_config(config)},
                                     algorithm=preference_algorithm(config))


def preference_algorithm(config: PreferenceConfig) -> str:
    """'dpo' or 'orpo': the algorithm a preference config trains."""
    if not isinstance(config, (DPOConfig, ORPOConfig)):
        raise TypeError(f"{type(config).__name__} is not a DPOConfig or an ORPOConfig")
    return "orpo" if isinstance(config, ORPOConfig) else "dpo"


def run_batch(run_dir: str, config) -> str | None:
    """The batch a run folder was started with (train_grpo/train_pairs keep it inside), checked against config."""
    found = storage.committed_children(storage.join(run_dir, RUN_BATCHES))
    if not found:
        return None
    started = batches.read_meta(found[0])["config"]
    if started != plan_config(config):
        raise ValueError(f"run {run_dir} was started with another config; use a new run_dir (started: {started})")
    return found[0]


def train_grpo(con, config: GRPOConfig, run_dir: str | os.PathLike, groups: list[Group] | None = None,
               parent_id: str | None = None, base_model: str | None = None, on_step_end=None,
               carry_optimizer: bool = False) -> TrainResult:
    """Train here: write the batch into run_dir (or resume the run already there), train, register the checkpoints.

    con may be None (nothing registered; groups must then be given)."""
    from hitchhiker.train.grpo import train_batch

    run_dir = storage.absolute(run_dir)
    batch_url = run_batch(run_dir, config) or write_grpo_batch(
        con, config, storage.join(run_dir, RUN_BATCHES), groups, parent_id, base_model, carry_optimizer)
    if con is not None:
        registry.record_run(con, run_dir, batch_url)
    result = train_batch(batch_url, run_dir, on_step_end=on_step_end)
    if con is not None:
        registry.register_run(con, run_dir, batch_url)
    return result


def train_pairs(con, config: PreferenceConfig, run_dir: str | os.PathLike, parent_id: str | None = None,
                base_model: str | None = None, pairs: list[dict] | None = None) -> TrainResult:
    """DPO or ORPO here (as the config's class says): the batch of preference pairs, the run, the registration (a
    finished run is only registered)."""
    from hitchhiker.train.preference import train_pairs_batch

    run_dir = storage.absolute(run_dir)
    batch_url = write_pairs_batch(con, config, storage.join(run_dir, RUN_BATCHES), parent_id, base_model, pairs)
    registry.record_run(con, run_dir, batch_url)
    result = train_pairs_batch(batch_url, run_dir, preference_algorithm(config))
    registry.register_run(con, run_dir, batch_url)
    return result


def train_dpo(con, config: DPOConfig, run_dir: str | os.PathLike, parent_id: str | None = None,
              base_model: str | None = None, pairs: list[dict] | None = None) -> TrainResult:
    """DPO here: train_pairs with a DPOConfig."""
    return train_pairs(con, config, run_dir, parent_id, base_model, pairs)


def train_orpo(con, config: ORPOConfig, run_dir: str | os.PathLike, parent_id: str | None = None,
               base_model: str | None = None, pairs: list[dict] | None = None) -> TrainResult:
    """ORPO here: train_pairs with an ORPOConfig (the same buffer pairs as DPO, no reference model)."""
    return train_pairs(con, config, run_dir, parent_id, base_model, pairs)
