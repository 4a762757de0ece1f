"""The nightly job under SIGKILL: kill the retraining recipe at random points, rerun it, check the registry.

    python bench/kill_loop.py                 # 20 kill points; a markdown table for bench/README.md
    python bench/kill_loop.py --kills 5 --seed 1 --out runs/kill_loop

Each night appends a day of hourly rows to a CSV file (what a real nightly job reads) and starts the
recipe a scheduler runs, `launch/cron/retrain.sh` (`lstm-pipeline run --promote`, then the decision).
A first night runs uninterrupted and measures how long each stage takes; every later night kills
the recipe's whole process group (SIGKILL, nothing gets to clean up) at a moment drawn uniformly
inside one stage: ingest, train, evaluate, export or the registry's promotion, in turn. Then:

- right after the kill: the registry's `current` is a complete model (`Forecaster.load` checks every
  file against its manifest), and once a model was promoted there always is one; `history.jsonl`
  holds only whole JSON lines;
- the same command runs again, as the next cron tick would: it exits 0 (promoted or unchanged) or
  3 (the champion stays), never 75 (a lock left behind) or an error, and the last decision in
  history.jsonl is about tonight's data (its data fingerprint is the one ingest recorded tonight);
- the registry checks again.

The stage a kill landed in is read from the log lines the run had printed (each stage's closing
line), so a kill meant for a stage that ran faster that night is reported where it happened.
Exit code 0 when every check held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.library import registry_store  # noqa: E402
from pipeline.library.forecaster import Forecaster  # noqa: E402

NAME = "nightly"
SERIES = 4
FIRST_DAYS = 40
STAGES = ("ingest", "window", "train", "evaluate", "export", "registry")
TARGETS = ("ingest", "train", "evaluate", "export", "registry")
"""The stages kills are aimed at (window is short and lives between ingest and train: hit by chance)."""

# The closing line of each stage in the log (skipped stages print "up to date"); what marks it done.
DONE = {
    "ingest": re.compile(r"ingest: (\d+ series|up to date)"),
    "window": re.compile(r"window: (train \d+|up to date)"),
    "train": re.compile(r"train: (done at step|up to date)"),
    "evaluate": re.compile(r"evaluate: (test MASE|up to date)"),
    "export": re.compile(r"export: (wrote|up to date)"),
    "registry": re.compile(r"registry: (v\d+ \w+ \(|.* unchanged)"),
}


def experiment(root: Path) -> dict:
    return {
        "name": NAME,
        "output_dir": str(root / "run"),
        "data": {
            "source": str(root / "data.csv"),
            "id_column": "id",
            "time_column": "time",
            "target_column": "y",
            "freq": "h",
            "val_size": 0.15,
            "test_size": 0.15,
        },
        "window": {"lookback": 48, "horizon": 12},
        "model": {"hidden_size": 16, "num_layers": 1},
        "train": {
            "max_steps": 400,
            "batch_size": 64,
            "eval_every": 50,
            "checkpoint_every": 25,
            "log_every": 5,
            "patience": 0,
            "num_threads": 1,
        },
        "evaluate": {"season_length": 24, "plot_series": 1},
        "export": {"onnx": True},
        "tracking": {"backend": "none"},
        "registry": {"dir": str(root / "registry"), "keep_versions": 3},
    }


def all_days(days: int, seed: int) -> pd.DataFrame:
    """Hourly series with a daily and a weekly cycle, a trend and noise: every night's data, generated once."""
    rng = np.random.default_rng(seed)
    hours = days * 24
    time_index = pd.date_range("2025-01-01", periods=hours, freq="h")
    t = np.arange(hours)
    frames = []
    for s in range(SERIES):
        level, amp, week = rng.uniform(20, 60), rng.uniform(3, 10), rng.uniform(1, 4)
        y = level + amp * np.sin(2 * np.pi * t / 24 + s) + week * np.sin(2 * np.pi * t / 168) + 0.01 * t
        y += rng.normal(0, 1.0, hours)
        frames.append(pd.DataFrame({"time": time_index, "id": f"s{s}", "y": y.round(3)}))
    return pd.concat(frames, ignore_index=True)


def write_days(path: Path, data: pd.DataFrame, days: int) -> None:
    """The source file holding the first `days` days (written whole, then renamed: the job never sees half)."""
    cutoff = data["time"].min() + pd.Timedelta(days=days)
    tmp = path.with_suffix(".tmp")
    data[data["time"] < cutoff].to_csv(tmp, index=False)
    os.replace(tmp, path)


@dataclass
class Attempt:
    rc: int
    seconds: float
    lines: list[tuple[float, str]] = field(default_factory=list)

    def done_times(self) -> dict[str, float]:
        """When each stage printed its closing line (seconds from the start)."""
        out: dict[str, float] = {}
        for at, line in self.lines:
            for stage, pattern in DONE.items():
                if pattern.search(line):
                    out[stage] = at
        return out

    def stage_at_kill(self) -> str:
        done = self.done_times()
        for stage in STAGES:
            if stage not in done:
                return stage
        return "after the registry"


START = re.compile(r"retrain: lstm-pipeline run")
"""The recipe's first line: the moment the ingest stage's span starts."""


def trigger(stage: str) -> re.Pattern:
    """The line after which `stage` runs: the previous stage's closing line (the recipe's start for ingest)."""
    i = STAGES.index(stage)
    return START if i == 0 else DONE[STAGES[i - 1]]


def recipe(root: Path, kill: tuple[str, float] | None = None) -> Attempt:
    """Run launch/cron/retrain.sh; with kill=(stage, delay), SIGKILL its process group `delay` seconds after
    the line that starts `stage` (timing from that line, not from the start, keeps interpreter start-up
    noise out of the aim)."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "LOCK_FILE": str(root / "retrain.lock"),
        "WANDB_MODE": "disabled",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("WANDB_SERVICE", None)
    command = ["bash", str(REPO / "launch/cron/retrain.sh"), str(root / "config.yaml")]
    start = time.monotonic()
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    attempt = Attempt(rc=0, seconds=0.0)
    armed = threading.Event()
    pattern = trigger(kill[0]) if kill else None

    def read() -> None:
        for line in proc.stderr:
            attempt.lines.append((time.monotonic() - start, line.rstrip()))
            if pattern is not None and pattern.search(line):
                armed.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if kill is not None:
        while not armed.wait(0.001) and proc.poll() is None:
            pass
        if armed.is_set():
            time.sleep(kill[1])
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join(timeout=10)
    attempt.rc, attempt.seconds = proc.returncode, time.monotonic() - start
    return attempt


def check_registry(root: Path, must_have_current: bool) -> list[str]:
    """What is wrong with the registry: `current` incomplete or missing, a torn history line."""
    problems = []
    registry = root / "registry" / NAME
    version = registry_store.current_version(registry)
    if version is None:
        if must_have_current:
            problems.append("current is gone")
    else:
        try:
            Forecaster.load(registry / version)
        except Exception as exc:  # any failure to load is what this loop is looking for
            problems.append(f"current -> {version} does not load: {exc}")
    history = registry / "history.jsonl"
    if history.exists():
        text = history.read_text()
        if text and not text.endswith("\n"):
            problems.append("history.jsonl ends in a torn line")
        for n, line in enumerate(text.splitlines(), 1):
            try:
                json.loads(line)
            except ValueError:
                problems.append(f"history.jsonl line {n} is not JSON")
    return problems


def left_behind(root: Path) -> str:
    """What the kill left in the registry for the rerun to tidy: temporary versions, versions not in history."""
    registry = root / "registry" / NAME
    recorded = {r.get("version") for r in registry_store.read_history(registry)}
    tmp = sorted(p.name for p in registry.glob(".v*.tmp"))
    unrecorded = [v for v in registry_store.versions(registry) if v not in recorded]
    parts = [f"{', '.join(tmp)} (partial)"] * bool(tmp) + [f"{', '.join(unrecorded)} not in history"] * bool(unrecorded)
    return "; ".join(parts) or "-"


def resumed_step(attempt: Attempt) -> str:
    for _, line in attempt.lines:
        if m := re.search(r"train: resumed from .* \(step (\d+)", line):
            return f"train from step {m.group(1)}"
    return "-"


def tonight_decided(root: Path) -> str | None:
    """None when the last decision is about tonight's data; else what is wrong."""
    records = registry_store.read_history(root / "registry" / NAME)
    ingest = json.loads((root / "run/ingest/meta.json").read_text())["fingerprint"]
    if not records:
        return "no decision recorded"
    last = records[-1]
    if last.get("data_fingerprint") != ingest:
        return f"last decision ({last.get('version')} {last.get('decision')}) is not about tonight's data"
    return None


def durations(calibration: Attempt) -> dict[str, float]:
    """How long each target stage ran: from the line that starts it to its own closing line."""
    done = calibration.done_times()
    missing = [s for s in STAGES if s not in done]
    if missing:
        raise SystemExit(f"the calibration night did not log the end of {missing}; log:\n" + log_tail(calibration))
    begin = next(at for at, line in calibration.lines if START.search(line))
    ends = [begin] + [done[s] for s in STAGES]
    return {s: ends[i + 1] - ends[i] for i, s in enumerate(STAGES) if s in TARGETS}


def log_tail(attempt: Attempt, n: int = 20) -> str:
    return "\n".join(line for _, line in attempt.lines[-n:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "kill_loop")
    args = p.parse_args()
    rng = random.Random(args.seed)
    root = args.out.resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump(experiment(root)))
    data = all_days(FIRST_DAYS + args.kills + 1, args.seed)
    started = time.monotonic()

    write_days(root / "data.csv", data, FIRST_DAYS)
    calibration = recipe(root)
    if calibration.rc != 0:
        raise SystemExit(f"the calibration night failed (exit {calibration.rc}):\n{log_tail(calibration)}")
    timeline = durations(calibration)
    print("calibration night: " + ", ".join(f"{s} {d * 1000:.0f} ms" for s, d in timeline.items()), flush=True)

    failures, rows = 0, []
    for night in range(1, args.kills + 1):
        write_days(root / "data.csv", data, FIRST_DAYS + night)
        target = TARGETS[(night - 1) % len(TARGETS)]
        delay = rng.uniform(0.0, timeline[target])
        killed = recipe(root, (target, delay))
        landed = killed.stage_at_kill() if killed.rc == -signal.SIGKILL else f"finished first (exit {killed.rc})"
        problems = [f"after the kill: {x}" for x in check_registry(root, must_have_current=True)]
        debris = left_behind(root)
        rerun = recipe(root)
        if rerun.rc not in (0, 3):
            problems.append(f"the rerun exited {rerun.rc}: {log_tail(rerun, 3)}")
        else:
            wrong = tonight_decided(root)
            if wrong:
                problems.append(f"after the rerun: {wrong}")
        problems += [f"after the rerun: {x}" for x in check_registry(root, must_have_current=True)]
        last = registry_store.read_history(root / "registry" / NAME)[-1]
        failures += bool(problems)
        row = {
            "night": night,
            "aimed_at": target,
            "delay_ms": round(delay * 1000),
            "landed_in": landed,
            "left_in_registry": debris,
            "rerun_resumed": resumed_step(rerun),
            "rerun_exit": rerun.rc,
            "decision": f"{last.get('version')} {last.get('decision')}",
            "current": registry_store.current_version(root / "registry" / NAME),
            "ok": not problems,
        }
        rows.append(row)
        print(json.dumps(row) + ("" if not problems else "  PROBLEMS: " + "; ".join(problems)), flush=True)

    print(f"\n{args.kills} kills, {failures} with a problem, {time.monotonic() - started:.0f} s in all\n")
    columns = ["night", "aimed at", "killed after (ms)", "landed in", "left in the registry", "rerun resumed"]
    columns += ["rerun exit", "decision", "current", "checks"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        cells = [r["night"], r["aimed_at"], r["delay_ms"], r["landed_in"], r["left_in_registry"], r["rerun_resumed"]]
        cells += [r["rerun_exit"], r["decision"], r["current"], "ok" if r["ok"] else "FAILED"]
        print("| " + " | ".join(map(str, cells)) + " |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
