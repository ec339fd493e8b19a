-- Groups with zero reward variance: every rollout of the group earned the same reward, so GRPO's advantage is
-- zero for all of them and the group teaches nothing (typical when a policy always gives the same answer).
-- Per reward spec and policy version: how many such groups, their share, and the groups themselves.
-- Reads the view `advantages` (sql/advantages.sql).
--   hitchhiker sql --db hitchhiker-demo/hitchhiker.duckdb @sql/queries/zero_variance_groups.sql
WITH groups AS (
    SELECT group_id, policy_version, reward_spec, any_value(decision_date) AS decision_date,
           any_value(group_size) AS group_size, any_value(zero_variance) AS zero_variance,
           any_value(group_mean_usd) AS group_mean_usd
    FROM advantages
    GROUP BY group_id, policy_version, reward_spec
)
SELECT
    policy_version,
    count(*)                                                  AS groups,
    count(*) FILTER (WHERE zero_variance)                     AS zero_variance_groups,
    round(avg(zero_variance::INT), 4)                         AS zero_variance_share,
    list(group_id ORDER BY decision_date) FILTER (WHERE zero_variance) AS zero_variance_group_ids,
    reward_spec
FROM groups
GROUP BY policy_version, reward_spec
ORDER BY policy_version;
