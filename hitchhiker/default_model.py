"""The default small model: built locally, offline, the first time it is needed, and cached under $HITCHHIKER_HOME.

It exists so that the whole loop runs on a laptop CPU and in tests: a word-level tokenizer trained on the project's
own prompts (hitchhiker.states.example_prompts, every mode), a 2-layer Llama of width 128, and a format warm-up with
TRL's SFTTrainer on completions whose actions are drawn at random, so it writes `ACTION: A` or `ACTION: C > A > B` in
the contract's format (it learns the format, not the answer; GRPO teaches the answer). Loading it, or any other
model, is hitchhiker.policy's.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from hitchhiker import contract
from hitchhiker.storage import hitchhiker_home

# Bump when anything below changes what the default model is: the cache is keyed by it.
BUILDER_VERSION = "tiny-llama-v4"  # v4: listwise rankings in the vocabulary and the warm-up
# The format warm-up sees each prompt's last lines only (see _prompt_tail).
WARMUP_PROMPT_CHARS = 400
DEFAULT_MODEL_NAME = "hitchhiker-tiny"

# The chat template of the default model: one role token, a newline, the content, an end token. No newline after
# <|end|>, so a completion is exactly `ACTION: A<|end|>` (4 tokens) and the prompt alone is a prefix of prompt +
# completion (what SFTTrainer and the sampler both rely on).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
# the order a listwise prompt asks for ("ACTION: A > B > C (in your order)"): its letters
_RANKING_ASKED = re.compile(r"ACTION: ([A-H](?: > [A-H])+)")
SPECIAL_TOKENS = ["<unk>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]



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
                        batch_size: int = 32, ranking_steps: int = 300) -> Path:
    """Train the tokenizer, create the Llama, warm it up on the output format, and save both to out_dir.

    The warm-up has two phases: `warmup_steps` on every mode's format, then `ranking_steps` on mostly listwise
    prompts (3 in 4), because a ranking is the hard format for a model this small: each letter exactly once. After
    the first phase alone it wrote `ACTION: A > A > C` as often as a permutation (about 3 in 10 samples valid).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    rng = random.Random(seed)
    prompts = _prompt_corpus(n_prompts, seed)
    examples = [_example(p, rng) for p in prompts]
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
    rankings = [p for p in _prompt_corpus(n_prompts * 5, seed + 1) if _RANKING_ASKED.search(p)]
    second = [_example(p, rng) for p in rankings] + [e for e in examples if not _RANKING_ASKED.search(e["prompt"][0]["content"])][
        :len(rankings) // 3]
    try:
        _format_warmup(model, tokenizer, examples, out_dir / "warmup", seed, warmup_steps, batch_size)
        _format_warmup(model, tokenizer, second, out_dir / "warmup", seed, ranking_steps, batch_size, learning_rate=2e-3)
    finally:
        torch.set_num_threads(threads)
    shutil.rmtree(out_dir / "warmup", ignore_errors=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "hitchhiker_model.json").write_text(
        json.dumps({"builder_version": BUILDER_VERSION, "seed": seed, "n_prompts": len(prompts), "warmup_steps": warmup_steps,
                    "ranking_steps": ranking_steps, "n_ranking_prompts": len(rankings)}, indent=1)
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


def _example(prompt: str, rng: random.Random) -> dict:
    return {"prompt": [{"role": "user", "content": _prompt_tail(prompt)}],
            "completion": [{"role": "assistant", "content": _random_completion(prompt, rng)}]}


def _format_warmup(model, tokenizer, examples: list[dict], work_dir: Path, seed: int, steps: int, batch_size: int,
                   learning_rate: float = 3e-3) -> None:
    """Seconds of SFT on random-action completions: the model learns to write the format."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(work_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
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
    ranking = _RANKING_ASKED.search(prompt)
    if ranking:  # listwise: a random order of the basket's letters
        letters = ranking.group(1).split(" > ")
        return "ACTION: " + " > ".join(rng.sample(letters, len(letters)))
    return f"ACTION: {rng.choice('AB')}"


def _contract_texts() -> list[str]:
    """Every instruction variant and answer word, so the vocabulary covers the whole contract."""
    texts = []
    for mode in contract.ALL_MODES:
        for h in (1, 2, 5, 10, 20):
            for flag in (False, True):
                for k in (range(contract.MIN_LIST_SIZE, contract.MAX_LIST_SIZE + 1) if mode == contract.LISTWISE else [None]):
                    texts.append(contract.instructions(mode, h, with_proportion=flag, numeric_position=flag, brief=flag,
                                                       list_size=k))
    texts += ["ACTION: A", "ACTION: B", "ACTION: buy", "ACTION: hold", "ACTION: sell", " 0123456789 ", "ACTION: A 0.70",
              "ACTION: " + " > ".join(contract.LETTERS)]
    return texts


def _prompt_corpus(n: int, seed: int) -> list[str]:
    """The project's own prompts (rendered by the states stage from synthetic numbers)."""
    # lazy: states imports duckdb, which a training machine may lack (it imports this module for the cache's path)
    from hitchhiker.states import example_prompts

    return list(example_prompts(n, seed=seed))

