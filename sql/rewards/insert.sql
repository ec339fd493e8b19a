-- Store the rewards of matured pending decisions (the temp view `reward_rows` is sql/rewards.sql over
-- sql/rewards/pending.sql and pending_markets.sql; pending.sql already leaves out every rollout rewarded under this
-- spec: the anti-join makes a re-run change nothing, and compute_rewards has checked that no rollout_id repeats).
-- A plain append: `rewards` has no index to maintain (see sql/migrations/004_rewards.sql).
-- It reads the temp view `judged_rows`: reward_rows with their judge_label. Under a spec with a judge
-- (compute_rewards judges the pending rollouts first) only the judged decisions, and shaped_reward_usd = reward_usd +
-- reward_judge_shift_usd * label; without one, reward_rows as they are (no join: the rows keep their order, hence
-- the advantages' sums theirs), judge_label NULL and shaped_reward_usd = reward_usd.
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
    CASE WHEN judge_label IS NULL THEN reward_usd
         ELSE reward_usd + getvariable('reward_judge_shift_usd') * judge_label END AS shaped_reward_usd,
    getvariable('reward_computed_at')   AS computed_at
FROM judged_rows
