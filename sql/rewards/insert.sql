-- Store the rewards of matured pending decisions (the temp view `reward_rows` is sql/rewards.sql over
-- sql/rewards/pending.sql and pending_markets.sql; pending.sql already leaves out every rollout rewarded under this
-- spec: the anti-join makes a re-run change nothing, and compute_rewards has checked that no rollout_id repeats).
-- A plain append: `rewards` has no index to maintain (see sql/migrations/004_rewards.sql).
-- Under a spec with a judge (getvariable('reward_judge'), its versioned name), a decision is stored only with its
-- judgement (compute_rewards judges the pending rollouts first), and shaped_reward_usd = reward_usd +
-- reward_judge_shift_usd * label; without one, judge_label is NULL and shaped_reward_usd = reward_usd.
INSERT INTO rewards BY NAME
SELECT
    decision_id                         AS rollout_id,
    getvariable('reward_spec')          AS reward_spec,
    state_id,
    group_id,
    policy_version,
    decision_date,
    mode,
    valid,
    ticker_a,
    ticker_b,
    entry_date,
    exit_date,
    weight_a,
    weight_b,
    return_a,
    return_b,
    cost_usd,
    risk_usd,
    reward_usd,
    flags,
    tickers,
    weights,
    leg_returns,
    judge_label,
    reward_usd + coalesce(getvariable('reward_judge_shift_usd') * judge_label, 0.0) AS shaped_reward_usd,
    getvariable('reward_computed_at')   AS computed_at
FROM reward_rows
LEFT JOIN (SELECT rollout_id AS judged_id, label AS judge_label FROM judgements
           WHERE judge = getvariable('reward_judge')) AS j ON j.judged_id = reward_rows.decision_id
WHERE getvariable('reward_judge') IS NULL OR judge_label IS NOT NULL
