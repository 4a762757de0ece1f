"""Exact resume: a run killed with SIGKILL at a random moment ends bit-for-bit like an uninterrupted one."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from .conftest import REPO, cli, cli_in_process, load_weights, torchrun, write_config

pytestmark = pytest.mark.slow

SETTINGS = {
    "window.lookback": 48,
    "model.hidden_size": 32,
    "model.num_layers": 2,
    "model.dropout": 0.1,  # exercises the saved RNG state
    "train.max_steps": 120,
    "train.checkpoint_every": 25,
    "train.eval_every": 20,
    "train.log_every": 1,
    "train.keep_last": 3,
    "train.num_threads": 1,
    "export.onnx": False,
}


def prepared(root: Path, **overrides) -> Path:
    config = write_config(root, {**SETTINGS, **overrides})
    for stage in ("ingest", "window"):
        result = cli_in_process(stage, "--config", str(config))
        assert result.returncode == 0, result.stderr[-2000:]
    return config


def start_training(config: Path, nproc: int, env: dict | None = None, *extra: str) -> subprocess.Popen:
    if nproc == 1:
        full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
        command = [sys.executable, "-m", "pipeline", "train", "--config", str(config), *extra]
        return subprocess.Popen(
            command,
            cwd=REPO,
            env=full_env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return torchrun(
        nproc,
        "train",
        "--config",
        str(config),
        *extra,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def logged_step(run: Path) -> int:
    path = run / ".train.work/metrics.jsonl"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
    return max(steps, default=0)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it (torchrun starts its workers in new sessions)."""
    try:
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = [proc.pid]
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for pid in family[1:]:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(timeout=30)


def kill_at_step(config: Path, nproc: int, target: int, *extra: str) -> None:
    """Start training (`train --config config *extra`) and SIGKILL the whole process group once its work
    directory has logged `target` steps."""
    run = config.parent / "run"
    trained = (run / "train/meta.json").exists()  # a retraining over a finished run (--force, other settings)
    proc = start_training(config, nproc, None, *extra)
    deadline = time.monotonic() + 240
    try:
        while logged_step(run) < target:
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "training too slow to reach the kill step"
            time.sleep(0.002)
    finally:
        kill_group(proc)
    assert trained or not (run / "train/meta.json").exists(), "the run finished before the kill"


def finish(config: Path, nproc: int, real_process: bool = False) -> str:
    """Train to the end (resuming where a killed run left off): 1 process runs the CLI's `main` here unless
    `real_process`, more run under torchrun."""
    if nproc > 1:
        result = torchrun(nproc, "train", "--config", str(config))
    else:
        result = (cli if real_process else cli_in_process)("train", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def assert_bitwise_equal(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "best/model.safetensors"):
        wa, wb = load_weights(a / "train" / name), load_weights(b / "train" / name)
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"{name}:{key} differs after resume"
    losses = [
        [
            (r["step"], r.get("loss"), r.get("val_loss"))
            for r in map(json.loads, (d / "train/metrics.jsonl").read_text().splitlines())
        ]
        for d in (a, b)
    ]
    assert losses[0] == losses[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, one per world size."""
    refs = {}
    for nproc in (1, 2):
        config = prepared(tmp_path_factory.mktemp(f"reference{nproc}"))
        finish(config, nproc)
        refs[nproc] = config.parent / "run"
    return refs


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigkill_at_a_random_step_then_resume_is_bit_for_bit(tmp_path, reference, nproc):
    seed = int(time.time())
    target = random.Random(seed).randint(SETTINGS["train.checkpoint_every"] + 1, 100)
    config = prepared(tmp_path)
    kill_at_step(config, nproc, target)
    work = tmp_path / "run/.train.work/checkpoints"
    assert any(p.name.startswith("step_") for p in work.iterdir()), f"no checkpoint before the kill (seed {seed})"
    stderr = finish(config, nproc, real_process=True)  # resumed as a user resumes: a new process
    assert "resumed from" in stderr, stderr[-2000:]
    assert_bitwise_equal(tmp_path / "run", reference[nproc])


def test_kill_during_a_checkpoint_save_keeps_the_previous_one(tmp_path, reference):
    config = prepared(tmp_path)
    flag = tmp_path / "paused"
    proc = start_training(
        config, 1, env={"PIPELINE_TEST_PAUSE": "checkpoint:50:60", "PIPELINE_TEST_PAUSE_FLAG": str(flag)}
    )
    deadline = time.monotonic() + 120
    try:
        while not flag.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        kill_group(proc)
    checkpoints = tmp_path / "run/.train.work/checkpoints"
    assert (checkpoints / ".tmp_step_50").is_dir()  # the half-written save
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("step_")) == ["step_25"]
    stderr = finish(config, 1)
    assert "resumed from" in stderr and "step_25" in stderr
    assert_bitwise_equal(tmp_path / "run", reference[1])


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, reference):
    config = prepared(tmp_path)
    kill_at_step(config, 1, 60)
    checkpoints = tmp_path / "run/.train.work/checkpoints"
    latest = checkpoints / "step_50/model.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])  # truncated
    stderr = finish(config, 1)
    assert "step_50 is unreadable" in stderr
    assert "resumed from" in stderr and "step_25" in stderr
    assert_bitwise_equal(tmp_path / "run", reference[1])


def test_checkpoints_of_other_settings_are_dropped_under_auto_and_refused_when_named(tmp_path):
    """A nightly retrain killed one night meets the next night's settings or data: under `resume: auto` its
    checkpoints are stale, not a reason to fail every night after; a checkpoint named explicitly must match."""
    config = prepared(tmp_path / "killed")
    kill_at_step(config, 1, 40)
    stale = tmp_path / "killed/run/.train.work/checkpoints/step_25"
    named = cli_in_process("train", "--config", str(config), "train.lr=0.001", f"train.resume={stale}")
    assert named.returncode == 2
    assert "was made with a different" in named.stderr and "train.resume=never" in named.stderr
    changed = cli_in_process("train", "--config", str(config), "train.lr=0.001")
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert "are of other settings or data; starting over" in changed.stderr and "resumed from" not in changed.stderr
    fresh = prepared(tmp_path / "fresh")
    result = cli_in_process("train", "--config", str(fresh), "train.lr=0.001")
    assert result.returncode == 0, result.stderr[-2000:]
    assert_bitwise_equal(tmp_path / "killed/run", tmp_path / "fresh/run")


def test_a_killed_force_retraining_is_removed_by_the_next_train_and_other_settings_kept(tmp_path):
    """A killed `train --force` left its checkpoints in .train.work for good: `train` found train/ up to date,
    and `--force` starts over. Checkpoints of other settings stay, so a run of those resumes from them."""
    config = prepared(tmp_path)
    finish(config, 1)
    run = tmp_path / "run"
    before = load_weights(run / "train/model.safetensors")
    kill_at_step(config, 1, 40, "--force")
    assert (run / ".train.work/checkpoints/step_25").is_dir()
    cached = finish(config, 1)
    assert "train: up to date" in cached and f"removed {run / '.train.work'}" in cached
    assert not (run / ".train.work").exists()
    after = load_weights(run / "train/model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)

    kill_at_step(config, 1, 40, "train.lr=0.002")
    cached = finish(config, 1)
    assert "train: up to date" in cached and "removed" not in cached
    assert (run / ".train.work/checkpoints/step_25").is_dir()
    resumed = cli_in_process("train", "--config", str(config), "train.lr=0.002")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr and "step_25" in resumed.stderr
