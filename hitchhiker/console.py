"""The SQL console on the store (`hitchhiker sql`): read-only unless asked to write, and then it cannot escape.

Read-only means: no file written anywhere, no other database attached, no extension installed or loaded, and no
file read but the store itself and its replay files (the Parquet files under the replay root of the storage the
console was opened with; a query file, @FILE, is read by Python before DuckDB sees the text). Two guards enforce it:

1. DuckDB's own settings: the store opened read-only, `enable_external_access = false` with the replay root as the
   one `allowed_directories` entry (every file DuckDB opens, local or through a registered fsspec filesystem such as
   s3://, must lie under it), no extension autoloading or autoinstalling, no persistent secrets, no temp directory
   (a query that does not fit in memory fails instead of spilling to disk), and `lock_configuration = true`, so no
   statement (SET, RESET, PRAGMA, enable_profiling, enable_logging) can change any of it.
2. The parsed statements: DuckDB parses the text (duckdb.extract_statements) and every statement's type is checked
   before any statement runs: only queries. DuckDB has no read-only directory: without this check COPY ... TO a
   file under the replay root, or EXPLAIN ANALYZE of such a COPY, would write there.

With write=True the store is opened read-write and any statement runs, as `hitchhiker sql --write` always did.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterator

import duckdb

from hitchhiker import db, replay
from hitchhiker import storage as _storage
from hitchhiker.db import StoreError

# Settings a read-only console is opened with (those that only a running database accepts are set in open_console).
READ_ONLY_CONFIG = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_persistent_secrets": False,  # persistent secrets are files under ~/.duckdb
    "temp_directory": "",  # no spilling to disk
}
QUERY_TYPES = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.CALL})  # SELECT covers SHOW, DESCRIBE,
# SUMMARIZE, FROM-first and PIVOT with an IN list; CALL is SELECT * FROM a table function
READ_PRAGMAS = frozenset({"collations", "database_list", "database_size", "functions", "metadata_info", "platform",
                          "show", "show_databases", "show_tables", "show_tables_expanded", "storage_info",
                          "table_info", "user_agent", "version"})
ALLOWED = ("SELECT, SHOW, DESCRIBE, SUMMARIZE, EXPLAIN [ANALYZE] of a query, CALL of a table function, the PRAGMAs "
           "that only read (table_info, show_tables, ...)")


class RefusedError(StoreError):
    """A statement the read-only console does not run (named in the message)."""


def open_console(db_file: str | os.PathLike | None = None, storage: str | None = None,
                 write: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection to the store for user SQL: read-only and locked down (module docstring) unless write.

    storage: the storage URL whose replay root the console may read (default $HITCHHIKER_STORAGE, else the folder
    beside the store: replay.root_for)."""
    if write:
        return db.connect(db_file, read_only=False, migrate_schema=True)
    root = replay.root_for(db_file, storage)
    con = db.connect(db_file, read_only=True, migrate_schema=False, config=READ_ONLY_CONFIG)
    try:
        readable = str(Path(root).resolve()) + os.sep if _storage.is_local(root) else root.rstrip("/") + "/"
        con.execute("SET allowed_directories = ?", [[readable]])  # DuckDB accepts it only once started
        replay.attach_storage(con, root)  # a remote root's fsspec filesystem, registered while that is still allowed
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def check_statements(sql: str) -> list[duckdb.Statement]:
    """The statements of sql, each parsed by DuckDB, if every one is a query; else RefusedError naming the first
    that is not (nothing has run)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise StoreError(f"query failed: {e}") from None
    for i, statement in enumerate(statements, 1):
        why = _refusal(statement)
        if why is not None:
            raise RefusedError(f"refused: statement {i} of {len(statements)} is {why} ({_short(statement.query)}); "
                               f"{_allowed()}")
    return statements


def run(con: duckdb.DuckDBPyConnection, sql: str, write: bool = False) -> duckdb.DuckDBPyRelation | None:
    """Run sql on a console connection; the last statement's result (None when it has none).

    Without write every statement is checked (check_statements) before the first runs, and the checked statements
    themselves are what runs (the text is not parsed again)."""
    if write:
        return con.sql(sql)
    statements = check_statements(sql)
    if not statements:
        return None
    for statement in statements[:-1]:
        con.execute(statement).complete()  # run to the end, rows unread (DuckDB runs nothing else meanwhile)
    return con.sql(statements[-1])


@contextlib.contextmanager
def explained_errors(con: duckdb.DuckDBPyConnection, write: bool = False) -> Iterator[None]:
    """DuckDB errors of user SQL (running it or fetching its result) as one StoreError line that says what to do."""
    try:
        yield
    except duckdb.PermissionException as e:
        (readable,), = con.execute("SELECT current_setting('allowed_directories')").fetchall()
        raise RefusedError(f"refused: {e}. Without --write the console reads only the store and its replay files "
                           f"under {', '.join(readable)} (--storage names where they live)") from None
    except duckdb.Error as e:
        if not write and "configuration has been locked" in str(e):
            raise RefusedError(f"refused: {e} (the read-only console's settings cannot change)") from None
        if not write and "read-only" in str(e).lower():
            raise RefusedError(f"refused: this statement writes, and the database was opened read-only; pass "
                               f"--write. ({e})") from None
        raise StoreError(f"query failed: {e}") from None


def _refusal(statement: duckdb.Statement) -> str | None:
    """Why the console does not run statement (a phrase such as 'a COPY'), or None when it is a query."""
    try:
        kind = statement.type
    except ValueError:  # a type the Python client has no name for (UPDATE EXTENSIONS in duckdb 2.0)
        return "a statement of a type the console does not know"
    if kind in QUERY_TYPES:
        return None
    if kind == duckdb.StatementType.PRAGMA:
        words = _words(statement.query)
        return None if len(words) > 1 and words[1] in READ_PRAGMAS else "a PRAGMA other than those that only read"
    if kind == duckdb.StatementType.EXPLAIN:  # EXPLAIN ANALYZE runs the statement it explains
        try:
            inner = duckdb.extract_statements(_explained(statement.query))
        except (duckdb.Error, ValueError):
            inner = []
        why = _refusal(inner[0]) if len(inner) == 1 else "a statement the console cannot tell"
        return None if why is None else f"an EXPLAIN of {why}"
    if kind == duckdb.StatementType.MULTI:
        return "a statement DuckDB runs as several (a PIVOT without IN list: give one)"
    name = kind.name.replace("_", " ")
    return f"{'an' if name[0] in 'AEIOU' else 'a'} {name}"


def _tokens(text: str) -> list[int]:
    """Start offsets of text's tokens by DuckDB's own tokenizer, comments left out."""
    return [pos for pos, kind in duckdb.tokenize(text) if kind != duckdb.token_type.comment]


def _words(text: str) -> list[str]:
    """The leading word of each token, lower case ('' for an operator or a string)."""
    return [(re.match(r"\w*", text[pos:]).group()).lower() for pos in _tokens(text)]


def _explained(text: str) -> str:
    """The statement an EXPLAIN statement explains: the text after EXPLAIN, ANALYZE and a parenthesized option list."""
    starts = _tokens(text)[1:]
    if starts and re.match(r"analy[sz]e\b", text[starts[0]:], re.IGNORECASE):
        starts = starts[1:]
    if starts and text[starts[0]] == "(":
        depth = 0
        while starts:
            depth += {"(": 1, ")": -1}.get(text[starts[0]], 0)
            starts = starts[1:]
            if depth == 0:
                break
    return text[starts[0]:] if starts else ""


def _short(text: str, width: int = 80) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= width else one_line[:width - 3] + "..."


def _allowed() -> str:
    return (f"without --write the console runs only queries: {ALLOWED}; --write opens the store read-write and "
            f"runs any statement")
