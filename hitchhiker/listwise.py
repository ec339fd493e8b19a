"""Listwise baskets: which K tickers a listwise state of a decision date ranks, and in what prompt order.

The draw is SQL (`sql/states/baskets.sql`): seeded md5 hashes, like pairs, so a date's baskets depend on the seed,
the date and that date's eligible tickers only. `states.build_states` renders them like pairs (letters A, B, C, ...).
"""
from __future__ import annotations

from datetime import date

import duckdb
import pyarrow as pa

from hitchhiker import contract, db


def attempts_for(max_lists_per_date: int) -> int:
    """Numbered draws per date: enough that a universe with room for max_lists_per_date sets nearly always fills it."""
    return 4 * max_lists_per_date + 16


def draw_baskets(
    con: duckdb.DuckDBPyConnection, eligible: list[tuple[date, str]], list_size: int, max_lists_per_date: int, seed: int
) -> list[tuple[date, list[str], str]]:
    """(decision_date, tickers in prompt order, partition key: sorted tickers joined by '-') per basket drawn."""
    contract.check_list_size(list_size)
    if max_lists_per_date < 1:
        raise ValueError(f"max_lists_per_date must be >= 1, got {max_lists_per_date}")
    con.register("state_eligible", pa.table({
        "decision_date": pa.array([d for d, _ in eligible], pa.date32()),
        "ticker": pa.array([t for _, t in eligible], pa.string()),
    }))
    try:
        rows = con.execute(db.sql_text("states/baskets"), {
            "seed": seed, "list_size": list_size, "max_lists_per_date": max_lists_per_date,
            "attempts": attempts_for(max_lists_per_date),
        }).fetchall()
    finally:
        con.unregister("state_eligible")
    return [(d, list(tickers), pair) for d, tickers, pair in rows]
