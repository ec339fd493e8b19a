-- The Beta head's training rows: every sampled position of the given replay groups with its behaviour
-- log-density (logprob_sum: log Beta(alpha, beta) density of position / 2), its reward under one spec and its
-- group-relative advantage (the `advantages` view, sql/advantages.sql: advantage_drgrpo = reward - the mean reward
-- of the state's group, USD per $1, as the LLM trainer's Dr. GRPO reads it). Only matured rollouts have a reward, so
-- only they appear. Parameters: $group_ids (VARCHAR[]), $reward_spec.
SELECT r.group_id, r.state_id, r.rollout_id, r.position, r.logprob_sum AS behaviour_logprob, w.reward_usd,
       a.advantage_drgrpo AS advantage_usd
FROM replay AS r
JOIN rewards AS w ON w.rollout_id = r.rollout_id AND w.reward_spec = $reward_spec
JOIN advantages AS a ON a.rollout_id = r.rollout_id AND a.reward_spec = $reward_spec
WHERE r.group_id IN (SELECT unnest($group_ids::VARCHAR[])) AND r.valid
ORDER BY r.decision_date, r.group_id, r.sample_index;
