"""Loading the model to train: base model, a parent checkpoint on top, a new LoRA adapter or full weights."""
from __future__ import annotations

from pathlib import Path

import torch

from hitchhiker.policy import load_tokenizer
from hitchhiker.train.checkpoints import base_model_path
from hitchhiker.train.config import FinetuneConfig


def load_trainable(base_model: str, start_from: Path | None, config: FinetuneConfig, dtype=torch.float32):
    """(model, tokenizer): start_from is a checkpoint folder (adapter or full) or None for the base model.

    With LoRA, a parent adapter is trained further; otherwise a new adapter is added (seeded by the caller).
    """
    from transformers import AutoModelForCausalLM

    config.check()
    base_path = base_model_path(base_model)
    is_adapter = start_from is not None and (Path(start_from) / "adapter_config.json").is_file()
    if start_from is not None and not is_adapter and not (Path(start_from) / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint {start_from} holds neither a peft adapter nor full weights")
    if config.finetune == "lora":
        from peft import LoraConfig, PeftModel, get_peft_model

        if start_from is not None and not is_adapter:
            raise ValueError(f"checkpoint {start_from} holds full weights; continue it with finetune='full'")
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
        if is_adapter:
            model = PeftModel.from_pretrained(base, str(start_from), is_trainable=True)
        else:
            target = config.lora_target_modules
            model = get_peft_model(
                base,
                LoraConfig(
                    r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                    target_modules=target, task_type="CAUSAL_LM",
                ),
            )
    else:
        if is_adapter:  # full fine-tuning of an adapter checkpoint: fold the adapter into the weights first
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
            model = PeftModel.from_pretrained(base, str(start_from)).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(str(start_from or base_path), dtype=dtype)
    tokenizer = load_tokenizer(start_from if start_from is not None and (Path(start_from) / "tokenizer_config.json").is_file() else base_path)
    return model, tokenizer


def load_reference(base_model: str, dtype=torch.float32):
    """The frozen base model, the KL reference for full fine-tuning (LoRA disables its adapter instead)."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(base_model_path(base_model), dtype=dtype)
    ref.eval().requires_grad_(False)
    return ref


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
