-- What the batch would do to `news`: new items, corrected items (title, summary, link, date or ticker
-- differ), unchanged items, and repeats collapsed inside the batch.
SELECT
    count(*) FILTER (WHERE n.news_id IS NULL) AS inserted,
    count(*) FILTER (WHERE n.news_id IS NOT NULL AND (n.ticker, n.published_at, n.title, n.summary, n.link)
                     IS DISTINCT FROM (s.ticker, s.published_at, s.title, s.summary, s.link)) AS updated,
    count(*) FILTER (WHERE n.news_id IS NOT NULL AND (n.ticker, n.published_at, n.title, n.summary, n.link)
                     IS NOT DISTINCT FROM (s.ticker, s.published_at, s.title, s.summary, s.link)) AS unchanged,
    coalesce(sum(s.repeats), 0)::BIGINT AS duplicates
FROM news_staging s LEFT JOIN news n USING (news_id);
