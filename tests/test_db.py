import multiprocessing

import duckdb
import pytest

from hitchhiker import db


def test_migrations_apply_once_and_record_version(db_file):
    con = db.connect(db_file)
    v = db.schema_version(con)
    assert v == max(version for version, _, _ in db.migrations())
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"prices", "news", "feeds", "schema_version"} <= tables
    n = con.execute("SELECT count(*) FROM schema_version").fetchone()[0]
    con.close()
    con = db.connect(db_file)  # re-running migrations changes nothing
    assert db.schema_version(con) == v
    assert con.execute("SELECT count(*) FROM schema_version").fetchone()[0] == n


def test_transaction_rolls_back_whole_batch(db_file):
    con = db.connect(db_file)
    con.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
    with pytest.raises(duckdb.ConstraintException):
        with db.transaction(con):
            con.execute("INSERT INTO t VALUES (1), (2)")
            con.execute("INSERT INTO t VALUES (2)")
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 0


def _hold_lock(path, ready, release):
    con = duckdb.connect(str(path))
    ready.set()
    release.wait(30)
    con.close()


def test_second_writer_gets_clear_lock_error(db_file):
    db.connect(db_file).close()
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(db_file, ready, release))
    p.start()
    try:
        assert ready.wait(60)
        with pytest.raises(db.StoreLockedError, match=str(db_file.name)):
            db.connect(db_file)
    finally:
        release.set()
        p.join(30)


def test_read_only_missing_db_names_the_path(tmp_path):
    with pytest.raises(db.StoreError, match="nope.duckdb"):
        db.connect(tmp_path / "nope.duckdb", read_only=True)


def test_a_built_wheel_carries_the_sql_and_reads_it_from_the_package(tmp_path):
    """sql/ sits at the top of the repository; a wheel must still ship every file of it (as hitchhiker/sql) and the
    installed package must read those, not a checkout's."""
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    repo = Path(db.__file__).resolve().parent.parent
    src = tmp_path / "src"  # a copy, so that the build leaves nothing in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, src / name)
    for name in ("hitchhiker", "flows", "sql"):
        shutil.copytree(repo / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("hitchhiker-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"hitchhiker/sql/" + f.relative_to(repo / "sql").as_posix() for f in (repo / "sql").rglob("*.sql")}
    assert len(expected) > 40 and expected <= names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    out = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import duckdb; from hitchhiker import db; "
         "con = duckdb.connect(); db.migrate(con); print(db.SQL_DIR); print(db.schema_version(con))", str(site)],
        cwd=tmp_path, check=True, capture_output=True, text=True, timeout=120).stdout.split()
    assert Path(out[0]) == site / "hitchhiker" / "sql"
    assert int(out[1]) == max(version for version, _, _ in db.migrations())
