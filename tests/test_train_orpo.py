"""ORPO from the buffer's DPO pairs (TRL's ORPOTrainer, no reference model): a checkpoint registered with its lineage,
then evaluated by the evaluation stage on a later window."""
from __future__ import annotations

import math
from datetime import timedelta

import pytest
from safetensors.torch import load_file

from hitchhiker import registry, storage
from hitchhiker.batches import default_reward_spec, preference_pairs, train_orpo, write_pairs_batch
from hitchhiker.train.config import DPOConfig, ORPOConfig
from hitchhiker.train.preference import train_dpo_batch, train_orpo_batch
from train_helpers import scripted_buffer


@pytest.fixture(scope="module")
def model_dir():
    from hitchhiker.default_model import default_model_path

    return default_model_path()  # the default small model (built once, cached)


def _adapter(path) -> dict:
    return load_file(f"{path}/adapter_model.safetensors")


def test_orpo_trains_from_buffer_pairs_registers_and_is_evaluated(model_dir, tmp_path):
    from hitchhiker.evaluate import EvalConfig, evaluate, training_cutoff

    con, _, state_ids, _ = scripted_buffer(tmp_path, model_dir, n_days=30)
    spec = default_reward_spec()
    dates = dict(con.execute("SELECT DISTINCT group_id, decision_date FROM replay").fetchall())
    pairs = sorted(preference_pairs(con, spec, margin_usd=0.005), key=lambda p: (dates[p["group_id"]], p["group_id"]))
    assert len(pairs) == len(state_ids) == 18
    first, second = pairs[:6], pairs[6:12]  # the last 8 dates are left for the evaluation window

    cfg = ORPOConfig(finetune="lora", lora_rank=4, lora_alpha=8, batch_size=3, learning_rate=5e-3, reward_spec=spec)
    parent = train_orpo(con, cfg, tmp_path / "orpo1", pairs=first)
    child = train_orpo(con, cfg, tmp_path / "orpo2", parent_id=parent.checkpoint_id, pairs=second)
    row = registry.get(con, child.checkpoint_id)
    assert row["algorithm"] == "orpo" and row["finetune"] == "lora" and row["step"] == 2
    assert child.checkpoint_id.startswith("orpo-") and row["parent_id"] == parent.checkpoint_id
    assert registry.get(con, parent.checkpoint_id)["parent_id"] is None
    assert sorted(registry.lineage_groups(con, child.checkpoint_id)) == sorted(p["group_id"] for p in first + second)
    run_url = storage.absolute(tmp_path / "orpo2")
    assert con.execute("SELECT algorithm FROM train_runs WHERE run_url = ?", [run_url]).fetchone() == ("orpo",)

    # TRL's ORPO loss: the chosen answers' NLL minus lambda (beta) times mean log sigmoid(log odds ratio)
    m = child.metrics[0]
    assert math.isfinite(m["first_loss"]) and m["first_loss"] > 0 and m["pairs"] == 6 and m["steps"] == 2
    assert m["last_loss"] == pytest.approx(m["nll_loss"] - cfg.beta * m["log_odds_ratio"], abs=1e-3)
    trained, before = _adapter(child.path), _adapter(parent.path)
    assert trained.keys() == before.keys()
    assert any(not trained[k].equal(before[k]) for k in trained)  # the child's weights moved from its parent's

    # idempotent: the same run again returns its checkpoint and registers nothing new
    again = train_orpo(con, cfg, tmp_path / "orpo2", parent_id=parent.checkpoint_id, pairs=second)
    assert again.checkpoint_id == child.checkpoint_id
    assert con.execute("SELECT count(*) FROM checkpoints").fetchone() == (2,)

    # a batch of another algorithm is refused by name, either way round
    dpo_batch = write_pairs_batch(con, DPOConfig(reward_spec=spec), str(tmp_path / "batches"), pairs=first)
    with pytest.raises(ValueError, match="is a dpo batch, not orpo"):
        train_orpo_batch(dpo_batch, tmp_path / "wrong")
    orpo_batch = con.execute("SELECT batch_url FROM train_runs WHERE algorithm = 'orpo' LIMIT 1").fetchone()[0]
    with pytest.raises(ValueError, match="is a orpo batch, not dpo"):
        train_dpo_batch(orpo_batch, tmp_path / "wrong")

    # the evaluation stage takes the ORPO checkpoint like any other, on dates after its training rewards exit
    _, exit_date = training_cutoff(con, child.checkpoint_id)
    start, end = exit_date + timedelta(days=1), max(dates.values())
    run = evaluate(con, child.checkpoint_id, start, end,
                   EvalConfig(style="trend", n_boot=50, reports_dir=str(tmp_path / "reports")))
    assert run.kinds[child.checkpoint_id] == "checkpoint" and run.n_states >= 4
    assert run.summaries[child.checkpoint_id]["n_decisions"] == run.n_states
    assert con.execute("SELECT subject_kind FROM evaluations WHERE subject = ?", [child.checkpoint_id]).fetchall() \
        == [("checkpoint",)]
