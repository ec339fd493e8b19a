"""The look-ahead audit on real prices and headlines: a checkpoint planted with the evaluation window's own outcomes is
flagged by the prompt tests, the clean checkpoint of the same run is not; the perturbations, the cutoffs, the flag
rule's false-flag rate under the null, and the command."""
import json
import subprocess
import sys
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hitchhiker import audit, cutoffs, db, demo_data, names, news, replay
from hitchhiker.audit import AuditConfig
from price_helpers import insert_sp500_prices

TICKERS = ["A", "AAP", "ABBV", "ABC", "AAPL", "MSFT", "JNJ", "JPM", "XOM", "AMZN"]  # headlines for the first four
LEAK = "outcomes:eval-window"  # the replay rows a planted leak is trained on
EARLIER = "outcomes:earlier-window"


def _outcome_groups(con, tok, state_ids, version, root):
    """A group per state holding both answers, 'ACTION: A' and 'ACTION: B', written to the replay: the rewards SQL
    then pays each, and sql/train/dpo_pairs.sql pairs the realized better answer (chosen) with the other. What a
    corpus that reports how the day ended teaches. (DPO reads no behaviour log-probs; the stored ones are nominal.)"""
    from datetime import datetime, timezone

    from hitchhiker.rollouts import group_id, load_states

    now = datetime.now(timezone.utc)
    for state in load_states(con, state_ids):
        gid = group_id(state.state_id, version)
        prompt = list(tok.apply_chat_template(state.messages, add_generation_prompt=True, tokenize=True, return_dict=False))
        rows = []
        for k, action in enumerate("AB"):
            text = f"ACTION: {action}"
            completion = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
            rows.append({
                "rollout_id": f"{gid}-{k}", "state_id": state.state_id, "group_id": gid, "mode": state.mode,
                "policy_version": version, "sample_index": k, "temperature": 1.0, "top_p": 1.0, "prompt_ids": prompt,
                "completion": text, "completion_ids": completion, "token_logprobs": [-0.7] * len(completion),
                "logprob_sum": -0.7 * len(completion), "action": action, "proportion": float(action == "A"),
                "position": None, "advisory_text": "", "valid": True, "invalid_reason": None, "created_at": now,
            })
        replay.write_group(root, state.decision_date, state.pair, gid, rows)
    return {group_id(s, version) for s in state_ids}


@pytest.fixture(scope="module")
def planted(tmp_path_factory, shared_data):
    """One store, one run: a clean checkpoint (DPO on an earlier window's anonymized states and their outcomes) and its
    child, the planted leak (DPO on the evaluation window's own outcomes, in the named and dated rendering a news
    archive would hold), each audited on the 50 anonymized states of the evaluation window (one pair a day)."""
    from hitchhiker.batches import default_reward_spec, preference_pairs, train_dpo
    from hitchhiker.policy import load_tokenizer
    from hitchhiker.rewards import compute_rewards
    from hitchhiker.states import StatesConfig, build_states, trading_days
    from hitchhiker.train.config import DPOConfig

    folder = tmp_path_factory.mktemp("audit")
    db_file = folder / "audit.duckdb"
    con = db.connect(db_file)
    insert_sp500_prices(con, shared_data, TICKERS, "2016-04-01", "2016-12-31")
    news.ingest_csv(con, shared_data / "news" / "benzinga_analyst_ratings_sample.csv")
    names.ingest_file(con, demo_data.paths()["names"])
    tok = load_tokenizer()  # the default small model's (built on first use)
    days = trading_days(con, "2016-05-02", "2016-12-20")
    window, earlier = days[-55:-5], days[-110:-60]  # 50 decision dates each, ten trading days apart
    config = StatesConfig(max_pairs_per_date=1)  # full rendering, anonymized; one pair a date: 50 dates of one state
    eval_ids = build_states(con, config, window, TICKERS, tokenizer=tok)
    earlier_ids = build_states(con, config, earlier, TICKERS, tokenizer=tok)
    named_ids = build_states(con, StatesConfig(max_pairs_per_date=1, anonymize=False), window, TICKERS, tokenizer=tok)
    assert len(eval_ids) == len(earlier_ids) == len(named_ids) == 50
    root = replay.default_root(db_file)
    clean_groups = _outcome_groups(con, tok, earlier_ids, EARLIER, root)
    leak_groups = _outcome_groups(con, tok, named_ids, LEAK, root)
    replay.ensure_view(con, root)
    compute_rewards(con)
    pairs = preference_pairs(con, default_reward_spec())

    def dpo(epochs):  # full weights, a constant 1e-3, and DPO's loss plus the chosen answer's likelihood (TRL 'sft')
        return DPOConfig(finetune="full", learning_rate=1e-3, epochs=epochs, batch_size=8, extra={
            "precompute_ref_log_probs": True, "lr_scheduler_type": "constant", "loss_type": ["sigmoid", "sft"]})

    clean = train_dpo(con, dpo(2), folder / "clean", pairs=[p for p in pairs if p["group_id"] in clean_groups])
    leak = train_dpo(con, dpo(60), folder / "leak", parent_id=clean.checkpoint_id,
                     pairs=[p for p in pairs if p["group_id"] in leak_groups])
    n_states = con.execute("SELECT count(*) FROM states").fetchone()[0]
    audit_config = AuditConfig(n_boot=1000, reports_dir=str(folder / "reports"))
    start, end = str(window[0]), str(window[-1])
    results = {name: audit.run_audit(con, ckpt, start, end, audit_config)
               for name, ckpt in (("clean", clean.checkpoint_id), ("leak", leak.checkpoint_id))}
    assert con.execute("SELECT count(*) FROM states").fetchone()[0] == n_states  # the named twins were built aside
    con.close()
    return SimpleNamespace(db_file=db_file, start=start, end=end, clean=clean.checkpoint_id, leak=leak.checkpoint_id,
                           results=results, earlier=(earlier[0], earlier[-1]))


@pytest.mark.slow  # the planted store: two DPO runs on the default small model (about 2 min)
def test_the_planted_leak_is_flagged_and_the_clean_checkpoint_is_not(planted):
    leak, clean = planted.results["leak"], planted.results["clean"]
    for r in (leak, clean):
        print(f"\n{r.candidate}: {r.verdict}")
        for t in r.tests:
            print(f"  {t.perturbation} {t.metric}: {t.revealing:.4f} vs {t.hiding:.4f}, {t.difference:+.4f} "
                  f"[{t.ci[0]:+.4f}, {t.ci[1]:+.4f}] p={t.p_value:.3g}")
        assert r.n_states == 50 and r.n_unmatched == 0 and r.n_numbers_differ == 0  # every twin found, same numbers
    # the leak is right by memory of the named rendering it read, and not on the same numbers anonymized
    named_accuracy = leak.test("named", "accuracy")
    assert leak.flagged and not leak.passed and named_accuracy.significant
    assert named_accuracy.revealing >= 0.8 and named_accuracy.ci[0] > 0 and named_accuracy.n_dates == 50
    assert leak.summaries["named"]["accuracy"] > leak.summaries["anonymized"]["accuracy"] + 0.2
    assert "FLAGGED" in leak.verdict and "named - anonymized accuracy" in leak.verdict
    # its lineage trained on the window's outcomes: contaminated on that count too
    assert leak.contamination and "overlaps what it was trained on" in leak.contamination
    assert not clean.flagged and not clean.inconclusive and clean.contamination is None and clean.passed
    assert not any(t.significant for t in clean.tests)


@pytest.mark.slow
def test_the_report_says_what_a_difference_means(planted):
    path = planted.results["leak"].report_path
    text = path.read_text()
    assert text.startswith(f"# Look-ahead audit of {planted.leak}") and "FLAGGED" in text
    assert "What a significant difference means" in text and "recalls how it ended" in text
    assert "| named - anonymized | accuracy |" in text and "contamination:" in text
    for png in ("differences.png", "equity.png", "actions.png"):
        assert (path.parent / png).stat().st_size > 1000
    stored = json.loads((path.parent / "audit.json").read_text())
    assert stored["flagged"] is True and stored["passed"] is False and len(stored["tests"]) == 4


@pytest.mark.slow
def test_contamination_by_lineage_and_by_knowledge_cutoff(planted):
    con = db.connect(planted.db_file, read_only=True)
    try:
        assert cutoffs.contamination(con, planted.clean, None, planted.start, planted.end) is None
        # the clean checkpoint's own training window is contaminated for it
        note = cutoffs.contamination(con, planted.clean, None, *planted.earlier)
        assert "overlaps what it was trained on" in note
        # a base model that read the web up to 2016-11-30 knows part of the window; one with an unknown cutoff, all
        assert "2016-10-04 .. 2016-11-30 of the window" in cutoffs.contamination(
            con, "base:some/model", None, planted.start, planted.end, override="2016-11-30")
        assert "unknown" in cutoffs.contamination(con, "base:some/model", None, planted.start, planted.end)
        assert cutoffs.contamination(con, "base", None, planted.start, planted.end) is None  # the default model
        assert "knowledge cutoff of 2023-12-31" in cutoffs.contamination(
            con, "base:meta-llama/Llama-3.1-8B-Instruct", None, "2023-06-01", "2024-03-01")
    finally:
        con.close()


def test_knowledge_cutoffs_come_from_model_cards_or_a_setting():
    assert cutoffs.knowledge_cutoff("meta-llama/Llama-3.1-8B-Instruct").cutoff == date(2023, 12, 31)
    assert cutoffs.knowledge_cutoff("meta-llama/meta-llama-3-8b").cutoff == date(2023, 3, 31)  # ids are case-free
    assert cutoffs.knowledge_cutoff("google/gemma-3-1b-it").source == "model card"
    default = cutoffs.knowledge_cutoff(None)
    assert default.cutoff is None and not default.knows_markets  # trained on synthetic prompts only
    unknown = cutoffs.knowledge_cutoff("Qwen/Qwen2.5-0.5B-Instruct")  # its card states no cutoff: none guessed
    assert unknown.source == "unknown" and unknown.cutoff is None
    assert cutoffs.knowledge_cutoff("Qwen/Qwen2.5-0.5B-Instruct", "2024-06-30") == cutoffs.KnowledgeCutoff(
        "Qwen/Qwen2.5-0.5B-Instruct", date(2024, 6, 30), "setting")
    with pytest.raises(ValueError, match="knowledge cutoff"):
        cutoffs.knowledge_cutoff("x", "June 2024")


def test_date_shift_moves_every_date_and_keeps_weekdays():
    text = "Decision date: 2016-10-04, after the close.\n<news>\n2016-09-30: Stock A Upgraded\n</news>\nPT $2016-99-99"
    shifted = audit.shift_dates(text, AuditConfig().date_shift_days)
    assert "2026-09-22" in shifted and "2026-09-18" in shifted and "2016" not in shifted.replace("2016-99-99", "")
    assert date(2026, 9, 22).weekday() == date(2016, 10, 4).weekday()
    assert "$2016-99-99" in shifted  # not a date: left alone
    assert audit.shift_dates(shifted, -AuditConfig().date_shift_days) == text


def test_the_flag_rule_rarely_flags_a_model_that_ignores_names_and_dates():
    """Under the null (each prompt's answer drawn from the same law; a third of the answers change between the two
    prompts, as noise would change them), over 400 windows of 50 dates x 2 decisions with rewards of real size, the
    four one-sided tests at alpha/4 with the bootstrap condition flag at most about alpha = 5 %."""
    rng = np.random.default_rng(0)
    config = AuditConfig(n_boot=500)
    flagged = 0
    for _ in range(400):
        dates = np.repeat(np.arange(50), 2)
        spread = np.abs(rng.normal(0, 0.015, dates.size))  # |r_A - r_B| of each pair
        hits = []
        for perturbation in audit.PERTURBATIONS:
            hide = rng.random(dates.size) < 0.5  # picked the better stock on the hiding prompt
            reveal = np.where(rng.random(dates.size) < 2 / 3, hide, rng.random(dates.size) < 0.5)
            for metric, f in (("accuracy", lambda x: x.astype(float)), ("mean_reward_usd", lambda x: np.where(x, spread, -spread) - 0.001)):
                hits.append(audit.paired_test(perturbation, metric, dates, f(reveal), f(hide), config).significant)
        flagged += any(hits)
    print(f"\nfalse flags: {flagged} of 400")
    assert flagged <= 24  # 6 %: alpha plus room for 400 draws (binomial sd about 1.1 %)


@pytest.mark.slow
def test_audit_command(planted):
    """The command on the planted store: the leak's table, verdict and report; exit 1 (flagged), 2 on a bad id."""
    command = [str(Path(sys.executable).parent / "hitchhiker")]
    args = ["audit", "--db", str(planted.db_file), "--start", planted.start, "--end", planted.end, "--n-boot", "300"]
    p = subprocess.run(command + args + ["--checkpoint", planted.leak], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr
    assert "named - anonymized" in p.stdout and "verdict: FLAGGED" in p.stdout and "report:" in p.stdout
    report_path = Path(p.stdout.split("report: ")[1].strip())
    assert report_path.is_file() and report_path.parent.parent == Path(str(planted.db_file)[:-len(".duckdb")] + "_reports")
    p = subprocess.run(command + args + ["--checkpoint", "no-such-checkpoint"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "error:" in p.stderr and "Traceback" not in p.stderr
