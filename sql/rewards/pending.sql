-- The decisions the reward stage still owes under one reward spec: every rollout of the replay buffer that has no
-- row in `rewards` for getvariable('reward_spec'). The relation sql/rewards.sql reads as `decisions` (its market is
-- its state: market_key = state_id), plus the columns `rewards` keeps.
-- getvariable('reward_open_dates'): NULL reads every decision date; a list of dates (sql/rewards/open_dates.sql)
-- reads only those, and the Parquet files of the other dates are not opened (the filter is on the partition column).
SELECT
    r.rollout_id       AS decision_id,
    r.state_id         AS market_key,
    r.mode,
    r.action,
    r.proportion,
    r.position,
    r.valid,
    r.state_id,
    r.group_id,
    r.policy_version
FROM replay AS r
ANTI JOIN (SELECT rollout_id FROM rewards WHERE reward_spec = getvariable('reward_spec')) AS done
    ON done.rollout_id = r.rollout_id
WHERE getvariable('reward_open_dates') IS NULL OR list_contains(getvariable('reward_open_dates'), r.decision_date)
