"""The Beta head's inputs: the numbers the prompt shows, point-in-time, and cached frozen-LM embeddings."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hitchhiker.beta import features as beta_features
from hitchhiker.beta.features import FeatureSpec, feature_matrix, flatten, infer_spec, load_inputs

from beta_helpers import synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    con, ids, market = synthetic_store(tmp_path_factory.mktemp("features") / "f.duckdb", n_days=40)
    yield con, ids
    con.close()


def test_flatten_reads_scalars_trend_and_lists_by_lag():
    f = {"A": {"returns_pct": [1.5, -2.0, 0.25], "volume_changes_pct": [None, 3.0, 1.0], "trend": "DOWN",
               "trend_return_pct": -1.2, "history_days": 3, "headlines": 2}}
    flat = flatten(json.dumps(f))
    assert flat["A.returns_pct[0]"] == 0.25 and flat["A.returns_pct[2]"] == 1.5  # lag 0: the decision date
    assert flat["A.volume_changes_pct[2]"] == 0.0  # not shown: 0
    assert flat["A.trend"] == -1.0 and flatten({"A": {"trend": "UP"}})["A.trend"] == 1.0
    assert flat["A.trend_return_pct"] == -1.2 and flat["A.headlines"] == 2.0
    assert len(flat) == 10


def test_features_are_the_numbers_the_prompt_shows(store):
    con, ids = store
    spec = infer_spec(con, ids)
    assert spec.embedding_model is None and "A.trend_return_pct" in spec.names and "A.returns_pct[0]" in spec.names
    x = feature_matrix(con, spec, ids)
    assert x.shape == (len(ids), len(spec.names)) and x.dtype == torch.float32
    (features, messages), = con.execute("SELECT features, messages FROM states WHERE state_id = ?", [ids[-1]]).fetchall()
    shown = json.loads(features)["A"]
    row = dict(zip(spec.names, x[-1].tolist()))
    assert row["A.trend_return_pct"] == pytest.approx(shown["trend_return_pct"])
    assert row["A.returns_pct[0]"] == pytest.approx(shown["returns_pct"][-1])
    assert f"{shown['returns_pct'][-1]:+.2f}" in json.loads(messages)[1]["content"]  # the prompt shows that number
    # order follows the ids given; an unknown feature name reads 0
    other = FeatureSpec(("A.trend", "nope"))
    assert torch.equal(feature_matrix(con, other, ids[::-1])[:, 0], x[:, spec.names.index("A.trend")].flip(0))
    assert (feature_matrix(con, other, ids)[:, 1] == 0).all()
    assert FeatureSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_unknown_and_pairwise_states_are_refused(store):
    con, ids = store
    with pytest.raises(ValueError, match="not in the states table"):
        load_inputs(con, [ids[0], "no-such-state"])
    con.execute("CREATE TEMP TABLE pairwise_copy AS SELECT * FROM states LIMIT 1")
    con.execute("UPDATE pairwise_copy SET state_id = 'pw', mode = 'pairwise'")
    con.execute("INSERT INTO states SELECT * FROM pairwise_copy")
    try:
        with pytest.raises(ValueError, match="elementwise positions.*pw"):
            load_inputs(con, [ids[0], "pw"])
    finally:
        con.execute("DELETE FROM states WHERE state_id = 'pw'")


def test_embeddings_are_mean_pooled_last_hidden_states_cached_per_state(store, monkeypatch):
    from hitchhiker.policy import PolicyConfig, load_policy

    con, ids = store
    some = ids[:5]
    spec = infer_spec(con, some, embedding_model="default")
    assert spec.embedding_model.startswith("hitchhiker-tiny@") and spec.embedding_dim > 0
    x = feature_matrix(con, spec, some)
    assert x.shape == (5, len(spec.names) + spec.embedding_dim)
    stored = con.execute("SELECT count(*), min(dim) FROM state_embeddings WHERE model = ?", [spec.embedding_model]).fetchall()
    assert stored == [(5, spec.embedding_dim)]
    # the last state's embedding, recomputed by hand without padding: mean of the last hidden state over its prompt
    policy = load_policy(PolicyConfig(dtype="float32"))
    (messages,), = con.execute("SELECT messages FROM states WHERE state_id = ?", [some[-1]]).fetchall()
    ids_ = torch.tensor([policy.prompt_ids(json.loads(messages))])
    with torch.no_grad():
        hidden = policy.model(input_ids=ids_, output_hidden_states=True).hidden_states[-1][0]
    np.testing.assert_allclose(x[-1, len(spec.names):].numpy(), hidden.mean(0).numpy(), rtol=1e-4, atol=1e-5)
    # cached: a second read computes nothing (the model is not even loaded)
    monkeypatch.setattr(beta_features, "_embed", lambda *a, **k: pytest.fail("recomputed a cached embedding"))
    assert torch.equal(feature_matrix(con, spec, some), x)
