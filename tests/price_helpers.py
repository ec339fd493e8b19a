"""Shared by tests that need real daily prices in a store: the recorded sp500_5yr files of some tickers, a date range."""
from __future__ import annotations

from datetime import date
from pathlib import Path


def insert_sp500_prices(con, shared_data: Path, tickers: list[str], first: date | str, last: date | str) -> None:
    """The tickers' rows of ../shared/data/prices/sp500_5yr between first and last (inclusive) into `prices`."""
    files = [str(Path(shared_data) / "prices" / "sp500_5yr" / f"{t}_data.csv") for t in tickers]
    con.execute(
        "INSERT INTO prices SELECT Name, date, open, high, low, close, NULL, volume, NULL, 'csv', now() "
        "FROM read_csv($f, header = true, columns = {'date': 'DATE', 'open': 'DOUBLE', 'high': 'DOUBLE', "
        "'low': 'DOUBLE', 'close': 'DOUBLE', 'volume': 'BIGINT', 'Name': 'VARCHAR'}) "
        "WHERE date BETWEEN CAST($first AS DATE) AND CAST($last AS DATE)",
        {"f": files, "first": str(first), "last": str(last)})
