"""The Beta head as a policy of the replay buffer: sampled groups in, training rows out, mean-position decisions.

A head's rollouts are ordinary replay rows (hitchhiker/replay.py), so the rewards stage prices them with the same
SQL as every LLM rollout: mode 'elementwise', `position` = the sampled p in [0, 2] (sql/rewards.sql pays
p * r - |p| * cost - lambda * |p| * sigma), `action` = repr(p) and `completion` = "ACTION: <p>", which the
contract's parser reads back as exactly p. `policy_version` is the id of the head checkpoint that sampled.

Which density is stored: `logprob_sum` (and `token_logprobs` = [logprob_sum]) is log Beta(alpha, beta).log_prob(x)
at x = p / 2, in nats: the density of the unit-interval draw. The density of the position p itself is that minus
log 2 (p = 2x); the constant cancels in every ratio and gradient, so the trainer uses the x-density throughout.
There are no tokens: `prompt_ids` and `completion_ids` are empty, `temperature` 1 (the head's own distribution).
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import torch

from hitchhiker import contract, db, replay
from hitchhiker.beta.features import FeatureSpec, feature_matrix, load_inputs
from hitchhiker.beta.head import BetaHead, load_head, sample_positions
from hitchhiker.rollouts import group_generator, group_id

ACTION_STEP = 0.25  # evaluation's action label: the mean position rounded to this (a readable action mix)


def sample_groups(con: duckdb.DuckDBPyConnection, head: BetaHead, spec: FeatureSpec, policy_version: str,
                  state_ids: list[str], group_size: int, root: str | Path, seed: int = 0) -> dict:
    """Write a group of `group_size` sampled positions per state that has none yet for policy_version; returns counts."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    root = root if isinstance(root, Path) else str(root)
    inputs = load_inputs(con, state_ids)
    gids = [group_id(s, policy_version) for s in inputs["state_id"]]
    todo = [i for i, (d, pair, g) in enumerate(zip(inputs["decision_date"], inputs["pair"], gids))
            if not replay.has_group(root, d, pair, g)]
    written, positions = 0, []
    if todo:
        x = feature_matrix(con, spec, [inputs["state_id"][i] for i in todo], inputs.iloc[todo])
        now = datetime.now(timezone.utc)
        head.eval()
        records = inputs.to_dict("records")
        for row, i in enumerate(todo):
            state = records[i]
            pos, logp = sample_positions(head, x[row:row + 1], group_size, group_generator(seed, gids[i]))
            rows = [_row(state["state_id"], gids[i], policy_version, k, float(p), float(lp), now)
                    for k, (p, lp) in enumerate(zip(pos[0].tolist(), logp[0].tolist()))]
            if replay.write_group(root, state["decision_date"], state["pair"], gids[i], rows) is not None:
                written += 1
            positions += [r["position"] for r in rows]
    replay.ensure_view(con, root)
    return {"states": len(inputs), "groups_written": written, "groups_skipped": len(inputs) - len(todo),
            "rollouts": len(positions), "mean_position": float(np.mean(positions)) if positions else None,
            "policy_version": policy_version, "group_ids": gids}


def _row(state_id: str, gid: str, policy_version: str, k: int, position: float, logp: float, now: datetime) -> dict:
    return {
        "rollout_id": f"{gid}-{k}", "state_id": state_id, "group_id": gid, "mode": contract.ELEMENTWISE,
        "policy_version": policy_version, "sample_index": k, "temperature": 1.0, "top_p": 1.0, "prompt_ids": [],
        "completion": f"ACTION: {position!r}", "completion_ids": [], "token_logprobs": [logp], "logprob_sum": logp,
        "action": repr(position), "proportion": None, "position": position, "advisory_text": "", "valid": True,
        "invalid_reason": None, "created_at": now,
    }


def training_rows(con: duckdb.DuckDBPyConnection, spec: FeatureSpec, group_ids: list[str], reward_spec: str):
    """(features, positions, reward_usd, advantage_usd, behaviour log-densities) tensors of the groups' rewarded
    rollouts; the advantage is group-relative: the reward minus the mean reward of its state's group."""
    from hitchhiker.rewards import ensure_advantages_view

    ensure_advantages_view(con)
    df = con.execute(db.sql_text("beta/training_rows"), {"group_ids": list(group_ids), "reward_spec": reward_spec}).df()
    if df.empty:
        raise ValueError(f"none of the {len(group_ids)} groups has a reward under {reward_spec} yet (not matured?)")
    states = list(dict.fromkeys(df["state_id"]))
    x_state = feature_matrix(con, spec, states)
    index = {s: i for i, s in enumerate(states)}
    x = x_state[torch.tensor([index[s] for s in df["state_id"]])]
    as_t = lambda c: torch.tensor(df[c].to_numpy(np.float64), dtype=torch.float32)  # noqa: E731
    return x, as_t("position"), as_t("reward_usd"), as_t("advantage_usd"), as_t("behaviour_logprob")


def mean_position_decisions(con: duckdb.DuckDBPyConnection, head: BetaHead, spec: FeatureSpec,
                            states: pd.DataFrame) -> pd.DataFrame:
    """The deterministic decisions (position = 2 alpha / (alpha + beta)) on `states`, in the evaluation's terms."""
    ids = list(states["state_id"])
    with torch.no_grad():
        p = head.eval().mean_position(feature_matrix(con, spec, ids)).double().numpy() if ids else np.zeros(0)
    return pd.DataFrame({"state_id": ids, "action": [f"{ACTION_STEP * round(v / ACTION_STEP):g}" for v in p],
                         "proportion": np.nan, "position": p, "valid": True})


def checkpoint_decider(con: duckdb.DuckDBPyConnection, path: str | Path):
    """A function `states -> decisions` for hitchhiker.evaluate, from a head checkpoint folder."""
    head, meta = load_head(path)
    spec = FeatureSpec.from_json(meta["features"])
    return lambda states: mean_position_decisions(con, head, spec, states)
