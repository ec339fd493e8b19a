"""Subprocess smoke tests of the `hitchhiker` command itself (stage commands are tested beside their stages)."""
import subprocess
import sys
from pathlib import Path

import pytest

HITCHHIKER = [str(Path(sys.executable).parent / "hitchhiker")]


def run(*args, check=True):
    p = subprocess.run([*HITCHHIKER, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_help_lists_commands():
    out = run("--help").stdout
    assert "sql" in out and "server" in out


def test_sql_is_read_only_unless_write(db_file):
    run("sql", "--db", str(db_file), "--write", "CREATE TABLE t AS SELECT 1 AS a")
    refused = run("sql", "--db", str(db_file), "INSERT INTO t VALUES (2)", check=False)
    assert refused.returncode == 2
    assert "--write" in refused.stderr and "Traceback" not in refused.stderr
    assert run("sql", "--db", str(db_file), "--csv", "SELECT count(*) AS n FROM t").stdout == "n\n1\n"
    run("sql", "--db", str(db_file), "--write", "INSERT INTO t VALUES (2)")
    assert run("sql", "--db", str(db_file), "--csv", "SELECT count(*) AS n FROM t").stdout == "n\n2\n"


def test_sql_on_missing_database_names_it(tmp_path):
    p = run("sql", "--db", str(tmp_path / "absent.duckdb"), "SELECT 1", check=False)
    assert p.returncode == 2 and "absent.duckdb" in p.stderr


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    from hitchhiker import cli, db

    absent = str(tmp_path / "absent.duckdb")
    p = run("--debug", "sql", "--db", absent, "SELECT 1", check=False)
    assert p.returncode == 1 and "Traceback" in p.stderr and "StoreError: database" in p.stderr, p.stderr
    monkeypatch.setenv("HITCHHIKER_DEBUG", "1")
    with pytest.raises(db.StoreError, match="absent.duckdb"):
        cli.main(["sql", "--db", absent, "SELECT 1"])
    monkeypatch.setenv("HITCHHIKER_DEBUG", "0")
    assert cli.main(["sql", "--db", absent, "SELECT 1"]) == 2
