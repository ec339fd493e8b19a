"""How long a daily run with training holds the store, against how long its training runs on the gpu pool.

The real thing on one machine: moto's S3 server on 127.0.0.1 as the bucket, the real Prefect server, the
deployments of deployments/prefect.yaml, a process worker per pool. A backfill without training fills the replay
(on S3) with several days of groups; then one daily run trains on all of them through the `train/train` deployment.
Every hold of the store slot is logged (HITCHHIKER_SLOT_LOG); the train deployment's wall time comes from its flow
run. Baseline (the design before this change): the training task held the slot for its whole run, so the slot time
was at least the training time (ratio >= 1). While the training runs, a second daily run for another date (no
training) is started: it must get through ingest, states, sampling and rewards before the training ends.

    .venv/bin/python bench/offhost.py [--days 4] [--groups-per-step 1] [--finetune full]

The store work of a daily run is a few seconds whatever the training; the training's length is the workload's (by
default a 20M-parameter model of the default model's shape and tokenizer, fully fine-tuned, one group per optimizer
step, on the groups the default model sampled: ~1-2 min on 2 CPU cores, where a real model on a GPU takes minutes to
hours; `--train-layers 0` trains the 0.55M-parameter default model itself, ~40 s), so the ratio says how small the
store's share is for that workload.
Ends with: RESULT offhost ratio=<slot seconds of the daily run / train deployment seconds> target=<=0.1 PASS|FAIL
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from _result import report  # noqa: E402  (bench/ is the script's own folder on sys.path)

TARGET = 0.1
DAYS = ["2016-03-01", "2016-03-02", "2016-03-03", "2016-03-04", "2016-03-07", "2016-03-08", "2016-03-09", "2016-03-10",
        "2016-03-11", "2016-03-14"]
# every pair of the 10 shipped tickers each day (45), groups of 16: a day's buffer as a user would fill it
SMALL = {"style": "trend", "group_size": 16, "max_pairs_per_date": 45, "n_boot": 200}


def _moto(env: dict) -> subprocess.Popen:
    from prefect_server import free_port

    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    env.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
               AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                           "AWS_ENDPOINT_URL")})
    import s3fs

    for _ in range(600):
        try:
            s3fs.S3FileSystem(skip_instance_cache=True).mkdir("bench")
            return proc
        except Exception:  # not listening yet
            time.sleep(0.1)
    raise RuntimeError("moto_server did not start")


def _holds(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def _slot_seconds(holds: list[dict], start: float, end: float) -> float:
    """Seconds the slot was held (by anyone) inside [start, end]."""
    return sum(max(0.0, min(h["end"], end) - max(h["start"], start)) for h in holds)


def _trained_model(work: Path, layers: int, width: int) -> str | None:
    """A randomly initialised model of the default model's architecture and tokenizer, `layers` x `width`: what the
    training day trains (from groups the default model sampled), so that the training costs what a model of real
    width costs per token rather than the 0.55M-parameter default's."""
    if layers == 0:
        return None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from hitchhiker.default_model import default_model_path
    from hitchhiker.policy import load_tokenizer

    base = default_model_path()
    cfg = AutoConfig.from_pretrained(base)
    heads = max(width // 64, 1)
    cfg.update({"num_hidden_layers": layers, "hidden_size": width, "intermediate_size": 4 * width,
                "num_attention_heads": heads, "num_key_value_heads": heads, "head_dim": width // heads})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    out = work / f"trained-model-{layers}x{width}"
    model.save_pretrained(out)
    load_tokenizer(base).save_pretrained(out)
    print(f"trained model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters ({layers} layers x {width})")
    return str(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=4, help="days of groups (45 a day) the training run trains on")
    ap.add_argument("--groups-per-step", type=int, default=1)
    ap.add_argument("--finetune", choices=("lora", "full"), default="full")
    ap.add_argument("--train-layers", type=int, default=6, help="the trained model: the default model's shape and "
                    "tokenizer, this deep and wide (0: the default model itself)")
    ap.add_argument("--train-width", type=int, default=512)
    args = ap.parse_args()
    from prefect_server import HITCHHIKER, PREFECT, prefect_server, process_worker
    from test_flows_daily import PRICES
    from test_server import start, wait_final

    work = Path(tempfile.mkdtemp(prefix="hitchhiker-bench-offhost-"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env: dict = {}
    moto = _moto(env)
    try:
        with prefect_server(work / "server") as server_env:
            env = dict(server_env, **env, HITCHHIKER_PROJECT_DIR=str(ROOT), PREFECT_WORKER_QUERY_SECONDS="2",
                       HITCHHIKER_SLOT_LOG=str(work / "slot.jsonl"))
            for cmd in ([HITCHHIKER, "prefect-setup"],
                        [PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"]):
                done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
                if done.returncode:
                    raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with process_worker(env, "cpu", work, work / "worker-cpu.log"), \
                    process_worker(env, "gpu", work, work / "worker-gpu.log"), \
                    temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
                return _measure(args, work, start, wait_final, PRICES)
    finally:
        moto.terminate()


def _measure(args, work: Path, start, wait_final, prices: str) -> int:
    trained = _trained_model(work, args.train_layers, args.train_width)
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    db, storage = str(work / "store" / "hitchhiker.duckdb"), "s3://bench/hitchhiker"
    first, train_day, other_day = DAYS[0], DAYS[args.days], DAYS[args.days + 1]
    fill = start("backfill/backfill", {"start": first, "end": DAYS[args.days - 1], "db": db, "storage": storage,
                                       "prices_csv": prices, "retry_delay_s": 1,
                                       "options": {**SMALL, "train": False}})
    (fill,) = wait_final([fill.id], work, timeout_s=3600)
    assert fill.state.is_completed(), fill.state.message
    daily = start("daily/daily", {"date": train_day, "db": db, "storage": storage, "prices_csv": prices, **SMALL,
                                  "min_new_groups": 1, "model": trained, "train_timeout_s": 3600,
                                  "train_config": {"groups_per_step": args.groups_per_step, "finetune": args.finetune,
                                                   "groups_per_micro_batch": args.groups_per_step}})
    with get_client(sync_client=True) as client:  # the second daily run starts once the training is running
        while True:
            trains = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["train"])))
            if trains and trains[0].state is not None and trains[0].state.is_running():
                break
            if client.read_flow_run(daily.id).state.is_final():
                raise RuntimeError(f"the daily run ended before training started: {client.read_flow_run(daily.id).state}")
            time.sleep(1)
    other = start("daily/daily", {"date": other_day, "db": db, "storage": storage, "prices_csv": prices, **SMALL,
                                  "train": False})
    daily, other = wait_final([daily.id, other.id], work, timeout_s=7200)
    assert daily.state.is_completed() and other.state.is_completed(), (daily.state.message, other.state.message)
    with get_client(sync_client=True) as client:
        (train,) = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["train"])))
    train_s = (train.end_time - train.start_time).total_seconds()
    holds = _holds(work / "slot.jsonl")
    own = [h for h in holds if h["root_flow_run"] == str(daily.id)]  # the daily run and its subflows
    slot_all = sum(h["held_s"] for h in own)
    during = _slot_seconds(holds, train.start_time.timestamp(), train.end_time.timestamp())
    # the second run got through ingest, states, sampling and rewards (its `compute` task) while the training ran
    other_rewards = [h["end"] for h in holds if h["root_flow_run"] == str(other.id) and (h["task"] or "").startswith("compute")]
    other_done_first = bool(other_rewards) and max(other_rewards) < train.end_time.timestamp()
    print(f"train deployment run: {train_s:.1f} s on the gpu pool ({train.name})")
    by_task: dict[str, float] = {}
    for h in own:
        name = (h["task"] or "?").rsplit("-", 1)[0]
        by_task[name] = by_task.get(name, 0.0) + h["held_s"]
    print("store slot held by the daily run, per task: " + ", ".join(f"{k} {v:.2f} s" for k, v in
                                                                      sorted(by_task.items(), key=lambda kv: -kv[1])))
    print(f"daily run {train_day}: {(daily.end_time - daily.start_time).total_seconds():.1f} s wall, store slot held "
          f"{slot_all:.1f} s in {len(own)} holds; while the training ran the slot was held {during:.1f} s (by any run)")
    print(f"second daily run {other_day} (no training), started once training was running: its rewards were stored "
          f"{(max(other_rewards, default=float('nan')) - train.start_time.timestamp()):.1f} s after the training "
          f"started ({'before' if other_done_first else 'after'} it ended); the run took "
          f"{(other.end_time - other.start_time).total_seconds():.1f} s")
    print(f"baseline (training held the slot for its whole run): slot >= {slot_all + train_s:.1f} s, ratio >= "
          f"{(slot_all + train_s) / train_s:.2f}")
    ratio = slot_all / train_s
    # the second daily run must not have waited for the training: its rewards were stored before it ended
    return report("offhost", ratio, "<=", TARGET, checks=(("second_run_done_first", float(other_done_first), ">=", 1),))


if __name__ == "__main__":
    sys.exit(main())
