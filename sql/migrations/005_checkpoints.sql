-- The checkpoint registry: every trained policy, its lineage, and exactly which replay groups trained it.
-- policy_version in the replay buffer is a checkpoint_id (or 'base:<model>' for an untrained model).
CREATE TABLE IF NOT EXISTS checkpoints (
    checkpoint_id VARCHAR     PRIMARY KEY,    -- '<run_id>-step<NNNNNN>', also written in the folder's hitchhiker_checkpoint.json
    parent_id     VARCHAR,                    -- the checkpoint (or 'base:<model>') this one continued from
    run_id        VARCHAR     NOT NULL,       -- one training run: an ordered plan of groups, cut into optimizer steps
    base_model    VARCHAR     NOT NULL,       -- the model the adapter sits on (or that full weights started from)
    path          VARCHAR     NOT NULL,       -- folder: weights or adapter, tokenizer, optimizer/scheduler/RNG/trainer state
    algorithm     VARCHAR     NOT NULL CHECK (algorithm IN ('grpo', 'dpo')),
    finetune      VARCHAR     NOT NULL CHECK (finetune IN ('lora', 'full')),
    step          INTEGER     NOT NULL,       -- optimizer steps taken in this run up to this checkpoint
    reward_spec   VARCHAR,                    -- the reward definition whose advantages were trained on
    created_at    TIMESTAMPTZ NOT NULL,
    train_metrics JSON,                       -- loss, reward mean/std, KL, clip fraction, valid rate ... of the steps since the parent
    groups_used   VARCHAR[]   NOT NULL        -- replay group_ids consumed since parent_id (walk parents for the full lineage)
);
