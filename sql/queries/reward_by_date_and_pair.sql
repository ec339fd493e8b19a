-- Mean reward per decision date and pair: what the rollouts of each state earned, USD per $1 (0.01 = 1 %),
-- per reward spec and policy version. Reads the table `rewards` (one row per rollout and spec) and the view
-- `replay` (for the pair partition key).
--   hitchhiker sql --db hitchhiker-demo/hitchhiker.duckdb @sql/queries/reward_by_date_and_pair.sql
SELECT
    w.decision_date,
    r.pair,
    w.policy_version,
    count(*)                         AS rollouts,
    round(avg(w.reward_usd), 6)      AS mean_reward_usd,
    round(min(w.reward_usd), 6)      AS min_reward_usd,
    round(max(w.reward_usd), 6)      AS max_reward_usd,
    round(avg(w.valid::INT), 3)      AS valid_rate,
    w.reward_spec
FROM rewards AS w
JOIN replay AS r USING (rollout_id)
GROUP BY ALL
ORDER BY w.decision_date, r.pair, w.policy_version;
