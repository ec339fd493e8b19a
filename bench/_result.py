"""The verdict every bench ends with: one `RESULT` line and the exit status that goes with it.

    RESULT <name> ratio=<number> target=<op><number> PASS|FAIL

is the last line a bench prints (its other figures come before it), and the bench exits 1 on FAIL, so a script or
CI job running it fails too. A bench whose target has a second condition (a time cap, an agreement) prints each as a
`CHECK <what>=<number> target=<op><number> PASS|FAIL` line before it; the RESULT passes only when they all do.
"""
from __future__ import annotations

import math
import operator
import re

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
NUMBER = r"-?(?:\d+(?:\.\d+)?|nan|inf)"
LINE = re.compile(rf"^RESULT (\w+) ratio=({NUMBER}) target=(>=|<=|>|<)({NUMBER}) (PASS|FAIL)$")


def report(name: str, ratio: float, op: str, target: float,
           checks: tuple[tuple[str, float, str, float], ...] = ()) -> int:
    """Print the CHECK lines and the RESULT line; return the exit status (0 PASS, 1 FAIL).

    checks: (what, value, op, target) conditions the verdict also needs; `what` is one word (`sql_seconds`).
    A NaN value fails (no comparison holds).
    """
    passed = True
    for what, value, check_op, check_target in checks:
        if not re.fullmatch(r"\w+", what):
            raise ValueError(f"check name {what!r} must be one word")
        ok = _holds(value, check_op, check_target)
        passed &= ok
        print(f"CHECK {what}={_number(value)} target={check_op}{_number(check_target)} {'PASS' if ok else 'FAIL'}")
    passed &= _holds(ratio, op, target)
    print(f"RESULT {name} ratio={_number(ratio)} target={op}{_number(target)} {'PASS' if passed else 'FAIL'}",
          flush=True)
    return 0 if passed else 1


def _holds(value: float, op: str, target: float) -> bool:
    if op not in OPS:
        raise ValueError(f"op {op!r} is not one of {sorted(OPS)}")
    return not math.isnan(value) and OPS[op](value, target)


def _number(x: float) -> str:
    """Up to 3 decimals, trailing zeros dropped: 0.035, 12.5, 10."""
    if math.isnan(x) or math.isinf(x):
        return str(float(x))
    text = f"{x:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text
