-- The promotion gate's log and the current champion (the checkpoint the daily flow samples with): each decision
-- with the candidate's lead over the champion (or the base model) on the validation window and its 95 % interval.
-- A candidate is promoted only on at least 20 scored dates, with every shown headline anonymized, when the lead
-- reaches the margin, a one-sided t-test over dates rejects 'no better' at 2.5 % and the bootstrap interval over
-- dates lies above zero (hitchhiker/gate.py); `reason` says which condition decided.
--   hitchhiker sql --db hitchhiker-demo/hitchhiker.duckdb @sql/queries/promotions.sql
SELECT
    p.decided_at,
    p.candidate,
    coalesce(p.champion_before, '(base model)')  AS against,
    p.promoted,
    p.metric,
    p.margin,
    round(p.difference, 6)                       AS difference,
    round(p.difference_ci_low, 6)                AS ci_low,
    round(p.difference_ci_high, 6)               AS ci_high,
    p.candidate = (SELECT candidate FROM promotions WHERE promoted ORDER BY decided_at DESC LIMIT 1) AS is_champion,
    p.reason
FROM promotions AS p
ORDER BY p.decided_at;
