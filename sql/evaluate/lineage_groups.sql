-- Every replay group that trained a checkpoint (its own groups_used and all its ancestors'), with the group's
-- decision date, whether its state is known, and its reward's exit day on the reward calendar
-- (sql/rewards/calendar.sql: the state's tickers and horizon_days; NULL while the exit is not in prices).
-- Parameter: $checkpoint_id. Used by the walk-forward check (hitchhiker.evaluate.training_cutoff): a NULL
-- decision_date means a trained group the replay no longer has.
WITH RECURSIVE chain(checkpoint_id, parent_id, groups_used) AS (
    SELECT checkpoint_id, parent_id, groups_used FROM checkpoints WHERE checkpoint_id = $checkpoint_id
    UNION ALL
    SELECT c.checkpoint_id, c.parent_id, c.groups_used
    FROM checkpoints AS c JOIN chain ON c.checkpoint_id = chain.parent_id
),
used AS (SELECT DISTINCT unnest(groups_used) AS group_id FROM chain),
seen AS (
    SELECT DISTINCT r.group_id, r.decision_date, r.state_id
    FROM replay AS r WHERE r.group_id IN (SELECT group_id FROM used)
),
trained AS (
    SELECT u.group_id, s.decision_date, st.state_id, st.tickers, st.horizon_days
    FROM used AS u
    LEFT JOIN seen AS s USING (group_id)
    LEFT JOIN states AS st ON st.state_id = s.state_id
),
trained_markets AS (
    SELECT DISTINCT state_id AS market_key, decision_date, tickers[1] AS ticker_a, tickers[2] AS ticker_b, horizon_days
    FROM trained
    WHERE state_id IS NOT NULL
)
SELECT t.group_id, t.decision_date, t.state_id IS NOT NULL AS state_known, c.exit_date
FROM trained AS t
LEFT JOIN reward_calendar('trained_markets', 'next_open') AS c ON c.market_key = t.state_id;
