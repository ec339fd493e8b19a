-- The states of decision date $day in $mode, and how many of them already have a group in the replay buffer from
-- any policy (the daily flow samples a day's states once).
SELECT
    count(*)                                                                                     AS states,
    count(*) FILTER (WHERE state_id IN (SELECT state_id FROM replay WHERE decision_date = $day::DATE)) AS sampled
FROM states
WHERE decision_date = $day::DATE AND mode = $mode;
