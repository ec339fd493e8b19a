"""A small synthetic store for the Beta head's tests: the learnable market and its elementwise 'full' states."""
from __future__ import annotations

from hitchhiker import db


def synthetic_store(path, n_days: int = 60, n_couples: int = 2, seed: int = 0):
    """(connection, elementwise state ids in date order, market) on a fresh store at `path`."""
    from hitchhiker.beta.loop import _default_states
    from hitchhiker.policy import load_tokenizer
    from hitchhiker.states import build_states
    from hitchhiker.synthetic import SyntheticMarket, trading_days, write_market

    market = SyntheticMarket(n_couples=n_couples, n_days=n_days, seed=seed)
    con = db.connect(path)
    write_market(con, market)
    days = trading_days(market)[12:-2]  # 10 days of history first; every decision's next session exists
    build_states(con, _default_states(), days, tickers=market.tickers(), tokenizer=load_tokenizer())
    ids = [r[0] for r in con.execute("SELECT state_id FROM states ORDER BY decision_date, pair").fetchall()]
    return con, ids, market
