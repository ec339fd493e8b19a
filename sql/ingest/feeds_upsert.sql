-- A feed's validators for the next conditional GET. A 304 keeps the stored ETag/Last-Modified when the
-- server does not repeat them.
INSERT INTO feeds (feed_url, etag, last_modified, last_status, last_fetched_at)
VALUES ($feed_url, $etag, $last_modified, $status, now())
ON CONFLICT (feed_url) DO UPDATE SET
    etag = coalesce(excluded.etag, feeds.etag),
    last_modified = coalesce(excluded.last_modified, feeds.last_modified),
    last_status = excluded.last_status,
    last_fetched_at = excluded.last_fetched_at;
