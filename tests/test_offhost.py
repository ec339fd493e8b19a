"""Several machines on one: a real S3-compatible server (moto) on 127.0.0.1, the real Prefect server, process workers
on both pools, and a gpu worker that cannot read the store: it runs as user `nobody`, in another working directory,
with its own home, while the store's folder is root's alone (mode 700). The daily pipeline (a backfill of five
days) runs with `storage=s3://...`: rollouts land in the replay on S3, rewards are computed, the gpu pool trains
from a batch in the bucket and commits checkpoints there, the orchestrator registers them with their lineage, and
the gate evaluates a candidate. Sampling runs on the gpu pool too (state snapshots in the bucket).

Also here: the trainer imports and runs where importing duckdb raises.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from prefect_server import HITCHHIKER, PREFECT, prefect_server, process_worker
from s3_server import s3  # noqa: F401 (the module's S3 server)
from test_flows_daily import PRICES, TICKERS
from test_server import start, wait_final

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NOBODY = "nobody"
DAYS = ("2016-03-01", "2016-03-07")  # Tuesday .. Monday: five trading days (the gate needs two matured ones)
OPTIONS = {"style": "trend", "group_size": 4, "n_boot": 200, "eval_days": 2, "min_new_groups": 6,
           "train_config": {"groups_per_step": 6, "groups_per_micro_batch": 6}, "train_timeout_s": 400}


@contextmanager
def _traversable_by_others(*paths: Path):
    """Let other users traverse (o+x, never read) every folder above these paths for the test's duration: the venv's
    interpreter may live under /root (pyenv) and the checkout in a root-only folder; restored afterwards."""
    changed: list[tuple[Path, int]] = []
    try:
        for path in paths:
            for folder in [p for p in Path(path).resolve().parents if p != Path("/")]:
                mode = folder.stat().st_mode
                if not mode & stat.S_IXOTH and folder not in [c for c, _ in changed]:
                    folder.chmod(mode | stat.S_IXOTH)
                    changed.append((folder, mode))
        yield
    finally:
        for folder, mode in reversed(changed):
            folder.chmod(stat.S_IMODE(mode))


def _gpu_box() -> Path:
    """A home for the gpu worker that `nobody` owns, outside the tests' root-only temp folders, holding a copy of
    the default small model's cache (as the GPU machine would have built it)."""
    from hitchhiker.default_model import default_model_path, hitchhiker_home

    model = default_model_path()  # built here first when the cache is empty
    box = Path(tempfile.mkdtemp(prefix="hitchhiker-gpu-box-"))
    rel = model.relative_to(hitchhiker_home())
    shutil.copytree(model, box / "hitchhiker" / rel)
    (box / "tmp").mkdir()
    for p in [box, *box.rglob("*")]:
        shutil.chown(p, NOBODY)
    box.chmod(0o755)
    return box


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3):  # noqa: F811
    if os.geteuid() != 0:
        pytest.fail("the off-host test runs the gpu worker as another user: it needs root (as CI has)")
    home = tmp_path_factory.mktemp("offhost")
    store_dir = home / "store"
    store_dir.mkdir(mode=0o700)
    box = _gpu_box()
    python = Path(os.path.realpath(sys.executable))
    with _traversable_by_others(python, Path(sys.executable), PROJECT_ROOT / "flows"), \
            prefect_server(home / "server") as env:
        env = dict(env, HITCHHIKER_PROJECT_DIR=str(PROJECT_ROOT), PREFECT_WORKER_QUERY_SECONDS="2",
                   HITCHHIKER_SLOT_LOG=str(home / "slot.jsonl"))
        setup = subprocess.run([HITCHHIKER, "prefect-setup"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
        assert setup.returncode == 0, setup.stderr
        deploy = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"],
                                env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        gpu_env = {k: v for k, v in env.items() if not k.startswith(("HITCHHIKER_DB", "HITCHHIKER_SLOT"))}
        gpu_env.update(HOME=str(box), PREFECT_HOME=str(box / "prefect"), HITCHHIKER_HOME=str(box / "hitchhiker"),
                       HF_HOME=str(box / "hf"), XDG_CACHE_HOME=str(box / ".cache"), PYTHONDONTWRITEBYTECODE="1",
                       TMPDIR=str(box / "tmp"))  # Prefect's runner storage goes under the temp dir
        from prefect.settings import PREFECT_API_URL, temporary_settings

        try:
            with process_worker(env, "cpu", home, home / "worker-cpu.log"), \
                    process_worker(gpu_env, "gpu", box, home / "worker-gpu.log", user=NOBODY), \
                    temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
                yield {"env": env, "home": home, "store": store_dir, "box": box, "s3": s3}
        finally:
            shutil.rmtree(box, ignore_errors=True)


def test_daily_runs_on_s3_with_a_gpu_worker_that_cannot_read_the_store(cluster):
    import s3fs
    from prefect import get_client

    from hitchhiker import db

    db_file = cluster["store"] / "hitchhiker.duckdb"
    url = cluster["s3"].url("offhost")
    # the gpu worker's user really cannot reach the store's folder
    denied = subprocess.run(["ls", str(cluster["store"])], user=NOBODY, capture_output=True, text=True)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied

    run = start("backfill/backfill", {"start": DAYS[0], "end": DAYS[1], "db": str(db_file), "storage": url,
                                      "prices_csv": PRICES, "tickers": TICKERS, "retry_delay_s": 1,
                                      "options": {**OPTIONS, "sample_deployment": "sample_snapshot/rollouts"}})
    logs = lambda: "".join((cluster["home"] / f"worker-{p}.log").read_text()[-3000:] for p in ("cpu", "gpu"))  # noqa: E731
    (done,) = wait_final([run.id], cluster["home"], timeout_s=1500)
    assert done.state.is_completed(), f"{done.state.message}\n{logs()}"

    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

        train_runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["train"])))
        sample_runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["rollouts"])))
    assert train_runs and all(r.state.is_completed() and r.work_pool_name == "gpu" for r in train_runs), \
        [(r.name, r.state.name, r.work_pool_name) for r in train_runs]
    # every day's states were sampled on the gpu pool too, from a snapshot in the bucket
    assert len(sample_runs) == 5 and all(r.state.is_completed() and r.work_pool_name == "gpu" for r in sample_runs)

    fs = s3fs.S3FileSystem()
    prefix = url.removeprefix("s3://")
    group_files = fs.glob(f"{prefix}/replay/decision_date=*/pair=*/*.parquet")
    assert len(group_files) == 5 * 6  # five days, six pairs, one group each
    con = db.connect(db_file, read_only=True)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT group_id) FROM replay").fetchone() == (5 * 6 * 4, 30)
        assert con.execute("SELECT count(*) FROM rewards").fetchone()[0] == 5 * 6 * 4
        ckpts = con.execute("SELECT checkpoint_id, parent_id, path, len(groups_used) FROM checkpoints "
                            "WHERE algorithm = 'grpo' ORDER BY created_at").fetchall()
        runs = con.execute("SELECT run_url, batch_url, batch_id FROM train_runs ORDER BY started_at").fetchall()
        promotions = con.execute("SELECT candidate, promoted FROM promotions").fetchall()
    finally:
        con.close()
    assert ckpts and all(path.startswith(f"{url}/checkpoints/") and n >= 6 for _, _, path, n in ckpts), ckpts
    assert len(runs) == len(ckpts) and all(b.startswith(f"{url}/batches/") for _, b, _ in runs)
    for (cid, parent, path, _), (run_url, batch_url, batch_id) in zip(ckpts, runs):
        manifest = json.loads(fs.cat_file(f"{batch_url.removeprefix('s3://')}/MANIFEST.json"))["meta"]
        assert manifest["batch_id"] == batch_id and manifest["parent_id"] == parent  # lineage from the batch
        assert path.startswith(run_url)
    # the gpu box fetched the batches into its own cache: the training really ran there, as nobody
    fetched = list((cluster["box"] / "hitchhiker" / "fetched").iterdir())
    assert fetched and all(p.owner() == NOBODY for p in fetched)
    assert promotions, "the gate evaluated no candidate"
    reports = fs.glob(f"{prefix}/reports/*/MANIFEST.json")  # the gate's report, published to the bucket
    assert len(reports) == len(promotions), reports
    assert {c for c, _ in promotions} <= {c for c, _, _, _ in ckpts}
    cluster["s3_run"] = {"db": db_file, "checkpoints": ckpts}


def _rows(db_file, sql: str) -> list:
    from hitchhiker import db

    con = db.connect(db_file, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_the_same_days_on_a_local_folder_give_the_same_replay_rows_and_weights(cluster, tmp_path):
    """Same data, same seeds, storage in the folders beside the store and training in the daily run's process: the
    replay rows (minus *_at) and every checkpoint's weights equal those of the S3 run with the gpu worker."""
    import torch
    from safetensors.torch import load_file

    from hitchhiker import storage

    s3_run = cluster.get("s3_run")
    if s3_run is None:
        pytest.fail("the S3 run did not complete")
    db_file = cluster["store"] / "local.duckdb"
    run = start("backfill/backfill", {"start": DAYS[0], "end": DAYS[1], "db": str(db_file), "prices_csv": PRICES,
                                      "tickers": TICKERS, "retry_delay_s": 1,
                                      "options": {**OPTIONS, "train_deployment": None}})
    (done,) = wait_final([run.id], cluster["home"], timeout_s=1500)
    assert done.state.is_completed(), done.state.message
    replay_sql = "SELECT * EXCLUDE (created_at) FROM replay ORDER BY rollout_id"
    local_rows, s3_rows = _rows(db_file, replay_sql), _rows(s3_run["db"], replay_sql)
    assert len(local_rows) == 5 * 6 * 4 and local_rows == s3_rows
    ckpts = _rows(db_file, "SELECT checkpoint_id, parent_id, path, len(groups_used) FROM checkpoints "
                           "WHERE algorithm = 'grpo' ORDER BY created_at")
    assert [(c, p, n) for c, p, _, n in ckpts] == [(c, p, n) for c, p, _, n in s3_run["checkpoints"]]
    for (cid, _, local_path, _), (_, _, s3_path, _) in zip(ckpts, s3_run["checkpoints"]):
        assert not local_path.startswith("s3://")
        a, b = (load_file(str(next(storage.fetch_dir(p).glob("*.safetensors")))) for p in (local_path, s3_path))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), cid


def test_the_trainer_runs_where_duckdb_cannot_be_imported(tmp_path):
    """hitchhiker.train trains from a batch and commits its checkpoint in a process where `import duckdb` raises."""
    from hitchhiker import batches
    from hitchhiker.train.config import GRPOConfig
    from train_helpers import make_groups, tiny_model_dir

    model = tiny_model_dir(tmp_path / "tiny")
    groups = make_groups(model, 4, seed=2)
    batch_url = batches.write_grpo_batch(None, GRPOConfig(finetune="lora", lora_rank=4, groups_per_step=2,
                                                          groups_per_micro_batch=2), str(tmp_path / "batches"),
                                         groups=groups, base_model=str(model))
    script = textwrap.dedent(f"""
        import sys
        sys.modules["duckdb"] = None  # importing duckdb now raises ImportError
        try:
            import duckdb
        except ImportError:
            pass
        else:
            raise SystemExit("duckdb imported")
        from hitchhiker.train.grpo import train_batch
        res = train_batch({batch_url!r}, {str(tmp_path / 'run')!r})
        assert "hitchhiker.db" not in sys.modules and "hitchhiker.registry" not in sys.modules
        print("CHECKPOINTS", res.checkpoints)
    """)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=os.environ)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CHECKPOINTS ['grpo-" in proc.stdout, (proc.stdout, time.monotonic() - t0)


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from hitchhiker import db, registry, storage
from hitchhiker.train.grpo import train_batch
point, batch_url, run_url, db_file = {point!r}, {batch_url!r}, {run_url!r}, {db_file!r}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "mid-upload":  # the third checkpoint: killed after its first file reached the bucket, before the rest
    original = storage.filesystem
    def filesystem(url):
        fs, path = original(url)
        if "-s00003" in str(url) and not getattr(fs, "_armed", False):
            put = fs.put_file
            def put_then_die(*a, **k):
                put(*a, **k)
                die()
            fs.put_file, fs._armed = put_then_die, True
        return fs, path
    storage.filesystem = filesystem
con = db.connect(db_file)
registry.record_run(con, run_url, batch_url)
train_batch(batch_url, run_url, on_step_end=(lambda step, m: step == 3 and die()) if point == "mid-step" else None)
if point == "before-registration":  # every checkpoint committed, the orchestrator gone before registering
    die()
registry.register_run(con, run_url, batch_url)
"""


def _weights(run_url: str) -> dict:
    from safetensors.torch import load_file

    from hitchhiker import storage
    from hitchhiker.train import checkpoints as ckpts

    local = storage.fetch_dir(ckpts.latest_in_run(run_url))
    return load_file(str(next(local.glob("*.safetensors"))))


def test_kill_9_of_the_trainer_mid_step_mid_upload_and_before_registration(s3, tmp_path):  # noqa: F811
    """A training run on S3 killed with SIGKILL at three points, then re-run with the same batch and run URLs: the
    same checkpoints are registered (ids, parents, groups), each group used once, the same weights as a run never
    killed, and an uncommitted checkpoint (files in the bucket, no manifest) is never visible."""
    import torch

    from hitchhiker import batches, db, registry
    from hitchhiker.train import checkpoints as ckpts
    from hitchhiker.train.config import GRPOConfig
    from hitchhiker.train.grpo import train_batch
    from train_helpers import make_groups, tiny_model_dir

    model = tiny_model_dir(tmp_path / "tiny")
    config = GRPOConfig(finetune="lora", lora_rank=4, groups_per_step=2, groups_per_micro_batch=2, save_every_steps=1)
    batch_url = batches.write_grpo_batch(None, config, s3.url("kill/batches"), groups=make_groups(model, 8, seed=3),
                                         base_model=str(model))

    def registered(con):
        return con.execute("SELECT checkpoint_id, parent_id, step, groups_used FROM checkpoints "
                           "WHERE run_id LIKE 'grpo-%' ORDER BY step").fetchall()

    ref_con = db.connect(tmp_path / "ref.duckdb")
    ref_url = s3.url("kill/checkpoints/reference")
    registry.record_run(ref_con, ref_url, batch_url)
    train_batch(batch_url, ref_url)
    registry.register_run(ref_con, ref_url, batch_url)
    reference = registered(ref_con)
    assert [r[2] for r in reference] == [1, 2, 3, 4]

    for point in ("mid-step", "mid-upload", "before-registration"):
        run_url, db_file = s3.url(f"kill/checkpoints/{point}"), str(tmp_path / f"{point}.duckdb")
        script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), point=point, batch_url=batch_url, run_url=run_url,
                                    db_file=db_file)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=os.environ)
        assert proc.returncode == -9, (point, proc.stderr[-3000:])
        committed = [m["step"] for _, m in ckpts.committed_in_run(run_url)]
        con = db.connect(db_file)
        if point == "mid-upload":
            # step 3's first file is in the bucket but without a manifest: not a checkpoint for anyone
            assert committed == [1, 2] and ckpts.latest_in_run(run_url).endswith("-s00002")
            assert registry.register_run(con, run_url) == [reference[0][0], reference[1][0]]
        elif point == "mid-step":
            assert committed == [1, 2]
        else:
            assert committed == [1, 2, 3, 4] and registered(con) == []
        # the re-run: the same batch and run URLs (what a Prefect retry or the next daily run does)
        train_batch(batch_url, run_url)
        registry.register_known_runs(con)
        again = registered(con)
        con.close()
        assert [(c, p, s, sorted(g)) for c, p, s, g in again] == [(c, p, s, sorted(g)) for c, p, s, g in reference], point
        used = [g for *_, gs in again for g in gs]
        assert len(used) == len(set(used)) == 8, point
        a, b = _weights(ref_url), _weights(run_url)
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), point
