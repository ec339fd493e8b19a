"""The `hitchhiker` command line: thin wrappers over the library, one sub-command per stage.

Library imports happen inside each handler so that `hitchhiker --help` stays fast (torch is slow to import).
Every sub-command takes `--db PATH` (default $HITCHHIKER_DB or ./hitchhiker.duckdb).
"""
from __future__ import annotations

import argparse
import sys

from hitchhiker.db import StoreError


def _db_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--db", default=None, help="DuckDB file (default: $HITCHHIKER_DB or ./hitchhiker.duckdb)")
    return p


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# --- sql -------------------------------------------------------------------------------------------------

def _add_sql(sub, parent) -> None:
    p = sub.add_parser("sql", parents=[parent], help="run SQL on the store (read-only unless --write)")
    p.add_argument("query", help="SQL text, or @FILE to read it from a file")
    p.add_argument("--write", action="store_true", help="open the database read-write")
    p.add_argument("--max-rows", type=int, default=100)
    p.add_argument("--csv", action="store_true", help="print the result as CSV (header + rows) instead of a table")
    p.set_defaults(func=_cmd_sql)


def _cmd_sql(args) -> int:
    from hitchhiker import db

    query = open(args.query[1:]).read() if args.query.startswith("@") else args.query
    con = db.connect(args.db, read_only=not args.write, migrate_schema=args.write)
    try:
        rel = con.sql(query)
    except Exception as e:  # duckdb's own message is the useful part
        if not args.write and "read-only" in str(e).lower():
            raise StoreError(f"refused: this statement writes, and the database was opened read-only; pass --write. ({e})") from None
        raise StoreError(f"query failed: {e}") from None
    if rel is None:
        return 0
    if args.csv:
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(rel.columns)
        writer.writerows(rel.fetchall())
    else:
        rel.show(max_rows=args.max_rows, max_width=200)
    return 0


# --- server / prefect-setup ------------------------------------------------------------------------------

def _add_server(sub, parent) -> None:
    p = sub.add_parser("server", help="start the Prefect server and UI (127.0.0.1 by default)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4200)
    p.set_defaults(func=_cmd_server)
    p = sub.add_parser("prefect-setup", help="create the cpu/gpu work pools and the DuckDB writer limit (idempotent)")
    p.set_defaults(func=_cmd_prefect_setup)


def _cmd_server(args) -> int:
    import os

    env = dict(os.environ)
    # The UI asks this URL for the API; it must match the port the server really listens on.
    env.setdefault("PREFECT_UI_API_URL", f"http://{args.host}:{args.port}/api")
    print(f"Prefect UI: http://{args.host}:{args.port}  (API {env['PREFECT_UI_API_URL']})", flush=True)
    prefect = os.path.join(os.path.dirname(sys.executable), "prefect")
    os.execve(prefect, [prefect, "server", "start", "--host", args.host, "--port", str(args.port)], env)
    return 0  # not reached


def _cmd_prefect_setup(args) -> int:
    from flows.setup import setup

    print("\n".join(setup()))
    return 0


# --- main ------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hitchhiker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    parent = _db_parent()
    _add_sql(sub, parent)
    _add_server(sub, parent)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (StoreError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
