"""DPO from the buffer: pairs are the best and worst valid completions of a group; training registers a checkpoint."""
from __future__ import annotations

import pytest

from hitchhiker import registry as ckpts
from hitchhiker.train.config import DPOConfig
from hitchhiker.batches import default_reward_spec
from hitchhiker.batches import preference_pairs, train_dpo
from train_helpers import scripted_buffer, tiny_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def test_dpo_pairs_from_buffer_train_and_register(model_dir, tmp_path):
    con, _, state_ids, _ = scripted_buffer(tmp_path, model_dir, n_days=24)
    spec = default_reward_spec()
    pairs = preference_pairs(con, spec, margin_usd=0.005)
    assert len(pairs) == len(state_ids)  # every group has an A and a B answer, paid very differently
    for p in pairs:
        assert p["chosen_reward_usd"] - p["rejected_reward_usd"] > 0.005
        assert p["chosen"][0]["content"] != p["rejected"][0]["content"]  # the invalid completion is never in a pair
        assert {p["chosen"][0]["content"], p["rejected"][0]["content"]} == {"ACTION: A", "ACTION: B"}
    # the chosen answer is the one the market paid: the stock whose trend word was UP
    up = {sid: feat for sid, feat in con.execute("SELECT state_id, features->>'$.A.trend' FROM states").fetchall()}
    for p in pairs:
        sid = con.execute("SELECT state_id FROM replay WHERE group_id = ? LIMIT 1", [p["group_id"]]).fetchone()[0]
        assert p["chosen"][0]["content"] == ("ACTION: A" if up[sid] == "UP" else "ACTION: B")
    assert preference_pairs(con, spec, margin_usd=1.0) == []  # a margin larger than any difference: no pair

    cfg = DPOConfig(finetune="lora", lora_rank=4, lora_alpha=8, batch_size=4, learning_rate=5e-3, epochs=2, reward_spec=spec)
    res = train_dpo(con, cfg, tmp_path / "dpo", base_model=str(model_dir))
    row = ckpts.get(con, res.checkpoint_id)
    assert row["algorithm"] == "dpo" and row["finetune"] == "lora" and row["step"] > 0
    assert sorted(row["groups_used"]) == sorted(p["group_id"] for p in pairs)
    assert (tmp_path / "dpo" / res.checkpoint_id / "adapter_config.json").is_file()
    metrics = res.metrics[0]
    assert metrics["loss"] < metrics["first_loss"]  # the preference was learned, at least on the training pairs
    # the pairs are consumed: a child run from this checkpoint has nothing left to train on
    with pytest.raises(ValueError, match="no preference pairs"):
        train_dpo(con, cfg, tmp_path / "dpo2", parent_id=res.checkpoint_id)
