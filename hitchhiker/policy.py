"""The policy: any causal LM (Hugging Face id or local path, optionally a hitchhiker checkpoint on top), loaded on
a device with its tokenizer. Without a model named, the base is the default small model (hitchhiker.default_model,
built on first use). Real models are one flag away: `PolicyConfig(model="Qwen/Qwen2.5-0.5B-Instruct")`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from hitchhiker.default_model import BUILDER_VERSION, DEFAULT_MODEL_NAME, default_model_path

# A checkpoint directory may name its id here; otherwise the directory name is the id.
CHECKPOINT_META = "hitchhiker_checkpoint.json"


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


def load_tokenizer(name_or_path: str | os.PathLike | None = None):
    """The tokenizer of a model (None = the default small model), with a pad token set."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(name_or_path or default_model_path()))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def base_version(model: str | None = None) -> str:
    """The policy_version of an untrained model: `base:<hub id or path>`, or the default small model's versioned name."""
    return f"base:{model or DEFAULT_MODEL_NAME + '@' + BUILDER_VERSION}"


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
        version = base_version(config.model)
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
