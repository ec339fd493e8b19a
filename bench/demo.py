"""Benchmark: `hitchhiker demo` as a newcomer runs it, against its budget: 180 s with the default model cached, and
300 s for the model's first build plus the demo.

The demo runs as a subprocess in an empty folder, offline, like tests/test_demo.py's (which checks what it does, not
how fast). The model is built first, timed apart, when the cache is empty; --from-scratch uses an empty cache (a temp
$HITCHHIKER_HOME) so that the build is always timed.

    .venv/bin/python bench/demo.py [--from-scratch]

Ends with: RESULT demo ratio=<demo seconds / 180 s> target=<=1 PASS|FAIL (after a CHECK of build + demo <= 300 s).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _result import report  # noqa: E402  (bench/ is the script's own folder on sys.path)

BUDGET_S = 180.0  # with the default model cached, on 2 cores
FROM_SCRATCH_BUDGET_S = 300.0  # the model's first build plus the demo
HITCHHIKER = str(Path(sys.executable).parent / "hitchhiker")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-scratch", action="store_true", help="an empty model cache: the build is timed too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hh-bench-demo-") as tmp:
        env = {k: v for k, v in os.environ.items() if k != "HITCHHIKER_DB"}
        if args.from_scratch:
            env["HITCHHIKER_HOME"] = str(Path(tmp) / "home")
        started = time.perf_counter()  # the build (nothing when cached), in a child so that it uses env's cache
        subprocess.run([sys.executable, "-c", "from hitchhiker.default_model import default_model_path as d; d()"],
                       env=env, cwd=ROOT, check=True)
        build_s = time.perf_counter() - started
        cwd = Path(tmp) / "fresh-clone"
        cwd.mkdir()
        started = time.perf_counter()
        p = subprocess.run([HITCHHIKER, "demo"], cwd=cwd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if p.returncode:
        print(p.stdout[-3000:] + p.stderr[-3000:], file=sys.stderr)
        seconds = float("nan")  # a failed demo has no time
    print(f"default model build: {build_s:.0f} s; hitchhiker demo: {seconds:.0f} s (budget {BUDGET_S:.0f} s); "
          f"build + demo {build_s + seconds:.0f} s (budget {FROM_SCRATCH_BUDGET_S:.0f} s)")
    return report("demo", seconds / BUDGET_S, "<=", 1.0,
                  checks=(("build_plus_demo_seconds", build_s + seconds, "<=", FROM_SCRATCH_BUDGET_S),))


if __name__ == "__main__":
    sys.exit(main())
