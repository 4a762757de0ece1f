"""The model registry's store: its layout, the lock, the history, and the atomic `current` switch.

Layout, under `registry.dir`:

```
<name>/v0001/ v0002/ ...   one per evaluated challenger: a copy of the export directory (loadable
                           as is, manifest-checked) + metrics.json + run_config.yaml + data.json
                           + decision.json (its history record); the export's meta.json key tells
                           whether a rerun's export is already here
<name>/current             -> vNNNN: the version that serves (a relative symlink, or on a file
                           system without symlinks a one-line pointer file naming the version)
<name>/history.jsonl       one record per decision: time, version, both scores, decision, reason
                           (and one per rollback: `rolled_back`, the version withdrawn and its export key)
```

Only `current` decides what serves. Whoever changes the store holds `locked(root)`; a version
is built in a hidden temporary directory and renamed into place, `current` is switched by an
atomic rename, then the history record is appended (one write, so readers see whole lines).
`recover` tidies up after a process killed in between. What to promote is the policy's
business (`pipeline.orchestrators.registry`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.library.artifacts import fsync_dir, write_text_atomic
from pipeline.library.errors import UserError

log = logging.getLogger("pipeline")

CURRENT = "current"


HISTORY = "history.jsonl"


LOCK = ".lock"


DECISION = "decision.json"
METRICS = "metrics.json"
RUN_CONFIG = "run_config.yaml"
DATA = "data.json"
ADDED = (METRICS, RUN_CONFIG, DATA, DECISION)
"""The files a version holds beside its export's own."""


def export_files(version_dir: Path) -> list[Path]:
    """The export's own files in a version (what the export stage logged to W&B as the model artifact)."""
    return sorted(p for p in version_dir.iterdir() if p.is_file() and p.name not in ADDED)


_VERSION = re.compile(r"^v(\d{4,})$")


def is_version(name: str) -> bool:
    """Whether `name` is a version directory's name (v0001, v0002, ...)."""
    return bool(_VERSION.match(name))


def versions(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if _VERSION.match(p.name) and p.is_dir()), key=number)


def number(version: str) -> int:
    return int(version[1:])


def current_version(root: Path) -> str | None:
    """The version `current` names (whether or not it exists), or None when nothing was promoted."""
    pointer = root / CURRENT
    if pointer.is_symlink():
        return Path(os.readlink(pointer)).name
    if pointer.is_file():
        return pointer.read_text().strip() or None
    return None


def champion_dir(root: Path) -> Path | None:
    """The promoted version's directory, None without a champion; a clear error when it is missing."""
    version = current_version(root)
    if version is None:
        return None
    path = root / version
    if not (path / "model.safetensors").is_file():
        raise UserError(
            f"registry {root}: {CURRENT} points at version {version}, which is missing ({path} does not exist "
            f"or is incomplete); restore {version} or point {CURRENT} at an existing version"
        )
    return path


def resolve_model_dir(path: Path) -> Path:
    """A model directory given to `predict`; a registry's `current` (symlink or pointer file) is followed."""
    if path.name == CURRENT and (path.is_symlink() or path.is_file()):
        return champion_dir(path.parent) or path
    return path


def switch_current(root: Path, version: str) -> None:
    """Point `current` at `version` atomically: made under a temporary name, then renamed over it."""
    tmp = root / f".{CURRENT}.tmp{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.symlink(version, tmp)
    except OSError:  # a file system without symlinks: a pointer file, written atomically
        write_text_atomic(root / CURRENT, version + "\n")
    else:
        os.replace(tmp, root / CURRENT)
    fsync_dir(root)


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """One registry operation at a time per registry name (another waits for the lock)."""
    import fcntl

    try:
        root.mkdir(parents=True, exist_ok=True)
        fh = open(root / LOCK, "a")  # noqa: SIM115 - held for the whole block
    except OSError as exc:
        raise UserError(f"registry {root}: cannot write: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield
    finally:
        fh.close()


def read_history(root: Path) -> list[dict]:
    """The decisions of history.jsonl, oldest first. A line that is no record (a write torn by a crash, or an edit
    by hand) is left out with a warning naming it: every reader takes the records' fields."""
    path = root / HISTORY
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif line.strip():
            log.warning("registry: line %d of %s is no decision record; left out", number, path)
    return records


def append_history(root: Path, record: dict) -> None:
    line = json.dumps(record, sort_keys=False) + "\n"
    fd = os.open(root / HISTORY, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one small write in append mode: readers see whole lines
        os.fsync(fd)
    finally:
        os.close(fd)


def recover(root: Path) -> None:
    """Tidy up after a run killed inside its registry step (called under the lock).


    Leftover temporary version directories are removed; a version that was renamed into place
    but never reached history.jsonl gets its record appended (as `interrupted` when it was to be
    promoted but `current` was not switched yet).
    """
    for tmp in root.glob(".v*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    recorded = {r.get("version") for r in read_history(root)}
    current = current_version(root)
    for version in versions(root):
        path = root / version / DECISION
        if version in recorded or not path.is_file():
            continue
        record = json.loads(path.read_text())
        if record.get("decision") == "promoted" and current != version:
            record.update(decision="interrupted", reason="the run stopped before current was switched")
        record["current"] = current
        record["recovered"] = True
        append_history(root, record)


def prune_versions(root: Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` versions, never the one `current` names; the versions deleted."""
    current = current_version(root)
    old = [v for v in versions(root)[:-keep] if v != current]
    for version in old:
        shutil.rmtree(root / version, ignore_errors=True)
    return old


def export_key(root: Path, version: str) -> str | None:
    """The key of the export a version holds (its export's meta.json), None where it cannot be read."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return json.loads((root / version / "meta.json").read_text()).get("key")
    return None


def version_of_export(root: Path, key: str) -> str | None:
    """The version already holding the export made with `key`, if any."""
    return next((v for v in reversed(versions(root)) if export_key(root, v) == key), None)


ROLLED_BACK = "rolled_back"


def withdrawn_keys(records: list[dict]) -> set[str]:
    """The export keys a rollback took out of service and no later rollback put back: such an export is never
    promoted again, so a night with nothing new cannot undo an operator's rollback."""
    withdrawn: set[str] = set()
    for record in records:
        if record.get("decision") == ROLLED_BACK:
            withdrawn.discard(record.get("export_key"))
            if record.get("withdrawn_export_key"):
                withdrawn.add(record["withdrawn_export_key"])
    return withdrawn


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")
