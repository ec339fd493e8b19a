-- Teacher weights (issue 21): the share of each teacher in the groups sampled for one decision date, computed once
-- per (date, teacher, settings) from the rewards that had matured (exit before the date) and kept, so that every
-- draw of that date can be replayed. Written by hitchhiker.teachers.update_weights (sql/teachers/weights.sql).
CREATE TABLE IF NOT EXISTS teacher_weights (
    decision_date  DATE        NOT NULL,   -- the groups of this date are split with these weights
    teacher        VARCHAR     NOT NULL,   -- the teacher's policy_version (checkpoint id or 'base:<model>')
    settings       VARCHAR     NOT NULL,   -- TeachersConfig.name: teachers, reward spec, half-life, temperature, floor, stale rule
    score          DOUBLE      NOT NULL,   -- exponentially weighted mean of the teacher's mean advantage per date
    n_dates        INTEGER     NOT NULL,   -- decision dates with matured rewards of this teacher behind the score
    weight         DOUBLE      NOT NULL,   -- share of the samples: > 0, summing to 1 over the date's teachers
    forced         BOOLEAN     NOT NULL,   -- the stale rule raised it to the forced share
    last_sampled   DATE,                   -- the teacher's last decision date with a rollout before this one
    computed_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (decision_date, teacher, settings)
);
-- Teachers split one group across policy versions: the view `advantages` now groups by group_id, and (migration 013)
-- is relative to shaped_reward_usd (identical to sql/advantages.sql, tested). Old groups are unchanged: their
-- group_id was sha256(state_id, policy_version), and their shaped reward is their reward.
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
        coalesce(stddev_samp(shaped_reward_usd), 0.0) AS group_std_usd,
        count(*) AS group_size,
        min(shaped_reward_usd) = max(shaped_reward_usd) AS zero_variance
    FROM rewards
    GROUP BY group_id, reward_spec
) AS g USING (group_id, reward_spec);
-- One row per group sampled across teachers: the weights and the split it was drawn with, so that every draw can be
-- replayed (teachers.split_group(weights, group_size, seed, state_id) gives the same split).
CREATE TABLE IF NOT EXISTS teacher_groups (
    group_id       VARCHAR     PRIMARY KEY,   -- replay.group_id: rollouts.group_id(state_id, settings)
    state_id       VARCHAR     NOT NULL,
    decision_date  DATE        NOT NULL,
    settings       VARCHAR     NOT NULL,      -- TeachersConfig.name (teacher_weights.settings)
    weights        JSON        NOT NULL,      -- {teacher: weight} of the date
    split          JSON        NOT NULL,      -- {teacher: samples drawn}
    seed           INTEGER     NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL
);
