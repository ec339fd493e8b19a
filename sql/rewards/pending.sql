-- The decisions the reward stage still owes under one reward spec: every rollout of the replay buffer that has no
-- row in `rewards` for getvariable('reward_spec'). The relation sql/rewards.sql reads as `decisions` (its market is
-- its state: market_key = state_id), plus the columns `rewards` keeps.
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
