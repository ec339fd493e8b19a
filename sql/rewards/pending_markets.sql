-- The markets of the pending decisions (temp table `decisions`, sql/rewards/pending.sql): their states, with
-- tickers[1] as Stock A and tickers[2] as Stock B (NULL for elementwise). The relation sql/rewards.sql reads as
-- `decision_markets`. (A rollout whose mode is not its state's has a ticker B it should not have, or lacks one:
-- sql/rewards/bad_decisions.sql lists it.)
SELECT
    s.state_id      AS market_key,
    s.decision_date,
    s.tickers[1]    AS ticker_a,
    s.tickers[2]    AS ticker_b,
    s.history_days,
    IF(s.mode = 'listwise', s.tickers, NULL) AS tickers   -- a basket, in prompt order
FROM states AS s
SEMI JOIN decisions AS d ON d.market_key = s.state_id
