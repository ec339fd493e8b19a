"""Load time of the 505 sp500_5yr price files through hitchhiker vs DuckDB's own read_csv into a bare table.

Baseline: `CREATE TABLE bare AS SELECT * FROM read_csv('<glob>')` in a fresh DuckDB file, which is the fastest
way DuckDB itself loads these files (no validation, no flags, no upsert, no key). hitchhiker: `prices.ingest_csv`
into a fresh, migrated store (validation, flags, per-ticker counts, upsert by (ticker, date), one transaction).
Runs alternate and the medians are compared, so machine load hits both alike. Target: ratio <= 1.5.

    .venv/bin/python bench/ingest.py [--prices-dir ../shared/data/prices/sp500_5yr] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _result import report  # noqa: E402  (bench/ is the script's own folder on sys.path)

from hitchhiker import db, prices  # noqa: E402

TARGET_RATIO = 1.5
EXPECTED_ROWS = 619_040


def time_baseline(pattern: str, workdir: Path, i: int) -> float:
    con = duckdb.connect(str(workdir / f"bare{i}.duckdb"))
    t0 = time.perf_counter()
    con.execute(f"CREATE TABLE bare AS SELECT * FROM read_csv('{pattern}')")
    con.execute("CHECKPOINT")
    elapsed = time.perf_counter() - t0
    rows = con.execute("SELECT count(*) FROM bare").fetchone()[0]
    con.close()
    assert rows == EXPECTED_ROWS, f"baseline read {rows} rows"
    return elapsed


def time_explicit(pattern: str, workdir: Path, i: int) -> float:
    """For reference only: read_csv told the columns (no dialect sniffing per file), still no checks or key."""
    con = duckdb.connect(str(workdir / f"explicit{i}.duckdb"))
    t0 = time.perf_counter()
    con.execute(f"CREATE TABLE bare AS SELECT * FROM read_csv('{pattern}', header = true, auto_detect = false, "
                "columns = {'date': 'DATE', 'open': 'DOUBLE', 'high': 'DOUBLE', 'low': 'DOUBLE', "
                "'close': 'DOUBLE', 'volume': 'BIGINT', 'Name': 'VARCHAR'})")
    con.execute("CHECKPOINT")
    elapsed = time.perf_counter() - t0
    con.close()
    return elapsed


def time_hitchhiker(pattern: str, workdir: Path, i: int) -> tuple[float, float]:
    con = db.connect(workdir / f"store{i}.duckdb")  # migrations are set-up, not load time
    t0 = time.perf_counter()
    report = prices.ingest_csv(con, pattern)
    con.execute("CHECKPOINT")
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = prices.ingest_csv(con, pattern)
    second = time.perf_counter() - t0
    rows = con.execute("SELECT count(*) FROM prices").fetchone()[0]
    con.close()
    assert report.inserted == rows == EXPECTED_ROWS and again.unchanged == EXPECTED_ROWS, (report, again, rows)
    return first, second


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prices-dir", default=str(ROOT.parent / "shared" / "data" / "prices" / "sp500_5yr"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pattern = str(Path(args.prices_dir) / "*.csv")
    n_files = len(list(Path(args.prices_dir).glob("*.csv")))
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        workdir = Path(tmp)
        time_baseline(pattern, workdir, -1)  # warm the OS file cache for both contenders
        base, ours, rerun, explicit = [], [], [], []
        for i in range(args.repeats):
            base.append(time_baseline(pattern, workdir, i))
            explicit.append(time_explicit(pattern, workdir, i))
            first, second = time_hitchhiker(pattern, workdir, i)
            ours.append(first)
            rerun.append(second)
            print(f"run {i}: duckdb read_csv {base[-1]:.2f}s  hitchhiker ingest {first:.2f}s  "
                  f"(re-ingest, all unchanged: {second:.2f}s; read_csv with explicit columns {explicit[-1]:.2f}s)",
                  flush=True)
    b, h = statistics.median(base), statistics.median(ours)
    ratio = h / b
    print(f"{n_files} files, {EXPECTED_ROWS} rows: duckdb read_csv median {b:.2f}s, hitchhiker median {h:.2f}s, "
          f"re-ingest median {statistics.median(rerun):.2f}s")
    e = statistics.median(explicit)
    print(f"for reference: read_csv with explicit columns (no sniffing) median {e:.2f}s, hitchhiker / that = {h / e:.2f}")
    return report("ingest", ratio, "<=", TARGET_RATIO)


if __name__ == "__main__":
    sys.exit(main())
