-- The replay buffer over its Hive-partitioned Parquet files: {root}/decision_date=YYYY-MM-DD/pair=AAA-BBB/<group_id>.parquet.
-- The pair is percent-escaped in its folder name (hitchhiker.replay.escape_partition: pair=EURUSD%3DX-XOM) and DuckDB's
-- Hive reader decodes it, so `pair` reads back the pair as stored in `states`.
-- decision_date and pair come from the folder names, so a filter on either prunes files before any is opened
-- (EXPLAIN ANALYZE shows "Scanning Files: k/n"). The glob is expanded at query time: files written by other
-- workers after this view was created are seen. Temp files (".<name>.tmp-<pid>") do not match the glob.
-- Columns and types are those of sql/migrations/003_replay.sql.
CREATE OR REPLACE VIEW replay AS
SELECT
    CAST(rollout_id AS VARCHAR)         AS rollout_id,
    CAST(state_id AS VARCHAR)           AS state_id,
    CAST(group_id AS VARCHAR)           AS group_id,
    CAST(decision_date AS DATE)         AS decision_date,
    CAST(pair AS VARCHAR)               AS pair,
    CAST(mode AS VARCHAR)               AS mode,
    CAST(policy_version AS VARCHAR)     AS policy_version,
    CAST(sample_index AS INTEGER)       AS sample_index,
    CAST(temperature AS DOUBLE)         AS temperature,
    CAST(top_p AS DOUBLE)               AS top_p,
    CAST(prompt_ids AS INTEGER[])       AS prompt_ids,
    CAST(completion AS VARCHAR)         AS completion,
    CAST(completion_ids AS INTEGER[])   AS completion_ids,
    CAST(token_logprobs AS DOUBLE[])    AS token_logprobs,
    CAST(logprob_sum AS DOUBLE)         AS logprob_sum,
    CAST(action AS VARCHAR)             AS action,
    CAST(proportion AS DOUBLE)          AS proportion,
    CAST(position AS DOUBLE)            AS position,
    CAST(advisory_text AS VARCHAR)      AS advisory_text,
    CAST(valid AS BOOLEAN)              AS valid,
    CAST(invalid_reason AS VARCHAR)     AS invalid_reason,
    CAST(created_at AS TIMESTAMPTZ)     AS created_at
FROM read_parquet('{glob}', hive_partitioning = true, hive_types = {'decision_date': DATE, 'pair': VARCHAR});
