-- CSV files in the sp500_5yr format: date,open,high,low,close,volume,Name (split-adjusted, no adjusted close).
-- The dialect is fixed (no sniffing) and the date format strict, so a malformed line is a reject, not a guess;
-- The read stops at the first bad line. The diagnostic re-read of a failed batch replaces /*REJECTS*/ with
-- store_rejects options, so that DuckDB records every bad line with its file and line (price_read_errors/scans).
INSERT INTO price_staging
SELECT *, price_problem(ticker, date, open, high, low, close, adj_close, volume), price_flags(open, high, low, close)
FROM (
    SELECT upper(trim(Name)) AS ticker, date, open, high, low, close, NULL::DOUBLE AS adj_close, volume, filename
    FROM read_csv(
        $files,
        columns = {'date': 'DATE', 'open': 'DOUBLE', 'high': 'DOUBLE', 'low': 'DOUBLE', 'close': 'DOUBLE',
                   'volume': 'DOUBLE', 'Name': 'VARCHAR'},
        header = true, auto_detect = false, delim = ',', quote = '"', escape = '"', dateformat = '%Y-%m-%d',
        filename = true /*REJECTS*/
    )
);
