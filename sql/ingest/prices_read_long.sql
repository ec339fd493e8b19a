-- CSV files in the plain long format: ticker,date,open,high,low,close,adj_close,volume.
INSERT INTO price_staging
SELECT *, price_problem(ticker, date, open, high, low, close, adj_close, volume), price_flags(open, high, low, close)
FROM (
    SELECT upper(trim(ticker)) AS ticker, date, open, high, low, close, adj_close, volume, filename
    FROM read_csv(
        $files,
        columns = {'ticker': 'VARCHAR', 'date': 'DATE', 'open': 'DOUBLE', 'high': 'DOUBLE', 'low': 'DOUBLE',
                   'close': 'DOUBLE', 'adj_close': 'DOUBLE', 'volume': 'DOUBLE'},
        header = true, auto_detect = false, delim = ',', quote = '"', escape = '"', dateformat = '%Y-%m-%d',
        filename = true /*REJECTS*/
    )
);
