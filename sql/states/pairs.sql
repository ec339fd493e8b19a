-- Pairs of a decision date: a sample without replacement of at most $max_pairs_per_date unordered pairs
-- from the tickers that have a state on that date (view `state_eligible(decision_date, ticker)`), and the A/B
-- order of each. Both draws are md5 hashes of (seed, date, pair), so they are deterministic, independent of
-- any other date or of later data, and the order is a fair coin per state (position bias cannot be learned).
WITH candidates AS (
    SELECT
        a.decision_date,
        a.ticker AS low,                              -- low < high: each unordered pair once
        b.ticker AS high
    FROM state_eligible a
    JOIN state_eligible b ON b.decision_date = a.decision_date AND a.ticker < b.ticker
),
drawn AS (
    SELECT decision_date, low, high
    FROM candidates
    QUALIFY row_number() OVER (
        PARTITION BY decision_date
        ORDER BY md5_number(concat_ws('|', $seed, 'draw', decision_date, low, high)), low, high
    ) <= $max_pairs_per_date
),
ordered AS (
    SELECT *, md5_number(concat_ws('|', $seed, 'order', decision_date, low, high)) % 2 = 0 AS low_is_a
    FROM drawn
)
SELECT
    decision_date,
    CASE WHEN low_is_a THEN low ELSE high END AS ticker_a,
    CASE WHEN low_is_a THEN high ELSE low END AS ticker_b,
    low || '-' || high AS pair
FROM ordered
ORDER BY decision_date, pair;
