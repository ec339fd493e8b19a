-- The replay buffer per Hive partition (decision_date=.../pair=.../<group_id>.parquet): rollouts, groups and
-- policy versions in each folder, and when it was written. A filter on decision_date or pair reads only the
-- matching folders (EXPLAIN ANALYZE shows the files scanned).
--   hitchhiker sql --db hitchhiker-demo/hitchhiker.duckdb @sql/queries/replay_rows_per_partition.sql
SELECT
    decision_date,
    pair,
    count(*)                        AS rollouts,
    count(DISTINCT group_id)        AS groups,
    count(DISTINCT policy_version)  AS policy_versions,
    round(avg(valid::INT), 3)       AS valid_rate,
    max(created_at)                 AS last_written_at
FROM replay
GROUP BY decision_date, pair
ORDER BY decision_date, pair;
