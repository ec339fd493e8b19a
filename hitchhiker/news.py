"""Dated headlines into the store: RSS/Atom feeds (conditional GET) and headline CSV files, deduplicated by news_id.

Every item becomes a row of `news` with `published_at` in UTC, a title and summary stripped of HTML and control
characters, and a `news_id` that is a stable hash of the item's guid (else link, else title and date) together
with its ticker, so the same article filed under two tickers stays two rows. An item without a date, or whose
date has no offset (unless its feed was given a time zone: `published_utc`), is rejected and reported: a state
cannot place it before or after a decision time. Tickers follow the price rule (`prices.is_ticker`). A feed that
does not parse cleanly (bozo) is logged and whatever good entries it has are kept. Each batch is stored in one
transaction, together with the feed's validators (ETag, Last-Modified), so a failed batch is neither half-written
nor skipped next time.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import html
import logging
import os
import re
import unicodedata
from datetime import date, datetime, time, timezone, tzinfo
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterable, Mapping
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb

from hitchhiker import faults
from hitchhiker.db import sql_text, transaction
from hitchhiker.prices import MAX_LISTED_PROBLEMS, IngestReport, is_ticker

log = logging.getLogger(__name__)

MAX_TITLE_CHARS = 500
MAX_SUMMARY_CHARS = 2000
TIMEOUT_S = 30
BENZINGA_HEADER = ("", "title", "date", "stock")
BBC_HEADER = ("title", "pubDate", "guid", "link", "description")
_NEWS_COLUMNS = ("news_id", "ticker", "published_at", "title", "summary", "link", "source", "feed_url")


class NewsInputError(ValueError):
    """A news file or feed that cannot be ingested; the message names it."""


class NoTimeZoneError(ValueError):
    """A date without an offset, and no time zone given to read it in."""


# --- cleaning --------------------------------------------------------------------------------------------

class _TextOnly(HTMLParser):
    """Collects the text of an HTML fragment, dropping tags and the content of script/style elements."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("br", "p", "div", "li"):
            self.parts.append(" ")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def clean_text(text: str | None, max_chars: int) -> str:
    """Plain text: HTML tags and script/style content removed, entities decoded, control characters dropped,
    whitespace collapsed, cut to max_chars."""
    if not text:
        return ""
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    plain = html.unescape("".join(parser.parts))  # feeds often escape twice ("&amp;nbsp;")
    # Line breaks and tabs become spaces; other controls (Cc: NUL, ESC, ...), format characters (Cf: zero-width,
    # bidi overrides) and surrogate/private/unassigned code points are nothing a reader should see.
    plain = "".join(" " if c.isspace() else c for c in plain
                    if c.isspace() or unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn"))
    plain = re.sub(r"\s+", " ", plain).strip()
    return plain[:max_chars].rstrip()


def news_id(key: str, ticker: str | None) -> str:
    """Stable id of an item: sha256 of its ticker and key (guid, link, or title + date)."""
    return hashlib.sha256(f"{ticker or ''}\x1f{key}".encode()).hexdigest()[:32]


def feed_ticker(feed: str, ticker_map: Mapping[str, str] | None = None) -> str | None:
    """The ticker a feed is about: the explicit mapping, else a Yahoo headline feed's single `s=` symbol,
    else None (market-wide news). A symbol that is not a ticker (prices.is_ticker) is a NewsInputError."""
    symbol = None
    if ticker_map and feed in ticker_map:
        symbol = ticker_map[feed]
    else:
        parts = urlsplit(feed)
        if parts.hostname and parts.hostname.endswith("yahoo.com"):
            symbols = [s for s in ",".join(parse_qs(parts.query).get("s", [])).split(",") if s.strip()]
            symbol = symbols[0] if len(symbols) == 1 else None
    ticker = (symbol or "").strip().upper() or None
    if ticker is not None and not is_ticker(ticker):
        raise NewsInputError(f"unknown ticker {symbol.strip()!r} for feed {feed}")
    return ticker


# --- dates -----------------------------------------------------------------------------------------------

_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}|\d{8}")
_ISO_DAY_TIME = re.compile(r"(\d{4}-\d{2}-\d{2}|\d{8})[T ]\d{2}.*")
_RFC_DAY = re.compile(r"(?:[A-Za-z]{3},\s*)?(\d{1,2})\s+([A-Za-z]{3})\s+(\d{4})")


def feed_zone(name: str, what: str) -> ZoneInfo:
    """The IANA time zone `name` (e.g. America/New_York) given for `what` (a feed); else a NewsInputError naming both."""
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, TypeError, AttributeError):
        raise NewsInputError(f"{what}: unknown time zone {name!r} (expected an IANA name such as America/New_York)"
                             ) from None


def published_utc(raw: str, zone: tzinfo | None = None) -> datetime:
    """The UTC instant of a news date: ISO 8601 / W3CDTF or RFC 822, with an explicit offset; else a ValueError.

    Every ingest date goes through here (feed entries, headline CSVs). A value without an offset is read in `zone`
    (the feed's time zone) when one is given, never assumed to be UTC. A date without a time of day becomes the last
    microsecond of that day in `zone`: public only once the day is over there, and still shown with its own date.
    """
    text = raw.strip()
    day = _day_only(text)
    if day is not None:
        local = datetime.combine(day, time.max)
    else:
        local = _date_time(text)
        if local.tzinfo is not None and local.utcoffset() is not None:
            return local.astimezone(timezone.utc)
    if zone is None:  # a time without a zone cannot be placed before or after a decision time
        raise NoTimeZoneError(f"date {raw!r} has no time zone")
    # A wall time the zone passes twice (clocks going back) or skips (going forward) has two readings: the later
    # one is never earlier than the item can have been published.
    return max(local.replace(tzinfo=zone, fold=fold).astimezone(timezone.utc) for fold in (0, 1))


def _day_only(text: str) -> date | None:
    """The date of a value that has no time of day ('2020-01-06', 'Mon, 06 Jan 2020'), else None."""
    try:
        if _ISO_DAY.fullmatch(text):
            return date.fromisoformat(text)
        match = _RFC_DAY.fullmatch(text)
        return datetime.strptime(" ".join(match.groups()), "%d %b %Y").date() if match else None
    except ValueError:
        raise ValueError(f"unparsable date {text!r}") from None


def _date_time(text: str) -> datetime:
    """A date and time of day (aware when the value has an offset): ISO 8601 ('T' or space), else RFC 822."""
    if _ISO_DAY_TIME.fullmatch(text):
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"unparsable date {text!r}") from None
    try:
        # RFC 822; '-0000' (the sender's zone unknown, RFC 5322) comes back naive, as it should.
        return parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"unparsable date {text!r}") from None


# --- feeds -----------------------------------------------------------------------------------------------

def _is_url(feed: str) -> bool:
    return urlsplit(feed).scheme in ("http", "https")


def _fetch(con, feed: str, session) -> tuple[int, bytes | None, dict[str, str]]:
    """(status, body or None on 304, response headers); a conditional GET with the stored validators."""
    import requests

    etag, last_modified = None, None
    row = con.execute("SELECT etag, last_modified FROM feeds WHERE feed_url = ?", [feed]).fetchone()
    if row:
        etag, last_modified = row
    headers = {"User-Agent": "hitchhiker/0.1 (+feed reader)"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    http = session or requests.Session()
    response = http.get(feed, headers=headers, timeout=TIMEOUT_S)
    if response.status_code == 304:
        return 304, None, dict(response.headers)
    response.raise_for_status()
    return response.status_code, response.content, dict(response.headers)


def parse_feed(body: bytes, feed: str, ticker: str | None, report: IngestReport,
               headers: Mapping[str, str] | None = None, zone: tzinfo | None = None) -> tuple[list[dict], int]:
    """News rows of one feed document, and how many entries were rejected only for want of a time zone; undated
    entries, and dates without an offset when the feed has no `zone`, are counted as rejected in report."""
    import feedparser

    # HTTP headers help feedparser with the encoding; a local file has none (and needs none).
    response_headers = {k.lower(): v for k, v in headers.items()} if headers else None
    parsed = feedparser.parse(body, response_headers=response_headers)
    if parsed.bozo:
        log.warning("feed %s is not well-formed (%s); keeping its %d readable entries",
                    feed, parsed.get("bozo_exception"), len(parsed.entries))
        if not parsed.entries:
            raise NewsInputError(f"feed {feed} could not be parsed: {parsed.get('bozo_exception')}")
    source = clean_text(parsed.feed.get("title"), 200) or (urlsplit(feed).hostname or Path(feed).name)
    rows, zoneless = [], 0
    for i, entry in enumerate(parsed.entries):
        report.read += 1
        # The raw date strings: feedparser's `*_parsed` struct_times read a date without an offset as UTC and
        # drop the offset. `updated` (Atom, dc:date) is never earlier than publication, so using it when there is
        # no `published` can only make an item appear later, never leak it early.
        raw = entry.get("published") or entry.get("updated") or entry.get("created")
        title = clean_text(entry.get("title"), MAX_TITLE_CHARS)
        where = f"{feed} entry {i + 1} ({title[:60]!r})"
        if not raw:
            _reject(report, f"{where}: no publication date")
            continue
        try:
            published_at = published_utc(raw, zone)
        except ValueError as e:
            zoneless += isinstance(e, NoTimeZoneError)
            _reject(report, f"{where}: {e}")
            continue
        if not title:
            _reject(report, f"{where}: no title")
            continue
        # feedparser's loose parser (used for malformed feeds) leaves entities escaped: unescape so that the
        # same item has the same id whether or not its feed happened to be well-formed.
        link = html.unescape(entry.get("link") or "").strip() or None
        key = html.unescape(entry.get("id") or "").strip() or link or f"{title}\x1f{published_at.isoformat()}"
        rows.append({"news_id": news_id(key, ticker), "ticker": ticker, "published_at": published_at,
                     "title": title, "summary": clean_text(entry.get("summary"), MAX_SUMMARY_CHARS) or None,
                     "link": link, "source": source, "feed_url": feed})
    return rows, zoneless


def ingest_feeds(con: duckdb.DuckDBPyConnection, urls_or_files: Iterable[str | os.PathLike],
                 ticker_map: Mapping[str, str] | None = None, session=None,
                 feed_tz: Mapping[str, str] | None = None) -> IngestReport:
    """Fetch RSS/Atom feeds (http(s) URLs with conditional GET, or local files) and upsert their items.

    feed_tz: {feed: IANA time zone} in which to read that feed's dates that carry no offset; without one such
    entries are rejected. A feed that cannot be fetched or parsed is reported in `failed` and the others are still
    stored; a ticker or time zone that is not one is a NewsInputError before anything is fetched.
    """
    report = IngestReport(source="feeds")
    feeds = [str(item) for item in urls_or_files]
    tickers = {feed: feed_ticker(feed, ticker_map) for feed in feeds}
    zones = {feed: feed_zone(feed_tz[feed], feed) for feed in feeds if feed_tz and feed_tz.get(feed)}
    for feed in feeds:
        ticker, zone = tickers[feed], zones.get(feed)
        before = dict(report.__dict__)
        try:
            if _is_url(feed):
                status, body, headers = _fetch(con, feed, session)
            else:
                path = Path(feed)
                if not path.is_file():
                    raise FileNotFoundError(f"feed file {feed} not found")
                status, body, headers = 200, path.read_bytes(), {}
            rows, zoneless = ([], 0) if body is None else parse_feed(body, feed, ticker, report, headers, zone)
            validators = {"etag": headers.get("ETag") or headers.get("etag"),
                          "last_modified": headers.get("Last-Modified") or headers.get("last-modified")}
            if zoneless:  # those entries come back once the feed is given its zone: the next fetch is full, not a 304
                validators = {"etag": None, "last_modified": None}
            with transaction(con):
                counts = _upsert(con, rows)
                con.execute(sql_text("ingest/feeds_upsert"), {"feed_url": feed, **validators, "status": status})
                faults.point("news.before-commit")
        except Exception as e:  # one feed's failure (HTTP, parse, file) must not stop the others
            if isinstance(e, duckdb.Error):
                raise
            report.failed[feed] = f"{type(e).__name__}: {e}"
            log.warning("feed %s failed: %s", feed, report.failed[feed])
            continue
        _add(report, feed, counts, status=status, rejected=report.rejected - before["rejected"])
    return report


# --- CSV -------------------------------------------------------------------------------------------------

def _csv_records(path: Path, width: int):
    """(line number, fields) of a CSV file; an unquoted newline inside the last text field (a 2-field line
    followed by its continuation) is joined back into one record."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        yield 1, header
        pending = None
        for fields in reader:
            line = reader.line_num
            if pending is not None:
                start, head = pending
                pending = None
                if len(head) + len(fields) - 1 == width:
                    yield start, head[:-1] + [head[-1] + "\n" + fields[0]] + fields[1:]
                    continue
                yield start, head
            if len(fields) < width:
                pending = (line, fields)
                continue
            yield line, fields
        if pending is not None:
            yield pending


def ingest_csv(con: duckdb.DuckDBPyConnection, path: str | os.PathLike) -> IngestReport:
    """Upsert a dated headline CSV: Benzinga (`,title,date,stock`, tz-aware dates) or BBC
    (`title,pubDate,guid,link,description`, RFC 822 dates, market-wide). A date without an offset and a `stock`
    that is not a ticker reject their row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"news CSV {path} not found")
    report = IngestReport(source=f"csv:{path.name}")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            header = tuple(next(csv.reader(f), []))
        if header not in (BENZINGA_HEADER, BBC_HEADER):
            raise NewsInputError(f"{path}:1: unknown news CSV header {','.join(header) or '(empty file)'}; "
                                 f"expected {','.join(BENZINGA_HEADER)} or {','.join(BBC_HEADER)}")
        rows = []
        records = _csv_records(path, len(header))
        next(records)
        for line, fields in records:
            report.read += 1
            row = (_benzinga_row if header == BENZINGA_HEADER else _bbc_row)(fields, report, f"{path}:{line}")
            if row is not None:
                row["source"] = report.source
                rows.append(row)
    except UnicodeDecodeError as e:
        raise NewsInputError(f"{path}: not UTF-8 text ({_utf8_error(path) or e.reason}); nothing was stored") from None
    with transaction(con):
        counts = _upsert(con, rows)
    _add(report, report.source, counts, rejected=report.rejected)
    return report


def _utf8_error(path: Path) -> str | None:
    """'byte N, line L: reason' of the first byte of a file that is not UTF-8, counted from the file's start (a text
    reader's error counts from the chunk it was decoding)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, newlines = 0, 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 16)
            start = offset - len(decoder.getstate()[0])  # a sequence cut by the last chunk is still pending
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                line = newlines + e.object[:e.start].count(b"\n") + 1
                return f"byte {start + e.start}, line {line}: {e.reason}"
            if not chunk:
                return None
            offset += len(chunk)
            newlines += chunk.count(b"\n")


def _reject(report: IngestReport, why: str) -> None:
    report.rejected += 1
    if len(report.problems) < MAX_LISTED_PROBLEMS:
        report.problems.append(why)


def _benzinga_row(fields: list[str], report: IngestReport, where: str) -> dict | None:
    if len(fields) != 4:
        return _reject(report, f"{where}: expected 4 fields, found {len(fields)}")
    _, raw_title, raw_date, raw_ticker = fields
    ticker = raw_ticker.strip().upper() or None
    if ticker is not None and not is_ticker(ticker):
        return _reject(report, f"{where}: unknown ticker {raw_ticker.strip()!r}")
    title = clean_text(raw_title, MAX_TITLE_CHARS)
    try:
        published = published_utc(raw_date)
    except ValueError as e:
        return _reject(report, f"{where}: {e}")
    if not title:
        return _reject(report, f"{where}: no title")
    return {"news_id": news_id(f"{title}\x1f{published.isoformat()}", ticker), "ticker": ticker,
            "published_at": published, "title": title, "summary": None, "link": None, "feed_url": None}


def _bbc_row(fields: list[str], report: IngestReport, where: str) -> dict | None:
    if len(fields) != 5:
        return _reject(report, f"{where}: expected 5 fields, found {len(fields)}")
    raw_title, raw_date, guid, link, description = fields
    title = clean_text(raw_title, MAX_TITLE_CHARS)
    try:
        published = published_utc(raw_date)
    except ValueError as e:
        return _reject(report, f"{where}: {e}")
    if not title:
        return _reject(report, f"{where}: no title")
    key = guid.strip() or link.strip() or f"{title}\x1f{published.isoformat()}"
    return {"news_id": news_id(key, None), "ticker": None, "published_at": published, "title": title,
            "summary": clean_text(description, MAX_SUMMARY_CHARS) or None, "link": link.strip() or None,
            "feed_url": None}


# --- store -----------------------------------------------------------------------------------------------

def _upsert(con, rows: list[dict]) -> tuple[int, int, int, int]:
    """(inserted, updated, unchanged, duplicates) after upserting rows by news_id; call inside a transaction."""
    import pyarrow as pa

    table = pa.table({c: [r[c] for r in rows] for c in _NEWS_COLUMNS},
                     schema=pa.schema([("news_id", pa.string()), ("ticker", pa.string()),
                                       ("published_at", pa.timestamp("us", tz="UTC")), ("title", pa.string()),
                                       ("summary", pa.string()), ("link", pa.string()), ("source", pa.string()),
                                       ("feed_url", pa.string())]))
    con.register("news_rows", table)
    try:
        con.execute(sql_text("ingest/news_stage"))
        inserted, updated, unchanged, duplicates = con.execute(sql_text("ingest/news_counts")).fetchone()
        if inserted or updated:
            con.execute(sql_text("ingest/news_upsert"))
        con.execute("DROP TABLE IF EXISTS news_staging")
    finally:
        con.unregister("news_rows")
    return inserted, updated, unchanged, duplicates


def _add(report: IngestReport, key: str, counts: tuple[int, int, int, int], **extra) -> None:
    inserted, updated, unchanged, duplicates = counts
    report.inserted += inserted
    report.updated += updated
    report.unchanged += unchanged
    report.duplicates += duplicates
    report.per_key[key] = {"inserted": inserted, "updated": updated, "unchanged": unchanged,
                           "duplicates": duplicates, **extra}
