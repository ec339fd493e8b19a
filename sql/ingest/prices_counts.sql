-- Per ticker: what the batch would do to the store. `rows` > `days` means the batch repeats a (ticker, date).
-- A row is 'updated' when any stored value differs (a correction replaces the old row).
SELECT s.ticker,
    count(*) AS rows,
    count(DISTINCT s.date) AS days,
    count(*) FILTER (WHERE p.ticker IS NULL) AS inserted,
    count(*) FILTER (WHERE p.ticker IS NOT NULL AND (p.open, p.high, p.low, p.close, p.adj_close, p.volume)
                     IS DISTINCT FROM (s.open, s.high, s.low, s.close, s.adj_close, s.volume)) AS updated,
    count(*) FILTER (WHERE p.ticker IS NOT NULL AND (p.open, p.high, p.low, p.close, p.adj_close, p.volume)
                     IS NOT DISTINCT FROM (s.open, s.high, s.low, s.close, s.adj_close, s.volume)) AS unchanged,
    count(*) FILTER (WHERE s.flags IS NOT NULL) AS flagged
FROM price_batch s LEFT JOIN prices p USING (ticker, date)
GROUP BY s.ticker
ORDER BY s.ticker;
