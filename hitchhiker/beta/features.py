"""What the Beta position head reads: a state's numbers (the ones its prompt shows) and, optionally, a frozen LM's
mean-pooled last hidden state over its prompt, cached per (state, model) in `state_embeddings`.

Both come from the `states` table, so they are point-in-time exactly as the prompt is. The numbers are
`states.features["A"]` flattened: scalars as they are, the trend word as +1 / 0 / -1 (UP / FLAT / DOWN), and the
daily lists by lag (`returns_pct[0]` is the decision date's own return, `[1]` the day before, ...). A number the
prompt does not show (a list cut by the token budget, a missing value) reads as 0. The head only takes elementwise
positions, so pairwise states are refused.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import duckdb
import numpy as np
import pandas as pd
import torch

from hitchhiker import contract, db

TREND_VALUES = {"UP": 1.0, "FLAT": 0.0, "DOWN": -1.0}
DEFAULT_EMBEDDING_MODEL = "default"  # shorthand for the default small model (its versioned registry name)


@dataclass(frozen=True)
class FeatureSpec:
    """Which inputs, in which order: the flattened feature names, then (optionally) embedding_dim LM dimensions."""

    names: tuple[str, ...] = field(default_factory=tuple)
    embedding_model: str | None = None  # registry name of the LM (hitchhiker.train.checkpoints.base_model_name)
    embedding_dim: int = 0

    @property
    def n_features(self) -> int:
        return len(self.names) + self.embedding_dim

    def to_json(self) -> dict:
        return {**asdict(self), "names": list(self.names)}

    @classmethod
    def from_json(cls, d: dict) -> "FeatureSpec":
        return cls(tuple(d["names"]), d.get("embedding_model"), int(d.get("embedding_dim", 0)))


def embedding_model_name(model: str | None) -> str | None:
    """The registry name an embedding model is cached under ('default' = the default small model); None: none."""
    if model is None:
        return None
    from hitchhiker.train.checkpoints import base_model_name

    return base_model_name(None if model == DEFAULT_EMBEDDING_MODEL else model)


def load_inputs(con: duckdb.DuckDBPyConnection, state_ids: list[str]) -> pd.DataFrame:
    """The states' rows (sql/beta/state_inputs.sql) in the order given; unknown or pairwise states are errors."""
    df = con.execute(db.sql_text("beta/state_inputs"), {"state_ids": list(state_ids)}).df()
    missing = sorted(set(state_ids) - set(df["state_id"]))
    if missing:
        raise ValueError(f"{len(missing)} state_id(s) not in the states table, e.g. {missing[:3]}")
    pairwise = df.loc[df["mode"] != contract.ELEMENTWISE, "state_id"].tolist()
    if pairwise:
        raise ValueError(f"the Beta head takes elementwise positions; {len(pairwise)} state(s) are pairwise, "
                         f"e.g. {pairwise[0]}")
    df = df.set_index("state_id").loc[list(state_ids)].reset_index()
    df["tickers"] = df["tickers"].map(list)
    df["decision_date"] = pd.to_datetime(df["decision_date"]).dt.date
    return df


def flatten(features: dict | str) -> dict[str, float]:
    """One state's `features` JSON as named numbers (see the module docstring)."""
    if isinstance(features, str):
        features = json.loads(features)
    out: dict[str, float] = {}
    for slot, values in sorted(features.items()):
        for key, v in values.items():
            name = f"{slot}.{key}"
            if isinstance(v, list):
                for lag, x in enumerate(reversed(v)):  # newest last in the prompt: lag 0 is the decision date
                    out[f"{name}[{lag}]"] = _number(x)
            elif key == "trend":
                out[name] = TREND_VALUES.get(v, 0.0)
            elif v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
                out[name] = _number(v)
    return out


def _number(x) -> float:
    return 0.0 if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def infer_spec(con: duckdb.DuckDBPyConnection, state_ids: list[str], embedding_model: str | None = None) -> FeatureSpec:
    """The feature names these states show (their union, sorted) and, with a model, its embedding width."""
    inputs = load_inputs(con, state_ids)
    names = sorted({n for f in inputs["features"] for n in flatten(f)})
    if not names and embedding_model is None:
        raise ValueError("the states show no numeric features and no embedding model was given")
    model = embedding_model_name(embedding_model)
    dim = embeddings(con, state_ids[:1], model).shape[1] if model else 0
    return FeatureSpec(tuple(names), model, dim)


def feature_matrix(con: duckdb.DuckDBPyConnection, spec: FeatureSpec, state_ids: list[str],
                   inputs: pd.DataFrame | None = None) -> torch.Tensor:
    """[len(state_ids), spec.n_features] float32: the named numbers, then the cached (or computed) embedding."""
    inputs = load_inputs(con, state_ids) if inputs is None else inputs
    flat = [flatten(f) for f in inputs["features"]]
    x = np.array([[f.get(n, 0.0) for n in spec.names] for f in flat], dtype=np.float32).reshape(len(flat), len(spec.names))
    if spec.embedding_model:
        e = embeddings(con, list(inputs["state_id"]), spec.embedding_model)
        if e.shape[1] != spec.embedding_dim:
            raise ValueError(f"embedding model {spec.embedding_model} gives {e.shape[1]} dimensions, the head expects "
                             f"{spec.embedding_dim}")
        x = np.concatenate([x, e], axis=1)
    return torch.from_numpy(x)


def embeddings(con: duckdb.DuckDBPyConnection, state_ids: list[str], model: str, batch_size: int = 16) -> np.ndarray:
    """[n, hidden] mean-pooled last hidden states of `model` over each state's chat-templated prompt.

    Read from `state_embeddings`; the missing ones are computed (the model is loaded only then) and stored in one
    transaction, so a second call computes nothing.
    """
    rows = con.execute(db.sql_text("beta/embeddings_cached"), {"state_ids": list(state_ids), "model": model}).fetchall()
    cached = {sid: np.asarray(e, dtype=np.float32) for sid, e in rows}
    todo = [s for s in dict.fromkeys(state_ids) if s not in cached]
    if todo:
        inputs = con.execute("SELECT state_id, messages FROM states WHERE state_id IN (SELECT unnest(?::VARCHAR[]))",
                             [todo]).fetchall()
        messages = {sid: json.loads(m) for sid, m in inputs}
        computed = _embed(model, [messages[s] for s in todo], batch_size)
        now = datetime.now(timezone.utc)
        new = pd.DataFrame({"state_id": todo, "model": model, "dim": computed.shape[1],
                            "embedding": list(computed), "created_at": now})
        con.register("new_embeddings", new)
        try:
            with db.transaction(con):
                con.execute(db.sql_text("beta/embeddings_insert"))
        finally:
            con.unregister("new_embeddings")
        cached.update(zip(todo, computed))
    return np.stack([cached[s] for s in state_ids]) if state_ids else np.zeros((0, 0), np.float32)


@torch.no_grad()
def _embed(model: str, messages: list[list[dict]], batch_size: int) -> np.ndarray:
    """Mean over the prompt's tokens of the model's last hidden state (right padding, masked out of the mean)."""
    from hitchhiker.policy import PolicyConfig, load_policy
    from hitchhiker.train.checkpoints import DEFAULT_BASE

    policy = load_policy(PolicyConfig(model=None if model == DEFAULT_BASE else model, dtype="float32"))
    pad = policy.tokenizer.pad_token_id if policy.tokenizer.pad_token_id is not None else policy.eos_token_ids[0]
    out = []
    for i in range(0, len(messages), batch_size):
        prompts = [policy.prompt_ids(m) for m in messages[i:i + batch_size]]
        width = max(map(len, prompts))
        ids = torch.tensor([p + [pad] * (width - len(p)) for p in prompts], device=policy.device)
        mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts], device=policy.device)
        hidden = policy.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1].float()
        m = mask.unsqueeze(-1).to(hidden.dtype)
        out.append(((hidden * m).sum(1) / m.sum(1)).cpu().numpy())
    return np.concatenate(out).astype(np.float32)
