"""A real S3 server on 127.0.0.1 for storage tests: moto's standalone server (the `moto_server` script of moto[server])
as a subprocess, with the AWS variables pointing s3fs/botocore at it.

Use it from a test module with `from s3_server import s3  # noqa: F401` (tests/ is on sys.path, as for
http_fixtures): module-scoped, so each module that asks for it gets its own server, stopped when the module ends.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

MOTO_SERVER = str(Path(sys.executable).parent / "moto_server")
ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:<port>
    bucket: str

    def url(self, prefix: str = "") -> str:
        """s3://<bucket>/<prefix>"""
        return f"s3://{self.bucket}/{prefix.strip('/')}".rstrip("/")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clear_fsspec_cache() -> None:
    """fsspec caches filesystem instances by their arguments, not by the endpoint in the environment: one built for an
    earlier server would keep talking to it."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server with one empty bucket; AWS_* variables point at it while the module runs."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **ENV}, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                    break
            except urllib.error.HTTPError:  # an answer all the same
                break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"moto_server did not start on {endpoint}: {log.read()[-3000:].decode(errors='replace')}")
            time.sleep(0.1)
        with pytest.MonkeyPatch.context() as mp:
            for k, v in {**ENV, "AWS_ENDPOINT_URL": endpoint}.items():
                mp.setenv(k, v)
            _clear_fsspec_cache()
            import s3fs

            bucket = "hitchhiker-test"
            s3fs.S3FileSystem().mkdir(bucket)
            try:
                yield S3Server(endpoint, bucket)
            finally:
                _clear_fsspec_cache()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
