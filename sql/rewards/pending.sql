-- The decisions the reward stage still owes under one reward spec: every rollout of the replay buffer joined to
-- its state (tickers[1] is Stock A, tickers[2] Stock B), minus those that already have a row in `rewards` for
-- getvariable('reward_spec'). The relation sql/rewards.sql reads as `decisions`, plus the columns `rewards` keeps.
SELECT
    r.rollout_id       AS decision_id,
    r.decision_date,
    r.mode,
    s.tickers[1]       AS ticker_a,
    s.tickers[2]       AS ticker_b,
    r.action,
    r.proportion,
    r.position,
    r.valid,
    s.history_days,
    r.state_id,
    r.group_id,
    r.policy_version
FROM replay AS r
JOIN states AS s USING (state_id)
ANTI JOIN (SELECT rollout_id FROM rewards WHERE reward_spec = getvariable('reward_spec')) AS done
    ON done.rollout_id = r.rollout_id
