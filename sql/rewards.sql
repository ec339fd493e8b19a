-- Dollar-normalized rewards: what $1.00 put to work as a decision said would have earned over the horizon.
-- Unit of every *_usd column and of return_*: US dollars per $1 of capital (0.01 = one cent = 1 %).
--
-- Input: two relations and the table `prices`.
--   decision_markets(market_key, decision_date, ticker_a, ticker_b, history_days, tickers): what a decision is priced
--     on; one row per market_key (compute: the states of the pending rollouts, sql/rewards/pending_markets.sql; preview
--     and evaluation: each decision its own market, sql/rewards/flat_decisions.sql). ticker_b is NULL for elementwise.
--     tickers: a listwise basket in prompt order (letter A first; ticker_a/ticker_b are its first two), else NULL.
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
--   reward_listwise             VARCHAR  'top_bottom' ($1 long the first-ranked, $1 short the last) | 'rank_weighted'
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
    WHERE tickers IS NULL
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
    SEMI JOIN (SELECT ticker_a AS ticker FROM markets UNION SELECT ticker_b FROM markets
               UNION SELECT unnest(tickers) FROM decision_markets WHERE tickers IS NOT NULL) AS n USING (ticker)
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
    SEMI JOIN markets USING (market_key)
),
-- Listwise baskets (issue 20). Trading days of a basket are the dates on which all K legs have prices (as a pair's
-- are the dates both have); entry, exit, the entry gap, adjustment and costs follow the pair rules above.
baskets AS MATERIALIZED (
    SELECT row_number() OVER () AS basket_id, market_key, CAST(decision_date AS DATE) AS decision_date, tickers,
           len(tickers) AS k, history_days
    FROM decision_markets
    WHERE tickers IS NOT NULL
),
basket_legs AS MATERIALIZED (
    SELECT b.basket_id, l.leg, b.tickers[l.leg] AS ticker
    FROM baskets AS b, unnest(range(1, b.k + 1)) AS l(leg)
),
-- T and every later date on which all K legs traded
basket_days AS MATERIALIZED (
    SELECT l.basket_id, p.date
    FROM basket_legs AS l
    JOIN baskets AS b USING (basket_id)
    JOIN prices AS p ON p.ticker = l.ticker AND p.date >= b.decision_date
    GROUP BY l.basket_id, p.date
    HAVING count(*) = any_value(b.k)
),
basket_common AS (
    SELECT b.basket_id, any_value(b.decision_date) AS decision_date,
           coalesce(bool_or(d.date = b.decision_date), false) AS on_t,
           list(d.date ORDER BY d.date) FILTER (WHERE d.date > b.decision_date) AS after_t
    FROM baskets AS b
    JOIN basket_days AS d USING (basket_id)
    GROUP BY b.basket_id
),
basket_calendar AS MATERIALIZED (
    SELECT basket_id,
           IF(getvariable('reward_entry') = 'next_open', after_t[1], decision_date) AS entry_date,
           after_t[getvariable('reward_horizon_days')] AS exit_date
    FROM basket_common
    WHERE on_t AND len(after_t) >= getvariable('reward_horizon_days')
      AND (getvariable('reward_entry') <> 'next_open'
           OR after_t[1] <= decision_date + CAST(getvariable('reward_max_entry_gap_days') AS INTEGER))
),
basket_leg_returns AS MATERIALIZED (
    SELECT c.basket_id, l.leg, c.entry_date, c.exit_date,
           x.close_adj / IF(getvariable('reward_entry') = 'next_open', e.open_adj, e.close_adj) - 1.0 AS leg_return,
           getvariable('reward_entry') = 'next_open' AND e.open_imputed AS open_imputed,
           v.sigma_1d
    FROM basket_calendar AS c
    JOIN basket_legs AS l USING (basket_id)
    JOIN baskets AS b USING (basket_id)
    JOIN adjusted AS e ON e.ticker = l.ticker AND e.date = c.entry_date
    JOIN adjusted AS x ON x.ticker = l.ticker AND x.date = c.exit_date
    LEFT JOIN LATERAL (
        SELECT stddev_samp(r.return_1d) AS sigma_1d
        FROM daily_returns AS t, daily_returns AS r
        WHERE t.ticker = l.ticker AND t.date = b.decision_date AND r.ticker = l.ticker
          AND r.day_no BETWEEN t.day_no - b.history_days + 1 AND t.day_no
    ) AS v ON true
),
basket_returns AS (
    SELECT b.market_key, b.decision_date, b.tickers, b.k,
           any_value(r.entry_date) AS entry_date, any_value(r.exit_date) AS exit_date,
           list(r.leg_return ORDER BY r.leg) AS leg_returns,
           list(coalesce(r.sigma_1d, 0.0) ORDER BY r.leg) AS leg_sigmas,
           nullif(concat_ws(',', IF(bool_or(r.open_imputed), 'open_imputed', NULL),
                                 IF(getvariable('reward_risk_lambda') <> 0 AND bool_or(r.sigma_1d IS NULL),
                                    'no_volatility', NULL)), '') AS flags
    FROM baskets AS b
    JOIN basket_leg_returns AS r USING (basket_id)
    GROUP BY b.market_key, b.decision_date, b.tickers, b.k
),
-- Each leg's signed dollars per $1 from its rank in the action ('C>A>D>B': C is rank 1). top_bottom: +1 the first,
-- -1 the last. rank_weighted: (K + 1 - 2 rank) / S with S = floor(K/2) * ceil(K/2), the sum of the positive raw
-- weights, so the longs sum to +1 and the shorts to -1 (K = 4: +0.75, +0.25, -0.25, -0.75; odd K: the middle 0).
basket_weights AS (
    SELECT d.*, r.* EXCLUDE (market_key),
           list_transform(range(1, r.k + 1), lambda i:
               CASE
                   WHEN NOT d.valid THEN 0.0
                   WHEN getvariable('reward_listwise') = 'top_bottom' THEN
                       CASE list_position(string_split(d.action, '>'), chr(CAST(64 + i AS INTEGER))) WHEN 1 THEN 1.0 WHEN r.k THEN -1.0
                                                                                    ELSE 0.0 END
                   ELSE (r.k + 1 - 2 * list_position(string_split(d.action, '>'), chr(CAST(64 + i AS INTEGER))))
                        / ((r.k // 2) * ((r.k + 1) // 2))
               END) AS weights
    FROM decisions AS d
    JOIN basket_returns AS r USING (market_key)
),
basket_rows AS (
    SELECT
        w.* EXCLUDE (decision_date, tickers, k, entry_date, exit_date, leg_returns, leg_sigmas, flags, weights),
        w.weights[1] AS weight_a,
        w.weights[2] AS weight_b,
        w.decision_date,
        w.tickers[1] AS ticker_a,
        w.tickers[2] AS ticker_b,
        w.entry_date,
        w.exit_date,
        w.leg_returns[1] AS return_a,
        w.leg_returns[2] AS return_b,
        getvariable('reward_cost_bps') / 1e4 * list_sum(list_transform(w.weights, lambda x: abs(x))) AS cost_usd,
        getvariable('reward_risk_lambda')
            * list_sum(list_transform(range(1, w.k + 1), lambda i: abs(w.weights[i]) * w.leg_sigmas[i])) AS risk_usd,
        -- reward_usd = sum_i w_i r_i - cost on sum_i |w_i| dollars - risk (an invalid completion: -penalty)
        IF(w.valid,
           list_sum(list_transform(range(1, w.k + 1), lambda i: w.weights[i] * w.leg_returns[i]))
               - getvariable('reward_cost_bps') / 1e4 * list_sum(list_transform(w.weights, lambda x: abs(x)))
               - getvariable('reward_risk_lambda')
                 * list_sum(list_transform(range(1, w.k + 1), lambda i: abs(w.weights[i]) * w.leg_sigmas[i])),
           -getvariable('reward_invalid_penalty_usd')) AS reward_usd,
        w.flags,
        w.tickers,
        w.weights,
        w.leg_returns
    FROM basket_weights AS w
),
pair_rows AS (
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
    r.flags,
    CAST(NULL AS VARCHAR[]) AS tickers,
    CAST(NULL AS DOUBLE[]) AS weights,
    CAST(NULL AS DOUBLE[]) AS leg_returns
FROM weights AS w
JOIN market_returns AS r USING (market_key)
)
SELECT * FROM pair_rows
UNION ALL BY NAME
SELECT * FROM basket_rows
