-- Point-in-time past returns of every stock of the evaluated states, for the rule baselines and the
-- extrapolation-bias measure. Reads the registered relation `eval_states(state_id, decision_date, history_days,
-- tickers)` and `prices`; uses only prices dated on or before each state's decision date.
--   last_return: the decision date's close over the previous trading day's close, minus 1 (per $1)
--   past_return: the decision date's close over the close history_days trading days earlier, minus 1 (per $1)
-- Closes are adjusted (adj_close) where the source gives them. Trading days are the ticker's own price dates.
WITH slots AS (
    SELECT state_id, decision_date, history_days, unnest(tickers) AS ticker, generate_subscripts(tickers, 1) AS slot
    FROM eval_states
),
px AS (
    SELECT ticker, date, coalesce(adj_close, close) AS close_usd,
           row_number() OVER (PARTITION BY ticker ORDER BY date) AS k
    FROM prices
    WHERE ticker IN (SELECT DISTINCT ticker FROM slots)
      AND date <= (SELECT max(decision_date) FROM slots)
)
SELECT s.state_id, s.slot, s.ticker,
       t.close_usd / prev.close_usd - 1 AS last_return,
       t.close_usd / back.close_usd - 1 AS past_return
FROM slots AS s
JOIN px AS t ON t.ticker = s.ticker AND t.date = s.decision_date
LEFT JOIN px AS prev ON prev.ticker = s.ticker AND prev.k = t.k - 1
LEFT JOIN px AS back ON back.ticker = s.ticker AND back.k = t.k - s.history_days
ORDER BY s.state_id, s.slot;
