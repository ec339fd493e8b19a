-- Anonymization you can check: which tickers of a state had known company names when it was built, and where
-- each recorded name came from.
-- names_known: parallel to `tickers`; false where no name of that company was recorded, so its headlines may name
-- it (only symbols were scrubbed). NULL on states built before this migration: unknown, counted as not anonymized.
ALTER TABLE states ADD COLUMN names_known BOOLEAN[];
ALTER TABLE company_names ADD COLUMN source VARCHAR;          -- 'yahoo', 'csv:<file>', 'sec:<file>', 'manual'
ALTER TABLE company_names ADD COLUMN ingested_at TIMESTAMPTZ;
