-- Decision dates a candidate can be evaluated on as of $until: dates of states of $mode (and $style, NULL = any)
-- strictly after $after (the last exit date of any reward that trained the candidate or the champion) on which every
-- state's own reward had exited by $until: its exit day on the reward calendar (sql/rewards/calendar.sql: the state's
-- tickers and horizon_days) is on or before $until. The first $n, in order. Needs the table macro reward_calendar
-- (hitchhiker.rewards.ensure_calendar).
WITH window_states AS (
    SELECT state_id AS market_key, decision_date, tickers[1] AS ticker_a, tickers[2] AS ticker_b, horizon_days
    FROM states
    WHERE mode = $mode AND ($style IS NULL OR style = $style)
      AND decision_date > $after AND decision_date <= $until
)
SELECT s.decision_date
FROM window_states AS s
LEFT JOIN reward_calendar('window_states', 'next_open') AS c USING (market_key)
GROUP BY s.decision_date
HAVING bool_and(coalesce(c.exit_date <= $until, false))
ORDER BY s.decision_date
LIMIT $n;
