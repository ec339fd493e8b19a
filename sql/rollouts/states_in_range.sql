-- The states of the decision dates in [$start, $end] (optionally one mode), in the order they are sampled:
-- date, then pair, so a run that stops part-way has finished whole dates first.
SELECT state_id, decision_date, pair
FROM states
WHERE decision_date BETWEEN $start AND $end
  AND ($mode IS NULL OR mode = $mode)
ORDER BY decision_date, pair, state_id;
