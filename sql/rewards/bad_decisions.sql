-- Decisions that sql/rewards.sql cannot price as they are, each with the problem in words: one whose market (state)
-- is missing, a valid one without the action its mode needs, a pairwise one without ticker B, an elementwise one
-- with a ticker B, or an unknown mode (a silent NULL reward would be worse). preview refuses its file while any exist
-- (listing the first); compute_rewards leaves them out and reports them, so they never block the other decisions.
-- Reads `decisions` and `decision_markets` (see sql/rewards.sql).
SELECT d.decision_id, d.market_key, d.mode, m.ticker_a, m.ticker_b, d.action, d.proportion, d.position,
    CASE
        WHEN m.market_key IS NULL THEN 'its state (market) is not in the states table'
        WHEN d.mode IS NULL OR d.mode NOT IN ('pairwise', 'elementwise', 'listwise')
            THEN format('mode {} is not pairwise, elementwise or listwise', d.mode)
        WHEN d.valid IS NULL THEN 'valid is NULL'
        WHEN m.ticker_a IS NULL OR m.decision_date IS NULL OR m.history_days IS NULL
            THEN 'its state has no ticker A, decision date or history_days'
        WHEN d.mode = 'listwise' AND (m.tickers IS NULL OR len(m.tickers) NOT BETWEEN 3 AND 8)
            THEN 'a listwise decision on a state without a basket of 3 to 8 tickers'
        WHEN (d.mode = 'listwise') <> (m.tickers IS NOT NULL) THEN 'a basket state with a decision that is not listwise'
        WHEN d.mode = 'listwise' THEN 'a valid listwise decision whose action is not a ranking of the basket''s letters'
        WHEN d.mode = 'pairwise' AND m.ticker_b IS NULL THEN 'a pairwise decision on a state without a ticker B'
        WHEN d.mode = 'elementwise' AND m.ticker_b IS NOT NULL THEN 'an elementwise decision on a state with a ticker B'
        WHEN d.mode = 'pairwise' THEN 'a valid pairwise decision without action A or B, or a proportion outside [0, 1]'
        ELSE 'a valid elementwise decision without a position'
    END AS problem
FROM decisions AS d
LEFT JOIN decision_markets AS m USING (market_key)
WHERE m.market_key IS NULL
   OR d.mode NOT IN ('pairwise', 'elementwise', 'listwise') OR d.mode IS NULL OR d.valid IS NULL OR m.ticker_a IS NULL
   OR m.decision_date IS NULL OR m.history_days IS NULL
   OR (d.mode = 'listwise' AND (m.tickers IS NULL OR len(m.tickers) NOT BETWEEN 3 AND 8))
   OR ((d.mode = 'listwise') <> (m.tickers IS NOT NULL))
   OR (d.valid AND d.mode = 'listwise' AND (d.action IS NULL
       OR list_sort(string_split(d.action, '>')) <> list_transform(range(1, len(m.tickers) + 1), lambda i: chr(CAST(64 + i AS INTEGER)))))
   OR (d.mode = 'pairwise' AND m.ticker_b IS NULL)
   OR (d.mode = 'elementwise' AND m.ticker_b IS NOT NULL)
   OR (d.valid AND d.mode = 'pairwise' AND (d.action IS NULL OR d.action NOT IN ('A', 'B')))
   OR (d.valid AND d.mode = 'pairwise' AND d.proportion IS NOT NULL AND NOT (d.proportion BETWEEN 0 AND 1))
   OR (d.valid AND d.mode = 'elementwise' AND (d.position IS NULL OR isnan(d.position)))
ORDER BY d.decision_id
