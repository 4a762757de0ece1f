"""One command at a time per run directory: a second one on the same output_dir stops in one line."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.library.errors import UserError
from pipeline.library.run_lock import run_lock

from .conftest import REPO, cli_in_process, write_config

HOLD = "import sys, time; from pathlib import Path; from pipeline.library.run_lock import run_lock\n" \
       "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(600)\n"  # fmt: skip


def holder(run_dir: Path) -> subprocess.Popen:
    """Another process holding `run_dir`'s lock, as a running command does."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_command_on_a_run_directory_in_use_stops_and_writes_nothing(tmp_path):
    config = write_config(tmp_path, {"export.onnx": False, "train.max_steps": 10})
    run = tmp_path / "run"
    proc = holder(run)
    try:
        for command in ("run", "ingest", "train"):
            result = cli_in_process(command, "--config", str(config))
            assert result.returncode == 2
            assert result.stderr.strip().splitlines() == [
                f"error: {run.resolve()} is in use by another lstm-pipeline command (it holds the directory's lock); "
                "wait for it to end, or give this one another output_dir"
            ]
        assert sorted(run.iterdir()) == []
    finally:
        proc.send_signal(signal.SIGKILL)  # the kernel releases the lock with its holder, however it ends
        proc.wait(timeout=30)
    result = cli_in_process("run", "--config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no lock file left behind


def test_the_lock_is_held_once_per_process_and_released_by_an_error_too(tmp_path):
    taken = [sys.executable, "-c", HOLD.replace("time.sleep(600)", "pass"), str(tmp_path / "run")]
    with run_lock(tmp_path / "run"), run_lock(tmp_path / "run"):  # the API may run stages within a run
        refused = subprocess.run(taken, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "is in use by another lstm-pipeline command" in refused.stderr
    with pytest.raises(UserError, match="bad input"), run_lock(tmp_path / "run"):
        raise UserError("bad input")
    free = subprocess.run(taken, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert free.returncode == 0 and free.stdout.strip() == "held", free.stderr
