-- The inputs of the Beta position head for a list of states: the numbers the prompt shows (`features`, keyed by
-- "A"), the chat messages (for the optional frozen-LM embedding) and what a decision row needs. Point-in-time by
-- construction: a state holds only what was known at its decision time. Parameter: $state_ids (VARCHAR[]).
SELECT s.state_id, s.decision_date, s.mode, s.style, s.tickers, s.pair, s.action_format, s.horizon_days,
       s.history_days, s.features, s.messages
FROM states AS s
SEMI JOIN (SELECT unnest($state_ids::VARCHAR[]) AS state_id) AS wanted USING (state_id)
ORDER BY s.decision_date, s.pair, s.state_id;
