-- Matured replay groups (rewarded under $reward_spec) that no checkpoint has trained on yet: the daily flow asks the
-- GPU pool for a training run once there are enough of them. `groups_key` names this exact set of groups, so that
-- two daily runs that see the same set start one training run, not two.
SELECT
    count(DISTINCT w.group_id)                                            AS new_groups,
    min(w.decision_date)                                                  AS first_date,
    max(w.decision_date)                                                  AS last_date,
    md5(coalesce(string_agg(DISTINCT w.group_id, ',' ORDER BY w.group_id), '')) AS groups_key
FROM rewards AS w
WHERE w.reward_spec = $reward_spec
  AND w.group_id NOT IN (SELECT unnest(groups_used) FROM checkpoints);
