"""The house: no import cycle in hitchhiker/ or flows/ (an import inside a function counts), the library reaches
flows/ only from its top floor (hitchhiker/cli.py), the states stage sits below the models, and no module passes
600 lines. The same graph as ../shared/tools/imports.py, computed here so the suite needs nothing beside the checkout.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hitchhiker", "flows")
TOP_FLOOR = "hitchhiker.cli"  # the only library module that may import flows (the CLI sets up Prefect)
MAX_LINES = 600


def module_files(root: Path) -> dict[str, Path]:
    """Every module under the packages: dotted name -> file (a package is its __init__.py)."""
    files = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports, wherever the import statement is (module level or in a function)."""
    files = module_files(root)
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: climb from this module's package
                    up = package.split(".")[: package.count(".") + 2 - node.level]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names]  # a submodule, or a name defined in base
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name and target not in ancestors:
                    deps.add(target)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Everything `start` imports, directly or through other project modules."""
    seen, todo = set(), [start]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def above_the_library(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Library modules (other than the CLI) that import flows or the CLI: module -> what it should not import."""
    out = {}
    for module, deps in graph.items():
        if module.split(".")[0] == "hitchhiker" and module != TOP_FLOOR:
            up = {d for d in deps if d.split(".")[0] == "flows" or d == TOP_FLOOR}
            if up:
                out[module] = up
    return out


def too_long(root: Path) -> dict[str, int]:
    lengths = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in module_files(root).items()}
    return {name: n for name, n in lengths.items() if n > MAX_LINES}


def test_no_import_cycle():
    cycle = find_cycle(import_graph(ROOT))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_library_imports_flows_only_from_the_cli():
    assert above_the_library(import_graph(ROOT)) == {}


def test_states_sit_below_the_models():
    """Prompt tokens are counted by the tokenizer the caller hands in: the states stage imports no model code."""
    graph = import_graph(ROOT)
    assert reachable(graph, "hitchhiker.states") & {"hitchhiker.policy", "hitchhiker.default_model"} == set()
    assert "hitchhiker.states" not in graph["hitchhiker.policy"]


def test_no_module_passes_600_lines():
    assert too_long(ROOT) == {}


def test_the_checks_catch_a_planted_cycle_a_flows_import_and_a_long_module(tmp_path):
    (tmp_path / "hitchhiker" / "sub").mkdir(parents=True)
    (tmp_path / "flows").mkdir()
    files = {
        "hitchhiker/__init__.py": "",
        "hitchhiker/a.py": "from hitchhiker import b\n",
        "hitchhiker/b.py": "def f():\n    from hitchhiker.sub.c import g  # lazy: counts all the same\n",
        "hitchhiker/sub/__init__.py": "",
        "hitchhiker/sub/c.py": "from ..a import x\nimport flows.run\n" + "\n" * MAX_LINES,
        "flows/__init__.py": "",
        "flows/run.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).write_text(text)
    graph = import_graph(tmp_path)
    assert find_cycle(graph) == ["hitchhiker.a", "hitchhiker.b", "hitchhiker.sub.c", "hitchhiker.a"]
    assert above_the_library(graph) == {"hitchhiker.sub.c": {"flows.run"}}
    assert too_long(tmp_path) == {"hitchhiker.sub.c": MAX_LINES + 2}
