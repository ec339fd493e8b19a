"""Benches can fail: each ends with one RESULT line from bench/_result.report and exits with its status (no bench run)."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))


def _result_module():
    spec = importlib.util.spec_from_file_location("bench_result", BENCH / "_result.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_prints_one_parseable_result_line_last_and_returns_the_exit_status(capsys):
    result = _result_module()
    assert result.report("speed", 12.3456, ">=", 10) == 0
    assert capsys.readouterr().out == "RESULT speed ratio=12.346 target=>=10 PASS\n"
    assert result.report("speed", 0.035, "<=", 0.1, checks=(("sql_seconds", 2.5, "<", 2.0),)) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == ["CHECK sql_seconds=2.5 target=<2 FAIL", "RESULT speed ratio=0.035 target=<=0.1 FAIL"]
    assert result.LINE.match(out[-1]).groups() == ("speed", "0.035", "<=", "0.1", "FAIL")
    for ratio, op, target, status in ((1.0, "<=", 1.0, 0), (1.0, "<", 1.0, 1), (1.0, ">", 1.0, 1),
                                      (float("nan"), "<=", 1.0, 1), (float("inf"), ">=", 10, 0)):
        assert result.report("x", ratio, op, target) == status, (ratio, op, target)
        assert result.LINE.match(capsys.readouterr().out.splitlines()[-1])
    with pytest.raises(ValueError, match="op"):
        result.report("x", 1.0, "=>", 1.0)
    with pytest.raises(ValueError, match="one word"):
        result.report("x", 1.0, ">=", 1.0, checks=(("sql seconds", 1.0, "<", 2.0),))


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_bench_ends_with_report_and_exits_with_its_status(script):
    tree = ast.parse(script.read_text())
    imports = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "_result"]
    assert imports and [a.name for a in imports[0].names] == ["report"], "imports report from bench/_result.py"
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "report"]
    assert len(calls) == 1, f"{script.name}: one report(...) call"
    # the verdict is the last thing its function does, and that function's value is main's return value
    (verdict,) = [f for f in functions.values() if isinstance(f.body[-1], ast.Return) and f.body[-1].value is calls[0]]
    returns = [ast.unparse(n.value) for n in ast.walk(functions["main"]) if isinstance(n, ast.Return) and n.value]
    assert verdict.name == "main" or any(r.startswith(f"{verdict.name}(") for r in returns), \
        f"{script.name}: main must return report(...)'s value"
    name, _, op = calls[0].args[:3]
    assert isinstance(name, ast.Constant) and name.value == script.stem, "the RESULT's name is the script's"
    assert isinstance(op, ast.Constant) and op.value in _result_module().OPS
    # ... and the process exits with it
    guard = tree.body[-1]
    assert isinstance(guard, ast.If) and ast.unparse(guard.test) == "__name__ == '__main__'"
    assert [ast.unparse(s) for s in guard.body] == ["sys.exit(main())"], script.name
    # no hand-written RESULT line besides it (the docstring may describe one)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            assert not str(node.values[0].value).startswith("RESULT"), f"{script.name}: prints its own RESULT line"
