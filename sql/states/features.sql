-- Price features of every (decision_date, ticker) at once, point-in-time by construction: every number is
-- computed from the ticker's own rows with date <= decision_date (lag and the history join only look back),
-- so no row after T can reach a state for T.
-- Inputs: views `state_dates(decision_date)` and `state_tickers(ticker)`.
-- Parameters: $history_days (daily rows shown), $trend_days (the trend word's look-back).
-- Units: *_pct in percent, rounded as the prompt shows them (returns 2 decimals, volume changes whole percent).
-- A ticker gets a state on T only if it traded on T and has history_days (and trend_days) earlier rows.
WITH bounds AS (
    SELECT
        min(decision_date) AS first_day,
        max(decision_date) AS last_day,
        -- a calendar span that holds a full window of trading days for any ticker that trades normally
        min(decision_date) - to_days(2 * greatest($history_days, $trend_days) + 10) AS span_start
    FROM state_dates
),
full_span AS (
    -- tickers whose window before the first decision date lies inside the span: only their rows from
    -- span_start on are needed (each later window lies inside too). Others (new listings, long halts) keep
    -- their whole history, so every window is the same as over all rows.
    SELECT p.ticker
    FROM prices p
    JOIN state_tickers t ON t.ticker = p.ticker
    CROSS JOIN bounds b
    WHERE p.date BETWEEN b.span_start AND b.first_day
    GROUP BY p.ticker
    HAVING count(*) > greatest($history_days, $trend_days)
),
px AS (
    SELECT p.ticker, p.date, coalesce(p.adj_close, p.close) AS price_usd, p.volume
    FROM prices p
    JOIN state_tickers t ON t.ticker = p.ticker
    CROSS JOIN bounds b
    WHERE p.date <= b.last_day
      AND (p.date >= b.span_start OR p.ticker NOT IN (SELECT ticker FROM full_span))
),
daily AS (
    SELECT
        ticker, date, price_usd,
        row_number() OVER w AS day_index,             -- the ticker's own trading-day counter (from its first row read)
        100 * (price_usd / lag(price_usd) OVER w - 1) AS return_pct,
        -- a zero volume (halted day) has no meaningful relative change
        100 * (volume / nullif(lag(volume) OVER w, 0) - 1) AS volume_change_pct
    FROM px
    WINDOW w AS (PARTITION BY ticker ORDER BY date)
),
anchors AS (
    SELECT d.decision_date, x.ticker, x.day_index, x.price_usd
    FROM daily x
    JOIN state_dates d ON d.decision_date = x.date
    WHERE x.day_index > greatest($history_days, $trend_days)
),
windows AS (
    -- only the few rows each state needs are aggregated (cheaper than list() over a sliding window of all rows)
    SELECT
        a.decision_date,
        a.ticker,
        list(round(x.return_pct, 2) ORDER BY x.day_index) FILTER (WHERE x.day_index > a.day_index - $history_days) AS returns_pct,
        list(round(x.volume_change_pct, 0) ORDER BY x.day_index) FILTER (WHERE x.day_index > a.day_index - $history_days) AS volume_changes_pct,
        stddev_samp(x.return_pct) FILTER (WHERE x.day_index > a.day_index - $history_days) AS volatility_pct,
        100 * (any_value(a.price_usd) / any_value(x.price_usd) FILTER (WHERE x.day_index = a.day_index - $history_days) - 1) AS history_return_pct,
        100 * (any_value(a.price_usd) / any_value(x.price_usd) FILTER (WHERE x.day_index = a.day_index - $trend_days) - 1) AS trend_return_pct
    FROM anchors a
    JOIN daily x
      ON x.ticker = a.ticker
     AND x.day_index BETWEEN a.day_index - greatest($history_days, $trend_days) AND a.day_index
    GROUP BY a.decision_date, a.ticker
)
SELECT
    decision_date,
    ticker,
    returns_pct,                                      -- daily, oldest first, the decision date's own return last
    volume_changes_pct,
    round(history_return_pct, 2) AS history_return_pct,
    round(volatility_pct, 2) AS volatility_pct,       -- std of the daily returns shown, % per day
    round(trend_return_pct, 2) AS trend_return_pct,
    CASE                                              -- the trend word is the sign of the return as rounded
        WHEN round(trend_return_pct, 2) > 0 THEN 'UP'
        WHEN round(trend_return_pct, 2) < 0 THEN 'DOWN'
        ELSE 'FLAT'
    END AS trend
FROM windows
ORDER BY decision_date, ticker;
