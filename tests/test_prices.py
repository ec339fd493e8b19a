import math
import multiprocessing
import subprocess
import sys
from datetime import date
from pathlib import Path

import duckdb
import pytest

from hitchhiker import db, demo_data, prices
from http_fixtures import LocalServer, YahooToLocalSession, local_server

LONG_HEADER = "ticker,date,open,high,low,close,adj_close,volume\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _rows(con, sql="SELECT count(*) FROM prices"):
    return con.execute(sql).fetchall()


def test_all_sp500_files_twice_leave_619040_rows_with_quirks_flagged(shared_data, db_file):
    con = db.connect(db_file)
    folder = shared_data / "prices" / "sp500_5yr"
    first = prices.ingest_csv(con, folder)
    second = prices.ingest_csv(con, str(folder / "*_data.csv"))
    assert (first.read, first.inserted, first.rejected) == (619_040, 619_040, 0)
    assert (second.inserted, second.updated, second.unchanged) == (0, 0, 619_040)
    assert _rows(con) == [(619_040,)]
    assert len(first.per_key) == 505 and first.per_key["AAPL"]["inserted"] == 1259
    # The real vendor quirks are kept and flagged, not dropped (MANIFEST: 11, 1 and 9 rows).
    missing, low_high, outside, null_close = con.execute(
        "SELECT count(*) FILTER (WHERE flags LIKE '%missing_ohlc%' AND (open IS NULL OR low IS NULL)), "
        "count(*) FILTER (WHERE flags LIKE '%low_above_high%' AND low > high), "
        "count(*) FILTER (WHERE flags LIKE '%close_outside_range%'), count(*) FILTER (WHERE close IS NULL) "
        "FROM prices").fetchone()
    assert (missing, low_high, outside, null_close) == (11, 1, 9, 0)
    assert _rows(con, "SELECT DISTINCT source FROM prices WHERE ticker = 'BRK.B'") == [("csv:BRK.B_data.csv",)]
    assert _rows(con, "SELECT count(*) FROM prices WHERE adj_close IS NOT NULL") == [(0,)]  # source has none


def test_corrected_value_replaces_old_and_rerun_changes_nothing(tmp_path, db_file):
    con = db.connect(db_file)
    f = _write(tmp_path / "p.csv", LONG_HEADER + "AAA,2020-01-02,10,11,9,10.5,10.4,100\n"
                                                  "AAA,2020-01-03,10.5,12,10,11,10.9,200\n")
    assert prices.ingest_csv(con, f).inserted == 2
    _write(f, LONG_HEADER + "AAA,2020-01-02,10,11,9,10.5,10.4,100\nAAA,2020-01-03,10.5,12,10,11.5,11.4,200\n")
    report = prices.ingest_csv(con, f)
    assert (report.inserted, report.updated, report.unchanged) == (0, 1, 1)
    assert _rows(con, "SELECT close, adj_close FROM prices WHERE date = '2020-01-03'") == [(11.5, 11.4)]
    again = prices.ingest_csv(con, f)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2)


def test_malformed_lines_fail_the_whole_batch_naming_file_and_line(tmp_path, db_file):
    con = db.connect(db_file)
    good = _write(tmp_path / "good.csv", LONG_HEADER + "AAA,2020-01-02,10,11,9,10.5,10.4,100\n")
    prices.ingest_csv(con, good)
    bad = _write(tmp_path / "bad.csv", LONG_HEADER + "BBB,2020-01-02,10,11,9,10.5,10.4,100\n"
                                                    "BBB,2020-01-03,10,11,9,10.5,100\n"       # a column short
                                                    "BBB,2020-01-0x,10,11,9,10.5,10.4,100\n"  # bad date
                                                    "BBB,2020-01-06,10,11,9,abc,10.4,100\n")  # bad number
    with pytest.raises(prices.PriceInputError) as err:
        prices.ingest_csv(con, [good, bad])
    text = str(err.value)
    assert f"{bad}:3" in text and f"{bad}:4" in text and f"{bad}:5" in text and "nothing was stored" in text
    assert _rows(con, "SELECT ticker, count(*) FROM prices GROUP BY ALL") == [("AAA", 1)]


def test_unusable_rows_are_rejected_with_file_and_line_and_the_rest_stored(tmp_path, db_file):
    con = db.connect(db_file)
    f = _write(tmp_path / "mixed.csv", LONG_HEADER + "AAA,2020-01-02,10,11,9,10.5,10.4,100\n"
                                                    "AAA,2020-01-03,10,11,9,nan,10.4,100\n"
                                                    "AAA,2020-01-06,10,11,9,0,10.4,100\n"
                                                    "AAA,2020-01-07,10,11,9,-3,10.4,100\n"
                                                    "A A,2020-01-08,10,11,9,10,10.4,100\n"
                                                    ",2020-01-09,10,11,9,10,10.4,100\n"
                                                    "AAA,2020-01-10,,,,10.2,10.1,100\n")
    report = prices.ingest_csv(con, f)
    assert (report.read, report.inserted, report.rejected, report.flagged) == (7, 2, 5, 1)
    joined = "\n".join(report.problems)
    for line, why in [(3, "NaN"), (4, "not positive"), (5, "not positive"), (6, "unknown ticker"), (7, "missing")]:
        assert any(p.startswith(f"{f}:{line}:") and why in p for p in report.problems), (line, joined)
    assert _rows(con, "SELECT date, open, flags FROM prices WHERE date = '2020-01-10'") == [
        (date(2020, 1, 10), None, "missing_ohlc")]


def test_repeats_in_a_batch_collapse_and_conflicts_fail_naming_both(tmp_path, db_file):
    con = db.connect(db_file)
    a = _write(tmp_path / "a.csv", LONG_HEADER + "AAA,2020-01-02,10,11,9,10.5,10.4,100\n")
    same = _write(tmp_path / "same.csv", LONG_HEADER + "AAA,2020-01-02,10,11,9,10.5,10.4,100\n")
    report = prices.ingest_csv(con, [a, same])
    assert (report.inserted, report.duplicates) == (1, 1)
    other = _write(tmp_path / "other.csv", LONG_HEADER + "BBB,2020-01-02,1,1,1,1,1,1\n"
                                                        "AAA,2020-01-02,10,11,9,99,10.4,100\n")
    with pytest.raises(prices.PriceInputError, match="different values") as err:
        prices.ingest_csv(con, [a, other])
    assert f"{a}:2" in str(err.value) and f"{other}:3" in str(err.value)
    assert _rows(con, "SELECT ticker, close FROM prices") == [("AAA", 10.5)]  # the batch was rolled back whole


def test_a_conflict_inside_one_file_names_both_lines(tmp_path, db_file):
    con = db.connect(db_file)
    f = _write(tmp_path / "twice.csv", LONG_HEADER + "BBB,2020-01-02,1,1,1,1,1,1\n"
                                                    "AAA,2020-01-02,10,11,9,10.5,10.4,100\n"
                                                    "AAA,2020-01-02,10,11,9,99,10.4,100\n")
    with pytest.raises(prices.PriceInputError, match="different values") as err:
        prices.ingest_csv(con, f)
    assert f"AAA 2020-01-02: {f}:3\nAAA 2020-01-02: {f}:4" in str(err.value)


def test_a_fractional_volume_is_rejected_not_rounded(tmp_path, db_file):
    import pandas as pd

    con = db.connect(db_file)
    long = _write(tmp_path / "long.csv", LONG_HEADER + "AAA,2020-01-02,10,11,9,10.5,10.4,100\n"
                                                      "AAA,2020-01-03,10,11,9,10.5,10.4,100.5\n")
    sp500 = _write(tmp_path / "BBB_data.csv", "date,open,high,low,close,volume,Name\n"
                                              "2020-01-02,10,11,9,10.5,1e3,BBB\n"
                                              "2020-01-03,10,11,9,10.5,2.25,BBB\n")
    report = prices.ingest_csv(con, [long, sp500])
    assert (report.read, report.inserted, report.rejected) == (4, 2, 2)
    assert sorted(report.problems) == sorted([f"{long}:3: volume 100.5 is not a whole number of shares",
                                              f"{sp500}:3: volume 2.25 is not a whole number of shares"])
    bars = pd.DataFrame({"ticker": ["CCC", "CCC"], "date": [date(2020, 1, 2), date(2020, 1, 3)], "open": [1.0, 1.0],
                         "high": [1.0, 1.0], "low": [1.0, 1.0], "close": [1.0, 1.0], "adj_close": [1.0, 1.0],
                         "volume": [7.0, 7.5]})
    report = prices.ingest_bars(con, bars)
    assert (report.inserted, report.rejected) == (1, 1)
    assert report.problems == ["yfinance CCC 2020-01-03: volume 7.5 is not a whole number of shares"]
    assert _rows(con, "SELECT ticker, volume FROM prices ORDER BY ALL") == [("AAA", 100), ("BBB", 1000), ("CCC", 7)]


def test_one_ticker_rule_in_python_and_sql():
    """prices.is_ticker (news and names use it) says what the staging SQL says; Yahoo's spellings pass."""
    con = duckdb.connect()
    con.execute(db.sql_text("ingest/prices_staging"))
    valid = ["AAPL", "BRK-B", "BRK.B", "EURUSD=X", "^GSPC", "BF-B", "A", "0700.HK"]
    invalid = ["../../ETC", "A/B", "A\\B", "..", ".A", "-X", "=X", "A B", "", "aapl", "A" * 21, "ÄPFEL", "A\n"]
    for ticker in valid + invalid:
        problem = con.execute("SELECT price_problem(?, DATE '2020-01-02', 1, 1, 1, 1, 1, 1)", [ticker]).fetchone()[0]
        assert prices.is_ticker(ticker) == (problem is None) == (ticker in valid), (ticker, problem)


def test_unknown_header_and_missing_path_are_named(tmp_path, db_file):
    con = db.connect(db_file)
    f = _write(tmp_path / "weird.csv", "day,price\n2020-01-02,3\n")
    with pytest.raises(prices.PriceInputError, match=r"weird.csv:1: unknown price CSV header day,price"):
        prices.ingest_csv(con, f)
    with pytest.raises(FileNotFoundError, match="nope"):
        prices.ingest_csv(con, tmp_path / "nope" / "*.csv")


def test_shipped_demo_prices_are_gzip_sp500_files(db_file):
    con = db.connect(db_file)
    files = demo_data.paths()["prices"]
    assert len(files) >= 5 and all(f.name.endswith("_data.csv.gz") for f in files)
    report = prices.ingest_csv(con, files)
    assert report.rejected == 0 and report.inserted > 5 * 1200
    assert {"A", "AAP", "AAPL", "ABBV", "ABC"} <= set(report.per_key)


# --- yfinance, offline on recorded Yahoo chart payloads -----------------------------------------------------

@pytest.fixture
def yahoo(shared_data, tmp_path):
    import yfinance as yf

    yf.set_tz_cache_location(str(tmp_path / "yf-cache"))  # yfinance's caches stay out of ~
    with local_server() as server:
        server.add_yahoo_recordings(shared_data / "yahoo_chart")
        yield server, YahooToLocalSession(server.url)


def _series(con, ticker):
    return con.execute("SELECT date, close, adj_close FROM prices WHERE ticker = ? ORDER BY date", [ticker]).fetchall()


def _dividend_step(rows, ex_date):
    """(adj/close before the ex-date) / (adj/close on it): Yahoo's back-adjustment factor for that dividend."""
    i = next(i for i, (d, _, _) in enumerate(rows) if d == ex_date)
    (_, c0, a0), (_, c1, a1) = rows[i - 1], rows[i]
    return (a0 / c0) / (a1 / c1), c0


def test_yfinance_aapl_split_and_dividend_come_out_right(yahoo, db_file):
    server, session = yahoo
    con = db.connect(db_file)
    report = prices.ingest_yfinance(con, ["AAPL"], "2020-08-31", "2020-11-07", session=session, backoff_s=0)
    assert (report.inserted, report.failed) == (49, {})
    assert server.count("/v8/finance/chart/AAPL") >= 1  # yfinance's own HTTP and parsing ran
    rows = _series(con, "AAPL")
    first_day, close, adj = rows[0]
    # 2020-08-31 is the first day after the 4:1 split: ~$129, not the ~$500 of the old shares.
    assert first_day == date(2020, 8, 31) and 125 < close < 135 and adj < close
    assert all(0.85 < b[1] / a[1] < 1.15 for a, b in zip(rows, rows[1:]))  # no 4x jump anywhere
    # The $0.205 dividend going ex on 2020-11-06 steps adj_close/close by (1 - 0.205 / previous close).
    step, prev_close = _dividend_step(rows, date(2020, 11, 6))
    assert step == pytest.approx(1 - 0.205 / prev_close, abs=2e-4)
    assert _rows(con, "SELECT DISTINCT source FROM prices") == [("yfinance",)]


def test_yfinance_msft_dividends_and_nvda_split(yahoo, db_file):
    _, session = yahoo
    con = db.connect(db_file)
    report = prices.ingest_yfinance(con, ["MSFT", "NVDA"], "2021-02-01", "2022-01-31", session=session, backoff_s=0)
    assert report.per_key["MSFT"]["inserted"] == 252 and report.per_key["NVDA"]["inserted"] == 252
    msft = _series(con, "MSFT")
    for ex_date, amount in [(date(2021, 2, 17), 0.56), (date(2021, 5, 19), 0.56), (date(2021, 8, 18), 0.56),
                            (date(2021, 11, 17), 0.62)]:
        step, prev_close = _dividend_step(msft, ex_date)
        assert step == pytest.approx(1 - amount / prev_close, abs=2e-4), ex_date
    quiet = [(a[2] / a[1]) / (b[2] / b[1]) for a, b in zip(msft, msft[1:]) if b[0] not in
             (date(2021, 2, 17), date(2021, 5, 19), date(2021, 8, 18), date(2021, 11, 17))]
    assert all(math.isclose(q, 1, abs_tol=1e-5) for q in quiet)  # adj_close/close moves only on ex-dates
    nvda = {d: c for d, c, _ in _series(con, "NVDA")}
    assert 0.8 < nvda[date(2021, 7, 20)] / nvda[date(2021, 7, 19)] < 1.2  # the 4:1 split is no price move


def test_yfinance_unknown_ticker_and_rate_limit_are_reported_not_fatal(yahoo, db_file):
    server, session = yahoo
    con = db.connect(db_file)
    server.yahoo_failures["QQQ"] = [429] * 50  # rate-limited on every attempt
    report = prices.ingest_yfinance(con, ["AAPL", "ZZZZNOPE", "QQQ"], "2020-01-01", "2020-01-03",
                                    session=session, retries=1, backoff_s=0)
    assert set(report.failed) == {"ZZZZNOPE", "QQQ"} and "after 2 attempt(s)" in report.failed["QQQ"]
    assert _rows(con, "SELECT ticker, date FROM prices") == [("AAPL", date(2020, 1, 2))]


def test_yfinance_retries_an_empty_frame_until_it_comes(yahoo, db_file):
    server, session = yahoo
    con = db.connect(db_file)
    server.yahoo_failures["QQQ"] = [429, 429]  # the first attempt is rate-limited, the retry gets data
    report = prices.ingest_yfinance(con, ["QQQ"], "2020-01-01", "2020-01-03", session=session, retries=2,
                                    backoff_s=0)
    assert report.failed == {} and report.inserted == 1
    assert server.yahoo_failures["QQQ"] == [] and server.count("/v8/finance/chart/QQQ") >= 3


# --- CLI ---------------------------------------------------------------------------------------------------

def _cli(*args, cwd=None):
    hitchhiker = str(Path(sys.executable).parent / "hitchhiker")  # the installed console script
    return subprocess.run([hitchhiker, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_cli_ingest_prices_csv_prints_what_it_stored(tmp_path):
    out = _cli("ingest", "prices", "--csv", str(demo_data.paths()["prices_dir"]), "--db", str(tmp_path / "c.duckdb"))
    assert out.returncode == 0, out.stderr
    assert "inserted 12590" in out.stdout and "prices table: 12590 rows, 10 tickers" in out.stdout
    bad = _cli("ingest", "prices", "--csv", str(tmp_path / "none*.csv"), "--db", str(tmp_path / "c.duckdb"))
    assert bad.returncode == 2 and "error: no price CSV files" in bad.stderr and "Traceback" not in bad.stderr


def _hold(path, ready, release):
    con = duckdb.connect(str(path))
    ready.set()
    release.wait(60)
    con.close()


def test_cli_ingest_against_a_locked_store_is_a_clear_error(tmp_path):
    store = tmp_path / "locked.duckdb"
    db.connect(store).close()
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(store, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        out = _cli("ingest", "prices", "--csv", str(demo_data.paths()["prices_dir"]), "--db", str(store))
    finally:
        release.set()
        holder.join(30)
    assert out.returncode == 2 and "is locked by another process" in out.stderr and "Traceback" not in out.stderr


class _LockProbe(LocalServer):
    """Serves the recorded charts and, on each chart request, tries to open the store from this process."""

    def __init__(self, store: Path):
        super().__init__()
        self.store = store
        self.store_free: list[bool] = []

    def _chart(self, ticker, query):
        try:
            duckdb.connect(str(self.store)).close()
            self.store_free.append(True)
        except duckdb.IOException:  # "Could not set lock on file": the CLI holds the store while downloading
            self.store_free.append(False)
        return super()._chart(ticker, query)


_CLI_VIA_LOCAL_YAHOO = """
import sys
sys.path.insert(0, sys.argv[1])
import yfinance as yf
import yfinance.multi
from http_fixtures import YahooToLocalSession
yf.set_tz_cache_location(sys.argv[3])
yfinance.multi.new_session = lambda: YahooToLocalSession(sys.argv[2])  # the CLI's own download, sent to 127.0.0.1
from hitchhiker.cli import main
sys.exit(main(sys.argv[4:]))
"""


def test_cli_ingest_prices_tickers_downloads_before_opening_the_store(shared_data, tmp_path):
    store = tmp_path / "y.duckdb"
    db.connect(store).close()
    server = _LockProbe(store)
    server.add_yahoo_recordings(shared_data / "yahoo_chart")
    server.start()
    try:
        out = subprocess.run([sys.executable, "-c", _CLI_VIA_LOCAL_YAHOO, str(Path(__file__).parent), server.url,
                              str(tmp_path / "yf-cache"), "ingest", "prices", "--tickers", "AAPL", "--start",
                              "2020-08-31", "--end", "2020-11-07", "--db", str(store)],
                             capture_output=True, text=True, timeout=120)
    finally:
        server.stop()
    assert out.returncode == 0, out.stderr
    assert "inserted 49" in out.stdout and "prices table: 49 rows, 1 tickers" in out.stdout
    # Downloads (and their retries, seconds of backoff) run with no store connection open: others can write meanwhile.
    assert server.store_free and all(server.store_free), server.store_free
