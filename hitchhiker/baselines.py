"""Rule baselines that decide on the same states as the policy, so every comparison is on equal footing.

Each baseline returns a decisions frame in the rewards stage's terms (one row per decision: decision_id,
state_id, decision_date, mode, pair, ticker_a, ticker_b, action, proportion, position, valid, history_days), and
its rewards come from the same SQL as the policy's. Past returns are computed point-in-time in SQL
(sql/evaluate/past_returns.sql): only prices dated on or before the decision date.

- random: a fair coin per state (seeded by state_id, so it does not depend on the row order)
- always_a (pairwise) / always_buy (elementwise): the position-bias and market baselines
- momentum: the stock with the higher past return over the state's history window (elementwise: buy if up)
- mean_reversion: the opposite of momentum
- listwise: random (a seeded shuffle per state), momentum (the basket by past return, highest first) and
  mean_reversion (lowest first); a missing history counts as a zero return, ties keep the prompt order
- buy_and_hold: $1 long every stock of the day's states in equal weight (pairwise runs: the universe of the
  pairs); a benchmark series with no accuracy, since it picks nothing
"""
from __future__ import annotations

import hashlib

import duckdb
import numpy as np
import pandas as pd

from hitchhiker import contract, db

PAIRWISE_BASELINES = ("random", "always_a", "momentum", "mean_reversion", "buy_and_hold")
ELEMENTWISE_BASELINES = ("random", "always_buy", "momentum", "mean_reversion")
LISTWISE_BASELINES = ("random", "momentum", "mean_reversion", "buy_and_hold")
BASELINES = {contract.PAIRWISE: PAIRWISE_BASELINES, contract.ELEMENTWISE: ELEMENTWISE_BASELINES,
             contract.LISTWISE: LISTWISE_BASELINES}

DECISION_COLUMNS = ["decision_id", "state_id", "decision_date", "mode", "pair", "ticker_a", "ticker_b", "action",
                    "proportion", "position", "valid", "history_days"]


def past_returns(con: duckdb.DuckDBPyConnection, states: pd.DataFrame) -> pd.DataFrame:
    """Per state: last_return_a/b and past_return_a/b (b NaN for elementwise), and `past_returns`, every leg's in
    prompt order (a listwise basket's K), point-in-time, per $1."""
    rel = states[["state_id", "decision_date", "history_days", "tickers"]]
    con.register("eval_states", rel)
    try:
        rows = con.execute(db.sql_text("evaluate/past_returns")).df()
    finally:
        con.unregister("eval_states")
    out = pd.DataFrame({"state_id": states["state_id"]})
    for slot, suffix in ((1, "a"), (2, "b")):
        part = rows[rows["slot"] == slot].set_index("state_id")
        out[f"last_return_{suffix}"] = out["state_id"].map(part["last_return"]).astype(float)
        out[f"past_return_{suffix}"] = out["state_id"].map(part["past_return"]).astype(float)
    legs = {(s, k): v for s, k, v in zip(rows["state_id"], rows["slot"], rows["past_return"])}
    out["past_returns"] = [[float(legs.get((s, k + 1), np.nan)) for k in range(len(ts))]
                           for s, ts in zip(states["state_id"], states["tickers"])]
    return out


def _coin(state_ids: pd.Series, seed: int, sides: int) -> np.ndarray:
    return np.array([int(hashlib.sha256(f"{seed}:{s}".encode()).hexdigest()[:8], 16) % sides for s in state_ids])


def fixed_decisions(states: pd.DataFrame, name: str, action: list, proportion, position) -> pd.DataFrame:
    """A decisions frame of `name` on `states` with the given action(s), proportion(s) and position(s); listwise
    decisions also carry their basket (`tickers`, prompt order), which the rewards SQL prices."""
    mode = states["mode"].iloc[0]
    frame = pd.DataFrame({
        "decision_id": [f"{name}:{s}" for s in states["state_id"]],
        "state_id": states["state_id"].to_numpy(),
        "decision_date": states["decision_date"].to_numpy(),
        "mode": mode,
        "pair": states["pair"].to_numpy(),
        "ticker_a": [t[0] for t in states["tickers"]],
        "ticker_b": [t[1] if len(t) > 1 else None for t in states["tickers"]],
        "action": action,
        "proportion": proportion,
        "position": position,
        "valid": True,
        "history_days": states["history_days"].to_numpy(),
    })[DECISION_COLUMNS]
    if mode == contract.LISTWISE:
        frame["tickers"] = [list(t) for t in states["tickers"]]
    return frame


def decide(name: str, states: pd.DataFrame, returns: pd.DataFrame | None = None, seed: int = 0) -> pd.DataFrame:
    """The decisions of baseline `name` on `states` (one mode); `returns` from past_returns() for the rules that need it."""
    if states.empty:
        raise ValueError(f"baseline {name}: no states to decide on")
    modes = set(states["mode"])
    if len(modes) != 1:
        raise ValueError(f"baseline {name}: states mix modes {sorted(modes)}")
    mode = modes.pop()
    if name == "buy_and_hold":
        return buy_and_hold(states)
    allowed = BASELINES[mode]
    if name not in allowed:
        raise ValueError(f"baseline {name!r} is not one of {allowed} for {mode} states")
    if name in ("momentum", "mean_reversion"):
        if returns is None:
            raise ValueError(f"baseline {name} needs past returns")
        r = states[["state_id"]].merge(returns, on="state_id", how="left")
    if mode == contract.LISTWISE:
        return fixed_decisions(states, name, _rankings(name, states, r if name != "random" else None, seed), np.nan, np.nan)
    if mode == contract.PAIRWISE:
        if name == "random":
            pick_a = _coin(states["state_id"], seed, 2) == 0
        elif name == "always_a":
            pick_a = np.ones(len(states), bool)
        else:
            # A missing history (too early in the data) counts as a zero return: a tie, broken towards A.
            up_a = r["past_return_a"].fillna(0.0).to_numpy() >= r["past_return_b"].fillna(0.0).to_numpy()
            pick_a = up_a if name == "momentum" else ~up_a
        return fixed_decisions(states, name, np.where(pick_a, "A", "B").tolist(), np.where(pick_a, 1.0, 0.0), np.nan)
    if name == "random":
        words = np.array(["sell", "hold", "buy"])[_coin(states["state_id"], seed, 3)]
    elif name == "always_buy":
        words = np.array(["buy"] * len(states))
    else:
        up = r["past_return_a"].fillna(0.0).to_numpy() > 0
        words = np.where(up == (name == "momentum"), "buy", "sell")
    return fixed_decisions(states, name, words.tolist(), np.nan, [contract.POSITIONS[w] for w in words])


def _rankings(name: str, states: pd.DataFrame, returns: pd.DataFrame | None, seed: int) -> list[str]:
    """Listwise actions ('C>A>D>B') of a rule: a seeded shuffle per state, or the legs by past return."""
    out = []
    for i, (state_id, tickers) in enumerate(zip(states["state_id"], states["tickers"])):
        k = len(tickers)
        if name == "random":
            order = np.random.default_rng(int(hashlib.sha256(f"{seed}:{state_id}".encode()).hexdigest()[:15], 16)).permutation(k)
        else:
            past = np.nan_to_num(np.asarray(returns["past_returns"].iloc[i], float), nan=0.0)
            key = -past if name == "momentum" else past
            order = np.argsort(key, kind="stable")  # ties keep the prompt order
        out.append(">".join(contract.LETTERS[j] for j in order))
    return out


def buy_and_hold(states: pd.DataFrame) -> pd.DataFrame:
    """$1 long each distinct stock of each date's states (elementwise 'buy' decisions): the universe, equal weight."""
    rows = sorted({(d, t, h) for d, ts, h in zip(states["decision_date"], states["tickers"], states["history_days"])
                   for t in ts})
    return pd.DataFrame({
        "decision_id": [f"buy_and_hold:{d}:{t}" for d, t, _ in rows],
        "state_id": None,
        "decision_date": [d for d, _, _ in rows],
        "mode": contract.ELEMENTWISE,
        "pair": [t for _, t, _ in rows],
        "ticker_a": [t for _, t, _ in rows],
        "ticker_b": None,
        "action": "buy",
        "proportion": np.nan,
        "position": 1.0,
        "valid": True,
        "history_days": [h for _, _, h in rows],
    })[DECISION_COLUMNS]
