-- For callers with one flat relation of decisions (preview's CSV, evaluation's baselines): the registered
-- `decision_rows(decision_id, decision_date, mode, ticker_a, ticker_b, action, proportion, position, valid,
-- history_days)` as the two relations sql/rewards.sql reads, each decision its own market.
CREATE OR REPLACE TEMP VIEW decisions AS
SELECT decision_id, decision_id AS market_key, mode, action, proportion, position, valid
FROM decision_rows;

CREATE OR REPLACE TEMP VIEW decision_markets AS
SELECT decision_id AS market_key, decision_date, ticker_a, ticker_b, history_days, CAST(tickers AS VARCHAR[]) AS tickers
FROM decision_rows;
