"""`hitchhiker sql`: the SQL console on the store, read-only unless --write (its guards: hitchhiker.console)."""
from __future__ import annotations

import sys
from pathlib import Path


def add_sql(sub, parent) -> None:
    p = sub.add_parser("sql", parents=[parent], help="run SQL on the store (read-only unless --write)")
    p.add_argument("query", help="SQL text, or @FILE to read it from a file")
    p.add_argument("--write", action="store_true", help="open the database read-write and run any statement "
                   "(without it: queries only, no file written, no other database attached, no file read but the "
                   "store and its replay files under --storage)")
    p.add_argument("--max-rows", type=int, default=100)
    p.add_argument("--csv", action="store_true", help="print the result as CSV (header + rows) instead of a table")
    p.set_defaults(func=_cmd_sql)


def _cmd_sql(args) -> int:
    from hitchhiker import console

    query = Path(args.query[1:]).read_text() if args.query.startswith("@") else args.query
    con = console.open_console(args.db, args.storage, write=args.write)
    try:
        with console.explained_errors(con, write=args.write):
            rel = console.run(con, query, write=args.write)
            if rel is None:
                return 0
            if args.csv:
                import csv

                writer = csv.writer(sys.stdout, lineterminator="\n")
                writer.writerow(rel.columns)
                writer.writerows(rel.fetchall())
            else:
                rel.show(max_rows=args.max_rows, max_width=200)
    finally:
        con.close()
    return 0
