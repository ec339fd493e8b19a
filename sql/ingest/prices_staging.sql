-- One batch of price rows before it is stored: every source (CSV files, yfinance frames) lands here first.
-- `origin` locates a row for error messages (the file it came from, or 'yfinance'). `problem` and `flags` are
-- computed as rows arrive (macros below), so validation costs no extra pass over the batch:
-- a row with a problem is rejected (reported, not stored); flags mark real vendor quirks that are kept.
CREATE OR REPLACE TEMP TABLE price_staging (
    ticker    VARCHAR,
    date      DATE,
    open      DOUBLE,
    high      DOUBLE,
    low       DOUBLE,
    close     DOUBLE,
    adj_close DOUBLE,
    volume    DOUBLE,  -- as read: a fractional volume is rejected here, not rounded (stored as BIGINT)
    origin    VARCHAR,
    problem   VARCHAR,
    flags     VARCHAR
);

CREATE OR REPLACE TEMP MACRO price_problem(ticker, date, open, high, low, close, adj_close, volume) AS
    CASE
        WHEN ticker IS NULL OR ticker = '' THEN 'missing ticker'
        -- Yahoo-style symbols: BRK.B, BF-B, ^GSPC, EURUSD=X (prices.TICKER_PATTERN, the rule for news and names too)
        WHEN NOT regexp_full_match(ticker, '[A-Z0-9^][A-Z0-9.\-=^]{0,19}') THEN 'unknown ticker ' || ticker
        WHEN date IS NULL THEN 'missing date'
        WHEN date < DATE '1900-01-01' OR date > current_date + 1 THEN 'implausible date ' || date
        WHEN close IS NULL THEN 'missing close'
        WHEN NOT isfinite(close) THEN 'close is NaN or infinite'
        WHEN close <= 0 THEN 'close ' || close || ' is not positive'
        WHEN NOT (isfinite(open) AND isfinite(high) AND isfinite(low)) THEN 'open/high/low is NaN or infinite'
        WHEN least(open, high, low) <= 0 THEN 'open/high/low is not positive'
        WHEN NOT isfinite(adj_close) OR adj_close <= 0 THEN 'adj_close is NaN, infinite or not positive'
        WHEN volume < 0 THEN 'negative volume'
        WHEN NOT isfinite(volume) OR volume <> trunc(volume) THEN 'volume ' || volume || ' is not a whole number of shares'
        WHEN volume > 1e15 THEN 'implausible volume ' || volume
    END;

CREATE OR REPLACE TEMP MACRO price_flags(open, high, low, close) AS
    nullif(concat_ws(',',
        CASE WHEN open IS NULL OR high IS NULL OR low IS NULL THEN 'missing_ohlc' END,
        CASE WHEN low > high THEN 'low_above_high' END,
        CASE WHEN close < low OR close > high THEN 'close_outside_range' END
    ), '');
