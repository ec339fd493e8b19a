"""Fault injection: a daily run killed with SIGKILL at every commit point of every stage, then re-run, ends with the
store and files of an uninterrupted run; two dailies at once end as one; a full disk fails clearly, half-writing nothing.

Each run is a child process (`python tests/test_faults.py '<json>'`) on one Prefect test server. The kill points are
`hitchhiker.faults.point(...)` calls at the real commit points (HITCHHIKER_KILL_AT=<name>[:<nth>]); the hook writes a
marker file before it kills, so a point that is never reached fails the test instead of passing silently.

The scenario: a template store holds 2016-03-01..04 of four demo tickers (prices before 03-07 only, no news, no names;
a checkpoint trained on 03-01, its gate waiting for 03-04's rewards). The daily run of 2016-03-07 then does every
stage for real: ingests prices, the feeds and the names, builds and samples 6 states, rewards 12 groups, trains on
the 24 untrained ones (2 steps, a checkpoint each), evaluates and gates the waiting checkpoint on 03-03..04
(eval_days=2: refused, a `promotions` row all the same) and publishes the report.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DAY = "2016-03-07"
TICKERS = ["AAPL", "AMZN", "JPM", "XOM"]
OPTIONS = dict(style="trend", group_size=4, n_boot=200, min_new_groups=6, train_deployment=None, eval_days=2,
               train_config={"groups_per_step": 12, "groups_per_micro_batch": 6, "save_every_steps": 1})
# Every kill point, in pipeline order: each run of the chain is killed at the next one, resuming what the previous
# run left. "<name>:<n>" kills the n-th time the point is passed in that run.
KILL_POINTS = [
    "prices.before-commit", "prices.after-commit",
    "news.before-commit", "news.after-commit:2",
    "names.before-commit", "names.after-commit",
    "states.before-commit", "states.after-commit",
    "rollouts.before-rename:2", "rollouts.group-written:3", "rollouts.group-written:1",
    "rewards.before-commit", "rewards.after-commit",
    "batch.before-commit", "batch.after-commit", "train-runs.after-insert",
    "checkpoint.before-commit", "checkpoint.after-commit", "checkpoint.after-commit",
    "registry.checkpoint-inserted",
    "evaluations.before-commit", "evaluations.after-commit",
    "promotions.before-commit", "promotions.after-commit",
]
# The gate writes its verdict into the report (and the evaluate flow publishes it) before the `promotions` row is
# committed, so a run killed after that commit leaves the whole report; this scenario keeps its files on the local
# disk, where the report is not published anywhere else (the "report.*" points are passed only with object storage).
# What differs between two uninterrupted runs of the same day from the same template (found by diffing two such runs),
# left out of the comparison, and why:
# - every `*_at` column and manifest/metadata key: wall-clock stamps of when a row or file was written;
# - `seconds` in training metrics (checkpoints.train_metrics, checkpoint metadata and manifests): wall-clock duration;
# - `rng.python` and `rng.numpy` in a checkpoint's trainer_state.pt: the process's unseeded Python and NumPy
#   generators, saved for resumption; training draws only from torch's seeded generator (compared);
# - the order of `target_modules` in adapter_config.json: PEFT writes a Python set, ordered by the per-process string
#   hash seed (compared as a set);
# - a run's `tensorboard/` event files: named after the wall clock, host and pid, and holding wall-clock times (the
#   same metrics are in the checkpoint metadata, compared);
# - the size and sha256 that a manifest lists for those three files (their contents are compared as above).
JSON_DROP = {"checkpoints": {"train_metrics": "$.seconds"}}
NORMALIZED = {"adapter_config.json", "hitchhiker_checkpoint.json", "trainer_state.pt"}
DB_NAME = "store.duckdb"
FULL_DISK_BYTES = 320 << 10  # RLIMIT_FSIZE of the full-disk run: no file grows past 320 KiB (a checkpoint needs more)


# --- the child process -------------------------------------------------------------------------------------------


def _child(spec: dict) -> None:
    fsize = spec.pop("fsize_limit", None)
    if fsize is not None:  # a full disk: writes past the limit fail with EFBIG instead of killing the process
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    from flows.daily import backfill, daily

    {"daily": daily, "backfill": backfill}[spec.pop("flow")](**spec)


def run_child(spec: dict, env: dict, log: Path, kill_at: str | None = None, mark: Path | None = None,
              wait: bool = True):
    """Start (and by default wait for) one flow run in a child process; returns the Popen."""
    env = dict(env)
    if kill_at:
        env.update(HITCHHIKER_KILL_AT=kill_at, HITCHHIKER_KILL_MARK=str(mark))
    out = open(log, "w")
    proc = subprocess.Popen([sys.executable, __file__, json.dumps(spec)], env=env, stdout=out, stderr=subprocess.STDOUT,
                            cwd=Path(__file__).resolve().parent.parent)
    proc.log = log
    if wait:
        finish(proc)
        out.close()
    return proc


def finish(proc: subprocess.Popen, timeout_s: float = 300) -> None:
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"run still going after {timeout_s} s:\n{proc.log.read_text()[-3000:]}") from None


def free_store_slot() -> None:
    """Free the store slot a SIGKILLed run held (flows/slots.py): Prefect frees it when the run's lease lapses (300 s
    by default); the chain frees it at once instead of waiting that out."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    from flows.slots import STORE_LIMIT

    with get_client(sync_client=True) as client:
        try:
            client.delete_global_concurrency_limit_by_name(STORE_LIMIT)
        except ObjectNotFound:
            pass


def daily_spec(work: Path, **extra) -> dict:
    return dict(flow="daily", date=DAY, db=str(work / DB_NAME), demo=True, prices_csv=str(work.parent / "prices"),
                tickers=TICKERS, retry_delay_s=0, **OPTIONS) | extra


# --- comparing stores and files ----------------------------------------------------------------------------------


def _digest(value) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def _table_rows(table) -> list[str]:
    """A Parquet table's rows without `*_at` columns, sorted."""
    keep = [c for c in table.column_names if not c.endswith("_at")]
    return sorted(repr(sorted(row.items())) for row in table.select(keep).to_pylist())


def _no_clock(value):
    """JSON-like value without wall-clock keys (`*_at`, `seconds`), recursively."""
    if isinstance(value, dict):
        return {k: _no_clock(v) for k, v in value.items() if not k.endswith("_at") and k != "seconds"}
    if isinstance(value, list):
        return [_no_clock(v) for v in value]
    return value


def _file_digest(p: Path) -> str:
    import pyarrow.parquet as pq

    if p.suffix == ".parquet":  # by rows: the bytes carry the writer's metadata
        return _digest(_table_rows(pq.read_table(p)))
    if p.name == "MANIFEST.json":
        manifest = json.loads(p.read_text())
        for f in manifest["files"]:
            if Path(f["name"]).name in NORMALIZED:
                f.pop("sha256"), f.pop("size")
        return _digest(json.dumps(_no_clock(manifest), sort_keys=True))
    if p.name == "adapter_config.json":
        config = json.loads(p.read_text())
        config["target_modules"] = sorted(config["target_modules"] or [])
        return _digest(json.dumps(config, sort_keys=True))
    if p.name == "hitchhiker_checkpoint.json":
        return _digest(json.dumps(_no_clock(json.loads(p.read_text())), sort_keys=True))
    if p.name == "trainer_state.pt":  # by value: torch.save's bytes also carry how storages happen to be shared
        import torch

        state = torch.load(p, weights_only=False)
        state["rng"] = {k: v for k, v in state["rng"].items() if k not in ("python", "numpy")}
        return _digest(_by_value(state))
    return _digest(p.read_bytes())


def _by_value(obj):
    """A value with every tensor replaced by its dtype, shape and a hash of its elements, dicts sorted by key."""
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        return ("tensor", str(t.dtype), tuple(t.shape), hashlib.sha256(data).hexdigest())
    if isinstance(obj, dict):
        return sorted((repr(k), _by_value(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return [_by_value(v) for v in obj]
    return repr(obj)


def snapshot(work: Path) -> dict[str, str]:
    """{table or file: digest} of everything a run leaves under `work`: each table's rows sorted, each Parquet file's
    rows, every other committed file's contents (run-specific parts left out: see the comment above JSON_DROP). Hidden
    names (a killed writer's temp files, invisible to every reader) are listed under '.hidden'."""
    import duckdb

    out: dict[str, str] = {}
    con = duckdb.connect(str(work / DB_NAME), read_only=True)
    try:
        tables = [t for (t,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE NOT temporary "
                                            "ORDER BY 1").fetchall()]
        for t in tables:
            cols = [JSON_DROP.get(t, {}).get(c) and f"json_remove({c}, '{JSON_DROP[t][c]}')" or c
                    for (c,) in con.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = ? "
                                            "ORDER BY column_index", [t]).fetchall() if not c.endswith("_at")]
            rows = con.execute(f"SELECT {', '.join(cols)} FROM {t}").fetchall()
            out[f"table {t}"] = f"{len(rows)} rows " + _digest(sorted(map(repr, rows)))
    finally:
        con.close()
    hidden = []
    for p in sorted(work.rglob("*")):
        rel = p.relative_to(work)
        if p.is_dir() or rel.as_posix().startswith(DB_NAME) or "tensorboard" in rel.parts:
            continue
        if any(part.startswith(".") for part in rel.parts):
            hidden.append(rel.as_posix())
        else:
            out[rel.as_posix()] = _file_digest(p)
    out[".hidden"] = ", ".join(hidden)
    return out


def differences(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """What differs between two snapshots (the hidden leftovers of killed writers excepted)."""
    return [f"{k}: {a.get(k)} != {b.get(k)}" for k in sorted((set(a) | set(b)) - {".hidden"}) if a.get(k) != b.get(k)]


# --- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(prefect_harness) -> dict:
    from prefect.settings import PREFECT_API_URL

    return dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_LOGGING_LEVEL="WARNING")


@pytest.fixture(scope="module")
def template(tmp_path_factory, env) -> Path:
    """The store and files before the daily run of DAY (see the module docstring); built once."""
    from hitchhiker import demo_data

    base = tmp_path_factory.mktemp("faults")
    full, early = base / "prices", base / "prices-early"
    full.mkdir()
    early.mkdir()
    for t in TICKERS:
        src = demo_data.paths()["prices_dir"] / f"{t}_data.csv.gz"
        shutil.copy(src, full / src.name)
        lines = gzip.open(src, "rt").read().splitlines(keepends=True)
        (early / f"{t}_data.csv").write_text("".join([lines[0]] + [x for x in lines[1:] if x[:10] < DAY]))
    work = base / "run"  # built where the runs happen: the store records absolute paths
    work.mkdir()
    common = dict(flow="backfill", db=str(work / DB_NAME), prices_csv=str(early), tickers=TICKERS, retry_delay_s=0)
    for start, end, train in (("2016-03-01", "2016-03-01", True), ("2016-03-02", "2016-03-04", False)):
        proc = run_child(common | dict(start=start, end=end, options=dict(OPTIONS, train=train)), env,
                         base / f"template-{start}.log")
        assert proc.returncode == 0, proc.log.read_text()[-5000:]
    return work.rename(base / "template")


def fresh_copy(template: Path) -> Path:
    """The template copied to <base>/run: every run happens at the same path, so stored paths compare equal."""
    work = template.parent / "run"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(template, work)
    return work


@pytest.fixture(scope="module")
def reference(template, env) -> dict[str, str]:
    """The snapshot after one uninterrupted daily run (two such runs differ only in what the comment above JSON_DROP lists)."""
    work = fresh_copy(template)
    proc = run_child(daily_spec(work), env, template.parent / "reference.log")
    assert proc.returncode == 0, proc.log.read_text()[-5000:]
    snap = snapshot(work)
    assert snap[".hidden"] == "" and sum(k.endswith("MANIFEST.json") for k in snap) >= 5, snap
    return snap


def test_killed_at_every_commit_point_then_rerun_equals_an_uninterrupted_run(template, reference, env):
    started = time.monotonic()
    work, mark = fresh_copy(template), template.parent / "killed-at"
    for i, point in enumerate(KILL_POINTS):
        mark.unlink(missing_ok=True)
        proc = run_child(daily_spec(work), env, template.parent / f"kill-{i:02d}.log", kill_at=point, mark=mark)
        assert proc.returncode == -signal.SIGKILL and mark.exists(), (
            f"kill point {point} was never reached (exit {proc.returncode}):\n{proc.log.read_text()[-3000:]}")
        print(f"killed at {point} ({mark.read_text().strip()})")
        free_store_slot()
    proc = run_child(daily_spec(work), env, template.parent / "kill-final.log")
    assert proc.returncode == 0, proc.log.read_text()[-5000:]
    after = snapshot(work)
    diff = differences(reference, after)
    print(f"{len(KILL_POINTS)} kill points, {len(diff)} differences "
          f"({len(reference) - 1} tables and files compared; {time.monotonic() - started:.0f} s)")
    print(f"hidden leftovers of killed writers: {after['.hidden'] or 'none'}")
    assert not diff, "\n".join(diff)


def test_two_daily_runs_at_once_end_as_one(template, reference, env):
    work = fresh_copy(template)
    procs = [run_child(daily_spec(work), env, template.parent / f"twice-{i}.log", wait=False) for i in range(2)]
    for proc in procs:
        finish(proc)
        assert proc.returncode == 0, proc.log.read_text()[-5000:]
    diff = differences(reference, snapshot(work))
    print(f"two runs at once: both ended, {len(diff)} differences")
    assert not diff, "\n".join(diff)


def test_a_full_disk_fails_clearly_and_leaves_only_whole_stages(template, reference, env):
    work = fresh_copy(template)
    before = snapshot(work)
    proc = run_child(daily_spec(work, fsize_limit=FULL_DISK_BYTES), env, template.parent / "full-disk.log")
    log = proc.log.read_text()
    assert proc.returncode == 1 and "File too large" in log, log[-5000:]
    after = snapshot(work)  # the store opens
    half = [k for k in sorted((set(after) | set(before)) - {".hidden"}) if after.get(k) not in (before.get(k), reference.get(k))]
    done = [k for k in sorted(after) if k != ".hidden" and after[k] != before.get(k)]
    print(f"full disk ({FULL_DISK_BYTES} bytes a file): {_first_error(log)}; {len(done)} tables/files whole as in a "
          f"finished run, the rest as before; {len(half)} half-written")
    assert not half, "\n".join(half)


def _first_error(log: str) -> str:
    lines = [x for x in log.splitlines() if "File too large" in x]
    return lines[-1].strip()[:200] if lines else "?"


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
