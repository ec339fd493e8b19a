-- A yfinance download in long format (an Arrow table registered as yf_bars).
INSERT INTO price_staging
SELECT *, price_problem(ticker, date, open, high, low, close, adj_close, volume), price_flags(open, high, low, close)
FROM (
    SELECT upper(trim(ticker)) AS ticker, date, open, high, low, close, adj_close, CAST(volume AS DOUBLE) AS volume, 'yfinance' AS origin
    FROM yf_bars
);
