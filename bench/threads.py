"""Training speed with and without a competing CPU-bound process, for train.num_threads auto, 1 and 2.

    python bench/threads.py                 # 40 steps per run at the throughput bench's shape
    python bench/threads.py --steps 100 --json runs/threads.json

For each setting, `lstm-pipeline train` runs on the same ingested synthetic data twice: on a
quiet machine, and with one other process spinning on a core (a busy loop started just before
the run and killed after it). Reports the median windows/s of the logged steps (train/metrics.jsonl,
every 5 steps: validation and start-up excluded) and the run's wall time. On the 2-core development
machines two threads collapse under contention (each parallel region waits for the thread the
scheduler took away); `auto` should stay near the faster of the two in both conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def write_config(root: Path, steps: int) -> Path:
    cfg = {
        "name": "threads",
        "output_dir": str(root / "run"),
        "data": {"source": "synthetic", "synthetic": {"n_series": 16, "length": 5000, "freq": "h", "seed": 0}},
        "window": {"lookback": 168, "horizon": 24},
        "model": {"hidden_size": 64, "num_layers": 2},
        "train": {
            "batch_size": 256,
            "max_steps": steps,
            "eval_every": steps,
            "val_windows": 256,
            "log_every": 5,
            "patience": 0,
            "checkpoint_every": 0,
            "mixed_precision": "no",
        },
        "evaluate": {"season_length": 24},
        "tracking": {"backend": "none"},
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def competitor() -> subprocess.Popen:
    """One process spinning on a core, as another job on a shared machine would."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def train(config: Path, threads: str, limit: float) -> dict:
    command = [sys.executable, "-m", "pipeline", "train", "--config", str(config), "--force"]
    command += [f"train.num_threads={threads}", "train.resume=never"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {limit:.0f} s"}
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return {"status": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1][:200]}"}
    rows = [json.loads(line) for line in (config.parent / "run/train/metrics.jsonl").read_text().splitlines()]
    rates = [r["windows_per_s"] for r in rows if "windows_per_s" in r][1:]  # the first includes warm-up
    setup = json.loads((config.parent / "run/train/meta.json").read_text())["setup"]
    return {
        "status": "ok",
        "windows_per_s": round(statistics.median(rates), 1),
        "seconds": round(seconds, 1),
        "threads": [c["threads"] for c in setup.get("thread_choices", [])] or setup["threads_per_process"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--workdir", type=Path, default=REPO / "runs" / "threads")
    p.add_argument("--limit", type=float, default=300, help="seconds before a run counts as a timeout")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    config = write_config(args.workdir, args.steps)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    for stage in ("ingest", "window"):
        command = [sys.executable, "-m", "pipeline", stage, "--config", str(config)]
        subprocess.run(command, cwd=REPO, env=env, check=True)
    results = {}
    for contended in (False, True):
        for threads in ("auto", "1", "2"):
            spinner = competitor() if contended else None
            try:
                time.sleep(0.5 if spinner else 0)
                result = train(config, threads, args.limit)
            finally:
                if spinner:
                    spinner.kill()
                    spinner.wait()
            key = f"{'contended' if contended else 'quiet'}/{threads}"
            results[key] = result
            print(f"{key:>16}: {result}", flush=True)
    summary = {"steps": args.steps, "cores": os.cpu_count(), "results": results}
    print(json.dumps(summary))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
