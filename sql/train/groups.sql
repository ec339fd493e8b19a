-- Rollouts of the groups that are ready to train on: every rollout joined to its reward and advantage under one
-- reward spec (only matured groups have them). Parameters: $reward_spec, $policy_version (NULL = any),
-- $start_date / $end_date (NULL = open). Ordered so that a group's rollouts are contiguous. Rollouts without tokens
-- (the Beta position head's sampled positions) are not language-model groups and are left out.
SELECT
    r.group_id,
    r.state_id,
    r.decision_date,
    r.policy_version,
    r.rollout_id,
    r.sample_index,
    r.temperature,
    r.top_p,
    r.prompt_ids,
    r.completion_ids,
    r.token_logprobs,
    r.valid,
    a.reward_usd,
    a.advantage,
    a.advantage_drgrpo,
    a.advantage_self,
    a.zero_variance
FROM replay AS r
JOIN advantages AS a USING (rollout_id)
WHERE a.reward_spec = $reward_spec
  AND len(r.prompt_ids) > 0
  AND ($policy_version IS NULL OR r.policy_version = $policy_version)
  AND ($start_date IS NULL OR r.decision_date >= $start_date)
  AND ($end_date IS NULL OR r.decision_date <= $end_date)
ORDER BY r.decision_date, r.group_id, r.sample_index;
