"""The product as a user runs it: a real Prefect server on 127.0.0.1, the deployments of deployments/prefect.yaml,
process workers on the cpu and gpu pools, the daily flow started through the API, its retries and artifacts read
back through the API, the UI's flow-run page in headless Chromium, and two daily runs at once on one database.

One server and one pair of workers for the whole module (starting a server costs ~20 s).
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from http_fixtures import LocalServer
from prefect_server import CHROMIUM_ARGS, HITCHHIKER, PREFECT, ensure_chromium, prefect_server, process_worker
from test_flows_daily import DAY, PRICES, TICKERS, store_counts

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FEED = PROJECT_ROOT / "hitchhiker" / "data" / "feeds" / "sec_pressreleases.rss"
SMALL_FEED = PROJECT_ROOT / "hitchhiker" / "data" / "feeds" / "sec_edgar_company_atom_Maquia.xml"
RUN_TIMEOUT_S = 420
# The shipped prices, one feed, four tickers (six pairs), groups of four, the one-line prompt of the small model.
SMALL = {"prices_csv": PRICES, "tickers": TICKERS, "style": "trend", "group_size": 4, "n_boot": 200, "eval_days": 2,
         "retry_delay_s": 1}


class FlakyFeeds(LocalServer):
    """Serves feed files, answering HTTP 500 to the first request for each path in `flaky`."""

    def __init__(self):
        super().__init__()
        self.flaky: set[str] = set()

    def respond(self, path, headers):
        if urlsplit(path).path in self.flaky:
            self.flaky.discard(urlsplit(path).path)
            return 500, {"Content-Type": "text/plain"}, b"temporary failure"
        return super().respond(path, headers)


@pytest.fixture(scope="module")
def orchestrator(tmp_path_factory):
    """Server, `hitchhiker prefect-setup`, `prefect deploy --all`, and a process worker per pool."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("prefect-server")
    with prefect_server(home / "server") as env:
        env = dict(env, HITCHHIKER_PROJECT_DIR=str(PROJECT_ROOT), PREFECT_WORKER_QUERY_SECONDS="2")
        setup = subprocess.run([HITCHHIKER, "prefect-setup"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
        assert setup.returncode == 0, setup.stderr
        deploy = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"],
                                env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        feeds = FlakyFeeds().start()
        try:
            with process_worker(env, "cpu", home, home / "worker-cpu.log"), \
                    process_worker(env, "gpu", home, home / "worker-gpu.log"), \
                    temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
                yield {"env": env, "home": home, "ui": env["PREFECT_API_URL"].removesuffix("/api"), "feeds": feeds,
                       "runs": {}}
        finally:
            feeds.stop()


def start(deployment: str, parameters: dict):
    from prefect.deployments import run_deployment

    return run_deployment(deployment, parameters=parameters, timeout=0)


def wait_final(ids, home: Path, timeout_s: float = RUN_TIMEOUT_S):
    from prefect import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_flow_run(i) for i in ids]
            if all(r.state is not None and r.state.is_final() for r in runs):
                return runs
            if time.monotonic() > deadline:
                logs = "".join((home / f"worker-{p}.log").read_text()[-2000:] for p in ("cpu", "gpu"))
                raise AssertionError(f"runs not finished after {timeout_s} s: {[r.state for r in runs]}\n{logs}")
            time.sleep(1)


def run_tree(client, root_id) -> list:
    """The flow run and every flow run below it (subflows and deployment runs it started), breadth first."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    runs, frontier = [client.read_flow_run(root_id)], [root_id]
    while frontier:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)))
        runs += children
        frontier = [c.id for c in children]
    return runs


def test_daily_deployment_completes_with_a_retried_fetch_training_on_the_gpu_pool_and_artifacts(orchestrator, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, TaskRunFilter, TaskRunFilterFlowRunId

    from hitchhiker import db

    with get_client(sync_client=True) as client:  # what `prefect deploy --all` made of deployments/prefect.yaml
        deployed = {name: client.read_deployment_by_name(name) for name in
                    ("daily/daily", "backfill/backfill", "ingest_prices/ingest", "train/train", "evaluate/evaluate",
                     "loop/loop")}
    assert {n: d.work_pool_name for n, d in deployed.items()} == {
        "daily/daily": "cpu", "backfill/backfill": "cpu", "ingest_prices/ingest": "cpu", "train/train": "gpu",
        "evaluate/evaluate": "cpu", "loop/loop": "gpu"}
    assert deployed["loop/loop"].parameters["teachers"] == {} and "teacher_weighting" in deployed["loop/loop"].parameters
    (schedule,) = deployed["daily/daily"].schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == (
        "30 17 * * 1-5", "America/New_York", True)

    feeds, db_file = orchestrator["feeds"], tmp_path / "daily.duckdb"
    url = feeds.add_file("/feeds/sec.rss", FEED.read_bytes())
    feeds.flaky.add("/feeds/sec.rss")
    params = dict(SMALL, date=DAY, db=str(db_file), feeds=[url], min_new_groups=6,
                  train_config={"groups_per_step": 6, "groups_per_micro_batch": 6}, train_timeout_s=300)
    run = start("daily/daily", params)
    (done,) = wait_final([run.id], orchestrator["home"])
    assert done.state.is_completed(), done.state.message
    orchestrator["runs"]["daily"] = done

    with get_client(sync_client=True) as client:
        tree = run_tree(client, done.id)
        tasks = client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[r.id for r in tree])))
        fetches = [t for t in tasks if t.name.startswith("ingest_feed")]
        fetch_states = {t.id: [s.name for s in client.read_task_run_states(t.id)] for t in fetches}
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[r.id for r in tree])))
    # The feed fetch failed once (HTTP 500), was retried by Prefect and then stored the feed.
    retried = [t for t in fetches if t.run_count == 2]
    assert len(retried) == 1 and retried[0].state.is_completed(), [(t.name, t.run_count) for t in fetches]
    assert "Retrying" in fetch_states[retried[0].id] or "AwaitingRetry" in fetch_states[retried[0].id]
    assert feeds.count("/feeds/sec.rss") == 2
    # Every stage ran and finished: subflows, and the training deployment on the gpu pool.
    assert all(r.state.is_completed() for r in tree), [(r.name, r.state.name) for r in tree]
    with get_client(sync_client=True) as client:
        flow_names = sorted(client.read_flow(r.flow_id).name for r in tree)
        train_runs = [r for r in tree if r.deployment_id is not None and r.id != done.id]
        pools = {r.work_pool_name for r in train_runs}
    assert flow_names == sorted(["daily", "ingest_prices", "ingest_news", "build_states", "generate_rollouts",
                                 "compute_rewards", "train"])
    assert len(train_runs) == 1 and pools == {"gpu"}
    keys = {a.key for a in artifacts if a.key}
    assert {"daily-summary-2016-03-01", "ingest-prices", "ingest-news", "states-prompts", "train-metrics",
            "train-summary"} <= keys, keys
    assert any(a.type == "progress" for a in artifacts)

    con = db.connect(db_file, read_only=True)
    try:
        ((checkpoints, groups),) = con.execute("SELECT count(*), sum(len(groups_used)) FROM checkpoints").fetchall()
    finally:
        con.close()
    assert (checkpoints, groups) == (1, 6)  # the gpu pool trained on the day's six matured groups


def test_the_ui_shows_the_flow_run_and_its_artifact(orchestrator, tmp_path):
    from playwright.sync_api import sync_playwright

    run = orchestrator["runs"].get("daily")
    if run is None:
        pytest.fail("the daily deployment test did not leave a completed run to look at")
    chromium = ensure_chromium()
    shot = tmp_path / "flow-run.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{orchestrator['ui']}/runs/flow-run/{run.id}", wait_until="domcontentloaded")
            page.get_by_text(run.name).first.wait_for(timeout=60_000)
            page.get_by_text("Artifacts", exact=True).first.click()  # the tab (a plain link, not role=tab)
            page.get_by_text("daily-summary-2016-03-01").first.wait_for(timeout=30_000)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    print(f"screenshot of the flow run page: {shot}")
    assert shot.stat().st_size > 10_000


def test_two_daily_runs_at_once_on_one_database_both_complete_without_duplicates(orchestrator, tmp_path):
    db_file = tmp_path / "shared.duckdb"
    params = dict(SMALL, date=DAY, db=str(db_file), feeds=[str(SMALL_FEED)], train=False)
    runs = [start("daily/daily", params) for _ in range(2)]
    finished = wait_final([r.id for r in runs], orchestrator["home"])
    assert all(r.state.is_completed() for r in finished), [r.state.message for r in finished]
    a, b = finished
    assert a.start_time < b.end_time and b.start_time < a.end_time  # they really overlapped (the slot queued writes)
    counts = store_counts(db_file)
    assert all(rows == keys for rows, keys in counts.values()), counts
    assert {t: counts[t][0] for t in ("prices", "news", "states", "replay", "rewards")} == {
        "prices": 12590, "news": 5, "states": 6, "replay": 24, "rewards": 24}
