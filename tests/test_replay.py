"""The replay buffer's files: atomic and idempotent group writes, the view's columns, partition pruning."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import duckdb
import pyarrow.parquet as pq
import pytest

from hitchhiker import db, replay, storage
from s3_server import s3  # noqa: F401 (fixture)

DATES = ["2016-01-04", "2016-01-05", "2016-01-06"]
PAIRS = ["A-AAP", "ABBV-ABC"]


def rows(gid: str, n: int = 4, completion: str = "ACTION: A") -> list[dict]:
    now = datetime(2016, 1, 4, 21, tzinfo=timezone.utc)
    return [{
        "rollout_id": f"{gid}-{k}", "state_id": f"state-{gid}", "group_id": gid, "mode": "pairwise",
        "policy_version": "base:test", "sample_index": k, "temperature": 0.7, "top_p": 1.0, "prompt_ids": [1, 2, 3],
        "completion": completion, "completion_ids": [7, 8, 9], "token_logprobs": [-0.1, -0.2, -0.3],
        "logprob_sum": -0.6, "action": "A", "proportion": 1.0, "position": None, "advisory_text": "", "valid": True,
        "invalid_reason": None, "created_at": now,
    } for k in range(n)]


def explain_files(con, where: str) -> tuple[int, int]:
    """(files scanned, files in the glob) from EXPLAIN ANALYZE of a count over the view."""
    plan = con.execute(f"EXPLAIN ANALYZE SELECT count(*) FROM replay WHERE {where}").fetchall()[0][1]
    m = re.search(r"Scanning Files: (\d+)/(\d+)", plan)
    assert m, plan
    return int(m.group(1)), int(m.group(2))


def test_a_failed_write_leaves_nothing_visible_and_a_retry_succeeds(tmp_path, monkeypatch):
    real_write = pq.write_table

    def torn(table, where, **kw):  # bytes on disk, then the writer dies before finishing
        with open(where, "wb") as f:
            f.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(replay.pq, "write_table", torn)
    with pytest.raises(OSError, match="disk full"):
        replay.write_group(tmp_path, DATES[0], PAIRS[0], "g0", rows("g0"))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no final file, and the temp file is removed
    assert not replay.has_group(tmp_path, DATES[0], PAIRS[0], "g0")
    monkeypatch.setattr(replay.pq, "write_table", real_write)
    assert replay.write_group(tmp_path, DATES[0], PAIRS[0], "g0", rows("g0")) is not None
    assert pq.read_table(replay.group_path(tmp_path, DATES[0], PAIRS[0], "g0")).num_rows == 4


WRITER = """
import sys
from test_replay import rows
from hitchhiker import replay
root = sys.argv[1]
for i in range(100000):
    replay.write_group(root, "2016-01-04", "A-AAP", f"g{i:06d}", rows(f"g{i:06d}", n=200, completion="x" * 2000))
"""


def test_kill_9_during_writes_leaves_only_complete_files_in_the_view(tmp_path):
    root = tmp_path / "replay"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], env=env)
    part = root / "decision_date=2016-01-04" / "pair=A-AAP"
    deadline = time.monotonic() + 120
    while len(list(part.glob("*.parquet"))) < 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.137)  # land somewhere inside a write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    files = list(part.glob("*.parquet"))
    assert len(files) >= 5
    for f in files:  # every visible file is whole
        assert pq.read_table(f).num_rows == 200
    con = duckdb.connect()
    replay.ensure_view(con, root)
    n_groups, n_rows = con.execute("SELECT count(DISTINCT group_id), count(*) FROM replay").fetchall()[0]
    assert (n_groups, n_rows) == (len(files), 200 * len(files))
    # a temp file of the killed writer may remain: hidden, and never matched by the view's glob
    assert all(p.name.startswith(".") for p in part.iterdir() if p.suffix != ".parquet")


def test_rewriting_a_group_is_a_no_op(tmp_path):
    first = replay.write_group(tmp_path, DATES[0], PAIRS[0], "g1", rows("g1"))
    before = first.read_bytes(), first.stat().st_mtime_ns
    assert replay.write_group(tmp_path, DATES[0], PAIRS[0], "g1", rows("g1", completion="ACTION: B")) is None
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before
    assert replay.existing_group_ids(tmp_path) == {"g1"}


def test_the_view_has_the_schema_of_the_migration_and_prunes_by_date_and_pair(tmp_path):
    con = db.connect(tmp_path / "store.duckdb")
    empty = con.execute("DESCRIBE replay").fetchall()  # the migration's empty view
    assert con.execute("SELECT count(*) FROM replay").fetchall() == [(0,)]
    for d in DATES:
        for p in PAIRS:
            gid = f"g-{d}-{p}"
            replay.write_group(tmp_path / "replay", d, p, gid, rows(gid))
    replay.ensure_view(con, tmp_path / "replay")
    assert [(c[0], c[1]) for c in con.execute("DESCRIBE replay").fetchall()] == [(c[0], c[1]) for c in empty]
    assert con.execute("SELECT decision_date::VARCHAR, pair, count(*) FROM replay GROUP BY ALL ORDER BY ALL").fetchall() == [
        (d, p, 4) for d in DATES for p in PAIRS]
    assert explain_files(con, f"decision_date = DATE '{DATES[1]}'") == (2, 6)
    assert explain_files(con, f"pair = '{PAIRS[0]}'") == (3, 6)
    assert explain_files(con, f"decision_date = DATE '{DATES[1]}' AND pair = '{PAIRS[0]}'") == (1, 6)
    # a group written after the view was created is seen (the glob is expanded at query time)
    replay.write_group(tmp_path / "replay", "2016-01-07", PAIRS[0], "late", rows("late"))
    assert con.execute("SELECT count(*) FROM replay WHERE decision_date = DATE '2016-01-07'").fetchall() == [(4,)]
    con.close()


def test_bad_partition_keys_and_rows_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="2016-13-01"):
        replay.write_group(tmp_path, "2016-13-01", PAIRS[0], "g", rows("g"))
    with pytest.raises(ValueError, match="pair '' "):
        replay.write_group(tmp_path, DATES[0], "", "g", rows("g"))
    with pytest.raises(ValueError, match="group_id"):
        replay.write_group(tmp_path, DATES[0], PAIRS[0], "g", rows("other"))
    with pytest.raises(ValueError, match="non-empty"):
        replay.write_group(tmp_path, DATES[0], PAIRS[0], "g", [])
    assert not any(tmp_path.rglob("*.parquet"))


# Pairs of tickers as Yahoo writes them, and every other character class a partition value may hold: letters and
# digits, the separators kept as they are ('-', '.', '_'), Hive's specials ('=', '/', '%', ':', '^', '*', '?', '#',
# '[', ']', '{', quotes, backslash), space and '+', control characters and DEL, non-ASCII letters and an emoji.
ODD_PAIRS = ["BRK-B-XOM", "BRK.B-EURUSD=X", "EURUSD=X-XOM", "^GSPC-BRK-B", "A/B-C%2FD", "a:b*c?d#e[f]g{h}",
             "q'u\"o\\te", "sp ace+plus~", "ctl\x01\x1f\x7f", "\u00e9t\u00e9-\u20ac-\U0001f986", "%%41%", "..", "=", "under_score"]


@pytest.mark.parametrize("value", ODD_PAIRS + PAIRS + DATES)
def test_partition_values_escape_and_unescape_to_themselves(value):
    name = replay.escape_partition(value)
    assert replay.unescape_partition(name) == value
    assert re.fullmatch(r"[A-Za-z0-9._%-]+", name), name  # no '/', '=', glob or shell characters left
    if re.fullmatch(r"[A-Za-z0-9._-]+", value):  # existing partitions keep their folder names
        assert name == value


def test_escaping_is_hive_percent_style_and_reversible():
    assert replay.escape_partition("EURUSD=X-XOM") == "EURUSD%3DX-XOM"
    assert replay.escape_partition("^GSPC-BRK.B") == "%5EGSPC-BRK.B"
    assert replay.escape_partition("100%") == "100%25"  # '%' itself, so that unescaping is exact
    assert replay.escape_partition("\u20ac") == "%E2%82%AC"  # UTF-8 bytes, upper-case hex like DuckDB and Hive
    assert replay.unescape_partition("EURUSD%3dX") == "EURUSD=X"  # either case reads back
    for bad in ("A%2", "A%zz", "%E2%82"):  # a name this module did not write: an error naming it
        with pytest.raises(ValueError, match=re.escape(bad)):
            replay.unescape_partition(bad)


def test_the_view_reads_back_every_pair_as_it_was_written(tmp_path):
    root = tmp_path / "replay"
    for i, p in enumerate(ODD_PAIRS):
        replay.write_group(root, DATES[i % 2], p, f"g{i}", rows(f"g{i}"))
    assert sorted(f.parent.name for f in root.glob(replay.GLOB)) == sorted(
        f"pair={replay.escape_partition(p)}" for p in ODD_PAIRS)
    assert all(replay.has_group(root, DATES[i % 2], p, f"g{i}") for i, p in enumerate(ODD_PAIRS))
    assert sorted(replay.existing_group_ids(root)) == sorted(f"g{i}" for i in range(len(ODD_PAIRS)))
    con = db.connect(tmp_path / "store.duckdb")
    replay.ensure_view(con, root)
    got = con.execute("SELECT pair, group_id, count(*) FROM replay GROUP BY ALL").fetchall()
    assert sorted(got) == sorted((p, f"g{i}", 4) for i, p in enumerate(ODD_PAIRS))
    # a filter on the original pair still prunes to its one folder
    assert explain_files(con, "pair = 'EURUSD=X-XOM'") == (1, len(ODD_PAIRS))
    assert con.execute("SELECT group_id FROM replay WHERE pair = ? LIMIT 1", ["^GSPC-BRK-B"]).fetchall() == [("g3",)]
    con.close()


# --- a root on object storage (a real S3 server, moto on 127.0.0.1) ----------------------------------------------------


def _write_all(root) -> None:
    for d in DATES:
        for p in PAIRS:
            gid = f"g-{d}-{p}"
            replay.write_group(root, d, p, gid, rows(gid))


def _rows(con) -> list[tuple]:
    return con.execute("SELECT * EXCLUDE (created_at) FROM replay ORDER BY rollout_id").fetchall()


def test_an_s3_root_holds_the_same_groups_as_a_local_folder(s3, tmp_path):
    root = s3.url("same/replay")
    assert replay.existing_groups(root) == []
    assert not replay.has_group(root, DATES[0], PAIRS[0], f"g-{DATES[0]}-{PAIRS[0]}")
    _write_all(root)
    _write_all(tmp_path / "replay")
    key = replay.group_path(root, DATES[0], PAIRS[0], f"g-{DATES[0]}-{PAIRS[0]}")
    assert key == f"{root}/decision_date={DATES[0]}/pair={PAIRS[0]}/g-{DATES[0]}-{PAIRS[0]}.parquet"
    assert replay.has_group(root, DATES[0], PAIRS[0], f"g-{DATES[0]}-{PAIRS[0]}")
    assert sorted(replay.existing_groups(root)) == sorted(replay.existing_groups(tmp_path / "replay"))
    assert len(replay.existing_group_ids(root)) == 6

    remote, local = duckdb.connect(), duckdb.connect()
    replay.ensure_view(remote, root)
    replay.ensure_view(local, tmp_path / "replay")
    assert remote.execute("DESCRIBE replay").fetchall() == local.execute("DESCRIBE replay").fetchall()
    assert _rows(remote) == _rows(local) and len(_rows(remote)) == 24
    # partition pruning from the object keys: only that date's files are opened
    assert explain_files(remote, f"decision_date = DATE '{DATES[1]}'") == (2, 6)
    assert explain_files(remote, f"decision_date = DATE '{DATES[1]}' AND pair = '{PAIRS[0]}'") == (1, 6)


def test_rewriting_a_group_on_s3_writes_nothing(s3):
    import s3fs

    root = s3.url("rewrite/replay")
    key = replay.write_group(root, DATES[0], PAIRS[0], "g1", rows("g1"))
    fs = s3fs.S3FileSystem()
    before = fs.info(key)
    assert replay.write_group(root, DATES[0], PAIRS[0], "g1", rows("g1", completion="ACTION: B")) is None
    after = fs.info(key)
    assert (after["ETag"], after["LastModified"]) == (before["ETag"], before["LastModified"])
    assert replay.existing_groups(root) == [(datetime(2016, 1, 4).date(), "g1")]


def test_a_failed_s3_write_leaves_no_object(s3, monkeypatch):
    def lost(url, data):
        raise OSError("connection reset")

    root = s3.url("failed/replay")
    monkeypatch.setattr(storage, "write_bytes", lost)
    with pytest.raises(OSError, match="reset"):
        replay.write_group(root, DATES[0], PAIRS[0], "g0", rows("g0"))
    monkeypatch.undo()
    assert replay.existing_groups(root) == [] and not replay.has_group(root, DATES[0], PAIRS[0], "g0")


def test_the_s3_view_is_empty_until_a_group_exists_and_sees_later_groups(s3, tmp_path):
    root = s3.url("later/replay")
    con = db.connect(tmp_path / "store.duckdb")
    empty = con.execute("DESCRIBE replay").fetchall()
    replay.ensure_view(con, root)
    assert con.execute("SELECT count(*) FROM replay").fetchall() == [(0,)]
    replay.write_group(root, DATES[0], PAIRS[0], "g0", rows("g0"))
    replay.ensure_view(con, root)
    assert con.execute("DESCRIBE replay").fetchall() == empty
    replay.write_group(root, DATES[1], PAIRS[1], "g1", rows("g1"))  # after the view: seen (no stale listing)
    assert con.execute("SELECT decision_date::VARCHAR, count(*) FROM replay GROUP BY 1 ORDER BY 1").fetchall() == [
        (DATES[0], 4), (DATES[1], 4)]
    con.close()


def test_a_store_opened_anew_attaches_the_s3_root_before_reading_the_view(s3, tmp_path):
    root = s3.url("attach/replay")
    _write_all(root)
    con = db.connect(tmp_path / "store.duckdb")
    replay.ensure_view(con, root)
    con.close()
    con = db.connect(tmp_path / "store.duckdb")  # the store's own connect registers what its views read
    assert con.execute("SELECT count(*) FROM replay").fetchall() == [(24,)]
    con.close()
    con = duckdb.connect(str(tmp_path / "store.duckdb"))  # a plain DuckDB connection does not
    con.execute("SET autoinstall_known_extensions = false")  # fail at once instead of trying to download httpfs
    with pytest.raises(duckdb.Error):
        con.execute("SELECT count(*) FROM replay").fetchall()
    replay.attach_storage(con)  # the URL from the view's own definition
    replay.attach_storage(con, root)  # idempotent
    assert con.execute("SELECT count(*) FROM replay").fetchall() == [(24,)]
    con.close()
    local = duckdb.connect()
    replay.attach_storage(local)  # no view, or a view over a local folder: nothing to do
    replay.attach_storage(local, tmp_path)
    assert local.list_filesystems() == []


def test_a_query_over_the_s3_view_lists_the_prefix_once(s3, monkeypatch):
    """DuckDB expands the glob through the registered filesystem: one listing, not one per date and pair folder."""
    import s3fs

    root = s3.url("listing/replay")
    _write_all(root)
    con = duckdb.connect()
    replay.ensure_view(con, root)
    listed = []
    real = s3fs.S3FileSystem._lsdir

    async def counted(self, path, *args, **kwargs):
        listed.append(path)
        return await real(self, path, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_lsdir", counted)
    assert con.execute(f"SELECT count(*) FROM replay WHERE decision_date = DATE '{DATES[1]}'").fetchall() == [(8,)]
    assert len(listed) == 1  # fsspec's own glob would list the root, each date and each pair: 10 requests


def test_an_s3_view_reads_back_pairs_that_need_escaping(s3):
    root = s3.url("escaped/replay")
    for i, p in enumerate(ODD_PAIRS):
        replay.write_group(root, DATES[0], p, f"g{i}", rows(f"g{i}"))
    assert replay.has_group(root, DATES[0], "EURUSD=X-XOM", "g2")
    assert replay.group_path(root, DATES[0], "EURUSD=X-XOM", "g2") == f"{root}/decision_date={DATES[0]}/pair=EURUSD%3DX-XOM/g2.parquet"
    con = duckdb.connect()
    replay.ensure_view(con, root)
    assert sorted(con.execute("SELECT DISTINCT pair FROM replay").fetchall()) == sorted((p,) for p in ODD_PAIRS)
    assert con.execute("SELECT count(*) FROM replay WHERE pair = 'BRK.B-EURUSD=X'").fetchall() == [(4,)]
