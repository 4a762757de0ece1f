"""Safe loading (invariant 6): the package never unpickles and never runs code from a file it reads.

A static check of every module of `pipeline/`: no pickle-family imports, `torch.load` only with
`weights_only=True`, `yaml.safe_load` only, `np.load` only with `allow_pickle=False`, no
`pd.read_pickle`, and no `trust_remote_code=True` for Hub datasets.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


def _dotted(node: ast.AST) -> str:
    """`torch.load` for the expression torch.load; '' for anything that is not a plain dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<not a constant>"
    return "<absent>"


def problems(source: str, filename: str = "<source>") -> list[str]:
    """Every unsafe load in `source`, as 'file:line: what'."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.ImportFrom) and node.module in ("yaml", "torch", "numpy", "pandas"):
            risky = {"yaml": UNSAFE_YAML, "torch": {"load"}, "numpy": {"load"}, "pandas": {"read_pickle"}}
            found += [
                f"{where}: from {node.module} import {a.name}" for a in node.names if a.name in risky[node.module]
            ]
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name == "torch.load" and _keyword(node, "weights_only") is not True:
                found.append(f"{where}: torch.load without weights_only=True")
            elif name in {f"yaml.{f}" for f in UNSAFE_YAML}:
                found.append(f"{where}: {name} (use yaml.safe_load)")
            elif name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") is not False:
                found.append(f"{where}: {name} without allow_pickle=False")
            elif name.endswith("read_pickle"):
                found.append(f"{where}: {name}")
            if _keyword(node, "trust_remote_code") not in ("<absent>", False):
                found.append(f"{where}: trust_remote_code")
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_package_is_scanned():
    names = {p.name for p in MODULES}
    assert {"forecaster.py", "checkpoint.py", "windows.py", "loading.py", "sources.py", "records.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_no_unsafe_loading(path):
    assert problems(path.read_text(), str(path.relative_to(PACKAGE.parent))) == []


@pytest.mark.parametrize(
    ("snippet", "flagged"),
    [
        ("import pickle", True),
        ("import pickle as p", True),
        ("from pickle import loads", True),
        ("import joblib", True),
        ("torch.load(path)", True),
        ("torch.load(path, weights_only=False)", True),
        ("torch.load(path, map_location='cpu', weights_only=True)", False),
        ("from torch import load", True),
        ("yaml.load(text)", True),
        ("yaml.load(text, Loader=yaml.SafeLoader)", True),
        ("yaml.unsafe_load(text)", True),
        ("yaml.safe_load(text)", False),
        ("np.load(path)", True),
        ("numpy.load(path, allow_pickle=True)", True),
        ("np.load(path, allow_pickle=False)", False),
        ("pd.read_pickle(path)", True),
        ("datasets.load_dataset(name, trust_remote_code=True)", True),
        ("datasets.load_dataset(name)", False),
        ("safetensors.torch.load_file(path)", False),
    ],
)
def test_the_checker_finds_what_it_should(snippet, flagged):
    assert bool(problems(snippet)) is flagged, problems(snippet)
