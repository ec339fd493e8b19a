"""The DuckDB store: one database file, schema migrations from `sql/migrations`, SQL loaded by name."""
from __future__ import annotations

import contextlib
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import duckdb

from hitchhiker.storage import DEFAULT_DB, beside, db_path  # noqa: F401 (the store's path rules live with the others)

# New files are written in the storage format of DuckDB 1.5, so that the `duckdb` command-line tool users already
# have (PyPI's duckdb-cli is 1.5.x) opens the store for ad-hoc SQL; DuckDB 2.0 reads and writes it unchanged.
STORAGE_COMPATIBILITY = "v1.5.0"
# The SQL files: inside the package in an installed wheel (pyproject maps sql/ to hitchhiker/sql), else the top-level
# sql/ of the checkout (the editable install of the README).
_PACKAGE_DIR = Path(__file__).resolve().parent
SQL_DIR = _PACKAGE_DIR / "sql" if (_PACKAGE_DIR / "sql" / "migrations").is_dir() else _PACKAGE_DIR.parent / "sql"
_MIGRATION_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


class StoreError(RuntimeError):
    """A problem with the database file that a user can act on (named in the message)."""


class StoreLockedError(StoreError):
    """Another process holds the DuckDB file for writing."""


def connect(path: str | os.PathLike | None = None, read_only: bool = False, migrate_schema: bool = True,
            config: dict | None = None) -> duckdb.DuckDBPyConnection:
    """Open the store (creating and migrating it unless read-only); a held lock is a clear StoreLockedError.

    config: more DuckDB settings to open it with (the read-only console's, hitchhiker.console)."""
    p = db_path(path)
    if read_only and not p.exists():
        raise StoreError(f"database {p} does not exist (run an ingest first, or pass --db / HITCHHIKER_DB)")
    if not read_only:
        p.parent.mkdir(parents=True, exist_ok=True)
    try:
        settings = {} if read_only else {"storage_compatibility_version": STORAGE_COMPATIBILITY}
        con = duckdb.connect(str(p), read_only=read_only, config={**settings, **(config or {})})
    except duckdb.IOException as e:
        if "lock" in str(e).lower():
            raise StoreLockedError(
                f"database {p} is locked by another process (DuckDB allows one writer per file); "
                f"wait for that run to finish or use another --db. DuckDB said: {e}"
            ) from None
        raise StoreError(f"cannot open database {p}: {e}") from None
    if migrate_schema and not read_only:
        migrate(con)
    attach_remote_files(con)
    return con


_REMOTE_URL = re.compile(r"'([a-z][a-z0-9+.-]*://(?:[^']|'')*)'")


def attach_remote_files(con: duckdb.DuckDBPyConnection) -> None:
    """Register the fsspec filesystem of every remote URL the store's views read (the replay on s3://...): DuckDB
    keeps registered filesystems per open database, so a store opened anew must register them again before a query
    over such a view. A protocol whose package is missing is left for the query to report."""
    from hitchhiker import storage

    for (sql,) in con.execute("SELECT sql FROM duckdb_views() WHERE NOT internal").fetchall():
        for url in _REMOTE_URL.findall(sql or ""):
            if not url.startswith("file://"):
                try:
                    storage.duckdb_path(con, url.replace("''", "'"))
                except ValueError:
                    pass


def sql_text(name: str) -> str:
    """The text of `sql/<name>.sql` (name may contain a sub-folder, e.g. 'queries/reward_by_date')."""
    f = SQL_DIR / f"{name}.sql"
    if not f.is_file():
        raise StoreError(f"SQL file {f} not found")
    return f.read_text()


def migrations() -> list[tuple[int, str, Path]]:
    """Ordered (version, name, path) of every file in sql/migrations."""
    out = []
    for f in sorted((SQL_DIR / "migrations").glob("*.sql")):
        m = _MIGRATION_NAME.match(f.name)
        if not m:
            raise StoreError(f"migration file {f} is not named NNN_name.sql")
        out.append((int(m.group(1)), m.group(2), f))
    versions = [v for v, _, _ in out]
    if len(versions) != len(set(versions)):
        raise StoreError(f"two migrations share a version number in {SQL_DIR / 'migrations'}")
    return out


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Apply every migration not yet recorded in schema_version, each in its own transaction; returns the version."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, "
        "applied_at TIMESTAMPTZ NOT NULL)"
    )
    done = {v for (v,) in con.execute("SELECT version FROM schema_version").fetchall()}
    for version, name, path in migrations():
        if version in done:
            continue
        with transaction(con):
            con.execute(path.read_text())
            con.execute(
                "INSERT INTO schema_version VALUES (?, ?, ?)", [version, name, datetime.now(timezone.utc)]
            )
    return schema_version(con)


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """The highest applied migration version (0 for an empty store)."""
    return con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN/COMMIT, rolling back whole on any error so that a failed batch leaves nothing half-written."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
