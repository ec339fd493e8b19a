-- Listwise states (issue 20): `mode` may be 'listwise'. DuckDB cannot drop a CHECK constraint, so the table is
-- rebuilt with the same columns (and names_known from 009) and the rows copied over.
CREATE TABLE states_v10 (
    state_id        VARCHAR     PRIMARY KEY,
    decision_date   DATE        NOT NULL,
    decision_time   TIMESTAMPTZ NOT NULL,
    mode            VARCHAR     NOT NULL CHECK (mode IN ('pairwise', 'elementwise', 'listwise')),
    style           VARCHAR     NOT NULL CHECK (style IN ('full', 'trend')),
    tickers         VARCHAR[]   NOT NULL,        -- prompt order: [A, B], [ticker], or [A, B, C, ...] for listwise
    pair            VARCHAR     NOT NULL,        -- sorted tickers joined by '-' (pairwise, listwise), or the ticker
    action_format   VARCHAR     NOT NULL,        -- 'choice' | 'proportion'; 'discrete' | 'numeric'; 'ranking'
    horizon_days    INTEGER     NOT NULL,
    history_days    INTEGER     NOT NULL,
    messages        JSON        NOT NULL,
    features        JSON        NOT NULL,
    anonymized      BOOLEAN     NOT NULL,
    placeholders    JSON,
    prompt_tokens   INTEGER     NOT NULL,
    builder_version VARCHAR     NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    names_known     BOOLEAN[]
);
INSERT INTO states_v10 BY NAME SELECT * FROM states;
DROP TABLE states;
ALTER TABLE states_v10 RENAME TO states;
