"""The GRPO loss equals TRL's own on identical tensors; LoRA trains only the adapter; per-row temperatures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hitchhiker.train.config import GRPOConfig
from hitchhiker.train.data import collate
from hitchhiker.train.loss import grpo_loss, per_token_logps
from train_helpers import make_groups, tiny_model_dir

TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def _trl_trainer(model, tokenizer, tmp_path, loss_type, beta, max_len):
    from datasets import Dataset
    from trl import GRPOConfig as TRLConfig, GRPOTrainer

    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    args = TRLConfig(
        output_dir=str(tmp_path / "trl"), temperature=TEMPERATURE, loss_type=loss_type, beta=beta,
        max_completion_length=max_len, per_device_train_batch_size=4, num_generations=4, use_cpu=True,
        report_to="none", epsilon=0.2, vllm_importance_sampling_mode="token_truncate",
        vllm_importance_sampling_clip_max=3.0, bf16=False,  # float32 both sides
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
        train_dataset=Dataset.from_list([{"prompt": "Stock A"}] * 4), processing_class=tokenizer,
    )
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    return trainer


@pytest.mark.parametrize(
    "loss_type,beta,pi_old",
    [("dr_grpo", 0.0, "proximal"), ("grpo", 0.04, "proximal"), ("bnpo", 0.0, "behaviour"), ("dapo", 0.1, "behaviour")],
)
def test_loss_and_gradients_equal_trl(model_dir, tmp_path, loss_type, beta, pi_old):
    from transformers import AutoModelForCausalLM

    from hitchhiker.policy import load_tokenizer

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    groups = make_groups(model_dir, 2, group_size=4, temperature=TEMPERATURE, seed=3)
    rollouts = [r for g in groups for r in g.rollouts]
    max_len = 8
    batch = collate(rollouts, tok.pad_token_id)
    ref_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():  # a reference that differs from the policy, so the KL term is not zero
        for p in ref_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer = _trl_trainer(model, tok, tmp_path, loss_type, beta, max_len)
    cfg = GRPOConfig(loss_type=loss_type, beta=beta, pi_old=pi_old, max_completion_length=max_len, is_cap=3.0)

    with torch.no_grad():
        ref_logps = per_token_logps(ref_model, batch)
    model.zero_grad()
    logps = per_token_logps(model, batch)
    ours, metrics = grpo_loss(logps, batch, cfg, ref_logps=ref_logps, max_completion_length=max_len)
    ours.backward()
    our_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    inputs = {k: batch[k] for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages")}
    inputs["ref_per_token_logps"] = ref_logps
    inputs["num_items_in_batch"] = batch["completion_mask"].sum()
    if pi_old == "behaviour":
        inputs["old_per_token_logps"] = batch["behaviour_logps"]
    else:
        # TRL's sampler correction (its _generate_and_score_completions, token_truncate): exp(old - sampling), capped
        with torch.no_grad():
            old, _, _ = trainer._get_per_token_logps_and_entropies(
                trainer.model, torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1),
                torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1), batch["completion_ids"].size(1))
        diff = (old - batch["behaviour_logps"]) * batch["completion_mask"]
        inputs["importance_sampling_ratio"] = torch.clamp(torch.exp(diff), max=3.0)
        trainer.use_vllm = True
        trainer.vllm_importance_sampling_correction = True
    model.zero_grad()
    theirs = trainer._compute_loss(trainer.model, inputs)
    theirs.backward()
    assert abs(float(ours) - float(theirs)) < 1e-6, (float(ours), float(theirs))
    assert abs(float(ours)) > 1e-4  # a loss of zero would make the comparison empty
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(our_grads[n], p.grad, atol=1e-6), n
    if beta:
        assert metrics["kl"] > 0
    # the clipped-ratio metric is TRL's region clip ratio
    assert abs(metrics["clip_fraction"] - trainer._metrics["train"]["clip_ratio/region_mean"][-1]) < 1e-6


def test_per_row_temperature_matches_scaled_softmax(model_dir):
    from transformers import AutoModelForCausalLM

    from hitchhiker.policy import load_tokenizer

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rollouts = [r for g in make_groups(model_dir, 2, seed=5) for r in g.rollouts]
    batch = collate(rollouts, tok.pad_token_id)
    with torch.no_grad():
        logps = per_token_logps(model, batch)
        for i, r in enumerate(rollouts):  # one row alone, no padding, by hand
            ids = torch.tensor([r.prompt_ids + r.completion_ids])
            logits = model(input_ids=ids).logits[0, len(r.prompt_ids) - 1:-1] / r.temperature
            expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r.completion_ids)[:, None]).squeeze(-1)
            assert torch.allclose(logps[i, : len(r.completion_ids)], expected, atol=1e-5)


def test_lora_gradients_only_reach_the_adapter(model_dir):
    from hitchhiker.policy import load_tokenizer
    from hitchhiker.train.model import load_trainable

    cfg = GRPOConfig(finetune="lora", lora_rank=4, lora_alpha=8)
    model, tok = load_trainable(str(model_dir), None, cfg)
    batch = collate([r for g in make_groups(model_dir, 2, seed=1) for r in g.rollouts], load_tokenizer(model_dir).pad_token_id)
    loss, _ = grpo_loss(per_token_logps(model, batch), batch, cfg)
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    # full fine-tuning: the base weights get gradients too
    full, _ = load_trainable(str(model_dir), None, GRPOConfig(finetune="full"))
    loss, _ = grpo_loss(per_token_logps(full, batch), batch, cfg)
    loss.backward()
    assert full.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="loss_type"):
        GRPOConfig(loss_type="ppo").check()
    with pytest.raises(ValueError, match="groups_per_step"):
        GRPOConfig(groups_per_step=6, groups_per_micro_batch=4).check()


def test_groups_from_the_real_buffer_train_and_tensorboard(model_dir, tmp_path):
    from hitchhiker import registry as ckpts
    from hitchhiker.batches import load_groups
    from hitchhiker.batches import plan_groups, train_grpo
    from train_helpers import scripted_buffer

    con, _, state_ids, version = scripted_buffer(tmp_path, model_dir, n_days=22)
    groups = load_groups(con, policy_version=version)
    assert len(groups) == len(state_ids)
    for g in groups:  # advantages from the SQL view: centred per group, the invalid answer gets the penalty
        advs = [r.advantage for r in g.rollouts]
        assert abs(sum(advs)) < 1e-9 and not g.zero_variance
        assert [r.valid for r in g.rollouts] == [True, True, True, False]
        assert g.rollouts[-1].reward_usd == -0.02  # the rewards stage's default invalid penalty
    cfg = GRPOConfig(finetune="lora", lora_rank=4, lora_alpha=8, groups_per_step=4, groups_per_micro_batch=2)
    res = train_grpo(con, cfg, tmp_path / "run", base_model=str(model_dir))  # plans every matured group itself
    assert sorted(res.groups_used) == sorted(g.group_id for g in groups)
    assert plan_groups(con, cfg, parent_id=res.checkpoint_id) == []  # the lineage has consumed them all
    from hitchhiker.batches import default_reward_spec

    assert ckpts.get(con, res.checkpoint_id)["reward_spec"] == default_reward_spec()
    m = res.metrics[0]
    assert m["valid_rate"] == 0.75 and m["zero_variance_fraction"] == 0.0 and m["reward_std"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for name in ("loss", "reward_mean", "reward_std", "kl", "clip_fraction", "valid_rate", "zero_variance_fraction"):
        assert f"train/{name}" in tags


def test_shared_prompt_logps_equal_full_forward(model_dir):
    from transformers import AutoModelForCausalLM

    from hitchhiker.policy import load_tokenizer
    from hitchhiker.train.loss import per_token_logps_shared_prompt

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rollouts = [r for g in make_groups(model_dir, 3, group_size=4, seed=7) for r in g.rollouts]
    batch = collate(rollouts, tok.pad_token_id, share_prompts=True)
    assert batch["group_prompt_ids"].size(0) <= 3 and batch["row_group"].tolist()[:4] == [0, 0, 0, 0]
    full = per_token_logps(model, batch)
    full.sum().backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    shared = per_token_logps_shared_prompt(model, batch)
    shared.sum().backward()
    mask = batch["completion_mask"].bool()
    assert torch.allclose(full[mask], shared[mask], atol=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(full_grads[n], p.grad, atol=1e-4), n


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU (gloo) stand-in for multi-GPU; with CUDA use accelerate launch")
def test_two_processes_under_torchrun_share_each_step(model_dir, tmp_path):
    """The multi-GPU path (accelerate + DDP), run on CPU with gloo: each process takes half of every step's groups,
    the main one writes the plan, checkpoints and registry."""
    import os
    import subprocess
    import sys
    import textwrap

    from hitchhiker import db
    from hitchhiker import registry as ckpts

    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from accelerate import PartialState
        from hitchhiker import db
        from hitchhiker.train.config import GRPOConfig
        from hitchhiker.batches import train_grpo
        from train_helpers import make_groups
        state = PartialState(cpu=True)
        con = db.connect({str(tmp_path / "d.duckdb")!r}) if state.is_main_process else None
        res = train_grpo(con, GRPOConfig(finetune="full", groups_per_step=4, groups_per_micro_batch=2, max_completion_length=8),
                         {str(tmp_path / "run")!r}, groups=make_groups({str(model_dir)!r}, 8, seed=1), base_model={str(model_dir)!r})
        print(f"rank {{state.process_index}} of {{state.num_processes}}: {{len(res.metrics)}} steps", flush=True)
    """))
    torchrun = Path(sys.executable).parent / "torchrun"
    p = subprocess.run([str(torchrun), "--nproc_per_node", "2", str(script)], capture_output=True, text=True,
                       timeout=600, env=os.environ)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "rank 0 of 2: 2 steps" in p.stdout and "rank 1 of 2: 2 steps" in p.stdout
    con = db.connect(tmp_path / "d.duckdb", read_only=True)
    last = con.execute("SELECT checkpoint_id FROM checkpoints ORDER BY step DESC LIMIT 1").fetchone()[0]
    assert len(ckpts.lineage_groups(con, last)) == 8
