"""The config reference (docs/config.md), generated from the config dataclasses and their docstrings.

`python -m pipeline.config.reference` prints it, `... --update docs/config.md` rewrites the part
between the file's markers; a test keeps the file in step.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import sys
import typing
from pathlib import Path

from pipeline.config import sections as config_module
from pipeline.config.sections import Config


def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each annotated field of a dataclass."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, following in itertools.pairwise(body):
        named = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        if named and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def _type_name(tp: typing.Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " / ".join(map(str, typing.get_args(tp)))
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    args = typing.get_args(tp)
    if args:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return "null" if f.default is None else repr(f.default).replace("'", "")
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return "[]" if value == [] else ""
    return ""


def rows(cls: type, prefix: str = "") -> list[str]:
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls, vars(config_module))
    out, nested = [], []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            nested.append((hints[f.name], f"{key}."))
            continue
        out.append(f"| `{key}` | {_type_name(hints[f.name])} | `{_default(f)}` | {docs.get(f.name, '')} |")
    for sub, sub_prefix in nested:
        out += rows(sub, sub_prefix)
    return out


def markdown() -> str:
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |", *rows(Config)]
    return "\n".join(lines)


START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def embedded(readme: str) -> str:
    return readme.split(START, 1)[1].split(END, 1)[0].strip()


def update(path: Path) -> None:
    text = path.read_text()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{START}\n{markdown()}\n{END}{tail}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--update":
        update(Path(sys.argv[2]))
    else:
        print(markdown())
