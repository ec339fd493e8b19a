-- Invalid-format rate per policy version: how often the sampled completions broke the answer contract
-- (hitchhiker/contract.py), per checkpoint ('base:<model>' = the untrained model), with the checkpoint's
-- training step and parent from `checkpoints`, and the most common reason.
--   hitchhiker sql --db hitchhiker-demo/hitchhiker.duckdb @sql/queries/invalid_rate_by_policy_version.sql
SELECT
    r.policy_version,
    c.parent_id,
    c.step,
    count(*)                                           AS rollouts,
    count(*) FILTER (WHERE NOT r.valid)                AS invalid,
    round(avg((NOT r.valid)::INT), 4)                  AS invalid_rate,
    mode(r.invalid_reason) FILTER (WHERE NOT r.valid)  AS top_reason,
    min(r.created_at)                                  AS first_sampled_at
FROM replay AS r
LEFT JOIN checkpoints AS c ON c.checkpoint_id = r.policy_version
GROUP BY ALL
ORDER BY first_sampled_at;
