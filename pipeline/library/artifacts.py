"""Atomic writes and stage directories: nothing is ever half-written (invariant 4).

A stage builds its output in a hidden temporary directory beside the final one and swaps it
into place only when everything is written, so a failed or killed stage leaves the previous
good output as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.library.errors import UserError

META = "meta.json"


def make_dirs(path: Path) -> None:
    """`mkdir -p`, where a regular file in the way reads 'Not a directory' (not 'File exists')."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path)) from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename: readers see the old or the new file, never half."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """`write_text_atomic` for bytes (a parquet file)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        make_dirs(path.parent)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
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


def out_of_space(exc: OSError) -> bool:
    """Disk or quota full, also when a library (pyarrow) reports it without an errno."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or "errno 28]" in str(exc) or "No space left" in str(exc)


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
        _pause_for_tests(final.name, "swap")
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    fsync_dir(final.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it becomes `final` atomically."""
    tmp = final.with_name(f".{final.name}.tmp")
    try:
        make_dirs(final.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise UserError(f"cannot write to {final.parent}: {exc.strerror or exc}") from None
    try:
        yield tmp
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not out_of_space(exc):
            raise
        raise UserError(f"cannot write {final}: No space left on device (or quota exceeded)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _pause_for_tests(final.name, "written")
    swap_into_place(tmp, final)


def _pause_for_tests(stage: str, point: str) -> None:
    """Test hook: PIPELINE_TEST_PAUSE=stage:<dir name>:<written|swap>:<seconds> sleeps there.

    `written`: the new output is complete in its temporary directory; `swap`: the old output has
    been moved aside and the new one not yet into place. PIPELINE_TEST_PAUSE_FLAG is touched
    first, so a test knows the moment to kill the process.
    """
    kind, _, rest = os.environ.get("PIPELINE_TEST_PAUSE", "").partition(":")
    if kind != "stage" or rest.rsplit(":", 1)[0] != f"{stage}:{point}":
        return
    import time

    if flag := os.environ.get("PIPELINE_TEST_PAUSE_FLAG"):
        Path(flag).touch()
    time.sleep(float(rest.rsplit(":", 1)[1]))


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


def stage_key(*parts: str) -> str:
    """A short stable hash of the parts: a stage's cache key."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
