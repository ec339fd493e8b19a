-- Every replay group that trained a checkpoint (its own groups_used and all its ancestors'), with the group's
-- decision date and horizon when the replay and states still hold it. Parameter: $checkpoint_id.
-- Used by the walk-forward check: a NULL decision_date means a trained group the replay no longer has.
WITH RECURSIVE chain(checkpoint_id, parent_id, groups_used) AS (
    SELECT checkpoint_id, parent_id, groups_used FROM checkpoints WHERE checkpoint_id = $checkpoint_id
    UNION ALL
    SELECT c.checkpoint_id, c.parent_id, c.groups_used
    FROM checkpoints AS c JOIN chain ON c.checkpoint_id = chain.parent_id
),
used AS (SELECT DISTINCT unnest(groups_used) AS group_id FROM chain),
seen AS (
    SELECT DISTINCT r.group_id, r.decision_date, r.state_id
    FROM replay AS r WHERE r.group_id IN (SELECT group_id FROM used)
)
SELECT u.group_id, s.decision_date, st.horizon_days
FROM used AS u
LEFT JOIN seen AS s USING (group_id)
LEFT JOIN states AS st ON st.state_id = s.state_id;
