-- Dollar-normalized rewards: what $1.00 put to work as a decision said would have earned over the horizon.
-- Unit of every *_usd column and of return_*: US dollars per $1 of capital (0.01 = one cent = 1 %).
--
-- Input: two relations and the table `prices`.
--   decision_markets(market_key, decision_date, ticker_a, ticker_b, history_days): what a decision is priced on; one
--     row per market_key (compute: the states of the pending rollouts, sql/rewards/pending_markets.sql; preview and
--     evaluation: each decision its own market, sql/rewards/flat_decisions.sql). ticker_b is NULL for elementwise.
--   decisions(decision_id, market_key, mode, action, proportion, position, valid, ...): what was decided; any other
--     column is passed through (compute: the pending rollouts of the replay, sql/rewards/pending.sql).
-- Keeping the two apart means the per-market work (calendar, prices, returns) is done once per state and joined to
-- its rollouts by one key, instead of joining every rollout to its state's tickers first (1M rollouts, 125k states).
-- Parameters are DuckDB variables that hitchhiker.rewards sets from a RewardSpec; to run this file by hand, SET
-- VARIABLE each of:
--   reward_horizon_days         INTEGER  sessions the position is exposed (exit = the h-th trading day after T)
--   reward_entry                VARCHAR  'next_open' (adjusted open of the first trading day after T) | 'decision_close'
--   reward_max_entry_gap_days   INTEGER  'next_open': the entry day is at most this many calendar days after T
--   reward_pairwise             VARCHAR  'long_short' ($1 long the chosen, $1 short the other) | 'allocation'
--   reward_cost_bps             DOUBLE   cost per leg traded, basis points of the leg's dollars
--   reward_risk_lambda          DOUBLE   risk penalty per unit of |weight| x daily volatility (0 = off)
--   reward_invalid_penalty_usd  DOUBLE   what an unparseable completion costs
-- Output: the decision's columns plus its market's decision_date, ticker_a and ticker_b, weights, entry/exit dates,
-- returns, costs and reward_usd, one row per decision whose exit price exists (matured); a decision of today is
-- absent, not NULL, and so is one that can never be priced (T not a trading day of every leg, an entry beyond the
-- gap): sql/rewards/unpriced.sql tells the two apart.
--
-- The calendar is the reward calendar, sql/rewards/calendar.sql (the table macro reward_calendar, which
-- hitchhiker.rewards.set_spec_variables creates; by hand: `.read sql/rewards/calendar.sql`): trading days are the dates
-- present in `prices` for the ticker (for a pair: the dates on which both have prices). With T the decision date, the
-- exit is the close of the h-th trading day after T; the entry is the open of the first trading day after T
-- ('next_open', so the position is exposed for h sessions; at most reward_max_entry_gap_days calendar days after T)
-- or T's own close ('decision_close'). Either needs a price on T for every leg: a decision is never priced on another
-- day than its own. No price after the exit and none before T enters a reward. Prices are adjusted by adj_close /
-- close where the source gives both (splits and dividends between entry and exit are then in the return); a missing
-- open is replaced by that day's close and the row is flagged 'open_imputed'.
WITH
-- The markets the decisions need, numbered. Elementwise markets use A's own calendar (B := A, `single`).
markets AS MATERIALIZED (
    SELECT
        row_number() OVER () AS market_id,
        market_key,
        ticker_a,
        coalesce(ticker_b, ticker_a) AS ticker_b,
        CAST(decision_date AS DATE) AS decision_date,
        history_days,
        ticker_b IS NULL AS single
    FROM decision_markets
),
-- Entry and exit day of each market (absent: not matured, or no price on T for 'decision_close').
calendar_markets AS (
    SELECT market_id AS market_key, decision_date, ticker_a, ticker_b, getvariable('reward_horizon_days') AS horizon_days
    FROM markets
),
calendar AS MATERIALIZED (
    SELECT market_key AS market_id, entry_date, exit_date
    FROM reward_calendar('calendar_markets', getvariable('reward_entry'),
                         calendar_max_entry_gap_days := getvariable('reward_max_entry_gap_days'))
),
-- Adjusted prices: USD per share, in today's share units.
adjusted AS (
    SELECT
        ticker,
        date,
        coalesce(adj_close, close) AS close_adj,
        coalesce(open, close) * coalesce(adj_close / close, 1.0) AS open_adj,
        open IS NULL AS open_imputed
    FROM prices
),
-- Each leg's entry and exit day, one row each: the prices they need, looked up in one join.
ends AS MATERIALIZED (
    SELECT l.market_id, l.is_a, d.is_entry, l.ticker, IF(d.is_entry, l.entry_date, l.exit_date) AS date
    FROM (SELECT c.market_id, true AS is_a, m.ticker_a AS ticker, c.entry_date, c.exit_date
          FROM calendar AS c JOIN markets AS m USING (market_id)
          UNION ALL
          SELECT c.market_id, false, m.ticker_b, c.entry_date, c.exit_date
          FROM calendar AS c JOIN markets AS m USING (market_id)) AS l
    CROSS JOIN (VALUES (true), (false)) AS d(is_entry)
),
-- Entry prices are the open of the entry day ('next_open') or its close (T, 'decision_close'); exit prices the close
-- of the exit day.
legs AS MATERIALIZED (
    SELECT m.*, c.entry_date, c.exit_date, x.* EXCLUDE (market_id)
    FROM markets AS m
    JOIN calendar AS c USING (market_id)
    JOIN (
        SELECT
            e.market_id,
            any_value(IF(getvariable('reward_entry') = 'next_open', p.open_adj, p.close_adj))
                FILTER (WHERE e.is_a AND e.is_entry) AS entry_a,
            any_value(IF(getvariable('reward_entry') = 'next_open', p.open_adj, p.close_adj))
                FILTER (WHERE NOT e.is_a AND e.is_entry) AS entry_b,
            any_value(p.close_adj) FILTER (WHERE e.is_a AND NOT e.is_entry) AS exit_a,
            any_value(p.close_adj) FILTER (WHERE NOT e.is_a AND NOT e.is_entry) AS exit_b,
            getvariable('reward_entry') = 'next_open' AND bool_or(p.open_imputed) FILTER (WHERE e.is_entry) AS open_imputed
        FROM ends AS e
        JOIN adjusted AS p ON p.ticker = e.ticker AND p.date = e.date
        GROUP BY e.market_id
    ) AS x USING (market_id)
),
-- Daily volatility for the risk penalty: sample std of the leg's close-to-close adjusted returns (per $1 per day)
-- over the state's history window, i.e. the history_days returns ending at T. Computed only when the penalty is on.
daily_returns AS (
    SELECT ticker, date,
           row_number() OVER own_days AS day_no,
           close_adj / lag(close_adj) OVER own_days - 1.0 AS return_1d
    FROM adjusted
    SEMI JOIN (SELECT ticker_a AS ticker FROM markets UNION SELECT ticker_b FROM markets) AS n USING (ticker)
    WHERE getvariable('reward_risk_lambda') <> 0
    WINDOW own_days AS (PARTITION BY ticker ORDER BY date)
),
volatility AS (
    SELECT l.market_id, l.ticker, stddev_samp(r.return_1d) AS sigma_1d
    FROM (
        SELECT market_id, ticker_a AS ticker, decision_date, history_days FROM legs
        WHERE getvariable('reward_risk_lambda') <> 0
        UNION
        SELECT market_id, ticker_b, decision_date, history_days FROM legs
        WHERE getvariable('reward_risk_lambda') <> 0
    ) AS l
    ASOF JOIN daily_returns AS t ON t.ticker = l.ticker AND t.date <= l.decision_date,
    unnest(range(t.day_no - l.history_days + 1, t.day_no + 1)) AS w(day_no)
    JOIN daily_returns AS r ON r.ticker = l.ticker AND r.day_no = w.day_no
    GROUP BY l.market_id, l.ticker
),
market_returns AS MATERIALIZED (
    SELECT
        l.market_key,
        l.decision_date,
        l.ticker_a,
        IF(l.single, NULL, l.ticker_b) AS ticker_b,
        l.entry_date,
        l.exit_date,
        l.exit_a / l.entry_a - 1.0 AS return_a,  -- USD per $1 long A from entry to exit
        IF(l.single, NULL, l.exit_b / l.entry_b - 1.0) AS return_b,
        coalesce(va.sigma_1d, 0.0) AS sigma_a,
        coalesce(vb.sigma_1d, 0.0) AS sigma_b,
        nullif(concat_ws(',', IF(l.open_imputed, 'open_imputed', NULL),
                              IF(getvariable('reward_risk_lambda') <> 0 AND (va.sigma_1d IS NULL OR vb.sigma_1d IS NULL),
                                 'no_volatility', NULL)), '') AS flags
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
    r.decision_date,
    r.ticker_a,
    r.ticker_b,
    r.entry_date,
    r.exit_date,
    r.return_a,
    r.return_b,
    -- cost_usd: cost_bps/1e4 of every dollar traded, per leg (long_short trades $2, allocation $1, position |p|).
    getvariable('reward_cost_bps') / 1e4 * (abs(w.weight_a) + abs(w.weight_b)) AS cost_usd,
    -- risk_usd: lambda x |weight| x daily volatility, per leg.
    getvariable('reward_risk_lambda') * (abs(w.weight_a) * r.sigma_a + abs(w.weight_b) * r.sigma_b) AS risk_usd,
    -- reward_usd = weight_a * return_a + weight_b * return_b - cost_usd - risk_usd   (USD per $1);
    -- an invalid completion gets -invalid_penalty_usd instead. The one formula for every mode and option:
    --   pairwise long_short  r_chosen - r_other - 2 * cost;   allocation  w r_A + (1 - w) r_B - cost;
    --   elementwise          p r - |p| cost - lambda |p| sigma   (weight_b = 0, no B leg).
    IF(w.valid,
       w.weight_a * r.return_a + IF(r.ticker_b IS NULL, 0.0, w.weight_b * r.return_b)
           - getvariable('reward_cost_bps') / 1e4 * (abs(w.weight_a) + abs(w.weight_b))
           - getvariable('reward_risk_lambda') * (abs(w.weight_a) * r.sigma_a + abs(w.weight_b) * r.sigma_b),
       -getvariable('reward_invalid_penalty_usd')) AS reward_usd,
    r.flags
FROM weights AS w
JOIN market_returns AS r USING (market_key)
