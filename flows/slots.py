"""One DuckDB writer at a time, across flow runs and processes, through a Prefect global concurrency limit.

DuckDB lets a single process hold a database file (even readers are refused while a writer has it), so every task
that opens the store takes this one slot for as long as it holds the file; concurrent flow runs then queue in
Prefect (visible in the UI) instead of failing on the file lock. Long compute (sampling, training) runs outside it.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from typing import Iterator

from prefect import get_client
from prefect.concurrency.sync import concurrency

STORE_LIMIT = "hitchhiker-duckdb-writer"
# When set, every hold of the slot appends {"start", "end", "held_s", "pid", "task", "flow_run", "root_flow_run"}
# (epoch seconds) as one JSON line to this file: how long the store was held, by which task of which run, for
# bench/offhost.py and for anyone sizing a deployment.
SLOT_LOG_ENV = "HITCHHIKER_SLOT_LOG"


@functools.cache
def ensure_store_limit(limit: int = 1) -> None:
    """Create (or correct) the global concurrency limit that guards the DuckDB file; once per process."""
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(STORE_LIMIT, limit)


@contextlib.contextmanager
def store_slot(timeout_seconds: float = 3600) -> Iterator[None]:
    """Hold the single store slot (created on first use, so a fresh server needs no manual setup)."""
    ensure_store_limit()
    with concurrency(STORE_LIMIT, occupy=1, timeout_seconds=timeout_seconds, strict=True):
        start = time.time()
        try:
            yield
        finally:
            _account(start, time.time())


def _account(start: float, end: float) -> None:
    path = os.environ.get(SLOT_LOG_ENV)
    if path:
        from prefect.runtime import flow_run, task_run

        line = {"start": start, "end": end, "held_s": end - start, "pid": os.getpid(), "task": task_run.name,
                "flow_run": flow_run.id, "root_flow_run": flow_run.root_flow_run_id if flow_run.id else None}
        with open(path, "a") as f:  # one short line per write: appends from several processes do not interleave
            f.write(json.dumps(line, default=str) + "\n")
