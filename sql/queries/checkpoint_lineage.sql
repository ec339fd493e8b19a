-- Every checkpoint with its ancestry: the chain of parents back to the base model, the groups it trained on since
-- its parent, the decision dates of those groups, and the training metrics of its last steps.
--   hitchhiker sql --db hitchhiker-demo/hitchhiker.duckdb @sql/queries/checkpoint_lineage.sql
WITH RECURSIVE chain(checkpoint_id, ancestor_id, depth) AS (
    SELECT checkpoint_id, parent_id, 1 FROM checkpoints
    UNION ALL
    SELECT chain.checkpoint_id, c.parent_id, chain.depth + 1
    FROM chain JOIN checkpoints AS c ON c.checkpoint_id = chain.ancestor_id
),
dates AS (
    SELECT c.checkpoint_id, min(r.decision_date) AS first_date, max(r.decision_date) AS last_date
    FROM checkpoints AS c, unnest(c.groups_used) AS g(group_id)
    JOIN (SELECT DISTINCT group_id, decision_date FROM replay) AS r ON r.group_id = g.group_id
    GROUP BY c.checkpoint_id
)
SELECT
    c.checkpoint_id,
    c.parent_id,
    (SELECT count(*) FROM chain WHERE chain.checkpoint_id = c.checkpoint_id AND chain.ancestor_id IS NOT NULL) AS ancestors,
    c.algorithm,
    c.finetune,
    c.step,
    len(c.groups_used)                                   AS groups_used,
    d.first_date                                         AS trained_from,
    d.last_date                                          AS trained_to,
    round((c.train_metrics->>'$.reward_mean')::DOUBLE, 6) AS train_reward_mean_usd,
    round((c.train_metrics->>'$.valid_rate')::DOUBLE, 3)  AS train_valid_rate,
    c.created_at,
    c.path
FROM checkpoints AS c
LEFT JOIN dates AS d USING (checkpoint_id)
ORDER BY c.created_at;
