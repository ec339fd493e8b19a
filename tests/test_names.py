"""Company names: Yahoo (recorded payloads on 127.0.0.1), CSV and SEC files, the flow, and states that say whether
their headlines could be anonymized."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from hitchhiker import db, demo_data, names, states
from hitchhiker.states import StatesConfig, build_states
from http_fixtures import YahooToLocalSession, local_server

HITCHHIKER = str(Path(sys.executable).parent / "hitchhiker")


@pytest.fixture
def yahoo(shared_data, tmp_path):
    import yfinance as yf

    yf.set_tz_cache_location(str(tmp_path / "yf-cache"))
    with local_server() as server:
        server.add_yahoo_recordings(shared_data / "yahoo_chart")
        yield server, YahooToLocalSession(server.url)


def _names(con) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for t, n, source, at in con.execute("SELECT ticker, name, source, ingested_at FROM company_names").fetchall():
        assert source and at is not None and at.tzinfo is not None  # where each name came from, and when
        out.setdefault(t, set()).add(n)
    return out


def test_yahoo_names_from_recorded_payloads_unknown_reported_rate_limit_retried(yahoo):
    server, session = yahoo
    server.yahoo_failures["QQQ"] = [429, 429]  # rate-limited twice, then answered
    con = db.connect(":memory:")
    added, failed = names.ingest_yahoo(con, ["AAPL", "MSFT", "QQQ", "ZZZZ"], session=session, retries=2, backoff_s=0)
    assert _names(con) == {"AAPL": {"Apple Inc."}, "MSFT": {"Microsoft Corporation"},
                           "QQQ": {"Invesco QQQ Trust", "Invesco QQQ Trust, Series 1"}}
    assert added == 4 and set(failed) == {"ZZZZ"} and "404" in failed["ZZZZ"]
    assert server.count("/v8/finance/chart/QQQ") >= 3 and server.yahoo_failures["QQQ"] == []
    assert failed["ZZZZ"].endswith("(after 1 attempt(s))")  # an unknown symbol is not retried
    assert con.execute("SELECT DISTINCT source FROM company_names").fetchall() == [("yahoo",)]
    again, _ = names.ingest_yahoo(con, ["AAPL"], session=session, backoff_s=0)
    assert again == 0 and con.execute("SELECT count(*) FROM company_names").fetchone() == (4,)


def test_csv_and_sec_files_are_read_and_bad_lines_named(tmp_path):
    con = db.connect(":memory:")
    good = tmp_path / "names.csv"
    good.write_text("ticker,name,aliases\nAAPL,Apple Inc.,Apple\nmsft,Microsoft Corporation\n\nXOM,Exxon Mobil,Exxon,\n")
    assert names.ingest_file(con, good) == 5
    assert _names(con) == {"AAPL": {"Apple Inc.", "Apple"}, "MSFT": {"Microsoft Corporation"}, "XOM": {"Exxon Mobil", "Exxon"}}
    assert names.ingest_file(con, good) == 0  # idempotent
    sec = tmp_path / "company_tickers.json"
    sec.write_text(json.dumps({"0": {"cik_str": 320193, "ticker": "AAPL", "title": "Apple Inc."},
                               "1": {"cik_str": 1318605, "ticker": "TSLA", "title": "Tesla, Inc."}}))
    assert names.ingest_file(con, sec) == 1  # Apple Inc. was already there
    assert con.execute("SELECT source FROM company_names WHERE ticker = 'TSLA'").fetchall() == [("sec:company_tickers.json",)]
    bad = tmp_path / "bad.csv"
    bad.write_text("AAPL,Apple\nnot a ticker!,Foo\n")
    with pytest.raises(names.NamesInputError, match=r"bad.csv:2: expected 'ticker,name"):
        names.ingest_file(con, bad)
    lonely = tmp_path / "lonely.csv"
    lonely.write_text("AAPL\n")
    with pytest.raises(names.NamesInputError, match=r"lonely.csv:1"):
        names.read_file(lonely)
    broken = tmp_path / "broken.json"
    broken.write_text('{"0": {"ticker": "AAPL"}}')
    with pytest.raises(names.NamesInputError, match="broken.json: entry 0"):
        names.read_file(broken)
    assert con.execute("SELECT count(*) FROM company_names").fetchone() == (6,)  # nothing of a bad file stored


def test_names_files_use_the_price_ticker_rule(tmp_path):
    yahoo = tmp_path / "yahoo.csv"
    yahoo.write_text("BRK-B,Berkshire Hathaway Inc.\nbrk.b,Berkshire Hathaway\nEURUSD=X,EUR/USD\n^GSPC,S&P 500\n")
    assert set(names.read_file(yahoo)) == {"BRK-B", "BRK.B", "EURUSD=X", "^GSPC"}
    for ticker in ("..", "-X", ".HIDDEN", "A" * 21):
        bad = tmp_path / "bad.csv"
        bad.write_text(f"AAPL,Apple\n{ticker},Foo\n")
        with pytest.raises(names.NamesInputError, match=r"bad.csv:2: expected 'ticker,name"):
            names.read_file(bad)


def test_shipped_demo_names_cover_every_shipped_ticker():
    shipped = demo_data.paths()
    tickers = {p.name.split("_data")[0] for p in shipped["prices"]}
    assert set(names.read_file(shipped["names"])) == tickers


NY = ZoneInfo("America/New_York")


def _market(con) -> list[date]:
    days, d = [], date(2021, 3, 1)
    while len(days) < 15:
        if d.weekday() < 5:
            days.append(d)
        d += timedelta(days=1)
    rows = [(t, d, 100.0 + i + k, 1000 + i) for k, t in enumerate(("AAA", "BBB")) for i, d in enumerate(days)]
    con.executemany("INSERT INTO prices (ticker, date, open, high, low, close, adj_close, volume, source, ingested_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'test', now())", [(t, d, c, c, c, c, c, v) for t, d, c, v in rows])
    at = datetime.combine(days[-1], time(9), tzinfo=NY).astimezone(timezone.utc)
    con.execute("INSERT INTO news (news_id, ticker, published_at, title, source, ingested_at) VALUES "
                "('n1', 'AAA', ?, 'Acme Widgets wins a big contract', 'test', now())", [at])
    return days


def test_a_state_whose_headline_names_an_unnamed_company_is_marked(tmp_path):
    from hitchhiker.default_model import build_tokenizer

    tok = build_tokenizer(states.example_prompts(100))
    con = db.connect(":memory:")
    days = _market(con)
    config = StatesConfig(mode="pairwise", history_days=5, trend_days=3)
    build_states(con, config, [days[-1]], tokenizer=tok)
    (messages, known, tickers), = con.execute("SELECT messages, names_known, tickers FROM states").fetchall()
    assert "Acme Widgets" in messages  # no name recorded: only symbols could be scrubbed
    assert dict(zip(tickers, known)) == {"AAA": False, "BBB": False}
    (tmp_path / "n.csv").write_text("AAA,Acme Widgets Inc.\nBBB,Beta Bakeries\n")
    names.ingest_file(con, tmp_path / "n.csv")
    assert names.missing(con) == []
    build_states(con, config, [days[-1]], tokenizer=tok)
    (messages, known), = con.execute("SELECT messages, names_known FROM states WHERE list_bool_and(names_known)").fetchall()
    assert "Acme" not in messages and ("Stock A wins" in messages or "Stock B wins" in messages)
    assert known == [True, True]


def test_cli_ingest_names_from_a_csv(tmp_path):
    store = tmp_path / "n.duckdb"
    con = db.connect(store)
    _market(con)
    con.close()
    (tmp_path / "n.csv").write_text("AAA,Acme Widgets Inc.\n")
    out = subprocess.run([HITCHHIKER, "ingest", "names", "--db", str(store), "--csv", str(tmp_path / "n.csv")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "1 added" in out.stdout and "no name yet for 1 stored tickers (BBB)" in out.stdout
    bad = subprocess.run([HITCHHIKER, "ingest", "names", "--db", str(store), "--csv", str(tmp_path / "none.csv")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "none.csv: cannot read" in bad.stderr and "Traceback" not in bad.stderr


def test_ingest_names_flow_records_a_file_and_lists_who_is_left(prefect_harness, tmp_path):
    from flows.ingest import ingest_names

    store = tmp_path / "f.duckdb"
    con = db.connect(store)
    _market(con)
    con.close()
    (tmp_path / "n.csv").write_text("AAA,Acme Widgets Inc.\n")
    out = ingest_names(csv=str(tmp_path / "n.csv"), db=str(store))
    assert out == {"added": 1, "failed": {}, "missing": ["BBB"]}
    again = ingest_names(csv=str(tmp_path / "n.csv"), db=str(store))
    assert again["added"] == 0
