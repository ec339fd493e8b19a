-- Teachers (issue 21): the view `advantages` gains advantage_self, each reward against the mean of its group's own
-- 'self' rows (the student's samples in a group split across teachers; the group mean where a group has none, so
-- every older column and every group sampled by one policy is unchanged). Identical to sql/advantages.sql (tested).
CREATE OR REPLACE VIEW advantages AS
SELECT
    r.rollout_id,
    r.group_id,
    r.state_id,
    r.policy_version,
    r.reward_spec,
    r.decision_date,
    r.reward_usd,
    r.shaped_reward_usd,
    (r.shaped_reward_usd - g.group_mean_usd) / (g.group_std_usd + 1e-4) AS advantage,
    r.shaped_reward_usd - g.group_mean_usd AS advantage_drgrpo,
    (r.shaped_reward_usd - coalesce(g.self_mean_usd, g.group_mean_usd)) / (g.group_std_usd + 1e-4) AS advantage_self,
    g.group_size,
    g.zero_variance,
    g.group_mean_usd,
    g.group_std_usd
FROM rewards AS r
JOIN (
    SELECT
        group_id,
        reward_spec,
        avg(shaped_reward_usd) AS group_mean_usd,
        avg(shaped_reward_usd) FILTER (WHERE policy_version = 'self') AS self_mean_usd,
        coalesce(stddev_samp(shaped_reward_usd), 0.0) AS group_std_usd,
        count(*) AS group_size,
        min(shaped_reward_usd) = max(shaped_reward_usd) AS zero_variance
    FROM rewards
    GROUP BY group_id, reward_spec
) AS g USING (group_id, reward_spec);
