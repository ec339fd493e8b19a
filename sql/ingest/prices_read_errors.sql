-- Lines DuckDB could not read (wrong column count, unparsable date or number), with file and line.
SELECT s.file_path, e.line, e.error_type, e.column_name, e.csv_line, e.error_message
FROM price_read_errors e JOIN price_read_scans s USING (scan_id, file_id)
ORDER BY s.file_path, e.line;
