-- Mean reward_usd of the groups each checkpoint of a lineage trained on, oldest first: the "reward per training
-- iteration" curve. Parameters: $checkpoint_id, $reward_spec.
WITH RECURSIVE chain(checkpoint_id, parent_id, groups_used, depth) AS (
    SELECT checkpoint_id, parent_id, groups_used, 0 FROM checkpoints WHERE checkpoint_id = $checkpoint_id
    UNION ALL
    SELECT c.checkpoint_id, c.parent_id, c.groups_used, chain.depth + 1
    FROM checkpoints AS c JOIN chain ON c.checkpoint_id = chain.parent_id
),
trained AS (SELECT checkpoint_id, depth, unnest(groups_used) AS group_id FROM chain)
SELECT t.checkpoint_id, max(t.depth) AS depth, avg(w.reward_usd) AS mean_reward_usd
FROM trained AS t
JOIN replay AS r ON r.group_id = t.group_id
JOIN rewards AS w ON w.rollout_id = r.rollout_id AND w.reward_spec = $reward_spec
GROUP BY t.checkpoint_id
ORDER BY depth DESC;
