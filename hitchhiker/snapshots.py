"""State snapshots: sampling on a machine that never opens the store.

The orchestrator (the CPU side, holding the DuckDB store) selects the states that have no group yet for a policy
and writes them to shared storage as a snapshot: `states.parquet` (every field `rollouts.sample_states` reads),
committed by a manifest (`storage.commit_dir`) that also names the policy, resolved so that the worker needs nothing
from the store (a checkpoint id becomes the checkpoint's folder or URL; the policy_version is fixed). A rollouts
worker (the gpu pool) reads the snapshot, samples its groups into the replay under a storage URL and returns a
summary; the orchestrator then points the view `replay` at that root.

This module imports neither duckdb nor hitchhiker.db: the functions that read the store take an open connection.

A snapshot's id is a hash of its content (its states and its policy): exporting the same states for the same policy
again names the same snapshot, which is written once.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from hitchhiker import rollouts, storage
from hitchhiker.policy import CHECKPOINT_META, PolicyConfig, base_version, load_policy
from hitchhiker.rollouts import SamplingConfig, State

KIND = "state-snapshot"
STATES_FILE = "states.parquet"
STATES_SCHEMA = pa.schema([
    ("state_id", pa.string()),
    ("decision_date", pa.date32()),
    ("mode", pa.string()),
    ("pair", pa.string()),
    ("action_format", pa.string()),
    ("messages", pa.string()),  # the chat messages as JSON text, as the states table stores them
    ("list_size", pa.int32()),  # listwise: the basket's size, which the parser needs (null for the other modes)
])


def policy_version(model: str | None = None, checkpoint: str | None = None, checkpoint_id: str | None = None) -> str:
    """The policy_version `policy.load_policy` gives this policy, without loading it: the checkpoint id (given, else
    the checkpoint folder's metadata, else its name), or `base:<model>` without a checkpoint."""
    if not checkpoint:
        return base_version(model)
    if checkpoint_id:
        return checkpoint_id
    meta = storage.join(checkpoint, CHECKPOINT_META)
    if storage.exists(meta):
        return str(storage.read_json(meta)["checkpoint_id"])
    return Path(str(checkpoint).rstrip("/")).name


def resolve_policy(con, model: str | None = None, checkpoint: str | None = None) -> tuple[str, str | None]:
    """(policy_version, checkpoint folder or URL) of a checkpoint given as a folder, a URL or a checkpoint_id of the
    `checkpoints` table (None: the base model). The folder must be one the sampling machine can read too."""
    if not checkpoint:
        return policy_version(model), None
    path, checkpoint_id = rollouts.resolve_checkpoint(con, checkpoint)
    return policy_version(model, path, checkpoint_id), path


def write_snapshot(con, state_ids: list[str], snapshots_root: str, policy_version: str, model: str | None = None,
                   checkpoint: str | None = None) -> str:
    """Export the states (read through con) and the resolved policy to `<snapshots_root>/<snapshot_id>`; returns that
    URL. The id hashes the content, so the same states for the same policy are written once (a second call only
    finds them). checkpoint: a folder or URL, already resolved (`resolve_policy`)."""
    states = sorted(rollouts.load_states(con, state_ids), key=lambda s: (s.decision_date, s.pair, s.state_id))
    if not states:
        raise ValueError("a snapshot needs at least one state")
    rows = [{"state_id": s.state_id, "decision_date": s.decision_date, "mode": s.mode, "pair": s.pair,
             "action_format": s.action_format, "messages": json.dumps(s.messages, ensure_ascii=False),
             # only listwise rows carry it, so the content hash (the id) of other snapshots is what it always was
             **({"list_size": s.list_size} if s.list_size is not None else {})} for s in states]
    meta = {"kind": KIND, "policy_version": policy_version, "model": model, "checkpoint": checkpoint,
            "states": len(rows), "first_date": states[0].decision_date.isoformat(),
            "last_date": states[-1].decision_date.isoformat()}
    content = json.dumps({"meta": meta, "states": rows}, sort_keys=True, default=str).encode()
    url = storage.join(snapshots_root, hashlib.sha256(content).hexdigest()[:32])
    if storage.committed(url):
        return url
    with tempfile.TemporaryDirectory(prefix="hitchhiker-snapshot-") as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=STATES_SCHEMA), Path(tmp) / STATES_FILE)
        storage.commit_dir(tmp, url, {**meta, "written_at": datetime.now(timezone.utc).isoformat()})
    return url


def snapshot_dates(con, start: date | str, end: date | str, snapshots_root: str, replay_root: str,
                   model: str | None = None, checkpoint: str | None = None, mode: str | None = None,
                   max_states: int | None = None) -> dict:
    """Export the states of [start, end] (optionally one mode) with no group yet under replay_root for the policy.

    Returns {snapshot_url (None when no state is missing), states (exported), states_in_range, states_left (past
    max_states, for a later run), policy_version}."""
    if max_states is not None and max_states < 0:
        raise ValueError(f"max_states must be >= 0, got {max_states}")
    version, path = resolve_policy(con, model, checkpoint)
    n_states, missing = rollouts.missing_state_ids(con, start, end, version, replay_root, mode)
    chosen = missing if max_states is None else missing[:max_states]
    url = write_snapshot(con, chosen, snapshots_root, version, model, path) if chosen else None
    return {"snapshot_url": url, "states": len(chosen), "states_in_range": n_states,
            "states_left": len(missing) - len(chosen), "policy_version": version}


def read_snapshot(snapshot_url: str) -> tuple[dict, list[State]]:
    """(manifest meta, states) of a committed snapshot; a remote one is fetched and checked against its manifest."""
    folder = storage.fetch_dir(snapshot_url)
    meta = json.loads((folder / storage.MANIFEST).read_text())["meta"]
    if meta.get("kind") != KIND:
        raise ValueError(f"{snapshot_url} is not a state snapshot (manifest kind {meta.get('kind')!r})")
    table = pq.read_table(folder / STATES_FILE)
    if "list_size" not in table.column_names:  # written before listwise snapshots existed
        table = table.append_column("list_size", pa.nulls(len(table), pa.int32()))
    rows = table.select(STATES_SCHEMA.names).cast(STATES_SCHEMA).to_pylist()
    states = [State(r["state_id"], r["decision_date"], r["mode"], r["pair"], r["action_format"],
                    json.loads(r["messages"]), r["list_size"]) for r in rows]
    return meta, states


def sample_snapshot(snapshot_url: str, replay_root: str, config: SamplingConfig = SamplingConfig(),
                    progress: Callable[[int, int], None] | None = None, device: str = "auto",
                    dtype: str = "auto") -> dict:
    """Sample the snapshot's states by its policy into the replay under replay_root (a folder or a storage URL);
    the groups already there are skipped. Returns `rollouts.sample_states`' summary with the snapshot's url and
    dates. Opens no store: the policy is the manifest's, a checkpoint URL is fetched (`storage.fetch_dir`)."""
    meta, states = read_snapshot(snapshot_url)
    checkpoint = meta["checkpoint"]
    policy = load_policy(PolicyConfig(model=meta["model"], checkpoint=checkpoint, device=device, dtype=dtype,
                                      checkpoint_id=meta["policy_version"] if checkpoint else None))
    if policy.policy_version != meta["policy_version"]:
        raise ValueError(f"{snapshot_url} was selected for policy {meta['policy_version']!r} but its model loads as "
                         f"{policy.policy_version!r}: its groups would be written under the wrong version")
    summary = rollouts.sample_states(policy, states, config, replay_root, progress)
    return {**summary, "snapshot_url": snapshot_url, "first_date": meta["first_date"], "last_date": meta["last_date"]}
