-- Dollar-normalized rewards: what $1.00 put to work as a decision said would have earned over the horizon.
-- Unit of every *_usd column and of return_*: US dollars per $1 of capital (0.01 = one cent = 1 %).
--
-- Input: a relation `decisions(decision_id, decision_date, mode, ticker_a, ticker_b, action, proportion, position,
-- valid, history_days)` (compute: sql/rewards/pending.sql, the replay joined with states; preview: a user's CSV)
-- and the table `prices`. Parameters are DuckDB variables that hitchhiker.rewards sets from a RewardSpec; to run
-- this file by hand, SET VARIABLE each of:
--   reward_horizon_days         INTEGER  sessions the position is exposed (exit = the h-th trading day after T)
--   reward_entry                VARCHAR  'next_open' (adjusted open of the first trading day after T) | 'decision_close'
--   reward_pairwise             VARCHAR  'long_short' ($1 long the chosen, $1 short the other) | 'allocation'
--   reward_cost_bps             DOUBLE   cost per leg traded, basis points of the leg's dollars
--   reward_risk_lambda          DOUBLE   risk penalty per unit of |weight| x daily volatility (0 = off)
--   reward_invalid_penalty_usd  DOUBLE   what an unparseable completion costs
-- Output: the decision's columns plus weights, entry/exit dates, returns, costs and reward_usd, one row per
-- decision whose exit price exists (matured); a decision of today is absent, not NULL.
--
-- Trading days are the dates present in `prices` for the ticker (for a pair: the dates on which both have prices).
-- With T the decision date, the exit is the close of the h-th trading day after T; the entry is the open of the
-- first trading day after T ('next_open', so the position is exposed for h sessions) or T's own close
-- ('decision_close', which needs a price on T for every leg). Prices are adjusted by adj_close / close where the
-- source gives both (splits and dividends between entry and exit are then in the return); a missing open is
-- replaced by that day's close and the row is flagged 'open_imputed'.
WITH
-- The distinct markets the decisions need: (A, B, T, history). Elementwise decisions use A's own calendar (B := A).
markets AS MATERIALIZED (
    SELECT row_number() OVER () AS market_id, *
    FROM (
        SELECT DISTINCT ticker_a, coalesce(ticker_b, ticker_a) AS ticker_b, CAST(decision_date AS DATE) AS decision_date,
               history_days
        FROM decisions
    )
),
needed_tickers AS (
    SELECT ticker_a AS ticker FROM markets UNION SELECT ticker_b FROM markets
),
-- Adjusted prices (USD per share, in today's share units) numbered by each ticker's own trading days.
px AS MATERIALIZED (
    SELECT
        p.ticker,
        p.date,
        row_number() OVER (PARTITION BY p.ticker ORDER BY p.date) AS day_no,
        coalesce(p.adj_close, p.close) AS close_adj,
        coalesce(p.open, p.close) * coalesce(p.adj_close / p.close, 1.0) AS open_adj,
        p.open IS NULL AS open_imputed
    FROM prices AS p
    SEMI JOIN needed_tickers AS t ON p.ticker = t.ticker
),
days_per_ticker AS (
    SELECT ticker, max(day_no) AS last_day_no FROM px GROUP BY ticker
),
-- Each leg's first own trading day after T. Markets with none are not matured and end here.
first_after AS MATERIALIZED (
    SELECT m.market_id, m.ticker_a, m.ticker_b, m.decision_date,
           a.day_no AS a_first, b.day_no AS b_first
    FROM markets AS m
    ASOF JOIN px AS a ON a.ticker = m.ticker_a AND a.date > m.decision_date
    ASOF JOIN px AS b ON b.ticker = m.ticker_b AND b.date > m.decision_date
),
-- The pair's common trading days after T are searched in a window of each leg's next (h + 3) own days: a prefix of
-- both calendars, so the common days found are a prefix of the true ones and, when there are at least h of them,
-- the h-th is exact. Only where a leg's window was full and still held fewer than h common days (a leg missing
-- more than 3 days, e.g. a halted stock) is the search repeated over all later days (`unbounded_days`).
-- Each common day carries both legs' adjusted prices, so entry and exit need no further lookup; the window also
-- holds A's last day <= T, which is T itself when T's close exists for both legs (entry 'decision_close').
window_days AS MATERIALIZED (
    SELECT f.market_id,
           any_value({'date': a.date, 'open_a': a.open_adj, 'close_a': a.close_adj, 'open_b': b.open_adj,
                 'close_b': b.close_adj, 'open_imputed': a.open_imputed OR b.open_imputed})
               FILTER (WHERE a.date = f.decision_date) AS on_t,
           list({'date': a.date, 'open_a': a.open_adj, 'close_a': a.close_adj, 'open_b': b.open_adj,
                 'close_b': b.close_adj, 'open_imputed': a.open_imputed OR b.open_imputed} ORDER BY a.date)
               FILTER (WHERE a.date > f.decision_date) AS after_t
    FROM first_after AS f,
         unnest(range(f.a_first - 1, f.a_first + getvariable('reward_horizon_days') + 3)) AS w(day_no)
    JOIN px AS a ON a.ticker = f.ticker_a AND a.day_no = w.day_no
    JOIN px AS b ON b.ticker = f.ticker_b AND b.date = a.date
                AND b.day_no < f.b_first + getvariable('reward_horizon_days') + 3
    GROUP BY f.market_id
),
undecided AS MATERIALIZED (
    SELECT f.*
    FROM first_after AS f
    LEFT JOIN window_days AS w USING (market_id)
    JOIN days_per_ticker AS na ON na.ticker = f.ticker_a
    JOIN days_per_ticker AS nb ON nb.ticker = f.ticker_b
    WHERE coalesce(len(w.after_t), 0) < getvariable('reward_horizon_days')
      AND (f.a_first + getvariable('reward_horizon_days') + 3 - 1 <= na.last_day_no
           OR f.b_first + getvariable('reward_horizon_days') + 3 - 1 <= nb.last_day_no)
),
-- A's later days for the undecided markets first (materialized, so that the join order cannot pair every price
-- row of A with every price row of B on date before the few undecided markets are picked).
unbounded_a AS MATERIALIZED (
    SELECT u.market_id, u.ticker_b, u.decision_date, a.*
    FROM undecided AS u
    JOIN px AS a ON a.ticker = u.ticker_a AND a.date >= u.decision_date
),
unbounded_days AS MATERIALIZED (
    SELECT a.market_id,
           any_value({'date': a.date, 'open_a': a.open_adj, 'close_a': a.close_adj, 'open_b': b.open_adj,
                 'close_b': b.close_adj, 'open_imputed': a.open_imputed OR b.open_imputed})
               FILTER (WHERE a.date = a.decision_date) AS on_t,
           list({'date': a.date, 'open_a': a.open_adj, 'close_a': a.close_adj, 'open_b': b.open_adj,
                 'close_b': b.close_adj, 'open_imputed': a.open_imputed OR b.open_imputed} ORDER BY a.date)
               FILTER (WHERE a.date > a.decision_date) AS after_t
    FROM unbounded_a AS a
    JOIN px AS b ON b.ticker = a.ticker_b AND b.date = a.date
    GROUP BY a.market_id
),
-- Per market: T's common day (if any) and the common days after T, from which entry and exit are taken.
calendar AS MATERIALIZED (
    SELECT m.*, c.on_t, c.after_t
    FROM markets AS m
    JOIN (
        SELECT * FROM window_days ANTI JOIN undecided USING (market_id)
        UNION ALL
        SELECT * FROM unbounded_days
    ) AS c USING (market_id)
),
-- Entry and exit prices per leg; 'decision_close' enters at T's close, so a market without a price on T for both
-- legs drops out (it can never be priced that way).
legs AS (
    SELECT
        market_id, ticker_a, ticker_b, decision_date, history_days,
        IF(getvariable('reward_entry') = 'next_open', after_t[1].date, on_t.date) AS entry_date,
        after_t[getvariable('reward_horizon_days')].date AS exit_date,
        IF(getvariable('reward_entry') = 'next_open', after_t[1].open_a, on_t.close_a) AS entry_a,
        IF(getvariable('reward_entry') = 'next_open', after_t[1].open_b, on_t.close_b) AS entry_b,
        after_t[getvariable('reward_horizon_days')].close_a AS exit_a,
        after_t[getvariable('reward_horizon_days')].close_b AS exit_b,
        getvariable('reward_entry') = 'next_open' AND after_t[1].open_imputed AS open_imputed
    FROM calendar
    WHERE len(after_t) >= getvariable('reward_horizon_days')
      AND (getvariable('reward_entry') = 'next_open' OR on_t IS NOT NULL)
),
-- Daily volatility for the risk penalty: sample std of the leg's close-to-close adjusted returns (per $1 per day)
-- over the state's history window, i.e. the history_days returns ending at T. Computed only when the penalty is on.
daily_returns AS (
    SELECT ticker, date, day_no,
           close_adj / lag(close_adj) OVER (PARTITION BY ticker ORDER BY date) - 1.0 AS return_1d
    FROM px
    WHERE getvariable('reward_risk_lambda') <> 0
),
volatility AS (
    SELECT l.market_id, l.ticker, stddev_samp(r.return_1d) AS sigma_1d
    FROM (
        SELECT market_id, ticker_a AS ticker, decision_date, history_days FROM legs
        UNION
        SELECT market_id, ticker_b, decision_date, history_days FROM legs
    ) AS l
    ASOF JOIN daily_returns AS t ON t.ticker = l.ticker AND t.date <= l.decision_date,
    unnest(range(t.day_no - l.history_days + 1, t.day_no + 1)) AS w(day_no)
    JOIN daily_returns AS r ON r.ticker = l.ticker AND r.day_no = w.day_no
    GROUP BY l.market_id, l.ticker
),
market_returns AS (
    SELECT
        l.*,
        l.exit_a / l.entry_a - 1.0 AS return_a,  -- USD per $1 long A from entry to exit
        l.exit_b / l.entry_b - 1.0 AS return_b,
        coalesce(va.sigma_1d, 0.0) AS sigma_a,
        coalesce(vb.sigma_1d, 0.0) AS sigma_b,
        getvariable('reward_risk_lambda') <> 0 AND (va.sigma_1d IS NULL OR vb.sigma_1d IS NULL) AS no_volatility
    FROM legs AS l
    LEFT JOIN volatility AS va ON va.market_id = l.market_id AND va.ticker = l.ticker_a
    LEFT JOIN volatility AS vb ON vb.market_id = l.market_id AND vb.ticker = l.ticker_b
),
-- What each decision put where: signed dollars in A and in B per $1 (an invalid completion trades nothing).
weights AS (
    SELECT
        d.*,
        CASE
            WHEN NOT d.valid THEN 0.0
            WHEN d.mode = 'elementwise' THEN d.position                                   -- p: -1/0/1 or [0, 2]
            WHEN getvariable('reward_pairwise') = 'long_short' THEN IF(d.action = 'A', 1.0, -1.0)
            ELSE coalesce(d.proportion, IF(d.action = 'A', 1.0, 0.0))                      -- w in A
        END AS weight_a,
        CASE
            WHEN NOT d.valid OR d.mode = 'elementwise' THEN 0.0
            WHEN getvariable('reward_pairwise') = 'long_short' THEN IF(d.action = 'A', -1.0, 1.0)
            ELSE 1.0 - coalesce(d.proportion, IF(d.action = 'A', 1.0, 0.0))                -- 1 - w in B
        END AS weight_b
    FROM decisions AS d
)
SELECT
    w.*,                                                  -- the decision's own columns, weight_a, weight_b
    r.entry_date,
    r.exit_date,
    r.return_a,
    IF(w.ticker_b IS NULL, NULL, r.return_b) AS return_b,
    -- cost_usd: cost_bps/1e4 of every dollar traded, per leg (long_short trades $2, allocation $1, position |p|).
    getvariable('reward_cost_bps') / 1e4 * (abs(w.weight_a) + abs(w.weight_b)) AS cost_usd,
    -- risk_usd: lambda x |weight| x daily volatility, per leg.
    getvariable('reward_risk_lambda') * (abs(w.weight_a) * r.sigma_a + abs(w.weight_b) * r.sigma_b) AS risk_usd,
    -- reward_usd = weight_a * return_a + weight_b * return_b - cost_usd - risk_usd   (USD per $1);
    -- an invalid completion gets -invalid_penalty_usd instead. The one formula for every mode and option:
    --   pairwise long_short  r_chosen - r_other - 2 * cost;   allocation  w r_A + (1 - w) r_B - cost;
    --   elementwise          p r - |p| cost - lambda |p| sigma.
    IF(w.valid,
       w.weight_a * r.return_a + IF(w.ticker_b IS NULL, 0.0, w.weight_b * r.return_b)
           - getvariable('reward_cost_bps') / 1e4 * (abs(w.weight_a) + abs(w.weight_b))
           - getvariable('reward_risk_lambda') * (abs(w.weight_a) * r.sigma_a + abs(w.weight_b) * r.sigma_b),
       -getvariable('reward_invalid_penalty_usd')) AS reward_usd,
    nullif(concat_ws(',', IF(r.open_imputed, 'open_imputed', NULL),
                          IF(r.no_volatility, 'no_volatility', NULL)), '') AS flags
FROM weights AS w
JOIN market_returns AS r
  ON r.ticker_a = w.ticker_a
 AND r.ticker_b = coalesce(w.ticker_b, w.ticker_a)
 AND r.decision_date = CAST(w.decision_date AS DATE)
 AND r.history_days = w.history_days
