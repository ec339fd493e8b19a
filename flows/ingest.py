"""Flows `ingest_prices` and `ingest_news`: thin wrappers over hitchhiker.prices / hitchhiker.news.

Network work (yfinance downloads, feed fetches) runs in tasks with retries; writes to DuckDB run one task at a
time under the store slot (flows/slots.py). A ticker or feed that fails is reported in the run's table
artifact and the others are still stored. Tasks return counts and paths, never frames.
"""
from __future__ import annotations

import shutil
import tempfile
from datetime import date, timedelta
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.slots import store_slot

DEFAULT_LOOKBACK_DAYS = 10  # re-fetch recent days so that vendor corrections replace what was stored
_NONE = {"inserted": 0, "updated": 0, "unchanged": 0}  # the counts of a ticker or feed that failed


def _counts(report) -> dict:
    return {k: getattr(report, k) for k in ("read", "inserted", "updated", "unchanged", "duplicates", "rejected",
                                              "flagged")} | {"problems": report.problems[:5]}


@task(retries=2, retry_delay_seconds=[10, 60])
def download_prices(tickers: list[str], start: str, end: str, out_dir: str) -> dict:
    """Daily bars of a chunk of tickers from Yahoo into a Parquet file; {path, rows, failed}. Raises (and is
    retried) only when every ticker came back empty, i.e. Yahoo or the network is down."""
    from hitchhiker import prices

    bars, failed = prices.download_yfinance(tickers, start, end)
    if len(failed) == len(set(tickers)):
        raise RuntimeError(f"yfinance returned nothing for {sorted(failed)}: {next(iter(failed.values()))}")
    path = Path(out_dir) / f"bars-{tickers[0]}-{len(tickers)}.parquet"
    bars.to_parquet(path, index=False)
    return {"path": str(path), "rows": len(bars), "failed": failed}


@task
def store_bars(db_path: str | None, parquet_path: str) -> dict:
    """Upsert downloaded bars under the store slot; per-ticker counts."""
    from hitchhiker import db, prices

    with store_slot():
        con = db.connect(db_path)
        try:
            report = prices.ingest_bars(con, parquet_path)
        finally:
            con.close()
    return {"per_ticker": report.per_key} | _counts(report)


@task
def store_price_csv(db_path: str | None, csv: str) -> dict:
    """Upsert price CSV files (file, directory or glob) under the store slot; per-ticker counts."""
    from hitchhiker import db, faults, prices

    with store_slot():
        con = db.connect(db_path)
        try:
            report = prices.ingest_csv(con, csv)
            faults.point("prices.after-commit")
        finally:
            con.close()
    return {"per_ticker": report.per_key} | _counts(report)


@task
def default_window(db_path: str | None, tickers: list[str] | None) -> dict:
    """Tickers already stored (when none are given) and a start a few days before the oldest latest date."""
    from hitchhiker import db

    with store_slot():
        con = db.connect(db_path)
        try:
            if not tickers:
                tickers = [t for (t,) in con.execute("SELECT DISTINCT ticker FROM prices ORDER BY 1").fetchall()]
            latest = con.execute("SELECT min(last) FROM (SELECT max(date) AS last FROM prices "
                                 "WHERE list_contains(?, ticker) GROUP BY ticker)", [tickers]).fetchone()[0]
        finally:
            con.close()
    start = (latest - timedelta(days=DEFAULT_LOOKBACK_DAYS)) if latest else date.today() - timedelta(days=5 * 365)
    return {"tickers": tickers, "start": start.isoformat()}


@flow(name="ingest_prices")
def ingest_prices(tickers: list[str] | None = None, start: str | None = None, end: str | None = None,
                  csv: str | None = None, db: str | None = None, chunk_size: int = 50,
                  retry_delay_s: float = 10.0) -> dict:
    """Prices from Yahoo (`tickers`, start..end exclusive; defaults: the stored tickers, from a few days before
    their latest stored date to today) or from CSV files (`csv`). Returns the totals; a table artifact lists
    each ticker's counts or why it failed."""
    logger = get_run_logger()
    rows, totals = [], {"inserted": 0, "updated": 0, "unchanged": 0, "rejected": 0, "failed": 0}
    results = []
    if csv:
        results.append(store_price_csv(db, csv))
    else:
        if not tickers or not start:
            window = default_window(db, tickers)
            tickers, start = window["tickers"], start or window["start"]
        if not tickers:
            raise ValueError("no tickers given and none stored yet: pass tickers (or csv)")
        end = end or (date.today() + timedelta(days=1)).isoformat()
        tickers = sorted({t.strip().upper() for t in tickers if t.strip()})
        out_dir = tempfile.mkdtemp(prefix="hitchhiker-bars-")
        try:
            for i in range(0, len(tickers), chunk_size):
                chunk = tickers[i:i + chunk_size]
                download = download_prices.with_options(retry_delay_seconds=[retry_delay_s, 6 * retry_delay_s])
                state = download(chunk, start, end, out_dir, return_state=True)
                if state.is_failed():  # the whole chunk, after retries; the other chunks go on
                    reason = str(state.message or state)[:300]
                    rows += [{"ticker": t, "status": f"failed: {reason}", **_NONE} for t in chunk]
                    totals["failed"] += len(chunk)
                    continue
                downloaded = state.result()
                rows += [{"ticker": t, "status": f"failed: {why[:300]}", **_NONE}
                         for t, why in downloaded["failed"].items()]
                totals["failed"] += len(downloaded["failed"])
                results.append(store_bars(db, downloaded["path"]))
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
    for result in results:
        for ticker, counts in result["per_ticker"].items():
            rows.append({"ticker": ticker, "status": "ok", **counts})
        for k in ("inserted", "updated", "unchanged", "rejected"):
            totals[k] += result[k]
        for problem in result["problems"]:
            logger.warning("rejected price row: %s", problem)
    create_table_artifact(table=sorted(rows, key=lambda r: r["ticker"]), key="ingest-prices",
                          description=f"Prices ingested: {totals}")
    logger.info("prices: %s", totals)
    return totals


@task(retries=2, retry_delay_seconds=[10, 60])
def ingest_feed(db_path: str | None, feed: str, ticker: str | None, tz: str | None = None) -> dict:
    """Fetch one feed (conditional GET) and upsert its items under the store slot, reading its dates that have no
    offset in `tz` (else rejecting them); raises on fetch/parse failure so that Prefect retries it."""
    from hitchhiker import db, faults, news

    with store_slot():
        con = db.connect(db_path)
        try:
            report = news.ingest_feeds(con, [feed], ticker_map={feed: ticker} if ticker else None,
                                       feed_tz={feed: tz} if tz else None)
            faults.point("news.after-commit")
        finally:
            con.close()
    if report.failed:
        raise RuntimeError(report.failed[feed])
    return {"status": report.per_key[feed]["status"]} | _counts(report)


@task
def store_news_csv(db_path: str | None, csv: str) -> dict:
    """Upsert a headline CSV under the store slot."""
    from hitchhiker import db, news

    with store_slot():
        con = db.connect(db_path)
        try:
            report = news.ingest_csv(con, csv)
        finally:
            con.close()
    return _counts(report)


def feed_entries(feeds: list[str | dict[str, str]], ticker_map: dict[str, str] | None = None
                 ) -> list[tuple[str, str | None, str | None]]:
    """(url, ticker, time zone) of each feed, checked before anything is fetched. A feed is a URL or file, or
    {url: ..., tz: America/New_York}: the IANA zone its dates without an offset are in (else they are rejected)."""
    from hitchhiker import news

    out = []
    for feed in feeds:
        url, tz = (feed, None) if isinstance(feed, str) else (feed.get("url"), feed.get("tz"))
        if not isinstance(feed, str) and set(feed) - {"url", "tz"}:
            raise ValueError(f"feed {feed}: unknown key(s) {sorted(set(feed) - {'url', 'tz'})}; a feed is a URL or "
                             "{url: ..., tz: <IANA time zone>}")
        if not url:
            raise ValueError(f"feed {feed}: no url")
        if tz:
            news.feed_zone(tz, url)
        out.append((url, news.feed_ticker(url, ticker_map), tz))
    return out


@flow(name="ingest_news")
def ingest_news(feeds: list[str | dict[str, str]] | None = None, csv: str | None = None, db: str | None = None,
                ticker_map: dict[str, str] | None = None, retry_delay_s: float = 10.0) -> dict:
    """News from RSS/Atom feeds (URLs or files, or {url, tz}: see `feed_entries`; a failing feed is reported, the
    others stored) and/or a headline CSV. Returns the totals; a table artifact lists each feed's counts or why it
    failed."""
    logger = get_run_logger()
    if not feeds and not csv:
        raise ValueError("nothing to ingest: pass feeds and/or csv")
    rows, totals = [], {"inserted": 0, "updated": 0, "unchanged": 0, "rejected": 0, "failed": 0}
    for feed, ticker, tz in feed_entries(feeds or [], ticker_map):
        fetch = ingest_feed.with_options(retry_delay_seconds=[retry_delay_s, 6 * retry_delay_s])
        state = fetch(db, feed, ticker, tz, return_state=True)
        if state.is_failed():
            rows.append({"feed": feed, "status": f"failed: {str(state.message or state)[:300]}", **_NONE})
            totals["failed"] += 1
            continue
        result = state.result()
        rows.append({"feed": feed, **result, "status": f"HTTP {result['status']}"})
    if csv:
        rows.append({"feed": csv, "status": "csv", **store_news_csv(db, csv)})
    for row in rows:
        for k in ("inserted", "updated", "unchanged", "rejected"):
            totals[k] += row.get(k, 0)
        for problem in row.pop("problems", []):
            logger.warning("rejected news item: %s", problem)
    create_table_artifact(table=rows, key="ingest-news", description=f"News ingested: {totals}")
    logger.info("news: %s", totals)
    return totals


@task(retries=2, retry_delay_seconds=[10, 60])
def fetch_names(tickers: list[str]) -> dict:
    """Company names of `tickers` from Yahoo; {names, failed}. Raises (and is retried) only when every ticker failed
    for a reason that may pass (network, rate limit); unknown symbols are reported, not retried."""
    from hitchhiker import names

    found, failed = names.yahoo_names(tickers)
    if not found and failed and not all(names._permanent(why) for why in failed.values()):
        raise RuntimeError(f"Yahoo returned no names for {sorted(failed)}: {next(iter(failed.values()))}")
    return {"names": found, "failed": failed}


@task
def store_names(db_path: str | None, found: dict[str, list[str]] | None = None, path: str | None = None) -> dict:
    """Record names (from Yahoo, or a names file) under the store slot; {added, missing: stored tickers still unnamed}."""
    from hitchhiker import db, faults, names

    with store_slot():
        con = db.connect(db_path)
        try:
            added = names.ingest_file(con, path) if path else names.store(con, found or {}, "yahoo")
            faults.point("names.after-commit")
            return {"added": added, "missing": names.missing(con)}
        finally:
            con.close()


@task
def unnamed_tickers(db_path: str | None, tickers: list[str] | None) -> list[str]:
    """The tickers (default: every stored one) with no recorded company name."""
    from hitchhiker import db, names

    with store_slot():
        con = db.connect(db_path)
        try:
            return names.missing(con, tickers)
        finally:
            con.close()


@flow(name="ingest_names")
def ingest_names(tickers: list[str] | None = None, csv: str | None = None, db: str | None = None,
                 retry_delay_s: float = 10.0) -> dict:
    """Company names for anonymization: from a names file (`csv`: 'ticker,name[,alias...]' or SEC's
    company_tickers.json), and from Yahoo for those of `tickers` (default: every stored ticker) still unnamed.
    Returns {added, failed, missing}; the table artifact lists the tickers left without a name."""
    logger = get_run_logger()
    added, failed = 0, {}
    if csv:
        added += store_names(db, path=csv)["added"]
    wanted = unnamed_tickers(db, tickers)
    if wanted and not (csv and tickers is None):  # a file alone does not trigger Yahoo look-ups of the rest
        fetch = fetch_names.with_options(retry_delay_seconds=[retry_delay_s, 6 * retry_delay_s])
        state = fetch(wanted, return_state=True)
        if state.is_failed():
            failed = {t: str(state.message or state)[:300] for t in wanted}
        else:
            fetched = state.result()
            failed = fetched["failed"]
            added += store_names(db, found=fetched["names"])["added"]
    missing = unnamed_tickers(db, tickers)
    create_table_artifact(table=[{"ticker": t, "why": failed.get(t, "no name in the file")} for t in missing] or
                          [{"ticker": "-", "why": "every ticker has a name"}], key="ingest-names",
                          description=f"Company names: {added} added, {len(missing)} tickers without a name")
    if missing:
        logger.warning("no company name for %s: their headlines cannot be fully anonymized (hitchhiker ingest names)",
                       ", ".join(missing))
    return {"added": added, "failed": failed, "missing": missing}
