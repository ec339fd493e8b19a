"""Test-only fault injection: `point(name)` kills this process with SIGKILL where a test asks it to.

HITCHHIKER_KILL_AT=<name>[:<n>] names the point (and which occurrence of it in this process, default the first);
HITCHHIKER_KILL_MARK=FILE, when set, gets the point's name written to it (fsynced) just before the kill, so that a
test can tell a point that was reached from one that never was. Unset (always, outside tests): a no-op that costs
one comparison; the environment is read once per process.
"""
from __future__ import annotations

import functools
import os
import signal

KILL_ENV = "HITCHHIKER_KILL_AT"
MARK_ENV = "HITCHHIKER_KILL_MARK"
_seen: dict[str, int] = {}


@functools.cache
def _target() -> tuple[str, int] | None:
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return None
    name, _, nth = spec.partition(":")
    return name, int(nth) if nth else 1


def point(name: str) -> None:
    """SIGKILL this process if it is the point (and occurrence) HITCHHIKER_KILL_AT names; otherwise nothing."""
    target = _target()
    if target is None or target[0] != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] != target[1]:
        return
    mark = os.environ.get(MARK_ENV)
    if mark:
        with open(mark, "w") as f:
            f.write(f"{name}:{target[1]}\n")
            f.flush()
            os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
