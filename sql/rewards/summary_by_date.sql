-- Per decision date, under one reward spec: matured rollouts, mean and std of reward_usd (USD per $1), and the
-- share of invalid completions. Parameters: $reward_spec, $computed_at (one run's stamp; NULL = every run).
SELECT
    decision_date,
    count(*)                             AS matured,
    avg(reward_usd)                      AS mean_reward_usd,
    stddev_samp(reward_usd)              AS std_reward_usd,
    avg(IF(valid, 0.0, 1.0))             AS invalid_rate
FROM rewards
WHERE reward_spec = $reward_spec
  AND ($computed_at IS NULL OR computed_at = CAST($computed_at AS TIMESTAMPTZ))
GROUP BY decision_date
ORDER BY decision_date
