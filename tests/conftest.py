"""Shared fixtures: a small synthetic experiment that runs end to end in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.library.runtime import cpu_bf16_lstm_fails

REPO = Path(__file__).resolve().parents[1]


# bf16 training on the CPU: oneDNN has no bf16 LSTM on AVX2 CPUs, where the pipeline refuses it (test_precision)
needs_cpu_bf16 = pytest.mark.skipif(
    cpu_bf16_lstm_fails() is not None, reason=f"this CPU trains no LSTM in bf16: {cpu_bf16_lstm_fails()}"
)

SMALL = {
    "name": "small",
    "seed": 0,
    "data": {
        "source": "synthetic",
        "synthetic": {"n_series": 4, "length": 400, "min_length": 300, "freq": "h", "seed": 1},
        "val_size": 0.15,
        "test_size": 0.15,
    },
    "window": {"lookback": 48, "horizon": 12, "stride": 1, "val_stride": 1},
    "model": {"hidden_size": 16, "num_layers": 1},
    "train": {
        "loss": "mse",
        "num_threads": 1,  # fixed: reruns compare bit for bit (auto may pick another count); two workers, two cores
        "mixed_precision": "no",  # float32 everywhere, whatever the CPU (test_precision covers bf16 and auto)
        "batch_size": 64,
        "max_steps": 40,
        "lr": 0.01,
        "warmup_steps": 5,
        "eval_every": 10,
        "checkpoint_every": 20,
        "log_every": 5,
        "patience": 0,
    },
    "evaluate": {"season_length": 24, "plot_series": 2},
    "tracking": {"backend": "none"},
}


def write_config(tmp_path: Path, overrides: dict | None = None, name: str = "config.yaml") -> Path:
    """A copy of SMALL with nested overrides merged in, output under tmp_path/run."""
    cfg = yaml.safe_load(yaml.safe_dump(SMALL))
    cfg["output_dir"] = str(tmp_path / "run")
    for key, value in (overrides or {}).items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300):
    """Run `python -m pipeline ...` in a subprocess, as a user would."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(autouse=True)
def _no_inherited_wandb_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that runs W&B in this process leaves WANDB_SERVICE set (wandb's own service address);
    a CLI subprocess would then join that service, and after a SIGKILL its run id stays "in use"
    there, so a resume fails. A user's shell has no such variable: the subprocesses must not either."""
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


@pytest.fixture
def small_config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def torchrun(nproc: int, *args: str, env: dict | None = None, timeout: int = 300, **popen):
    """CPU DDP over gloo, exactly as the README shows: ACCELERATE_USE_CPU=true torchrun ... -m pipeline."""
    full_env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command += ["-m", "pipeline", *args]
    if popen:
        return subprocess.Popen(command, cwd=REPO, env=full_env, text=True, **popen)
    return subprocess.run(command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def series_table(rows: list[dict]):
    """A `SeriesTable` from per-series dicts in meta.json's layout; fields a test leaves out get neutral values
    (id s<i>, a start in 2024, no validation or test part, location 0 and scale 1)."""
    from pipeline.library.records import SeriesTable

    defaults = {"start": "2024-01-01T00:00:00", "mean": 0.0, "scale": 1.0}
    full = [
        {"id": f"s{i}", "train_end": r["length"], "val_end": r["length"], **defaults, **r} for i, r in enumerate(rows)
    ]
    return SeriesTable.from_json(full)


def load_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def run_main(argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of `main(argv)` (what the console script runs) in this process; undoes its
    process-wide settings (log handler, torch threads, denormal flushing), which later tests in this worker
    would otherwise inherit (hypothesis needs subnormal floats)."""
    code, _, err = _main_in_process(argv)
    return code, err


def cli_in_process(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """What `cli(*args)` returns (exit code, stdout, stderr), from the CLI's `main` run in this process, in the
    same working directory and W&B environment, without the ~2.4 s start of a Python that imports torch.

    For tests of what a command does (its exit code, its one error line, its artifacts). Tests of how a real
    process behaves (signals, SIGKILL, the exit status a shell sees, stdout buffering, torchrun) use `cli`."""
    import contextlib

    full_env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    saved = {key: os.environ.get(key) for key in full_env}
    os.environ.update(full_env)
    try:
        with contextlib.chdir(cwd or REPO):
            code, out, err = _main_in_process(list(args))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return subprocess.CompletedProcess([sys.executable, "-m", "pipeline", *args], code, out, err)


def _main_in_process(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `main(argv)` in this process, its process-wide settings undone."""
    import contextlib
    import io
    import logging

    import torch

    from pipeline.orchestrators.cli import main

    logger = logging.getLogger("pipeline")
    saved = (list(logger.handlers), logger.level, logger.propagate, torch.get_num_threads())
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as exc:  # main must return, never exit on its own
                code = exc.code
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
        torch.set_num_threads(saved[3])
        torch.set_flush_denormal(False)
    return code, out.getvalue(), err.getvalue()
