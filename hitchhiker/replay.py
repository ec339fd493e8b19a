"""The replay buffer: one Parquet file per group, Hive-partitioned by decision date and pair, read through a view.

Layout under a root, a local folder (default `<db file stem>_replay/` beside the DuckDB file) or a storage URL
(`s3://bucket/prefix/replay`, hitchhiker.storage):

    decision_date=2016-01-04/pair=AAP-ABBV/<group_id>.parquet

A pair is named in its folder by Hive's percent escaping (escape_partition): tickers as Yahoo writes them keep their
value, `EURUSD=X` becomes `pair=EURUSD%3DX-XOM`, and DuckDB's Hive reader decodes it, so the view's `pair` is the
pair as stored in `states`. Letters, digits, '-', '.' and '_' are kept, so the ordinary names are unchanged.

Why files and not a DuckDB table: rollout workers (a GPU box, several processes) write their own files without
DuckDB's single-writer lock, the root can be object storage, and a query on one date or one pair opens only that
partition. Locally each file is written to a hidden temp name and renamed into place (atomic on one filesystem); on
object storage it is serialized in memory and PUT once under its final key. Either way a killed writer never leaves
a partial file that the view's glob could match; a group whose file exists is skipped, so re-running is idempotent.
The partition columns live in the folder names only.

Writers (group_path, has_group, write_group, existing_groups) need neither duckdb nor the store: GPU workers import
this module. A view over a remote root reads through an fsspec filesystem registered on the DuckDB database
(`attach_storage`), which a newly opened database must register again before it reads `replay`.
"""
from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from hitchhiker import faults, storage as _storage

if TYPE_CHECKING:
    import duckdb

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
_KEPT = re.compile(r"[A-Za-z0-9._-]")  # what a partition name keeps as it is: every other byte is %XX
Root = str | os.PathLike  # a local folder, or a storage URL such as s3://bucket/prefix/replay


def default_root(db_file: str | os.PathLike | None = None) -> Path:
    """`<db file stem>_replay/` beside the database file."""
    return _storage.beside(_storage.db_path(db_file).resolve(), "replay")


def root_for(db_file: str | os.PathLike | None, storage: str | None = None) -> str:
    """The replay root of a store: `<storage>/replay` with a storage URL (argument or $HITCHHIKER_STORAGE), else the
    folder beside the database file (default_root)."""
    return _storage.location(db_file, storage, "replay")


def escape_partition(value: str) -> str:
    """A partition value as a folder name: Hive's percent escaping. Every UTF-8 byte of a character other than an
    ASCII letter, digit, '-', '.' or '_' becomes %XX (upper-case hex), '%' itself included, so the name holds no '/',
    '=', glob or shell character, and unescape_partition (and DuckDB's Hive reader) give the value back exactly."""
    return "".join(c if _KEPT.fullmatch(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in value)


def unescape_partition(name: str) -> str:
    """The value a partition folder name stands for (the inverse of escape_partition; %xx of either case)."""
    out, i = bytearray(), 0
    while i < len(name):
        if name[i] == "%":
            if not re.fullmatch(r"[0-9A-Fa-f]{2}", name[i + 1 : i + 3]):
                raise ValueError(f"partition name {name!r}: '%' at {i} is not followed by two hex digits")
            out.append(int(name[i + 1 : i + 3], 16))
            i += 3
        else:
            out += name[i].encode()
            i += 1
    try:
        return out.decode()
    except UnicodeDecodeError:
        raise ValueError(f"partition name {name!r} does not decode to UTF-8 text") from None


def group_path(root: Root, decision_date: date | str, pair: str, group_id: str) -> Path | str:
    """Where one group's file lives: a Path under a local root, a URL under a remote one."""
    d = decision_date if isinstance(decision_date, str) else decision_date.isoformat()
    try:
        date.fromisoformat(d)  # a malformed date would create a partition no filter can reach
    except ValueError:
        raise ValueError(f"decision_date {d!r} is not a date (YYYY-MM-DD)") from None
    if not isinstance(pair, str) or not pair:
        raise ValueError(f"pair {pair!r} cannot name a partition folder (it must be a non-empty text)")
    where = _storage.join(root, f"decision_date={d}", f"pair={escape_partition(pair)}", f"{group_id}.parquet")
    return Path(where) if _storage.is_local(root) else where


def has_group(root: Root, decision_date: date | str, pair: str, group_id: str) -> bool:
    return _exists(group_path(root, decision_date, pair, group_id))


def _exists(where: Path | str) -> bool:
    return where.is_file() if isinstance(where, Path) else _storage.exists(where)


def write_group(root: Root, decision_date: date | str, pair: str, group_id: str, rows: list[dict]) -> Path | str | None:
    """Write one group atomically; returns its path (URL on object storage), or None when the group was already there
    (nothing written)."""
    final = group_path(root, decision_date, pair, group_id)
    if _exists(final):
        return None
    bad = [r.get("group_id") for r in rows if r.get("group_id") != group_id]
    if not rows or bad:
        raise ValueError(f"group {group_id}: rows must be non-empty and all carry that group_id (got {bad[:3]})")
    table = pa.Table.from_pylist(rows, schema=FILE_SCHEMA)
    if not isinstance(final, Path):  # object storage: one PUT of the whole file under its final key
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        _storage.write_bytes(final, buffer.getvalue().to_pybytes())
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the rename must not become visible before the bytes are on disk
        faults.point("rollouts.before-rename")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def existing_groups(root: Root) -> list[tuple[date, str]]:
    """(decision_date, group_id) of every group file under root, read from the paths (a directory walk, or one
    listing of the prefix on object storage; no file opened)."""
    if _storage.is_local(root):
        return [(date.fromisoformat(p.parent.parent.name.removeprefix("decision_date=")), p.stem)
                for p in Path(_storage.join(root)).glob(GLOB)]
    groups = []
    for url in _storage.glob(_storage.join(root, GLOB)):
        day, _, name = url.rsplit("/", 3)[-3:]
        groups.append((date.fromisoformat(day.removeprefix("decision_date=")), name.removesuffix(".parquet")))
    return groups


def existing_group_ids(root: Root) -> set[str]:
    """Every group_id with a file under root (a directory walk, or one listing, no file opened)."""
    return {group_id for _, group_id in existing_groups(root)}


def ensure_view(con: duckdb.DuckDBPyConnection, root: Root) -> None:
    """Create (or re-point) the view `replay` over root; an empty typed view while root holds no group yet.

    A remote root's filesystem is registered on con's database (attach_storage): a database opened later must
    register it again before reading the view."""
    from hitchhiker import db

    if _storage.is_local(root):
        local = Path(_storage.join(root)).resolve()
        found = any(local.glob(GLOB))
    else:
        found = bool(_storage.glob(_storage.join(root, GLOB)))
    if found:
        glob = _storage.join(_storage.duckdb_path(con, root), GLOB).replace("'", "''")
        con.execute(db.sql_text("replay/view").replace("{glob}", glob))
    else:
        empty = db.sql_text("migrations/003_replay").replace("CREATE VIEW IF NOT EXISTS", "CREATE OR REPLACE VIEW")
        con.execute(empty)


def attach_storage(con: duckdb.DuckDBPyConnection, root: Root | None = None) -> None:
    """Register the filesystem of a remote replay root on con's database, so that the view `replay` can be read; a
    local root needs nothing. Cheap and idempotent (no listing). root None: the URL the view `replay` reads, if any.

    DuckDB keeps a registered filesystem per open database: connections to the same open file share it, but a file
    opened anew (another process, or after every connection was closed) must attach again; db.connect does."""
    if root is None:
        from hitchhiker import db

        db.attach_remote_files(con)
        return
    if not _storage.is_local(root):
        _storage.duckdb_path(con, root)
