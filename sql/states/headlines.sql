-- The newest $max_headlines headlines per (decision_date, ticker) published at or before that date's
-- decision time and within $news_lookback_days of it: nothing published after the cutoff can appear.
-- Inputs: views `state_dates(decision_date, decision_time)` and `state_tickers(ticker)`.
SELECT d.decision_date, n.ticker, n.published_at, n.title, n.news_id
FROM state_dates d
JOIN news n
  ON n.published_at <= d.decision_time
 AND n.published_at > d.decision_time - to_days($news_lookback_days)
JOIN state_tickers t ON t.ticker = n.ticker
QUALIFY row_number() OVER (
    PARTITION BY d.decision_date, n.ticker ORDER BY n.published_at DESC, n.news_id
) <= $max_headlines
ORDER BY d.decision_date, n.ticker, n.published_at DESC, n.news_id;
