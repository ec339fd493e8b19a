-- The teachers' weights behind a checkpoint (issue 21): for every teachers' setting whose groups the checkpoint's
-- lineage trained on ($groups: registry.lineage_groups), the weight of each teacher per decision date up to the last
-- such group's date (the report's "teacher weights over time" plot). No rows: it trained on its own groups.
WITH used AS (
    SELECT settings, max(decision_date) AS last_date
    FROM teacher_groups
    WHERE list_contains($groups, group_id)
    GROUP BY settings
)
SELECT w.decision_date, w.teacher, w.weight, w.forced, w.settings
FROM teacher_weights AS w JOIN used AS u ON u.settings = w.settings AND w.decision_date <= u.last_date
ORDER BY w.settings, w.decision_date, w.teacher;
