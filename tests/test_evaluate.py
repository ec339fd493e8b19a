"""Evaluation on real prices: the walk-forward refusal, rewards of every subject from the rewards SQL checked by hand,
the evaluations table, idempotence, and the promotion gate."""
import json
from datetime import date, datetime, timezone

import pandas as pd
import pytest

from hitchhiker import db, evaluate, gate
from hitchhiker.evaluate import EvalConfig, SplitError
from price_helpers import insert_sp500_prices

TICKERS = ["AAP", "ABBV", "ABC", "AAPL", "MSFT", "XOM"]
COST_USD = 5.0 / 1e4  # the default spec's cost per leg


@pytest.fixture
def store(shared_data, db_file):
    con = db.connect(db_file)
    insert_sp500_prices(con, shared_data, TICKERS, "2016-05-01", "2016-12-31")
    yield con
    con.close()


def _trading_days(con, start, end):
    return [r[0] for r in con.execute("SELECT DISTINCT date FROM prices WHERE date BETWEEN ? AND ? ORDER BY date",
                                      [start, end]).fetchall()]


def _insert_states(con, start, end, pairs=(("AAP", "ABBV"), ("ABC", "XOM"), ("MSFT", "AAPL"))):
    """Pairwise states with real tickers, A/B order alternating, a trend-style prompt and its features."""
    n = 0
    for day in _trading_days(con, start, end):
        for a, b in pairs:
            if n % 2:
                a, b = b, a
            n += 1
            messages = [{"role": "user", "content": "Stock A trend: UP. Stock B trend: DOWN.\nWhich stock, A or B?"}]
            con.execute(
                "INSERT INTO states VALUES (?, ?, ?, 'pairwise', 'trend', ?, ?, 'choice', 1, 5, ?, ?, true, ?, 12, 'test', now(), "
                "[true, true])",
                [f"s-{day}-{'-'.join(sorted((a, b)))}", day, datetime.combine(day, datetime.min.time(), timezone.utc),
                 [a, b], "-".join(sorted((a, b))), json.dumps(messages),
                 json.dumps({"A": {"trend": "UP"}, "B": {"trend": "DOWN"}}), json.dumps({"Stock A": a, "Stock B": b})])


def _replay_and_checkpoints(con, lineage):
    """A replay view over hand-made rows, their states (AAP/ABBV, one-day horizon: the reward calendar reads the
    trained states' tickers) and checkpoints rows: lineage = [(checkpoint_id, parent_id, [dates])]."""
    rows = []
    for ckpt, _, dates in lineage:
        for d in dates:
            rows.append({"rollout_id": f"{ckpt}-{d}-0", "group_id": f"g-{ckpt}-{d}", "decision_date": d,
                         "state_id": f"train-{d}"})
            con.execute("INSERT INTO states VALUES (?, ?, ?, 'pairwise', 'trend', ['AAP', 'ABBV'], 'AAP-ABBV', 'choice', "
                        "1, 5, '[]', '{}', true, '{}', 12, 'test', now(), NULL) ON CONFLICT DO NOTHING",
                        [f"train-{d}", d, datetime.combine(d, datetime.min.time(), timezone.utc)])
    con.register("replay_rows", pd.DataFrame(rows))
    con.execute("CREATE OR REPLACE TABLE replay_table AS SELECT rollout_id, group_id, CAST(decision_date AS DATE) "
                "AS decision_date, state_id FROM replay_rows")
    con.execute("CREATE OR REPLACE VIEW replay AS SELECT * FROM replay_table")
    for ckpt, parent, dates in lineage:
        con.execute("INSERT INTO checkpoints (checkpoint_id, parent_id, run_id, base_model, path, algorithm, finetune, "
                    "step, created_at, groups_used) VALUES (?, ?, 'run', 'hitchhiker-tiny@test', '/nonexistent', 'grpo', 'full', 1, now(), ?)",
                    [ckpt, parent, [f"g-{ckpt}-{d}" for d in dates]])


def _future_returns(con):
    """Next-day open-to-close return per (ticker, decision date): an oracle's knowledge, for tests only."""
    rows = con.execute("SELECT ticker, lag(date) OVER w AS decision_date, close / open - 1 AS r FROM prices "
                       "WINDOW w AS (PARTITION BY ticker ORDER BY date)").fetchall()
    return {(t, d): r for t, d, r in rows if d is not None}


def _rule(kind, future=None):
    def decide(states):
        out = []
        for s in states.itertuples():
            if kind == "oracle":
                ra, rb = (future[(t, s.decision_date)] for t in s.tickers)
                choice = "A" if ra >= rb else "B"
            else:
                choice = kind
            out.append({"state_id": s.state_id, "action": choice, "proportion": 1.0 if choice == "A" else 0.0,
                        "valid": True, "advisory_text": f"Stock {choice} trend is UP."})
        return pd.DataFrame(out)
    return decide


def test_checkpoint_trained_on_overlapping_dates_is_refused(store):
    june = _trading_days(store, date(2016, 6, 1), date(2016, 6, 30))
    july = _trading_days(store, date(2016, 7, 1), date(2016, 7, 15))
    _replay_and_checkpoints(store, [("parent", None, july), ("child", "parent", june)])
    _insert_states(store, date(2016, 7, 1), date(2016, 7, 29))
    # the parent's last training decision (2016-07-15) is paid at the next trading day's close (2016-07-18)
    assert evaluate.training_cutoff(store, "child") == (date(2016, 7, 15), date(2016, 7, 18))
    for start in ("2016-07-01", "2016-07-18"):
        with pytest.raises(SplitError, match=r"child was trained on decisions up to 2016-07-15 .* until 2016-07-18"):
            evaluate.evaluate(store, "child", start, "2016-07-29", EvalConfig(n_boot=50),
                              policies={"child": _rule("A"), "base": _rule("B")})
    assert "2016-07-19" in evaluate.check_split(store, "child", "2016-07-19")
    # nothing was written by the refused runs
    assert store.execute("SELECT count(*) FROM evaluations").fetchone()[0] == 0


def test_groups_missing_from_the_replay_cannot_be_checked(store):
    _replay_and_checkpoints(store, [("ckpt", None, _trading_days(store, date(2016, 6, 1), date(2016, 6, 3)))])
    store.execute("UPDATE checkpoints SET groups_used = list_append(groups_used, 'g-vanished')")
    with pytest.raises(SplitError, match="1 of 4 training groups are not in the replay"):
        evaluate.check_split(store, "ckpt", "2016-09-01")


def test_evaluation_rewards_metrics_and_idempotence(store, tmp_path):
    _replay_and_checkpoints(store, [("oracle", None, _trading_days(store, date(2016, 6, 1), date(2016, 6, 30)))])
    _insert_states(store, date(2016, 8, 1), date(2016, 9, 30))
    future = _future_returns(store)
    config = EvalConfig(n_boot=200, reports_dir=str(tmp_path / "reports"))
    policies = {"oracle": _rule("oracle", future), "base": _rule("A")}
    run = evaluate.evaluate(store, "oracle", "2016-08-01", "2016-09-30", config, policies=policies)

    subjects = {r[0]: r for r in store.execute("SELECT subject, subject_kind, accuracy, mean_reward_usd, n_states "
                                               "FROM evaluations WHERE run_id = ?", [run.run_id]).fetchall()}
    assert set(subjects) == {"oracle", "base", "baseline:random", "baseline:always_a", "baseline:momentum",
                             "baseline:mean_reversion", "baseline:buy_and_hold"}
    assert subjects["oracle"][1] == "checkpoint" and subjects["base"][1] == "base"
    n = 3 * len(_trading_days(store, date(2016, 8, 1), date(2016, 9, 30)))
    assert subjects["oracle"][4] == n
    assert subjects["oracle"][2] == pytest.approx(1.0)  # knows the future: always the better stock
    # the base model here always answers A, as the always-A baseline does: same accuracy, same reward
    assert subjects["base"][2] == pytest.approx(subjects["baseline:always_a"][2])
    assert subjects["base"][3] == pytest.approx(subjects["baseline:always_a"][3])
    assert subjects["baseline:buy_and_hold"][2] is None  # picks nothing: no accuracy

    # each stored reward equals the long-short formula recomputed from raw prices (entry next open, exit its close)
    decided = store.execute("SELECT d.state_id, d.action, d.reward_usd, s.tickers, s.decision_date FROM evaluation_decisions d "
                            "JOIN evaluations e USING (evaluation_id) JOIN states s USING (state_id) "
                            "WHERE e.subject = 'oracle'").fetchall()
    assert len(decided) == n
    for _, action, reward, tickers, day in decided:
        r = [future[(t, day)] for t in tickers]
        chosen, other = (r[0], r[1]) if action == "A" else (r[1], r[0])
        assert reward == pytest.approx(chosen - other - 2 * COST_USD, abs=1e-12)

    metrics = json.loads(store.execute("SELECT metrics FROM evaluations WHERE run_id = ? AND subject = 'oracle'",
                                       [run.run_id]).fetchone()[0])
    lo, hi = metrics["mean_reward_usd_ci"]
    assert 0 < lo <= metrics["mean_reward_usd"] <= hi
    assert metrics["accuracy_p_value_by_date"] < 1e-10 and not metrics["collapsed"]
    assert metrics["unanonymized_share"] == 0.0  # trend prompts show no headlines
    grounding = json.loads(store.execute("SELECT grounding FROM evaluations WHERE run_id = ? AND subject = 'oracle'",
                                         [run.run_id]).fetchone()[0])
    # the advisory says "Stock X trend is UP": true for A (the prompt says UP), false for B (DOWN)
    b_share = metrics["action_fractions"]["B"]
    assert grounding["unsupported_rate"] == pytest.approx(b_share / 2, abs=1e-9)

    text = run.report_path.read_text()
    for s in subjects:
        assert s in text

    counts = store.execute("SELECT (SELECT count(*) FROM evaluations), (SELECT count(*) FROM evaluation_decisions)").fetchone()
    again = evaluate.evaluate(store, "oracle", "2016-08-01", "2016-09-30", config, policies=policies)
    assert again.run_id == run.run_id
    assert store.execute("SELECT (SELECT count(*) FROM evaluations), (SELECT count(*) FROM evaluation_decisions)").fetchone() == counts


def test_unmatured_window_and_empty_window_are_clear_errors(store):
    _insert_states(store, date(2016, 12, 30), date(2016, 12, 30))  # the last price date: no exit price yet
    with pytest.raises(ValueError, match="matured"):
        evaluate.evaluate(store, "base", "2016-12-30", "2016-12-30", EvalConfig(n_boot=20), policies={"base": _rule("A")})
    with pytest.raises(ValueError, match="no pairwise states"):
        evaluate.evaluate(store, "base", "2016-11-01", "2016-11-30", EvalConfig(n_boot=20), policies={"base": _rule("A")})


def test_promotion_gate(store, tmp_path):
    june = _trading_days(store, date(2016, 6, 1), date(2016, 6, 30))
    _replay_and_checkpoints(store, [("oracle", None, june), ("stubborn", None, june[:5])])
    _insert_states(store, date(2016, 8, 1), date(2016, 9, 30))
    future = _future_returns(store)
    config = EvalConfig(n_boot=300, reports_dir=str(tmp_path / "reports"), gate_margin=0.001)
    base = _rule("A")
    assert gate.champion(store) is None

    _, decision = gate.promotion_gate(store, "oracle", "2016-08-01", "2016-09-30", config,
                                      policies={"oracle": _rule("oracle", future), "base": base})
    assert decision.promoted and decision.champion_before is None and not decision.refused
    assert decision.difference > 0.001 and decision.difference_ci[0] > 0 and decision.p_value < 1e-6
    n_dates = len(_trading_days(store, date(2016, 8, 1), date(2016, 9, 30)))
    assert decision.n_dates == n_dates >= 20 and f"over {n_dates} dates" in decision.reason
    assert "clustered by date" in decision.reason
    assert gate.champion(store) == "oracle"

    # a candidate that always answers B does not beat the oracle: kept, not promoted
    run, decision = gate.promotion_gate(store, "stubborn", "2016-08-01", "2016-09-30", config,
                                        policies={"stubborn": _rule("B"), "oracle": _rule("oracle", future), "base": base})
    assert not decision.promoted and decision.champion_before == "oracle" and decision.difference < 0
    assert gate.champion(store) == "oracle"
    assert "kept, not promoted" in run.report_path.read_text()
    log = store.execute("SELECT candidate, promoted FROM promotions ORDER BY decided_at").fetchall()
    assert log == [("oracle", True), ("stubborn", False)]
    with pytest.raises(ValueError, match="already the champion"):
        gate.promotion_gate(store, "oracle", "2016-08-01", "2016-09-30", config)


@pytest.fixture
def real_states(shared_data, db_file):
    """Real prices of A, AAP, ABBV, ABC and trend-style pairwise states built by the states stage for Nov 2016."""
    from hitchhiker import policy, states

    con = db.connect(db_file)
    files = [str(shared_data / "prices" / "sp500_5yr" / f"{t}_data.csv") for t in ("A", "AAP", "ABBV", "ABC")]
    con.execute(
        "INSERT INTO prices SELECT Name, date, open, high, low, close, NULL, volume, NULL, 'csv', now() "
        "FROM read_csv(?, columns={'date': 'DATE', 'open': 'DOUBLE', 'high': 'DOUBLE', 'low': 'DOUBLE', "
        "'close': 'DOUBLE', 'volume': 'BIGINT', 'Name': 'VARCHAR'}, header=true) "
        "WHERE date BETWEEN DATE '2016-06-01' AND DATE '2016-12-31'", [files])
    days = _trading_days(con, date(2016, 11, 1), date(2016, 11, 30))
    ids = states.build_states(con, states.StatesConfig(style="trend"), days, tokenizer=policy.load_tokenizer())
    assert len(ids) == 6 * len(days)
    yield con
    con.close()


@pytest.mark.slow  # loads the default small model (built once per test session, shared with the policy tests)
def test_base_model_and_all_baselines_on_real_data(real_states, db_file, tmp_path):
    """The untrained default model decides greedily on real states; the report shows it and every baseline."""
    import subprocess
    import sys
    from pathlib import Path

    run = evaluate.evaluate(real_states, "base", "2016-11-01", "2016-11-30",
                            EvalConfig(n_boot=200, reports_dir=str(tmp_path / "reports")))
    assert run.candidate.startswith("base:") and set(run.kinds.values()) == {"base", "baseline"}
    text = run.report_path.read_text()
    for name in ("random", "always_a", "momentum", "mean_reversion", "buy_and_hold"):
        assert f"baseline:{name}" in text and run.summaries[f"baseline:{name}"]["n_decisions"] > 0
    base = run.summaries[run.candidate]
    assert base["n_decisions"] == run.n_states and 0.0 <= base["valid_rate"] <= 1.0
    # greedy decoding is deterministic: a second run stores the same decisions under the same run id
    stored = real_states.execute("SELECT d.state_id, d.action FROM evaluation_decisions d JOIN evaluations e "
                                 "USING (evaluation_id) WHERE e.subject_kind = 'base' ORDER BY 1").fetchall()
    again = evaluate.evaluate(real_states, "base", "2016-11-01", "2016-11-30",
                              EvalConfig(n_boot=200, reports_dir=str(tmp_path / "reports")))
    assert again.run_id == run.run_id
    assert real_states.execute("SELECT d.state_id, d.action FROM evaluation_decisions d JOIN evaluations e "
                               "USING (evaluation_id) WHERE e.subject_kind = 'base' ORDER BY 1").fetchall() == stored
    real_states.close()

    cli = [str(Path(sys.executable).parent / "hitchhiker"), "eval", "--db", str(db_file), "--checkpoint", "base",
           "--start", "2016-11-01", "--end", "2016-11-30", "--n-boot", "100"]
    p = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "baseline:momentum" in p.stdout and "mean reward_usd" in p.stdout and "report:" in p.stdout
    p = subprocess.run(cli[:-6] + ["--start", "2016-11-10", "--end", "2016-11-01"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "error:" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_evaluate_flow_attaches_artifacts(real_states, db_file, tmp_path, prefect_harness):
    from prefect import get_client

    from flows.evaluate import evaluate_flow

    real_states.close()
    out = evaluate_flow(checkpoint="base", start="2016-11-01", end="2016-11-08", db=str(db_file), n_boot=100,
                        reports_dir=str(tmp_path / "reports"))
    assert out["report_path"].endswith("report.md")
    key = f"evaluation-{out['run_id'][:12]}"
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key, f"{key}-report"])))
    assert {a.type for a in arts} == {"table", "markdown"}
    markdown = next(a.data for a in arts if a.type == "markdown")
    assert markdown.count("](data:image/png;base64,iVBORw0KGgo") == 3  # the three PNGs, embedded


def test_greedy_decisions_are_deterministic_and_independent_of_batching(store):
    """A tiny random Llama: greedy output per state is the same alone or in a left-padded batch, and parsed by the contract."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hitchhiker import contract, default_model, policy

    _insert_states(store, date(2016, 8, 1), date(2016, 8, 5))
    # prompts of different lengths, so that batching really pads
    store.execute("UPDATE states SET messages = json_array(json_object('role', 'user', 'content', "
                  "repeat('Stock A trend : UP . ', 1 + CAST(right(state_id, 1) = 'V' AS INT) * 3) || 'Which stock , A or B ?'))")
    states = evaluate.load_states(store, "2016-08-01", "2016-08-05", "pairwise")
    tok = default_model.build_tokenizer(["Stock A trend : UP . Stock B trend : DOWN . Which stock , A or B ?",
                                         "ACTION : A", "ACTION : B", "buy hold sell"] * 3)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, eos_token_id=tok.eos_token_id,
                                         pad_token_id=tok.pad_token_id, bos_token_id=None)).eval()
    pol = policy.Policy(model=model, tokenizer=tok, policy_version="base:tiny-random", device=torch.device("cpu"))
    batched = evaluate.greedy_decisions(pol, states, batch_size=64, max_new_tokens=6)
    single = evaluate.greedy_decisions(pol, states, batch_size=1, max_new_tokens=6)
    assert len(batched) == len(states) and list(batched["state_id"]) == list(states["state_id"])
    assert list(batched["completion"]) == list(single["completion"])
    for row in batched.itertuples():
        parsed = contract.parse(row.completion, "pairwise")
        assert row.valid == parsed.valid and (row.action == parsed.action if parsed.valid else row.action is None)


def _synthetic_market(con, n_tickers=6, n_days=160, seed=3):
    """A learnable market: each stock follows a persistent up/down regime (flips with p=0.05 a day), so the sign of
    its recent trend predicts the next session's open-to-close return. Written into `prices`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    days = pd.bdate_range("2021-01-04", periods=n_days).date
    rows = []
    for i in range(n_tickers):
        regime, close = 1 if i % 2 else -1, 50.0 + 10 * i
        for d in days:
            regime = -regime if rng.random() < 0.05 else regime
            open_ = close  # no overnight gap: the session's return carries the regime
            close = open_ * (1 + 0.004 * regime + rng.normal(0, 0.002))
            rows.append((f"SYN{i}", d, open_, max(open_, close), min(open_, close), close, 1_000_000 + i))
    con.register("synthetic", pd.DataFrame(rows, columns=["ticker", "date", "open", "high", "low", "close", "volume"]))
    con.execute("INSERT INTO prices SELECT ticker, date, open, high, low, close, NULL, volume, NULL, 'synthetic', now() FROM synthetic")
    con.unregister("synthetic")
    return list(days)


def test_a_policy_that_reads_the_trend_beats_random_and_base_on_the_learnable_market(db_file, tmp_path):
    """On the synthetic learnable market, states built by the states stage (trend style) carry the signal; a policy
    that reads it beats random and the base model with paired bootstrap intervals excluding zero, and the gate
    promotes it. (The trained GRPO checkpoint is scored by the same code from the training loop.)"""
    import re

    from hitchhiker import default_model, states

    con = db.connect(db_file)
    days = _synthetic_market(con)
    tok = default_model.build_tokenizer(["Stock A trend : UP . Stock B trend : DOWN . FLAT", "ACTION : A B"])
    window = days[60:120]
    states.build_states(con, states.StatesConfig(style="trend", max_pairs_per_date=6), window, tokenizer=tok)
    con.execute("INSERT INTO checkpoints (checkpoint_id, parent_id, run_id, base_model, path, algorithm, finetune, step, "
                "created_at, groups_used) VALUES ('reader', NULL, 'run', 'hitchhiker-tiny@test', '/nonexistent', 'grpo', 'full', 1, now(), [])")

    def reader(st):
        out = []
        for s in st.itertuples():
            text = json.loads(s.messages)[-1]["content"]
            trend = dict(re.findall(r"Stock ([AB]) trend: (UP|DOWN|FLAT)", text))
            choice = "B" if trend.get("B") == "UP" and trend.get("A") != "UP" or (trend.get("A") == "DOWN" and trend.get("B") == "FLAT") else "A"
            out.append({"state_id": s.state_id, "action": choice, "proportion": float(choice == "A"), "valid": True})
        return pd.DataFrame(out)

    config = EvalConfig(n_boot=500, reports_dir=str(tmp_path / "reports"))
    run, decision = gate.promotion_gate(con, "reader", str(window[0]), str(window[-1]), config,
                                        policies={"reader": reader, "base": _rule("A")})
    assert decision.promoted and decision.difference_ci[0] > 0
    for other in ("base", "baseline:random"):
        for metric in ("mean_reward_usd", "accuracy"):
            diff, lo, hi = gate.paired_difference(run, "reader", other, metric)
            assert 0 < lo <= diff <= hi, (other, metric)
    # half the pairs show the same trend word twice (no information): accuracy ~0.5 there, ~0.95 elsewhere
    assert run.summaries["reader"]["accuracy"] > 0.65 and run.summaries["reader"]["accuracy_p_value_by_date"] < 1e-6
    assert run.summaries["baseline:momentum"]["accuracy"] > 0.6  # the rule baseline that uses the same signal
    con.close()


def test_reward_per_training_iteration_follows_the_lineage(store):
    june = _trading_days(store, date(2016, 6, 1), date(2016, 6, 10))
    _replay_and_checkpoints(store, [("first", None, june[:3]), ("second", "first", june[3:6])])
    spec = "spec-test"
    for i, d in enumerate(june[:6]):
        ckpt = "first" if i < 3 else "second"
        store.execute("INSERT INTO rewards (rollout_id, reward_spec, state_id, group_id, policy_version, decision_date, mode, "
                      "valid, ticker_a, entry_date, exit_date, weight_a, weight_b, return_a, cost_usd, risk_usd, reward_usd, "
                      "computed_at) VALUES (?, ?, 's', ?, 'p', ?, 'pairwise', true, 'AAP', ?, ?, 1, -1, 0, 0, 0, ?, now())",
                      [f"{ckpt}-{d}-0", spec, f"g-{ckpt}-{d}", d, d, d, 0.01 * i])
    # iteration 1 = the parent's groups (rewards 0, .01, .02), iteration 2 = the child's own (.03, .04, .05)
    assert evaluate.training_rewards(store, "second", spec) == [(1, pytest.approx(0.01)), (2, pytest.approx(0.04))]
    assert evaluate.training_rewards(store, "second", "another-spec") == []


def test_elementwise_evaluation(store, tmp_path):
    for day in _trading_days(store, date(2016, 8, 1), date(2016, 8, 31)):
        for t in ("AAP", "XOM"):
            messages = [{"role": "user", "content": "Stock A trend: UP.\nWhat position should be held?"}]
            store.execute("INSERT INTO states VALUES (?, ?, now(), 'elementwise', 'trend', ?, ?, 'discrete', 1, 5, ?, ?, "
                          "true, NULL, 12, 'test', now(), [true])",
                          [f"e-{day}-{t}", day, [t], t, json.dumps(messages), json.dumps({"A": {"trend": "UP"}})])
    future = _future_returns(store)

    def seller(st):
        return pd.DataFrame({"state_id": st["state_id"], "action": "sell", "position": -1.0, "valid": True})

    run = evaluate.evaluate(store, "base:seller", "2016-08-01", "2016-08-31",
                            EvalConfig(mode="elementwise", n_boot=100, reports_dir=str(tmp_path)), policies={"base:seller": seller})
    assert set(run.summaries) == {"base:seller", "baseline:random", "baseline:always_buy", "baseline:momentum",
                                  "baseline:mean_reversion"}
    assert run.summaries["base:seller"]["accuracy"] is None
    rows = store.execute("SELECT d.reward_usd, s.tickers[1], s.decision_date FROM evaluation_decisions d "
                         "JOIN evaluations e USING (evaluation_id) JOIN states s USING (state_id) "
                         "WHERE e.subject = 'base:seller'").fetchall()
    assert len(rows) == 2 * len(_trading_days(store, date(2016, 8, 1), date(2016, 8, 31)))
    for reward, ticker, day in rows:  # short $1: -r - cost
        assert reward == pytest.approx(-future[(ticker, day)] - COST_USD, abs=1e-12)
    # short everything vs long everything: mirror images up to the costs
    assert run.summaries["base:seller"]["mean_reward_usd"] == pytest.approx(
        -run.summaries["baseline:always_buy"]["mean_reward_usd"] - 2 * COST_USD, abs=1e-12)


def test_stored_reward_exit_dates_of_ancestors_extend_the_cutoff(store):
    """A longer-horizon reward spec paid an ancestor's last decision later than the price calendar says: that counts."""
    june = _trading_days(store, date(2016, 6, 1), date(2016, 6, 30))
    _replay_and_checkpoints(store, [("parent", None, june[-3:]), ("child", "parent", june[:3])])
    store.execute("INSERT INTO rewards (rollout_id, reward_spec, state_id, group_id, policy_version, decision_date, mode, "
                  "valid, ticker_a, entry_date, exit_date, weight_a, weight_b, return_a, cost_usd, risk_usd, reward_usd, "
                  "computed_at) VALUES (?, 'h5', 's', ?, 'p', ?, 'pairwise', true, 'AAP', ?, DATE '2016-07-08', 1, -1, 0, 0, 0, 0, now())",
                  [f"parent-{june[-1]}-0", f"g-parent-{june[-1]}", june[-1], june[-1]])
    assert evaluate.training_cutoff(store, "child") == (june[-1], date(2016, 7, 8))
    with pytest.raises(SplitError, match="until 2016-07-08"):
        evaluate.check_split(store, "child", "2016-07-08")
    evaluate.check_split(store, "child", "2016-07-11")


def test_a_promoted_beta_head_is_not_the_language_model_champion(tmp_path):
    """The daily flow loads the champion as a language model: a promoted Beta head must not be returned."""
    con = db.connect(tmp_path / "champ.duckdb")
    con.execute("INSERT INTO checkpoints (checkpoint_id, run_id, base_model, path, algorithm, finetune, step, created_at, "
                "groups_used) VALUES ('head-1', 'r', 'beta-head', '/x', 'beta-head', 'full', 1, now(), [])")
    con.execute("INSERT INTO promotions (decided_at, candidate, promoted, metric, margin, reason) VALUES "
                "(now() - INTERVAL 1 DAY, 'grpo-1', true, 'mean_reward_usd', 0, 'won'), "
                "(now(), 'head-1', true, 'mean_reward_usd', 0, 'won')")
    assert gate.champion(con) == "grpo-1"
    con.close()


def test_the_orientation_of_a_pair_comes_from_its_tickers_not_from_splitting_its_key():
    """The pair key is the sorted tickers joined by '-' (sql/states/pairs.sql): 'BRK-B-XOM' cannot be split back at
    '-'. Turnover's fixed orientation (long the pair's first ticker) is read from the state's tickers."""
    import duckdb

    con = duckdb.connect()  # its own connection: a half-read result on the module's default one breaks later tests
    for a, b in [("BRK-B", "XOM"), ("XOM", "BRK-B"), ("BRK-B", "BRK"), ("EURUSD=X", "^GSPC"), ("AAP", "A")]:
        ((first,),) = con.execute("SELECT IF(?::VARCHAR < ?::VARCHAR, ?, ?)", [a, b, a, b]).fetchall()  # states' order
        assert evaluate.a_is_first_of_pair([a, b]) == (first == a), (a, b)


BASKETS = (("AAP", "ABBV", "ABC", "XOM"), ("MSFT", "AAPL", "XOM", "ABC"))


def _insert_baskets(con, start, end, history_days=5):
    """Listwise states of two K=4 baskets a day, their prompt order rotated each day."""
    for i, day in enumerate(_trading_days(con, start, end)):
        for basket in BASKETS:
            tickers = list(basket[i % 4:] + basket[:i % 4])
            messages = [{"role": "user", "content": "Stock A trend: UP.\nRank the stocks, best first."}]
            con.execute("INSERT INTO states VALUES (?, ?, now(), 'listwise', 'trend', ?, ?, 'ranking', 1, ?, ?, ?, "
                        "true, NULL, 12, 'test', now(), [true, true, true, true])",
                        [f"l-{day}-{'-'.join(sorted(tickers))}", day, tickers, "-".join(sorted(tickers)), history_days,
                         json.dumps(messages), json.dumps({"A": {"trend": "UP"}})])


def _ranker(future, reverse=False, invalid_every=0):
    """Ranks each basket by its realized next-day returns (an oracle; reversed: the worst first)."""
    def decide(states):
        out = []
        for i, s in enumerate(states.itertuples()):
            r = [future[(t, s.decision_date)] for t in s.tickers]
            order = sorted(range(len(r)), key=lambda j: r[j], reverse=not reverse)
            bad = invalid_every and i % invalid_every == 0
            out.append({"state_id": s.state_id, "action": None if bad else ">".join("ABCD"[j] for j in order),
                        "valid": not bad, "advisory_text": "Stock A trend is UP."})
        return pd.DataFrame(out)
    return decide


def test_listwise_evaluation_ranking_metrics_baselines_and_report(store, db_file, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    _insert_baskets(store, date(2016, 8, 1), date(2016, 9, 30))
    future = _future_returns(store)
    days = _trading_days(store, date(2016, 8, 1), date(2016, 9, 30))
    config = EvalConfig(mode="listwise", n_boot=200, reports_dir=str(tmp_path / "reports"))
    run = evaluate.evaluate(store, "base:oracle", "2016-08-01", "2016-09-30", config, compare_with=("base:worst",),
                            policies={"base:oracle": _ranker(future), "base:worst": _ranker(future, reverse=True)})
    assert set(run.summaries) == {"base:oracle", "base:worst", "baseline:random", "baseline:momentum",
                                  "baseline:mean_reversion", "baseline:buy_and_hold"}
    best, worst = run.summaries["base:oracle"], run.summaries["base:worst"]
    assert best["n_decisions"] == 2 * len(days) and best["list_sizes"] == [4]
    # a tie in realized returns (two legs that both returned exactly 0) is half right, whichever way it is ranked
    ties = sum(future[(a, d)] == future[(b, d)] for d in days for basket in BASKETS
               for i, a in enumerate(basket) for b in basket[i + 1:])
    assert ties >= 1
    n_pairs = 6 * best["n_decisions"]
    assert best["accuracy"] == pytest.approx(1 - 0.5 * ties / n_pairs, abs=1e-12)
    assert worst["accuracy"] == pytest.approx(0.5 * ties / n_pairs, abs=1e-12)
    assert best["spearman"] > 0.99 and worst["spearman"] < -0.99
    lo, hi = best["mean_reward_usd_ci"]
    assert 0 < lo <= best["mean_reward_usd"] <= hi
    assert run.summaries["baseline:buy_and_hold"]["accuracy"] is None  # a benchmark book, not a ranking

    # top_bottom: $1 long the first-ranked, $1 short the last, recomputed from raw prices
    decided = store.execute("SELECT d.action, d.reward_usd, d.picked_better, s.tickers, s.decision_date "
                            "FROM evaluation_decisions d JOIN evaluations e USING (evaluation_id) "
                            "JOIN states s USING (state_id) WHERE e.subject = 'base:worst'").fetchall()
    assert len(decided) == 2 * len(days)
    for action, reward, accuracy, tickers, day in decided:
        legs = dict(zip("ABCD", tickers))
        first, last = legs[action[0]], legs[action[-1]]
        assert reward == pytest.approx(future[(first, day)] - future[(last, day)] - 2 * COST_USD, abs=1e-12)
        assert accuracy <= 0.5 / 6  # none ordered right; a tie at most

    # momentum: the basket by its past 5-day return, highest first, recomputed from raw closes
    close = {(t, d): c for t, d, c in store.execute("SELECT ticker, date, close FROM prices").fetchall()}
    trading = _trading_days(store, date(2016, 5, 1), date(2016, 12, 31))
    momentum = store.execute("SELECT d.action, s.tickers, s.decision_date FROM evaluation_decisions d JOIN evaluations e "
                             "USING (evaluation_id) JOIN states s USING (state_id) "
                             "WHERE e.subject = 'baseline:momentum'").fetchall()
    for action, tickers, day in momentum:
        back = trading[trading.index(day) - 5]
        past = [close[(t, day)] / close[(t, back)] - 1 for t in tickers]
        assert action == ">".join("ABCD"[j] for j in sorted(range(4), key=lambda j: -past[j]))
    mean_reversion = run.summaries["baseline:mean_reversion"]
    assert mean_reversion["accuracy"] == pytest.approx(1 - run.summaries["baseline:momentum"]["accuracy"])

    # an invalid ranking scores 0 on every ranking metric
    half = evaluate.evaluate(store, "base:sloppy", "2016-08-01", "2016-09-30", config,
                             policies={"base:sloppy": _ranker(future, invalid_every=2)}).summaries["base:sloppy"]
    assert half["valid_rate"] == pytest.approx(0.5, abs=0.02)
    assert half["accuracy"] == pytest.approx(half["valid_rate"], abs=0.5 * ties / n_pairs + 1e-12)  # the tie, if valid
    assert half["top1_hit"] == pytest.approx(half["valid_rate"], abs=1e-12)

    text = run.report_path.read_text()
    assert "| policy | pair-ordering accuracy [95% CI] | top-1 hit [95% CI] | Spearman [95% CI] |" in text
    assert f"| base:oracle | {best['accuracy']:.3f} [" in text and f"| base:worst | {worst['accuracy']:.3f} [" in text

    # the command line: `hitchhiker eval --mode listwise` prints the same table for the untrained default model
    store.close()
    cli = [str(Path(sys.executable).parent / "hitchhiker"), "eval", "--db", str(db_file), "--checkpoint", "base",
           "--mode", "listwise", "--start", "2016-08-01", "--end", "2016-08-31", "--n-boot", "100"]
    p = subprocess.run(cli, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    header = next(line for line in p.stdout.splitlines() if line.startswith("policy "))
    assert "pair-ordering accuracy [95% CI]" in header and "Spearman [95% CI]" in header
    assert "baseline:momentum" in p.stdout and " listwise states" in p.stdout
