-- Market data: daily prices, dated news, and feed validators for conditional GET.
CREATE TABLE IF NOT EXISTS prices (
    ticker      VARCHAR     NOT NULL,
    date        DATE        NOT NULL,            -- trading day (exchange local date)
    open        DOUBLE,                          -- raw (as traded) prices, USD; NULL where the vendor lacks them
    high        DOUBLE,
    low         DOUBLE,
    close       DOUBLE      NOT NULL,
    adj_close   DOUBLE,                          -- close adjusted for splits and dividends (NULL when the source has none)
    volume      BIGINT,
    flags       VARCHAR,                         -- data-quality notes, e.g. 'missing_ohlc', 'close_outside_range'
    source      VARCHAR     NOT NULL,            -- 'yfinance', 'csv:<file>'
    ingested_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (ticker, date)
);

CREATE TABLE IF NOT EXISTS news (
    news_id      VARCHAR     PRIMARY KEY,        -- stable hash of guid/link (or title+date for CSV rows)
    ticker       VARCHAR,                        -- NULL for market-wide news
    published_at TIMESTAMPTZ NOT NULL,           -- UTC
    title        VARCHAR     NOT NULL,
    summary      VARCHAR,
    link         VARCHAR,
    source       VARCHAR     NOT NULL,
    feed_url     VARCHAR,
    ingested_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS feeds (
    feed_url        VARCHAR PRIMARY KEY,
    etag            VARCHAR,
    last_modified   VARCHAR,
    last_status     INTEGER,
    last_fetched_at TIMESTAMPTZ
);
