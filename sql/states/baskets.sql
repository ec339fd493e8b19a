-- Listwise baskets of a decision date: at most $max_lists_per_date distinct sets of $list_size tickers from those
-- with a state on that date (view `state_eligible(decision_date, ticker)`), and the prompt order of each.
-- Draw: for each of $attempts numbered attempts, the $list_size tickers with the smallest md5 hash of
-- (seed, 'draw', date, attempt, ticker) form a basket; a set drawn twice keeps its first attempt; the first
-- $max_lists_per_date distinct sets are kept. Order: the basket's tickers sorted by an md5 hash of
-- (seed, 'order', date, basket, ticker), a uniform shuffle. Both depend on nothing but the seed, the date and
-- that date's eligible tickers (no other date, no later data).
WITH ranked AS (
    SELECT e.decision_date, a.attempt, e.ticker,
        row_number() OVER (
            PARTITION BY e.decision_date, a.attempt
            ORDER BY md5_number(concat_ws('|', $seed, 'draw', e.decision_date, a.attempt, e.ticker)), e.ticker
        ) AS k
    FROM state_eligible e
    CROSS JOIN range($attempts) a(attempt)
),
attempts AS (
    SELECT decision_date, attempt, list(ticker ORDER BY ticker) AS members
    FROM ranked
    WHERE k <= $list_size
    GROUP BY decision_date, attempt
    HAVING count(*) = $list_size
),
distinct_sets AS (
    SELECT decision_date, members, array_to_string(members, '-') AS pair, min(attempt) AS attempt
    FROM attempts
    GROUP BY decision_date, members
),
drawn AS (
    SELECT decision_date, members, pair
    FROM distinct_sets
    QUALIFY row_number() OVER (PARTITION BY decision_date ORDER BY attempt) <= $max_lists_per_date
),
members AS (
    SELECT decision_date, pair, unnest(members) AS ticker FROM drawn
)
SELECT
    decision_date,
    list(ticker ORDER BY md5_number(concat_ws('|', $seed, 'order', decision_date, pair, ticker)), ticker) AS tickers,
    pair
FROM members
GROUP BY decision_date, pair
ORDER BY decision_date, pair;
