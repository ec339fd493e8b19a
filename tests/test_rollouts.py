"""Group sampling on real states with the default small model: stored log-probs equal a teacher-forced
recomputation, seeded runs repeat, a killed run resumes with every group exactly once, garbage output is stored
invalid with a reason, and 200 real pairwise states end up queryable by partition."""
from __future__ import annotations

import importlib.util
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import torch

from hitchhiker import cli, db, replay, rollouts
from hitchhiker.policy import PolicyConfig, load_policy, load_tokenizer
from hitchhiker.rollouts import SamplingConfig

HITCHHIKER = str(Path(sys.executable).parent / "hitchhiker")
# 7 real tickers: 21 pairs a date, of which states draw 20 (max_pairs_per_date): 10 trading days = 200 states.
TICKERS = ["A", "AAP", "ABBV", "ABC", "AAL", "AAPL", "ABT"]
FIRST, LAST = "2016-03-01", "2016-03-14"  # the full rendering (prices, volumes, headlines): 450-700 prompt tokens
KILL_FIRST, KILL_LAST = "2016-04-01", "2016-04-07"  # the short 'trend' rendering: a fast run to kill part-way


@pytest.fixture(scope="module")
def real_db(shared_data, tmp_path_factory) -> Path:
    """A store with the real prices of TICKERS, the Benzinga headlines, 200 full pairwise states (10 days) and 100
    trend-style pairwise states (5 later days)."""
    from hitchhiker import news, prices, states

    path = tmp_path_factory.mktemp("real") / "real.duckdb"
    con = db.connect(path)
    prices.ingest_csv(con, [shared_data / "prices" / "sp500_5yr" / f"{t}_data.csv" for t in TICKERS])
    news.ingest_csv(con, shared_data / "news" / "benzinga_analyst_ratings_sample.csv")
    tok = load_tokenizer()
    days = states.trading_days(con, FIRST, LAST)
    assert len(days) == 10
    assert len(states.build_states(con, states.StatesConfig(mode="pairwise"), days, TICKERS, tokenizer=tok)) == 200
    days = states.trading_days(con, KILL_FIRST, KILL_LAST)
    assert len(states.build_states(con, states.StatesConfig(mode="pairwise", style="trend"), days, TICKERS,
                                   tokenizer=tok)) == 100
    con.close()
    return path


@pytest.fixture(scope="module")
def policy():
    return load_policy()


def _states(path: Path, n_full: int, n_trend: int = 0) -> list[rollouts.State]:
    """Full-rendering states (450-700 prompt tokens) then trend ones (~40): one batch pads short prompts a lot."""
    con = db.connect(path, read_only=True)
    try:
        ids = rollouts.select_state_ids(con, FIRST, LAST)[:n_full] + rollouts.select_state_ids(con, KILL_FIRST, KILL_LAST)[:n_trend]
        return rollouts.load_states(con, ids)
    finally:
        con.close()


def _rows(root: Path) -> list[dict]:
    files = sorted(root.glob(replay.GLOB))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def _teacher_forced(policy, prompt: list[int], completion: list[int], temperature: float, top_p: float) -> list[float]:
    """Log-probs of the completion's tokens in one full forward pass (no cache, no padding), written independently
    of the sampler: log_softmax(logits / T); with top_p < 1, renormalized over the smallest set of most likely
    tokens whose probability reaches top_p."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = policy.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].double()
    out = []
    for step, token in zip(logits, completion):
        logp = torch.log_softmax(step / temperature, dim=-1)
        if top_p < 1:
            probs, order = torch.sort(logp.exp(), descending=True)
            keep = int((torch.cumsum(probs, 0) < top_p).sum()) + 1
            nucleus = order[:keep]
            assert token in nucleus.tolist()  # a token outside the nucleus cannot have been drawn
            logp = logp - torch.logsumexp(logp[nucleus], 0)
        out.append(float(logp[token]))
    return out


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_stored_logprobs_equal_a_teacher_forced_recomputation(real_db, policy, tmp_path, top_p):
    states = _states(real_db, 2, 3)
    config = SamplingConfig(group_size=4, max_new_tokens=24, top_p=top_p, groups_per_batch=5)
    summary = rollouts.sample_states(policy, states, config, tmp_path)
    rows = _rows(tmp_path)
    assert summary["groups_written"] == 5 and len(rows) == 20
    assert {len(r["completion_ids"]) for r in rows} != {24}  # some completions ended with the end token
    worst = 0.0
    for r in rows:
        assert 0.6 <= r["temperature"] <= 0.8 and r["top_p"] == top_p
        assert len(r["token_logprobs"]) == len(r["completion_ids"])
        assert math.isclose(r["logprob_sum"], sum(r["token_logprobs"]), abs_tol=1e-9)
        recomputed = _teacher_forced(policy, r["prompt_ids"], r["completion_ids"], r["temperature"], top_p)
        worst = max(worst, abs(sum(recomputed) - r["logprob_sum"]))
        assert all(abs(a - b) < 1e-4 for a, b in zip(recomputed, r["token_logprobs"]))
    assert worst < 1e-4
    # each sample has its own temperature
    by_group = {}
    for r in rows:
        by_group.setdefault(r["group_id"], set()).add(r["temperature"])
    assert all(len(t) == 4 for t in by_group.values())


def test_seeded_sampling_repeats_whatever_the_batching(real_db, policy, tmp_path):
    states = _states(real_db, 1, 4)

    def run(root, seed, per_batch):
        rollouts.sample_states(policy, states, SamplingConfig(group_size=4, max_new_tokens=16, seed=seed,
                                                              groups_per_batch=per_batch), tmp_path / root)
        return {r["rollout_id"]: r for r in _rows(tmp_path / root)}

    a, b, c = run("a", 0, 5), run("b", 0, 1), run("c", 1, 5)
    assert a.keys() == b.keys() and len(a) == 20
    for k in a:
        assert (a[k]["completion_ids"], a[k]["temperature"]) == (b[k]["completion_ids"], b[k]["temperature"])
        assert max(abs(x - y) for x, y in zip(a[k]["token_logprobs"], b[k]["token_logprobs"])) < 1e-5
    assert [c[k]["temperature"] for k in a] != [a[k]["temperature"] for k in a]  # another seed, other draws
    assert [c[k]["completion_ids"] for k in a] != [a[k]["completion_ids"] for k in a]


def test_kill_9_mid_run_then_a_rerun_leaves_every_group_exactly_once(real_db, tmp_path):
    path = tmp_path / "kill.duckdb"
    shutil.copy(real_db, path)
    root = tmp_path / "replay"
    cmd = [HITCHHIKER, "rollouts", "generate", "--db", str(path), "--start", KILL_FIRST, "--end", KILL_LAST, "--group-size", "4",
           "--max-new-tokens", "12", "--replay-root", str(root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not any(root.glob(replay.GLOB)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    before = {p: p.read_bytes() for p in root.glob(replay.GLOB)}
    assert 0 < len(before) < 100  # killed part-way

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"100 states {KILL_FIRST}..{KILL_LAST}: {100 - len(before)} groups written, {len(before)} already there" in done.stdout
    assert all(p.read_bytes() == b for p, b in before.items())  # what the killed run stored is kept as it was
    con = duckdb.connect(str(path))
    assert con.execute("SELECT count(*), count(DISTINCT group_id), count(DISTINCT rollout_id), count(DISTINCT state_id) "
                       "FROM replay").fetchall() == [(400, 100, 400, 100)]
    assert con.execute("SELECT DISTINCT count(*) FROM replay GROUP BY group_id").fetchall() == [(4,)]
    con.close()


def test_a_rerun_after_a_kill_samples_the_missing_groups_bit_for_bit_as_an_uninterrupted_run(real_db, tmp_path):
    """Groups lost to a kill are sampled again in the batches of the uninterrupted run: a batch of other shapes rounds
    its matrix products otherwise, and the re-sampled log-probs (sometimes the tokens) would differ in the last bits."""
    path = tmp_path / "resume.duckdb"
    shutil.copy(real_db, path)
    config = SamplingConfig(group_size=2, max_new_tokens=8, groups_per_batch=8)

    def run(root):
        return rollouts.generate_dates(path, FIRST, "2016-03-02", PolicyConfig(), config, root=root)

    run(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    files = sorted((tmp_path / "b").glob(replay.GLOB))
    lost = files[1::7]  # one group here and there, as a kill between two writes leaves them
    for f in lost:
        f.unlink()
    out = run(tmp_path / "b")
    assert (out["groups_written"], out["groups_skipped"], out["states_left"]) == (len(lost), 40 - len(lost), 0)

    def rows(root):
        return {r["rollout_id"]: {k: v for k, v in r.items() if k != "created_at"} for r in _rows(root)}

    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 80
    assert [k for k in a if a[k] != b[k]] == []


def test_garbage_output_is_stored_invalid_with_a_reason(real_db, policy, tmp_path):
    tok = policy.tokenizer
    # The head's output is replaced: two tokens share all the probability, a word and the end token, whatever the
    # temperature, so completions are "UP UP ..." (no action line) or empty.
    forced = torch.full((len(tok),), -50.0)
    up = tok("trend: UP", add_special_tokens=False).input_ids[-1]
    assert tok.decode([up]).strip() == "UP"
    forced[[up, tok.eos_token_id]] = 0.0
    hook = policy.model.get_output_embeddings().register_forward_hook(lambda module, args, out: torch.zeros_like(out) + forced)
    try:
        summary = rollouts.sample_states(policy, _states(real_db, 1, 4), SamplingConfig(group_size=4, max_new_tokens=6), tmp_path)
    finally:
        hook.remove()
    rows = _rows(tmp_path)
    assert summary["valid_rate"] == 0.0 and summary["actions"] == {"invalid": 20} and len(rows) == 20
    assert all(not r["valid"] and r["action"] is None for r in rows)
    reasons = {r["invalid_reason"] for r in rows}
    assert reasons == {"empty completion", "last line is not 'ACTION: ...'"}
    assert any("UP" in r["completion"] for r in rows)


def test_200_real_pairwise_states_are_stored_and_a_date_filter_reads_one_partition(real_db, tmp_path):
    path = tmp_path / "accept.duckdb"
    shutil.copy(real_db, path)
    started = time.perf_counter()
    summary = rollouts.generate_dates(path, FIRST, LAST, PolicyConfig(), SamplingConfig(group_size=4, max_new_tokens=16))
    seconds = time.perf_counter() - started
    assert (summary["states"], summary["groups_written"], summary["rollouts"]) == (200, 200, 800)
    print(f"200 states x 4 in {seconds:.1f}s, valid rate {summary['valid_rate']:.3f}, {summary['tokens_per_s']:.0f} tok/s")
    assert summary["valid_rate"] > 0.5
    con = duckdb.connect(str(path))  # a fresh connection to the file: the view is stored in it
    counts = con.execute("SELECT decision_date, pair, count(*) FROM replay GROUP BY ALL").fetchall()
    assert len(counts) == 200 and {c[2] for c in counts} == {4} and len({c[0] for c in counts}) == 10
    plan = con.execute("EXPLAIN ANALYZE SELECT count(*) FROM replay WHERE decision_date = DATE '2016-03-04'").fetchall()[0][1]
    # one date = one partition folder: its 20 pair files of the 200, and nothing else opened
    assert re.search(r"Scanning Files: 20/200\b", plan) and re.search(r"Total Files Read: 20\b", plan), plan
    pair = counts[0][1]
    plan = con.execute(f"EXPLAIN ANALYZE SELECT * FROM replay WHERE decision_date = DATE '{counts[0][0]}' AND pair = '{pair}'").fetchall()[0][1]
    assert re.search(r"Scanning Files: 1/200\b", plan), plan
    version, prompt_ids = con.execute("SELECT policy_version, prompt_ids FROM replay LIMIT 1").fetchall()[0]
    assert version == summary["policy_version"] and len(prompt_ids) > 300
    con.close()
    again = rollouts.generate_dates(path, FIRST, LAST, PolicyConfig(), SamplingConfig(group_size=4, max_new_tokens=16))
    assert (again["groups_written"], again["groups_skipped"]) == (0, 200)


def test_bad_selections_are_clear_errors(real_db, tmp_path, capsys):
    def gen(**kw):
        args = dict(db_file=real_db, start=FIRST, end=LAST, policy_config=PolicyConfig(), config=SamplingConfig(),
                    root=tmp_path)
        return rollouts.generate_dates(**{**args, **kw})

    with pytest.raises(ValueError, match="2016-02-30"):
        gen(start="2016-02-30")
    with pytest.raises(ValueError, match="before start"):
        gen(start=LAST, end=FIRST)
    with pytest.raises(ValueError, match="'both'"):
        gen(mode="both")
    with pytest.raises(ValueError, match="no-such-checkpoint"):
        gen(policy_config=PolicyConfig(checkpoint="no-such-checkpoint"))
    with pytest.raises(db.StoreError, match="missing.duckdb"):
        gen(db_file=tmp_path / "missing.duckdb")
    assert not any(tmp_path.glob(replay.GLOB))
    assert cli.main(["rollouts", "generate", "--db", str(real_db), "--start", FIRST]) == 2
    assert "--start needs --end" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_the_vllm_backend_without_vllm_names_the_extra(real_db, policy, tmp_path):
    with pytest.raises(ImportError, match=r"\[vllm\]"):
        rollouts.sample_states(policy, _states(real_db, 1), SamplingConfig(backend="vllm"), tmp_path)
    assert not any(tmp_path.glob(replay.GLOB))


@pytest.mark.parametrize("sliding", [False, True])
def test_group_sampler_matches_a_full_forward_of_each_completion(sliding):
    """Prompts of unequal lengths batched together give, per sample, the log-probabilities of a plain forward of
    prompt + completion: with full attention (right-padded unmasked prefill, the sampler's own KV buffer) and with
    a sliding-window layer as some hub models have (left-padded masked prefill, that layer repeated by its own
    method; right padding would leave only padding in its window)."""
    from types import SimpleNamespace

    from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=128, use_sliding_window=sliding, sliding_window=12,
        max_window_layers=1, layer_types=["sliding_attention" if sliding else "full_attention", "full_attention"])).eval()
    kinds = {type(layer).__name__ for layer in DynamicCache(config=model.config).layers}
    assert kinds == ({"DynamicSlidingWindowLayer", "DynamicLayer"} if sliding else {"DynamicLayer"})
    fake = SimpleNamespace(model=model, device=torch.device("cpu"), tokenizer=SimpleNamespace(pad_token_id=0),
                           eos_token_ids=[1])
    prompts = [list(range(2, 2 + n)) for n in (9, 30, 17)]  # longer and shorter than the window
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    temperatures = torch.tensor([[0.6, 0.9], [0.7, 0.8], [1.0, 0.65]], dtype=torch.float64)
    groups = rollouts.sample_token_groups(fake, prompts, temperatures, generators,
                                          SamplingConfig(group_size=2, max_new_tokens=10))
    for prompt, temps, group in zip(prompts, temperatures.tolist(), groups):
        for t, (ids, lps) in zip(temps, group):
            assert len(ids) == len(lps) >= 1
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1]
            expected = torch.log_softmax(logits / t, -1).gather(1, torch.tensor(ids)[:, None]).squeeze(1)
            assert torch.allclose(expected, torch.tensor(lps, dtype=torch.float32), atol=1e-4)


def test_a_state_that_cannot_be_sampled_is_reported_and_the_rest_of_its_date_is_written(real_db, tmp_path, caplog):
    """One state whose group cannot be stored (here a pair that names no folder) is skipped with its reason; every
    other group of its date is written, and a re-run writes nothing new and reports it again."""
    path = tmp_path / "one_bad.duckdb"
    shutil.copy(real_db, path)
    con = db.connect(path)
    ids = rollouts.select_state_ids(con, KILL_FIRST, KILL_FIRST)
    bad = ids[3]
    con.execute("UPDATE states SET pair = '' WHERE state_id = ?", [bad])
    con.close()
    root = tmp_path / "replay"
    config = SamplingConfig(group_size=2, max_new_tokens=6)
    with caplog.at_level("WARNING", logger="hitchhiker.rollouts"):
        summary = rollouts.generate_dates(path, KILL_FIRST, KILL_FIRST, PolicyConfig(), config, root)
    assert (summary["states"], summary["groups_written"]) == (len(ids), len(ids) - 1)
    assert list(summary["states_failed"]) == [bad] and "pair ''" in summary["states_failed"][bad]
    assert bad in caplog.text and "pair ''" in caplog.text
    con = duckdb.connect(str(path))
    assert sorted(s for (s,) in con.execute("SELECT DISTINCT state_id FROM replay").fetchall()) == sorted(set(ids) - {bad})
    con.close()
    again = rollouts.generate_dates(path, KILL_FIRST, KILL_FIRST, PolicyConfig(), config, root)
    assert (again["groups_written"], list(again["states_failed"])) == (0, [bad])


YAHOO_SYMBOLS = {"EURUSD=X": "AAP", "BRK-B": "ABBV", "^GSPC": "ABC", "XOM": "XOM"}  # symbol -> real rows renamed


def test_yahoo_symbols_go_from_prices_to_rewards_and_read_back_from_the_replay_view(shared_data, tmp_path):
    """Tickers as Yahoo writes them ('=', '-', '^'): prices -> states -> rollouts -> rewards -> the replay view, each
    pair read back as stored, each reward priced on its state's own tickers (not on the pair split at '-')."""
    import csv

    from hitchhiker import prices, rewards, states

    long_csv = tmp_path / "yahoo.csv"
    with open(long_csv, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["ticker", "date", "open", "high", "low", "close", "adj_close", "volume"])
        for symbol, source in YAHOO_SYMBOLS.items():
            with open(shared_data / "prices" / "sp500_5yr" / f"{source}_data.csv") as g:
                for r in csv.DictReader(g):
                    if "2016-01-01" <= r["date"] <= "2016-04-29":
                        out.writerow([symbol, r["date"], r["open"], r["high"], r["low"], r["close"], "", r["volume"]])
    path = tmp_path / "yahoo.duckdb"
    con = db.connect(path)
    assert prices.ingest_csv(con, long_csv).rejected == 0
    days = states.trading_days(con, "2016-03-01", "2016-03-02")
    tok = load_tokenizer()
    for mode in ("pairwise", "elementwise"):
        states.build_states(con, states.StatesConfig(mode=mode, style="trend"), days, list(YAHOO_SYMBOLS), tokenizer=tok)
    pairs = {p for (p,) in con.execute("SELECT pair FROM states").fetchall()}
    assert {"BRK-B-EURUSD=X", "BRK-B-XOM", "BRK-B-^GSPC", "EURUSD=X", "^GSPC"} <= pairs and len(pairs) == 10
    con.close()

    root = tmp_path / "replay"
    summary = rollouts.generate_dates(path, "2016-03-01", "2016-03-02", PolicyConfig(),
                                      SamplingConfig(group_size=2, max_new_tokens=8), root)
    assert (summary["states"], summary["groups_written"], summary["states_failed"]) == (20, 20, {})
    con = db.connect(path)
    counts = rewards.compute_rewards(con, rewards.RewardSpec(), root)
    assert (counts["inserted"], counts["waiting"], counts["unpriceable"]) == (40, 0, 0)
    assert con.execute("SELECT count(*) FROM replay AS r JOIN states AS s USING (state_id) "
                       "WHERE r.pair = s.pair AND r.decision_date = s.decision_date").fetchall() == [(40,)]
    assert {p for (p,) in con.execute("SELECT DISTINCT pair FROM replay").fetchall()} == pairs
    assert con.execute("SELECT count(*) FROM rewards AS w JOIN states AS s USING (state_id) "
                       "WHERE [w.ticker_a] || IF(w.ticker_b IS NULL, [], [w.ticker_b]) = s.tickers").fetchall() == [(40,)]
    assert con.execute("SELECT count(*) FROM replay WHERE pair = 'EURUSD=X'").fetchall() == [(4,)]  # two days x 2
    con.close()
