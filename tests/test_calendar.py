"""One calendar: every "when does this decision's reward exit" question is answered by the reward calendar
(sql/rewards/calendar.sql). A holiday inserted into `prices` moves every consumer's answer with it: the reward's exit
date, the loop's pair outcome and held-out check, evaluation's training cutoff and split check, the daily gate's
evaluation dates. A holiday of one leg's ticker only (its exchange closed, a halt) moves the pair's calendar and not
the market's, so a consumer that kept a calendar of its own (all dates in `prices`, or each leg's own dates) fails."""
from __future__ import annotations

import json
from datetime import date, datetime, timezone

import pandas as pd
import pytest

from hitchhiker import db, evaluate, loop, rewards
from hitchhiker.evaluate import SplitError
from price_helpers import insert_sp500_prices

TICKERS = ["AAP", "ABBV", "ABC"]
T = date(2016, 7, 12)  # decision date (Tuesday)
HOLIDAY = date(2016, 7, 13)  # the next trading day, until the holiday removes it
NEXT = date(2016, 7, 14)  # the trading day after it
HOLIDAYS = {"every ticker": TICKERS, "one leg": ["ABBV"]}


@pytest.fixture
def store(shared_data, db_file):
    """Real prices of three tickers, a pairwise AAP/ABBV state decided on T (one-day horizon), a checkpoint trained on
    its group."""
    con = db.connect(db_file)
    insert_sp500_prices(con, shared_data, TICKERS, "2016-05-01", "2016-08-31")
    _insert_state(con, "s-T", T, ["AAP", "ABBV"])
    con.execute("CREATE TABLE replay_table AS SELECT 'r-0' AS rollout_id, 'g-T' AS group_id, ?::DATE AS decision_date, "
                "'s-T' AS state_id", [T])
    con.execute("CREATE OR REPLACE VIEW replay AS SELECT * FROM replay_table")
    con.execute("INSERT INTO checkpoints (checkpoint_id, parent_id, run_id, base_model, path, algorithm, finetune, step, "
                "created_at, groups_used) VALUES ('ckpt', NULL, 'run', 'tiny', '/nonexistent', 'grpo', 'full', 1, now(), "
                "['g-T'])")
    yield con
    con.close()


def _insert_state(con, state_id: str, day: date, tickers: list[str], mode: str = "pairwise") -> None:
    messages = [{"role": "user", "content": "Stock A trend: UP. Stock B trend: DOWN.\nWhich stock, A or B?"}]
    con.execute("INSERT INTO states VALUES (?, ?, ?, ?, 'trend', ?, ?, ?, 1, 5, ?, '{}', true, '{}', 12, 'test', now(), ?)",
                [state_id, day, datetime.combine(day, datetime.min.time(), timezone.utc), mode, tickers,
                 "-".join(sorted(tickers)), "choice" if mode == "pairwise" else "ranking", json.dumps(messages),
                 [True] * len(tickers)])


def _answers(con, tmp_path) -> dict:
    """Every consumer's answer for the state decided on T."""
    csv = tmp_path / "actions.csv"
    csv.write_text(f"decision_date,mode,ticker_a,ticker_b,action\n{T},pairwise,AAP,ABBV,A\n")
    (exit_date,) = rewards.preview(con, csv)["exit_date"].tolist()
    (outcome,) = loop.outcomes(con, ["s-T"]).values()
    rewards.ensure_calendar(con)
    gate_dates = [d for (d,) in con.execute(db.sql_text("daily/eval_dates"), {
        "mode": "pairwise", "style": None, "after": date(2016, 7, 11), "until": HOLIDAY, "n": 5}).fetchall()]
    try:
        split_from_next = evaluate.check_split(con, "ckpt", NEXT)
    except SplitError as e:
        split_from_next = f"refused: {e}"
    try:
        loop.check_held_out_dates(con, loop.LoopConfig(train_dates=[T], eval_dates=[NEXT]))
        held_out_next = "allowed"
    except ValueError as e:
        held_out_next = f"refused: {e}"
    return {"reward_exit": pd.Timestamp(exit_date).date(), "pair_outcome": outcome,
            "training_cutoff": evaluate.training_cutoff(con, "ckpt"), "split_from_next": split_from_next,
            "gate_dates_until_holiday": gate_dates, "held_out_from_next": held_out_next}


def _session_return(con, ticker: str, day: date) -> float:
    """Open-to-close return of one session: a one-day reward decided the evening before (no adj_close here)."""
    ((o, c),) = con.execute("SELECT open, close FROM prices WHERE ticker = ? AND date = ?", [ticker, day]).fetchall()
    return c / o - 1


@pytest.mark.parametrize("closed", HOLIDAYS, ids=list(HOLIDAYS))
def test_a_holiday_moves_every_consumer(store, tmp_path, closed):
    before = _answers(store, tmp_path)
    assert before["reward_exit"] == HOLIDAY
    assert before["pair_outcome"] == pytest.approx((_session_return(store, "AAP", HOLIDAY),
                                                    _session_return(store, "ABBV", HOLIDAY)), abs=1e-12)
    assert before["training_cutoff"] == (T, HOLIDAY)
    assert "window starts 2016-07-14" in before["split_from_next"]
    assert before["gate_dates_until_holiday"] == [T]
    assert before["held_out_from_next"] == "allowed"

    store.execute("DELETE FROM prices WHERE date = ? AND list_contains(?, ticker)", [HOLIDAY, HOLIDAYS[closed]])
    after = _answers(store, tmp_path)
    assert after["reward_exit"] == NEXT
    # both legs are paid on the pair's next common session, also AAP, which did trade on the holiday of ABBV
    assert after["pair_outcome"] == pytest.approx((_session_return(store, "AAP", NEXT),
                                                   _session_return(store, "ABBV", NEXT)), abs=1e-12)
    assert after["training_cutoff"] == (T, NEXT)
    assert after["split_from_next"].startswith("refused: checkpoint ckpt was trained on decisions up to 2016-07-12 "
                                               "whose rewards run until 2016-07-14")
    assert after["gate_dates_until_holiday"] == []  # T's reward has not exited by the holiday any more
    assert after["held_out_from_next"].startswith("refused: held-out dates must come after")


def test_greedy_accuracy_counts_states_without_an_outcome(store, tmp_path):
    """A state whose reward has not exited (decided on the last price date) is counted as unpriced, not dropped."""
    from hitchhiker.policy import PolicyConfig, load_policy
    from train_helpers import tiny_model_dir

    last = store.execute("SELECT max(date) FROM prices").fetchall()[0][0]
    _insert_state(store, "s-last", last, ["AAP", "ABC"])
    assert set(loop.outcomes(store, ["s-T", "s-last"])) == {"s-T"}
    policy = load_policy(PolicyConfig(model=str(tiny_model_dir(tmp_path / "tiny"))))
    got = loop.greedy_accuracy(store, policy, ["s-T", "s-last"])
    assert (got["n"], got["n_unpriced"]) == (1, 1)
    with pytest.raises(ValueError, match="none of the 1 evaluation states has a matured outcome"):
        loop.greedy_accuracy(store, policy, ["s-last"])


def test_a_halt_beyond_the_entry_gap_is_priced_by_no_consumer(store, tmp_path):
    """ABBV does not trade for three sessions after T: the pair's first common day is 6 days after T, beyond the
    default gap. The reward is an error row, and the loop's pair outcome has none either (the same calendar); a spec
    with a wider gap prices both on that day."""
    store.execute("DELETE FROM prices WHERE ticker = 'ABBV' AND date BETWEEN ? AND ?", [HOLIDAY, date(2016, 7, 15)])
    csv = tmp_path / "actions.csv"
    csv.write_text(f"decision_date,mode,ticker_a,ticker_b,action\n{T},pairwise,AAP,ABBV,A\n")
    out = rewards.preview(store, csv)
    assert (out["status"][0], out["reason"][0]) == ("error", "entry 2016-07-18 (the first trading day of both legs "
                                                             "after T) is 6 days after T, more than max_entry_gap_days=5")
    assert loop.outcomes(store, ["s-T"]) == {}
    # the calendar macro's own default (what the gate's dates and the walk-forward checks ask) is the spec's
    assert f"calendar_max_entry_gap_days := {rewards.RewardSpec().max_entry_gap_days})" in db.sql_text("rewards/calendar")
    rewards.ensure_calendar(store)
    store.execute("CREATE TEMP TABLE halted AS SELECT 's-T' AS market_key, ?::DATE AS decision_date, 'AAP' AS ticker_a, "
                  "'ABBV' AS ticker_b, 1 AS horizon_days", [T])
    assert store.execute("SELECT * FROM reward_calendar('halted', 'next_open')").fetchall() == []
    assert store.execute("SELECT entry_date FROM reward_calendar('halted', 'next_open', calendar_max_entry_gap_days := 6)"
                         ).fetchall() == [(date(2016, 7, 18),)]
    wider = rewards.RewardSpec(max_entry_gap_days=6)
    out = rewards.preview(store, csv, wider)
    assert out["status"][0] == "rewarded" and pd.Timestamp(out["entry_date"][0]).date() == date(2016, 7, 18)
    assert loop.outcomes(store, ["s-T"], wider)["s-T"] == pytest.approx(
        (_session_return(store, "AAP", date(2016, 7, 18)), _session_return(store, "ABBV", date(2016, 7, 18))), abs=1e-12)


def test_a_basket_is_priced_on_the_days_all_its_legs_trade(store):
    """A listwise basket's outcome (the loop's held-out truth) and its exit (the loop's per-iteration check) are on the
    days all K legs trade: with ABBV off on the next session, all three legs enter and exit on the session after."""
    store.execute("DELETE FROM prices WHERE ticker = 'ABBV' AND date = ?", [HOLIDAY])
    _insert_state(store, "b-T", T, ["ABC", "AAP", "ABBV"], mode="listwise")
    legs = loop.outcomes(store, ["b-T"])["b-T"]
    assert legs == pytest.approx(tuple(_session_return(store, t, NEXT) for t in ("ABC", "AAP", "ABBV")), abs=1e-12)
    config = loop.LoopConfig(train_dates=[T], eval_dates=[NEXT])
    with pytest.raises(ValueError, match="a training state's reward exits on 2016-07-14, on or after the first held-out"):
        loop.check_training_exits(store, ["b-T"], config)
    loop.check_training_exits(store, ["b-T"], loop.LoopConfig(train_dates=[T], eval_dates=[date(2016, 7, 15)]))
