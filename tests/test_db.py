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
