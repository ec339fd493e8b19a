"""Daily prices into the store: CSV files and yfinance behind one small interface, upserted by (ticker, date).

Every source fills the temp table `price_staging`; the SQL in `sql/ingest/prices_*.sql` then validates, flags,
de-duplicates and upserts the whole batch in one transaction, so a failed batch leaves nothing half-written.

Bad input policy (also in README "Ingest"):
- A file that cannot be read as one of the two formats (missing file, unknown header, wrong column count,
  unparsable date or number) fails the whole batch with a `PriceInputError` naming file and line.
- The same (ticker, date) twice in a batch with different values fails the batch (naming both places);
  an exact repeat is collapsed and counted in `duplicates`.
- A row no later stage can use (NaN/zero/negative price, missing close, unknown ticker symbol, implausible
  date, a negative or fractional volume) is rejected: not stored, counted, and listed in `problems` with its
  file and line.
- Real vendor quirks are kept and flagged in `prices.flags`: 'missing_ohlc' (open/high/low NULL),
  'low_above_high', 'close_outside_range'.
- yfinance: a ticker whose frame comes back empty (network failure, rate limit, unknown symbol) is retried
  with backoff, then reported in `failed`; the other tickers are stored.
"""
from __future__ import annotations

import csv
import gzip
import glob
import io
import logging
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Iterable, Sequence

import duckdb

from hitchhiker import faults
from hitchhiker.db import sql_text, transaction

log = logging.getLogger(__name__)

SP500_HEADER = ("date", "open", "high", "low", "close", "volume", "Name")
LONG_HEADER = ("ticker", "date", "open", "high", "low", "close", "adj_close", "volume")
_READ_SQL = {SP500_HEADER: "ingest/prices_read_sp500", LONG_HEADER: "ingest/prices_read_long"}
MAX_LISTED_PROBLEMS = 20
_STORE_REJECTS = ", store_rejects = true, rejects_table = 'price_read_errors', rejects_scan = 'price_read_scans'"
# A ticker as Yahoo writes it (BRK.B, BF-B, ^GSPC, EURUSD=X), trimmed and upper-cased; never a path ('../x', 'a/b').
# The same pattern is price_problem's in sql/ingest/prices_staging.sql (a test holds them equal).
TICKER_PATTERN = re.compile(r"[A-Z0-9^][A-Z0-9.\-=^]{0,19}")


class PriceInputError(ValueError):
    """Input that cannot be ingested as a batch; the message names the file and line (nothing was stored)."""


def is_ticker(symbol: str) -> bool:
    """Whether a trimmed, upper-cased symbol is a ticker the store takes: the one rule for prices, news and names."""
    return TICKER_PATTERN.fullmatch(symbol) is not None


@dataclass
class IngestReport:
    """What one ingestion batch did. `per_key` holds the same counts per ticker (prices) or feed (news)."""

    source: str
    read: int = 0  # rows (or feed entries) seen
    inserted: int = 0
    updated: int = 0  # stored rows whose values were corrected
    unchanged: int = 0
    duplicates: int = 0  # exact repeats inside the batch, collapsed
    rejected: int = 0  # rows not stored because unusable (see `problems`)
    flagged: int = 0  # rows stored with a data-quality flag
    problems: list[str] = field(default_factory=list)  # 'where: why' for rejected rows (first few)
    failed: dict[str, str] = field(default_factory=dict)  # ticker or feed -> why nothing came back
    per_key: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> str:
        text = (f"{self.source}: read {self.read}, inserted {self.inserted}, updated {self.updated}, "
                f"unchanged {self.unchanged}, duplicates {self.duplicates}, rejected {self.rejected}, "
                f"flagged {self.flagged}")
        if self.failed:
            text += f", failed {len(self.failed)} ({', '.join(sorted(self.failed))})"
        return text


# --- CSV -------------------------------------------------------------------------------------------------

def csv_files(path_or_glob: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The price files meant by a file, a directory (its *.csv and *.csv.gz), a glob, or a list of these."""
    if isinstance(path_or_glob, (list, tuple)):
        return sorted({f for p in path_or_glob for f in csv_files(p)})
    p = Path(path_or_glob)
    if p.is_dir():
        files = sorted(p.glob("*.csv")) + sorted(p.glob("*.csv.gz"))
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(str(path_or_glob)) if Path(f).is_file())
    if not files:
        raise FileNotFoundError(f"no price CSV files at {path_or_glob}")
    return [f.resolve() for f in files]


def _open_text(path: Path):
    raw = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def _header(path: Path) -> tuple[str, ...]:
    try:
        with _open_text(path) as f:
            first = f.readline()
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise PriceInputError(f"{path}: cannot read the header line ({e})") from None
    header = tuple(h.strip() for h in next(csv.reader([first]), []))
    if header not in _READ_SQL:
        raise PriceInputError(
            f"{path}:1: unknown price CSV header {','.join(header) or '(empty file)'}; expected "
            f"{','.join(SP500_HEADER)} or {','.join(LONG_HEADER)}")
    return header


def ingest_csv(con: duckdb.DuckDBPyConnection, path_or_glob) -> IngestReport:
    """Upsert price CSV files (sp500_5yr or long format; file, directory, glob or list) as one batch."""
    files = csv_files(path_or_glob)
    by_format: dict[tuple[str, ...], list[str]] = {}
    for f in files:
        by_format.setdefault(_header(f), []).append(str(f))
    try:
        with transaction(con):
            con.execute(sql_text("ingest/prices_staging"))
            for header, names in by_format.items():
                # Recording rejects slows the read by a third, so the fast path stops at the first bad line
                # and only a failed batch is read again to name every bad line.
                con.execute(sql_text(_READ_SQL[header]), {"files": names})
            return _validate_and_upsert(con, "csv")
    except (duckdb.InvalidInputException, duckdb.ConversionException, duckdb.IOException) as e:
        _raise_read_errors(con, by_format, e)
        raise


def _raise_read_errors(con, by_format: dict[tuple[str, ...], list[str]], error: Exception) -> None:
    """Read the failed batch again, recording DuckDB's rejects, and raise a PriceInputError naming them all."""
    errors = []
    try:
        with transaction(con):
            con.execute(sql_text("ingest/prices_staging"))
            for header, names in by_format.items():
                for table in ("price_read_errors", "price_read_scans"):
                    con.execute(f"DROP TABLE IF EXISTS {table}")
                con.execute(sql_text(_READ_SQL[header]).replace("/*REJECTS*/", _STORE_REJECTS), {"files": names})
                errors += con.execute(sql_text("ingest/prices_read_errors")).fetchall()
            raise _Diagnosed()
    except _Diagnosed:  # rolled back: the diagnostic read stores nothing
        pass
    except duckdb.Error:
        errors = []
    if not errors:
        raise PriceInputError(f"cannot read the price CSV files; nothing was stored: {error}") from None
    listed = [f"{path}:{line}: {kind.lower()}{f' in column {col}' if col else ''}: {message} | {text!r}"
              for path, line, kind, col, text, message in errors[:MAX_LISTED_PROBLEMS]]
    more = f"\n... and {len(errors) - MAX_LISTED_PROBLEMS} more" if len(errors) > MAX_LISTED_PROBLEMS else ""
    raise PriceInputError(f"{len(errors)} malformed price CSV line(s); nothing was stored:\n"
                          + "\n".join(listed) + more) from None


class _Diagnosed(Exception):
    """Rolls back the diagnostic read."""


def _lines_of(path: str, keys: set[tuple[str, date]]) -> dict[tuple[str, date], list[int]]:
    """Line numbers of (ticker, date) rows in a price CSV, in file order; only used to name rows in error messages."""
    found: dict[tuple[str, date], list[int]] = {}
    with _open_text(Path(path)) as f:
        reader = csv.DictReader(f)
        for row in reader:
            ticker = (row.get("Name") or row.get("ticker") or "").strip().upper()
            try:
                day = datetime.strptime((row.get("date") or "").strip(), "%Y-%m-%d").date()
            except ValueError:
                continue
            if (ticker, day) in keys:
                found.setdefault((ticker, day), []).append(reader.line_num)
    return found


def _where(rows: list[tuple[str, str, date]]) -> list[str]:
    """'file:line' (or 'yfinance TICKER DATE') for each (origin, ticker, date); a key repeated in one file is given
    its lines in file order (a conflict inside one file names both lines)."""
    lines: dict[tuple[str, str, date], list[int]] = {}
    for origin in {o for o, _, _ in rows if o != "yfinance"}:
        keys = {(t or "", d) for o, t, d in rows if o == origin}
        for key, found in _lines_of(origin, keys).items():
            lines[(origin, *key)] = found
    out = []
    for origin, ticker, day in rows:
        if origin == "yfinance":
            out.append(f"yfinance {ticker} {day}")
        else:
            left = lines.get((origin, ticker or "", day))
            out.append(f"{origin}:{left.pop(0) if left else '?'}")
    return out


# volume is staged as DOUBLE so that a fractional one can be rejected (a BIGINT read would round it).
_BATCH_COLUMNS = "ticker, date, open, high, low, close, adj_close, CAST(volume AS BIGINT) AS volume, origin, flags"


def _validate_and_upsert(con, source: str) -> IngestReport:
    """Report rejected rows, refuse conflicting repeats, then upsert what `price_staging` holds."""
    report = IngestReport(source=source)
    report.read, report.rejected = con.execute(
        "SELECT count(*), count(problem) FROM price_staging").fetchone()
    if report.rejected:
        bad = con.execute(
            "SELECT origin, ticker, date, problem FROM price_staging WHERE problem IS NOT NULL "
            "ORDER BY origin, ticker, date LIMIT ?", [MAX_LISTED_PROBLEMS]).fetchall()
        where = _where([(o, t, d) for o, t, d, _ in bad])
        report.problems = [f"{w}: {problem}" for w, (_, _, _, problem) in zip(where, bad)]
        log.warning("rejected %d price row(s): %s", report.rejected, "; ".join(report.problems))
    con.execute(f"CREATE OR REPLACE TEMP VIEW price_batch AS SELECT {_BATCH_COLUMNS} FROM price_staging "
                "WHERE problem IS NULL")
    counts = con.execute(sql_text("ingest/prices_counts")).fetchall()
    if any(rows != days for _, rows, days, *_ in counts):
        _collapse_repeats(con, report)
        counts = con.execute(sql_text("ingest/prices_counts")).fetchall()
    for ticker, _, _, inserted, updated, unchanged, flagged in counts:
        report.per_key[ticker] = {"inserted": inserted, "updated": updated, "unchanged": unchanged,
                                  "flagged": flagged}
        report.inserted += inserted
        report.updated += updated
        report.unchanged += unchanged
        report.flagged += flagged
    if report.inserted or report.updated:
        con.execute(sql_text("ingest/prices_upsert"))
    for kind, name in (("VIEW", "price_batch"), ("TABLE", "price_dedup"), ("TABLE", "price_staging")):
        con.execute(f"DROP {kind} IF EXISTS {name}")
    faults.point("prices.before-commit")
    return report


def _collapse_repeats(con, report: IngestReport) -> None:
    """A batch repeating a (ticker, date): exact repeats collapse; different values are a PriceInputError."""
    con.execute(sql_text("ingest/prices_dedup"))
    conflicts = con.execute(
        "SELECT s.origin, s.ticker, s.date FROM price_staging s SEMI JOIN "
        "(SELECT ticker, date FROM price_dedup WHERE variants > 1 LIMIT 10) d USING (ticker, date) "
        "WHERE s.problem IS NULL ORDER BY s.ticker, s.date, s.origin").fetchall()
    if conflicts:
        listed = [f"{t} {d}: {w}" for w, (_, t, d) in zip(_where(conflicts), conflicts)]
        raise PriceInputError("the same (ticker, date) appears more than once in the batch with different "
                              "values; nothing was stored:\n" + "\n".join(listed))
    report.duplicates = con.execute("SELECT sum(repeats) FROM price_dedup").fetchone()[0]
    con.execute(f"CREATE OR REPLACE TEMP VIEW price_batch AS SELECT {_BATCH_COLUMNS} FROM price_dedup")


# --- yfinance --------------------------------------------------------------------------------------------

class _Collect(logging.Handler):
    """Keeps yfinance's error lines: its download() logs why a ticker failed instead of raising."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def download_yfinance(tickers: Iterable[str], start, end, session=None, retries: int = 3,
                      backoff_s: float = 2.0):
    """Daily bars in long format (a pandas DataFrame) and {ticker: why} for tickers that came back empty.

    Raw OHLC plus Yahoo's adjusted close (auto_adjust=False, set explicitly); `end` is exclusive. Empty
    frames are what yfinance returns on network errors and rate limits, so those tickers are retried with
    exponential backoff (backoff_s, 2*backoff_s, ...) before being reported.
    """
    import pandas as pd
    import yfinance as yf

    pending = sorted({t.strip().upper() for t in tickers if t.strip()})
    if not pending:
        raise ValueError("no tickers given")
    frames, failed = [], {}
    yf_log = logging.getLogger("yfinance")
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        collect = _Collect()
        yf_log.addHandler(collect)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pandas deprecation noise from inside yfinance
                data = yf.download(pending, start=start, end=end, auto_adjust=False, actions=False,
                                   repair=False, keepna=False, progress=False, group_by="column",
                                   multi_level_index=True, session=session, threads=len(pending) > 1)
        except Exception as e:  # yfinance raises only on set-up problems (bad session, bad dates)
            if isinstance(e, (ValueError, TypeError)):
                raise ValueError(f"yfinance rejected the request for {pending}: {e}") from None
            data, collect.messages = None, collect.messages + [repr(e)]
        finally:
            yf_log.removeHandler(collect)
        still = []
        for ticker in pending:
            bars = _ticker_bars(data, ticker)
            if bars is None:
                still.append(ticker)
                # yfinance names the symbol as "['ZZZZ']: ..." or "$ZZZZ: ..." in its error lines.
                why = [m for m in collect.messages if f"'{ticker}'" in m or f"{ticker}:" in m]
                failed[ticker] = (why[-1] if why else "yfinance returned an empty frame") + \
                    f" (after {attempt + 1} attempt(s))"
            else:
                frames.append(bars)
                failed.pop(ticker, None)
        pending = still
        if not pending:
            break
    columns = ["ticker", "date", "open", "high", "low", "close", "adj_close", "volume"]
    long = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    numeric = {c: "float64" for c in columns[2:]}  # volume too: a missing volume is NaN, stored as NULL
    return long[columns].astype(numeric), failed


def _ticker_bars(data, ticker: str):
    """One ticker's rows of a yf.download frame in long format, or None when it came back empty."""
    if data is None or data.empty or ("Close", ticker) not in data.columns:
        return None
    sub = data.xs(ticker, axis=1, level="Ticker")
    sub = sub[sub["Close"].notna() | sub["Open"].notna()]
    if sub.empty:
        return None
    out = sub.rename(columns={"Open": "open", "High": "high", "Low": "low", "Close": "close",
                              "Adj Close": "adj_close", "Volume": "volume"})
    out = out.reset_index(names="date")
    out["date"] = out["date"].dt.date
    out["ticker"] = ticker
    return out


def ingest_bars(con: duckdb.DuckDBPyConnection, bars, source: str = "yfinance") -> IngestReport:
    """Upsert downloaded bars in long format: a pandas DataFrame, an Arrow table, or a Parquet file path."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(bars, (str, os.PathLike)):
        bars = pq.read_table(bars)
    elif isinstance(bars, pd.DataFrame):
        bars = pa.Table.from_pandas(bars, preserve_index=False)  # NaN becomes NULL
    con.register("yf_bars", bars)
    try:
        with transaction(con):
            con.execute(sql_text("ingest/prices_staging"))
            con.execute(sql_text("ingest/prices_read_frame"))
            return _validate_and_upsert(con, source)
    finally:
        con.unregister("yf_bars")


def ingest_yfinance(con: duckdb.DuckDBPyConnection, tickers: Iterable[str], start, end, session=None,
                    retries: int = 3, backoff_s: float = 2.0) -> IngestReport:
    """Download daily bars from Yahoo and upsert them; empty tickers are reported in `failed`, not raised.

    `con` is held through the downloads and their retries: a caller that holds the store's single writer lock
    downloads first (`download_yfinance`) and opens the store only to `ingest_bars`, as the CLI and flows do."""
    bars, failed = download_yfinance(tickers, start, end, session=session, retries=retries, backoff_s=backoff_s)
    report = ingest_bars(con, bars)
    report.failed = failed
    for ticker in failed:
        log.warning("yfinance: no data for %s: %s", ticker, failed[ticker])
    return report
