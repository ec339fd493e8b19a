"""The small data set shipped in the package (hitchhiker/data/, see PROVENANCE.md) for the offline demo."""
from __future__ import annotations

import os
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"


def paths() -> dict[str, object]:
    """The shipped files: 'prices' (list of sp500_5yr-format .csv.gz), 'prices_dir', 'feeds' (SEC RSS/Atom
    files), 'names' (company names of the shipped tickers, `ticker,name[,alias...]`), 'provenance'."""
    return {
        "prices": sorted((DATA_DIR / "prices").glob("*_data.csv.gz")),
        "prices_dir": DATA_DIR / "prices",
        "feeds": sorted(p for p in (DATA_DIR / "feeds").iterdir() if p.suffix in (".xml", ".rss")),
        "names": DATA_DIR / "company_names.csv",
        "provenance": DATA_DIR / "PROVENANCE.md",
    }


def shared_data_dir() -> Path:
    """The recorded data beside the checkout (../shared/data), or $HITCHHIKER_SHARED_DATA."""
    return Path(os.environ.get("HITCHHIKER_SHARED_DATA") or DATA_DIR.parent.parent.parent / "shared" / "data")


def shared_news_csv() -> Path | None:
    """The Benzinga headline sample when ../shared exists (not shipped: its licence is not stated), else None."""
    path = shared_data_dir() / "news" / "benzinga_analyst_ratings_sample.csv"
    return path if path.is_file() else None
