"""The read-only SQL console (`hitchhiker sql` without --write): it writes no file, attaches no database, installs or
loads no extension and reads no file but the store and its replay files. Each escape of issue 18 is a test below,
run through `hitchhiker.cli.main` as the command runs it; one runs the real executable."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pytest

from hitchhiker import cli, console, db, replay
from s3_server import s3  # noqa: F401 (fixture)

HITCHHIKER = str(Path(sys.executable).parent / "hitchhiker")
GROUPS = [("2016-01-04", "A-AAP", "g0"), ("2016-01-04", "ABBV-ABC", "g1"), ("2016-01-05", "A-AAP", "g2")]


def rows(group_id: str, n: int = 2) -> list[dict]:
    now = datetime(2016, 1, 4, 21, tzinfo=timezone.utc)
    return [{"rollout_id": f"{group_id}-{k}", "state_id": f"state-{group_id}", "group_id": group_id, "mode": "pairwise",
             "policy_version": "base:test", "sample_index": k, "temperature": 0.7, "top_p": 1.0, "prompt_ids": [1],
             "completion": "ACTION: A", "completion_ids": [7], "token_logprobs": [-0.1], "logprob_sum": -0.1,
             "action": "A", "proportion": 1.0, "position": None, "advisory_text": "", "valid": True,
             "invalid_reason": None, "created_at": now} for k in range(n)]


def make_store(path: Path, root=None) -> Path:
    """A store with a table t (3 rows) and a replay of 3 groups (6 rows) under root (default: beside the store)."""
    root = root or replay.root_for(path)
    for day, pair, group_id in GROUPS:
        replay.write_group(root, day, pair, group_id, rows(group_id))
    con = db.connect(path)
    con.execute("CREATE TABLE t AS SELECT range AS a FROM range(3)")
    replay.ensure_view(con, root)
    con.close()
    return path


@pytest.fixture
def store(tmp_path) -> Path:
    return make_store(tmp_path / "store.duckdb")


@pytest.fixture
def run_sql(capsys):
    """`hitchhiker sql ARGS...` in this process: (exit code, stdout, stderr)."""
    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(["sql", *args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def count(path: Path, table: str = "t") -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    finally:
        con.close()


def assert_refused(result: tuple[int, str, str], *named: str) -> None:
    code, out, err = result
    assert code == 2 and err.startswith("error: refused:"), (code, out, err)
    assert all(n in err for n in named), err
    assert "Traceback" not in err


# --- what must not happen ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["outside", "replay"])
def test_copy_to_a_file_writes_nothing(store, tmp_path, run_sql, where):
    # inside the replay folder too: the one folder the console may read is not one it may write
    target = tmp_path / "out.csv" if where == "outside" else replay.default_root(store) / "out.csv"
    assert_refused(run_sql("--db", str(store), f"COPY t TO '{target}'"), "COPY")
    assert not target.exists()


def test_explain_analyze_of_a_copy_writes_nothing(store, run_sql):
    target = replay.default_root(store) / "explained.csv"
    assert_refused(run_sql("--db", str(store), f"EXPLAIN ANALYZE COPY t TO '{target}'"), "COPY")
    assert not target.exists()


def test_export_database_writes_nothing(store, tmp_path, run_sql):
    target = tmp_path / "export"
    assert_refused(run_sql("--db", str(store), f"EXPORT DATABASE '{target}'"), "EXPORT")
    assert not target.exists()


def test_attaching_another_store_read_write_changes_nothing(store, tmp_path, run_sql):
    other = make_store(tmp_path / "other" / "other.duckdb")
    sql = f"ATTACH '{other}' AS other (READ_WRITE); DELETE FROM other.t"
    assert_refused(run_sql("--db", str(store), sql), "ATTACH")
    assert count(other) == 3


def test_attaching_a_hard_link_to_the_open_store_changes_nothing(store, tmp_path, run_sql):
    link = tmp_path / "link.duckdb"
    os.link(store, link)
    before = store.read_bytes()
    assert_refused(run_sql("--db", str(store), f"ATTACH '{link}' AS l (READ_WRITE); DELETE FROM l.t"), "ATTACH")
    assert store.read_bytes() == before and count(store) == 3


@pytest.mark.parametrize("query", [
    "SELECT * FROM read_csv('/etc/passwd', header = false)",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM read_text('{replay}/../../../etc/passwd')",
])
def test_files_outside_the_store_are_not_read(store, run_sql, query):
    code, out, err = run_sql("--db", str(store), "--csv", query.format(replay=replay.default_root(store)))
    assert code == 2 and "root:" not in out and "passwd" not in out, (code, out, err)
    # a bare path is no table once DuckDB may not open files (its replacement scan is off): not found, not refused
    assert "refused" in err or "Table with name /etc/passwd does not exist" in err, err


def test_a_parquet_file_beside_the_replay_is_not_read(store, tmp_path, run_sql):
    secret = replay.write_group(tmp_path / "elsewhere", *GROUPS[0][:2], "secret", rows("secret"))
    assert_refused(run_sql("--db", str(store), f"SELECT count(*) FROM read_parquet('{secret}')"), str(secret))


@pytest.mark.parametrize("statement", ["INSTALL httpfs", "FORCE INSTALL httpfs", "LOAD httpfs", "LOAD '/tmp/x.duckdb_extension'"])
def test_extensions_are_neither_installed_nor_loaded(store, run_sql, statement):
    assert_refused(run_sql("--db", str(store), statement), statement.split()[0])
    assert not (Path.home() / ".duckdb" / "extensions").exists()


def test_a_multi_statement_string_is_checked_whole_before_any_statement_runs(store, tmp_path, run_sql):
    target = tmp_path / "second.csv"
    code, out, err = run_sql("--db", str(store), f"SELECT 4242 AS answer; COPY t TO '{target}'")
    assert_refused((code, out, err), "statement 2 of 2", "COPY")
    assert out == "" and not target.exists()


@pytest.mark.parametrize("statement", [
    "SET enable_external_access = true",
    "RESET enable_external_access",
    "SET lock_configuration = false",
    "SET allowed_directories = ['/']",
    "PRAGMA enable_profiling",
    "CALL enable_profiling(save_location := '{replay}/profile.json')",
    "SELECT * FROM enable_logging(storage_path := '{replay}/log')",
])
def test_the_configuration_cannot_be_changed(store, run_sql, statement):
    root = replay.default_root(store)
    before = sorted(root.rglob("*"))
    assert_refused(run_sql("--db", str(store), statement.format(replay=root)))
    assert sorted(root.rglob("*")) == before


@pytest.mark.parametrize("statement", ["DELETE FROM t", "CREATE TEMP TABLE x AS SELECT 1", "PREPARE p AS SELECT 1",
                                       "DETACH store", "BEGIN TRANSACTION", "VACUUM"])
def test_other_statements_are_refused_by_their_type(store, run_sql, statement):
    assert_refused(run_sql("--db", str(store), statement), "--write")
    assert count(store) == 3


def test_a_replay_outside_the_storage_is_not_read(tmp_path, run_sql):
    """The view is the store's, but the files it reads must lie under the storage the console was given."""
    store = make_store(tmp_path / "store.duckdb", root=tmp_path / "moved" / "replay")
    assert_refused(run_sql("--db", str(store), "SELECT count(*) FROM replay"), "--storage")
    code, out, _ = run_sql("--db", str(store), "--storage", str(tmp_path / "moved"), "--csv", "SELECT count(*) AS n FROM replay")
    assert (code, out) == (0, "n\n6\n")


def test_the_executable_refuses_with_exit_code_2_and_one_error_line(store, tmp_path):
    target = tmp_path / "out.csv"
    p = subprocess.run([HITCHHIKER, "sql", "--db", str(store), f"SELECT 1; COPY t TO '{target}'"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == "" and not target.exists(), p
    assert p.stderr.startswith("error: refused: statement 2 of 2 is a COPY") and len(p.stderr.splitlines()) == 1, p.stderr
    p = subprocess.run([HITCHHIKER, "sql", "--db", str(store), "--csv", "SELECT count(*) AS n FROM replay"],
                       capture_output=True, text=True, timeout=120)
    assert (p.returncode, p.stdout) == (0, "n\n6\n"), p.stderr


# --- what still works ----------------------------------------------------------------------------------------------

def test_queries_over_tables_and_the_replay_view(store, run_sql):
    def csv(query: str) -> str:
        code, out, err = run_sql("--db", str(store), "--csv", query)
        assert code == 0, err
        return out

    assert csv("SELECT count(*) AS n FROM t") == "n\n3\n"
    assert csv("SELECT decision_date, count(*) AS n FROM replay GROUP BY ALL ORDER BY ALL") == \
        "decision_date,n\n2016-01-04,4\n2016-01-05,2\n"
    plan = csv("EXPLAIN ANALYZE SELECT count(*) FROM replay WHERE decision_date = DATE '2016-01-05'")
    assert "Scanning Files: 1/3" in plan
    assert "replay" in csv("SHOW TABLES") and "a," in csv("DESCRIBE t") and ",a," in csv("PRAGMA table_info('t')")
    assert csv("CALL pragma_version()").startswith("library_version,")
    assert csv("SELECT 1 AS first; SELECT 2 AS second") == "second\n2\n"
    code, out, err = run_sql("--db", str(store), "SELECT a FROM t ORDER BY a")  # the table view
    assert code == 0 and "│" in out and "2" in out, err


def test_a_query_file_is_read_by_python(store, tmp_path, run_sql):
    query = tmp_path / "q.sql"
    query.write_text("-- rows per pair\nSELECT pair, count(*) AS n FROM replay GROUP BY pair ORDER BY pair;\n")
    assert run_sql("--db", str(store), "--csv", f"@{query}")[:2] == (0, "pair,n\nA-AAP,4\nABBV-ABC,2\n")


def test_every_example_query_runs_in_the_console(store, run_sql):
    for query in sorted((db.SQL_DIR / "queries").glob("*.sql")):
        code, out, err = run_sql("--db", str(store), "--csv", f"@{query}")
        assert code == 0 and out, (query.name, err)


def test_write_still_runs_any_statement(store, tmp_path, run_sql):
    target = tmp_path / "out.csv"
    assert run_sql("--db", str(store), "--write", "CREATE TABLE u AS SELECT 1 AS b; DELETE FROM t WHERE a = 0")[0] == 0
    assert run_sql("--db", str(store), "--write", f"COPY t TO '{target}'")[0] == 0
    assert target.read_text() == "a\n1\n2\n" and count(store, "u") == 1 and count(store) == 2


def test_an_s3_replay_is_read_and_nothing_else_on_the_bucket(s3, tmp_path, run_sql):
    storage = s3.url("console")
    store = make_store(tmp_path / "store.duckdb", root=replay.root_for(None, storage))
    replay.write_group(s3.url("private"), *GROUPS[0][:2], "secret", rows("secret"))
    code, out, err = run_sql("--db", str(store), "--storage", storage, "--csv", "SELECT count(*) AS n FROM replay")
    assert (code, out) == (0, "n\n6\n"), err
    assert_refused(run_sql("--db", str(store), "--storage", storage,
                           f"SELECT count(*) FROM read_parquet('{s3.url('private')}/*/*/*.parquet')"), "private")
    assert_refused(run_sql("--db", str(store), "--storage", storage, f"SELECT * FROM glob('{s3.url()}/**')"))


# --- the two guards, each on its own -------------------------------------------------------------------------------

def test_duckdb_itself_refuses_what_the_statement_check_would_let_through(store, tmp_path):
    """The connection open_console returns holds without check_statements (e.g. for another front end's SQL)."""
    con = console.open_console(store)
    try:
        for statement in [f"COPY t TO '{tmp_path / 'out.csv'}'", f"EXPORT DATABASE '{tmp_path / 'export'}'",
                          f"ATTACH '{make_store(tmp_path / 'other.duckdb')}' AS other", "INSTALL httpfs",
                          "LOAD httpfs", "SELECT * FROM read_text('/etc/passwd')"]:
            with pytest.raises(duckdb.PermissionException):
                con.execute(statement)
        for statement in ["SET enable_external_access = true", "SET lock_configuration = false",
                          "SET temp_directory = '/tmp'", "CALL enable_profiling()"]:
            with pytest.raises(duckdb.InvalidInputException, match="configuration has been locked"):
                con.execute(statement)
        assert con.execute("SELECT count(*) FROM replay").fetchall() == [(6,)]
    finally:
        con.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.duckdb", "other_replay", "store.duckdb", "store_replay"]


@pytest.mark.parametrize("sql", [
    "SELECT 1", "FROM t", "SHOW TABLES", "DESCRIBE t", "SUMMARIZE t", "PIVOT t ON a IN (0, 1)", "CALL pragma_version()",
    "EXPLAIN SELECT 1", "/* a */ EXPLAIN -- b\n ANALYSE SELECT 1", "EXPLAIN (FORMAT json, ANALYZE) SELECT ')'",
    "PRAGMA show_tables", "pragma /* x */ TABLE_INFO('t')", "SELECT 1; SELECT 2",
])
def test_queries_pass_the_statement_check(sql):
    assert console.check_statements(sql)


@pytest.mark.parametrize("sql", [
    "COPY t FROM '/tmp/x.csv'", "EXPLAIN COPY t TO 'x'", "EXPLAIN (FORMAT json, ANALYZE) /* ) */ COPY t TO 'x'",
    "COPY FROM DATABASE store TO other", "PRAGMA import_database('x')",
    "PRAGMA enable_profiling", "USE memory", "SET VARIABLE x = 1", "CREATE MACRO m() AS 1", "EXECUTE p",
    "UPDATE EXTENSIONS", "PIVOT t ON a", "SELECT 1; INSERT INTO t VALUES (1)",
])
def test_everything_else_is_refused_by_the_statement_check(sql):
    with pytest.raises(console.RefusedError, match="refused: statement"):
        console.check_statements(sql)
