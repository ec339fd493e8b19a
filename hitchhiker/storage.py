"""Where files live: one storage URL for everything machines share (replay, checkpoints, batches, snapshots, reports).

Default (no URL): the folders beside the DuckDB file, `<db stem>_replay/`, `<db stem>_checkpoints/`, ... as always.
With a URL (`--storage`, `HITCHHIKER_STORAGE`, a flow parameter): `<url>/replay`, `<url>/checkpoints`, ... on any
fsspec filesystem: a local path, `s3://bucket/prefix` (s3fs, the `[s3]` extra; endpoint and credentials from the
usual AWS variables such as AWS_ENDPOINT_URL), `gs://` (gcsfs) or `az://` (adlfs).

Atomicity. One file is one object written once under its final name: locally a hidden temp file, fsynced and
renamed; on object storage a single PUT (a reader never sees half an object). A multi-file result (a checkpoint, a
training batch) is committed by a manifest written last (every file's name, size and sha256): whatever has no
manifest does not exist for a reader. This module imports neither duckdb nor the store: GPU workers use it too.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import fsspec
from fsspec.utils import glob_translate

ENV = "HITCHHIKER_STORAGE"
DEFAULT_DB = "hitchhiker.duckdb"
MANIFEST = "MANIFEST.json"


def db_path(path: str | os.PathLike | None = None) -> Path:
    """The database path: the argument, else $HITCHHIKER_DB, else ./hitchhiker.duckdb."""
    return Path(path or os.environ.get("HITCHHIKER_DB") or DEFAULT_DB)


def beside(path: str | os.PathLike | None, name: str) -> Path:
    """`<database file stem>_<name>/` in the database file's folder: where the replay, checkpoints, reports and loop
    runs of a store live by default."""
    p = db_path(path)
    return p.parent / f"{p.stem}_{name}"


def hitchhiker_home() -> Path:
    """The machine's own cache (built models, fetched results): $HITCHHIKER_HOME, else ~/.cache/hitchhiker."""
    return Path(os.environ.get("HITCHHIKER_HOME") or Path.home() / ".cache" / "hitchhiker")


def storage_url(storage: str | None = None) -> str | None:
    """The storage URL: the argument, else $HITCHHIKER_STORAGE, else None (the folders beside the store)."""
    url = storage or os.environ.get(ENV) or None
    if url is not None:
        url = url.rstrip("/")
        if not url:
            raise ValueError(f"storage URL {storage!r} is empty")
    return url


def location(db_file: str | os.PathLike | None, storage: str | None, name: str) -> str:
    """Where `name` (replay, checkpoints, batches, snapshots, reports) lives: `<storage>/<name>`, or without a
    storage URL `<db stem>_<name>/` beside the database file (absolute)."""
    url = storage_url(storage)
    if url is None:
        return str(beside(db_path(db_file).resolve(), name))
    if is_local(url):
        return str(Path(_local(url)).resolve() / name)
    return f"{url}/{name}"


def is_local(url: str | os.PathLike) -> bool:
    return "://" not in str(url) or str(url).startswith("file://")


def _local(url: str | os.PathLike) -> str:
    return str(url).removeprefix("file://")


def absolute(url: str | os.PathLike) -> str:
    """A local path made absolute (a run or checkpoint URL is recorded in the store and read from other cwds)."""
    return str(Path(_local(url)).resolve()) if is_local(url) else str(url)


def join(url: str | os.PathLike, *parts: str) -> str:
    """url/part/... (a local path stays a path)."""
    if is_local(url):
        return str(Path(_local(url)).joinpath(*parts))
    return "/".join([str(url).rstrip("/"), *parts])


def filesystem(url: str | os.PathLike):
    """(fsspec filesystem, path within it) for a URL or local path; a clear error when the protocol's package is
    missing."""
    try:
        if is_local(url):
            return fsspec.core.url_to_fs(_local(url))
        # No listings cache: an instance lives as long as the process (fsspec caches instances), and a cached listing
        # would hide files other machines write after it (a long-running orchestrator would never see new groups).
        return fsspec.core.url_to_fs(str(url), use_listings_cache=False)
    except ImportError as e:
        raise ValueError(f"storage URL {url}: its filesystem package is not installed ({e}); "
                         "for s3:// install the [s3] extra (s3fs), gs:// gcsfs, az:// adlfs") from None


def _full(fs, path: str) -> str:
    """A path returned by fs.glob/ls back as a URL of the same protocol."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def exists(url: str | os.PathLike) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def read_bytes(url: str | os.PathLike) -> bytes:
    fs, path = filesystem(url)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{url} does not exist") from None


def read_json(url: str | os.PathLike) -> dict:
    return json.loads(read_bytes(url))


def write_bytes(url: str | os.PathLike, data: bytes) -> None:
    """Write one file whole or not at all: local temp + fsync + rename; one PUT on object storage."""
    if is_local(url):
        final = Path(_local(url))
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # the rename must not become visible before the bytes are on disk
            os.replace(tmp, final)
            fsync_path(final.parent)  # the rename itself, durable
        finally:
            tmp.unlink(missing_ok=True)
        return
    fs, path = filesystem(url)
    fs.pipe_file(path, data)


def glob(pattern: str) -> list[str]:
    """URLs matching a glob (`*` within one path segment; hidden temp names excluded), sorted.

    On object storage one recursive listing of the prefix before the first wildcard (paged, 1000 keys a request)
    instead of fsspec's walk, which lists every folder the pattern crosses (a request per date and per pair)."""
    fs, path = filesystem(pattern)
    found = fs.glob(path) if is_local(pattern) else _listed_glob(fs, path)
    return sorted(_full(fs, p) for p in found if not Path(p).name.startswith("."))


def _listed_glob(fs, path: str) -> list[str]:
    """Paths (without protocol) matching a glob, from one recursive listing of the prefix before the wildcard."""
    wild = min((i for i in (path.find(c) for c in "*?[") if i >= 0), default=-1)
    if wild < 0:
        return [path] if fs.exists(path) else []
    match = re.compile(glob_translate(path)).match
    return [p for p in fs.find(path[:wild].rsplit("/", 1)[0]) if match(p)]


def listdir(url: str | os.PathLike) -> list[str]:
    """Names directly under a folder/prefix (empty when it does not exist), hidden names excluded, sorted."""
    fs, path = filesystem(url)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(n for n in (Path(str(e).rstrip("/")).name for e in entries) if not n.startswith("."))


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- multi-file results committed by a manifest --------------------------------------------------------------------


def commit_dir(src: str | os.PathLike, url: str | os.PathLike, meta: dict | None = None) -> dict:
    """Publish a local folder's files at url, then the manifest (name, size, sha256 of each file, and meta) last.

    A local destination is built under a hidden temp name, every file and folder fsynced, and renamed whole (then
    its parent fsynced); object storage gets one PUT per file and the manifest after them. Committing a url that
    already has a manifest changes nothing (returns the existing manifest): a result is written once."""
    if committed(url):
        return read_manifest(url)
    src = Path(src)
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {"files": [{"name": p.relative_to(src).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
                          for p in files], "meta": meta or {}}
    body = json.dumps(manifest, indent=1, default=str).encode()
    if is_local(url):
        final = Path(_local(url))
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        try:
            for p in files:
                dest = work / p.relative_to(src)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dest)
            (work / MANIFEST).write_bytes(body)
            fsync_tree(work)
            if final.exists():  # files of an earlier, uncommitted attempt (no manifest): never visible, replaced
                shutil.rmtree(final)
            os.replace(work, final)
            fsync_path(final.parent)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return manifest
    fs, path = filesystem(url)
    for p in files:
        fs.put_file(str(p), f"{path}/{p.relative_to(src).as_posix()}")
    fs.pipe_file(f"{path}/{MANIFEST}", body)  # last: until it exists the result is invisible
    return manifest


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file under folder, then its sub-folders (deepest first) and folder itself.

    Called before the rename that publishes a folder: a crash after the rename must not leave the published name
    pointing at files whose bytes or directory entries never reached the disk."""
    folder = Path(folder)
    inside = list(folder.rglob("*"))
    for p in sorted(p for p in inside if not p.is_dir()):
        fsync_path(p)
    for p in sorted((p for p in inside if p.is_dir()), key=lambda p: -len(p.parts)):
        fsync_path(p)
    fsync_path(folder)


def fsync_path(path: str | os.PathLike) -> None:
    """fsync one file or folder (a folder's fsync makes the names in it, a rename's among them, durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def committed(url: str | os.PathLike) -> bool:
    return exists(join(url, MANIFEST))


def read_manifest(url: str | os.PathLike) -> dict:
    return read_json(join(url, MANIFEST))


def committed_children(url: str | os.PathLike) -> list[str]:
    """URLs of the committed results directly under url (sub-folders with a manifest), sorted by name."""
    return [join(url, name) for name in listdir(url) if committed(join(url, name))]


def fetch_dir(url: str | os.PathLike, cache_root: str | os.PathLike | None = None) -> Path:
    """A local folder holding the committed result at url, each file checked against the manifest's sha256.

    A local url is returned as it is (after checking it is committed); a remote one is downloaded once into
    `<cache_root>/<sha of the url and manifest>/` (default under $HITCHHIKER_HOME), completed by a rename."""
    if not committed(url):
        raise FileNotFoundError(f"{url} is not a committed result (no {MANIFEST}): still being written, or killed")
    if is_local(url):
        return Path(_local(url))
    body = read_bytes(join(url, MANIFEST))
    manifest = json.loads(body)
    root = Path(cache_root or hitchhiker_home() / "fetched")
    key = hashlib.sha256(str(url).encode() + body).hexdigest()[:24]
    final = root / f"{Path(str(url).rstrip('/')).name}-{key}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
    fs, path = filesystem(url)
    try:
        for entry in manifest["files"]:
            dest = work / entry["name"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{path}/{entry['name']}", str(dest))
            if dest.stat().st_size != entry["size"] or sha256_file(dest) != entry["sha256"]:
                raise ValueError(f"{url}/{entry['name']} does not match its manifest (size or sha256)")
        (work / MANIFEST).write_bytes(body)
        try:
            os.replace(work, final)
        except OSError:  # another process fetched the same result meanwhile
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


# --- DuckDB ---------------------------------------------------------------------------------------------------------


def duckdb_path(con, url: str | os.PathLike) -> str:
    """The path DuckDB reads for url: a local absolute path, or the URL with its fsspec filesystem registered on con
    (the httpfs extension cannot be installed offline; register_filesystem is the Python client's own route)."""
    if is_local(url):
        return str(Path(_local(url)).resolve())
    fs, _ = filesystem(url)
    protocols = fs.protocol if isinstance(fs.protocol, (list, tuple)) else [fs.protocol]
    if not any(p in con.list_filesystems() for p in protocols):
        # an instance of its own (not fsspec's instance cache): its life is the database's
        con.register_filesystem(_listing_glob_class(type(fs))(skip_instance_cache=True, **fs.storage_options))
    return str(url)


@functools.cache
def _listing_glob_class(cls: type) -> type:
    """cls whose glob is one recursive listing (_listed_glob). DuckDB expands a read_parquet glob through the
    registered filesystem's glob; fsspec's own lists each folder the pattern crosses, so a query over the replay on
    object storage would cost a request per date and per pair before any partition is pruned."""
    def listing_glob(self, path, **kwargs):
        return [p for p in _listed_glob(self, self._strip_protocol(path)) if not Path(p).name.startswith(".")]

    return type(f"ListingGlob{cls.__name__}", (cls,), {"glob": listing_glob})
