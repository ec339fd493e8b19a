-- Only when the batch repeats a (ticker, date): collapse exact repeats; `variants` > 1 marks a conflict
-- (same key, different values) that the caller reports as an error.
CREATE OR REPLACE TEMP TABLE price_dedup AS
SELECT ticker, date,
    any_value(open) AS open, any_value(high) AS high, any_value(low) AS low, any_value(close) AS close,
    any_value(adj_close) AS adj_close, any_value(volume) AS volume, any_value(origin) AS origin,
    any_value(problem) AS problem, any_value(flags) AS flags,
    count(*) - 1 AS repeats,
    count(DISTINCT (open, high, low, close, adj_close, volume)) AS variants
FROM price_staging
WHERE problem IS NULL
GROUP BY ticker, date;
