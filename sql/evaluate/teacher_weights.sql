-- The teachers' weights behind a checkpoint (issue 21): for every teachers' setting whose groups a checkpoint of the
-- lineage trained on, the weight of each teacher per decision date up to the last such group's date (the report's
-- "teacher weights over time" plot). Parameter: $checkpoint_id. No rows: the lineage trained on its own groups.
WITH RECURSIVE chain(checkpoint_id, parent_id, groups_used) AS (
    SELECT checkpoint_id, parent_id, groups_used FROM checkpoints WHERE checkpoint_id = $checkpoint_id
    UNION ALL
    SELECT c.checkpoint_id, c.parent_id, c.groups_used
    FROM checkpoints AS c JOIN chain ON c.checkpoint_id = chain.parent_id
),
trained AS (SELECT DISTINCT unnest(groups_used) AS group_id FROM chain),
used AS (
    SELECT g.settings, max(g.decision_date) AS last_date
    FROM teacher_groups AS g JOIN trained AS t ON t.group_id = g.group_id
    GROUP BY g.settings
)
SELECT w.decision_date, w.teacher, w.weight, w.forced, w.settings
FROM teacher_weights AS w JOIN used AS u ON u.settings = w.settings AND w.decision_date <= u.last_date
ORDER BY w.settings, w.decision_date, w.teacher;
