-- Listwise rewards (issue 20): a basket's legs, in prompt order (A first), beside the A/B columns, which hold the
-- basket's first two legs. NULL for pairwise and elementwise rows.
ALTER TABLE rewards ADD COLUMN tickers VARCHAR[];       -- the basket, prompt order
ALTER TABLE rewards ADD COLUMN weights DOUBLE[];        -- signed dollars per $1 in each leg (top_bottom, rank_weighted)
ALTER TABLE rewards ADD COLUMN leg_returns DOUBLE[];    -- each leg's adjusted return entry -> exit, per $1
