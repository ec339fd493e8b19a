-- The reward calendar: on which day a decision's reward enters and on which it exits. The one answer to "when does
-- this reward exit" in the project: sql/rewards.sql prices every reward on it, and the loop's pair outcomes and
-- held-out check, the evaluation's walk-forward check and the daily gate's evaluation dates ask it too.
--
-- A table macro (temporary, per connection; hitchhiker.rewards.ensure_calendar creates it from this file, and so
-- does `.read sql/rewards/calendar.sql` in the duckdb CLI):
--   reward_calendar(calendar_markets, calendar_entry[, calendar_max_entry_gap_days := 5])
--     calendar_markets  VARCHAR  the name of a relation (table, view or CTE) with one row per market:
--                                market_key (any type), decision_date DATE, ticker_a VARCHAR, ticker_b VARCHAR (NULL:
--                                one stock, its own calendar), horizon_days INTEGER (>= 1)
--     calendar_entry    VARCHAR  'next_open' (enter at the first trading day after T) | 'decision_close' (at T's close)
--     calendar_max_entry_gap_days  INTEGER  'next_open': the entry is at most this many calendar days after T (the
--                                default, 5, is RewardSpec's; NULL: no bound)
--   returns (market_key, entry_date, exit_date): one row per market whose exit day is in `prices` (matured); a market
--   whose horizon has not passed yet, whose legs share no such day, that cannot be priced on its own day (below) is
--   absent, not NULL. sql/rewards/unpriced.sql says which of these a market is.
--
-- Trading days are the dates present in `prices` for the ticker (for a pair: the dates on which both have prices).
-- With T the decision date and h its horizon_days, the exit is the h-th trading day after T; the entry is the first
-- trading day after T ('next_open', so the position is exposed for h sessions) or T itself ('decision_close').
-- No decision is priced on another day than its own: T must be a trading day of every leg (a Saturday, a holiday, a
-- day before a listing or during a halt prices nothing), and a 'next_open' entry more than the gap after T (a leg
-- halted for weeks, data missing) is no entry at all; such a market is absent, never moved to a later day.
--
-- How the calendar is read without a search per market: the dates of `prices` are numbered once (market days, g),
-- and each market (A, B, T) is anchored at the first market day after T on which both legs are listed (or at T for
-- 'decision_close'). Its legs' prices on the anchor and the next `span` market days (span = h - 1, or h from T) are
-- then equality lookups. When both legs have a price on each of those days, they are the pair's first common
-- trading days and entry and exit are exact (`direct`, nearly every market). The few where a leg misses one of those
-- days (a halted stock, a holiday of one exchange) walk the pair's common days one by one (`walked`).
CREATE OR REPLACE TEMP MACRO reward_calendar(calendar_markets, calendar_entry, calendar_max_entry_gap_days := 5) AS TABLE
WITH
-- The markets, numbered. A market of one stock uses A's own calendar (B := A).
calendar_input AS MATERIALIZED (
    SELECT
        row_number() OVER () AS calendar_id,
        market_key,
        ticker_a,
        coalesce(ticker_b, ticker_a) AS ticker_b,
        CAST(decision_date AS DATE) AS decision_date,
        CAST(horizon_days AS INTEGER) AS horizon_days,
        -- market days looked up from the anchor on: the h sessions after T, and T itself for 'decision_close'
        CAST(horizon_days AS INTEGER) + IF(calendar_entry = 'next_open', 0, 1) AS n_days
    FROM query_table(calendar_markets)
),
-- Every date on which any ticker traded, numbered in order.
calendar_days AS MATERIALIZED (
    SELECT date, row_number() OVER (ORDER BY date) AS g
    FROM (SELECT DISTINCT date FROM prices)
),
-- Each needed ticker's first and last market day (a stock listed later, or gone, shares no day outside them).
calendar_listed AS MATERIALIZED (
    SELECT t.ticker, f.g AS first_g, l.g AS last_g
    FROM (
        SELECT ticker, min(date) AS first_date, max(date) AS last_date
        FROM prices
        SEMI JOIN (SELECT ticker_a AS ticker FROM calendar_input UNION SELECT ticker_b FROM calendar_input) AS n
             USING (ticker)
        GROUP BY ticker
    ) AS t
    JOIN calendar_days AS f ON f.date = t.first_date
    JOIN calendar_days AS l ON l.date = t.last_date
),
-- The markets both of whose legs have a price on T: no other market is priced.
calendar_traded AS MATERIALIZED (
    SELECT m.*
    FROM calendar_input AS m
    SEMI JOIN prices AS pa ON pa.ticker = m.ticker_a AND pa.date = m.decision_date
    SEMI JOIN prices AS pb ON pb.ticker = m.ticker_b AND pb.date = m.decision_date
),
-- Per market, its anchor and the last day both legs are listed. The market is left out when the data cannot hold h
-- common days after T yet (not matured), for 'decision_close' when T is not a day both legs can have a price, and
-- for 'next_open' when the anchor (no later than the entry) is already beyond the gap.
calendar_anchors AS MATERIALIZED (
    SELECT
        m.calendar_id,
        m.ticker_a,
        m.ticker_b,
        m.decision_date,
        m.horizon_days,
        m.n_days,
        anchor.g AS anchor_g,
        anchor.date AS anchor_date,
        last_common.date AS last_common_date
    FROM calendar_traded AS m
    ASOF JOIN calendar_days AS after_t ON after_t.date > m.decision_date
    JOIN calendar_listed AS la ON la.ticker = m.ticker_a
    JOIN calendar_listed AS lb ON lb.ticker = m.ticker_b
    JOIN calendar_days AS anchor
      ON anchor.g = IF(calendar_entry = 'next_open', greatest(after_t.g, la.first_g, lb.first_g), after_t.g - 1)
    JOIN calendar_days AS last_common ON last_common.g = least(la.last_g, lb.last_g)
    WHERE anchor.g + m.n_days - 1 <= last_common.g
      AND (calendar_entry = 'next_open'
           OR (anchor.date = m.decision_date AND anchor.g >= greatest(la.first_g, lb.first_g)))
      AND (calendar_entry <> 'next_open' OR calendar_max_entry_gap_days IS NULL
           OR anchor.date <= m.decision_date + CAST(calendar_max_entry_gap_days AS INTEGER))
),
-- The anchor and the n_days - 1 market days after it, for each leg: the first is the entry day, the last the exit.
-- Materialized, so that the join order cannot pair each leg with every price row of its ticker before the day is set.
calendar_lookups AS MATERIALIZED (
    SELECT l.calendar_id, l.ticker, l.n_days, d.date
    FROM (
        SELECT leg.calendar_id, leg.ticker, leg.n_days, leg.anchor_g + unnest(range(leg.n_days)) AS g
        FROM (SELECT calendar_id, ticker_a AS ticker, n_days, anchor_g FROM calendar_anchors
              UNION ALL
              SELECT calendar_id, ticker_b, n_days, anchor_g FROM calendar_anchors) AS leg
    ) AS l
    JOIN calendar_days AS d USING (g)
),
-- Markets with a price for both legs on each of those days: no common trading day lies between T and the anchor, so
-- these are the pair's first common days and entry and exit are exact.
calendar_direct AS MATERIALIZED (
    SELECT k.calendar_id, min(k.date) AS entry_date, max(k.date) AS exit_date
    FROM calendar_lookups AS k
    JOIN prices AS p ON p.ticker = k.ticker AND p.date = k.date
    GROUP BY k.calendar_id
    HAVING count(*) = 2 * any_value(k.n_days)
),
-- The other markets walk A's days from the anchor to the last day both legs are listed (materialized first, so
-- that the join order cannot pair every price row of A with every price row of B before the few markets are
-- picked), keeping the days B also has.
calendar_walk_a AS MATERIALIZED (
    SELECT a.calendar_id, a.ticker_b, a.decision_date, a.horizon_days, p.date
    FROM calendar_anchors AS a
    ANTI JOIN calendar_direct USING (calendar_id)
    JOIN prices AS p ON p.ticker = a.ticker_a AND p.date BETWEEN a.anchor_date AND a.last_common_date
),
calendar_walked AS (
    SELECT
        a.calendar_id,
        any_value(a.decision_date) AS decision_date,
        any_value(a.horizon_days) AS horizon_days,
        bool_or(a.date = a.decision_date) AS on_t,
        list(a.date ORDER BY a.date) FILTER (WHERE a.date > a.decision_date) AS after_t
    FROM calendar_walk_a AS a
    SEMI JOIN prices AS b ON b.ticker = a.ticker_b AND b.date = a.date
    GROUP BY a.calendar_id
),
calendar_dates AS (
    SELECT calendar_id, entry_date, exit_date FROM calendar_direct
    UNION ALL
    SELECT
        calendar_id,
        IF(calendar_entry = 'next_open', after_t[1], decision_date) AS entry_date,
        after_t[horizon_days] AS exit_date
    FROM calendar_walked
    WHERE len(after_t) >= horizon_days AND (calendar_entry = 'next_open' OR on_t)
      AND (calendar_entry <> 'next_open' OR calendar_max_entry_gap_days IS NULL
           OR after_t[1] <= decision_date + CAST(calendar_max_entry_gap_days AS INTEGER))
)
SELECT m.market_key, c.entry_date, c.exit_date
FROM calendar_dates AS c
JOIN calendar_input AS m USING (calendar_id);
