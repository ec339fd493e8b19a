-- ORPO (issue 21) joins the checkpoint registry: checkpoints.algorithm gains 'orpo'. DuckDB cannot alter a CHECK
-- constraint in place, so the table is copied aside, re-created with the wider constraint (otherwise identical to
-- 007) and filled back, in this migration's one transaction, as 007 did.
CREATE TEMP TABLE checkpoints_before_012 AS SELECT * FROM checkpoints;
DROP TABLE checkpoints;
CREATE TABLE checkpoints (
    checkpoint_id VARCHAR     PRIMARY KEY,    -- '<run_id>-step<NNNNNN>', also written in the folder's hitchhiker_checkpoint.json
    parent_id     VARCHAR,                    -- the checkpoint (or 'base:<model>') this one continued from
    run_id        VARCHAR     NOT NULL,       -- one training run: an ordered plan of groups, cut into optimizer steps
    base_model    VARCHAR     NOT NULL,       -- the model the adapter sits on (or that full weights started from)
    path          VARCHAR     NOT NULL,       -- folder: weights or adapter, tokenizer, optimizer/scheduler/RNG/trainer state
    algorithm     VARCHAR     NOT NULL CHECK (algorithm IN ('grpo', 'dpo', 'orpo', 'beta-head')),
    finetune      VARCHAR     NOT NULL CHECK (finetune IN ('lora', 'full')),
    step          INTEGER     NOT NULL,       -- optimizer steps taken in this run up to this checkpoint
    reward_spec   VARCHAR,                    -- the reward definition whose advantages were trained on
    created_at    TIMESTAMPTZ NOT NULL,
    train_metrics JSON,                       -- loss, reward mean/std, KL, clip fraction, valid rate ... of the steps since the parent
    groups_used   VARCHAR[]   NOT NULL        -- replay group_ids consumed since parent_id (walk parents for the full lineage)
);
INSERT INTO checkpoints BY NAME SELECT * FROM checkpoints_before_012;
DROP TABLE checkpoints_before_012;
-- train_runs.algorithm has no constraint: grpo | dpo | orpo, as the batch's meta says.
