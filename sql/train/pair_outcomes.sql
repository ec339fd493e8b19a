-- Realized returns of both stocks of pairwise states over the state's horizon, entry at the first trading day's
-- adjusted open after the decision date, exit at the horizon_days-th trading day's adjusted close (the reward
-- stage's default 'next_open' entry). Used by the loop's greedy accuracy. Parameter: $state_ids (VARCHAR[]).
-- NULL returns: the horizon has not passed yet (the state is not matured).
WITH s AS (
    SELECT state_id, decision_date, horizon_days, tickers[1] AS ticker_a, tickers[2] AS ticker_b
    FROM states
    WHERE list_contains($state_ids, state_id) AND mode = 'pairwise'
),
legs AS (
    SELECT state_id, 'A' AS leg, ticker_a AS ticker, decision_date, horizon_days FROM s
    UNION ALL
    SELECT state_id, 'B' AS leg, ticker_b AS ticker, decision_date, horizon_days FROM s
),
days AS (
    SELECT
        l.state_id, l.leg, l.horizon_days,
        -- adjusted like the close; sources without adj_close (the sp500_5yr files) count as unadjusted, as in
        -- sql/rewards.sql
        coalesce(p.open, p.close) * coalesce(p.adj_close / p.close, 1.0) AS adj_open,
        coalesce(p.adj_close, p.close) AS adj_close,
        row_number() OVER (PARTITION BY l.state_id, l.leg ORDER BY p.date) AS k
    FROM legs AS l
    JOIN prices AS p
      ON p.ticker = l.ticker
     AND p.date > l.decision_date
     AND p.date <= l.decision_date + to_days(7 * l.horizon_days + 14)  -- bounds the join: enough calendar days
),
returns AS (
    SELECT
        state_id, leg,
        CASE WHEN max(k) >= any_value(horizon_days)
             THEN max(adj_close) FILTER (WHERE k = horizon_days) / max(adj_open) FILTER (WHERE k = 1) - 1 END AS return_usd
    FROM days
    WHERE k <= horizon_days
    GROUP BY state_id, leg
)
SELECT
    s.state_id,
    max(r.return_usd) FILTER (WHERE r.leg = 'A') AS return_a,
    max(r.return_usd) FILTER (WHERE r.leg = 'B') AS return_b
FROM s LEFT JOIN returns AS r USING (state_id)
GROUP BY s.state_id;
