"""Loading a config: YAML (PyYAML's safe loader only) plus `key.sub=value` overrides, checked key by key.

Unknown keys are errors with a suggestion, never silently ignored, and so is a key given twice in
one mapping of the file; every value is coerced to its field's type here, so a bad value fails
before any work starts and the message names the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.config.sections import Config
from pipeline.library.errors import ConfigError


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the defaults when `path` is None) and apply `key.sub=value` overrides."""
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = _read_yaml(p.read_text())
        except ConfigError as exc:  # a key given twice
            raise ConfigError(f"{path}: {exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{path}: YAML syntax error{line}: {problem}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text (UTF-8) YAML file") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}")
        raw = loaded
    for item in overrides:
        check_override(item)  # a wrong key or value is the override's fault, not the file's
        _apply_override(raw, item)
    try:
        return build(Config, raw, "", where)
    except ConfigError as exc:  # a check that fails on a key an override set names the override
        named = [item for item in overrides if re.search(rf"\b{re.escape(parse_override(item)[0])}\b", str(exc))]
        if not named or not str(exc).startswith(f"{where}: "):
            raise
        raise ConfigError(f"override '{named[-1]}': {str(exc)[len(where) + 2 :]}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (the safe loader keeps the last silently)."""

    def get_single_node(self) -> yaml.Node | None:
        self.root = super().get_single_node()  # kept to name a duplicate's section
        return self.root

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden key by key
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                again = key in first
            except TypeError:  # an unhashable key: the safe loader's own error says so
                continue
            if again:
                where = ".".join([*_section_of(self.root, node, set()), str(key)])
                raise ConfigError(f"duplicate key '{where}' at line {line} (first at line {first[key]})")
            first[key] = line
        return super().construct_mapping(node, deep)


def _section_of(root: yaml.Node | None, target: yaml.Node, seen: set[int]) -> list[str]:
    """The keys leading from `root` to the mapping `target` (its section), [] at the top or not found."""
    if root is target or not isinstance(root, yaml.MappingNode) or id(root) in seen:
        return []
    seen.add(id(root))
    for key_node, child in root.value:
        if child is target:
            return [str(key_node.value)]
        inner = _section_of(child, target, seen)
        if inner:
            return [str(key_node.value), *inner]
    return []


def _read_yaml(text: str) -> Any:
    """The document in `text`, loaded safely (plain data only), every mapping's keys distinct."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def key_type(key: str) -> Any:
    """The type of config key `key` (`train.lr`, `seed`); a ConfigError with a suggestion when there is none."""
    cls, prefix = Config, ""
    parts = key.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{part}'{hint}")
        tp = hints[part]
        if i == len(parts) - 1:
            return tp
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"unknown config key '{key}' ('{prefix}{part}' is not a section)")
        cls, prefix = tp, f"{prefix}{part}."
    raise ConfigError("empty config key")


def check_override(item: str) -> None:
    """One override on its own: the key exists and the value has its type (one line naming the override)."""
    key, value = parse_override(item)
    where = f"override '{item}'"
    try:
        tp = key_type(key)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if dataclasses.is_dataclass(tp) and not isinstance(value, dict):
        first = dataclasses.fields(tp)[0].name
        raise ConfigError(f"{where}: '{key}' must be a mapping, got {_describe(value)} (set a key: {key}.{first}=...)")
    _coerce(tp, value, key, where)


def parse_override(item: str) -> tuple[str, Any]:
    """`train.lr=0.001` or `--train.lr=0.001` (the form W&B sweep agents pass) into key and value."""
    text = item[2:] if item.startswith("--") else item
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{item}' must look like key.sub=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, value = parse_override(item)
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:  # a section left empty in the YAML (all its keys commented out)
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override '{item}': '{'.'.join(parts[: i + 1])}' is not a section")
        node = child
    node[parts[-1]] = value


def build(cls: type, data: Any, prefix: str, where: str) -> Any:
    """Turn a mapping into dataclass `cls`, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{prefix or 'config'}' must be a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in _nested(data, prefix, where).items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown config key '{full}'{hint}")
        kwargs[key] = _coerce(hints[key], value, full, where)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _nested(data: dict, prefix: str, where: str) -> dict:
    """`data` with dotted keys (`synthetic.n_series: 3` in the `data` section, as the docs and overrides name
    keys) as the sections they name; a key given both ways is refused, as a key given twice is."""
    if not any(isinstance(key, str) and "." in key for key in data):
        return data
    out: dict = {}
    for key, value in data.items():
        parts = key.split(".") if isinstance(key, str) else [key]
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                name = ".".join(p for p in (prefix, *map(str, parts[: i + 1])) if p)
                raise ConfigError(f"{where}: '{name}' is given a value and keys below it")
            node = child
        leaf = parts[-1]
        if leaf in node:
            full = ".".join(p for p in (prefix, *map(str, parts)) if p)
            both = isinstance(node[leaf], dict) and isinstance(value, dict)
            again = sorted(map(str, set(node[leaf]) & set(value))) if both else []
            if not both or again:
                raise ConfigError(f"{where}: config key '{full}{'.' + again[0] if again else ''}' is given twice")
            value = {**node[leaf], **value}
        node[leaf] = value
    return out


def _coerce(tp: Any, value: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value if value is not None else {}, key, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        choices = [a for a in args if a is not type(None)]
        for arg in choices:
            try:
                return _coerce(arg, value, key, where)
            except ConfigError:
                pass
        kinds = [a for a in choices if not (a is int and float in choices)]  # int | float: "a number"
        wanted = " or ".join(_kind(a) for a in kinds) + (" or null" if type(None) in args else "")
        raise ConfigError(f"{where}: {key} must be {wanted}, got {_describe(value)}")
    if origin is Literal:
        if value is False and "no" in args:  # YAML 1.1 reads an unquoted `no` as false
            value = "no"
        elif isinstance(value, bool) and str(value).lower() in args:  # `true`/`false` choices
            value = str(value).lower()
        if value not in args:
            choices = "|".join(map(str, args))
            raise ConfigError(f"{where}: {key} must be one of {choices}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list, got {_describe(value)}")
        return [_coerce(args[0], v, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key} must be an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key} must be a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _kind(tp: Any) -> str:
    """How a type reads in an error message."""
    if typing.get_origin(tp) is Literal:
        return "|".join(map(str, typing.get_args(tp)))
    kinds = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return kinds.get(tp, "a list" if typing.get_origin(tp) is list else getattr(tp, "__name__", str(tp)))


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "nothing (null)"


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config so a run can be reproduced from its directory alone."""
    from pipeline.library.artifacts import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
