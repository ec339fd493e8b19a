-- Why a market has no reward: for each market of the relation `unpriced_markets(market_key, decision_date, ticker_a,
-- ticker_b)` (ticker_b NULL: one stock) that sql/rewards.sql left out, 'error' (it will never be priced, whatever
-- prices arrive later) or 'not_matured' (its exit day is not in `prices` yet), and the reason in words. Callers give
-- only markets without a reward: one that has one would read as 'not_matured'. Reads the variables reward_entry,
-- reward_horizon_days and reward_max_entry_gap_days (hitchhiker.rewards.set_spec_variables) and the reward calendar
-- (sql/rewards/calendar.sql), whose rules these are:
--   - T is after the last date in `prices`: not matured (T's prices may still come);
--   - T is a date on which nothing in `prices` traded (a weekend, a holiday, before the data): 'no trading on T';
--   - a leg has no price on T but has later ones (halted, not listed yet): 'no price on T for <ticker>'; a leg whose
--     prices end before T is not matured (its prices may not be ingested yet, or it is gone: nothing tells which);
--   - 'next_open' and the first trading day of both legs after T is more than reward_max_entry_gap_days calendar
--     days after T: 'entry ... is N days after T';
--   - otherwise not matured: the h-th common trading day after T is not in prices yet.
WITH
unpriced_input AS MATERIALIZED (
    SELECT market_key, CAST(decision_date AS DATE) AS decision_date, ticker_a, coalesce(ticker_b, ticker_a) AS ticker_b,
           1 AS horizon_days
    FROM unpriced_markets
    WHERE tickers IS NULL
),
-- The first trading day of both legs after T, however far (the calendar without a gap, horizon 1).
unpriced_first AS (
    SELECT market_key, entry_date AS first_day
    FROM reward_calendar('unpriced_input', 'next_open', calendar_max_entry_gap_days := NULL)
),
-- Each leg's last price date.
unpriced_last AS MATERIALIZED (
    SELECT ticker, max(date) AS last_date
    FROM prices
    SEMI JOIN (SELECT ticker_a AS ticker FROM unpriced_input UNION SELECT ticker_b FROM unpriced_input) USING (ticker)
    GROUP BY ticker
),
unpriced_checks AS (
    SELECT
        m.market_key,
        m.decision_date,
        m.decision_date > (SELECT max(date) FROM prices) AS after_data,
        open_day.date IS NOT NULL AS market_open,
        -- legs without a price on T, and those of them with later prices (so T's will never come)
        nullif(concat_ws(', ', IF(pa.date IS NULL, m.ticker_a, NULL),
                               IF(pb.date IS NULL AND m.ticker_b <> m.ticker_a, m.ticker_b, NULL)), '') AS missing_on_t,
        nullif(concat_ws(', ', IF(pa.date IS NULL AND la.last_date > m.decision_date, m.ticker_a, NULL),
                               IF(pb.date IS NULL AND m.ticker_b <> m.ticker_a AND lb.last_date > m.decision_date,
                                  m.ticker_b, NULL)), '') AS missing_for_good,
        f.first_day
    FROM unpriced_input AS m
    LEFT JOIN (SELECT DISTINCT date FROM prices) AS open_day ON open_day.date = m.decision_date
    LEFT JOIN prices AS pa ON pa.ticker = m.ticker_a AND pa.date = m.decision_date
    LEFT JOIN prices AS pb ON pb.ticker = m.ticker_b AND pb.date = m.decision_date
    LEFT JOIN unpriced_last AS la ON la.ticker = m.ticker_a
    LEFT JOIN unpriced_last AS lb ON lb.ticker = m.ticker_b
    LEFT JOIN unpriced_first AS f USING (market_key)
    UNION ALL
    -- listwise baskets (tickers: the K legs): the same checks over every leg; the first day all K legs traded after T
    SELECT
        b.market_key,
        any_value(b.decision_date),
        any_value(b.decision_date) > (SELECT max(date) FROM prices),
        any_value(b.decision_date) IN (SELECT DISTINCT date FROM prices),
        nullif(string_agg(IF(pt.date IS NULL, b.ticker, NULL), ', ' ORDER BY b.leg), ''),
        nullif(string_agg(IF(pt.date IS NULL AND l.last_date > b.decision_date, b.ticker, NULL), ', ' ORDER BY b.leg), ''),
        any_value(c.first_day)
    FROM (SELECT u.market_key, CAST(u.decision_date AS DATE) AS decision_date, k.leg, u.tickers[k.leg] AS ticker
          FROM unpriced_markets AS u, unnest(range(1, len(u.tickers) + 1)) AS k(leg)
          WHERE u.tickers IS NOT NULL) AS b
    LEFT JOIN prices AS pt ON pt.ticker = b.ticker AND pt.date = b.decision_date
    LEFT JOIN (SELECT ticker, max(date) AS last_date FROM prices GROUP BY ticker) AS l ON l.ticker = b.ticker
    LEFT JOIN (
        SELECT market_key, min(date) AS first_day
        FROM (SELECT u.market_key, p.date
              FROM unpriced_markets AS u, unnest(u.tickers) AS t(ticker)
              JOIN prices AS p ON p.ticker = t.ticker AND p.date > CAST(u.decision_date AS DATE)
              WHERE u.tickers IS NOT NULL
              GROUP BY u.market_key, p.date
              HAVING count(*) = any_value(len(u.tickers)))
        GROUP BY market_key
    ) AS c ON c.market_key = b.market_key
    GROUP BY b.market_key
),
unpriced_reasons AS (
    SELECT
        market_key,
        after_data,
        missing_on_t,
        CASE
            WHEN after_data THEN NULL
            WHEN NOT market_open
                THEN format('no trading on {} (no prices in the store on that date)', decision_date)
            WHEN missing_for_good IS NOT NULL
                THEN format('no price on {} for {}', decision_date, missing_for_good)
            WHEN missing_on_t IS NOT NULL THEN NULL
            WHEN getvariable('reward_entry') = 'next_open'
                 AND first_day > decision_date + CAST(getvariable('reward_max_entry_gap_days') AS INTEGER)
                THEN format('entry {} (the first trading day of both legs after T) is {} days after T, more than '
                            'max_entry_gap_days={}', first_day, first_day - decision_date,
                            getvariable('reward_max_entry_gap_days'))
        END AS error
    FROM unpriced_checks
)
SELECT
    market_key,
    IF(error IS NULL, 'not_matured', 'error') AS status,
    CASE
        WHEN error IS NOT NULL THEN error
        WHEN after_data THEN 'not matured: no prices on or after T in the store yet'
        WHEN missing_on_t IS NOT NULL THEN format('not matured: no price for {} on or after T in the store yet',
                                                  missing_on_t)
        ELSE format('not matured: the exit day, trading day {} after T, is not in prices yet',
                    getvariable('reward_horizon_days'))
    END AS reason
FROM unpriced_reasons
