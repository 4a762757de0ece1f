"""The package's layers, checked on its source: imports go down only, stages never import each other, no cycles.

library (0) < config (1) < stages (2) < orchestrators (3): a module may import its own layer or a
lower one. Every import counts, at the top of a module, inside a function or under
`TYPE_CHECKING`: an import hidden in a function is a dependency all the same.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pipeline.stages.table import NAMES, STAGES

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
LAYERS = {"library": 0, "config": 1, "stages": 2, "orchestrators": 3}
STAGE_MODULES = {f"pipeline.stages.{name}" for name in NAMES}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path = PACKAGE) -> dict[str, str]:
    """Every module of the package by dotted name: its source."""
    return {module_name(p, root): p.read_text() for p in sorted(root.rglob("*.py"))}


def imports_of(name: str, source: str, known: set[str]) -> set[str]:
    """The package modules `name` imports anywhere in its source (`from a import b` is module a.b when a.b is one)."""
    found = set()
    is_package = f"{name}.__init__" in known or any(k.startswith(name + ".") for k in known)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parent = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                base = f"{parent}.{base}".rstrip(".")
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m == "pipeline" or m.startswith("pipeline.")} & known


def layer_of(name: str) -> int | None:
    """The layer of a module: None for the package's own `__init__` and `__main__` (outside the layers)."""
    parts = name.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def violations(modules: dict[str, str]) -> list[str]:
    known = set(modules)
    found = []
    for name, source in modules.items():
        mine = layer_of(name)
        for target in sorted(imports_of(name, source, known)):
            theirs = layer_of(target)
            if name.endswith("__main__") or theirs is None:
                continue
            if mine is None and name == "pipeline":
                found.append(f"{name} imports {target}: the package's __init__ imports no layer")
            elif mine is not None and theirs > mine:
                found.append(f"{name} (layer {mine}) imports {target} (layer {theirs}): imports go down only")
            elif name in STAGE_MODULES and target in STAGE_MODULES and target != name:
                found.append(f"{name} imports {target}: a stage never imports another stage")
    return found


def cycles(modules: dict[str, str]) -> list[list[str]]:
    """Strongly connected groups of more than one module (or a module importing itself): import cycles."""
    known = set(modules)
    graph = {name: sorted(imports_of(name, source, known) - {name}) for name, source in modules.items()}
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return groups


def test_the_three_layers_are_folders():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert {"library", "config", "stages", "orchestrators"} <= folders
    loose = {p.name for p in PACKAGE.glob("*.py")}
    assert loose == {"__init__.py", "__main__.py"}, f"modules outside the layers: {loose}"


def test_imports_go_down_only_and_no_stage_imports_another():
    assert violations(package_modules()) == []


def test_no_import_cycles():
    assert cycles(package_modules()) == []


def test_every_stage_in_the_table_is_a_module_with_run():
    modules = package_modules()
    assert [s.name for s in STAGES] == ["ingest", "window", "train", "evaluate", "export"]
    for stage in STAGES:
        tree = ast.parse(modules[f"pipeline.stages.{stage.name}"])
        assert "run" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert stage.upstream is None or stage.upstream in NAMES


def test_the_library_never_takes_the_config():
    """No library function has a parameter typed `Config` (it cannot import it either: the layers say so)."""
    typed = []
    for name, source in package_modules().items():
        if layer_of(name) != 0:
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
                typed += [f"{name}.{node.name}({a.arg})" for a in args if a.annotation is not None
                          and re.search(r"\bConfig\b", ast.unparse(a.annotation))]  # fmt: skip
    assert typed == []


@pytest.mark.parametrize(
    ("modules", "expected"),
    [
        ({"pipeline.library.a": "from pipeline.stages import b", "pipeline.stages.b": ""}, "imports go down only"),
        ({"pipeline.library.a": "def f():\n    import pipeline.orchestrators.c", "pipeline.orchestrators.c": ""},
         "imports go down only"),
        ({"pipeline.stages.train": "from pipeline.stages.ingest import run", "pipeline.stages.ingest": ""},
         "never imports another stage"),
        ({"pipeline.config.a": "if TYPE_CHECKING:\n    from ..stages import b", "pipeline.stages.b": ""},
         "imports go down only"),
    ],
)  # fmt: skip
def test_the_checker_finds_a_wrong_import(modules, expected):
    found = violations(modules)
    assert len(found) == 1 and expected in found[0], found


def test_the_checker_finds_a_cycle_through_an_import_inside_a_function():
    modules = {
        "pipeline.library.a": "from pipeline.library import b",
        "pipeline.library.b": "def f():\n    from pipeline.library.c import g",
        "pipeline.library.c": "import pipeline.library.a",
        "pipeline.library.d": "from pipeline.library import a",
    }
    assert cycles(modules) == [["pipeline.library.a", "pipeline.library.b", "pipeline.library.c"]]
