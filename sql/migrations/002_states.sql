-- Point-in-time states: what the policy sees for one decision. Built after the decision date's close.
CREATE TABLE IF NOT EXISTS states (
    state_id        VARCHAR     PRIMARY KEY,     -- sha256 of builder_version + content (everything below but prompt_tokens/created_at)
    decision_date   DATE        NOT NULL,        -- trading day T
    decision_time   TIMESTAMPTZ NOT NULL,        -- cutoff: only prices with date <= T and news published_at <= this
    mode            VARCHAR     NOT NULL CHECK (mode IN ('pairwise', 'elementwise')),
    style           VARCHAR     NOT NULL CHECK (style IN ('full', 'trend')),  -- full rendering, or one trend word per stock
    tickers         VARCHAR[]   NOT NULL,        -- prompt order: [A, B] for pairwise, [ticker] for elementwise
    pair            VARCHAR     NOT NULL,        -- sorted tickers joined by '-', or the ticker: the replay partition key
    action_format   VARCHAR     NOT NULL,        -- pairwise: 'choice' | 'proportion'; elementwise: 'discrete' | 'numeric'
    horizon_days    INTEGER     NOT NULL,        -- the prompt asks about the next horizon_days trading days
    history_days    INTEGER     NOT NULL,        -- trading days of price history the state was built from
    messages        JSON        NOT NULL,        -- chat messages [{"role": ..., "content": ...}]
    features        JSON        NOT NULL,        -- the numbers shown in the prompt, per placeholder ("A", "B")
    anonymized      BOOLEAN     NOT NULL,
    placeholders    JSON,                        -- {"Stock A": "AAPL", ...}: stored, never shown to the model
    prompt_tokens   INTEGER     NOT NULL,        -- length of the chat-templated prompt in the configured tokenizer
    builder_version VARCHAR     NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL
);

-- Names a company goes by in headlines (several rows per ticker allowed), scrubbed from anonymized prompts.
CREATE TABLE IF NOT EXISTS company_names (
    ticker VARCHAR NOT NULL,
    name   VARCHAR NOT NULL,                     -- e.g. 'Agilent Technologies', 'Agilent'; matched case-insensitively
    PRIMARY KEY (ticker, name)
);
