-- The latest day a reward of the last training date can exit: for a decision on $last_train_date by every pair of
-- stocks ($pairwise) or every stock (NOT $pairwise) listed by then, its exit day on the reward calendar
-- (sql/rewards/calendar.sql) with $horizon_days; the maximum, and how many of those markets have matured. Held-out
-- dates must come after it (hitchhiker.loop.check_held_out_dates). A pair's exit is monotone in the decision date, so
-- the last training date bounds every earlier one; a market that never matures (a stock gone) trains nothing.
WITH
listed AS (SELECT ticker FROM prices GROUP BY ticker HAVING min(date) <= $last_train_date),
training_markets AS (
    SELECT
        a.ticker || coalesce('|' || b.ticker, '') AS market_key,
        CAST($last_train_date AS DATE) AS decision_date,
        a.ticker AS ticker_a,
        b.ticker AS ticker_b,
        CAST($horizon_days AS INTEGER) AS horizon_days
    FROM listed AS a
    LEFT JOIN listed AS b ON $pairwise AND b.ticker > a.ticker
    WHERE NOT $pairwise OR b.ticker IS NOT NULL
)
SELECT max(exit_date) AS last_exit, count(*) AS matured
FROM reward_calendar('training_markets', 'next_open');
