-- The pairwise and listwise states among $state_ids (VARCHAR[]) as decisions for sql/rewards.sql to price (the
-- relation `decision_rows` of sql/rewards/flat_decisions.sql): one per state, in prompt order (a pair: long A and
-- short B; a basket: the ranking A > B > C ...), so that the priced row's return_a and return_b (pairwise) or
-- leg_returns (listwise, in prompt order) are the state's outcome over its reward's own window, on the reward
-- calendar (sql/rewards/calendar.sql), and exit_date is when that window ends. Used by the loop's greedy accuracy and
-- its held-out check (hitchhiker.loop.outcomes); a state the rewards SQL leaves out has not matured (its exit day is
-- not in prices yet) and is counted as unpriced there.
SELECT
    state_id AS decision_id,
    decision_date,
    mode,
    tickers[1] AS ticker_a,
    tickers[2] AS ticker_b,
    IF(mode = 'pairwise', 'A', array_to_string(list_transform(range(len(tickers)), lambda i: chr(CAST(65 + i AS INTEGER))), '>')) AS action,
    CAST(NULL AS DOUBLE) AS proportion,
    CAST(NULL AS DOUBLE) AS position,
    true AS valid,
    history_days,
    tickers
FROM states
WHERE list_contains($state_ids, state_id) AND mode IN ('pairwise', 'listwise')
ORDER BY state_id;
