"""Atomic writes and stage directories: nothing is ever half-written (invariant 4).

A stage builds its output in a hidden temporary directory beside the final one and swaps it
into place only when everything is written, so a failed or killed stage leaves the previous
good output as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

META = "meta.json"


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename: readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _old_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def recover(final: Path) -> None:
    """Undo a swap interrupted between its two renames (the old output is put back)."""
    old = _old_path(final)
    if old.exists():
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)


def swap_into_place(tmp: Path, final: Path) -> None:
    """Replace directory `final` by `tmp`; a kill at any point leaves one complete version."""
    recover(final)
    old = _old_path(final)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(final.parent)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it becomes `final` atomically."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
    except OSError as exc:
        raise UserError(f"cannot write to {final.parent}: {exc.strerror or exc}") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_into_place(tmp, final)


def read_meta(stage_dir: Path) -> dict[str, Any] | None:
    """The stage's meta.json, or None when the stage has no complete output."""
    recover(stage_dir)
    path = stage_dir / META
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def is_cached(stage_dir: Path, key: str) -> bool:
    """True when the stage's output was made from exactly these inputs (invariant 5)."""
    meta = read_meta(stage_dir)
    return meta is not None and meta.get("key") == key


def require_stage(stage_dir: Path, stage: str, needed_by: str) -> dict[str, Any]:
    """Upstream meta, or a clear error naming the stage to run first."""
    meta = read_meta(stage_dir)
    if meta is None:
        raise UserError(
            f"{needed_by}: no output of the '{stage}' stage in {stage_dir}; "
            f"run 'lstm-pipeline {stage}' (or 'lstm-pipeline run') first"
        )
    return meta


def stage_key(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
