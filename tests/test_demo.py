"""`hitchhiker demo` as a newcomer runs it, and the example queries in sql/queries/ on the store it leaves.

The demo runs once per module, as a subprocess in an empty folder, offline, with the default small model built
first when the session's model cache is empty. Its times are printed; the budgets (180 s with the model cached, 300 s
with the build) are bench/demo.py's.
"""
from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from hitchhiker import db
from hitchhiker.demo import MANIFEST, DemoConfig, paths, start_clean
from hitchhiker.default_model import BUILDER_VERSION

HITCHHIKER = str(Path(sys.executable).parent / "hitchhiker")
TIMEOUT_S = 600  # a hung demo fails here; how fast it must be is bench/demo.py's
QUERIES = sorted((db.SQL_DIR / "queries").glob("*.sql"))
PRINTED = re.compile(r"^(report|listwise|database|replay|checkpoints|TensorBoard):\s+(\S+)", re.M)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from hitchhiker.default_model import default_model_path

    cwd = tmp_path_factory.mktemp("fresh-clone")
    home = Path(os.environ["HITCHHIKER_HOME"])  # the session's model cache (conftest), built once per session
    started = time.perf_counter()
    default_model_path()  # the first-time build, when the cache is empty, before the demo's clock
    build_s = time.perf_counter() - started
    env = {**os.environ, "HITCHHIKER_HOME": str(home)}
    env.pop("HITCHHIKER_DB", None)
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    p = subprocess.run([HITCHHIKER, "demo"], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    seconds = time.perf_counter() - started
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = cpu.ru_utime - cpu_before.ru_utime + cpu.ru_stime - cpu_before.ru_stime
    print(f"default model build: {build_s:.0f} s; hitchhiker demo: {seconds:.0f} s wall, {cpu_s:.0f} s CPU")
    return {"p": p, "seconds": seconds, "build_s": build_s, "cpu_s": cpu_s, "cwd": cwd, "home": home,
            "printed": dict(PRINTED.findall(p.stdout)), "db": cwd / "hitchhiker-demo" / "hitchhiker.duckdb"}


@pytest.mark.slow
def test_demo_completes_offline_with_the_model_cached(demo):
    p = demo["p"]
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "default small model: cached" in p.stdout  # the demo's time is with the model cached
    assert (demo["home"] / "models" / BUILDER_VERSION / "config.json").is_file()
    assert re.search(r"^demo finished in \d+ s$", p.stdout, re.M)
    assert "Traceback" not in p.stderr


SYNTHETIC_LINE = re.compile(r"^  synthetic iteration (\d+): \d+ s, held-out accuracy ([0-9.]+) \(n=(\d+), unpriced (\d+)\)", re.M)


@pytest.mark.slow
def test_demo_tells_the_story_synthetic_learning_then_the_real_table(demo):
    out = demo["p"].stdout
    curve = [(int(i), float(a), int(n), int(u)) for i, a, n, u in SYNTHETIC_LINE.findall(out)]
    assert [c[0] for c in curve] == list(range(len(curve))) and len(curve) >= 2, out[:3000]
    assert all(n >= 200 and u == 0 for _, _, n, u in curve)  # every held-out state priced, none dropped
    assert curve[0][1] < 0.7  # from chance (the warmed-up model knows the format, not the rule) ...
    assert curve[-1][1] >= 0.8  # ... to the target, printed per iteration
    real = out[out.index("act 2, real data:"):]  # then the real data, as the evaluation table, the gate, and the meaning
    for subject in ("baseline:random", "baseline:always_a", "baseline:momentum", f"base:hitchhiker-tiny@{BUILDER_VERSION}"):
        assert subject in real
    assert "promotion gate: " in real and re.search(r"^In plain words: .*interval.*promotion gate", real, re.M)
    # the report's first screen shows both acts: the synthetic curve and the real table
    top = Path(demo["printed"]["report"]).read_text().splitlines()[:30]
    text = "\n".join(top)
    assert "synthetic" in text and f"-> {curve[-1][1]:.2f} (iteration" in text
    assert "| baseline:random |" in text and "In plain words" in text
    assert (Path(demo["printed"]["report"]).parent / "synthetic_accuracy.png").stat().st_size > 1000
    # and the same checkpoint ranking baskets: the listwise table with intervals, printed and on the first screen
    ranked = real[real.index("the same checkpoint ranking baskets (listwise):"):]
    header, *rows = ranked.split("\n\n")[0].splitlines()[1:]
    assert re.split(r"\s{2,}", header)[:4] == ["policy", "pair-ordering accuracy [95% CI]", "top-1 hit [95% CI]",
                                              "Spearman [95% CI]"]
    subjects = {r.split()[0] for r in rows}
    assert {"baseline:random", "baseline:momentum", "baseline:mean_reversion"} <= subjects
    assert all(re.search(r"\d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\]", r) for r in rows if "buy_and_hold" not in r)
    page = Path(demo["printed"]["report"]).read_text().split("\n---\n")[0]
    assert "| policy | pair-ordering accuracy [95% CI] | top-1 hit [95% CI] | Spearman [95% CI] |" in page
    assert "| baseline:momentum |" in page.split("listwise")[-1]


@pytest.mark.slow
def test_demo_prints_where_everything_is(demo):
    printed = demo["printed"]
    assert set(printed) == {"report", "listwise", "database", "replay", "checkpoints", "TensorBoard"}, demo["p"].stdout[-2000:]
    for name, path in printed.items():
        assert Path(path).exists(), f"{name}: {path}"
    out = demo["cwd"] / "hitchhiker-demo"
    assert Path(printed["database"]) == demo["db"] and Path(printed["report"]).is_relative_to(out)
    assert "http://127.0.0.1:4200" in demo["p"].stdout and "hitchhiker server" in demo["p"].stdout


@pytest.mark.slow
def test_demo_report_compares_the_checkpoint_with_the_base_model_and_baselines(demo):
    con = duckdb.connect(str(demo["db"]), read_only=True)
    (last,) = con.execute("SELECT checkpoint_id FROM checkpoints ORDER BY created_at DESC LIMIT 1").fetchall()[0]
    con.close()
    report = Path(demo["printed"]["report"])
    text = report.read_text()
    assert f"candidate: `{last}`" in text
    rows = {line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert {last, f"base:hitchhiker-tiny@{BUILDER_VERSION}", "baseline:random", "baseline:always_a",
            "baseline:momentum"} <= rows
    assert "## Promotion gate" in text
    for png in ("equity.png", "training_reward.png", "actions.png"):
        assert (report.parent / png).stat().st_size > 1000


@pytest.mark.slow
def test_demo_store_holds_every_stage_once(demo):
    con = duckdb.connect(str(demo["db"]), read_only=True)
    q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
    d = DemoConfig()
    assert q("SELECT count(DISTINCT ticker), count(*) FROM prices") == [(10, 12590)]
    assert q("SELECT count(*) FROM news")[0][0] > 0
    assert q("SELECT count(*) FROM company_names WHERE ticker = 'AAPL'")[0][0] >= 1
    rollouts = d.iterations * d.states_per_iteration * d.group_size
    # every rollout stored once, matured and rewarded once; a group per state and policy version
    assert q("SELECT count(*), count(DISTINCT rollout_id), count(DISTINCT group_id) FROM replay") == [
        (rollouts, rollouts, d.iterations * d.states_per_iteration)]
    assert q("SELECT count(*), count(DISTINCT rollout_id) FROM rewards") == [(rollouts, rollouts)]
    # one checkpoint per iteration, each continuing the previous one
    chain = q("SELECT checkpoint_id, parent_id FROM checkpoints ORDER BY created_at")
    assert len(chain) == d.iterations and [c[1] for c in chain[1:]] == [c[0] for c in chain[:-1]]
    kinds = q("SELECT subject_kind, count(*) FROM evaluations GROUP BY ALL ORDER BY 1")
    assert kinds == [("base", 2), ("baseline", 9), ("checkpoint", 2)]  # pairwise (5 baselines), listwise (4)
    assert q("SELECT mode, count(*) FROM evaluations GROUP BY ALL ORDER BY 1") == [("listwise", 6), ("pairwise", 7)]
    assert q("SELECT count(*) FROM states WHERE mode = 'listwise'")[0][0] == d.lists_per_date * len(q(
        f"SELECT DISTINCT date FROM prices WHERE date BETWEEN '{d.eval_start}' AND '{d.eval_end}'"))
    assert q("SELECT count(*) FROM promotions") == [(1,)]
    con.close()
    owned = (demo["cwd"] / "hitchhiker-demo" / MANIFEST).read_text()
    assert str(demo["db"]) in owned and "hitchhiker_replay" in owned


@pytest.mark.slow
@pytest.mark.parametrize("query", QUERIES, ids=[q.stem for q in QUERIES])
def test_every_example_query_runs_on_the_demo_database(demo, query):
    text = query.read_text()
    assert text.startswith("-- "), f"{query.name} has no header comment"
    con = duckdb.connect(str(demo["db"]), read_only=True)  # python duckdb, read-only
    rel = con.sql(text)
    columns, rows = rel.columns, rel.fetchall()
    con.close()
    assert rows, f"{query.name} returned nothing on the demo database"
    # the same text through `hitchhiker sql "$(cat file)"` (read-only by default)
    p = subprocess.run([HITCHHIKER, "sql", "--db", str(demo["db"]), "--csv", text], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == ",".join(columns) and len(p.stdout.splitlines()) >= 2


DUCKDB_CLI = Path(sys.executable).parent / "duckdb"  # PyPI's duckdb-cli (dev extra): the tool users already have


def _duckdb_cli(database: Path, *statements: str) -> str:
    args = [str(DUCKDB_CLI), "-readonly", "-csv", str(database)]
    for s in statements:
        args += ["-c", s]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "Error" not in p.stderr, p.stderr
    return p.stdout


@pytest.mark.slow
def test_the_duckdb_cli_opens_the_demo_store_and_prunes_replay_partitions(demo):
    assert DUCKDB_CLI.is_file(), "the dev extra installs duckdb-cli"
    out = _duckdb_cli(demo["db"], "SELECT decision_date, pair, count(*) AS n FROM replay GROUP BY ALL ORDER BY ALL")
    lines = out.splitlines()
    assert lines[0] == "decision_date,pair,n" and len(lines) == 1 + 48  # 3 iterations x 16 states, one group each
    day = lines[1].split(",")[0]
    plan = _duckdb_cli(demo["db"], f"EXPLAIN ANALYZE SELECT count(*) FROM replay WHERE decision_date = DATE '{day}'")
    scanned = re.search(r"Scanning Files:\s*(\d+)/(\d+)", plan)
    files_that_day = sum(1 for ln in lines[1:] if ln.startswith(day))
    assert scanned and int(scanned.group(1)) == files_that_day < int(scanned.group(2)), plan
    for query in QUERIES:  # every example query runs in the CLI too
        assert _duckdb_cli(demo["db"], query.read_text()).strip(), query.name


@pytest.mark.slow
def test_sql_refuses_writes_to_the_demo_database_without_write(demo):
    for statement in ("DELETE FROM prices", "DROP VIEW replay"):
        p = subprocess.run([HITCHHIKER, "sql", "--db", str(demo["db"]), statement], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 2 and "--write" in p.stderr and "Traceback" not in p.stderr, p.stderr
    con = duckdb.connect(str(demo["db"]), read_only=True)
    assert con.execute("SELECT count(*) FROM prices").fetchall() == [(12590,)]
    assert con.execute("SELECT count(*) FROM replay").fetchall()[0][0] > 0
    con.close()


def test_example_queries_exist():
    assert len(QUERIES) >= 5 and {"reward_by_date_and_pair", "invalid_rate_by_policy_version", "zero_variance_groups",
                                  "latest_evaluation_per_checkpoint", "replay_rows_per_partition"} <= {q.stem for q in QUERIES}


# --- starting clean ----------------------------------------------------------------------------------------------


def test_start_clean_deletes_only_what_the_previous_demo_wrote(tmp_path):
    config = DemoConfig(out_dir=str(tmp_path / "demo"))
    p = start_clean(config)  # empty folder: nothing to delete, the manifest is written first
    assert (p["out"] / MANIFEST).is_file()
    duckdb.connect(str(p["db"])).close()
    for folder in ("replay", "loop", "reports"):
        (p[folder] / "sub").mkdir(parents=True)
        (p[folder] / "sub" / "f.parquet").write_bytes(b"x")
    keep = p["out"] / "notes.txt"
    keep.write_text("mine")
    start_clean(config)
    assert not any(p[k].exists() for k in ("db", "wal", "replay", "loop", "reports"))
    assert keep.read_text() == "mine" and (p["out"] / MANIFEST).is_file()


def test_start_clean_refuses_a_database_the_demo_did_not_write(tmp_path):
    mine = tmp_path / "my.duckdb"
    con = duckdb.connect(str(mine))
    con.execute("CREATE TABLE t AS SELECT 42 AS answer")
    con.close()
    with pytest.raises(db.StoreError, match="my.duckdb"):
        start_clean(DemoConfig(out_dir=str(tmp_path / "demo"), db=str(mine)))
    assert duckdb.connect(str(mine), read_only=True).execute("SELECT answer FROM t").fetchall() == [(42,)]
    # and through the command: a clear error, exit code 2, nothing deleted
    p = subprocess.run([HITCHHIKER, "demo", "--out", str(tmp_path / "demo"), "--db", str(mine)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "my.duckdb" in p.stderr and "Traceback" not in p.stderr
    assert mine.is_file()


def test_demo_paths_are_absolute_so_the_replay_view_works_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = paths(DemoConfig())
    assert all(v.is_absolute() for v in p.values())
    assert p["db"] == tmp_path / "hitchhiker-demo" / "hitchhiker.duckdb"
    assert p["replay"] == tmp_path / "hitchhiker-demo" / "hitchhiker_replay"
