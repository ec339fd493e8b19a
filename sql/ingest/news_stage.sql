-- One batch of news items (Arrow table news_rows), one row per news_id: an item repeated inside the batch
-- (the same guid twice in a feed, the same headline twice in a file) is kept once and counted.
CREATE OR REPLACE TEMP TABLE news_staging AS
SELECT news_id,
    arg_min(ticker, published_at) AS ticker, min(published_at) AS published_at,
    arg_min(title, published_at) AS title, arg_min(summary, published_at) AS summary,
    arg_min(link, published_at) AS link, any_value(source) AS source, any_value(feed_url) AS feed_url,
    count(*) - 1 AS repeats
FROM news_rows
GROUP BY news_id;
