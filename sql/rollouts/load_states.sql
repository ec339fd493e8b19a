-- What the sampler needs of each state: the chat messages, and how the completion is parsed back.
SELECT state_id, decision_date, mode, pair, action_format, messages, len(tickers) AS list_size
FROM states
WHERE list_contains($state_ids, state_id);
