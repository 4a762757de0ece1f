"""Requests/s and latency of the forecast service, `lstm-pipeline serve`, for 1 and 100 series per request.

    python bench/serve.py                          # trains a small model on 100 synthetic series first
    python bench/serve.py --model runs/x/export    # an export whose series include the data's ids
    python bench/serve.py --requests 200 --clients 8 --json runs/serve_bench.json

Starts a real server (`python -m pipeline serve`, a subprocess on 127.0.0.1) and sends a fixed
number of `POST /forecast` requests from a few concurrent clients (httpx, one connection each),
after a few warm-up requests that are not counted. Each request carries the last `lookback` rows
of 1 or of 100 series, as JSON records (JSON out) and as the CSV `predict` reads (CSV out).
Reports requests/s and series/s over the whole batch, and the median and 99th-percentile latency
of a request as its client saw it. Absolute figures: they depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
N_SERIES = 100


def train_model(root: Path) -> Path:
    """A small model (lookback 168, horizon 24, LSTM 64x2) on 100 hourly synthetic series; its export."""
    cfg = {
        "name": "serve_bench",
        "output_dir": str(root / "run"),
        "data": {"source": "synthetic", "synthetic": {"n_series": N_SERIES, "length": 600, "freq": "h", "seed": 0}},
        "window": {"lookback": 168, "horizon": 24},
        "model": {"hidden_size": 64, "num_layers": 2},
        "train": {"batch_size": 256, "max_steps": 20, "eval_every": 20, "checkpoint_every": 0, "patience": 0},
        "evaluate": {"season_length": 24, "plot_series": 0},
        "export": {"onnx": False},
        "tracking": {"backend": "none"},
    }
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "pipeline", "run", "--config", str(config)], cwd=REPO, check=True)
    return root / "run" / "export"


def history_of(model: Path, n_series: int) -> pd.DataFrame:
    """The last `lookback` rows of `n_series` of the model's series, from synthetic data of the same generator."""
    from pipeline.config import SyntheticConfig
    from pipeline.library.forecaster import Forecaster
    from pipeline.library.synthetic import generate_synthetic

    spec = Forecaster.load(model).spec
    data = generate_synthetic(SyntheticConfig(n_series=N_SERIES, length=600, freq="h", seed=0))
    data = data[data["series"].astype(str).isin(list(spec.series.ids)[:n_series])]
    return data.groupby("series", observed=True).tail(spec.lookback).reset_index(drop=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(model: Path, threads: int | None, log: Path):
    port = free_port()
    command = [sys.executable, "-m", "pipeline", "serve", "--model", str(model), "--port", str(port)]
    command += ["--threads", str(threads)] if threads else []
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise SystemExit(f"the server did not start:\n{log.read_text()[-3000:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def measure(url: str, body: bytes, headers: dict, requests: int, clients: int, warmup: int) -> dict:
    """`requests` requests from `clients` concurrent clients; throughput and latency percentiles."""
    latencies: list[float] = []
    left = requests

    async def client_loop(client: httpx.AsyncClient, count: bool) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            start = time.perf_counter()
            answer = await client.post("/forecast", content=body, headers=headers)
            elapsed = time.perf_counter() - start
            if answer.status_code != 200:
                raise SystemExit(f"request failed with {answer.status_code}: {answer.text[:500]}")
            if count:
                latencies.append(elapsed)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        left = warmup
        await asyncio.gather(*(client_loop(client, False) for _ in range(clients)))
        left = requests
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client, True) for _ in range(clients)))
        wall = time.perf_counter() - start
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"requests_per_s": requests / wall, "p50_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * p99}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", type=Path, help="export directory (default: train a small one in a temp dir)")
    parser.add_argument("--requests", type=int, default=200, help="requests per case (after the warm-up)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--warmup", type=int, default=8, help="requests per case before measuring")
    parser.add_argument("--threads", type=int, help="the server's --threads (default: its own)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or train_model(Path(tmp))
        rows = []
        with running_server(model, args.threads, Path(tmp) / "serve.log") as url:
            for n_series in (1, N_SERIES):
                history = history_of(model, n_series)
                bodies = {
                    "JSON": (json.dumps(history.astype({"time": str}).to_dict("records")).encode(),
                             {"Content-Type": "application/json"}),
                    "CSV": (history.to_csv(index=False).encode(), {"Content-Type": "text/csv", "Accept": "text/csv"}),
                }  # fmt: skip
                for kind, (body, headers) in bodies.items():
                    result = asyncio.run(measure(url, body, headers, args.requests, args.clients, args.warmup))
                    result.update(series=n_series, format=kind, body_kb=len(body) / 1024)
                    rows.append(result)
                    print(f"{n_series} series, {kind}: {result['requests_per_s']:.1f} req/s", file=sys.stderr)

    print(f"\n{args.requests} requests per row, {args.clients} concurrent clients, after {args.warmup} warm-up\n")
    print("| series / request | format (in and out) | request body | requests/s | series/s | p50 ms | p99 ms |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['series']} | {r['format']} | {r['body_kb']:.0f} KB | {r['requests_per_s']:.1f} | "
            f"{r['requests_per_s'] * r['series']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
