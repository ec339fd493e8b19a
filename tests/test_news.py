import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from hitchhiker import db, demo_data, news
from http_fixtures import YahooToLocalSession, local_server

FEEDS = ["reuters_businessNews_2019-01-19.xml", "sec_edgar_company_atom_KeenVision.xml",
         "sec_edgar_company_atom_Maquia.xml", "sec_pressreleases.rss"]
FEED_ITEMS = {"reuters_businessNews_2019-01-19.xml": 20, "sec_edgar_company_atom_KeenVision.xml": 55,
              "sec_edgar_company_atom_Maquia.xml": 5, "sec_pressreleases.rss": 25}


@pytest.fixture
def feed_server(shared_data):
    with local_server() as server:
        urls = {name: server.add_file(f"/feeds/{name}", (shared_data / "feeds" / name).read_bytes()) for name in FEEDS}
        yield server, urls


def test_real_feeds_over_http_then_a_304_reinserts_nothing(feed_server, db_file):
    server, urls = feed_server
    con = db.connect(db_file)
    first = news.ingest_feeds(con, urls.values())
    assert (first.inserted, first.rejected, first.failed) == (105, 0, {})
    for name, url in urls.items():
        assert first.per_key[url]["inserted"] == FEED_ITEMS[name] and first.per_key[url]["status"] == 200
    stored = con.execute("SELECT count(*), count(DISTINCT news_id) FROM news").fetchone()
    before = con.execute("SELECT max(ingested_at) FROM news").fetchone()[0]
    second = news.ingest_feeds(con, urls.values())
    assert (second.read, second.inserted, second.updated) == (0, 0, 0)
    assert {v["status"] for v in second.per_key.values()} == {304}
    # The second round asked conditionally, with the validators stored after the first.
    conditional = [h for p, h in server.requests[-4:] if "If-None-Match" in h and "If-Modified-Since" in h]
    assert len(conditional) == 4
    assert con.execute("SELECT count(*), count(DISTINCT news_id) FROM news").fetchone() == stored == (105, 105)
    assert con.execute("SELECT max(ingested_at) FROM news").fetchone()[0] == before
    assert con.execute("SELECT DISTINCT last_status FROM feeds").fetchall() == [(304,)]


def test_items_are_utc_clean_text_and_latin1_feeds_decode(feed_server, db_file):
    _, urls = feed_server
    con = db.connect(db_file)
    news.ingest_feeds(con, urls.values())
    # Reuters: "Sat, 19 Jan 2019 03:47:23 -0500" -> 08:47:23 UTC.
    row = con.execute("SELECT published_at, ticker, source, summary FROM news WHERE title = "
                      "'Supermarket retailer Casino to sell six stores to rival Leclerc'").fetchone()
    assert row[0] == datetime(2019, 1, 19, 8, 47, 23, tzinfo=timezone.utc) and row[1] is None
    assert row[2] == "Reuters: Business News" and "<" not in row[3] and "feedflare" not in row[3]
    # SEC Atom (ISO-8859-1, only <updated>): dated by <updated>, HTML stripped from the summary.
    sec = con.execute("SELECT published_at, summary FROM news WHERE link LIKE '%0001213900-25-006497%'").fetchone()
    assert sec[0] == datetime(2025, 1, 24, 21, 0, 43, tzinfo=timezone.utc)
    assert sec[1].startswith("Filed: 2025-01-24 AccNo: 0001213900-25-006497")
    padded = con.execute("SELECT title FROM news WHERE title LIKE '%Names Acting Senior Staff'").fetchone()[0]
    assert padded == "Acting Chairman Mark T. Uyeda Names Acting Senior Staff"  # padding and newline gone


def test_bozo_feeds_keep_their_good_entries(shared_data, tmp_path, db_file):
    con = db.connect(db_file)
    body = (shared_data / "feeds" / "reuters_businessNews_2019-01-19.xml").read_bytes()
    truncated = tmp_path / "truncated.xml"
    truncated.write_bytes(body[: len(body) // 2])
    mislabelled = tmp_path / "mislabelled.xml"  # declares UTF-8, contains a Latin-1 byte
    mislabelled.write_bytes(body.replace(b"Casino to sell", "Casino\xe9 to sell".encode("latin-1")))
    report = news.ingest_feeds(con, [truncated, mislabelled])
    assert report.failed == {}
    assert report.per_key[str(truncated)]["inserted"] == 9 and report.per_key[str(truncated)]["rejected"] == 1
    assert "no publication date" in report.problems[0]  # the cut-off last item lost its date
    # The same Reuters items from the clean part are recognised (same news_id) in the other feed.
    assert report.per_key[str(mislabelled)]["inserted"] == 11
    assert con.execute("SELECT count(*) FROM news WHERE title LIKE 'Supermarket retailer Casino%'").fetchone() == (1,)


def test_html_script_control_characters_and_undated_items(tmp_path, db_file):
    con = db.connect(db_file)
    feed = tmp_path / "crafted.rss"
    feed.write_text(
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>T</title>'
        "<item><title>&lt;b&gt;Buy&lt;/b&gt; &lt;script&gt;alert(1)&lt;/script&gt;now\u200b &amp;amp; hold</title>"
        "<description>&lt;p&gt;Ignore previous instructions&lt;/p&gt;&lt;style&gt;x{}&lt;/style&gt;</description>"
        "<guid>g1</guid><pubDate>Mon, 06 Jan 2020 15:00:00 +0100</pubDate></item>"
        "<item><title>No date here</title><guid>g2</guid></item>"
        "</channel></rss>")
    report = news.ingest_feeds(con, [feed])
    assert (report.inserted, report.rejected) == (1, 1) and "no publication date" in report.problems[0]
    title, summary, published = con.execute("SELECT title, summary, published_at FROM news").fetchone()
    assert title == "Buy now & hold" and summary == "Ignore previous instructions"
    assert published == datetime(2020, 1, 6, 14, 0, tzinfo=timezone.utc)
    assert news.clean_text("a\x00b\x1b[31mc\td\u202e", 100) == "ab[31mc d"


def test_yahoo_symbol_feeds_derive_the_ticker_and_keep_one_row_per_ticker(shared_data, db_file):
    con = db.connect(db_file)
    with local_server() as server:
        server.add_file("/rss/2.0/headline", (shared_data / "feeds" / "sec_pressreleases.rss").read_bytes())
        session = YahooToLocalSession(server.url)
        urls = [f"https://feeds.finance.yahoo.com/rss/2.0/headline?s={s}&region=US&lang=en-US" for s in ("aapl", "MSFT")]
        report = news.ingest_feeds(con, urls, session=session)
    assert report.inserted == 50 and report.failed == {}
    assert con.execute("SELECT ticker, count(*) FROM news GROUP BY 1 ORDER BY 1").fetchall() == [("AAPL", 25),
                                                                                                ("MSFT", 25)]
    assert news.feed_ticker("https://feeds.finance.yahoo.com/rss/2.0/headline?s=AAPL,MSFT") is None
    assert news.feed_ticker("/some/file.xml", {"/some/file.xml": "xom"}) == "XOM"


def test_one_failing_feed_does_not_stop_the_others(feed_server, tmp_path, db_file):
    server, urls = feed_server
    con = db.connect(db_file)
    garbage = tmp_path / "garbage.xml"
    garbage.write_bytes(b"\x00\x01 this is not a feed")
    feeds = [server.url + "/feeds/missing.xml", urls["sec_pressreleases.rss"], garbage, tmp_path / "absent.xml"]
    report = news.ingest_feeds(con, feeds)
    assert report.inserted == 25
    assert set(report.failed) == {server.url + "/feeds/missing.xml", str(garbage), str(tmp_path / "absent.xml")}
    assert "404" in report.failed[server.url + "/feeds/missing.xml"]
    # A failed fetch stores no validators, so the next run fetches it in full.
    assert con.execute("SELECT count(*) FROM feeds WHERE feed_url LIKE '%missing%'").fetchone() == (0,)


# --- headline CSV files ------------------------------------------------------------------------------------

def test_benzinga_csv_utc_dates_joined_broken_lines_and_idempotence(shared_data, db_file):
    con = db.connect(db_file)
    path = shared_data / "news" / "benzinga_analyst_ratings_sample.csv"
    first = news.ingest_csv(con, path)
    # 9,993 records; 2 titles were split by an unquoted newline and are joined back (9,991 items).
    assert (first.read, first.rejected) == (9991, 0)
    assert first.inserted + first.duplicates == 9991
    assert con.execute("SELECT ticker FROM news WHERE title = 'Sterne Agee Provides Color on Aaron''s'").fetchall() \
        == [("AAN",)]
    row = con.execute("SELECT published_at FROM news WHERE ticker = 'A' AND "
                      "title = 'Stocks That Hit 52-Week Highs On Friday' ORDER BY 1 DESC LIMIT 1").fetchone()
    assert row[0] == datetime(2020, 6, 5, 14, 30, tzinfo=timezone.utc)  # 10:30 -04:00
    assert con.execute("SELECT count(DISTINCT ticker) FROM news").fetchone() == (37,)
    again = news.ingest_csv(con, path)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, first.inserted)


def test_bbc_csv_is_market_wide_and_dedups_by_guid(shared_data, db_file):
    con = db.connect(db_file)
    report = news.ingest_csv(con, shared_data / "news" / "bbc_business_headlines.csv")
    distinct = con.execute("SELECT count(*), count(ticker), count(DISTINCT link) FROM news").fetchone()
    assert report.read == 2656 and report.inserted == distinct[0] and report.inserted + report.duplicates == 2656
    assert distinct[1] == 0  # no tickers: market-wide news
    row = con.execute("SELECT published_at FROM news WHERE link LIKE '%business-60623941%'").fetchone()
    assert row[0] == datetime(2022, 3, 7, 0, 14, 42, tzinfo=timezone.utc)


def test_bad_news_csvs_are_named(tmp_path, db_file):
    con = db.connect(db_file)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(",title,date,stock\n0,Caf\xe9 opens,2020-01-02 10:00:00-05:00,AAPL\n".encode("latin-1"))
    with pytest.raises(news.NewsInputError, match="latin.csv: not UTF-8"):
        news.ingest_csv(con, latin)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(news.NewsInputError, match="other.csv:1: unknown news CSV header"):
        news.ingest_csv(con, other)
    dated = tmp_path / "dates.csv"
    dated.write_text(",title,date,stock\n0,Good,2020-01-02 10:00:00-05:00,AAPL\n1,No zone,2020-01-02 10:00:00,AAPL\n"
                     "2,Garbage,yesterday,AAPL\n")
    report = news.ingest_csv(con, dated)
    assert (report.inserted, report.rejected) == (1, 2)
    assert report.problems[0].startswith(f"{dated}:3: date") and report.problems[1].startswith(f"{dated}:4:")
    assert con.execute("SELECT count(*) FROM news").fetchone() == (1,)


def test_shared_news_csv_and_shipped_feeds():
    assert demo_data.shared_news_csv().name == "benzinga_analyst_ratings_sample.csv"
    assert {p.name for p in demo_data.paths()["feeds"]} == {
        "sec_edgar_company_atom_KeenVision.xml", "sec_edgar_company_atom_Maquia.xml", "sec_pressreleases.rss"}
    assert "MIT" in demo_data.paths()["provenance"].read_text()


def test_cli_ingest_news_feed_and_csv(shared_data, tmp_path):
    store = str(tmp_path / "n.duckdb")
    run = [str(Path(sys.executable).parent / "hitchhiker"), "ingest", "news", "--db", store]
    out = subprocess.run(run + ["--feed", str(demo_data.paths()["feeds"][2]), "--ticker", "SEC"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "inserted 25" in out.stdout and "news table: 25 items, 1 tickers" in out.stdout
    out = subprocess.run(run + ["--csv", str(shared_data / "news" / "bbc_business_headlines.csv")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "read 2656" in out.stdout, out.stderr


# --- time zones: a time stamp without a zone is not a time ---------------------------------------------------

_LOCAL_RSS = """<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/"><channel><title>Local desk</title>
<item><title>Zoned</title><guid>z</guid><pubDate>Mon, 06 Jan 2020 19:30:00 -0500</pubDate></item>
<item><title>Evening, no zone</title><guid>a</guid><pubDate>Mon, 06 Jan 2020 19:30:00</pubDate></item>
<item><title>Unknown zone</title><guid>b</guid><pubDate>Mon, 06 Jan 2020 19:30:00 -0000</pubDate></item>
<item><title>Date only</title><guid>c</guid><pubDate>Mon, 06 Jan 2020</pubDate></item>
<item><title>DC date only</title><guid>d</guid><dc:date>2020-01-06</dc:date></item>
<item><title>DC no offset</title><guid>e</guid><dc:date>2020-01-06T19:30:00</dc:date></item>
</channel></rss>"""
_LOCAL_ATOM = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Atom desk</title>
<entry><title>Atom no offset</title><id>f</id><updated>2020-01-06T19:30:00</updated></entry>
<entry><title>Atom zoned</title><id>g</id><updated>2020-01-06T19:30:00Z</updated></entry>
</feed>"""


def _local_feeds(tmp_path) -> tuple[Path, Path]:
    rss, atom = tmp_path / "local.rss", tmp_path / "local.atom"
    rss.write_text(_LOCAL_RSS)
    atom.write_text(_LOCAL_ATOM)
    return rss, atom


def _published(con) -> dict[str, datetime]:
    return dict(con.execute("SELECT title, published_at FROM news").fetchall())


def test_feed_dates_without_an_offset_are_rejected_unless_the_feed_has_a_zone(tmp_path):
    rss, atom = _local_feeds(tmp_path)
    con = db.connect(tmp_path / "strict.duckdb")
    report = news.ingest_feeds(con, [rss, atom])
    # Read as UTC, "19:30 New York" became 19:30 UTC: before the 21:00 UTC cutoff of that day, a look-ahead leak.
    assert _published(con) == {"Zoned": datetime(2020, 1, 7, 0, 30, tzinfo=timezone.utc),
                               "Atom zoned": datetime(2020, 1, 6, 19, 30, tzinfo=timezone.utc)}
    assert (report.read, report.inserted, report.rejected) == (8, 2, 6)
    assert all("has no time zone" in p for p in report.problems), report.problems
    assert any(f"{rss} entry 2 ('Evening, no zone'): date 'Mon, 06 Jan 2020 19:30:00' has no time zone" in p
               for p in report.problems)
    # Given the feed's zone: a wall time is read in it; a date-only entry is public only once its day is over (the
    # last microsecond of the day there, so it keeps its own date); an explicit offset wins over the feed's zone.
    con = db.connect(tmp_path / "zoned.duckdb")
    ny = "America/New_York"
    report = news.ingest_feeds(con, [rss, atom], feed_tz={str(rss): ny, str(atom): ny})
    assert (report.inserted, report.rejected) == (8, 0), report.problems
    evening = datetime(2020, 1, 7, 0, 30, tzinfo=timezone.utc)
    end_of_day = datetime(2020, 1, 7, 4, 59, 59, 999999, tzinfo=timezone.utc)
    assert _published(con) == {"Zoned": evening, "Evening, no zone": evening, "Unknown zone": evening,
                               "Date only": end_of_day, "DC date only": end_of_day, "DC no offset": evening,
                               "Atom no offset": evening, "Atom zoned": datetime(2020, 1, 6, 19, 30, tzinfo=timezone.utc)}
    with pytest.raises(news.NewsInputError, match=f"{rss}: unknown time zone 'Mars/Olympus_Mons'"):
        news.ingest_feeds(con, [rss], feed_tz={str(rss): "Mars/Olympus_Mons"})


def test_one_date_parser_accepts_only_explicit_offsets():
    utc = timezone.utc
    assert news.published_utc("2020-01-06T19:30:00Z") == datetime(2020, 1, 6, 19, 30, tzinfo=utc)
    assert news.published_utc("2020-01-06 19:30:00.5+05:30") == datetime(2020, 1, 6, 14, 0, 0, 500000, tzinfo=utc)
    assert news.published_utc("Mon, 06 Jan 2020 19:30:00 GMT") == datetime(2020, 1, 6, 19, 30, tzinfo=utc)
    for raw in ("2020-01-06T19:30:00", "Mon, 06 Jan 2020 19:30:00 -0000", "2020-01-06", "Mon, 06 Jan 2020"):
        with pytest.raises(ValueError, match="has no time zone"):
            news.published_utc(raw)
    with pytest.raises(ValueError, match="unparsable date 'yesterday'"):
        news.published_utc("yesterday")
    ny = news.feed_zone("America/New_York", "test")
    # A wall time the zone passes twice (01:30 on the night clocks go back) or skips (02:30 when they go forward)
    # is placed at the later of its readings: never earlier than it can have been.
    assert news.published_utc("2020-11-01T01:30:00", ny) == datetime(2020, 11, 1, 6, 30, tzinfo=utc)
    assert news.published_utc("2020-03-08T02:30:00", ny) == datetime(2020, 3, 8, 7, 30, tzinfo=utc)
    assert news.published_utc("Sun, 01 Nov 2020", ny) == datetime(2020, 11, 2, 4, 59, 59, 999999, tzinfo=utc)
    with pytest.raises(news.NewsInputError, match="feed x.xml: unknown time zone 'EST5EDT/x'"):
        news.feed_zone("EST5EDT/x", "feed x.xml")


def test_cli_ingest_news_feed_tz(tmp_path):
    rss, _ = _local_feeds(tmp_path)
    run = [str(Path(sys.executable).parent / "hitchhiker"), "ingest", "news", "--db", str(tmp_path / "c.duckdb"),
           "--feed", str(rss)]
    strict = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert strict.returncode == 0 and "inserted 1," in strict.stdout and "rejected 5" in strict.stdout, strict.stderr
    assert "has no time zone" in strict.stdout
    zoned = subprocess.run(run + ["--feed-tz", "America/New_York"], capture_output=True, text=True, timeout=120)
    assert zoned.returncode == 0 and "inserted 5," in zoned.stdout and "rejected 0" in zoned.stdout, zoned.stderr
    bad = subprocess.run(run + ["--feed-tz", "Mars/Olympus_Mons"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown time zone 'Mars/Olympus_Mons'" in bad.stderr and "Traceback" not in bad.stderr


# --- tickers and encodings ----------------------------------------------------------------------------------

def test_news_tickers_follow_the_price_ticker_rule(tmp_path, db_file):
    con = db.connect(db_file)
    f = tmp_path / "tickers.csv"
    when = "2020-01-02 10:00:00-05:00"
    f.write_text(f",title,date,stock\n0,Class B,{when},BRK-B\n1,Class B dotted,{when},brk.b\n2,Euro,{when},EURUSD=X\n"
                 f"3,Index,{when},^GSPC\n4,Escape,{when},../../ETC\n5,Slash,{when},A/B\n6,Market,{when},\n")
    report = news.ingest_csv(con, f)
    assert (report.inserted, report.rejected) == (5, 2)
    assert report.problems == [f"{f}:6: unknown ticker '../../ETC'", f"{f}:7: unknown ticker 'A/B'"]
    assert {t for (t,) in con.execute("SELECT ticker FROM news").fetchall()} == {"BRK-B", "BRK.B", "EURUSD=X", "^GSPC",
                                                                                 None}
    rss = tmp_path / "f.rss"
    rss.write_text(_LOCAL_RSS)
    with pytest.raises(news.NewsInputError, match=r"unknown ticker '\.\./\.\./ETC' for feed"):
        news.ingest_feeds(con, [rss], ticker_map={str(rss): "../../ETC"})
    with pytest.raises(news.NewsInputError, match="unknown ticker '../../ETC'"):
        news.feed_ticker("https://feeds.finance.yahoo.com/rss/2.0/headline?s=../../ETC")
    assert news.feed_ticker("https://feeds.finance.yahoo.com/rss/2.0/headline?s=%5EGSPC") == "^GSPC"
    assert con.execute("SELECT count(*) FROM news WHERE ticker LIKE '%/%'").fetchone() == (0,)


def test_a_non_utf8_byte_is_named_by_its_offset_in_the_file(tmp_path, db_file):
    con = db.connect(db_file)
    late = tmp_path / "late.csv"
    head = (",title,date,stock\n" + "".join(f"{i},Headline {i},2020-01-02 10:00:00-05:00,AAPL\n"
                                            for i in range(2000))).encode()
    assert len(head) > 3 * 16384  # far past the first chunks a reader decodes
    late.write_bytes(head + b"2000,Caf\xe9 opens,2020-01-02 10:00:00-05:00,AAPL\n")
    with pytest.raises(news.NewsInputError) as err:
        news.ingest_csv(con, late)
    assert f"late.csv: not UTF-8 text (byte {len(head) + 8}, line 2002:" in str(err.value)
    assert con.execute("SELECT count(*) FROM news").fetchone() == (0,)
