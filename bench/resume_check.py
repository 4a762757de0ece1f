"""Exact resume on any device: kill a training run after a checkpoint, resume it, compare with an unbroken run.

    python bench/resume_check.py --device cuda --out runs/resume_check   # one JSON line with the verdict
    python bench/resume_check.py --device cpu --quick

Trains a small synthetic config twice: once without interruption, once SIGKILLed as soon as a
checkpoint past the first one is written, then started again with the same command. Compares the
final and best weights of both runs tensor by tensor: bit-identical, or the largest difference.
On CUDA it sets `train.deterministic=true` (deterministic cuDNN and cuBLAS kernels,
CUBLAS_WORKSPACE_CONFIG=:4096:8): without it, cuDNN's RNN kernels may sum in another order from
run to run, resumed or not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def config(root: Path, device: str, quick: bool) -> Path:
    steps = 30 if quick else 300
    cfg = {
        "name": "resume_check",
        "output_dir": str(root / "run"),
        "data": {
            "source": "synthetic",
            "synthetic": {"n_series": 4 if quick else 8, "length": 800 if quick else 1500, "freq": "h", "seed": 3},
        },
        "window": {"lookback": 96, "horizon": 24},
        "model": {"hidden_size": 32 if quick else 64, "num_layers": 2, "dropout": 0.1},
        "train": {
            "max_steps": steps,
            "batch_size": 256,
            "checkpoint_every": steps // 6,
            "eval_every": steps // 6,
            "log_every": 1,
            "patience": 0,
            "num_threads": 1 if device == "cpu" else "auto",
            "deterministic": device != "cpu",
        },
        "evaluate": {"season_length": 24},
        "export": {"onnx": False},
        "tracking": {"backend": "none"},
    }
    path = root / "config.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def pipeline(*args: str, env: dict, **kwargs):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=env, text=True, **kwargs)


def prepared(root: Path, device: str, quick: bool, env: dict) -> Path:
    path = config(root, device, quick)
    for stage in ("ingest", "window"):
        pipeline(stage, "--config", str(path), env=env, check=True, capture_output=True)
    return path


def kill_after_checkpoint(path: Path, env: dict, timeout: float) -> int:
    """Start training, SIGKILL it inside its third checkpoint save, two committed before it; the step it reached.

    The run waits there (the pipeline's test pause), so a fast device cannot finish training between two looks
    at the checkpoint folder, as a 30-step CPU run once did."""
    checkpoints = path.parent / "run" / ".train.work" / "checkpoints"
    log, flag = path.parent / "killed_train.log", path.parent / "paused"
    flag.unlink(missing_ok=True)
    third = 3 * yaml.safe_load(path.read_text())["train"]["checkpoint_every"]
    pause = {"PIPELINE_TEST_PAUSE": f"checkpoint:{third}:{timeout}", "PIPELINE_TEST_PAUSE_FLAG": str(flag)}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "train", "--config", str(path)],
            cwd=REPO,
            env={**env, **pause},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    try:
        while not flag.exists() or len(list(checkpoints.glob("step_*")) if checkpoints.is_dir() else []) < 2:
            if proc.poll() is not None:
                last = (log.read_text().strip().splitlines() or [""])[-1][-300:]
                raise SystemExit(f"training ended (exit {proc.returncode}) before it could be killed: {last}")
            if time.monotonic() > deadline:
                raise SystemExit("no second checkpoint in time")
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):  # it ended by itself: the error above says how
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    metrics = path.parent / "run" / ".train.work" / "metrics.jsonl"
    return max(json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.endswith("}"))


def compare(a: Path, b: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for name in ("model.safetensors", "best/model.safetensors"):
        wa, wb = load_file(str(a / "train" / name)), load_file(str(b / "train" / name))
        diff = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)
        out[name] = {"bit_identical": all(bool((wa[k] == wb[k]).all()) for k in wa), "max_abs_diff": diff}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "resume_check")
    p.add_argument("--quick", action="store_true", help="fewer steps (the CPU test of the GPU check)")
    args = p.parse_args()
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    if args.device == "cpu":
        env["ACCELERATE_USE_CPU"] = "true"
    else:
        env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    start = time.perf_counter()
    reference = prepared(args.out / "reference", args.device, args.quick, env)
    pipeline("train", "--config", str(reference), env=env, check=True, capture_output=True)
    killed = prepared(args.out / "killed", args.device, args.quick, env)
    step = kill_after_checkpoint(killed, env, timeout=300)
    resumed = pipeline("train", "--config", str(killed), env=env, capture_output=True)
    if resumed.returncode != 0:
        raise SystemExit(f"the resumed run failed: {resumed.stderr[-500:]}")
    result = {
        "device": args.device,
        "killed_at_step": step,
        "resumed": "resumed from" in resumed.stderr,
        "weights": compare(reference.parent / "run", killed.parent / "run"),
        "deterministic": args.device != "cpu",
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
