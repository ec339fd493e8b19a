-- Rewards: what $1.00 put to work as a rollout decided earned over the horizon, one row per (rollout, reward spec).
-- Written by hitchhiker.rewards.compute_rewards from sql/rewards.sql, only once the exit price exists (maturity);
-- a changed formula or parameter is a new reward_spec, so old rows stay as they were. Every *_usd column is in US
-- dollars per $1 of capital the decision put to work (0.01 = one cent = 1 %).
-- (rollout_id, reward_spec) is unique, kept by the only writer rather than by an index: compute_rewards inserts, in
-- one transaction, only rollouts without a row under the spec and refuses a batch that repeats a rollout_id. A
-- PRIMARY KEY here made that insert about 5x slower (an ART index over 1M keys that each end in the ~100-character
-- spec name, measured with bench/rewards.py) for a check the stage already makes.
CREATE TABLE IF NOT EXISTS rewards (
    rollout_id      VARCHAR     NOT NULL,        -- replay.rollout_id
    reward_spec     VARCHAR     NOT NULL,        -- RewardSpec.reward_spec: formula version + parameters + SQL hash
    state_id        VARCHAR     NOT NULL,        -- copied from replay so that `advantages` needs only this table
    group_id        VARCHAR     NOT NULL,
    policy_version  VARCHAR     NOT NULL,
    decision_date   DATE        NOT NULL,
    mode            VARCHAR     NOT NULL,        -- 'pairwise' | 'elementwise'
    valid           BOOLEAN     NOT NULL,        -- false: unparseable completion, reward = -invalid_penalty_usd
    ticker_a        VARCHAR     NOT NULL,        -- states.tickers[1] (Stock A), or the elementwise ticker
    ticker_b        VARCHAR,                     -- states.tickers[2] (Stock B); NULL for elementwise
    entry_date      DATE        NOT NULL,        -- first trading day after decision_date (entry 'next_open') or decision_date
    exit_date       DATE        NOT NULL,        -- horizon_days-th trading day after decision_date (its close)
    weight_a        DOUBLE      NOT NULL,        -- signed dollars in A per $1 (long_short: +1/-1; allocation: w; position p)
    weight_b        DOUBLE      NOT NULL,        -- signed dollars in B per $1 (0 for elementwise)
    return_a        DOUBLE      NOT NULL,        -- A's adjusted return entry -> exit, per $1
    return_b        DOUBLE,                      -- B's; NULL for elementwise
    cost_usd        DOUBLE      NOT NULL,        -- cost_bps/1e4 per $1 of each leg traded
    risk_usd        DOUBLE      NOT NULL,        -- risk_lambda * |weight| * daily volatility, summed over legs
    reward_usd      DOUBLE      NOT NULL,        -- the reward, USD per $1
    flags           VARCHAR,                     -- e.g. 'open_imputed' (a missing open replaced by that day's close)
    computed_at     TIMESTAMPTZ NOT NULL         -- one stamp per compute run
);

-- What each reward_spec name means, so that a row can be traced to its parameters and to the SQL that made it.
CREATE TABLE IF NOT EXISTS reward_specs (
    reward_spec VARCHAR     PRIMARY KEY,
    params      JSON        NOT NULL,            -- the RewardSpec fields
    sql_sha256  VARCHAR     NOT NULL,            -- hash of sql/rewards.sql without comments and blank space
    created_at  TIMESTAMPTZ NOT NULL
);

-- The view `advantages`, identical to sql/advantages.sql (tested), so that it exists before the first compute run;
-- compute_rewards re-creates it from that file.
-- Group-relative advantages for GRPO, one row per reward: a group is the rollouts of one state sampled by one
-- policy version (replay.group_id), scored under one reward spec. Join to `replay` on rollout_id.
--   advantage         = (reward - group mean) / (group std + 1e-4)   GRPO; std with Bessel's correction and the
--                       1e-4 of TRL's GRPOTrainer (trl/trainer/grpo_trainer.py), so both give the same numbers
--   advantage_drgrpo  = reward - group mean                          Dr. GRPO (no std scaling), USD per $1
--   zero_variance     = every reward of the group is equal: no learning signal (also true for a group of one)
CREATE OR REPLACE VIEW advantages AS
SELECT
    r.rollout_id,
    r.group_id,
    r.state_id,
    r.policy_version,
    r.reward_spec,
    r.decision_date,
    r.reward_usd,
    (r.reward_usd - g.group_mean_usd) / (g.group_std_usd + 1e-4) AS advantage,
    r.reward_usd - g.group_mean_usd AS advantage_drgrpo,
    g.group_size,
    g.zero_variance,
    g.group_mean_usd,
    g.group_std_usd
FROM rewards AS r
JOIN (
    SELECT
        state_id,
        policy_version,
        reward_spec,
        avg(reward_usd) AS group_mean_usd,
        coalesce(stddev_samp(reward_usd), 0.0) AS group_std_usd,
        count(*) AS group_size,
        min(reward_usd) = max(reward_usd) AS zero_variance
    FROM rewards
    GROUP BY state_id, policy_version, reward_spec
) AS g USING (state_id, policy_version, reward_spec);
