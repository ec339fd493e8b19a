-- Evaluation results: one row per (run, subject); the decisions behind them; and the promotion gate's log.
-- A run evaluates a checkpoint and every baseline on the same states of one window, so rows of a run compare.
CREATE TABLE IF NOT EXISTS evaluations (
    evaluation_id   VARCHAR     PRIMARY KEY,     -- sha256 of run_id + subject
    run_id          VARCHAR     NOT NULL,        -- sha256 of the window, mode, reward spec, state set and candidate
    subject         VARCHAR     NOT NULL,        -- a checkpoint_id, 'base:<model>' or 'baseline:<name>'
    subject_kind    VARCHAR     NOT NULL CHECK (subject_kind IN ('checkpoint', 'base', 'baseline')),
    candidate       VARCHAR     NOT NULL,        -- the checkpoint (or base model) the run was started for
    window_start    DATE        NOT NULL,        -- first decision date evaluated
    window_end      DATE        NOT NULL,        -- last decision date evaluated
    mode            VARCHAR     NOT NULL,
    reward_spec     VARCHAR     NOT NULL,        -- rewards.RewardSpec name the reward_usd come from
    n_states        INTEGER     NOT NULL,
    accuracy        DOUBLE,                      -- pairwise: picked the better stock (ties half); NULL elementwise
    mean_reward_usd DOUBLE,                      -- per decision, USD per $1
    sharpe          DOUBLE,                      -- annualized (sqrt 252) over daily mean reward
    metrics         JSON        NOT NULL,        -- every metric, with block-bootstrap CIs (*_ci: [low, high])
    grounding       JSON,                        -- unsupported-claim rate, extrapolation bias
    report_path     VARCHAR,                     -- the run folder's report.md
    created_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS evaluation_decisions (
    evaluation_id   VARCHAR     NOT NULL,
    state_id        VARCHAR     NOT NULL,
    decision_date   DATE        NOT NULL,
    pair            VARCHAR     NOT NULL,
    action          VARCHAR,                     -- 'A'/'B' or 'buy'/'hold'/'sell'/number; NULL when invalid
    proportion      DOUBLE,
    position        DOUBLE,
    valid           BOOLEAN     NOT NULL,
    reward_usd      DOUBLE,                      -- from the rewards stage's SQL, same spec for every subject
    picked_better   DOUBLE,                      -- 1 / 0 / 0.5 (tie); NULL elementwise or invalid
    completion      VARCHAR,                     -- the model's text (NULL for rule baselines)
    claims          INTEGER,                     -- grounding: checkable claims in the advisory text
    unsupported     INTEGER,                     -- grounding: of which the prompt does not support
    PRIMARY KEY (evaluation_id, state_id)
);

-- Every decision of the promotion gate; the champion is the candidate of the latest promoted row.
CREATE TABLE IF NOT EXISTS promotions (
    decided_at        TIMESTAMPTZ NOT NULL,
    candidate         VARCHAR     NOT NULL,
    champion_before   VARCHAR,                   -- NULL: no champion yet (the base model stood in)
    promoted          BOOLEAN     NOT NULL,
    metric            VARCHAR     NOT NULL,      -- 'mean_reward_usd' | 'accuracy'
    margin            DOUBLE      NOT NULL,      -- required lead of the candidate, in the metric's unit
    difference        DOUBLE,                    -- candidate - champion on the validation window
    difference_ci_low DOUBLE,
    difference_ci_high DOUBLE,
    run_id            VARCHAR,
    reason            VARCHAR     NOT NULL,
    PRIMARY KEY (decided_at, candidate)
);
