-- The rollouts a judge still owes a label: every rollout of `replay` without a row in `judgements` for the judge's
-- versioned name ($1), with what the judge reads (the completion, and its state's prompt, features and tickers).
SELECT
    r.rollout_id,
    r.decision_date,
    r.mode,
    r.completion,
    s.messages,
    s.features,
    s.tickers
FROM replay AS r
JOIN states AS s USING (state_id)
ANTI JOIN (SELECT rollout_id FROM judgements WHERE judge = $1) AS done USING (rollout_id)
ORDER BY r.rollout_id
