"""Group sampling into the replay buffer: B completions per state, with the behaviour log-probabilities.

For each state the prompt is encoded once (one prefill row per group), its KV cache is repeated to the group's B
rows, and many groups decode together in one batch. Each sample has its own temperature (drawn from
[t - eps, t + eps]); every sampled token's log-probability is stored under exactly the distribution it was drawn
from — GRPO's pi_old:

    top_p = 1 (default):  log_softmax(logits / temperature), what TRL recomputes for the new policy;
    top_p < 1:            the same, renormalized over the top-p nucleus the token was drawn from (tokens outside
                          it have probability 0). This is vLLM's `processed_logprobs`, so both backends store the
                          same quantity.

Both come from hitchhiker.sampling.sampling_logprobs, the function the trainer scores the new policy with (each row
at its stored temperature and top_p), so the importance ratio is 1 (up to float rounding) at the sampling weights.

A run needs the database only to read the states it samples and, at the end, to point the view `replay` at the
Parquet root (`generate_dates` takes a context manager for that, e.g. the Prefect store slot); the sampling itself
(`sample_states`) needs no database, so workers on other machines can run it and write their own files. Hence duckdb
and the store are imported only by the functions that read it: importing this module must not need them
(hitchhiker.snapshots samples on machines that never open the store).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ContextManager

import torch

from hitchhiker import contract, faults, replay
from hitchhiker.sampling import sampling_logprobs

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)


@dataclass
class SamplingConfig:
    """How groups are sampled. Defaults run on CPU with the default small model."""

    group_size: int = 8
    temperature: float = 0.7
    temperature_eps: float = 0.1  # each sample's temperature is uniform in [temperature - eps, temperature + eps]
    top_p: float = 1.0
    max_new_tokens: int = 48
    seed: int = 0
    groups_per_batch: int = 16
    backend: str = "hf"  # "hf" (this module) or "vllm" (hitchhiker.vllm_backend: one engine per process)

    def __post_init__(self) -> None:
        if self.group_size < 1 or self.max_new_tokens < 1 or self.groups_per_batch < 1:
            raise ValueError(f"group_size, max_new_tokens and groups_per_batch must be >= 1: {self}")
        if not 0 < self.temperature - self.temperature_eps or self.temperature_eps < 0:
            raise ValueError(f"temperatures must stay positive: temperature={self.temperature}, eps={self.temperature_eps}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.backend not in ("hf", "vllm"):
            raise ValueError(f"backend {self.backend!r} is not 'hf' or 'vllm'")


@dataclass
class State:
    """The parts of a `states` row that sampling needs."""

    state_id: str
    decision_date: date
    mode: str
    pair: str
    action_format: str
    messages: list[dict]
    list_size: int | None = None  # listwise: the basket's size, which the parser needs


def group_id(state_id: str, policy_version: str) -> str:
    """One group per (state, policy_version): the file name that makes writes idempotent."""
    return hashlib.sha256(f"{state_id}\x1f{policy_version}".encode()).hexdigest()[:32]


def select_state_ids(con: duckdb.DuckDBPyConnection, start: date | str, end: date | str, mode: str | None = None) -> list[str]:
    """State ids with decision_date in [start, end] (optionally one mode), in date order."""
    return [r[0] for r in _states_in_range(con, start, end, mode)]


def missing_state_ids(con: duckdb.DuckDBPyConnection, start: date | str, end: date | str, policy_version: str, root,
                      mode: str | None = None) -> tuple[int, list[str]]:
    """(number of states of [start, end], ids of those with no group yet for policy_version under root), in date
    order. Which groups exist is read from the file names under root, not from the database. A state whose group
    cannot be named (a bad partition key) counts as missing: sampling reports it (sample_states)."""
    rows = _states_in_range(con, start, end, mode)
    return len(rows), [sid for sid, day, pair in rows if not _has_group(root, day, pair, group_id(sid, policy_version))]


def _has_group(root, day, pair, gid: str) -> bool:
    try:
        return replay.has_group(root, day, pair, gid)
    except ValueError:
        return False


def _states_in_range(con, start, end, mode) -> list[tuple]:
    from hitchhiker import db

    first, last = _check_selection(start, end, mode)
    return con.execute(db.sql_text("rollouts/states_in_range"), {"start": first, "end": last, "mode": mode}).fetchall()


def _check_selection(start, end, mode) -> tuple[date, date]:
    from hitchhiker.states import as_date

    first, last = as_date(start, "start"), as_date(end, "end")
    if last < first:
        raise ValueError(f"end {last} is before start {first}")
    if mode is not None and mode not in contract.ALL_MODES:
        raise ValueError(f"mode {mode!r} is not one of {contract.ALL_MODES}")
    return first, last


def load_states(con: duckdb.DuckDBPyConnection, state_ids: list[str]) -> list[State]:
    """The states to sample, in the order given; an unknown id is an error naming it."""
    from hitchhiker import db

    if not state_ids:
        return []
    rows = con.execute(db.sql_text("rollouts/load_states"), {"state_ids": list(state_ids)}).fetchall()
    by_id = {r[0]: State(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6] if r[2] == contract.LISTWISE else None)
             for r in rows}
    missing = [s for s in state_ids if s not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} state_id(s) not in the states table, e.g. {missing[:3]}")
    return [by_id[s] for s in state_ids]


def resolve_checkpoint(con: duckdb.DuckDBPyConnection, checkpoint: str) -> tuple[str, str | None]:
    """(folder or URL, checkpoint_id) of a checkpoint given as a folder, a storage URL or an id registered in
    `checkpoints`."""
    if _names_folder(checkpoint):
        return checkpoint, None  # the folder's own metadata names its id
    rows = con.execute("SELECT path FROM checkpoints WHERE checkpoint_id = ?", [checkpoint]).fetchall()
    if not rows:
        raise ValueError(f"checkpoint {checkpoint!r} is neither a folder nor a checkpoint_id in the checkpoints table")
    return rows[0][0], checkpoint


def _names_folder(checkpoint: str) -> bool:
    """Whether a checkpoint is given by its folder (a local one, or a URL on shared storage), not by its id."""
    return "://" in checkpoint or Path(checkpoint).is_dir()


def generate(con, policy, state_ids: list[str], config: SamplingConfig, root, progress: Callable[[int, int], None] | None = None) -> dict:
    """Sample every state that has no group yet for this policy_version, write the groups, point the view at root."""
    summary = sample_states(policy, load_states(con, state_ids), config, root, progress)
    replay.ensure_view(con, root)
    return summary


def generate_dates(db_file, start: date | str, end: date | str, policy_config, config: SamplingConfig, root=None,
                   mode: str | None = None, max_states: int | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   hold_store: Callable[[], ContextManager] = contextlib.nullcontext) -> dict:
    """Sample every state of the dates [start, end] with no group yet for the policy (`hitchhiker rollouts generate`
    and the `generate_rollouts` flow). The database file is open only inside `hold_store()`: to resolve a
    checkpoint id, to read the states, and to point the view at root at the end; never while sampling. (Opened
    read-write even to read: DuckDB refuses a read-only connection to a file this process already holds.)"""
    from hitchhiker import db
    from hitchhiker.policy import load_policy

    # bad input fails here, before a model is loaded
    _check_selection(start, end, mode)
    if max_states is not None and max_states < 0:
        raise ValueError(f"max_states must be >= 0, got {max_states}")
    if not db.db_path(db_file).is_file():
        raise db.StoreError(f"database {db.db_path(db_file)} does not exist (build states first, or pass --db)")
    root = root or replay.default_root(db_file)
    if policy_config.checkpoint and not _names_folder(policy_config.checkpoint):
        with hold_store(), contextlib.closing(db.connect(db_file)) as con:
            path, checkpoint_id = resolve_checkpoint(con, policy_config.checkpoint)
        policy_config = dataclasses.replace(policy_config, checkpoint=path,
                                            checkpoint_id=policy_config.checkpoint_id or checkpoint_id)
    policy = load_policy(policy_config)  # before the store is taken: loading (or building) a model takes a while
    with hold_store(), contextlib.closing(db.connect(db_file)) as con:
        n_states, missing = missing_state_ids(con, start, end, policy.policy_version, root, mode)
        # a budget takes the first missing states, so the next run continues where this one stopped; without one,
        # every state of the dates goes to sample_states, which samples the missing ones in the batches of an
        # uninterrupted run (_batches)
        asked = missing[:max_states] if max_states is not None else select_state_ids(con, start, end, mode) if missing else []
        states = load_states(con, asked)
    summary = sample_states(policy, states, config, root, progress)
    with hold_store(), contextlib.closing(db.connect(db_file)) as con:
        replay.ensure_view(con, root)
    already = n_states - len(missing) if max_states is not None or not missing else 0  # counted by sample_states
    return {**summary, "states": n_states, "groups_skipped": already + summary["groups_skipped"],
            "states_left": len(missing) - len(states) if max_states is not None else 0}


def _prompt_or_failure(policy, state: State, failed: dict[str, str]) -> list[int] | None:
    """The state's prompt ids, or None after recording in `failed` why its group cannot be sampled or stored."""
    try:
        replay.group_path("/", state.decision_date, state.pair, "check")  # its partition keys name a folder
        return policy.prompt_ids(state.messages)
    except (ValueError, TypeError, KeyError) as e:
        failed[state.state_id] = str(e) or type(e).__name__
        return None


def sample_states(policy, states: list[State], config: SamplingConfig, root, progress: Callable[[int, int], None] | None = None) -> dict:
    """Sample and write the groups of `states` missing under root, a folder or a storage URL (no database needed:
    workers can run this).

    A state that cannot be sampled or stored (partition keys that name no folder, messages the chat template cannot
    render, rows that do not fit the file schema) is skipped, logged and listed in `states_failed` (state_id ->
    why); it never stops the other states of its date or batch."""
    failed: dict[str, str] = {}
    missing = {s.state_id for s in states
               if not _has_group(root, s.decision_date, s.pair, group_id(s.state_id, policy.policy_version))}
    prompt_of = {s.state_id: p for s in states
                 if (p := _prompt_or_failure(policy, s, failed if s.state_id in missing else {})) is not None}
    batches = _batches([s for s in states if s.state_id in prompt_of], prompt_of, config.groups_per_batch)
    batches = [b for b in batches if any(s.state_id in missing for s in b)]
    n_todo = sum(s.state_id in missing for b in batches for s in b)
    sampler = _vllm_sampler(policy) if config.backend == "vllm" and batches else sample_token_groups
    started = time.perf_counter()
    actions, n_valid, n_rows, n_tokens, written, done = Counter(), 0, 0, 0, 0, 0
    if progress:
        progress(0, n_todo)
    for batch in batches:
        gids = [group_id(s.state_id, policy.policy_version) for s in batch]
        prompts = [prompt_of[s.state_id] for s in batch]
        generators = [group_generator(config.seed, g, policy.device) for g in gids]
        temperatures = sample_temperatures(config, config.group_size, generators)
        samples = sampler(policy, prompts, temperatures, generators, config)
        now = datetime.now(timezone.utc)
        for state, gid, prompt, temps, group in zip(batch, gids, prompts, temperatures.tolist(), samples):
            if state.state_id not in missing:
                continue  # written by an earlier run: sampled again only to keep its batch as it was
            done += 1
            rows = [_row(policy, state, gid, prompt, k, t, config.top_p, ids, lps, now) for k, (t, (ids, lps)) in enumerate(zip(temps, group))]
            try:
                if replay.write_group(root, state.decision_date, state.pair, gid, rows) is None:
                    continue  # another worker wrote this group meanwhile: its rows count there, not here
            except (ValueError, TypeError) as e:  # this state's rows (pyarrow's ArrowInvalid is a ValueError)
                failed[state.state_id] = str(e) or type(e).__name__
                continue
            faults.point("rollouts.group-written")
            written += 1
            for r in rows:
                n_rows += 1
                n_valid += r["valid"]
                actions[r["action"] if r["valid"] else "invalid"] += 1
                n_tokens += len(r["completion_ids"])
        if progress:
            progress(done, n_todo)
    seconds = time.perf_counter() - started
    for state_id, why in failed.items():
        state = next(s for s in states if s.state_id == state_id)
        log.warning("state %s (%s %s) skipped, its group cannot be sampled or stored: %s", state_id,
                    state.decision_date, state.pair, why)
    return {
        "states": len(states),
        "groups_written": written,
        "groups_skipped": len(states) - written - len(failed),
        "states_failed": failed,
        "rollouts": n_rows,
        "valid_rate": n_valid / n_rows if n_rows else None,
        "actions": dict(actions),
        "completion_tokens": n_tokens,
        "seconds": seconds,
        "tokens_per_s": n_tokens / seconds if seconds > 0 and n_tokens else 0.0,
        "policy_version": policy.policy_version,
        "root": str(root),
    }


def _batches(states: list[State], prompt_of: dict[str, list[int]], size: int) -> list[list[State]]:
    """`states` in batches of `size` and similar prompt lengths (a batch is padded to its longest prompt, so mixing a
    460-token prompt with an 820-token one doubles the first one's prefill), in a fixed order (length, then the
    given order).

    The batches are cut over every state asked for, written or not, so that a re-run after a kill samples each
    missing group beside the same groups as the uninterrupted run: a group's draws have their own generator, but
    batched matrix products round differently for different batch shapes, and one flipped low bit can flip a draw.
    A batch whose groups all exist is not sampled; one with some existing groups is sampled whole (at most one such
    batch per kill) and only its missing groups are written."""
    ordered = sorted(states, key=lambda s: len(prompt_of[s.state_id]))
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def _row(policy, state: State, gid: str, prompt: list[int], k: int, temperature: float, top_p: float,
         ids: list[int], logprobs: list[float], now: datetime) -> dict:
    text = policy.tokenizer.decode(ids, skip_special_tokens=True)
    parsed = contract.parse(text, state.mode, with_proportion=state.action_format == "proportion", list_size=state.list_size)
    return {
        "rollout_id": f"{gid}-{k}",
        "state_id": state.state_id,
        "group_id": gid,
        "mode": state.mode,
        "policy_version": policy.policy_version,
        "sample_index": k,
        "temperature": temperature,
        "top_p": top_p,
        "prompt_ids": prompt,
        "completion": text,
        "completion_ids": ids,
        "token_logprobs": logprobs,
        "logprob_sum": float(sum(logprobs)),
        "action": parsed.action,
        "proportion": parsed.proportion,
        "position": parsed.position,
        "advisory_text": parsed.advisory_text,
        "valid": parsed.valid,
        "invalid_reason": parsed.invalid_reason,
        "created_at": now,
    }


def sample_temperatures(config: SamplingConfig, size: int, generators: list[torch.Generator]) -> torch.Tensor:
    """(groups, size) temperatures, each group's drawn from its own generator in [t - eps, t + eps]."""
    return torch.stack([
        config.temperature - config.temperature_eps
        + 2 * config.temperature_eps * torch.rand(size, generator=g, device=g.device).double().cpu()
        for g in generators
    ])


def group_generator(seed: int, gid: str, device: torch.device = torch.device("cpu")) -> torch.Generator:
    """A generator per group, so a group's samples do not depend on which other groups share its batch."""
    g = torch.Generator(device=device)
    g.manual_seed(int(hashlib.sha256(f"{seed}:{gid}".encode()).hexdigest()[:15], 16))
    return g


@torch.no_grad()
def sample_token_groups(policy, prompts: list[list[int]], temperatures: torch.Tensor, generators: list[torch.Generator],
                        config: SamplingConfig) -> list[list[tuple[list[int], list[float]]]]:
    """For each prompt, len(temperatures[g]) completions: [(token ids, per-token log-probs)] per group.

    A hand-written decode loop, because HF `generate` applies one temperature to the whole call and we need one per
    row; it also gives us the exact log-probability of each sampled token without a second pass.
    """
    from transformers import DynamicCache

    from hitchhiker import kv_cache

    model, device = policy.model, policy.device
    pad = policy.tokenizer.pad_token_id
    eos = torch.tensor(policy.eos_token_ids, device=device)
    n_groups, group_size = temperatures.shape
    width = max(len(p) for p in prompts)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    cache = DynamicCache(config=model.config)
    input_ids = torch.full((n_groups, width), pad, dtype=torch.long, device=device)
    if kv_cache.full_attention(cache):
        # Full attention in every layer: right padding and no attention mask. Causal attention alone keeps every
        # prompt token off the padding after it, and SDPA takes its unmasked causal kernel (about 1.7x faster on CPU
        # than with a padding mask). The padding's keys and values are masked out while decoding; logits are kept at
        # each prompt's last position only.
        for g, p in enumerate(prompts):
            input_ids[g, : len(p)] = torch.tensor(p, device=device)
        mask = torch.arange(width, device=device) < lengths[:, None]
        last = lengths - 1
        keep = torch.unique(last)
        out = model(input_ids=input_ids, position_ids=torch.arange(width, device=device).expand(n_groups, -1),
                    past_key_values=cache, use_cache=True, logits_to_keep=keep)
        logits = out.logits[torch.arange(n_groups, device=device), torch.searchsorted(keep, last)].float()
    else:
        # Sliding-window layers (some hub models) keep only a prompt's last tokens, which right padding would fill
        # with padding: left padding and a padding mask, so that every prompt ends at the last column.
        mask = torch.arange(width, device=device) >= (width - lengths)[:, None]
        for g, p in enumerate(prompts):
            input_ids[g, width - len(p):] = torch.tensor(p, device=device)
        out = model(input_ids=input_ids, attention_mask=mask.long(), position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1, :].float()
    cache = out.past_key_values
    kv_cache.repeat_for_groups(cache, group_size, config.max_new_tokens)  # prefill once per group, B rows decode
    logits = logits.repeat_interleave(group_size, 0)
    mask = mask.long().repeat_interleave(group_size, 0)
    next_position = lengths[:, None].repeat_interleave(group_size, 0)
    temps = temperatures.to(device=device, dtype=torch.float32).reshape(-1, 1)
    rows = n_groups * group_size
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    tokens, logprobs = [], []
    for step in range(config.max_new_tokens):
        logp = sampling_logprobs(logits, temps, config.top_p)
        noise = torch.cat([_gumbel((group_size, logp.shape[-1]), g) for g in generators])
        # Gumbel-max: argmax(log p + Gumbel) is an exact draw from p, with per-group generators.
        token = torch.argmax(logp + noise, dim=-1)
        token = torch.where(done, pad, token)
        tokens.append(token)
        logprobs.append(torch.where(done, 0.0, logp.gather(1, token[:, None]).squeeze(1)))
        done = done | torch.isin(token, eos)
        if bool(done.all()) or step == config.max_new_tokens - 1:  # the last token needs no forward pass
            break
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position, past_key_values=cache,
                    use_cache=True)
        next_position = next_position + 1
        logits = out.logits[:, -1, :].float()
    token_matrix = torch.stack(tokens, 1).tolist()
    logprob_matrix = torch.stack(logprobs, 1).double().tolist()
    eos_set = set(policy.eos_token_ids)
    results = []
    for g in range(n_groups):
        group = []
        for r in range(g * group_size, (g + 1) * group_size):
            ids, lps = [], []
            for t, lp in zip(token_matrix[r], logprob_matrix[r]):
                ids.append(t)
                lps.append(lp)
                if t in eos_set:
                    break
            group.append((ids, lps))
        results.append(group)
    return results


def _gumbel(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=generator.device)
    return -torch.log(-torch.log(u.clamp(min=1e-20, max=1 - 1e-7)))


def _vllm_sampler(policy):
    from hitchhiker.vllm_backend import VLLMSampler

    return VLLMSampler(policy)
