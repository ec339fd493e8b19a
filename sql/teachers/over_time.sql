-- The teachers' weights over time (issue 21): per decision date and teacher, the weight its share of each group was
-- drawn with, the score behind it and whether the stale rule forced it. $1: a settings name (NULL: all settings).
-- (not in sql/queries/: those run on the demo store, which has no teachers)
SELECT decision_date, teacher, weight, score, forced, settings
FROM teacher_weights
WHERE $1 IS NULL OR settings = $1
ORDER BY settings, decision_date, teacher;
