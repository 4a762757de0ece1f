"""Peak memory of ingest + window on a large long-format parquet file, and time to the first step.

    python bench/memory.py                          # 10,000 series x 10,000 steps = 100 M points
    python bench/memory.py --series 1000            # a smaller run

Writes the parquet file (series, time, value) in chunks, then runs `lstm-pipeline ingest` and
`window` in a child process and reads its peak RSS (getrusage of the children), then
`lstm-pipeline train` until its first logged step and reports the seconds to that step. The target of
bench/README.md: peak RSS <= 2x the float32 size of the data, first step within 30 s.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml


def write_parquet(path: Path, n_series: int, length: int, chunk: int = 100) -> None:
    """Hourly series, written `chunk` series at a time so the generator stays small."""
    rng = np.random.default_rng(0)
    start = np.datetime64("2020-01-01T00:00", "ns")
    times = start + np.arange(length) * np.timedelta64(3600, "s")
    t = np.arange(length)
    schema = pa.schema([("series", pa.string()), ("time", pa.timestamp("ns")), ("value", pa.float32())])
    with pq.ParquetWriter(path, schema) as writer:
        for first in range(0, n_series, chunk):
            ids = np.arange(first, min(first + chunk, n_series))
            level = rng.uniform(1, 100, len(ids))[:, None]
            values = level * (1 + 0.3 * np.sin(2 * np.pi * t / 24)[None] + 0.05 * rng.normal(size=(len(ids), length)))
            table = pa.table(
                {
                    "series": pa.array(np.repeat([f"s{i:05d}" for i in ids], length)),
                    "time": pa.array(np.tile(times, len(ids))),
                    "value": pa.array(values.astype(np.float32).ravel()),
                },
                schema=schema,
            )
            writer.write_table(table, row_group_size=1_000_000)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--series", type=int, default=10_000)
    p.add_argument("--length", type=int, default=10_000)
    p.add_argument("--workdir", default=None, help="where to write the data and the run (default: a temp dir)")
    args = p.parse_args()

    root = Path(args.workdir or tempfile.mkdtemp(prefix="lstm-pipeline-mem-"))
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data.parquet"
    points = args.series * args.length
    if not data.exists():
        t0 = time.perf_counter()
        write_parquet(data, args.series, args.length)
        print(
            f"wrote {data} ({points:,} points, {data.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s"
        )
    config = {
        "name": "memory",
        "output_dir": str(root / "run"),
        "data": {"source": str(data), "id_column": "series", "target_column": "value", "freq": "h"},
        "window": {"lookback": 168, "horizon": 24, "stride": 24, "val_stride": 24},
        "train": {"max_steps": 50, "log_every": 1, "checkpoint_every": 0, "batch_size": 256},
        "export": {"onnx": False},
        "tracking": {"backend": "none"},
    }
    cfg_path = root / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config))

    t0 = time.perf_counter()
    for stage in ("ingest", "window"):
        subprocess.run([sys.executable, "-m", "pipeline", stage, "--config", str(cfg_path), "--force"], check=True)
    prep_s = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    budget_mb = 2 * points * 4 / 1e6

    # time from starting `train` to its first logged step; the run is stopped there
    metrics = root / "run" / ".train.work" / "metrics.jsonl"
    metrics.unlink(missing_ok=True)  # left by an earlier bench run, which was stopped at its first step
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", "--config", str(cfg_path), "--force"])
    while not (metrics.exists() and metrics.stat().st_size > 0):
        if proc.poll() is not None:
            raise SystemExit(f"train exited with {proc.returncode} before its first step")
        time.sleep(0.05)
    first_step_s = time.perf_counter() - t0
    proc.kill()
    proc.wait()
    result = {
        "points": points,
        "ingest_window_s": round(prep_s, 1),
        "peak_rss_mb": round(peak_mb),
        "budget_mb": round(budget_mb),
        "within_budget": peak_mb <= budget_mb,
        "train_to_first_step_s": round(first_step_s, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
