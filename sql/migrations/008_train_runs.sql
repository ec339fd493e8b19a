-- Training runs the orchestrator started: a training batch on shared storage and the run URL where the (possibly
-- remote) trainer commits its checkpoints. The orchestrator registers the committed checkpoints of these runs in
-- `checkpoints` after the run returns, or on its next daily run when it was down meanwhile (hitchhiker/registry.py).
CREATE TABLE IF NOT EXISTS train_runs (
    run_url     VARCHAR     PRIMARY KEY,   -- folder or object-storage prefix of the run's checkpoints
    batch_url   VARCHAR     NOT NULL,      -- the committed training batch (MANIFEST.json: parent, base model, config, groups)
    batch_id    VARCHAR     NOT NULL,      -- hash of the batch's content and config
    algorithm   VARCHAR     NOT NULL,      -- grpo | dpo
    parent_id   VARCHAR,                   -- the checkpoint the run continues (NULL: the base model)
    started_at  TIMESTAMPTZ NOT NULL
);
