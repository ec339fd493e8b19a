"""A real Prefect server and process worker on 127.0.0.1 for orchestration tests, and headless Chromium for the UI."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

PREFECT = str(Path(sys.executable).parent / "prefect")
HITCHHIKER = str(Path(sys.executable).parent / "hitchhiker")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(home: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # Deployments carry real schedules (daily at 17:30 New York): a test server must not start them on its own.
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db",
    )
    return env


@contextmanager
def prefect_server(home: Path, startup_timeout_s: float = 240):
    """Start the server as users do, `hitchhiker server` (which runs `prefect server start` with the UI pointed at
    its own API), on a free loopback port; yields the clients' environment (PREFECT_API_URL set)."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = server_env(home, port)
    # Left to `hitchhiker server`, so that the UI test checks the URL the command gives the UI.
    own = {k: v for k, v in env.items() if k != "PREFECT_UI_API_URL"}
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(
        [HITCHHIKER, "server", "--host", "127.0.0.1", "--port", str(port)],
        env=own, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Prefect server did not start: {(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield env
    finally:
        _stop(proc)
        log.close()


@contextmanager
def process_worker(env: dict[str, str], pool: str, cwd: Path, log_path: Path, user: str | None = None):
    """A `prefect worker start --pool POOL` subprocess (process type) running flows from `cwd` (as `user`: another
    machine's worker, with that user's permissions and group `nogroup`)."""
    as_user = {"user": user, "group": "nogroup", "extra_groups": []} if user else {}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", pool, "--type", "process"],
            env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **as_user,
        )
        try:
            yield proc
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)


def ensure_chromium() -> str:
    """The Debian chromium binary, installed with apt-get when missing (the tests install what they need)."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError("chromium is missing and the tests are not root: install Debian's `chromium` package")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, capture_output=True)
    return shutil.which("chromium") or "/usr/bin/chromium"
