-- Preference pairs from the replay buffer: per group, the best and the worst valid completion under one reward
-- spec, kept when their rewards differ by more than $margin_usd (USD per $1). Ties broken by sample_index so the
-- pair is deterministic. Parameters: $reward_spec, $policy_version (NULL = any), $margin_usd. Best and worst by the
-- shaped reward (the market's reward_usd plus a judge's shift where the spec has one; else reward_usd itself), as
-- the advantages are; the *_reward_usd columns report the market's dollars.
WITH scored AS (
    SELECT
        r.group_id, r.state_id, r.decision_date, r.completion, a.reward_usd, a.shaped_reward_usd,
        row_number() OVER (PARTITION BY r.group_id ORDER BY a.shaped_reward_usd DESC, r.sample_index) AS best_rank,
        row_number() OVER (PARTITION BY r.group_id ORDER BY a.shaped_reward_usd ASC, r.sample_index) AS worst_rank
    FROM replay AS r
    JOIN advantages AS a USING (rollout_id)
    WHERE a.reward_spec = $reward_spec
      AND r.valid
      AND ($policy_version IS NULL OR r.policy_version = $policy_version)
)
SELECT
    b.group_id,
    b.state_id,
    b.decision_date,
    s.messages,
    b.completion AS chosen,
    w.completion AS rejected,
    b.reward_usd AS chosen_reward_usd,
    w.reward_usd AS rejected_reward_usd
FROM scored AS b
JOIN scored AS w ON w.group_id = b.group_id AND w.worst_rank = 1
JOIN states AS s ON s.state_id = b.state_id
WHERE b.best_rank = 1
  AND b.shaped_reward_usd - w.shaped_reward_usd > $margin_usd
ORDER BY b.decision_date, b.group_id;
