"""The vLLM sampler (extra `[vllm]`, GPU only): the same interface and the same stored quantities as
hitchhiker.rollouts.sample_token_groups, with vLLM's paged attention and continuous batching.

- One request per sample, each with its own SamplingParams (temperature, seed): a group's B samples are B requests
  on the same prompt token ids. vLLM's `n=B` would share one SamplingParams, hence one temperature, across the
  group; with one request per sample, automatic prefix caching still computes the group's prompt once.
- `logprobs=0` returns the log-probability of the sampled token only. The engine runs with
  `logprobs_mode="processed_logprobs"`: vLLM's default (`raw_logprobs`) reports log_softmax of the raw logits,
  before temperature and top-p, which is not the distribution the token was drawn from. Processed log-probs are
  log_softmax(logits / temperature), renormalized over the top-p nucleus when top_p < 1, exactly what
  sample_token_groups stores (GRPO's pi_old; TRL configures its own vLLM engines the same way).
- Penalties, top-k and min-p stay at their defaults (off), so nothing else reshapes the distribution.

Not exercised by the CPU test suite (vLLM needs a GPU); selecting it without vLLM installed is a clear error.
"""
from __future__ import annotations

import torch

# The HF copy of the policy stays on the GPU beside the engine (training, evaluation and the tokenizer use it), so
# the engine takes a share of the memory instead of vLLM's default 0.9.
GPU_MEMORY_UTILIZATION = 0.6


class VLLMSampler:
    """Callable like sample_token_groups(policy, prompts, temperatures, generators, config)."""

    def __init__(self, policy):
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError(
                "the vLLM backend (SamplingConfig(backend='vllm')) needs the optional extra [vllm] on a CUDA machine: "
                "pip install -e '.[vllm]'"
            ) from e
        if not torch.cuda.is_available():
            raise RuntimeError("the vLLM backend needs a CUDA GPU; use backend='hf' on CPU")
        if policy.model_path is None:
            raise ValueError("the vLLM backend loads the weights itself: load the policy with hitchhiker.policy.load_policy")
        kwargs = {}
        if policy.adapter_path is not None:
            kwargs = {"enable_lora": True, "max_lora_rank": _lora_rank(policy.adapter_path)}
        self.llm = LLM(
            model=policy.model_path,
            dtype=str(next(policy.model.parameters()).dtype).removeprefix("torch."),
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,
            skip_tokenizer_init=True,  # prompts go in as token ids; the policy's tokenizer decodes
            gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
            **kwargs,
        )
        self.lora = None
        if policy.adapter_path is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest(policy.policy_version, 1, policy.adapter_path)

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
        outputs = self.llm.generate(requests, sampling_params=params, lora_request=self.lora, use_tqdm=False)
        samples = []
        for out in outputs:
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            samples.append((ids, [float(step[t].logprob) for t, step in zip(ids, completion.logprobs)]))
        group_size = temperatures.shape[1]
        return [samples[g * group_size:(g + 1) * group_size] for g in range(len(prompts))]


def _lora_rank(adapter_path: str) -> int:
    import json
    from pathlib import Path

    return int(json.loads((Path(adapter_path) / "adapter_config.json").read_text())["r"])
