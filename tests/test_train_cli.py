"""Smoke tests of `hitchhiker train` (GRPO, DPO, ORPO, resume) and `hitchhiker loop` as subprocesses, and the train flow."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hitchhiker import db
from train_helpers import scripted_buffer, tiny_model_dir


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "hitchhiker.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=os.environ)


def test_train_cli_grpo_resume_dpo_and_orpo(tmp_path):
    model = tiny_model_dir(tmp_path / "tiny")
    con, _, state_ids, _ = scripted_buffer(tmp_path, model, n_days=20)
    con.close()
    dbf = str(tmp_path / "buffer.duckdb")
    run_dir = str(tmp_path / "grpo-run")
    p = _cli("train", "--db", dbf, "--model", str(model), "--groups-per-step", "2", "--micro-batch", "1",
             "--save-every", "1", "--run-dir", run_dir)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "checkpoint grpo-" in p.stdout and f"on {len(state_ids)} groups" in p.stdout
    again = _cli("train", "--db", dbf, "--model", str(model), "--groups-per-step", "2", "--micro-batch", "1",
                 "--save-every", "1", "--run-dir", run_dir)  # the same run dir: finished, nothing to do
    assert again.returncode == 0 and "step " not in again.stdout, again.stderr[-2000:]
    p = _cli("train", "--db", dbf, "--model", str(model), "--algorithm", "dpo", "--margin-usd", "0.005",
             "--run-dir", str(tmp_path / "dpo-run"))
    assert p.returncode == 0, p.stderr[-2000:]
    p = _cli("train", "--db", dbf, "--model", str(model), "--algorithm", "orpo", "--margin-usd", "0.005",
             "--run-dir", str(tmp_path / "orpo-run"))
    assert p.returncode == 0 and "checkpoint orpo-" in p.stdout, p.stderr[-2000:]
    con = db.connect(dbf, read_only=True)
    assert {a for (a,) in con.execute("SELECT DISTINCT algorithm FROM checkpoints").fetchall()} == {"grpo", "dpo", "orpo"}
    con.close()
    bad = _cli("train", "--db", dbf, "--parent", "no-such-checkpoint", "--run-dir", str(tmp_path / "x"))
    assert bad.returncode == 2 and "no-such-checkpoint" in bad.stderr


def test_loop_cli_refuses_overlapping_dates(tmp_path):
    from hitchhiker.synthetic import SyntheticMarket, trading_days, write_market

    dbf = tmp_path / "l.duckdb"
    con = db.connect(dbf)
    write_market(con, SyntheticMarket(n_couples=1, n_days=40))
    con.close()
    days = [str(d) for d in trading_days(SyntheticMarket(n_days=40))]
    p = _cli("loop", "--db", str(dbf), "--train-start", days[15], "--train-end", days[30], "--eval-start", days[30],
             "--eval-end", days[38], "--model", str(tiny_model_dir(tmp_path / "tiny")))
    assert p.returncode == 2 and "held-out dates must come after" in p.stderr, p.stderr[-2000:]


def test_train_flow(tmp_path, prefect_harness):
    """The store side writes the batch and records the run, the train flow trains from the batch alone, the store
    side registers what it committed (with its lineage); registering again changes nothing."""
    from flows.train import prepare_training, register_training, train_flow

    model = tiny_model_dir(tmp_path / "tiny")
    con, _, state_ids, _ = scripted_buffer(tmp_path, model, n_days=18)
    con.close()
    dbf, run_url = str(tmp_path / "buffer.duckdb"), str(tmp_path / "flow-run")
    config = {"finetune": "lora", "lora_rank": 4, "groups_per_step": 4, "groups_per_micro_batch": 4}
    prepared = prepare_training(dbf, None, run_url, "grpo", config, None, str(model))
    assert prepared["batch_url"].startswith(str(tmp_path / "buffer_batches")) and not prepared["resumed"]
    out = train_flow(batch_url=prepared["batch_url"], run_url=run_url)
    assert out["groups"] == len(state_ids) and out["checkpoint_id"].startswith("grpo-")
    assert register_training(dbf, run_url) == {run_url: out["checkpoints"]}
    assert register_training(dbf) == {run_url: out["checkpoints"]}  # every recorded run; idempotent
    con = db.connect(dbf, read_only=True)
    assert con.execute("SELECT count(*), max(path) FROM checkpoints").fetchone() == (len(out["checkpoints"]), out["path"])
    con.close()
    again = prepare_training(dbf, None, run_url, "grpo", config, None, str(model))  # the run is recorded: its batch
    assert again == {**prepared, "resumed": True}
    # ORPO through the same flow: the buffer's preference pairs as a batch, trained as the batch says, registered
    orpo_url = str(tmp_path / "orpo-run")
    prepared = prepare_training(dbf, None, orpo_url, "orpo", {"lora_rank": 4, "margin_usd": 0.005}, None, str(model))
    out = train_flow(batch_url=prepared["batch_url"], run_url=orpo_url)
    assert out["checkpoint_id"].startswith("orpo-") and register_training(dbf, orpo_url) == {orpo_url: out["checkpoints"]}
