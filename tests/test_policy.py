"""The policy: LoRA adapter checkpoints on the default small model, no default-model build when another base is
named, and clear errors (the default model itself: test_default_model.py)."""
from __future__ import annotations

import json

import pytest
import torch

from hitchhiker import default_model
from hitchhiker.default_model import default_model_path
from hitchhiker.policy import CHECKPOINT_META, PolicyConfig, load_policy
from train_helpers import tiny_model_dir


@pytest.fixture(scope="module")
def default_policy():
    return load_policy()


def _adapter(model, path, checkpoint_id: str, seed: int = 0):
    """Save a LoRA adapter with non-zero weights (a fresh adapter is the identity) as a hitchhiker checkpoint."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(path)
    (path / CHECKPOINT_META).write_text(json.dumps({"checkpoint_id": checkpoint_id}))
    return peft_model


def test_a_lora_adapter_checkpoint_loads_on_the_default_model(default_policy, tmp_path):
    from transformers import AutoModelForCausalLM

    ckpt = tmp_path / "run" / "ckpt-1"
    peft_model = _adapter(AutoModelForCausalLM.from_pretrained(default_model_path()), ckpt, "grpo-test-step000001")
    pol = load_policy(PolicyConfig(checkpoint=str(ckpt)))
    assert pol.policy_version == "grpo-test-step000001" and pol.adapter_path == str(ckpt)
    ids = torch.tensor([default_policy.prompt_ids([{"role": "user", "content": "Stock A trend: UP. Stock B trend: DOWN."}])])
    with torch.no_grad():
        loaded, expected, base = (m(input_ids=ids).logits for m in (pol.model, peft_model.eval(), default_policy.model))
    assert torch.allclose(loaded, expected, atol=1e-5)
    assert not torch.allclose(loaded, base, atol=1e-3)  # the adapter is applied
    assert load_policy(PolicyConfig(checkpoint=str(ckpt), checkpoint_id="named")).policy_version == "named"


def test_no_default_model_is_built_when_another_base_is_named(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    tiny = tiny_model_dir(tmp_path / "tiny")
    ckpt = tmp_path / "ckpt"
    _adapter(AutoModelForCausalLM.from_pretrained(tiny), ckpt, "on-tiny")  # the adapter names `tiny` as its base
    monkeypatch.setenv("HITCHHIKER_HOME", str(tmp_path / "empty-home"))

    def no_build(*args, **kwargs):
        raise AssertionError("the default model was built")

    monkeypatch.setattr(default_model, "build_default_model", no_build)
    assert load_policy(PolicyConfig(model=str(tiny))).policy_version == f"base:{tiny}"
    pol = load_policy(PolicyConfig(checkpoint=str(ckpt)))
    assert pol.policy_version == "on-tiny" and pol.model_path == str(tiny)
    assert not (tmp_path / "empty-home").exists()


def test_bad_model_and_checkpoint_paths_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_policy(PolicyConfig(model=str(tmp_path / "no-such-model")))
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(FileNotFoundError, match="not-a-model.*config.json"):
        load_policy(PolicyConfig(model=str(tmp_path / "not-a-model")))
    with pytest.raises(FileNotFoundError, match="nobody-org/no-such-hub-model"):
        load_policy(PolicyConfig(model="nobody-org/no-such-hub-model"))  # offline in tests: not cached, not reachable
    with pytest.raises(FileNotFoundError, match="missing-ckpt"):
        load_policy(PolicyConfig(model=str(tiny_model_dir(tmp_path / "tiny")), checkpoint=str(tmp_path / "missing-ckpt")))
    with pytest.raises(FileNotFoundError, match="not-a-model.*neither"):
        load_policy(PolicyConfig(model=str(tiny_model_dir(tmp_path / "tiny")), checkpoint=str(tmp_path / "not-a-model")))
    with pytest.raises(ValueError, match="float8"):
        load_policy(PolicyConfig(dtype="float8"))
