"""Flow `compute_rewards`: reward every matured rollout of the replay buffer under one reward spec, and attach a
per-date table (matured count, mean/std reward_usd, invalid rate) as a Prefect artifact. The work is
hitchhiker.rewards (sql/rewards.sql, sql/advantages.sql)."""
from __future__ import annotations

import re

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.slots import store_slot
from hitchhiker.rewards import RewardSpec


@task
def compute(db_path: str | None, replay_root: str | None, spec: dict) -> dict:
    """Compute under the store's writer slot; returns the counts and this run's per-date summary rows."""
    from hitchhiker import db, replay, rewards

    reward_spec = RewardSpec(**spec)
    with store_slot():
        con = db.connect(db_path)
        try:
            counts = rewards.compute_rewards(con, reward_spec, replay_root or replay.root_for(db_path))
            rows = rewards.summary_by_date(con, counts["reward_spec"], counts["computed_at"]) if counts["inserted"] else []
        finally:
            con.close()
    for r in rows:  # artifact tables want plain JSON values
        r["decision_date"] = r["decision_date"].isoformat()
    return {**counts, "by_date": rows}


@task
def attach_table(result: dict) -> str:
    key = "rewards-" + re.sub(r"[^a-z0-9-]", "-", result["computed_at"].lower())[:40].strip("-")
    table = result["by_date"] or [{"decision_date": None, "matured": 0, "mean_reward_usd": None,
                                   "std_reward_usd": None, "invalid_rate": None}]
    create_table_artifact(table=table, key=key, description=(
        f"Rewards newly matured under {result['reward_spec']}: {result['inserted']} rewarded, "
        f"{result['waiting']} waiting for their exit price, {result['unpriceable']} that can never be priced "
        "(reward_usd per $1)"))
    return key


@flow(name="compute_rewards")
def compute_rewards(db: str | None = None, replay_root: str | None = None, horizon_days: int = 1,
                    entry: str = "next_open", pairwise: str = "long_short", cost_bps: float = 5.0,
                    risk_lambda: float = 0.0, invalid_penalty_usd: float = 0.02, storage: str | None = None,
                    max_entry_gap_days: int = 5, listwise: str = "top_bottom", judge: str | None = None,
                    judge_shift_usd: float = 0.0) -> dict:
    """Reward matured rollouts (idempotent: a re-run adds only newly matured ones); returns the counts.
    The replay is replay_root, else <storage>/replay (hitchhiker.storage), else the folder beside the store.
    A rollout that can never be priced (sql/rewards/unpriced.sql) is logged as a warning and left out.
    judge/judge_shift_usd: judge every rollout first (hitchhiker.judge) and shift the reward the advantages use."""
    spec = dict(horizon_days=horizon_days, entry=entry, pairwise=pairwise, cost_bps=cost_bps,
                risk_lambda=risk_lambda, invalid_penalty_usd=invalid_penalty_usd, max_entry_gap_days=max_entry_gap_days,
                listwise=listwise, judge=judge, judge_shift_usd=judge_shift_usd)
    RewardSpec(**spec)  # a bad parameter fails the flow before it takes the store
    from hitchhiker import replay

    result = compute(db, replay_root or replay.root_for(db, storage), spec)
    key = attach_table(result)
    logger = get_run_logger()
    logger.info("rewards %s: %d rewarded, %d waiting, %d never to be priced, %s decision date(s) read (artifact %s)",
                result["reward_spec"], result["inserted"], result["waiting"], result["unpriceable"], result["dates_read"],
                key)
    for state_id, why in result["unpriceable_states"].items():
        logger.warning("state %s cannot be priced: %s", state_id, why)
    return {k: v for k, v in result.items() if k != "by_date"} | {"artifact_key": key}
