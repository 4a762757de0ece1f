"""Every GPU question in one go: tests, the demo in three precisions, throughput, exact resume, the machine.

    bash bench/gpu_check.sh --out "$OUT"                 # on a GPU machine (installs the carried wheels first)
    python bench/gpu_check.py --device cpu --quick --out runs/gpu_check   # the same steps, reduced, here

Runs, in this order, each in a child process with its own time limit, so that a failure or a
timeout in one step never stops the rest:

  a. the tests marked `gpu` (all of them, no -x);
  b. `lstm-pipeline run` on builtin:vic_elec with configs/default.yaml in fp32, fp16 (with Accelerate's
     gradient scaling) and bf16: test MASE of each against the CPU fp32 figure of the README (goal:
     within 3%); bf16 is recorded as `refused` where the pipeline refuses it (torch's autocast runs
     cuDNN's LSTM in float16 under bf16: `runtime.cuda_autocast_rnn_dtype`, in the versions);
  c. bench/throughput.py at batch 1024 in fp16 and in fp32: the pipeline step over the bare cuDNN
     step (goal >= 0.9) and over the per-sample DataLoader (goal >= 5), and windows/s; in fp32 also
     the pipeline step without its one device read per step (`pipeline_unchecked`);
  d. bench/resume_check.py: SIGKILL after a checkpoint, resume, compare with an unbroken run
     (deterministic cuDNN/cuBLAS kernels: train.deterministic=true);
  e. nvidia-smi and the versions of Python, torch, CUDA, cuDNN, Accelerate.

The versions come first, so that even a check cut short says what it ran on. Writes
`gpu_check.json` (every figure, each step's status and seconds) and `gpu_check.log` (the steps'
output) into --out. About 3 minutes on an H200 (2026-11-29); --budget (default 540 s) bounds the
whole check, so that it ends inside a 10-minute device call: a step gets at most the time left, and one that
would get under 20 s is recorded as skipped. A step that outlives its limit is killed with every
process it started (its own process group), so nothing of it holds the GPU for the next step.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_REFERENCE_MASE = 0.5408
"""Test MASE of `make demo` in float32 on the CPU (README.md: a fresh clone on the 2-core AMD EPYC VM, where `auto`
is float32, 2026-11-29; the recipe of issue 18). Until then it was the previous recipe's 0.578, against which the
current demo would have read 6% "better" on a GPU that matched the CPU."""
GOALS = {"mase_within": 0.03, "pipeline_over_bare": 0.9, "pipeline_over_dataloader": 5.0}


class Check:
    """The steps' results, written to gpu_check.json after every step (a killed check keeps what it had)."""

    MIN_STEP_SECONDS = 20

    def __init__(self, out: Path, device: str, quick: bool, budget: float = float("inf")) -> None:
        self.out, self.device, self.quick = out, device, quick
        self.deadline = time.monotonic() + budget
        out.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "gpu_check.log", "a")  # noqa: SIM115 - open for the whole check
        self.result: dict = {"device": device, "quick": quick, "goals": GOALS, "steps": {}}
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
        if device == "cpu":
            self.env["ACCELERATE_USE_CPU"] = "true"

    def run(self, name: str, command: list[str], limit: float) -> subprocess.CompletedProcess | None:
        """A child process bounded by `limit` seconds and by the check's budget; its output goes to the log;
        None when it timed out or no time was left for it."""
        limit = min(limit, self.deadline - time.monotonic())
        if limit < self.MIN_STEP_SECONDS:
            self.record(name, {"status": "skipped", "why": "out of the check's time budget (--budget)"})
            return None
        self.log.write(f"\n== {name}: {' '.join(command)}\n")
        self.log.flush()
        start = time.perf_counter()
        try:
            child = subprocess.Popen(
                command, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                start_new_session=True,
            )  # fmt: skip
        except OSError as exc:  # no such program (nvidia-smi on a machine without the driver's tools)
            self.log.write(f"[could not start: {exc}]\n")
            self.record(name, {"status": f"error: could not start: {exc}"[:300]})
            return None
        try:
            stdout, stderr = child.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the step and whatever it started (torchrun, a killed-run check)
            stdout, stderr = child.communicate()
            self.log.write(stdout + stderr + f"\n[timed out after {limit:.0f} s]\n")
            self.log.flush()
            self.record(name, {"status": "timeout", "seconds": round(time.perf_counter() - start, 1)})
            return None
        self.log.write(stdout + stderr)
        self.log.flush()
        status = "ok" if child.returncode == 0 else f"exit {child.returncode}"
        self.record(name, {"status": status, "seconds": round(time.perf_counter() - start, 1)})
        return subprocess.CompletedProcess(command, child.returncode, stdout, stderr)

    @functools.cached_property
    def bf16_failure(self) -> str:
        """Why bf16 cannot train the LSTM on this CPU ('' where it can): the pipeline's own probe
        (`runtime.cpu_bf16_lstm_fails`, asked in a child process), whose answer the pipeline turns into a
        ConfigError for `train.mixed_precision=bf16`."""
        if self.device != "cpu":
            return ""
        probe = "from pipeline.library.runtime import cpu_bf16_lstm_fails as f; print(f() or '')"
        done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=self.env, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else done.stderr.strip()[-200:]

    def bf16_skipped(self, name: str, precision: str) -> bool:
        """Record `name` as skipped where it would train in bf16 on a CPU whose bf16 LSTM fails."""
        if precision == "bf16" and self.bf16_failure:
            self.record(name, {"status": "skipped", "why": f"this CPU's bf16 LSTM fails: {self.bf16_failure}"})
            return True
        return False

    def record(self, name: str, values: dict) -> None:
        self.result["steps"].setdefault(name, {}).update(values)
        (self.out / "gpu_check.json").write_text(json.dumps(self.result, indent=2) + "\n")


GPU_TESTS = "tests/test_gpu.py"


def tests(check: Check) -> None:
    """a. The tests marked gpu (skipped without CUDA, but collected: they must at least import). They live in
    GPU_TESTS (tests/test_gpu_check.py checks that no other file marks one): collecting the whole suite for them
    took 14 s."""
    done = check.run(
        "gpu_tests",
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rfEs", GPU_TESTS],
        limit=180 if check.quick else 150,
    )
    if done is not None:
        counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|deselected)", done.stdout)}
        check.record(
            "gpu_tests", {"counts": counts, "failures": re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.M)}
        )


def demo_source(check: Check) -> list[str]:
    """The demo's data: builtin:vic_elec through `datasets`, or, where `datasets` cannot be imported (not
    carried, or the image's pyarrow too old for it), the same rows as typed parquet, which ingest streams
    with pyarrow alone."""
    probe = subprocess.run([sys.executable, "-c", "import datasets"], env=check.env, capture_output=True, text=True)
    if probe.returncode == 0:
        return []
    import pandas as pd

    path = check.out / "work" / "vic_elec.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.read_csv(REPO / "pipeline" / "builtin" / "vic_elec.csv")
    frame["time"] = pd.to_datetime(frame["time"])
    frame.to_parquet(path, index=False)
    check.record("demo_source", {"source": str(path), "why": probe.stderr.strip().splitlines()[-1][:200]})
    return [f"data.source={path}"]


def demo(check: Check) -> None:
    """b. make demo's run in every precision the device takes; test MASE against the CPU fp32 figure."""
    precisions = ["no", "fp16", "bf16"] if check.device == "cuda" else ["no", "bf16"]
    quick = ["train.max_steps=20", "train.eval_every=10", "data.test_size=0.05", "window.lookback=336",
             "train.batch_size=64", "train.num_threads=2"] if check.quick else []  # fmt: skip
    quick += demo_source(check)
    for precision in precisions[:1] if check.quick else precisions:
        name = f"demo_{'fp32' if precision == 'no' else precision}"
        if check.bf16_skipped(name, precision):
            continue
        run_dir = check.out / "work" / name
        command = [sys.executable, "-m", "pipeline", "run", "--config", "configs/default.yaml",
                   f"output_dir={run_dir}", f"train.mixed_precision={precision}", "tracking.backend=none",
                   "export.onnx=false", "evaluate.plot_series=0", *quick]  # fmt: skip
        done = check.run(name, command, limit=180 if check.quick else 150)
        metrics = run_dir / "evaluate" / "metrics.json"
        if done is not None and done.returncode == 2 and precision == "bf16":  # the pipeline's refusal, one line
            lines = done.stderr.strip().splitlines() or [""]
            check.record(name, {"status": "refused", "why": lines[-1][:300]})
            continue
        if done is None or done.returncode != 0 or not metrics.is_file():
            continue
        m = json.loads(metrics.read_text())
        setup = json.loads((run_dir / "train" / "meta.json").read_text())["setup"]
        mase = m["model"]["mase"]
        check.record(
            name,
            {
                "test_mase": mase,
                "seasonal_naive_mase": m["baselines"]["seasonal_naive"]["mase"],
                "vs_cpu_fp32": round(mase / CPU_REFERENCE_MASE - 1, 4),
                "within_goal": abs(mase / CPU_REFERENCE_MASE - 1) <= GOALS["mase_within"],
                "precision": setup["precision"],
                "device": setup["device"],
                "steps": json.loads((run_dir / "train" / "meta.json").read_text())["state"]["step"],
            },
        )


def throughput(check: Check) -> None:
    """c. The pipeline step against the bare step and the per-sample DataLoader, bf16 and fp32."""
    shape = ["--batch-size", "1024"] if check.device == "cuda" else ["--batch-size", "256"]
    if check.quick:
        shape += ["--series", "4", "--length", "3000", "--steps", "4", "--round-steps", "2", "--warmup", "1"]
    for precision in ("fp16", "no") if check.device == "cuda" else ("bf16", "no"):
        name = f"throughput_{'fp32' if precision == 'no' else precision}"
        if check.bf16_skipped(name, precision):
            continue
        unchecked = ["--unchecked"] if precision == "no" else []
        command = [sys.executable, "bench/throughput.py", "--device", check.device, "--precision", precision,
                   "--skip-default", *unchecked, *shape]  # fmt: skip
        done = check.run(name, command, limit=180 if check.quick else 120)
        if done is None or done.returncode != 0:
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        check.record(
            name,
            {
                "windows_per_s": result["windows_per_s"],
                "pipeline_over_bare": result["a_over_b"],
                "pipeline_over_dataloader": result["a_over_c"],
                "meets_goals": result["a_over_b"] >= GOALS["pipeline_over_bare"]
                and result["a_over_c"] >= GOALS["pipeline_over_dataloader"],
            },
        )


def resume(check: Check) -> None:
    """d. Exact resume on the device."""
    command = [sys.executable, "bench/resume_check.py", "--device", check.device, "--out", str(check.out / "resume")]
    done = check.run("resume", [*command, *(["--quick"] if check.quick else [])], limit=180 if check.quick else 150)
    if done is not None and done.returncode == 0:
        check.record("resume", json.loads(done.stdout.strip().splitlines()[-1]))


def machine(check: Check) -> None:
    """e. nvidia-smi and versions."""
    smi = check.run("nvidia_smi", ["nvidia-smi"], limit=30) if check.device == "cuda" else None
    probe = (
        "import json, sys, torch, accelerate; from pipeline.library import runtime;"
        "print(json.dumps({'python': sys.version.split()[0], 'torch': torch.__version__,"
        " 'cuda': torch.version.cuda, 'cudnn': torch.backends.cudnn.version(),"
        " 'accelerate': accelerate.__version__,"
        " 'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,"
        " 'bf16': torch.cuda.is_bf16_supported() if torch.cuda.is_available() else None,"
        " 'lstm_under_bf16_autocast': runtime.cuda_autocast_rnn_dtype() if torch.cuda.is_available() else None}))"
    )
    done = check.run("versions", [sys.executable, "-c", probe], limit=60)
    versions = json.loads(done.stdout.strip().splitlines()[-1]) if done is not None and done.returncode == 0 else {}
    versions["platform"] = platform.platform()
    if smi is not None and smi.returncode == 0:
        versions["nvidia_smi"] = [line for line in smi.stdout.splitlines() if "NVIDIA" in line or "MiB" in line][:4]
    check.record("versions", versions)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / "runs" / "gpu_check")))
    p.add_argument("--quick", action="store_true", help="reduced sizes (the CPU test of this script)")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole check (default 540)")
    args = p.parse_args()
    check = Check(args.out.resolve(), args.device, args.quick, args.budget)
    start = time.perf_counter()
    missing = None
    for step in (machine, tests, demo, throughput, resume):
        try:
            step(check)
        except Exception as exc:  # a broken step is recorded; the next one still runs
            check.record(step.__name__, {"status": f"error: {type(exc).__name__}: {exc}"[:300]})
        if step is machine and (missing := no_gpu(check)):
            check.record("no_gpu", {"status": f"error: {missing}"})
            break
    check.result["seconds"] = round(time.perf_counter() - start, 1)
    check.record("summary", {s: v.get("status") for s, v in check.result["steps"].items() if "status" in v})
    print(json.dumps(check.result["steps"]["summary"]))
    if missing:
        sys.exit(f"gpu_check: {missing}")


def no_gpu(check: Check) -> str | None:
    """Why a `--device cuda` check cannot go on (torch sees no GPU), or None: every later step would train on the
    CPU and record CPU figures as the GPU's, for the whole budget."""
    if check.device != "cuda" or check.result["steps"].get("versions", {}).get("gpu"):
        return None
    return "torch sees no CUDA GPU (versions in gpu_check.json, nvidia-smi in gpu_check.log); no GPU step was run"


if __name__ == "__main__":
    main()
