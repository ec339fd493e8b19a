-- Decisions that sql/rewards.sql cannot price as they are: one whose market is missing, a valid one without the
-- action its mode needs, a pairwise one without ticker B, an elementwise one with a ticker B, or an unknown mode.
-- compute_rewards and preview refuse to run while any exist (a silent NULL reward would be worse). At most 5 are
-- listed. Reads `decisions` and `decision_markets` (see sql/rewards.sql).
SELECT d.decision_id, d.mode, m.ticker_a, m.ticker_b, d.action, d.proportion, d.position
FROM decisions AS d
LEFT JOIN decision_markets AS m USING (market_key)
WHERE m.market_key IS NULL
   OR d.mode NOT IN ('pairwise', 'elementwise') OR d.mode IS NULL OR d.valid IS NULL OR m.ticker_a IS NULL
   OR m.decision_date IS NULL OR m.history_days IS NULL
   OR (d.mode = 'pairwise' AND m.ticker_b IS NULL)
   OR (d.mode = 'elementwise' AND m.ticker_b IS NOT NULL)
   OR (d.valid AND d.mode = 'pairwise' AND (d.action IS NULL OR d.action NOT IN ('A', 'B')))
   OR (d.valid AND d.mode = 'pairwise' AND d.proportion IS NOT NULL AND NOT (d.proportion BETWEEN 0 AND 1))
   OR (d.valid AND d.mode = 'elementwise' AND (d.position IS NULL OR isnan(d.position)))
LIMIT 5
