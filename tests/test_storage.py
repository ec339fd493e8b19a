"""Storage URLs: atomic single files, globbing and listing, manifest-committed folders, on a local folder and on a real
S3 server (moto on 127.0.0.1)."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from hitchhiker import storage
from s3_server import s3  # noqa: F401 (fixture)


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    """An empty root: a local folder, or a fresh prefix of the test bucket."""
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3").url(f"{request.node.originalname}/root")  # no [] (glob characters)


def _folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "weights.bin").write_bytes(b"\x00\x01" * 1000)
    (src / "sub" / "config.json").write_text('{"layers": 2}')
    return src


def test_location_and_join(tmp_path, monkeypatch):
    monkeypatch.delenv(storage.ENV, raising=False)
    db_file = tmp_path / "x" / "store.duckdb"
    assert storage.location(db_file, None, "replay") == str(tmp_path / "x" / "store_replay")
    assert storage.location(db_file, "s3://b/p/", "replay") == "s3://b/p/replay"
    assert storage.location(db_file, str(tmp_path / "shared"), "checkpoints") == str(tmp_path / "shared" / "checkpoints")
    monkeypatch.setenv(storage.ENV, "s3://b/env")
    assert storage.location(db_file, None, "batches") == "s3://b/env/batches"
    assert storage.join("s3://b/p", "a", "b.parquet") == "s3://b/p/a/b.parquet"
    assert storage.join(tmp_path, "a") == str(tmp_path / "a")
    assert storage.is_local(tmp_path) and storage.is_local("file:///x") and not storage.is_local("s3://b/x")


def test_write_bytes_replaces_whole_or_not_at_all_locally(tmp_path, monkeypatch):
    target = tmp_path / "a" / "file.bin"
    storage.write_bytes(target, b"first")
    assert target.read_bytes() == b"first"

    def crash(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(storage.os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        storage.write_bytes(target, b"second, never visible")
    assert target.read_bytes() == b"first"  # the old file whole, and no temp file left behind
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]
    monkeypatch.undo()
    storage.write_bytes(target, b"second")
    assert storage.read_bytes(target) == b"second"


def _record_fsyncs_and_renames(monkeypatch) -> list[tuple]:
    """Every os.fsync (as the path its descriptor names) and os.replace, in order."""
    import os

    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _assert_fsynced_before_rename(events: list[tuple], final: Path) -> None:
    """Every file and folder of the published folder was fsynced under its temp name before the rename that
    published it, and the parent after it (the rename itself durable)."""
    (at,) = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(final)]
    work = Path(events[at][1])
    synced_before = {e[1] for e in events[:at] if e[0] == "fsync"}
    inside = sorted(p.relative_to(final) for p in final.rglob("*"))
    assert inside and {str(work / rel) for rel in inside} | {str(work)} <= synced_before, \
        sorted({str(work / rel) for rel in inside} - synced_before)
    assert ("fsync", str(final.parent)) in events[at + 1:]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads descriptors' paths from /proc")
def test_commit_dir_fsyncs_every_file_and_folder_before_the_rename(tmp_path, monkeypatch):
    events = _record_fsyncs_and_renames(monkeypatch)
    final = tmp_path / "root" / "result"
    storage.commit_dir(_folder(tmp_path), final, {"step": 1})
    assert {p.relative_to(final).as_posix() for p in final.rglob("*")} == {
        "weights.bin", "sub", "sub/config.json", storage.MANIFEST}
    _assert_fsynced_before_rename(events, final)
    storage.write_bytes(tmp_path / "one" / "file.bin", b"x")  # one file: fsynced before, its folder after the rename
    (at,) = [i for i, e in enumerate(events) if e[0] == "replace" and e[2].endswith("file.bin")]
    assert events[at - 1] == ("fsync", events[at][1]) and events[at + 1] == ("fsync", str(tmp_path / "one"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads descriptors' paths from /proc")
def test_a_grpo_checkpoint_and_a_beta_head_are_fsynced_before_their_rename(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hitchhiker.beta.head import BetaHead, save_head
    from hitchhiker.train import checkpoints as ckpts
    from train_helpers import tiny_model_dir

    model_dir = tiny_model_dir(tmp_path / "tiny")
    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    events = _record_fsyncs_and_renames(monkeypatch)
    url = ckpts.save(tmp_path / "run", "grpo-x-s00001", model, tok, {"step": 1}, trainer_state={"step": 1})
    assert (Path(url) / ckpts.TRAINER_STATE).is_file() and (Path(url) / storage.MANIFEST).is_file()
    _assert_fsynced_before_rename(events, Path(url))
    head = save_head(tmp_path / "heads" / "beta-head-x", BetaHead(n_features=4), {"step": 1})
    _assert_fsynced_before_rename(events, head)


def test_write_read_glob_and_listdir(root):
    for d, p in [("2016-01-04", "A-B"), ("2016-01-04", "C-D"), ("2016-01-05", "A-B")]:
        storage.write_bytes(storage.join(root, f"decision_date={d}", f"pair={p}", "g.parquet"), d.encode())
    storage.write_bytes(storage.join(root, "decision_date=2016-01-05", "pair=A-B", ".g2.parquet.tmp-1"), b"temp")
    storage.write_bytes(storage.join(root, "decision_date=2016-01-05", "deeper", "pair=X-Y", "g.parquet"), b"no")
    found = storage.glob(storage.join(root, "decision_date=*/pair=*/*.parquet"))
    assert found == [storage.join(root, f"decision_date={d}", f"pair={p}", "g.parquet")
                     for d, p in [("2016-01-04", "A-B"), ("2016-01-04", "C-D"), ("2016-01-05", "A-B")]]
    assert storage.read_bytes(found[-1]) == b"2016-01-05"
    assert storage.glob(storage.join(root, "decision_date=2016-01-04/pair=*/*.parquet")) == found[:2]
    assert storage.glob(storage.join(root, "nothing=*/*.parquet")) == []
    assert storage.listdir(root) == ["decision_date=2016-01-04", "decision_date=2016-01-05"]
    assert storage.listdir(storage.join(root, "decision_date=2016-01-05", "pair=A-B")) == ["g.parquet"]  # hidden left out
    assert storage.listdir(storage.join(root, "missing")) == []
    assert storage.exists(found[0]) and not storage.exists(storage.join(root, "missing", "x"))
    with pytest.raises(FileNotFoundError, match="missing"):
        storage.read_bytes(storage.join(root, "missing", "x"))


def test_commit_dir_fetch_dir_and_manifest(root, tmp_path):
    src = _folder(tmp_path)
    url = storage.join(root, "ckpt-1")
    assert not storage.committed(url)
    with pytest.raises(FileNotFoundError, match="not a committed result"):
        storage.fetch_dir(url)
    manifest = storage.commit_dir(src, url, {"step": 3})
    assert storage.committed(url) and storage.read_manifest(url) == json.loads(json.dumps(manifest))
    assert [f["name"] for f in manifest["files"]] == ["sub/config.json", "weights.bin"]
    assert manifest["meta"] == {"step": 3}
    local = storage.fetch_dir(url, cache_root=tmp_path / "cache")
    assert (local / "weights.bin").read_bytes() == (src / "weights.bin").read_bytes()
    assert (local / "sub" / "config.json").read_text() == '{"layers": 2}'
    # written once: a second commit changes nothing and returns the first manifest
    (src / "weights.bin").write_bytes(b"other")
    assert storage.commit_dir(src, url, {"step": 4})["meta"] == {"step": 3}
    assert storage.read_bytes(storage.join(url, "weights.bin")) == b"\x00\x01" * 1000


def test_a_folder_without_manifest_is_not_committed(root):
    storage.write_bytes(storage.join(root, "half", "weights.bin"), b"files of a killed writer")
    storage.write_bytes(storage.join(root, "whole", "weights.bin"), b"x")
    storage.write_bytes(storage.join(root, "whole", storage.MANIFEST), json.dumps({"files": [], "meta": {}}).encode())
    assert not storage.committed(storage.join(root, "half"))
    assert storage.committed_children(root) == [storage.join(root, "whole")]


def test_fetch_dir_refuses_a_tampered_file(s3, tmp_path):
    url = s3.url("tampered/ckpt")
    storage.commit_dir(_folder(tmp_path), url)
    storage.write_bytes(storage.join(url, "weights.bin"), b"\x00\x02" * 1000)  # same size, other bytes
    with pytest.raises(ValueError, match="does not match its manifest"):
        storage.fetch_dir(url, cache_root=tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())  # nothing half-fetched left where a later fetch would trust it


def test_files_written_by_another_client_are_seen_at_once(s3):
    """No listing cache: an orchestrator that listed a prefix before must see what workers wrote after."""
    import s3fs

    root = s3.url("other-writer")
    storage.write_bytes(storage.join(root, "a", "1.parquet"), b"1")
    assert storage.listdir(storage.join(root, "a")) == ["1.parquet"]
    assert not storage.exists(storage.join(root, "a", "2.parquet"))
    worker = s3fs.S3FileSystem(skip_instance_cache=True)
    worker.pipe_file(f"{s3.bucket}/other-writer/a/2.parquet", b"2")
    assert storage.exists(storage.join(root, "a", "2.parquet"))
    assert storage.listdir(storage.join(root, "a")) == ["1.parquet", "2.parquet"]
    assert len(storage.glob(storage.join(root, "*", "*.parquet"))) == 2


def test_duckdb_path_registers_the_filesystem_once(s3, tmp_path):
    con = duckdb.connect()
    assert storage.duckdb_path(con, tmp_path / "x") == str((tmp_path / "x").resolve())
    assert con.list_filesystems() == []
    url = s3.url("duck")
    storage.write_bytes(storage.join(url, "t.csv"), b"a,b\n1,2\n")
    assert storage.duckdb_path(con, url) == url
    assert storage.duckdb_path(con, url) == url  # a second call registers nothing more (DuckDB would refuse)
    assert con.execute(f"SELECT a + b FROM read_csv('{url}/t.csv')").fetchall() == [(3,)]
