"""Completion tokens per second: hitchhiker's batched group sampler vs a naive loop of HF `generate`, one sample a call.

Same model (the default small model), same real pairwise states (prices and headlines from ../shared/data, the
full rendering), same per-sample temperatures (the naive loop reuses the ones the group sampler drew), same
max_new_tokens, both stopping at the end token; top_p 1. hitchhiker encodes each prompt once per group, decodes
`groups_per_batch` groups together and writes the groups to the replay buffer (the write is inside its time);
the baseline calls `model.generate(do_sample=True)` once per sample and keeps the tokens in memory. The two
alternate `--repeats` times (each hitchhiker run into a fresh replay root); medians are compared.

    .venv/bin/python bench/rollouts.py [--states 40] [--group-size 8] [--max-new-tokens 32] [--repeats 3]
Ends with: RESULT rollouts ratio=<hitchhiker tokens/s / naive tokens/s> target=>=5 PASS|FAIL
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _result import report  # noqa: E402  (bench/ is the script's own folder on sys.path)

TICKERS = ["A", "AAP", "ABBV", "ABC", "AAL", "AAPL", "ABT"]
TARGET = 5.0


def real_states(work: Path, n: int):
    """n real pairwise states (20 a trading day from 2016-03-01), built by the states stage."""
    from hitchhiker import db, news, prices, rollouts, states
    from hitchhiker.policy import load_tokenizer

    shared = Path(os.environ.get("HITCHHIKER_SHARED_DATA", Path(__file__).resolve().parent.parent.parent / "shared" / "data"))
    con = db.connect(work / "bench.duckdb")
    prices.ingest_csv(con, [shared / "prices" / "sp500_5yr" / f"{t}_data.csv" for t in TICKERS])
    news.ingest_csv(con, shared / "news" / "benzinga_analyst_ratings_sample.csv")
    days = states.trading_days(con, "2016-03-01", "2016-12-31")[: (n + 19) // 20]
    ids = states.build_states(con, states.StatesConfig(mode="pairwise"), days, TICKERS, tokenizer=load_tokenizer())
    out = rollouts.load_states(con, ids[:n])
    con.close()
    return out


def run_hitchhiker(policy, states, config, root: Path) -> tuple[float, int, dict]:
    """(seconds, completion tokens, {(state_id, sample_index): temperature})."""
    import pyarrow.parquet as pq

    from hitchhiker import replay, rollouts

    started = time.perf_counter()
    summary = rollouts.sample_states(policy, states, config, root)
    seconds = time.perf_counter() - started
    temps = {}
    for f in root.glob(replay.GLOB):
        for r in pq.read_table(f, columns=["state_id", "sample_index", "temperature"]).to_pylist():
            temps[(r["state_id"], r["sample_index"])] = r["temperature"]
    return seconds, summary["completion_tokens"], temps


def run_naive(policy, states, config, temps: dict) -> tuple[float, int]:
    """One `generate` call per sample, at that sample's temperature; (seconds, completion tokens)."""
    import torch

    tok, eos = policy.tokenizer, policy.eos_token_ids
    torch.manual_seed(config.seed)
    tokens = 0
    started = time.perf_counter()
    for s in states:
        ids = torch.tensor([policy.prompt_ids(s.messages)], device=policy.device)
        for k in range(config.group_size):
            with torch.no_grad():
                out = policy.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                            temperature=temps[(s.state_id, k)], top_p=1.0, top_k=0,
                                            max_new_tokens=config.max_new_tokens, pad_token_id=tok.pad_token_id,
                                            eos_token_id=eos)
            tokens += out.shape[1] - ids.shape[1]
    return time.perf_counter() - started, tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, default=40)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from hitchhiker.policy import load_policy
    from hitchhiker.rollouts import SamplingConfig

    policy = load_policy()
    config = SamplingConfig(group_size=args.group_size, max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory(prefix="bench-rollouts-") as tmp:
        work = Path(tmp)
        states = real_states(work, args.states)
        lengths = [len(policy.prompt_ids(s.messages)) for s in states]
        print(f"{len(states)} real pairwise states, prompts {min(lengths)}..{max(lengths)} tokens; "
              f"group_size {config.group_size}, max_new_tokens {config.max_new_tokens}, device {policy.device}", flush=True)
        run_hitchhiker(policy, states[:2], config, work / "warmup")  # one-time setup (kernels, allocator)
        hh_runs, naive_runs = [], []
        for k in range(args.repeats):  # alternating, so that load on a shared machine hits both alike
            hh_s, hh_tokens, temps = run_hitchhiker(policy, states, config, work / f"replay-{k}")  # a fresh root
            naive_s, naive_tokens = run_naive(policy, states, config, temps)
            hh_runs.append(hh_s)
            naive_runs.append(naive_s)
    hh_s, naive_s = statistics.median(hh_runs), statistics.median(naive_runs)
    hh_rate, naive_rate = hh_tokens / hh_s, naive_tokens / naive_s
    print(f"hitchhiker batched groups : {hh_tokens:6d} completion tokens in {hh_s:7.2f}s = {hh_rate:8.1f} tokens/s "
          f"(median of {', '.join(f'{s:.2f}' for s in hh_runs)})")
    print(f"naive generate per sample : {naive_tokens:6d} completion tokens in {naive_s:7.2f}s = {naive_rate:8.1f} tokens/s "
          f"(median of {', '.join(f'{s:.2f}' for s in naive_runs)})")
    ratio = hh_rate / naive_rate
    return report("rollouts", ratio, ">=", TARGET)


if __name__ == "__main__":
    sys.exit(main())
