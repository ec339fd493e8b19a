-- Group-relative advantages for GRPO, one row per reward: a group is replay.group_id (the rollouts of one state
-- sampled in one round: by one policy version, or split across teachers, issue 21), scored under one reward spec.
-- Join to `replay` on rollout_id. (Until migration 014 the view grouped by (state_id, policy_version): a group_id
-- was one such pair, so every group stored before teachers has the same members and the same advantages.) The reward they
-- are relative to is shaped_reward_usd: the market's reward_usd, shifted by a judge's label where the spec has a
-- judge (sql/migrations/013_judgements.sql), else reward_usd itself.
--   advantage         = (shaped reward - group mean) / (group std + 1e-4)   GRPO; std with Bessel's correction and the
--                       1e-4 of TRL's GRPOTrainer (trl/trainer/grpo_trainer.py), so both give the same numbers
--   advantage_drgrpo  = shaped reward - mean                        Dr. GRPO (no std scaling), USD per $1
--   advantage_self    = (shaped reward - mean of the student's own rows) / (group std + 1e-4): in a group split across
--                       teachers (issue 21), the baseline is the student's value, estimated by the rows it sampled itself
--                       (policy_version 'self', the loop's name for them); the mixture's mean is the teachers' value, and
--                       with a strong teacher it leaves its right answers ~0 advantage. A group without 'self' rows
--                       (every group sampled by one policy) has the group mean: advantage_self = advantage there.
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
