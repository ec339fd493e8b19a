-- Decision dates a candidate can be evaluated on as of $until: states of $mode (and $style, NULL = any) strictly
-- after $after (the last exit date of any reward that trained the candidate or the champion), whose own reward had
-- matured by $until (horizon_days trading days after the decision, up to $until, exist). The first $n, in order.
SELECT s.decision_date
FROM (SELECT DISTINCT decision_date, horizon_days FROM states
      WHERE mode = $mode AND ($style IS NULL OR style = $style)
        AND decision_date > $after AND decision_date <= $until) AS s
WHERE (SELECT count(DISTINCT p.date) FROM prices AS p
       WHERE p.date > s.decision_date AND p.date <= $until) >= s.horizon_days
GROUP BY s.decision_date
ORDER BY s.decision_date
LIMIT $n;
