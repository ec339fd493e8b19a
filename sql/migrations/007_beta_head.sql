-- The Beta(alpha, beta) position head (hitchhiker/beta/head.py) joins the checkpoint registry, and the frozen-LM
-- embeddings it may read are cached per state.
--
-- checkpoints.algorithm gains 'beta-head'. DuckDB cannot alter a CHECK constraint in place, so the table is copied
-- aside, re-created with the wider constraint (otherwise identical to 005) and filled back, in this migration's one
-- transaction: either every row is back under the new constraint or nothing changed.
CREATE TEMP TABLE checkpoints_before_007 AS SELECT * FROM checkpoints;
DROP TABLE checkpoints;
CREATE TABLE checkpoints (
    checkpoint_id VARCHAR     PRIMARY KEY,    -- '<run_id>-step<NNNNNN>', also written in the folder's hitchhiker_checkpoint.json
    parent_id     VARCHAR,                    -- the checkpoint (or 'base:<model>') this one continued from
    run_id        VARCHAR     NOT NULL,       -- one training run: an ordered plan of groups, cut into optimizer steps
    base_model    VARCHAR     NOT NULL,       -- the model the adapter sits on (or that full weights started from)
    path          VARCHAR     NOT NULL,       -- folder: weights or adapter, tokenizer, optimizer/scheduler/RNG/trainer state
    algorithm     VARCHAR     NOT NULL CHECK (algorithm IN ('grpo', 'dpo', 'beta-head')),
    finetune      VARCHAR     NOT NULL CHECK (finetune IN ('lora', 'full')),
    step          INTEGER     NOT NULL,       -- optimizer steps taken in this run up to this checkpoint
    reward_spec   VARCHAR,                    -- the reward definition whose advantages were trained on
    created_at    TIMESTAMPTZ NOT NULL,
    train_metrics JSON,                       -- loss, reward mean/std, KL, clip fraction, valid rate ... of the steps since the parent
    groups_used   VARCHAR[]   NOT NULL        -- replay group_ids consumed since parent_id (walk parents for the full lineage)
);
INSERT INTO checkpoints BY NAME SELECT * FROM checkpoints_before_007;
DROP TABLE checkpoints_before_007;

-- Mean-pooled last hidden state of a causal LM over a state's chat-templated prompt: the optional "frozen LM"
-- inputs of the Beta head. Computed once per (state, model) and reused; a state's prompt never changes (its id
-- hashes the content), so a cached row never goes stale.
CREATE TABLE IF NOT EXISTS state_embeddings (
    state_id    VARCHAR     NOT NULL,        -- states.state_id
    model       VARCHAR     NOT NULL,        -- hub id / path, or the default small model's versioned name
    dim         INTEGER     NOT NULL,        -- len(embedding): the model's hidden size
    embedding   FLOAT[]     NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (state_id, model)
);
