-- One group of the replay buffer read the way GRPO reads it: the state's prompt, each sampled completion with its
-- sampling temperature, its reward and its group-relative advantage. Change the WHERE clause to pick another
-- group (by default: the latest group that has rewards).
--   hitchhiker sql --db hitchhiker-demo/hitchhiker.duckdb @sql/queries/group_completions.sql
WITH chosen AS (
    SELECT group_id FROM advantages ORDER BY decision_date DESC, group_id LIMIT 1
)
SELECT
    r.decision_date,
    r.pair,
    r.sample_index,
    s.messages->>'$[-1].content'  AS prompt,
    r.completion,
    r.temperature,
    r.valid,
    round(a.reward_usd, 6)        AS reward_usd,
    round(a.advantage, 3)         AS advantage,
    r.policy_version
FROM replay AS r
JOIN chosen USING (group_id)
JOIN states AS s USING (state_id)
LEFT JOIN advantages AS a USING (rollout_id)
ORDER BY r.sample_index;
