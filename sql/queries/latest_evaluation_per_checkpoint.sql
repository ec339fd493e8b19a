-- The latest evaluation run of each candidate (a checkpoint, or the base model), with every subject of that run
-- (the candidate, the base model, the rule baselines) side by side: they decided on the same held-out states and
-- were paid by the same reward spec, so the rows compare. CIs are 95 % block-bootstrap intervals over dates.
--   hitchhiker sql --db hitchhiker-demo/hitchhiker.duckdb @sql/queries/latest_evaluation_per_checkpoint.sql
WITH latest AS (
    SELECT candidate, arg_max(run_id, created_at) AS run_id
    FROM evaluations
    GROUP BY candidate
)
SELECT
    e.candidate,
    e.subject,
    e.subject_kind,
    e.window_start,
    e.window_end,
    e.n_states,
    round(e.accuracy, 4)                               AS accuracy,
    e.metrics->>'$.accuracy_ci'                        AS accuracy_ci,
    round(e.mean_reward_usd, 6)                        AS mean_reward_usd,
    e.metrics->>'$.mean_reward_usd_ci'                 AS mean_reward_usd_ci,
    round(e.sharpe, 2)                                 AS sharpe,
    e.metrics->>'$.valid_rate'                         AS valid_rate,
    e.created_at,
    e.report_path
FROM evaluations AS e
JOIN latest USING (candidate, run_id)
ORDER BY e.created_at DESC, e.candidate,
         CASE e.subject_kind WHEN 'checkpoint' THEN 0 WHEN 'base' THEN 1 ELSE 2 END, e.mean_reward_usd DESC;
