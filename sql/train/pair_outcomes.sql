-- The pairwise states among $state_ids (VARCHAR[]) as decisions for sql/rewards.sql to price (the relation
-- `decision_rows` of sql/rewards/flat_decisions.sql): one per state, long A and short B, so that the priced row's
-- return_a and return_b are the state's outcome over its reward's own window, on the reward calendar
-- (sql/rewards/calendar.sql). Used by the loop's greedy accuracy (hitchhiker.loop.pair_outcomes); a state the rewards
-- SQL leaves out has not matured (its exit day is not in prices yet) and is counted as unpriced there.
SELECT
    state_id AS decision_id,
    decision_date,
    mode,
    tickers[1] AS ticker_a,
    tickers[2] AS ticker_b,
    'A' AS action,
    CAST(NULL AS DOUBLE) AS proportion,
    CAST(NULL AS DOUBLE) AS position,
    true AS valid,
    history_days
FROM states
WHERE list_contains($state_ids, state_id) AND mode = 'pairwise'
ORDER BY state_id;
