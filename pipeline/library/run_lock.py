"""One writer per run directory: the lock every command that runs stages holds for its whole run.

Two commands with the same `output_dir` (someone's manual run while the nightly job trains,
or a notebook's `fit` beside a CLI run) would share the stages' temporary directories and the
training work directory, resume each other's checkpoints and rename half-made outputs over
each other. The second one stops at once instead, in one line naming the directory. The lock
is `flock` on the run directory itself: no lock file is left in it, and the kernel releases
the lock when its holder exits, however it exits (SIGKILL included), so a killed run never
leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.library.errors import UserError

_held: set[Path] = set()  # the directories this process holds: a nested call holds them already


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir`'s lock for the block (making the directory), or raise a UserError naming it."""
    import fcntl

    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{run_dir} is in use by another lstm-pipeline command (it holds the directory's lock); wait for it "
                f"to end, or give this one another output_dir"
            ) from None
        _held.add(run_dir)
        try:
            yield
        finally:
            _held.discard(run_dir)
    finally:
        os.close(fd)
