"""The policy: any causal LM (Hugging Face id or local path, optionally a hitchhiker checkpoint on top), and the
default small model that is built locally, offline, the first time it is needed.

The default model exists so that the whole loop runs on a laptop CPU and in tests: a word-level tokenizer trained
on the project's own prompts (hitchhiker.states.example_prompts), a 2-layer Llama of width 128, and a format
warm-up with TRL's SFTTrainer on completions whose actions are drawn at random, so it writes `ACTION: A` in the
contract's format (it learns the format, not the answer; GRPO teaches the answer). Real models are one flag away:
`PolicyConfig(model="Qwen/Qwen2.5-0.5B-Instruct")`.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from hitchhiker import contract

# Bump when anything below changes what the default model is: the cache is keyed by it.
BUILDER_VERSION = "tiny-llama-v3"
# The format warm-up sees each prompt's last lines only (see _prompt_tail).
WARMUP_PROMPT_CHARS = 400
DEFAULT_MODEL_NAME = "hitchhiker-tiny"
# A checkpoint directory may name its id here; otherwise the directory name is the id.
CHECKPOINT_META = "hitchhiker_checkpoint.json"

# The chat template of the default model: one role token, a newline, the content, an end token. No newline after
# <|end|>, so a completion is exactly `ACTION: A<|end|>` (4 tokens) and the prompt alone is a prefix of prompt +
# completion (what SFTTrainer and the sampler both rely on).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


@dataclass
class PolicyConfig:
    """Which model samples: a hub id or local path (None = the default small model), and a checkpoint on top."""

    model: str | None = None
    # A hitchhiker checkpoint: a local folder or a committed folder on shared storage (s3://...), holding a peft LoRA
    # adapter (adapter_config.json) or full weights (config.json).
    checkpoint: str | None = None
    # The policy_version to record; default: the checkpoint's id (CHECKPOINT_META or its directory name).
    checkpoint_id: str | None = None
    dtype: str = "auto"  # auto = bfloat16 on CUDA, float32 on CPU; or float32 / bfloat16 / float16
    device: str = "auto"  # auto = cuda when available, else cpu; or any torch device string


@dataclass
class Policy:
    """A loaded model with its tokenizer and the version string written into every rollout it samples."""

    model: torch.nn.Module
    tokenizer: object
    policy_version: str
    device: torch.device
    # Where the weights came from, for engines that load them themselves (hitchhiker.vllm_backend): the base model
    # (or full-weights checkpoint) folder or hub id, and a LoRA adapter folder on top of it.
    model_path: str | None = None
    adapter_path: str | None = None

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of the chat-templated prompt, ending where the assistant's answer begins."""
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))

    @property
    def eos_token_ids(self) -> list[int]:
        """Every token that ends a completion (the tokenizer's eos and the generation config's)."""
        ids = {self.tokenizer.eos_token_id}
        gen = getattr(self.model, "generation_config", None)
        extra = gen.eos_token_id if gen is not None else None
        ids.update(extra if isinstance(extra, list) else [extra])
        return sorted(i for i in ids if i is not None)


def hitchhiker_home() -> Path:
    """Where built models are cached: $HITCHHIKER_HOME, else ~/.cache/hitchhiker."""
    return Path(os.environ.get("HITCHHIKER_HOME") or Path.home() / ".cache" / "hitchhiker")


def default_model_cached() -> bool:
    """Whether the default small model of this BUILDER_VERSION is already built (default_model_path returns at once)."""
    return (_default_model_dir() / "config.json").is_file()


def _default_model_dir() -> Path:
    return hitchhiker_home() / "models" / BUILDER_VERSION


def default_model_path() -> Path:
    """The default small model's folder (model + tokenizer), built once per BUILDER_VERSION and cached."""
    target = _default_model_dir()
    if default_model_cached():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{BUILDER_VERSION}.lock"):
        if default_model_cached():  # another process built it while we waited
            return target
        work = Path(tempfile.mkdtemp(prefix=f".{BUILDER_VERSION}-", dir=target.parent))
        try:
            build_default_model(work)
            os.replace(work, target)  # a killed build leaves only a hidden temp folder, never a half model
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def load_tokenizer(name_or_path: str | os.PathLike | None = None):
    """The tokenizer of a model (None = the default small model), with a pad token set."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(name_or_path or default_model_path()))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(config: PolicyConfig = PolicyConfig()) -> Policy:
    """Load the model (and checkpoint) on the configured device and dtype, in eval mode.

    The default small model is built (or read from its cache) only when nothing else names the base: not when
    `config.model` is given, nor when an adapter checkpoint names a base that can be loaded here.
    """
    device = _device(config.device)
    dtype = _dtype(config.dtype, device)
    if config.model is not None:
        _check_model_name(config.model)
    ckpt = None
    if config.checkpoint and "://" in str(config.checkpoint):  # on shared storage: a local, sha256-checked copy
        from hitchhiker import storage

        ckpt = storage.fetch_dir(str(config.checkpoint))
    elif config.checkpoint:
        ckpt = Path(config.checkpoint)
    if ckpt is None:
        base = config.model or str(default_model_path())
        model, tokenizer = _from_pretrained(base, dtype), load_tokenizer(base)
        version = f"base:{config.model or DEFAULT_MODEL_NAME + '@' + BUILDER_VERSION}"
        model_path, adapter_path = base, None
    elif not ckpt.is_dir():
        raise FileNotFoundError(f"checkpoint {ckpt} is not a directory")
    elif (ckpt / "adapter_config.json").is_file():
        from peft import PeftModel

        base = config.model or _adapter_base(ckpt) or str(default_model_path())
        model = PeftModel.from_pretrained(_from_pretrained(base, dtype), str(ckpt))
        tokenizer = load_tokenizer(ckpt if (ckpt / "tokenizer_config.json").is_file() else base)
        version = config.checkpoint_id or _checkpoint_id(ckpt)
        model_path, adapter_path = base, str(ckpt)
    elif (ckpt / "config.json").is_file():
        model = _from_pretrained(str(ckpt), dtype)
        has_tokenizer = (ckpt / "tokenizer_config.json").is_file()
        tokenizer = load_tokenizer(ckpt if has_tokenizer else config.model or default_model_path())
        version = config.checkpoint_id or _checkpoint_id(ckpt)
        model_path, adapter_path = str(ckpt), None
    else:
        raise FileNotFoundError(f"checkpoint {ckpt} holds neither a peft adapter (adapter_config.json) nor full weights (config.json)")
    model.to(device).eval()
    return Policy(model=model, tokenizer=tokenizer, policy_version=version, device=device, model_path=model_path,
                  adapter_path=adapter_path)


def _check_model_name(model: str) -> None:
    """A local path that does not exist is an error naming it (not a confusing hub lookup of a path)."""
    p = Path(model).expanduser()
    if (p.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1) and not p.exists():
        raise FileNotFoundError(f"model {model!r}: no such local folder")
    if p.exists() and not (p / "config.json").is_file():
        raise FileNotFoundError(f"model {model!r} is a local path without config.json: not a model folder")


def _from_pretrained(name_or_path: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    except OSError as e:  # hub id unknown or offline: transformers' message is long; lead with the name
        raise FileNotFoundError(f"model {name_or_path!r} could not be loaded (not a local model folder, and not in "
                                f"the Hugging Face cache or reachable on the hub): {e}") from e


def _adapter_base(ckpt: Path) -> str | None:
    """The base an adapter names, when it can be loaded here: a hub id or a folder that exists on this machine.
    The default model's folder is machine-specific (under HITCHHIKER_HOME), so a path from elsewhere is ignored."""
    named = json.loads((ckpt / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if named and (Path(named).exists() or not Path(named).is_absolute()):
        return named
    return None


def _checkpoint_id(ckpt: Path) -> str:
    meta = ckpt / CHECKPOINT_META
    if meta.is_file():
        return str(json.loads(meta.read_text())["checkpoint_id"])
    return ckpt.name


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"dtype {name!r} is not one of {['auto', *dtypes]}")
    return dtypes[name]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released by the OS if this process dies
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- building the default small model --------------------------------------------------------------------------


def build_default_model(out_dir: Path, seed: int = 0, n_prompts: int = 2000, warmup_steps: int = 120,
                        batch_size: int = 32) -> Path:
    """Train the tokenizer, create the Llama, warm it up on the output format, and save both to out_dir."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    rng = random.Random(seed)
    prompts = _prompt_corpus(n_prompts, seed)
    examples = [
        {"prompt": [{"role": "user", "content": _prompt_tail(p)}],
         "completion": [{"role": "assistant", "content": _random_completion(p, rng)}]}
        for p in prompts
    ]
    tokenizer = build_tokenizer(prompts + [e["completion"][0]["content"] for e in examples] + _contract_texts())
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    threads = torch.get_num_threads()
    # Matrices of width 128 are too small to split across threads: one thread is faster, and on a busy machine
    # (CI, shared cores) several spinning threads are many times slower.
    torch.set_num_threads(1)
    try:
        _format_warmup(model, tokenizer, examples, out_dir / "warmup", seed, warmup_steps, batch_size)
    finally:
        torch.set_num_threads(threads)
    shutil.rmtree(out_dir / "warmup", ignore_errors=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "hitchhiker_model.json").write_text(
        json.dumps({"builder_version": BUILDER_VERSION, "seed": seed, "n_prompts": len(prompts), "warmup_steps": warmup_steps}, indent=1)
    )
    return out_dir


def build_tokenizer(texts: list[str]):
    """A word-level tokenizer trained on texts: digits one per token, punctuation apart, spaces kept for decoding."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    # Metaspace marks a word that follows a space ("▁UP"), so decode(encode(text)) == text for in-vocabulary text:
    # numbers like "0.70" must survive the round trip for the parser.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n"), "isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
        pre_tokenizers.Punctuation("isolated"),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<|end|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
        padding_side="left",
    )


def _format_warmup(model, tokenizer, examples: list[dict], work_dir: Path, seed: int, steps: int, batch_size: int) -> None:
    """A few seconds of SFT on random-action completions: the model learns to write the format."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(work_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=3e-3,
        lr_scheduler_type="cosine",
        warmup_steps=10,
        logging_steps=50,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        max_length=512,
        completion_only_loss=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        # TRL's defaults are for GPUs: bf16 autocast and activation checkpointing make this tiny model's CPU step
        # over ten times slower, so both are off unless there is a GPU to use them on.
        bf16=torch.cuda.is_available(),
        gradient_checkpointing=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer)
    trainer.train()
    model.cpu().eval()


def _prompt_tail(prompt: str, max_chars: int = WARMUP_PROMPT_CHARS) -> str:
    """The prompt's last whole lines, up to max_chars: the answer format is asked for at the end of every prompt.

    Warming up on tails instead of whole prompts cuts the build from minutes to seconds (the cost is the prompt
    tokens, the loss is on the 4 completion tokens); the rotary positions are relative, so the learned format
    carries over to the full-length prompts (tests/test_policy.py checks valid output on real full prompts).
    """
    lines, size = [], 0
    for line in reversed(prompt.split("\n")):
        if lines and size + len(line) + 1 > max_chars:
            break
        lines.append(line)
        size += len(line) + 1
    return "\n".join(reversed(lines))


def _random_completion(prompt: str, rng: random.Random) -> str:
    """An answer in the format this prompt asks for, with the action drawn at random (format, not answer)."""
    if "ACTION: A 0.70" in prompt:
        return f"ACTION: {rng.choice('AB')} {rng.choice(range(0, 101, 5)) / 100:.2f}"
    if "ACTION: 1.25" in prompt:
        return f"ACTION: {rng.choice(range(0, 201, 25)) / 100:.2f}"
    if "ACTION: buy" in prompt:
        return f"ACTION: {rng.choice(['buy', 'hold', 'sell'])}"
    return f"ACTION: {rng.choice('AB')}"


def _contract_texts() -> list[str]:
    """Every instruction variant and answer word, so the vocabulary covers the whole contract."""
    texts = []
    for mode in contract.MODES:
        for h in (1, 2, 5, 10, 20):
            for flag in (False, True):
                texts.append(contract.instructions(mode, h, with_proportion=flag, numeric_position=flag))
    texts += ["ACTION: A", "ACTION: B", "ACTION: buy", "ACTION: hold", "ACTION: sell", " 0123456789 ", "ACTION: A 0.70"]
    return texts


def _prompt_corpus(n: int, seed: int) -> list[str]:
    """The project's own prompts (rendered by the states stage from synthetic numbers)."""
    from hitchhiker.states import example_prompts

    return list(example_prompts(n, seed=seed))

