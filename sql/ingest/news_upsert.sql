-- Insert new items and replace corrected ones; unchanged items keep their first ingested_at.
INSERT INTO news (news_id, ticker, published_at, title, summary, link, source, feed_url, ingested_at)
SELECT news_id, ticker, published_at, title, summary, link, source, feed_url, now()
FROM news_staging
ON CONFLICT (news_id) DO UPDATE SET
    ticker = excluded.ticker, published_at = excluded.published_at, title = excluded.title,
    summary = excluded.summary, link = excluded.link, source = excluded.source, feed_url = excluded.feed_url,
    ingested_at = excluded.ingested_at
WHERE (news.ticker, news.published_at, news.title, news.summary, news.link)
      IS DISTINCT FROM (excluded.ticker, excluded.published_at, excluded.title, excluded.summary, excluded.link);
