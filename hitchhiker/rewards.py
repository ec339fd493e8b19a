"""Dollar-normalized rewards and group advantages, computed in SQL (sql/rewards.sql, sql/advantages.sql).

A reward is what $1.00 put to work as a rollout decided earned over the horizon (`reward_usd`, USD per $1).
It is written only once the exit price exists, under a versioned `reward_spec` name that encodes the formula
version, every parameter and a hash of the SQL, so a changed formula yields new rows instead of rewriting old ones.
The same SQL serves the replay buffer (`compute_rewards`) and a user's what-if CSV (`preview`). A decision is never
priced on another day than its own: one on a day a leg did not trade, or whose entry would be more than
`max_entry_gap_days` after it, is an error (preview's error rows; compute reports it and never rewards it), told apart
from one that has not matured yet (sql/rewards/unpriced.sql).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd
from pandas.errors import EmptyDataError

from hitchhiker import contract, db, faults
from hitchhiker.judge import judge_name, judge_rollouts

log = logging.getLogger(__name__)
FORMULA_VERSION = "usd1"  # bump when the meaning of a parameter changes without the SQL text changing
ENTRIES = ("next_open", "decision_close")
PAIRWISE_STYLES = ("long_short", "allocation")
LISTWISE_STYLES = ("top_bottom", "rank_weighted")
PREVIEW_COLUMNS = ("decision_date", "mode", "ticker_a", "ticker_b", "action", "proportion")  # listwise: tickers A|B|C
DEFAULT_MAX_ENTRY_GAP_DAYS = 5  # also the default of the calendar macro (sql/rewards/calendar.sql)
LISTED_UNPRICEABLE = 20  # compute_rewards names at most this many states it cannot price


@dataclass(frozen=True)
class RewardSpec:
    """The reward's parameters; `reward_spec` is their versioned name (the key of every reward row)."""

    horizon_days: int = 1  # sessions exposed: exit at the close of the horizon_days-th trading day after T
    entry: str = "next_open"  # 'next_open' (first trading day after T) | 'decision_close' (T's close)
    pairwise: str = "long_short"  # 'long_short': $1 long chosen, $1 short other | 'allocation': w in A, 1-w in B
    cost_bps: float = 5.0  # per leg traded, basis points of the leg's dollars
    risk_lambda: float = 0.0  # penalty lambda * |weight| * daily volatility over the state's history window
    invalid_penalty_usd: float = 0.02  # an unparseable completion earns -this (a day's move is ~0.01-0.02 per $1)
    # 'next_open': the entry is at most this many calendar days after T, else the decision is an error, not repriced
    # days or years later (a long weekend is 4 days; a leg halted for weeks, or no data near T, is beyond it)
    max_entry_gap_days: int = DEFAULT_MAX_ENTRY_GAP_DAYS
    listwise: str = "top_bottom"  # 'top_bottom': $1 long first-ranked, $1 short last | 'rank_weighted' (issue 20)
    # A judge's reward shift (issue 21): judge 'grounding' or 'lm:<model>' labels each rollout -1/0/+1
    # (hitchhiker.judge); shaped_reward_usd = reward_usd + judge_shift_usd * label feeds the advantages. reward_usd
    # stays the market's dollars. Neither is named in reward_spec unless set, so specs without a judge keep their names.
    judge: str | None = None
    judge_shift_usd: float = 0.0

    def __post_init__(self):
        for name in ("horizon_days", "max_entry_gap_days"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} {v!r} must be an integer >= 1")
        if self.entry not in ENTRIES:
            raise ValueError(f"entry {self.entry!r} is not one of {ENTRIES}")
        if self.pairwise not in PAIRWISE_STYLES:
            raise ValueError(f"pairwise {self.pairwise!r} is not one of {PAIRWISE_STYLES}")
        if self.listwise not in LISTWISE_STYLES:
            raise ValueError(f"listwise {self.listwise!r} is not one of {LISTWISE_STYLES}")
        if self.judge is not None:
            judge_name(self.judge)  # names what is wrong with it
        for name in ("cost_bps", "risk_lambda", "invalid_penalty_usd", "judge_shift_usd"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0 or v == float("inf"):
                raise ValueError(f"{name} {v!r} must be a finite number >= 0")
        if self.judge_shift_usd > 0 and self.judge is None:
            raise ValueError(f"judge_shift_usd {self.judge_shift_usd!r} needs a judge ('grounding' or 'lm:<model>')")

    @property
    def reward_spec(self) -> str:
        """e.g. 'usd1:h=1,entry=next_open,pairwise=long_short,cost_bps=5,risk_lambda=0,invalid_penalty_usd=0.02,sql=1a2b3c4d'.

        The entry gap is named only when it is not the default (',max_entry_gap_days=10' before 'sql='), so the
        default spec's name keeps the parameters it had before the gap existed."""
        named = [("h", self.horizon_days), ("entry", self.entry), ("pairwise", self.pairwise), ("cost_bps", self.cost_bps),
                 ("risk_lambda", self.risk_lambda), ("invalid_penalty_usd", self.invalid_penalty_usd)]
        if self.max_entry_gap_days != DEFAULT_MAX_ENTRY_GAP_DAYS:
            named.append(("max_entry_gap_days", self.max_entry_gap_days))
        named.append(("listwise", self.listwise))
        if self.judge is not None:
            named += [("judge", judge_name(self.judge)), ("judge_shift_usd", self.judge_shift_usd)]
        params = ",".join(f"{k}={_number(v)}" for k, v in named)
        return f"{FORMULA_VERSION}:{params},sql={sql_sha256()[:8]}"


def _number(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)  # repr of a float: the shortest text that reads back the same number


def sql_sha256() -> str:
    """Hash of sql/rewards.sql and its calendar (sql/rewards/calendar.sql) with comments and blank space removed:
    edits to the formula or the calendar change it, prose does not."""
    text = re.sub(r"--[^\n]*", "", db.sql_text("rewards") + "\n" + db.sql_text("rewards/calendar"))
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()


def ensure_calendar(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)create the table macro `reward_calendar` (sql/rewards/calendar.sql) on this connection: the reward's own
    calendar, the one answer to "when does this decision's reward exit" for every stage (temporary, so it works on a
    read-only store too)."""
    con.execute(db.sql_text("rewards/calendar"))


def set_spec_variables(con: duckdb.DuckDBPyConnection, spec: RewardSpec) -> None:
    """Set the DuckDB variables sql/rewards.sql reads (reward_horizon_days, reward_entry, ...) and create the calendar
    macro it calls."""
    ensure_calendar(con)
    values = {
        "reward_spec": spec.reward_spec,
        "reward_horizon_days": spec.horizon_days,
        "reward_entry": spec.entry,
        "reward_max_entry_gap_days": spec.max_entry_gap_days,
        "reward_pairwise": spec.pairwise,
        "reward_listwise": spec.listwise,
        "reward_cost_bps": float(spec.cost_bps),
        "reward_risk_lambda": float(spec.risk_lambda),
        "reward_invalid_penalty_usd": float(spec.invalid_penalty_usd),
        "reward_judge": judge_name(spec.judge) if spec.judge is not None else None,
        "reward_judge_shift_usd": float(spec.judge_shift_usd),
    }
    for name, value in values.items():
        con.execute(f"SET VARIABLE {name} = ?", [value])


def ensure_advantages_view(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)create the view `advantages` from sql/advantages.sql."""
    con.execute(db.sql_text("advantages"))


def _check_decisions(con: duckdb.DuckDBPyConnection, what: str) -> None:
    bad = con.execute(db.sql_text("rewards/bad_decisions") + " LIMIT 5").fetchall()
    if bad:
        rows = "; ".join(f"{r[0]} (mode={r[2]}, tickers={r[3]}/{r[4]}, action={r[5]!r}, proportion={r[6]}, "
                         f"position={r[7]}: {r[8]})" for r in bad)
        raise ValueError(f"{what}: decisions that cannot be priced (first {len(bad)}): {rows}")


def _leave_out_bad_decisions(con: duckdb.DuckDBPyConnection) -> tuple[int, dict[str, str]]:
    """Remove from the temp table `decisions` those sql/rewards.sql cannot price (sql/rewards/bad_decisions.sql);
    returns (how many, {state_id: problem})."""
    con.execute("CREATE OR REPLACE TEMP TABLE bad_decisions AS " + db.sql_text("rewards/bad_decisions"))
    try:
        n = con.execute("DELETE FROM decisions WHERE decision_id IN (SELECT decision_id FROM bad_decisions)").fetchall()[0][0]
        return n, dict(con.execute("SELECT market_key, any_value(problem) FROM bad_decisions GROUP BY ALL").fetchall())
    finally:
        con.execute("DROP TABLE bad_decisions")


def _market_errors(con: duckdb.DuckDBPyConnection, computed_at: datetime, spec: RewardSpec) -> tuple[int, dict[str, str]]:
    """(rollouts, {state_id: why}) of the pending markets that got no reward in this run and never will
    (sql/rewards/unpriced.sql over the markets of `decisions` without a row stamped computed_at)."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE unpriced_markets AS SELECT m.* FROM decision_markets AS m "
        "SEMI JOIN decisions AS d USING (market_key) "
        "ANTI JOIN (SELECT DISTINCT state_id FROM rewards WHERE reward_spec = ? AND computed_at = ?) AS done "
        "ON done.state_id = m.market_key", [spec.reward_spec, computed_at])
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE market_errors AS SELECT market_key, reason "
                    f"FROM ({db.sql_text('rewards/unpriced')}) WHERE status = 'error'")
        n = con.execute("SELECT count(*) FROM decisions SEMI JOIN market_errors USING (market_key)").fetchall()[0][0]
        return n, dict(con.execute("SELECT market_key, reason FROM market_errors").fetchall())
    finally:
        con.execute("DROP TABLE IF EXISTS market_errors")
        con.execute("DROP TABLE unpriced_markets")


def compute_rewards(con: duckdb.DuckDBPyConnection, spec: RewardSpec = RewardSpec(),
                    replay_root: str | Path | None = None) -> dict:
    """Reward every matured rollout of `replay` that has no row under `spec` yet; idempotent, one transaction.

    replay_root: the replay buffer's root, a folder or a storage URL (s3://...). When given, the view `replay` is
    pointed at it and only the decision dates with a group that has no reward under `spec` are read
    (sql/rewards/open_dates.sql, from the folder names or object keys: one listing): the Parquet files of finished
    dates are not opened, so a daily run does not re-read years of buffer. Without it the whole `replay` relation is
    read (any table or view of that name; over a remote root, replay.attach_storage must have registered it).
    A rollout that can never be priced (its state is not in `states` or does not fit its mode, its day was not a
    trading day of every leg, its entry would be beyond the spec's gap) gets no row, is left out and reported; it
    never blocks the others, and a later run reports it again.
    Returns counts: pending (rollouts without a reward before the run), inserted, waiting (pending, not matured),
    unpriceable (pending, never to be priced), unpriceable_states ({state_id: why}, at most LISTED_UNPRICEABLE),
    total (rows under this spec after the run), dates_read (decision dates read; None = all), plus reward_spec and
    computed_at (the run's stamp on its rows).
    """
    if spec.judge is not None:  # every rollout judged (once) before its reward is: one transaction of its own
        judge_rollouts(con, spec.judge, replay_root)
    computed_at = datetime.now(timezone.utc)
    with db.transaction(con):
        set_spec_variables(con, spec)
        open_dates = None
        if replay_root is not None:
            from hitchhiker import replay

            replay.ensure_view(con, replay_root)
            open_dates = _open_dates(con, replay.existing_groups(replay_root))
        con.execute("SET VARIABLE reward_open_dates = ?::DATE[]", [open_dates])
        con.execute("SET VARIABLE reward_computed_at = ?::TIMESTAMPTZ", [computed_at])
        con.execute("INSERT INTO reward_specs VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [spec.reward_spec, json.dumps(asdict(spec)), sql_sha256(), computed_at])
        # Materialized once: the replay view may scan many Parquet files, and four statements read the pending rows.
        con.execute("CREATE OR REPLACE TEMP TABLE decisions AS " + db.sql_text("rewards/pending"))
        con.execute("CREATE OR REPLACE TEMP TABLE decision_markets AS " + db.sql_text("rewards/pending_markets"))
        pending, distinct = con.execute("SELECT count(*), count(DISTINCT decision_id) FROM decisions").fetchall()[0]
        if distinct != pending:  # `rewards` has no index to refuse a repeat: (rollout_id, reward_spec) stays unique here
            repeated = [r for (r,) in con.execute(
                "SELECT decision_id FROM decisions GROUP BY decision_id HAVING count(*) > 1 LIMIT 5").fetchall()]
            raise ValueError(f"replay: rollout_id(s) stored more than once, e.g. {', '.join(repeated)}")
        n_unpriceable, unpriceable = _leave_out_bad_decisions(con)
        con.execute("CREATE OR REPLACE TEMP VIEW reward_rows AS " + db.sql_text("rewards"))
        con.execute("CREATE OR REPLACE TEMP VIEW judged_rows AS " + (
            "SELECT r.*, j.label AS judge_label FROM reward_rows AS r JOIN judgements AS j "
            "ON j.rollout_id = r.decision_id AND j.judge = getvariable('reward_judge')" if spec.judge is not None
            else "SELECT *, CAST(NULL AS TINYINT) AS judge_label FROM reward_rows"))
        inserted = con.execute(db.sql_text("rewards/insert")).fetchall()[0][0] if pending else 0
        if inserted + n_unpriceable < pending:
            n_errors, errors = _market_errors(con, computed_at, spec)
            n_unpriceable += n_errors
            unpriceable.update(errors)
        total = con.execute("SELECT count(*) FROM rewards WHERE reward_spec = ?", [spec.reward_spec]).fetchall()[0][0]
        con.execute("DROP VIEW judged_rows")
        con.execute("DROP VIEW reward_rows")
        con.execute("DROP TABLE decisions")
        con.execute("DROP TABLE decision_markets")
        ensure_advantages_view(con)
        faults.point("rewards.before-commit")
    faults.point("rewards.after-commit")
    if unpriceable:
        log.warning("rewards %s: %d pending rollout(s) of %d state(s) can never be priced and are left out, e.g. %s",
                    spec.reward_spec, n_unpriceable, len(unpriceable),
                    "; ".join(f"{k}: {v}" for k, v in sorted(unpriceable.items())[:5]))
    return {"reward_spec": spec.reward_spec, "pending": pending, "inserted": inserted,
            "waiting": pending - inserted - n_unpriceable, "unpriceable": n_unpriceable,
            "unpriceable_states": dict(sorted(unpriceable.items())[:LISTED_UNPRICEABLE]),
            "total": total, "dates_read": None if open_dates is None else len(open_dates),
            "computed_at": computed_at.isoformat()}


def _open_dates(con: duckdb.DuckDBPyConnection, groups: list[tuple[date, str]]) -> list[date]:
    """Of the replay's (decision_date, group_id) pairs, the dates with a group not yet rewarded under the spec
    variable (sql/rewards/open_dates.sql)."""
    if not groups:
        return []
    con.register("replay_groups", pd.DataFrame(groups, columns=["decision_date", "group_id"]))
    try:
        return con.execute(db.sql_text("rewards/open_dates")).fetchall()[0][0]
    finally:
        con.unregister("replay_groups")


def summary_by_date(con: duckdb.DuckDBPyConnection, reward_spec: str, computed_at: str | None = None) -> list[dict]:
    """Per decision date: matured count, mean/std reward_usd and invalid rate (of one run's rows, given its stamp)."""
    rows = con.execute(db.sql_text("rewards/summary_by_date"),
                       {"reward_spec": reward_spec, "computed_at": computed_at}).fetchall()
    keys = ("decision_date", "matured", "mean_reward_usd", "std_reward_usd", "invalid_rate")
    return [dict(zip(keys, r)) for r in rows]


def preview(con: duckdb.DuckDBPyConnection, csv_path: str | Path, spec: RewardSpec = RewardSpec(),
            history_days: int = 20) -> pd.DataFrame:
    """What-if rewards for the decisions in a CSV (`decision_date,mode,ticker_a,ticker_b,action,proportion`).

    Returns those columns plus entry_date, exit_date, reward_usd, flags, status and reason, in the file's order.
    status: 'rewarded'; 'not_matured' (its exit price does not exist yet); 'error' (it can never be priced: no
    trading on T, a leg without a price on T, an entry beyond `max_entry_gap_days`). reason says why in words
    (sql/rewards/unpriced.sql); the reward columns are empty unless rewarded. An empty action stands for an invalid
    completion. Listwise rows (issue 20) give `tickers`, the basket in prompt order joined by '|' (A first), and a
    ranking action such as C>A>D>B; the output then has a `tickers` column too, and ticker_a/ticker_b are the basket's
    A and B. `history_days` is the volatility window of the risk penalty (a `history_days` column overrides it).
    """
    decisions = _read_actions(Path(csv_path), history_days)
    known = {t for (t,) in con.execute("SELECT DISTINCT ticker FROM prices").fetchall()}
    legs = {t for ts in decisions["tickers"].dropna() for t in ts}
    unknown = sorted((set(decisions["ticker_a"]) | set(decisions["ticker_b"].dropna()) | legs) - known)
    if unknown:
        raise ValueError(f"{csv_path}: tickers with no prices in the store: {', '.join(unknown[:10])}")
    set_spec_variables(con, spec)
    with flat_decisions(con, decisions):
        _check_decisions(con, str(csv_path))
        con.execute("CREATE OR REPLACE TEMP VIEW unpriced_markets AS SELECT * FROM decision_markets")
        try:
            out = con.execute(
                "SELECT d.decision_date, d.mode, d.ticker_a, d.ticker_b, array_to_string(d.tickers, '|') AS tickers, "
                "d.action_text AS action, d.proportion, "
                "r.entry_date, r.exit_date, r.reward_usd, r.flags, "
                "IF(r.entry_date IS NULL, u.status, 'rewarded') AS status, "
                "IF(r.entry_date IS NULL, u.reason, NULL) AS reason "
                f"FROM decision_rows AS d LEFT JOIN ({db.sql_text('rewards')}) AS r USING (decision_id) "
                f"LEFT JOIN ({db.sql_text('rewards/unpriced')}) AS u ON u.market_key = d.decision_id "
                "ORDER BY d.decision_id"
            ).df()
            # the basket column (A|B|C..., prompt order) only when the file has listwise rows
            return out if out["tickers"].notna().any() else out.drop(columns="tickers")
        finally:
            con.execute("DROP VIEW unpriced_markets")


@contextmanager
def flat_decisions(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame):
    """Within the block, sql/rewards.sql prices `frame` (one row per decision: decision_id, decision_date, mode,
    ticker_a, ticker_b, action, proportion, position, valid, history_days), registered as `decision_rows`."""
    if "tickers" not in frame.columns:  # no listwise basket among these decisions
        frame = frame.assign(tickers=pd.Series([None] * len(frame), index=frame.index, dtype=object))
    con.register("decision_rows", frame)
    try:
        con.execute(db.sql_text("rewards/flat_decisions"))
        yield
    finally:
        con.execute("DROP VIEW IF EXISTS decisions")
        con.execute("DROP VIEW IF EXISTS decision_markets")
        con.unregister("decision_rows")


def _read_actions(path: Path, history_days: int) -> pd.DataFrame:
    """The CSV as a `decisions` relation; a malformed row is an error naming the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"actions file {path} not found")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except EmptyDataError:  # pandas' message ("No columns to parse from file") does not say which file
        raise ValueError(f"{path}: empty file; expected a header {','.join(PREVIEW_COLUMNS)} and one decision a "
                         "line") from None
    missing = [c for c in ("decision_date", "mode", "action") if c not in raw.columns]
    if "ticker_a" not in raw.columns and "tickers" not in raw.columns:
        missing.append("ticker_a (or tickers, for listwise rows)")
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {','.join(PREVIEW_COLUMNS)}")
    rows = []
    for i, r in enumerate(raw.to_dict("records")):
        line = i + 2  # the header is line 1
        where = f"{path}: line {line}"
        try:
            day = date.fromisoformat(r["decision_date"].strip())
        except ValueError:
            raise ValueError(f"{where}: decision_date {r['decision_date']!r} is not YYYY-MM-DD") from None
        mode = r["mode"].strip().lower()
        if mode not in contract.ALL_MODES:
            raise ValueError(f"{where}: mode {r['mode']!r} is not one of {contract.ALL_MODES}")
        basket = [t.strip().upper() for t in (r.get("tickers") or "").split("|")] if (r.get("tickers") or "").strip() else None
        if (mode == contract.LISTWISE) != (basket is not None):
            raise ValueError(f"{where}: {mode} needs {'a' if mode == contract.LISTWISE else 'no'} tickers column "
                             "(the basket in prompt order joined by '|', A first)")
        if basket is not None:
            if not contract.MIN_LIST_SIZE <= len(basket) <= contract.MAX_LIST_SIZE or len(set(basket)) != len(basket) or "" in basket:
                raise ValueError(f"{where}: tickers {r['tickers']!r} must be {contract.MIN_LIST_SIZE} to "
                                 f"{contract.MAX_LIST_SIZE} distinct tickers joined by '|'")
            if (r.get("ticker_a") or "").strip() or (r.get("ticker_b") or "").strip():
                raise ValueError(f"{where}: a listwise row gives its basket in tickers, not ticker_a/ticker_b")
        ticker_a = basket[0] if basket else (r.get("ticker_a") or "").strip().upper()
        ticker_b = basket[1] if basket else (r.get("ticker_b") or "").strip().upper() or None
        if not ticker_a:
            raise ValueError(f"{where}: ticker_a is empty")
        if mode != contract.LISTWISE and (mode == contract.PAIRWISE) != (ticker_b is not None):
            raise ValueError(f"{where}: {mode} needs {'a' if mode == contract.PAIRWISE else 'no'} ticker_b")
        action = r["action"].strip()
        proportion_text = (r.get("proportion") or "").strip()
        hd = (r.get("history_days") or "").strip()
        if hd and not hd.isdigit():
            raise ValueError(f"{where}: history_days {hd!r} is not a positive integer")
        row = {"decision_id": i, "decision_date": day, "mode": mode, "ticker_a": ticker_a, "ticker_b": ticker_b,
               "action_text": action, "proportion_text": proportion_text, "action": None, "proportion": None, "position": None, "valid": False,
               "history_days": int(hd) if hd else history_days, "tickers": basket}
        if action:  # parsed by the same contract as model output, so both accept exactly the same actions
            parsed = contract.parse(f"ACTION: {action} {proportion_text}".strip(), mode, with_proportion=bool(proportion_text),
                                    list_size=len(basket) if basket else None)
            if not parsed.valid:
                raise ValueError(f"{where}: action {action!r} (proportion {proportion_text!r}): {parsed.invalid_reason}")
            row.update(action=parsed.action, proportion=parsed.proportion, position=parsed.position, valid=True)
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no decisions")
    df = pd.DataFrame(rows)
    df["decision_date"] = pd.to_datetime(df["decision_date"]).dt.date
    for c in ("proportion", "position"):
        df[c] = df[c].astype("float64")
    return df
