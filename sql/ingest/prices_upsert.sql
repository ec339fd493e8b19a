-- Write new and corrected rows; a correction replaces the old row whole (values, flags, source, ingested_at).
-- Unchanged rows are left alone, so re-running a batch changes nothing.
INSERT INTO prices (ticker, date, open, high, low, close, adj_close, volume, flags, source, ingested_at)
SELECT ticker, date, open, high, low, close, adj_close, volume, flags,
    CASE WHEN origin = 'yfinance' THEN 'yfinance' ELSE 'csv:' || parse_filename(origin) END,
    now()
FROM price_batch
ON CONFLICT (ticker, date) DO UPDATE SET
    open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close,
    adj_close = excluded.adj_close, volume = excluded.volume, flags = excluded.flags,
    source = excluded.source, ingested_at = excluded.ingested_at
WHERE (prices.open, prices.high, prices.low, prices.close, prices.adj_close, prices.volume)
      IS DISTINCT FROM (excluded.open, excluded.high, excluded.low, excluded.close, excluded.adj_close, excluded.volume);
