"""Training throughput: our full step vs. the bare model step vs. a per-sample DataLoader.

    python bench/throughput.py                      # the CPU reference shape of bench/README.md
    python bench/throughput.py --pipeline-precisions no,auto   # the pipeline step in float32 and auto
    python bench/throughput.py --device cuda --batch-size 1024 --precision bf16

Measured in one process, one after the other, on the same model shape:
  (a) `pipeline`: the step `lstm-pipeline train` runs (batch order, vectorised gather from the
      buffer, forward, backward, clipping, AdamW) through Accelerate, in `--precision`, or once per
      precision of `--pipeline-precisions` (`pipeline[auto]` is what the default recipe runs);
  (b) `bare`: the model's own forward + backward + optimizer step on a batch already in place;
  (c) `dataloader`: the tutorial's per-sample Dataset + DataLoader feeding the same model.
(b) is also measured in a child process with the allocator left at glibc's defaults
(`bare_default`), which is what an untuned training script gets.
Prints windows/s for each, the ratios a/b, a/c and a/bare_default, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import SyntheticConfig, load_config
from pipeline.library.buffer import WindowBuffer
from pipeline.library.model import ModelSpec, build_model
from pipeline.library.records import SeriesStats, SeriesTable
from pipeline.library.synthetic import generate_synthetic
from pipeline.library.windows import build_window_index


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--series", type=int, default=64)
    p.add_argument("--length", type=int, default=20_000)
    p.add_argument("--lookback", type=int, default=168)
    p.add_argument("--horizon", type=int, default=24)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"], help="of every contender")
    p.add_argument("--bare-precisions", help="comma-separated no|bf16|fp16: a bare contender for each")
    p.add_argument(
        "--pipeline-precisions",
        help="comma-separated train.mixed_precision values (auto|no|bf16|fp16): a pipeline contender for each",
    )
    p.add_argument("--steps", type=int, default=40, help="timed steps per contender")
    p.add_argument("--round-steps", type=int, default=5, help="steps per contender per alternating round")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--only", choices=["bare"], help=argparse.SUPPRESS)  # child process mode
    p.add_argument("--skip-default", action="store_true", help="do not measure bare_default")
    p.add_argument(
        "--unchecked",
        action="store_true",
        help="add `pipeline_unchecked`: the first pipeline step without its non-finite check (one device "
        "read per step, a step late), to show what the check costs",
    )
    return p.parse_args()


def timed(step, steps: int, device: str) -> float:
    """Seconds per step; synchronises the device around the timed loop."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def interleaved_rates(steps: dict, args) -> dict[str, float]:
    """Windows/s of each step function, timed in alternating rounds so that load changes on a
    shared machine hit every contender alike; the median round counts."""
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    rounds = max(1, args.steps // args.round_steps)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(timed(step, args.round_steps, args.device))
    return {name: args.batch_size / float(np.median(t)) for name, t in times.items()}


def bare_step(args, spec: ModelSpec, precision: str | None = None):
    device = torch.device(args.device)
    model = build_model(spec, seed=0).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch_size, args.lookback, 1, device=device)
    y = torch.randn(args.batch_size, args.horizon, device=device)
    precision = precision or args.precision
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.mse_loss(model(x).float(), y)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)

    return step


class Unread:
    """A step check that never reads its values: the step as it would run without the non-finite check."""

    def defer(self, values: torch.Tensor, step: int) -> None:
        pass


def pipeline_step(
    args, spec: ModelSpec, raw: np.ndarray, series: SeriesTable, pairs: np.ndarray, precision: str, checked=True
):
    from pipeline.library.records import TrainState
    from pipeline.library.schedule import advance, local_batches
    from pipeline.stages import train
    from pipeline.stages.train import make_accelerator, train_step

    overrides = [
        f"train.batch_size={args.batch_size}",
        f"train.mixed_precision={precision}",
        f"window.lookback={args.lookback}",
        f"window.horizon={args.horizon}",
        "train.loss=mse",
    ]
    cfg = load_config(None, overrides)
    accelerator = make_accelerator(cfg)
    buffer = WindowBuffer.from_ingest(raw, series, args.lookback, args.horizon, accelerator.device)
    train_pairs = torch.from_numpy(pairs).to(buffer.values.device)
    model = build_model(spec, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, opt = accelerator.prepare(model, opt)
    state = TrainState()
    per_epoch = len(pairs) // args.batch_size

    check = train.StepCheck(accelerator) if checked else Unread()

    def step() -> None:
        micro = local_batches(train_pairs, cfg.train.batch_size, 1, cfg.seed, state, 0, 1)
        train_step(accelerator, model, opt, buffer, micro, cfg, state.step, check=check)
        advance(state, per_epoch)

    return step


def dataloader_step(args, spec: ModelSpec, series: list[np.ndarray], pairs: np.ndarray):
    """The original tutorial's data path: one torch.tensor per sample, collated by a DataLoader."""
    from torch.utils.data import DataLoader, Dataset

    lookback, horizon = args.lookback, args.horizon

    class Windows(Dataset):
        def __len__(self) -> int:
            return len(pairs)

        def __getitem__(self, i: int):
            s, start = pairs[i]
            values = series[s]
            x = torch.tensor(values[start : start + lookback], dtype=torch.float32).unsqueeze(-1)
            y = torch.tensor(values[start + lookback : start + lookback + horizon], dtype=torch.float32)
            return x, y

    device = torch.device(args.device)
    loader = DataLoader(Windows(), batch_size=args.batch_size, shuffle=True, drop_last=True)
    batches = iter(loader)
    model = build_model(spec, seed=0).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)

    def step() -> None:
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.mse_loss(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bare_default_rate(args) -> float:
    """The bare step in a fresh process whose allocator is left at glibc's defaults."""
    command = [sys.executable, __file__, "--only", "bare"] + [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if k not in ("only", "skip_default") and v is not None
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ})
    return float(json.loads(out.stdout.strip().splitlines()[-1])["bare"])


def main() -> None:
    args = parse()
    requested = {args.precision, *(args.bare_precisions or "").split(","), *(args.pipeline_precisions or "").split(",")}
    if "bf16" in requested:
        from pipeline.library.errors import ConfigError
        from pipeline.library.runtime import resolve_precision

        try:  # the pipeline's own refusal where this CPU has no bf16 LSTM, or this GPU's autocast runs it in fp16
            resolve_precision("bf16", torch.device(args.device.split(":")[0]))
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
    spec = ModelSpec(1, args.horizon, args.hidden_size, args.layers)
    torch.set_flush_denormal(True)
    if args.only == "bare":
        print(json.dumps({"bare": interleaved_rates({"bare": bare_step(args, spec)}, args)["bare"]}))
        return
    from pipeline.library.runtime import configure_process

    settings = configure_process()
    data = generate_synthetic(SyntheticConfig(n_series=args.series, length=args.length, freq="h"))
    series = [g["value"].to_numpy(np.float32) for _, g in data.groupby("series", observed=True)]
    raw = np.concatenate(series)
    lengths = np.array([len(s) for s in series])
    stats = SeriesStats(np.array([s.mean() for s in series], dtype=np.float64), np.array([s.std() for s in series],
                        dtype=np.float64), np.arange(len(series)))  # fmt: skip
    table = SeriesTable([str(i) for i in range(len(series))], ["2024-01-01T00:00:00"] * len(series), lengths,
                        lengths - 2 * args.horizon, lengths - args.horizon, stats)  # fmt: skip
    index = build_window_index(lengths, lengths - 2 * args.horizon, lengths - args.horizon, args.lookback, args.horizon)
    pairs = index["train"]

    steps = {"bare": bare_step(args, spec)}
    for precision in args.bare_precisions.split(",") if args.bare_precisions else []:
        if precision != args.precision:
            steps[f"bare[{precision}]"] = bare_step(args, spec, precision)
    precisions = args.pipeline_precisions.split(",") if args.pipeline_precisions else [args.precision]
    for precision in precisions:
        name = "pipeline" if not args.pipeline_precisions else f"pipeline[{precision}]"
        steps[name] = pipeline_step(args, spec, raw, table, pairs, precision)
    if args.unchecked:
        steps["pipeline_unchecked"] = pipeline_step(args, spec, raw, table, pairs, precisions[0], checked=False)
    steps["dataloader"] = dataloader_step(args, spec, series, pairs)
    rates = interleaved_rates(steps, args)
    ours = rates[next(k for k in rates if k.startswith("pipeline"))]  # the ratios compare the first pipeline
    if not args.skip_default and args.device == "cpu":
        rates["bare_default"] = bare_default_rate(args)
    result = {
        "shape": {k: v for k, v in vars(args).items() if k not in ("only", "skip_default")},
        "threads": settings["threads"],
        "windows_per_s": {k: round(v, 1) for k, v in rates.items()},
        "over_bare": {k: round(v / rates["bare"], 3) for k, v in rates.items() if k.startswith("pipeline[")},
        "a_over_b": round(ours / rates["bare"], 3),
        "a_over_c": round(ours / rates["dataloader"], 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if "bare_default" in rates:
        result["a_over_bare_default"] = round(ours / rates["bare_default"], 2)
    for name, rate in rates.items():
        print(f"{name:>13}: {rate:9.1f} windows/s")
    print(
        f"a/b = {result['a_over_b']}  a/c = {result['a_over_c']}  a/bare_default = {result.get('a_over_bare_default')}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
