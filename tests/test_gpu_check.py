"""bench/gpu_check.py runs here too (on the CPU, reduced), so its first run on a GPU machine is not its first run."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from pipeline.library.runtime import cpu_bf16_lstm_fails

from .conftest import REPO

pytestmark = pytest.mark.slow


def test_every_test_marked_gpu_is_in_the_file_the_gpu_check_runs():
    """bench/gpu_check.py collects only tests/test_gpu.py for `-m gpu`: a GPU test elsewhere would never run."""
    files = [p for p in (REPO / "tests").glob("test_*.py") if p.name != "test_gpu_check.py"]  # this one names it
    marked = {p.name for p in files if "pytest.mark.gpu" in p.read_text()}
    assert marked == {"test_gpu.py"}


def test_the_gpu_check_runs_every_step_and_writes_its_figures(tmp_path):
    out = tmp_path / "gpu_check"
    command = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "gpu_check.json").read_text())
    steps = result["steps"]
    assert result["device"] == "cpu" and (out / "gpu_check.log").stat().st_size > 0
    assert set(steps["summary"]) == {
        "gpu_tests",
        "demo_fp32",
        "throughput_bf16",
        "throughput_fp32",
        "resume",
        "versions",
    }
    bf16_fails = cpu_bf16_lstm_fails()  # an AVX2 CPU: the bf16 step is skipped with the reason, not failed
    expected = {name: "skipped" if bf16_fails and name == "throughput_bf16" else "ok" for name in steps["summary"]}
    assert steps["summary"] == expected
    assert steps["gpu_tests"]["counts"]["skipped"] >= 7 and not steps["gpu_tests"]["failures"]  # collected, skipped
    assert steps["demo_fp32"]["precision"] == "no" and steps["demo_fp32"]["test_mase"] > 0
    if bf16_fails:
        assert steps["throughput_bf16"]["why"] == f"this CPU's bf16 LSTM fails: {bf16_fails}"
    for name in ("throughput_fp32",) if bf16_fails else ("throughput_bf16", "throughput_fp32"):
        unchecked = {"pipeline_unchecked"} if name == "throughput_fp32" else set()
        assert set(steps[name]["windows_per_s"]) == {"bare", "pipeline", "dataloader", *unchecked}
        assert steps[name]["pipeline_over_bare"] > 0.5
    assert steps["resume"]["resumed"] and steps["resume"]["weights"]["model.safetensors"]["bit_identical"]
    assert steps["versions"]["torch"] and steps["versions"]["python"]


def test_the_gpu_check_stays_inside_its_budget_and_says_which_steps_it_skipped(tmp_path):
    """A lent GPU runs one command for at most 10 minutes: the check must end inside its --budget, the steps it
    had no time for recorded as skipped (its step limits alone add up to 18 minutes on a GPU)."""
    out = tmp_path / "gpu_check"
    command = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick", "--budget", "1", "--out", str(out)]
    start = time.monotonic()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - start < 60
    steps = json.loads((out / "gpu_check.json").read_text())["steps"]
    assert set(steps["summary"]) == {
        "versions",
        "gpu_tests",
        "demo_fp32",
        "throughput_bf16",
        "throughput_fp32",
        "resume",
    }
    assert set(steps["summary"].values()) == {"skipped"}
    out_of_time = {
        name for name, step in steps.items() if step.get("why") == "out of the check's time budget (--budget)"
    }
    assert out_of_time >= {"versions", "gpu_tests", "demo_fp32", "throughput_fp32", "resume"}
    assert steps["versions"]["platform"]  # what it ran on, even so


def test_a_gpu_check_where_torch_sees_no_gpu_stops_at_once_and_says_so(tmp_path):
    """Without the stop, every step ran on the CPU (the demo, throughput, the resume check) and recorded the CPU's
    figures as the GPU check's, until the budget ran out."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "gpu_check"
    command = [sys.executable, "bench/gpu_check.py", "--device", "cuda", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "gpu_check: torch sees no CUDA GPU (versions in gpu_check.json, nvidia-smi in gpu_check.log); "
        "no GPU step was run"
    )
    steps = json.loads((out / "gpu_check.json").read_text())["steps"]
    assert set(steps["summary"]) <= {"nvidia_smi", "versions", "no_gpu"} and steps["versions"]["gpu"] is None
