-- The replay buffer is Parquet files beside the database (see hitchhiker/replay.py), read through the view `replay`.
-- Until the first group is written, `replay` is this empty view with the buffer's columns and types, so SQL that
-- reads it (rewards, advantages, queries) binds on a fresh store. replay.ensure_view() replaces it with the
-- Parquet-backed view (sql/replay/view.sql), which has exactly these columns (tested).
CREATE VIEW IF NOT EXISTS replay AS
SELECT
    CAST(NULL AS VARCHAR)     AS rollout_id,       -- '<group_id>-<sample_index>'
    CAST(NULL AS VARCHAR)     AS state_id,         -- states.state_id
    CAST(NULL AS VARCHAR)     AS group_id,         -- sha256(state_id, policy_version): one group per state and policy
    CAST(NULL AS DATE)        AS decision_date,    -- partition key
    CAST(NULL AS VARCHAR)     AS pair,             -- partition key: sorted tickers 'AAA-BBB', or the ticker
    CAST(NULL AS VARCHAR)     AS mode,             -- 'pairwise' | 'elementwise'
    CAST(NULL AS VARCHAR)     AS policy_version,   -- checkpoint_id, or 'base:<model>'
    CAST(NULL AS INTEGER)     AS sample_index,     -- 0 .. group_size-1
    CAST(NULL AS DOUBLE)      AS temperature,      -- the temperature this sample was drawn at
    CAST(NULL AS DOUBLE)      AS top_p,
    CAST(NULL AS INTEGER[])   AS prompt_ids,       -- chat-templated prompt tokens
    CAST(NULL AS VARCHAR)     AS completion,       -- decoded completion text (special tokens dropped)
    CAST(NULL AS INTEGER[])   AS completion_ids,   -- sampled tokens, the end token included when it was sampled
    CAST(NULL AS DOUBLE[])    AS token_logprobs,   -- log pi_old(token): log_softmax(logits / temperature), nats
    CAST(NULL AS DOUBLE)      AS logprob_sum,      -- sum of token_logprobs
    CAST(NULL AS VARCHAR)     AS action,           -- parsed: 'A'/'B', 'buy'/'hold'/'sell' or a number; NULL if none
    CAST(NULL AS DOUBLE)      AS proportion,       -- pairwise: fraction of $1 in A
    CAST(NULL AS DOUBLE)      AS position,         -- elementwise: -1/0/1 or a number in [0, 2]
    CAST(NULL AS VARCHAR)     AS advisory_text,
    CAST(NULL AS BOOLEAN)     AS valid,            -- false: unparseable output, kept (the reward stage penalizes it)
    CAST(NULL AS VARCHAR)     AS invalid_reason,
    CAST(NULL AS TIMESTAMPTZ) AS created_at
WHERE false;
