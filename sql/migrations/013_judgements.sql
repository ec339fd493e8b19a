-- A judge's reward shift (issue 21): judgements of rollouts, and the shaped reward beside the market's dollars.
-- One row per (rollout, judge): a judge's name carries its version (hitchhiker.judge), so a changed judge is a new
-- name and old rows stay as they were, as reward specs do. Written only by hitchhiker.judge.judge_rollouts, which
-- inserts the rollouts without a row for that judge, in one transaction.
CREATE TABLE IF NOT EXISTS judgements (
    rollout_id    VARCHAR     NOT NULL,          -- replay.rollout_id
    judge         VARCHAR     NOT NULL,          -- versioned name, e.g. 'grounding-v1' or 'lm:<model>@<sha256[:12]>'
    label         TINYINT     NOT NULL CHECK (label IN (-1, 0, 1)),  -- -1 rejected, 0 neutral, +1 accepted
    reason        VARCHAR     NOT NULL,          -- why, in words (the unsupported claims; the model's answer)
    decision_date DATE        NOT NULL,          -- the rollout's, for queries by date
    judged_at     TIMESTAMPTZ NOT NULL,          -- one stamp per judging run
    PRIMARY KEY (rollout_id, judge)
);
-- reward_usd stays what the market paid; shaped_reward_usd = reward_usd + judge_shift_usd * label under a spec with
-- a judge (else equal to reward_usd) is what the advantages are computed from. judge_label: the label used (NULL
-- without a judge). Rows stored before this migration had no judge: their shaped reward is their reward.
ALTER TABLE rewards ADD COLUMN judge_label TINYINT;
ALTER TABLE rewards ADD COLUMN shaped_reward_usd DOUBLE;
UPDATE rewards SET shaped_reward_usd = reward_usd;
-- The view `advantages` moves to shaped_reward_usd in migration 014 (with its grouping by group_id).
