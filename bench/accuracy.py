"""Accuracy on real data the recipe was never tuned on: model vs naive, seasonal naive and AutoETS.

    python bench/accuracy.py                                   # every series, configs/default.yaml
    python bench/accuracy.py --series a10,h02 --max-steps 150  # a subset, shorter training
    python bench/accuracy.py --config my.yaml train.lr=0.001   # extra overrides pass through
    python bench/accuracy.py --json runs/accuracy/results.json # also write the results

Runs `python -m pipeline run --config CONFIG key=value ...` once per data set of
`bench/data/` (see its README.md) plus `builtin:vic_elec`, reads each run's
`evaluate/metrics.json`, and scores AutoETS on exactly the same test windows.

Protocol, the same for every series (only the frequency changes the numbers):
- test = the last 20% of each series (`data.test_size=0.2`), validation = the 10% before it
  (`data.val_size=0.1`); the rest is the train part;
- horizon per frequency: monthly 12, quarterly 8, weekly 52, half-hourly 48, 5-minute 169 (one
  day of the call centre's 07:00-21:05 hours); forecast origins start at the first test point
  and advance by the horizon (`window.test_stride` = horizon): non-overlapping forecasts;
- season per frequency: 12, 4, 52, 48 and 169 (the daily cycle of the 5-minute series, counted
  in call-centre time: nights, weekends and the missing days are not in the series). It is the
  seasonal-naive baseline's season and the season of the MASE scale: each series' in-sample
  mean absolute seasonal-naive error on its train part (what `pipeline/stages/evaluate.py` does);
- lookback, residual head and its base are the config's (`auto` in the default recipe: three
  seasons or two horizons, at most half of what the shortest train part leaves after one horizon;
  the head's base averages up to three seasons);
- `train.batch_size` is the config's; the pipeline lowers it to the largest power of two that
  fits when a series has fewer training windows (noted in the results);
- `tracking.backend=none`, `export.onnx=false`; every run writes under `--workdir/<series>/`.
Everything else (model, loss, steps, strides of training and validation windows) is the
config's: the point is to measure the recipe as it is.

AutoETS (statsforecast, imported only when needed; `pip install -e .[bench]`, which brings
pandas < 3 with it: statsforecast 2.1 declares that pin) is refitted at
every forecast origin on all the data before it (train, validation, and the test points
before the origin), the faithful rolling-origin evaluation. For seasons up to 24 it is
`AutoETS(season_length=season)`; for longer seasons (weekly, half-hourly, 5-minute), where
ETS's seasonal state is impractical (R's `ets` refuses m > 24), it is ETS on the STL
seasonally adjusted series with the seasonal component carried forward, as R's `forecast()`
does for such series (`stlf`): statsforecast's `MSTL(season, trend_forecaster=AutoETS("ZZN"))`.
Its MASE uses the same scale and windows as the pipeline's; the bench recomputes the naive and
seasonal-naive MASE on its windows and warns when they differ from the run's metrics.json.

The 5-minute `calls` file has real timestamps with gaps (nights, weekends, six missing
weekdays), which the pipeline's regular grid cannot hold: the bench feeds the pipeline a copy
in call-centre time (`<workdir>/inputs/calls.csv`: the same values on a gapless 5-minute clock
from the first timestamp), so consecutive rows are consecutive steps, as in R's `msts` object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `pipeline` importable from the checkout
    sys.path.insert(0, str(REPO))

from pipeline.config import (  # noqa: E402
    Config,
    DataConfig,
    auto,
    load_config,
)
from pipeline.library import metrics as M  # noqa: E402
from pipeline.library.series import prepare_series  # noqa: E402
from pipeline.library.sources import load_table  # noqa: E402
from pipeline.library.splits import split_sizes  # noqa: E402
from pipeline.library.windows import build_window_index  # noqa: E402
from pipeline.stages.train import fit_batch  # noqa: E402

DATA_DIR = REPO / "bench" / "data"
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"
TEST_SIZE = 0.2
VAL_SIZE = 0.1
MAX_ETS_SEASON = 24  # beyond it: STL + non-seasonal ETS


@dataclass(frozen=True)
class Frequency:
    alias: str  # pandas frequency of the timestamps the pipeline sees
    horizon: int
    season: int


FREQUENCIES = {
    "monthly": Frequency("MS", 12, 12),
    "quarterly": Frequency("QS-JAN", 8, 4),
    "weekly": Frequency("W-FRI", 52, 52),
    "half-hourly": Frequency("30min", 48, 48),
    "5-minute": Frequency("5min", 169, 169),
}


@dataclass(frozen=True)
class Series:
    """One benchmark entry: a data set (one series, or several in long format with an id)."""

    name: str
    freq: str  # a key of FREQUENCIES
    source: str  # a file under bench/data, or builtin:<name>
    target: str = "value"
    id_column: str | None = None
    session_clock: bool = False  # real timestamps with gaps: fed to the pipeline on a gapless clock


SERIES = {
    s.name: s
    for s in (
        Series("a10", "monthly", "a10.csv"),
        Series("h02", "monthly", "h02.csv"),
        Series("usmelec", "monthly", "usmelec.csv"),
        Series("auscafe", "monthly", "auscafe.csv"),
        Series("elecequip", "monthly", "elecequip.csv"),
        Series("departures", "monthly", "departures.csv", id_column="id"),
        Series("ausbeer", "quarterly", "ausbeer.csv"),
        Series("qcement", "quarterly", "qcement.csv"),
        Series("arrivals", "quarterly", "arrivals.csv", id_column="id"),
        Series("gasoline", "weekly", "gasoline.csv"),
        Series("vic_elec", "half-hourly", "builtin:vic_elec", target="demand"),
        Series("calls", "5-minute", "calls.csv", session_clock=True),
    )
}


# ---------------------------------------------------------------- protocol


@dataclass(frozen=True)
class Protocol:
    test_size: float
    val_size: float
    horizon: int
    test_stride: int
    season: int


def protocol(freq: str) -> Protocol:
    """The split, windows and season of a series of this frequency."""
    f = FREQUENCIES[freq]
    return Protocol(test_size=TEST_SIZE, val_size=VAL_SIZE, horizon=f.horizon, test_stride=f.horizon, season=f.season)


def resolved(cfg: Config, values: list[np.ndarray]) -> Config:
    """`cfg` with its `auto` settings resolved as the pipeline's stages will resolve them."""
    shortest = min(split_sizes(len(v), cfg.data.val_size, cfg.data.test_size)[0] for v in values)
    return auto.resolve_for(cfg, cfg.data.freq, shortest)


def data_config(series: Series, workdir: Path) -> DataConfig:
    """Where the pipeline reads this series from (writing the call-centre-time copy if needed)."""
    if series.source.startswith("builtin:"):
        source = series.source
    elif series.session_clock:
        source = str(session_clock_copy(DATA_DIR / series.source, workdir / "inputs", FREQUENCIES[series.freq].alias))
    else:
        source = str(DATA_DIR / series.source)
    return DataConfig(
        source=source,
        format="long",
        id_column=series.id_column,
        time_column="time",
        target_column=series.target,
        freq=FREQUENCIES[series.freq].alias,
        missing="error",
        val_size=VAL_SIZE,
        test_size=TEST_SIZE,
    )


def session_clock_copy(path: Path, out_dir: Path, alias: str) -> Path:
    """The same values on a gapless clock from the first timestamp (rewritten only when it changes)."""
    table = pd.read_csv(path)
    start = pd.Timestamp(table["time"].iloc[0])
    table["time"] = pd.date_range(start, periods=len(table), freq=alias).strftime("%Y-%m-%d %H:%M:%S")
    text = table.to_csv(index=False)
    out = out_dir / path.name
    if not out.is_file() or out.read_text() != text:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(out)
    return out


def load_values(cfg: DataConfig) -> tuple[list[str], list[np.ndarray]]:
    """Each series as the pipeline holds it: through ingest, float32 in the buffer, float64 to score."""
    series = prepare_series(load_table(cfg), cfg)
    values = series.values.astype(np.float32).astype(np.float64)
    return series.ids, [values[o : o + n] for o, n in zip(series.offsets, series.lengths)]


def overrides_for(series: Series, data: DataConfig, p: Protocol, workdir: Path) -> list[str]:
    return [
        f"name={series.name}",
        f"output_dir={workdir / series.name}",
        f"data.source={data.source}",
        "data.format=long",
        f"data.id_column={data.id_column if data.id_column else 'null'}",
        "data.time_column=time",
        f"data.target_column={data.target_column}",
        f"data.freq={data.freq}",
        f"data.val_size={p.val_size}",
        f"data.test_size={p.test_size}",
        f"window.horizon={p.horizon}",
        f"window.test_stride={p.test_stride}",
        f"evaluate.season_length={p.season}",
        "tracking.backend=none",
        "export.onnx=false",
    ]


@dataclass
class Windows:
    """The pipeline's test windows of one data set: per kept series its values, train end, origins."""

    ids: list[str]
    values: list[np.ndarray]
    train_end: list[int]
    origins: list[np.ndarray]  # first target position of each test window
    n_train_windows: int


def test_windows(ids: list[str], values: list[np.ndarray], cfg: Config) -> Windows:
    """The same windows as `pipeline window`: same split sizes, same index, same short-series drop."""
    lengths = np.array([len(v) for v in values])
    ends = [split_sizes(int(n), cfg.data.val_size, cfg.data.test_size) for n in lengths]
    train_end = np.array([e[0] for e in ends])
    val_end = np.array([e[1] for e in ends])
    w = cfg.window
    index = build_window_index(
        lengths, train_end, val_end, w.lookback, w.horizon, w.stride, w.val_stride, w.test_stride
    )
    has = [np.bincount(index[s][:, 0], minlength=len(ids)) > 0 for s in ("train", "val", "test")]
    keep = np.flatnonzero(has[0] & has[1] & has[2])
    test = index["test"]
    return Windows(
        ids=[ids[i] for i in keep],
        values=[values[i] for i in keep],
        train_end=[int(train_end[i]) for i in keep],
        origins=[test[test[:, 0] == i, 1] + w.lookback for i in keep],
        n_train_windows=int(np.isin(index["train"][:, 0], keep).sum()),
    )


# ---------------------------------------------------------------- scoring


def score(
    values: list[np.ndarray], train_end: list[int], origins: list[np.ndarray], horizon: int, season: int, forecaster
) -> dict[str, Any]:
    """MAE/RMSE/sMAPE/MASE of `forecaster(history, horizon)` over every window of every series.

    Scaled like `pipeline/stages/evaluate.py`: per series by the in-sample seasonal-naive error of its
    train part; averaged over all points of all windows. Also returns MASE per series.
    """
    parts, per_series = [], []
    for y, end, starts in zip(values, train_end, origins):
        scale = float(M.mase_scale(y, np.array([0]), np.array([end]), season)[0])
        actual = np.stack([y[t : t + horizon] for t in starts])
        forecast = np.stack([np.asarray(forecaster(y[:t], horizon), dtype=np.float64) for t in starts])
        terms = M.error_terms(actual, forecast, np.full(len(starts), scale))
        parts.append(terms)
        per_series.append(float(terms["mase"].mean()))
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return {**M.summarise(joined), "per_series": per_series}


def naive(history: np.ndarray, horizon: int) -> np.ndarray:
    return np.repeat(history[-1], horizon)


def seasonal_naive(season: int):
    def forecast(history: np.ndarray, horizon: int) -> np.ndarray:
        back = season * (1 + np.arange(horizon) // season)
        return history[len(history) - back + np.arange(horizon)]

    return forecast


def ets_available() -> bool:
    try:
        import statsforecast.models  # noqa: F401
    except ImportError:
        return False
    return True


def ets(season: int, failures: list[str] | None = None):
    """AutoETS refitted on the history it is given (STL + ETS for seasons over MAX_ETS_SEASON).

    A fit that fails gives NaN forecasts (so a NaN score) and appends its error to `failures`.
    """
    from statsforecast.models import MSTL, AutoETS

    def forecast(history: np.ndarray, horizon: int) -> np.ndarray:
        if season > MAX_ETS_SEASON:
            model = MSTL(season_length=season, trend_forecaster=AutoETS(model="ZZN"))
        else:
            model = AutoETS(season_length=season)
        try:
            return model.fit(history).predict(h=horizon)["mean"]
        except Exception as exc:  # statsforecast raises several types on degenerate histories
            if failures is not None:
                failures.append(f"origin {len(history)}: {type(exc).__name__}: {exc}")
            return np.full(horizon, np.nan)

    return forecast


# ---------------------------------------------------------------- running


def run_pipeline(config: Path, overrides: list[str], log_path: Path) -> tuple[int, str]:
    """`python -m pipeline run` in a child process; (exit code, last stderr line)."""
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
    command = [sys.executable, "-m", "pipeline", "run", "--config", str(config), *overrides]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        log.write(" ".join(command) + "\n\n")
        log.flush()
        done = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.PIPE, text=True)
        log.write(done.stderr)
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return done.returncode, (lines[-1] if lines else "")


def bench_one(series: Series, args: argparse.Namespace, with_ets: bool) -> dict[str, Any]:
    workdir = args.workdir
    data = data_config(series, workdir)
    ids, values = load_values(data)
    p = protocol(series.freq)
    fixed = overrides_for(series, data, p, workdir)
    if args.max_steps is not None:
        fixed.append(f"train.max_steps={args.max_steps}")
    cfg = load_config(args.config, [*fixed, *args.overrides])
    if cfg.data != data:  # the extra overrides changed how the data is read: score what the pipeline reads
        ids, values = load_values(cfg.data)
    cfg = resolved(cfg, values)
    windows = test_windows(ids, values, cfg)
    notes = []
    batch = fit_batch(cfg, windows.n_train_windows, 1).train.batch_size
    if batch != cfg.train.batch_size:
        notes.append(f"train.batch_size {cfg.train.batch_size} -> {batch} ({windows.n_train_windows} training windows)")
    overrides = [*fixed, *args.overrides]
    row: dict[str, Any] = {
        "series": series.name,
        "freq": series.freq,
        "n_series": len(windows.ids),
        "length": [len(v) for v in values] if len(values) > 1 else len(values[0]),
        "horizon": cfg.window.horizon,
        "season": cfg.evaluate.season_length,
        "lookback": cfg.window.lookback,
        "residual_season": cfg.model.residual_season,
        "season_average": cfg.model.season_average,
        "batch_size": batch,
        "n_windows": int(sum(len(o) for o in windows.origins)),
        "overrides": overrides,
        "notes": notes,
    }
    started = time.perf_counter()
    code, last = run_pipeline(args.config, overrides, workdir / f"{series.name}.log")
    row["pipeline_seconds"] = round(time.perf_counter() - started, 1)
    if code != 0:
        row["error"] = f"pipeline exit {code}: {last}"
        return row
    metrics = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    row["model"] = metrics["model"]
    row["naive"] = metrics["baselines"]["naive"]
    row["seasonal_naive"] = metrics["baselines"]["seasonal_naive"]
    horizon, season = cfg.window.horizon, cfg.evaluate.season_length
    scored = [windows.values, windows.train_end, windows.origins, horizon, season]
    check = {"naive": score(*scored, naive), "seasonal_naive": score(*scored, seasonal_naive(season))}
    for name, ours in check.items():
        theirs = row[name]["mase"]
        if metrics["n_windows"] != row["n_windows"] or abs(ours["mase"] - theirs) > 1e-6 * max(1.0, abs(theirs)):
            notes.append(
                f"{name} MASE recomputed on the bench's windows ({ours['mase']:.6f}, {row['n_windows']} windows) "
                f"differs from metrics.json ({theirs:.6f}, {metrics['n_windows']} windows)"
            )
    per_series_file = cfg.run_dir / "evaluate" / "per_series.csv"
    if len(windows.ids) > 1 and per_series_file.is_file():
        row["per_series"] = pd.read_csv(per_series_file).to_dict(orient="records")
    if with_ets:
        started = time.perf_counter()
        failures: list[str] = []
        result = score(*scored, ets(season, failures))
        row["ets"] = {k: v for k, v in result.items() if k != "per_series"}
        row["ets_per_series"] = dict(zip(windows.ids, result["per_series"]))
        row["ets_seconds"] = round(time.perf_counter() - started, 1)
        if failures:
            notes.append(f"AutoETS failed at {len(failures)} origin(s), first {failures[0]}")
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in rows if "model" in r]

    def median_ratio(key: str) -> float | None:
        ratios = [r["model"]["mase"] / r[key]["mase"] for r in done if key in r and r[key]["mase"] > 0]
        return float(np.median(ratios)) if ratios else None

    beats = [
        r["series"]
        for r in done
        if r["model"]["mase"] < r["naive"]["mase"] and r["model"]["mase"] < r["seasonal_naive"]["mase"]
    ]
    return {
        "n_series": len(rows),
        "n_scored": len(done),
        "beats_both_naive": beats,
        "median_ratio_naive": median_ratio("naive"),
        "median_ratio_seasonal_naive": median_ratio("seasonal_naive"),
        "median_ratio_ets": median_ratio("ets"),
        "failed": [r["series"] for r in rows if "error" in r],
    }


def table(rows: list[dict[str, Any]]) -> str:
    cells = " ".join(f"{c:>7}" for c in ("windows", "model", "naive", "snaive", "ets", "sMAPE%"))
    head = f"{'series':<11} {'freq':<11} {'h':>4} {cells}"
    lines = [head, "-" * len(head)]

    def mase(r: dict, key: str) -> str:
        return f"{r[key]['mase']:7.3f}" if key in r else f"{'-':>7}"

    for r in rows:
        start = f"{r['series']:<11} {r['freq']:<11} {r['horizon']:>4} {r['n_windows']:>7}"
        if "error" in r:
            lines.append(f"{start}  failed: {r['error']}")
            continue
        cells = " ".join(mase(r, k) for k in ("model", "naive", "seasonal_naive", "ets"))
        lines.append(f"{start} {cells} {r['model']['smape']:7.2f}")
    return "\n".join(lines)


def summary_line(s: dict[str, Any]) -> str:
    def ratio(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    text = (
        f"model beats both naive baselines on {len(s['beats_both_naive'])} of {s['n_scored']} series; "
        f"median MASE ratio model/naive {ratio(s['median_ratio_naive'])}, "
        f"model/snaive {ratio(s['median_ratio_seasonal_naive'])}, model/ets {ratio(s['median_ratio_ets'])}"
    )
    if s["failed"]:
        text += f"; failed: {', '.join(s['failed'])}"
    return text


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="recipe to measure (default: %(default)s)")
    p.add_argument("--workdir", type=Path, default=REPO / "runs" / "accuracy", help="run directories (%(default)s)")
    p.add_argument("--series", action="append", help="names to run, comma-separated or repeated (default: all)")
    p.add_argument("--max-steps", type=int, help="override train.max_steps")
    p.add_argument("--no-ets", action="store_true", help="skip the AutoETS column")
    p.add_argument("--json", type=Path, help="write the results (rows, per-series detail, summary) here")
    p.add_argument("--list", action="store_true", help="list the series and their protocol, then exit")
    p.add_argument("overrides", nargs="*", help="extra key.sub=value overrides, applied last")
    args = p.parse_args(argv)
    args.workdir = args.workdir.resolve()
    names = [n.strip() for item in args.series or [] for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in SERIES]
    if unknown:
        p.error(f"unknown series {', '.join(unknown)} (choose from {', '.join(SERIES)})")
    args.names = names or list(SERIES)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.list:
        for name in args.names:
            s = SERIES[name]
            f = FREQUENCIES[s.freq]
            print(f"{name:<11} {s.freq:<11} horizon {f.horizon:>3}  season {f.season:>3}  source {s.source}")
        return 0
    with_ets = not args.no_ets and ets_available()
    if not args.no_ets and not with_ets:
        print("statsforecast is not installed: the ets column is skipped (pip install -e '.[bench]')", flush=True)
    rows = []
    for name in args.names:
        print(f"[{name}] running the pipeline (log: {args.workdir / (name + '.log')})", flush=True)
        row = bench_one(SERIES[name], args, with_ets)
        status = row.get("error") or f"model MASE {row['model']['mase']:.3f}"
        timing = f"pipeline {row['pipeline_seconds']} s" + (
            f", ets {row['ets_seconds']} s" if "ets_seconds" in row else ""
        )
        print(f"[{name}] {status} ({timing})", flush=True)
        for note in row["notes"]:
            print(f"[{name}] note: {note}", flush=True)
        rows.append(row)
    summary = summarise(rows)
    print()
    print(table(rows))
    print()
    print(summary_line(summary))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "config": str(args.config),
            "overrides": args.overrides,
            "max_steps": args.max_steps,
            "frequencies": {k: dataclasses.asdict(v) for k, v in FREQUENCIES.items()},
            "rows": rows,
            "summary": summary,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
