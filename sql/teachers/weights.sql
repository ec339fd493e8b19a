-- Teacher weights for one decision date T = $decision_date (issue 21), from what was known before T:
--   per teacher and earlier decision date d, the mean advantage of its rollouts whose reward had matured
--   (rewards.exit_date < T) under $reward_spec, in groups that mixed teachers (how its samples did against the
--   others'; a group of one teacher compares it with itself: advantage 0 by construction, no information);
--   score  = their exponential moving average from 0 (the score of a teacher without rewards, weight 1/N):
--            sum over dates of a (1 - a)^age x_date, a = 1 - 0.5^(1 / $half_life_dates), age = how many of the
--            teacher's own such dates are more recent; so one date moves a score by at most a times its mean
--            advantage (no single jumps), and a teacher not drawn keeps its score (the stale rule brings it back);
--   weight = (1 - $floor) * softmax(score / $temperature) + $floor / N, never 0;
--   stale  = the teacher has no rollout in `replay` within $stale_days calendar days before T while another one
--            does: its weight is raised to $stale_share and the others' shares scaled down to fill 1 ("anti-stale").
-- $teachers: the teachers' policy versions. The relation `replay` (the buffer) and the tables rewards/advantages.
WITH
teachers AS (
    SELECT unnest($teachers::VARCHAR[]) AS teacher
),
known AS (
    SELECT a.group_id, a.policy_version AS teacher, a.decision_date, a.advantage
    FROM advantages AS a
    JOIN rewards AS w ON w.rollout_id = a.rollout_id AND w.reward_spec = a.reward_spec
    WHERE a.reward_spec = $reward_spec
      AND w.exit_date < $decision_date
      AND list_contains($teachers::VARCHAR[], a.policy_version)
),
daily AS (
    SELECT teacher, decision_date, avg(advantage) AS mean_advantage
    FROM known
    SEMI JOIN (SELECT group_id FROM known GROUP BY group_id HAVING count(DISTINCT teacher) > 1) USING (group_id)
    GROUP BY ALL
),
aged AS (
    SELECT *, row_number() OVER (PARTITION BY teacher ORDER BY decision_date DESC) - 1 AS age FROM daily
),
scores AS (
    SELECT teacher,
           sum(mean_advantage * (1 - pow(0.5, 1 / $half_life_dates)) * pow(0.5, age / $half_life_dates)) AS score,
           count(*) AS n_dates
    FROM aged
    GROUP BY teacher
),
sampled AS (
    SELECT policy_version AS teacher, max(decision_date) AS last_sampled
    FROM replay
    WHERE decision_date < $decision_date AND list_contains($teachers::VARCHAR[], policy_version)
    GROUP BY ALL
),
base AS (
    SELECT t.teacher, coalesce(s.score, 0.0) AS score, coalesce(s.n_dates, 0) AS n_dates, p.last_sampled,
           (p.last_sampled IS NULL OR date_diff('day', p.last_sampled, $decision_date::DATE) > $stale_days)
             AND (SELECT max(last_sampled) FROM sampled) >= $decision_date::DATE - $stale_days::INTEGER AS stale
    FROM teachers AS t
    LEFT JOIN scores AS s USING (teacher)
    LEFT JOIN sampled AS p USING (teacher)
),
centred AS (
    SELECT *, exp((score - max(score) OVER ()) / $temperature) AS e FROM base
),
soft AS (
    SELECT *, (1 - $floor) * e / sum(e) OVER () + $floor / count(*) OVER () AS mixed FROM centred
),
forced AS (
    SELECT *, stale AND mixed < $stale_share AS is_forced FROM soft
),
weighted AS (
    SELECT *,
           CASE WHEN is_forced THEN $stale_share
                ELSE mixed * (1 - sum(CASE WHEN is_forced THEN $stale_share ELSE 0 END) OVER ())
                           / nullif(sum(CASE WHEN is_forced THEN 0 ELSE mixed END) OVER (), 0)
           END AS raw_weight
    FROM forced
)
SELECT
    teacher,
    score,
    n_dates,
    raw_weight / sum(raw_weight) OVER () AS weight,  -- 1 already unless every teacher was forced
    is_forced AS forced,
    last_sampled
FROM weighted
ORDER BY teacher
