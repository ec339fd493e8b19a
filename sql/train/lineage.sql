-- Every group that trained a checkpoint: its own groups_used and those of all its ancestors. Parameter: $checkpoint_id.
WITH RECURSIVE chain(checkpoint_id, parent_id, groups_used) AS (
    SELECT checkpoint_id, parent_id, groups_used FROM checkpoints WHERE checkpoint_id = $checkpoint_id
    UNION ALL
    SELECT c.checkpoint_id, c.parent_id, c.groups_used
    FROM checkpoints AS c JOIN chain ON c.checkpoint_id = chain.parent_id
)
SELECT checkpoint_id, unnest(groups_used) AS group_id FROM chain;
