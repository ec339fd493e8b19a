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
--   reward_pairwise             VARCHAR  'long_short' ($1 long the chosen, $1 short the other) | 'allocation'
--   reward_cost_bps             DOUBLE   cost per leg traded, basis points of the leg's dollars
--   reward_risk_lambda          DOUBLE   risk penalty per unit of |weight| x daily volatility (0 = off)
--   reward_invalid_penalty_usd  DOUBLE   what an unparseable completion costs
-- Output: the decision's columns plus its market's decision_date, ticker_a and ticker_b, weights, entry/exit dates,
-- returns, costs and reward_usd, one row per decision whose exit price exists (matured); a decision of today is
-- absent, not NULL.
--
-- Trading days are the dates present in `prices` for the ticker (for a pair: the dates on which both have prices).
-- With T the decision date, the exit is the close of the h-th trading day after T; the entry is the open of the
-- first trading day after T ('next_open', so the position is exposed for h sessions) or T's own close
-- ('decision_close', which needs a price on T for every leg). No price after the exit and none before T enters a
-- reward. Prices are adjusted by adj_close / close where the source gives both (splits and dividends between entry
-- and exit are then in the return); a missing open is replaced by that day's close and the row is flagged
-- 'open_imputed'.
--
-- How the calendar is read without a search per decision: the dates of `prices` are numbered once (market days,
-- g), and each market (A, B, T) is anchored at the first market day after T on which both legs are listed (or at T
-- for 'decision_close'). Its legs' prices on the anchor and the next `span` market days (span = h - 1, or h from T)
-- are then equality lookups. When both legs have a price on each of those days, they are the pair's first common
-- trading days and entry and exit are exact (`direct`, nearly every market). The few where a leg misses one of
-- those days (a halted stock) walk the pair's common days one by one (`walked`).
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
-- Every date on which any ticker traded, numbered in order.
market_days AS MATERIALIZED (
    SELECT date, row_number() OVER (ORDER BY date) AS g
    FROM (SELECT DISTINCT date FROM prices)
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
-- Each needed ticker's first and last market day (a stock listed later, or gone, shares no day outside them).
listed AS MATERIALIZED (
    SELECT t.ticker, f.g AS first_g, l.g AS last_g
    FROM (
        SELECT ticker, min(date) AS first_date, max(date) AS last_date
        FROM prices
        SEMI JOIN (SELECT ticker_a AS ticker FROM markets UNION SELECT ticker_b FROM markets) AS n USING (ticker)
        GROUP BY ticker
    ) AS t
    JOIN market_days AS f ON f.date = t.first_date
    JOIN market_days AS l ON l.date = t.last_date
),
-- Per market, its anchor and the last day both legs are listed. The market is left out when the data cannot hold h
-- common days after T yet (not matured), and for 'decision_close' when T is not a day both legs can have a price.
anchors AS MATERIALIZED (
    SELECT
        m.market_id,
        m.ticker_a,
        m.ticker_b,
        m.decision_date,
        anchor.g AS anchor_g,
        anchor.date AS anchor_date,
        last_common.date AS last_common_date
    FROM markets AS m
    ASOF JOIN market_days AS after_t ON after_t.date > m.decision_date
    JOIN listed AS la ON la.ticker = m.ticker_a
    JOIN listed AS lb ON lb.ticker = m.ticker_b
    JOIN market_days AS anchor
      ON anchor.g = IF(getvariable('reward_entry') = 'next_open',
                       greatest(after_t.g, la.first_g, lb.first_g),
                       after_t.g - 1)
    JOIN market_days AS last_common ON last_common.g = least(la.last_g, lb.last_g)
    WHERE anchor.g + getvariable('reward_horizon_days') - IF(getvariable('reward_entry') = 'next_open', 1, 0)
          <= last_common.g
      AND (getvariable('reward_entry') = 'next_open'
           OR (anchor.date = m.decision_date AND anchor.g >= greatest(la.first_g, lb.first_g)))
),
-- The anchor and the `span` market days after it, for each leg: i = 0 is the entry day, i = span the exit day.
-- Materialized, so that the join order cannot pair each leg with every price row of its ticker before the day is set.
lookups AS MATERIALIZED (
    SELECT l.market_id, l.is_a, l.ticker, l.i, d.date
    FROM (
        SELECT leg.market_id, leg.is_a, leg.ticker, i.i, leg.anchor_g + i.i AS g
        FROM (SELECT market_id, true AS is_a, ticker_a AS ticker, anchor_g FROM anchors
              UNION ALL
              SELECT market_id, false, ticker_b, anchor_g FROM anchors) AS leg
        CROSS JOIN range(getvariable('reward_horizon_days') + IF(getvariable('reward_entry') = 'next_open', 0, 1)) AS i(i)
    ) AS l
    JOIN market_days AS d USING (g)
),
-- Markets with a price for both legs on each of those days: no common trading day lies between T and the anchor, so
-- these are the pair's first common days and entry and exit are exact.
direct AS MATERIALIZED (
    SELECT
        k.market_id,
        min(k.date) AS entry_date,
        max(k.date) AS exit_date,
        any_value(IF(getvariable('reward_entry') = 'next_open', p.open_adj, p.close_adj))
            FILTER (WHERE k.i = 0 AND k.is_a) AS entry_a,
        any_value(IF(getvariable('reward_entry') = 'next_open', p.open_adj, p.close_adj))
            FILTER (WHERE k.i = 0 AND NOT k.is_a) AS entry_b,
        arg_max(p.close_adj, k.i) FILTER (WHERE k.is_a) AS exit_a,
        arg_max(p.close_adj, k.i) FILTER (WHERE NOT k.is_a) AS exit_b,
        getvariable('reward_entry') = 'next_open' AND bool_or(p.open_imputed) FILTER (WHERE k.i = 0) AS open_imputed
    FROM lookups AS k
    JOIN adjusted AS p ON p.ticker = k.ticker AND p.date = k.date
    GROUP BY k.market_id
    HAVING count(*) = 2 * (getvariable('reward_horizon_days') + IF(getvariable('reward_entry') = 'next_open', 0, 1))
),
-- The other markets walk A's days from the anchor to the last day both legs are listed (materialized first, so
-- that the join order cannot pair every price row of A with every price row of B before the few markets are
-- picked), keeping the days B also has.
walk_a AS MATERIALIZED (
    SELECT a.market_id, a.ticker_b, a.decision_date, p.date, p.open_adj, p.close_adj, p.open_imputed
    FROM anchors AS a
    ANTI JOIN direct USING (market_id)
    JOIN adjusted AS p ON p.ticker = a.ticker_a AND p.date BETWEEN a.anchor_date AND a.last_common_date
),
walked AS (
    SELECT
        a.market_id,
        any_value({'date': a.date, 'close_a': a.close_adj, 'close_b': b.close_adj})
            FILTER (WHERE a.date = a.decision_date) AS on_t,
        list({'date': a.date, 'open_a': a.open_adj, 'close_a': a.close_adj, 'open_b': b.open_adj,
              'close_b': b.close_adj, 'open_imputed': a.open_imputed OR b.open_imputed} ORDER BY a.date)
            FILTER (WHERE a.date > a.decision_date) AS after_t
    FROM walk_a AS a
    JOIN adjusted AS b ON b.ticker = a.ticker_b AND b.date = a.date
    GROUP BY a.market_id
),
-- Entry and exit prices per leg; 'decision_close' enters at T's close, so a market without a price on T for both
-- legs drops out (it can never be priced that way).
legs AS MATERIALIZED (
    SELECT m.*, x.* EXCLUDE (market_id)
    FROM markets AS m
    JOIN (
        SELECT * FROM direct
        UNION ALL BY NAME
        SELECT
            market_id,
            IF(getvariable('reward_entry') = 'next_open', after_t[1].date, on_t.date) AS entry_date,
            after_t[getvariable('reward_horizon_days')].date AS exit_date,
            IF(getvariable('reward_entry') = 'next_open', after_t[1].open_a, on_t.close_a) AS entry_a,
            IF(getvariable('reward_entry') = 'next_open', after_t[1].open_b, on_t.close_b) AS entry_b,
            after_t[getvariable('reward_horizon_days')].close_a AS exit_a,
            after_t[getvariable('reward_horizon_days')].close_b AS exit_b,
            getvariable('reward_entry') = 'next_open' AND after_t[1].open_imputed AS open_imputed
        FROM walked
        WHERE len(after_t) >= getvariable('reward_horizon_days')
          AND (getvariable('reward_entry') = 'next_open' OR on_t IS NOT NULL)
    ) AS x USING (market_id)
),
-- Daily volatility for the risk penalty: sample std of the leg's close-to-close adjusted returns (per $1 per day)
-- over the state's history window, i.e. the history_days returns ending at T. Computed only when the penalty is on.
daily_returns AS (
    SELECT ticker, date,
           row_number() OVER own_days AS day_no,
           close_adj / lag(close_adj) OVER own_days - 1.0 AS return_1d
    FROM adjusted
    SEMI JOIN listed USING (ticker)
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
