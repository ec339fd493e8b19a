import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.ingest import default_window, ingest_news, ingest_prices, store_bars, store_price_csv
from hitchhiker import db, demo_data, prices
from http_fixtures import YahooToLocalSession, local_server


def _artifact_rows(key: str) -> list[dict]:
    import json

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    latest = max(found, key=lambda a: a.created)
    data = latest.data
    return json.loads(data) if isinstance(data, str) else data


def test_ingest_prices_flow_from_csv_is_idempotent_and_reports_per_ticker(prefect_harness, db_file):
    first = ingest_prices(csv=str(demo_data.paths()["prices_dir"]), db=str(db_file))
    assert (first["inserted"], first["failed"]) == (12590, 0)
    rows = _artifact_rows("ingest-prices")
    assert len(rows) == 10 and {r["status"] for r in rows} == {"ok"} and sum(r["inserted"] for r in rows) == 12590
    second = ingest_prices(csv=str(demo_data.paths()["prices_dir"]), db=str(db_file))
    assert (second["inserted"], second["unchanged"]) == (0, 12590)
    con = db.connect(db_file, read_only=True)
    assert con.execute("SELECT count(*) FROM prices").fetchone() == (12590,)
    con.close()
    # With no tickers or start, a Yahoo run refreshes the stored tickers from a few days before their last date.
    window = default_window.fn(str(db_file), None)
    assert len(window["tickers"]) == 10 and window["start"] == "2018-01-28"


def test_store_task_called_directly_returns_counts_not_frames(prefect_harness, db_file):
    result = store_price_csv.fn(str(db_file), str(demo_data.paths()["prices"][0]))
    assert result["inserted"] == 1259 and set(result["per_ticker"]) == {demo_data.paths()["prices"][0].name.split("_")[0]}


def test_ingest_news_flow_reports_a_failing_feed_and_stores_the_others(prefect_harness, shared_data, db_file):
    with local_server() as server:
        good = server.add_file("/feeds/sec.rss", (shared_data / "feeds" / "sec_pressreleases.rss").read_bytes())
        missing = server.url + "/feeds/missing.xml"
        local = str(demo_data.paths()["feeds"][1])  # Maquia, 5 entries
        totals = ingest_news(feeds=[good, missing, local], db=str(db_file), retry_delay_s=0)
        assert server.count("/feeds/missing.xml") == 3  # the I/O task was retried twice before giving up
        again = ingest_news(feeds=[good], db=str(db_file), retry_delay_s=0)
    assert (totals["inserted"], totals["failed"]) == (30, 1)
    rows = {r["feed"]: r for r in _artifact_rows("ingest-news")}
    assert rows[good]["inserted"] == 0 and rows[good]["status"] == "HTTP 304"  # the latest run: conditional GET
    assert again["inserted"] == 0
    con = db.connect(db_file, read_only=True)
    assert con.execute("SELECT count(*) FROM news").fetchone() == (30,)
    con.close()


def test_store_bars_task_upserts_a_downloaded_parquet(prefect_harness, shared_data, tmp_path, db_file):
    import yfinance as yf

    yf.set_tz_cache_location(str(tmp_path / "yf-cache"))
    with local_server() as server:
        server.add_yahoo_recordings(shared_data / "yahoo_chart")
        bars, failed = prices.download_yfinance(["AAPL"], "2020-08-31", "2020-11-07",
                                                session=YahooToLocalSession(server.url), backoff_s=0)
    path = tmp_path / "bars.parquet"
    bars.to_parquet(path, index=False)  # what the download task hands to the store task: a path, not a frame
    result = store_bars.fn(str(db_file), str(path))
    assert failed == {} and result["inserted"] == 49 and result["per_ticker"]["AAPL"]["inserted"] == 49


_NAIVE_RSS = ('<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Desk</title>'
              "<item><title>Evening</title><guid>{guid}</guid><pubDate>Mon, 06 Jan 2020 19:30:00</pubDate></item>"
              "</channel></rss>")


def test_ingest_news_flow_takes_a_time_zone_per_feed(prefect_harness, tmp_path, db_file):
    from datetime import datetime, timezone

    zoned, plain = tmp_path / "zoned.rss", tmp_path / "plain.rss"
    zoned.write_text(_NAIVE_RSS.format(guid="ny"))
    plain.write_text(_NAIVE_RSS.format(guid="plain"))
    totals = ingest_news(feeds=[{"url": str(zoned), "tz": "America/New_York"}, str(plain)], db=str(db_file))
    assert (totals["inserted"], totals["rejected"]) == (1, 1)  # the plain feed's entry has no zone: rejected
    con = db.connect(db_file, read_only=True)
    assert con.execute("SELECT feed_url, published_at FROM news").fetchall() == [
        (str(zoned), datetime(2020, 1, 7, 0, 30, tzinfo=timezone.utc))]
    con.close()
    for bad, why in (({"url": str(zoned), "tz": "Mars/Olympus_Mons"}, "unknown time zone 'Mars/Olympus_Mons'"),
                     ({"url": str(zoned), "zone": "UTC"}, "unknown key"), ({"tz": "UTC"}, "no url")):
        with pytest.raises(ValueError, match=why):
            ingest_news(feeds=[bad], db=str(db_file))
