"""A training batch: what a GPU worker needs to train, as files on shared storage, without the store.

    <batches>/<batch_id>/
        rollouts.parquet (GRPO: one row per rollout, groups in plan order) or pairs.parquet (DPO, ORPO: one row per pair)
        MANIFEST.json    written last: the files' sizes and sha256, and the batch's meta: batch_id, algorithm,
                         parent checkpoint (id and URL), base model, reward spec, training config, group ids in order

The orchestrator (hitchhiker/batches.py, the CPU side holding the store) writes it; hitchhiker.train reads it.
`batch_id` hashes the content and the config, so the same selection under the same config is the same batch and a
re-written batch changes nothing. This module imports neither duckdb nor the store.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hitchhiker import faults, storage
from hitchhiker.train.data import Group, Rollout

ROLLOUTS_FILE = "rollouts.parquet"
PAIRS_FILE = "pairs.parquet"
PREFERENCE_ALGORITHMS = ("dpo", "orpo")  # trained on pairs.parquet
ROLLOUT_SCHEMA = pa.schema([
    ("group_id", pa.string()),
    ("state_id", pa.string()),
    ("decision_date", pa.date32()),
    ("policy_version", pa.string()),
    ("zero_variance", pa.bool_()),
    ("rollout_id", pa.string()),
    ("prompt_ids", pa.list_(pa.int32())),
    ("completion_ids", pa.list_(pa.int32())),
    ("behaviour_logprobs", pa.list_(pa.float64())),
    ("temperature", pa.float64()),
    ("top_p", pa.float64()),
    ("advantage", pa.float64()),
    ("reward_usd", pa.float64()),
    ("valid", pa.bool_()),
])
PAIR_SCHEMA = pa.schema([
    ("group_id", pa.string()),
    ("prompt", pa.string()),  # the chat messages, JSON
    ("chosen", pa.string()),  # the assistant messages, JSON
    ("rejected", pa.string()),
    ("chosen_reward_usd", pa.float64()),
    ("rejected_reward_usd", pa.float64()),
])


def write_grpo_batch(batches_root: str, groups: list[Group], meta: dict) -> str:
    """Write the groups (in plan order) and meta as a committed batch under batches_root; returns its URL."""
    ids = [g.group_id for g in groups]
    if not groups:
        raise ValueError("a training batch needs at least one group")
    if len(set(ids)) != len(ids):
        raise ValueError("the batch lists a replay group twice")
    rows = [{"group_id": g.group_id, "state_id": g.state_id, "decision_date": g.decision_date,
             "policy_version": g.policy_version, "zero_variance": g.zero_variance, **asdict(r)}
            for g in groups for r in g.rollouts]
    table = pa.Table.from_pylist(rows, schema=ROLLOUT_SCHEMA)
    return _commit(batches_root, ROLLOUTS_FILE, table, {**meta, "algorithm": "grpo", "groups": ids})


def write_pairs_batch(batches_root: str, pairs: list[dict], meta: dict, algorithm: str = "dpo") -> str:
    """Write preference pairs ({group_id, prompt (messages), chosen, rejected, *_reward_usd}) as a batch that the
    preference algorithm (PREFERENCE_ALGORITHMS: 'dpo' or 'orpo') trains on."""
    if algorithm not in PREFERENCE_ALGORITHMS:
        raise ValueError(f"algorithm {algorithm!r} is not a preference algorithm {PREFERENCE_ALGORITHMS}")
    if not pairs:
        raise ValueError(f"a {algorithm.upper()} batch needs at least one preference pair")
    rows = [{**{k: p[k] for k in ("group_id", "chosen_reward_usd", "rejected_reward_usd")},
             **{k: json.dumps(p[k]) for k in ("prompt", "chosen", "rejected")}} for p in pairs]
    table = pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)
    return _commit(batches_root, PAIRS_FILE, table, {**meta, "algorithm": algorithm, "groups": [p["group_id"] for p in pairs]})


def _commit(batches_root: str, name: str, table: pa.Table, meta: dict) -> str:
    with tempfile.TemporaryDirectory(prefix="hitchhiker-batch-") as work:
        pq.write_table(table, Path(work) / name)
        content = storage.sha256_file(Path(work) / name)
        # the parent's URL is left out: the same batch is the same batch wherever the parent's files are stored, so a
        # run on a local folder and one on a bucket train the same checkpoint ids
        named = {k: v for k, v in meta.items() if k != "parent_url"}
        batch_id = hashlib.sha256(json.dumps([content, named], sort_keys=True, default=str).encode()).hexdigest()[:16]
        url = storage.join(batches_root, batch_id)
        faults.point("batch.before-commit")
        storage.commit_dir(work, url, {**meta, "batch_id": batch_id})
        faults.point("batch.after-commit")
    return url


def read_meta(batch_url: str) -> dict:
    """The batch's meta (from its manifest); a clear error when the batch is not committed."""
    if not storage.committed(batch_url):
        raise FileNotFoundError(f"training batch {batch_url} is not committed (no {storage.MANIFEST}): "
                                "it was never written, or its writer was killed")
    return storage.read_manifest(batch_url)["meta"]


def read_groups(batch_url: str) -> list[Group]:
    """The batch's groups in plan order."""
    local = storage.fetch_dir(batch_url)
    groups: dict[str, Group] = {}
    for row in pq.read_table(local / ROLLOUTS_FILE).to_pylist():
        g = groups.get(row["group_id"])
        if g is None:
            g = groups[row["group_id"]] = Group(row["group_id"], row["state_id"], row["decision_date"],
                                                row["policy_version"], row["zero_variance"], [])
        g.rollouts.append(Rollout(row["rollout_id"], row["prompt_ids"], row["completion_ids"], row["behaviour_logprobs"],
                                  row["temperature"], row["advantage"], row["reward_usd"], row["valid"], row["top_p"]))
    return list(groups.values())


def read_pairs(batch_url: str) -> list[dict]:
    local = storage.fetch_dir(batch_url)
    return [{**r, **{k: json.loads(r[k]) for k in ("prompt", "chosen", "rejected")}}
            for r in pq.read_table(local / PAIRS_FILE).to_pylist()]
