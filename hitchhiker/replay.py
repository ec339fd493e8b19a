"""The replay buffer: one Parquet file per group, Hive-partitioned by decision date and pair, read through a view.

Layout under a root (default `<db file stem>_replay/` beside the DuckDB file):

    decision_date=2016-01-04/pair=AAP-ABBV/<group_id>.parquet

Why files and not a DuckDB table: rollout workers (a GPU box, several processes) write their own files without
DuckDB's single-writer lock, the root can be object storage, and a query on one date or one pair opens only that
partition. Each file is written to a hidden temp name and renamed into place (atomic on one filesystem), so a
killed writer never leaves a partial file that the view's glob could match; a group whose file exists is skipped,
so re-running is idempotent. The partition columns live in the folder names only.
"""
from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from hitchhiker import db

# Columns stored in each file (decision_date and pair come from the folders); types match sql/migrations/003.
FILE_SCHEMA = pa.schema([
    ("rollout_id", pa.string()),
    ("state_id", pa.string()),
    ("group_id", pa.string()),
    ("mode", pa.string()),
    ("policy_version", pa.string()),
    ("sample_index", pa.int32()),
    ("temperature", pa.float64()),
    ("top_p", pa.float64()),
    ("prompt_ids", pa.list_(pa.int32())),
    ("completion", pa.string()),
    ("completion_ids", pa.list_(pa.int32())),
    ("token_logprobs", pa.list_(pa.float64())),
    ("logprob_sum", pa.float64()),
    ("action", pa.string()),
    ("proportion", pa.float64()),
    ("position", pa.float64()),
    ("advisory_text", pa.string()),
    ("valid", pa.bool_()),
    ("invalid_reason", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])
GLOB = "decision_date=*/pair=*/*.parquet"


def default_root(db_file: str | os.PathLike | None = None) -> Path:
    """`<db file stem>_replay/` beside the database file."""
    return db.beside(db.db_path(db_file).resolve(), "replay")


def group_path(root: str | os.PathLike, decision_date: date | str, pair: str, group_id: str) -> Path:
    """Where one group's file lives."""
    d = decision_date if isinstance(decision_date, str) else decision_date.isoformat()
    try:
        date.fromisoformat(d)  # a malformed date would create a partition no filter can reach
    except ValueError:
        raise ValueError(f"decision_date {d!r} is not a date (YYYY-MM-DD)") from None
    if not pair or "/" in pair or "=" in pair:
        raise ValueError(f"pair {pair!r} cannot name a partition folder")
    return Path(root) / f"decision_date={d}" / f"pair={pair}" / f"{group_id}.parquet"


def has_group(root: str | os.PathLike, decision_date: date | str, pair: str, group_id: str) -> bool:
    return group_path(root, decision_date, pair, group_id).is_file()


def write_group(root: str | os.PathLike, decision_date: date | str, pair: str, group_id: str, rows: list[dict]) -> Path | None:
    """Write one group atomically; returns its path, or None when the group was already there (nothing written)."""
    final = group_path(root, decision_date, pair, group_id)
    if final.is_file():
        return None
    bad = [r.get("group_id") for r in rows if r.get("group_id") != group_id]
    if not rows or bad:
        raise ValueError(f"group {group_id}: rows must be non-empty and all carry that group_id (got {bad[:3]})")
    table = pa.Table.from_pylist(rows, schema=FILE_SCHEMA)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the rename must not become visible before the bytes are on disk
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def existing_groups(root: str | os.PathLike) -> list[tuple[date, str]]:
    """(decision_date, group_id) of every group file under root, read from the paths (a directory walk, no file
    opened)."""
    return [(date.fromisoformat(p.parent.parent.name.removeprefix("decision_date=")), p.stem)
            for p in Path(root).glob(GLOB)]


def existing_group_ids(root: str | os.PathLike) -> set[str]:
    """Every group_id with a file under root (a directory walk, no file opened)."""
    return {group_id for _, group_id in existing_groups(root)}


def ensure_view(con: duckdb.DuckDBPyConnection, root: str | os.PathLike) -> None:
    """Create (or re-point) the view `replay` over root; an empty typed view while root holds no group yet."""
    root = Path(root).resolve()
    if any(root.glob(GLOB)):
        glob = str(root / GLOB).replace("'", "''")
        con.execute(db.sql_text("replay/view").replace("{glob}", glob))
    else:
        empty = db.sql_text("migrations/003_replay").replace("CREATE VIEW IF NOT EXISTS", "CREATE OR REPLACE VIEW")
        con.execute(empty)
