"""Company names for anonymization: from Yahoo (via yfinance), from a CSV, or from SEC's company_tickers.json.

A state's headlines are scrubbed of its tickers' symbols and of every name recorded here (`company_names`). A ticker
without a recorded name keeps its company's name in its headlines, so states record which tickers had names
(`states.names_known`) and the evaluation refuses windows whose headlines could not be fully anonymized.

Yahoo gives today's names (`longName`, `shortName` of the chart metadata), not former ones (Facebook for META):
add those, and the short forms headlines use, with a CSV (`ticker,name[,alias...]`). Names are only ever added;
re-ingesting the same file or ticker stores nothing twice.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Iterable

import duckdb

from hitchhiker import prices, states

log = logging.getLogger(__name__)


class NamesInputError(ValueError):
    """A names file that cannot be read; the message names the file and line (nothing was stored)."""


def missing(con: duckdb.DuckDBPyConnection, tickers: Iterable[str] | None = None) -> list[str]:
    """The tickers (default: every ticker in `prices`) with no recorded company name."""
    if tickers is None:
        tickers = [t for (t,) in con.execute("SELECT DISTINCT ticker FROM prices").fetchall()]
    wanted = sorted({t.strip().upper() for t in tickers if t and t.strip()})
    known = {t for (t,) in con.execute(
        "SELECT DISTINCT ticker FROM company_names WHERE ticker IN (SELECT unnest(?::VARCHAR[]))", [wanted]).fetchall()}
    return [t for t in wanted if t not in known]


def store(con: duckdb.DuckDBPyConnection, names: dict[str, list[str]], source: str) -> int:
    """Record {ticker: [names]} with their source; returns the rows added."""
    return states.set_company_names(con, names, source=source)


# --- Yahoo ------------------------------------------------------------------------------------------------------

def yahoo_names(tickers: Iterable[str], session=None, retries: int = 3, backoff_s: float = 2.0
                ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """({ticker: [longName, shortName]}, {ticker: why}) from Yahoo's chart metadata, one small request per ticker.

    Like prices, a ticker whose request fails for a reason that may pass (rate limit, network) is retried with
    exponential backoff; an unknown symbol (404, no data) is reported at once.
    """
    import yfinance as yf

    pending = sorted({t.strip().upper() for t in tickers if t and t.strip()})
    if not pending:
        raise ValueError("no tickers given")
    found: dict[str, list[str]] = {}
    failed: dict[str, str] = {}
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        still = []
        for ticker in pending:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # yfinance's deprecation and pandas noise
                    t = yf.Ticker(ticker, session=session)
                    t.history(period="5d", raise_errors=True)
                    meta = t.history_metadata or {}
            except Exception as e:  # yfinance raises HTTP, rate-limit and "possibly delisted" errors alike
                why = f"{type(e).__name__}: {e}"[:300]
                failed[ticker] = f"{why} (after {attempt + 1} attempt(s))"
                if not _permanent(why):
                    still.append(ticker)
                continue
            names = [n for n in (meta.get("longName"), meta.get("shortName")) if isinstance(n, str) and n.strip()]
            if names:
                found[ticker] = list(dict.fromkeys(" ".join(n.split()) for n in names))
                failed.pop(ticker, None)
            else:
                failed[ticker] = "Yahoo's metadata has no longName or shortName"
        pending = still
        if not pending:
            break
    return found, failed


def _permanent(why: str) -> bool:
    return any(s in why for s in ("404", "Not Found", "delisted", "No data found"))


def ingest_yahoo(con: duckdb.DuckDBPyConnection, tickers: Iterable[str], session=None, retries: int = 3,
                 backoff_s: float = 2.0) -> tuple[int, dict[str, str]]:
    """Fetch and store Yahoo's names of `tickers`; (rows added, {ticker: why} for those without a name)."""
    found, failed = yahoo_names(tickers, session=session, retries=retries, backoff_s=backoff_s)
    return store(con, found, "yahoo"), failed


# --- files ------------------------------------------------------------------------------------------------------

def read_file(path: str | Path) -> dict[str, list[str]]:
    """{ticker: [names]} from a `ticker,name[,alias...]` CSV (a header row 'ticker,name,...' is optional) or from
    SEC's company_tickers.json ({"0": {"cik_str": ..., "ticker": "AAPL", "title": "Apple Inc."}, ...})."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise NamesInputError(f"{path}: cannot read ({e})") from None
    if text.lstrip().startswith("{"):
        return _read_sec(path, text)
    out: dict[str, list[str]] = {}
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if line_no == 1 and [c.lower() for c in cells[:2]] == ["ticker", "name"]:
            continue
        ticker, *names = cells
        names = [n for n in names if n]
        if not _is_symbol(ticker) or not names:
            raise NamesInputError(f"{path}:{line_no}: expected 'ticker,name[,alias...]', got {','.join(row)!r}")
        out.setdefault(ticker.upper(), []).extend(names)
    if not out:
        raise NamesInputError(f"{path}: no names in the file")
    return out


def _read_sec(path: Path, text: str) -> dict[str, list[str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise NamesInputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    rows = data.values() if isinstance(data, dict) else data
    out: dict[str, list[str]] = {}
    for k, row in enumerate(rows):
        if not isinstance(row, dict) or not _is_symbol(str(row.get("ticker", ""))) or not str(row.get("title", "")).strip():
            raise NamesInputError(f"{path}: entry {k} is not {{'ticker': ..., 'title': ...}} (SEC company_tickers.json)")
        out.setdefault(row["ticker"].strip().upper(), []).append(row["title"].strip())
    if not out:
        raise NamesInputError(f"{path}: no entries")
    return out


def _is_symbol(text: str) -> bool:
    return prices.is_ticker(text.strip().upper())


def ingest_file(con: duckdb.DuckDBPyConnection, path: str | Path) -> int:
    """Store the names of a CSV or SEC JSON file (source 'csv:<name>' or 'sec:<name>'); returns rows added."""
    names = read_file(path)
    kind = "sec" if Path(path).read_text(encoding="utf-8-sig").lstrip().startswith("{") else "csv"
    return store(con, names, f"{kind}:{Path(path).name}")
