"""State snapshots: sampling on a machine without the store. A snapshot is named by its content and written once; a
process in which duckdb cannot be imported samples from it exactly the groups that `generate_dates` writes from the
store for the same states, seed and policy; the `sample_snapshot` flow does it with its summary artifact; a
snapshot on S3 (a real local S3 server) is fetched and checked by the worker, which writes its groups to S3."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from hitchhiker import db, replay, rollouts, snapshots, storage
from hitchhiker.default_model import BUILDER_VERSION, DEFAULT_MODEL_NAME
from hitchhiker.policy import PolicyConfig
from hitchhiker.rollouts import SamplingConfig

sys.path.insert(0, str(Path(__file__).parent))
from s3_server import s3  # noqa: E402,F401  (the module-scoped S3 server fixture)

TICKERS = ["A", "AAP", "ABBV", "ABC"]
DAY = "2016-03-01"  # 4 tickers: 6 pairwise states of the short 'trend' rendering
CONFIG = SamplingConfig(group_size=3, max_new_tokens=8, seed=7)
BASE = f"base:{DEFAULT_MODEL_NAME}@{BUILDER_VERSION}"
# Runs `snapshots.sample_snapshot(url, root, CONFIG)` where `import duckdb` raises, and checks the store module
# was never imported: what a GPU worker without the store does.
WORKER = """
import json, sys
sys.modules["duckdb"] = None
from hitchhiker import snapshots
from hitchhiker.rollouts import SamplingConfig
url, root, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
summary = snapshots.sample_snapshot(url, root, SamplingConfig(**config))
assert "hitchhiker.db" not in sys.modules, "the worker imported the store module"
print(json.dumps(summary, default=str))
"""


@pytest.fixture(scope="module")
def store(shared_data, tmp_path_factory) -> Path:
    from hitchhiker import prices, states
    from hitchhiker.policy import load_tokenizer

    path = tmp_path_factory.mktemp("snap") / "snap.duckdb"
    con = db.connect(path)
    prices.ingest_csv(con, [shared_data / "prices" / "sp500_5yr" / f"{t}_data.csv" for t in TICKERS])
    ids = states.build_states(con, states.StatesConfig(mode="pairwise", style="trend"), [DAY], TICKERS,
                              tokenizer=load_tokenizer())
    con.close()
    assert len(ids) == 6
    return path


def _state_ids(path: Path) -> list[str]:
    with db.connect(path, read_only=True) as con:
        return rollouts.select_state_ids(con, DAY, DAY)


def _rows(root: Path) -> list[dict]:
    """Every stored rollout row, without its write time, in rollout_id order."""
    rows = [r for f in sorted(root.glob(replay.GLOB)) for r in pq.read_table(f).to_pylist()]
    return sorted(({k: v for k, v in r.items() if k != "created_at"} for r in rows), key=lambda r: r["rollout_id"])


def _worker(url: str, root: Path | str, config: SamplingConfig = CONFIG) -> dict:
    args = {"group_size": config.group_size, "max_new_tokens": config.max_new_tokens, "seed": config.seed}
    done = subprocess.run([sys.executable, "-c", WORKER, url, str(root), json.dumps(args)], capture_output=True,
                          text=True, timeout=600, cwd=Path(__file__).parent.parent, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_snapshot_is_named_by_its_content_and_written_once(store, tmp_path):
    ids = _state_ids(store)
    root = tmp_path / "snapshots"
    with db.connect(store, read_only=True) as con:
        url = snapshots.write_snapshot(con, ids, str(root), BASE)
        manifest = Path(url) / storage.MANIFEST
        written = manifest.stat().st_mtime_ns
        again = snapshots.write_snapshot(con, list(reversed(ids)), str(root), BASE)  # same states, another order
        other_policy = snapshots.write_snapshot(con, ids, str(root), "ckpt-1", checkpoint=str(tmp_path / "ckpt-1"))
        fewer = snapshots.write_snapshot(con, ids[:2], str(root), BASE)
        stored = rollouts.load_states(con, ids)
    assert again == url and manifest.stat().st_mtime_ns == written  # found, not rewritten
    assert len({url, other_policy, fewer}) == 3
    assert storage.listdir(root) == sorted(Path(u).name for u in (url, other_policy, fewer))  # no temp folder left
    meta, states = snapshots.read_snapshot(url)
    assert {s.state_id: s for s in states} == {s.state_id: s for s in stored}  # every field the sampler reads
    assert (meta["policy_version"], meta["model"], meta["checkpoint"], meta["states"]) == (BASE, None, None, 6)
    assert meta["first_date"] == meta["last_date"] == DAY


def test_a_worker_without_duckdb_samples_the_groups_generate_dates_writes(store, tmp_path):
    # from the store on this machine (this also builds the default model the worker loads from its cache)
    here = rollouts.generate_dates(store, DAY, DAY, PolicyConfig(), CONFIG, tmp_path / "from_store")
    assert here["groups_written"] == 6 and here["policy_version"] == BASE

    # the orchestrator's half: the missing states (all six, for this replay root) and the resolved policy
    root = tmp_path / "replay"
    with db.connect(store) as con:
        out = snapshots.snapshot_dates(con, DAY, DAY, str(tmp_path / "snapshots"), str(root))
    assert (out["states"], out["states_in_range"], out["states_left"], out["policy_version"]) == (6, 6, 0, BASE)

    summary = _worker(out["snapshot_url"], root)
    assert (summary["groups_written"], summary["groups_skipped"], summary["rollouts"]) == (6, 0, 18)
    assert summary["policy_version"] == BASE and summary["first_date"] == DAY
    assert _rows(root) == _rows(tmp_path / "from_store")  # same tokens, log-probs, temperatures, parses

    # a second run of the same snapshot writes nothing; nothing is left to export; the view reads the worker's files
    assert _worker(out["snapshot_url"], root)["groups_written"] == 0
    with db.connect(store) as con:
        assert snapshots.snapshot_dates(con, DAY, DAY, str(tmp_path / "snapshots"), str(root))["snapshot_url"] is None
        replay.ensure_view(con, root)
        assert con.execute("SELECT count(*), count(DISTINCT group_id) FROM replay").fetchall() == [(18, 6)]


def test_snapshot_dates_takes_the_first_missing_states_and_resolves_a_checkpoint_id(store, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with db.connect(store) as con:
        out = snapshots.snapshot_dates(con, DAY, DAY, str(tmp_path / "snapshots"), str(tmp_path / "replay"),
                                       checkpoint=str(ckpt), max_states=4)
        assert (out["states"], out["states_left"], out["policy_version"]) == (4, 2, "ckpt")
        with pytest.raises(ValueError, match="neither a folder nor a checkpoint_id"):
            snapshots.snapshot_dates(con, DAY, DAY, str(tmp_path / "snapshots"), str(tmp_path / "replay"),
                                     checkpoint="no-such-checkpoint")
    meta, states = snapshots.read_snapshot(out["snapshot_url"])
    assert (meta["checkpoint"], meta["policy_version"], len(states)) == (str(ckpt), "ckpt", 4)
    assert snapshots.policy_version(None, str(ckpt), "ckpt-9") == "ckpt-9"
    (ckpt / "hitchhiker_checkpoint.json").write_text(json.dumps({"checkpoint_id": "from-meta"}))
    assert snapshots.policy_version(None, str(ckpt)) == "from-meta"


def test_the_sample_snapshot_flow_writes_groups_and_its_summary(prefect_harness, store, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.rollouts import point_replay_view, sample_snapshot, snapshot_states

    root = tmp_path / "replay"
    exported = snapshot_states(str(store), DAY, checkpoint=None, storage=str(tmp_path / "storage"),
                               replay_root=str(root))
    assert exported["states"] == 6 and exported["replay_root"] == str(root)
    assert exported["snapshot_url"].startswith(str(tmp_path / "storage" / "snapshots"))

    state = sample_snapshot(snapshot_url=exported["snapshot_url"], replay_root=str(root), group_size=2, seed=1,
                            max_new_tokens=6, return_state=True)
    out = state.result()
    assert (out["groups_written"], out["groups_skipped"], out["states"]) == (6, 0, 6)
    assert out["policy_version"] == BASE and out["replay_root"] == str(root)
    point_replay_view(str(store), str(root))
    con = duckdb.connect(str(store))
    assert con.execute("SELECT count(*) FROM replay").fetchall() == [(12,)]
    con.close()
    again = snapshot_states(str(store), DAY, storage=str(tmp_path / "storage"), replay_root=str(root))
    assert (again["snapshot_url"], again["states"]) == (None, 0)

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    tables = [a for a in artifacts if a.type == "table"]
    assert [a.key for a in tables] == [f"rollouts-{DAY}-{DAY}"]
    assert [a.data for a in artifacts if a.type == "progress"] == [100.0]
    metrics = {r["metric"]: r["value"] for r in _table(tables[0].data)}
    assert metrics["groups written"] == 6 and metrics["policy_version"] == BASE


def test_a_snapshot_on_s3_is_sampled_into_a_replay_on_s3_and_a_changed_one_is_refused(store, s3, tmp_path):
    ids = _state_ids(store)[:2]
    with db.connect(store, read_only=True) as con:
        url = snapshots.write_snapshot(con, ids, s3.url("run/snapshots"), BASE)
    assert url.startswith("s3://") and storage.committed(url)
    root = s3.url("run/replay")
    summary = _worker(url, root, SamplingConfig(group_size=2, max_new_tokens=4))
    assert summary["groups_written"] == 2 and summary["root"] == root
    with db.connect(store) as con:  # the orchestrator points the view at the worker's groups on S3
        replay.ensure_view(con, root)
        assert con.execute("SELECT count(*), count(DISTINCT group_id) FROM replay").fetchall() == [(4, 2)]

    # a checkpoint on S3 is named by its own metadata, with no store lookup
    ckpt = s3.url("run/checkpoints/c1")
    storage.write_bytes(storage.join(ckpt, "hitchhiker_checkpoint.json"), b'{"checkpoint_id": "c1-id"}')
    assert snapshots.resolve_policy(None, None, ckpt) == ("c1-id", ckpt)

    # a snapshot whose file changed after it was committed is refused, not sampled
    fs, path = storage.filesystem(url)
    tampered = storage.join(s3.url("run/snapshots"), "tampered")
    fs.copy(path, storage.filesystem(tampered)[1], recursive=True)
    fs.pipe_file(f"{storage.filesystem(tampered)[1]}/{snapshots.STATES_FILE}", b"not parquet")
    with pytest.raises(ValueError, match="does not match its manifest"):
        snapshots.read_snapshot(tampered)


def _table(data) -> list[dict]:
    return json.loads(data) if isinstance(data, str) else data


def test_a_listwise_snapshot_carries_the_basket_size_the_parser_needs(shared_data, tmp_path):
    from hitchhiker import prices, states
    from hitchhiker.policy import load_tokenizer

    with db.connect(tmp_path / "list.duckdb") as con:
        prices.ingest_csv(con, [shared_data / "prices" / "sp500_5yr" / f"{t}_data.csv" for t in TICKERS])
        ids = states.build_states(con, states.StatesConfig(mode="listwise", style="trend", list_size=3,
                                                           max_lists_per_date=2), [DAY], TICKERS, tokenizer=load_tokenizer())
        stored = rollouts.load_states(con, ids)
        url = snapshots.write_snapshot(con, ids, str(tmp_path / "snapshots"), BASE)
    assert len(ids) == 2 and {s.list_size for s in stored} == {3}
    _, read = snapshots.read_snapshot(url)
    assert {s.state_id: s for s in read} == {s.state_id: s for s in stored}
    summary = snapshots.sample_snapshot(url, str(tmp_path / "replay"), SamplingConfig(group_size=2, max_new_tokens=8, seed=7))
    assert summary["groups_written"] == 2 and summary["rollouts"] == 4  # each completion parsed against 3 letters


def test_a_snapshot_written_before_listwise_existed_is_still_read(store, tmp_path):
    with db.connect(store, read_only=True) as con:
        url = snapshots.write_snapshot(con, _state_ids(store), str(tmp_path / "snapshots"), BASE)
    path = Path(url) / snapshots.STATES_FILE
    old = pq.read_table(path).drop_columns(["list_size"])  # the schema before the column
    os.chmod(path, 0o644)
    pq.write_table(old, path)
    _, states = snapshots.read_snapshot(url)  # a local snapshot is not re-checked against its manifest's sizes
    assert len(states) == 6 and {s.list_size for s in states} == {None}
