-- Decisions that sql/rewards.sql cannot price as they are: a valid one without the action its mode needs, a
-- pairwise one without ticker B, an elementwise one with a ticker B, or an unknown mode. compute_rewards and
-- preview refuse to run while any exist (a silent NULL reward would be worse). At most 5 are listed.
SELECT decision_id, mode, ticker_a, ticker_b, action, proportion, position
FROM decisions
WHERE mode NOT IN ('pairwise', 'elementwise') OR mode IS NULL OR valid IS NULL OR ticker_a IS NULL
   OR decision_date IS NULL OR history_days IS NULL
   OR (mode = 'pairwise' AND ticker_b IS NULL)
   OR (mode = 'elementwise' AND ticker_b IS NOT NULL)
   OR (valid AND mode = 'pairwise' AND (action IS NULL OR action NOT IN ('A', 'B')))
   OR (valid AND mode = 'pairwise' AND proportion IS NOT NULL AND NOT (proportion BETWEEN 0 AND 1))
   OR (valid AND mode = 'elementwise' AND (position IS NULL OR isnan(position)))
LIMIT 5
