"""Accuracy on real data the recipe was never tuned on: model vs naive, seasonal naive, AutoETS, MSTL, AutoTheta.

    python bench/accuracy.py                                   # every series, configs/default.yaml
    python bench/accuracy.py --series a10,h02 --max-steps 150  # a subset, shorter training
    python bench/accuracy.py --config my.yaml train.lr=0.001   # extra overrides pass through
    python bench/accuracy.py --json runs/accuracy/results.json # also write the results
    python bench/accuracy.py --markdown runs/accuracy/table.md # a markdown table per run (also printed)
    python bench/accuracy.py model.quantiles=[0.1,0.5,0.9]     # quantile mode: coverage and pinball loss
    python bench/accuracy.py --baselines-only                  # compute and cache the statistical columns only
    python bench/accuracy.py --series taylor --rows-from old.json  # rerun one series, the others' rows from old.json

Runs `python -m pipeline run --config CONFIG key=value ...` once per data set of
`bench/data/` (see its README.md) plus `builtin:vic_elec`, reads each run's
`evaluate/metrics.json`, and scores the statistical baselines on exactly the same test windows.

Protocol, the same for every series (only the frequency changes the numbers):
- test = the last 20% of each series (`data.test_size=0.2`), validation = the 10% before it
  (`data.val_size=0.1`); the rest is the train part;
- horizon per frequency: monthly 12, quarterly 8, weekly 52, hourly 24, half-hourly 48, 5-minute
  169 (one day of the call centre's 07:00-21:05 hours); forecast origins start at the first test
  point and advance by the horizon (`window.test_stride` = horizon): non-overlapping forecasts;
- season per frequency: 12, 4, 52, 24, 48 and 169 (the daily cycle of the 5-minute series, counted
  in call-centre time: nights, weekends and the missing days are not in the series). It is the
  seasonal-naive baseline's season and the season of the MASE scale: each series' in-sample
  mean absolute seasonal-naive error on its train part (what `pipeline/stages/evaluate.py` does);
- seasonal periods per series (`Series.seasons`, MSTL's): the sub-daily series have a daily and a
  weekly cycle (vic_elec and taylor 48 and 336, flights 24 and 168, calls 169 and 845 in
  call-centre time: a day and a 5-day week); every other series has its one season;
- extra pipeline overrides per series (`Series.overrides`, before the command line's): `calls`
  gets `model.seasons=[169,845]`, the cycles of its call-centre clock (the pipeline would
  otherwise try the 5-minute frequency's calendar day and week, 288 and 2016 steps, which mean
  nothing on that clock);
- lookback, residual head and its base are the config's (`auto` in the default recipe: three
  seasons or two horizons, at most half of what the shortest train part leaves after one horizon;
  the head's base averages up to three seasons);
- `train.batch_size` is the config's; the pipeline lowers it to the largest power of two that
  fits when a series has fewer training windows (noted in the results);
- `tracking.backend=none`, `export.onnx=false`; every run writes under `--workdir/<series>/`.
Everything else (model, loss, steps, strides of training and validation windows) is the
config's: the point is to measure the recipe as it is.

The statistical columns (statsforecast, imported only when needed; `pip install -e .[bench]`,
which brings pandas < 3 with it: statsforecast 2.1 declares that pin, though its models run on
pandas 3 too) are refitted at every forecast origin on all the data before it (train,
validation, and the test points before the origin), the faithful rolling-origin evaluation:
- `ets`: for seasons up to 24 `AutoETS(season_length=season)`; for longer seasons (weekly,
  half-hourly, 5-minute), where ETS's seasonal state is impractical (R's `ets` refuses m > 24),
  ETS on the STL seasonally adjusted series with the seasonal component carried forward, as R's
  `forecast()` does for such series (`stlf`): `MSTL(season_length=season,
  trend_forecaster=AutoETS(model="ZZN"))`;
- `mstl`: `MSTL(season_length=<the series' seasonal periods>, trend_forecaster=AutoETS(model="ZZN"))`
  (with one period, the same as `ets` for seasons over 24);
- `theta`: for seasons up to 24 `AutoTheta(season_length=season)` (it picks among the standard,
  optimised and dynamic theta models, after a classical decomposition when its seasonality test
  says so); for longer seasons the standard theta method (SES with drift, what R's `thetaf`
  fits) on the STL seasonally adjusted series: `MSTL(season_length=season,
  trend_forecaster=AutoTheta(model="STM"))`. Not the full `AutoTheta()` there: it fits all four
  theta models, about 290 s per origin on calls' 22,000 points against 40 s for STM.
- `mstl_window` (`--mstl-window`, the multi-seasonal sets only): `mstl` fitted on the last
  `window.lookback` points before each origin alone, the history the model's input window holds:
  what a decomposition reads from the same history, beside `mstl`'s every point.
Every fit also gives the 80% prediction interval (`predict(h, level=[80])`): its bounds are the
0.1 and 0.9 quantiles, the mean the 0.5. A fit that fails gives NaN forecasts (a NaN score) and
a note. Their MASE uses the same scale and windows as the pipeline's; the bench recomputes the
naive and seasonal-naive MASE on its windows and warns when they differ from the run's metrics.json.

These columns are deterministic and slow, so their forecasts are cached in
`<workdir>/baselines/<series>.json`, one entry per column, keyed by a hash of everything they
depend on (the values, train ends, origins, horizon, the model and its season(s), the interval
level, the statsforecast version): other seeds and reruns reuse them (`--no-cache` refits).
A long fit saves its finished windows every minute and resumes from them. `--no-ets` skips all
statistical columns.

Quantile mode: when a run's metrics.json has a `quantiles` block (`model.quantiles=[0.1,0.5,0.9]`
as an override), each row gets the model's 10-90% interval (`model_interval`: points inside,
points, coverage, scaled pinball loss from metrics.json) next to the same figures for the
statistical columns' 80% intervals (`<column>_interval`, the pinball loss of
`pipeline.library.metrics.summarise_quantiles` at 0.1/0.5/0.9, divided by each series' MASE
scale, averaged over all points and quantiles of the data set). The summary gives the coverage
over all test points of the suite (points inside / points) and the mean over data sets of each
one's scaled pinball.

The 5-minute `calls` file has real timestamps with gaps (nights, weekends, six missing
weekdays), which the pipeline's regular grid cannot hold: the bench feeds the pipeline a copy
in call-centre time (`<workdir>/inputs/calls.csv`: the same values on a gapless 5-minute clock
from the first timestamp), so consecutive rows are consecutive steps, as in R's `msts` object.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
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
from pipeline.library import seasonality  # noqa: E402
from pipeline.library.series import prepare_series  # noqa: E402
from pipeline.library.sources import load_table  # noqa: E402
from pipeline.library.splits import split_sizes  # noqa: E402
from pipeline.library.windows import build_window_index  # noqa: E402
from pipeline.stages.train import fit_batch  # noqa: E402

DATA_DIR = REPO / "bench" / "data"
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"
TEST_SIZE = 0.2
VAL_SIZE = 0.1
MAX_ETS_SEASON = 24  # beyond it: STL + non-seasonal ETS (and STL + standard theta)
LEVEL = 80  # the statistical columns' prediction interval: its bounds are the 0.1 and 0.9 quantiles
QUANTILES = (0.1, 0.5, 0.9)  # lower bound, mean, upper bound
INTERVAL = M.interval_name(QUANTILES[0], QUANTILES[-1])  # "0.1-0.9", the key of metrics.json's coverage
STATISTICAL = {"ets": "AutoETS", "mstl": "MSTL", "theta": "AutoTheta"}  # column: title
WINDOW_MSTL = "mstl_window"  # --mstl-window: MSTL fitted on the model's input window alone (multi-seasonal sets)
CACHE_FORMAT = 1  # bump when the cached entries change meaning
CHECKPOINT_SECONDS = 60.0  # a long fit saves its finished windows this often


@dataclass(frozen=True)
class Frequency:
    alias: str  # pandas frequency of the timestamps the pipeline sees
    horizon: int
    season: int


FREQUENCIES = {
    "monthly": Frequency("MS", 12, 12),
    "quarterly": Frequency("QS-JAN", 8, 4),
    "weekly": Frequency("W-FRI", 52, 52),
    "hourly": Frequency("h", 24, 24),
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
    seasons: tuple[int, ...] = ()  # seasonal periods (MSTL's); () = the frequency's one season
    overrides: tuple[str, ...] = ()  # extra pipeline overrides, before the command line's


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
        Series("vic_elec", "half-hourly", "builtin:vic_elec", target="demand", seasons=(48, 336)),
        Series("taylor", "half-hourly", "taylor.csv", seasons=(48, 336)),
        Series("flights", "hourly", "flights.csv", id_column="id", seasons=(24, 168)),
        Series(
            "calls",
            "5-minute",
            "calls.csv",
            session_clock=True,
            seasons=(169, 845),  # a day and a 5-day week of call-centre time
            overrides=("model.seasons=[169,845]",),
        ),
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


def seasons_of(series: Series) -> list[int]:
    """The series' seasonal periods: its own, or the frequency's one season."""
    return list(series.seasons) if series.seasons else [FREQUENCIES[series.freq].season]


def resolved(cfg: Config, values: list[np.ndarray]) -> Config:
    """`cfg` with its `auto` settings resolved as the pipeline's stages will resolve them (the seasons as ingest
    detects them)."""
    ends = np.array([split_sizes(len(v), cfg.data.val_size, cfg.data.test_size) for v in values])
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])[:-1]])
    checks = seasonality.detect(np.concatenate(values), offsets, ends[:, 0], ends[:, 1], cfg.data.freq)
    return auto.resolve_for(cfg, cfg.data.freq, int(ends[:, 0].min()), seasonality.kept(checks))


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
        *series.overrides,
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
    forecasts = [
        np.stack([np.asarray(forecaster(y[:t], horizon), dtype=np.float64) for t in starts])
        for y, starts in zip(values, origins)
    ]
    return score_forecasts(values, train_end, origins, horizon, season, forecasts)


def scales(values: list[np.ndarray], train_end: list[int], season: int) -> list[float]:
    """Each series' MASE scale: the in-sample mean absolute seasonal-naive error of its train part."""
    return [float(M.mase_scale(y, np.array([0]), np.array([end]), season)[0]) for y, end in zip(values, train_end)]


def actuals(values: list[np.ndarray], origins: list[np.ndarray], horizon: int) -> list[np.ndarray]:
    return [np.stack([y[t : t + horizon] for t in starts]) for y, starts in zip(values, origins)]


def score_forecasts(
    values: list[np.ndarray],
    train_end: list[int],
    origins: list[np.ndarray],
    horizon: int,
    season: int,
    forecasts: list[np.ndarray],
) -> dict[str, Any]:
    """`score` of forecasts made already: per series an array (windows, horizon)."""
    parts, per_series = [], []
    for scale, actual, forecast in zip(scales(values, train_end, season), actuals(values, origins, horizon), forecasts):
        terms = M.error_terms(actual, np.asarray(forecast, dtype=np.float64), np.full(len(actual), scale))
        parts.append(terms)
        per_series.append(float(terms["mase"].mean()))
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return {**M.summarise(joined), "per_series": per_series}


def score_intervals(
    values: list[np.ndarray],
    train_end: list[int],
    origins: list[np.ndarray],
    horizon: int,
    season: int,
    forecasts: list[np.ndarray],
    quantiles=QUANTILES,
) -> dict[str, Any]:
    """Coverage and pinball loss of quantile forecasts, per series an array (windows, horizon, quantiles).

    The pipeline's definitions (`metrics.summarise_quantiles`): pinball loss per point and quantile,
    divided by the series' MASE scale for `scaled_pinball`, averaged over all points and quantiles;
    coverage of the outermost interval (bounds included), with its counts for suite-wide sums.
    """
    scale = scales(values, train_end, season)
    actual = np.concatenate(actuals(values, origins, horizon))
    forecast = np.concatenate([np.asarray(f, dtype=np.float64) for f in forecasts])
    window_scale = np.concatenate([np.full(len(o), s) for o, s in zip(origins, scale)])
    block = M.summarise_quantiles(actual, forecast, list(quantiles), window_scale)
    inside = M.coverage_terms(actual, forecast[..., 0], forecast[..., -1])
    return {
        "interval": M.interval_name(quantiles[0], quantiles[-1]),
        "nominal": round(quantiles[-1] - quantiles[0], 12),
        "inside": int(inside.sum()),
        "points": int(inside.size),
        "coverage": float(inside.mean()),
        "pinball": block["pinball"],
        "scaled_pinball": block["scaled_pinball"],
    }


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


def statsforecast_version() -> str:
    import statsforecast

    return str(statsforecast.__version__)


def statistical_model(column: str, season: int, seasons: list[int], window: int = 0) -> tuple[str, Callable[[], Any]]:
    """(what is fitted, in words: part of the cache key; a factory of unfitted statsforecast models).

    `mstl_window` is MSTL fitted on the last `window` points before each origin only: the history the
    model's input window holds, where `mstl` reads every point before the origin."""
    from statsforecast.models import MSTL, AutoETS, AutoTheta

    if column == WINDOW_MSTL:
        spec, make = statistical_model("mstl", season, seasons)
        return f"{spec} on the last {window} points", make

    if column == "ets":
        if season > MAX_ETS_SEASON:
            spec = f"MSTL(season_length={season}, trend_forecaster=AutoETS(model='ZZN'))"
            return spec, lambda: MSTL(season_length=season, trend_forecaster=AutoETS(model="ZZN"))
        return f"AutoETS(season_length={season})", lambda: AutoETS(season_length=season)
    if column == "mstl":
        periods = sorted(seasons)
        spec = f"MSTL(season_length={periods}, trend_forecaster=AutoETS(model='ZZN'))"
        return spec, lambda: MSTL(season_length=periods, trend_forecaster=AutoETS(model="ZZN"))
    if column == "theta":
        if season > MAX_ETS_SEASON:
            spec = f"MSTL(season_length={season}, trend_forecaster=AutoTheta(model='STM'))"
            return spec, lambda: MSTL(season_length=season, trend_forecaster=AutoTheta(model="STM"))
        return f"AutoTheta(season_length={season})", lambda: AutoTheta(season_length=season)
    raise ValueError(f"unknown statistical column {column!r}")


def ets(season: int, failures: list[str] | None = None):
    """AutoETS refitted on the history it is given (STL + ETS for seasons over MAX_ETS_SEASON): its mean.

    A fit that fails gives NaN forecasts (so a NaN score) and appends its error to `failures`.
    """
    _, make = statistical_model("ets", season, [season])
    fit = fitter(make, failures)
    return lambda history, horizon: fit(history, horizon)[:, 1]


def fitter(make: Callable[[], Any], failures: list[str] | None = None, level: int = LEVEL):
    """`forecast(history, horizon)`: (horizon, 3) lower bound, mean, upper bound of a fresh fit of `make()`."""

    def forecast(history: np.ndarray, horizon: int) -> np.ndarray:
        try:
            out = make().fit(np.asarray(history, dtype=np.float64)).predict(h=horizon, level=[level])
            return np.stack([out[f"lo-{level}"], out["mean"], out[f"hi-{level}"]], axis=1).astype(np.float64)
        except Exception as exc:  # statsforecast raises several types on degenerate histories
            if failures is not None:
                failures.append(f"origin {len(history)}: {type(exc).__name__}: {exc}")
            return np.full((horizon, 3), np.nan)

    return forecast


# ---------------------------------------------------------------- cached rolling-origin forecasts


def cache_key(
    values: list[np.ndarray], train_end: list[int], origins: list[np.ndarray], horizon: int, spec: str, version: str
) -> str:
    """A hash of everything a column's forecasts depend on (the spec names the model and its season(s))."""
    h = hashlib.sha256()
    head = {
        "format": CACHE_FORMAT,
        "spec": spec,
        "level": LEVEL,
        "horizon": horizon,
        "train_end": [int(e) for e in train_end],
        "origins": [np.asarray(o).tolist() for o in origins],
        "statsforecast": version,
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    for y in values:
        h.update(np.ascontiguousarray(y, dtype=np.float64).tobytes())
    return h.hexdigest()[:20]


def read_cache(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_cache_entry(path: Path, column: str, entry: dict[str, Any]) -> None:
    """Store one column's entry in the series' cache file (re-read first: other columns may have changed)."""
    data = read_cache(path)
    data[column] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data) + "\n")
    tmp.replace(path)


def rolling_forecasts(
    column: str,
    spec: str,
    forecaster,
    values: list[np.ndarray],
    train_end: list[int],
    origins: list[np.ndarray],
    horizon: int,
    cache: Path | None,
    version: str,
) -> tuple[dict[str, Any], bool]:
    """(entry, whether it came from the cache) of `forecaster(history, horizon)` -> (horizon, 3) at every origin.

    The entry holds per series a list of windows (horizon x [lower, mean, upper]), the failures and the
    seconds the fits took. With a cache file, a complete entry under the same key is reused and a partial
    one (a long fit interrupted) is resumed; every CHECKPOINT_SECONDS the finished windows are saved.
    """
    key = cache_key(values, train_end, origins, horizon, spec, version)
    entry = read_cache(cache).get(column) if cache is not None else None
    if entry is not None and entry.get("key") == key and entry.get("complete"):
        return entry, True
    if entry is None or entry.get("key") != key:
        entry = {"key": key, "spec": spec, "statsforecast": version, "complete": False, "seconds": 0.0}
        entry.update({"failures": [], "forecasts": [[] for _ in values]})
    started, saved = time.perf_counter(), time.perf_counter()
    spent = float(entry["seconds"])
    for i, (y, starts) in enumerate(zip(values, origins)):
        done = entry["forecasts"][i]
        for t in starts[len(done) :]:
            failures: list[str] = []
            done.append(np.asarray(forecaster(y[: int(t)], horizon, failures), dtype=np.float64).tolist())
            entry["failures"].extend(f"series {i} {f}" for f in failures)
            if cache is not None and time.perf_counter() - saved > CHECKPOINT_SECONDS:
                entry["seconds"] = round(spent + time.perf_counter() - started, 1)
                write_cache_entry(cache, column, entry)
                saved = time.perf_counter()
    entry["seconds"] = round(spent + time.perf_counter() - started, 1)
    entry["complete"] = True
    if cache is not None:
        write_cache_entry(cache, column, entry)
    return entry, False


def statistical_columns(
    name: str,
    windows: Windows,
    horizon: int,
    season: int,
    seasons: list[int],
    cache_dir: Path | None,
    columns=tuple(STATISTICAL),
    log=print,
    cached_only: bool = False,
    window: int = 0,
) -> dict[str, Any]:
    """Row fields of the statistical columns: `<column>` (point scores), `<column>_per_series`,
    `<column>_interval` (80% interval as quantiles 0.1/0.5/0.9), `<column>_seconds`, `<column>_spec`,
    `<column>_cached`, and notes of failed fits."""
    version = statsforecast_version()
    cache = cache_dir / f"{name}.json" if cache_dir is not None else None
    scored = [windows.values, windows.train_end, windows.origins, horizon, season]
    fields: dict[str, Any] = {"notes": []}
    for column in columns:
        spec, make = statistical_model(column, season, seasons, window)
        last = window if column == WINDOW_MSTL else None
        if cached_only:
            key = cache_key(*scored[:4], spec, version)
            entry = read_cache(cache).get(column) if cache is not None else None
            if entry is None or entry.get("key") != key or not entry.get("complete"):
                fields["notes"].append(f"{STATISTICAL[column]} left out: not in the cache yet (--cached-only)")
                continue

        def forecaster(history, h, failures, make=make, last=last):
            return fitter(make, failures)(history if last is None else history[-last:], h)

        entry, hit = rolling_forecasts(column, spec, forecaster, *scored[:4], cache, version)
        forecasts = [np.asarray(f, dtype=np.float64).reshape(-1, horizon, 3) for f in entry["forecasts"]]
        point = score_forecasts(*scored, [f[..., 1] for f in forecasts])
        fields[column] = {k: v for k, v in point.items() if k != "per_series"}
        fields[f"{column}_per_series"] = dict(zip(windows.ids, point["per_series"]))
        fields[f"{column}_interval"] = score_intervals(*scored, forecasts)
        fields[f"{column}_seconds"] = entry["seconds"]
        fields[f"{column}_cached"] = hit
        fields[f"{column}_spec"] = spec
        if entry["failures"]:
            fields["notes"].append(
                f"{STATISTICAL[column]} failed at {len(entry['failures'])} origin(s), first {entry['failures'][0]}"
            )
        how = f"cached, fitted in {entry['seconds']} s" if hit else f"{entry['seconds']} s"
        log(f"[{name}] {column}: {spec}: MASE {fields[column]['mase']:.3f} ({how})")
    return fields


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


@dataclass
class Prepared:
    """One series ready to run: its overrides, resolved config, test windows and first row fields."""

    series: Series
    overrides: list[str]
    cfg: Config
    windows: Windows
    row: dict[str, Any]


def prepare(series: Series, args: argparse.Namespace) -> Prepared:
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
    row: dict[str, Any] = {
        "series": series.name,
        "freq": series.freq,
        "n_series": len(windows.ids),
        "length": [len(v) for v in values] if len(values) > 1 else len(values[0]),
        "horizon": cfg.window.horizon,
        "season": cfg.evaluate.season_length,
        "seasons": seasons_of(series),
        "lookback": cfg.window.lookback,
        "residual_season": cfg.model.residual_season,
        "season_average": cfg.model.season_average,
        "batch_size": batch,
        "n_windows": int(sum(len(o) for o in windows.origins)),
        "overrides": [*fixed, *args.overrides],
        "notes": notes,
    }
    return Prepared(series, [*fixed, *args.overrides], cfg, windows, row)


def add_statistical(prep: Prepared, args: argparse.Namespace) -> None:
    """The statistical columns into the row (cached under `<workdir>/baselines/` unless --no-cache)."""
    cache_dir = None if args.no_cache else args.workdir / "baselines"
    cfg, row = prep.cfg, prep.row
    columns = (*STATISTICAL, WINDOW_MSTL) if args.mstl_window and len(row["seasons"]) >= 2 else tuple(STATISTICAL)
    fields = statistical_columns(
        prep.series.name,
        prep.windows,
        cfg.window.horizon,
        cfg.evaluate.season_length,
        row["seasons"],
        cache_dir,
        columns=columns,
        log=lambda line: print(line, flush=True),
        cached_only=args.cached_only,
        window=cfg.window.lookback,
    )
    row["notes"].extend(fields.pop("notes"))
    row.update(fields)


def naive_columns(prep: Prepared) -> dict[str, Any]:
    """Naive and seasonal-naive scores recomputed on the bench's windows."""
    w, horizon, season = prep.windows, prep.cfg.window.horizon, prep.cfg.evaluate.season_length
    scored = [w.values, w.train_end, w.origins, horizon, season]
    return {"naive": score(*scored, naive), "seasonal_naive": score(*scored, seasonal_naive(season))}


def bench_one(series: Series, args: argparse.Namespace, with_ets: bool) -> dict[str, Any]:
    prep = prepare(series, args)
    cfg, row, notes = prep.cfg, prep.row, prep.row["notes"]
    started = time.perf_counter()
    code, last = run_pipeline(args.config, prep.overrides, args.workdir / f"{series.name}.log")
    row["pipeline_seconds"] = round(time.perf_counter() - started, 1)
    if code != 0:
        row["error"] = f"pipeline exit {code}: {last}"
        return row
    metrics = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    row["model"] = metrics["model"]
    row["trained"] = trained_on(cfg.run_dir)
    row["naive"] = metrics["baselines"]["naive"]
    row["seasonal_naive"] = metrics["baselines"]["seasonal_naive"]
    for key in ("seasons", "base"):  # what the pipeline resolved (its ingest detects the seasons)
        if key in metrics:
            row[f"pipeline_{key}"] = metrics[key]
    for name, ours in naive_columns(prep).items():
        theirs = row[name]["mase"]
        if metrics["n_windows"] != row["n_windows"] or abs(ours["mase"] - theirs) > 1e-6 * max(1.0, abs(theirs)):
            notes.append(
                f"{name} MASE recomputed on the bench's windows ({ours['mase']:.6f}, {row['n_windows']} windows) "
                f"differs from metrics.json ({theirs:.6f}, {metrics['n_windows']} windows)"
            )
    if "quantiles" in metrics:
        row["model_interval"] = model_interval(metrics)
        if row["model_interval"] is None:
            del row["model_interval"]
            notes.append(f"quantile mode without a {INTERVAL} interval (levels {metrics['quantiles'].get('levels')})")
        elif [float(q) for q in metrics["quantiles"].get("levels", [])] != list(QUANTILES):
            notes.append(
                f"model quantiles {metrics['quantiles'].get('levels')}: its pinball loss is not over the "
                f"statistical columns' {list(QUANTILES)}"
            )
    per_series_file = cfg.run_dir / "evaluate" / "per_series.csv"
    if len(prep.windows.ids) > 1 and per_series_file.is_file():
        row["per_series"] = pd.read_csv(per_series_file).to_dict(orient="records")
    if with_ets:
        add_statistical(prep, args)
    return row


def trained_on(run_dir: Path) -> dict[str, Any]:
    """The precision, device and CPU the model trained with: `auto` is bf16 on one CPU and float32 on another,
    and single series move with it (h02 0.983 in bf16, 1.089 in float32), so a table says which it holds."""
    setup = json.loads((run_dir / "train" / "meta.json").read_text()).get("setup", {})
    return {"precision": setup.get("precision"), "device": setup.get("device"), "cpu": cpu_model()}


@functools.cache
def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def trained_label(row: dict[str, Any]) -> str:
    t = row.get("trained")
    if not t:
        return "not recorded"
    precision = {"no": "float32"}.get(t["precision"], t["precision"])
    return f"{precision} on {t['cpu'] if str(t['device']).startswith('cpu') else t['device']}"


def model_interval(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The model's 10-90% interval from metrics.json's `quantiles` block, with counts for suite-wide sums."""
    q = metrics["quantiles"]
    cover = q.get("coverage", {}).get(INTERVAL)
    if cover is None:
        return None
    points = int(metrics["n_windows"]) * int(metrics["horizon"])
    return {
        "interval": INTERVAL,
        "nominal": cover["nominal"],
        "inside": round(cover["empirical"] * points),
        "points": points,
        "coverage": float(cover["empirical"]),
        "pinball": q["pinball"],
        "scaled_pinball": q["scaled_pinball"],
        "levels": q.get("levels"),
    }


def baselines_only(series: Series, args: argparse.Namespace) -> dict[str, Any]:
    """The row without the pipeline: naive, seasonal naive and the (cached) statistical columns."""
    prep = prepare(series, args)
    prep.row.update(naive_columns(prep))
    add_statistical(prep, args)
    return prep.row


# ---------------------------------------------------------------- summary


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals over the scored rows (data sets; a multi-series data set counts once).

    - `beats_both_naive` / `not_beating_naive`: model MASE below (or not) min(naive, seasonal naive);
    - `median_ratio_<column>`: median over data sets of model MASE / column MASE;
    - `multi_seasonal` (two seasonal periods), `beats_mstl` / `not_beating_mstl` among them;
    - `intervals` (when any row has them): per method the coverage over all test points of the suite
      (points inside / points) and `mean_scaled_pinball`, the mean over data sets of each data set's
      scaled pinball (itself a mean over its points and quantiles). In quantile mode over the data sets
      with the model's interval, so the methods are compared on the same ones.
    """
    done = [r for r in rows if "model" in r]

    def median_ratio(key: str) -> float | None:
        return _median([r["model"]["mase"] / r[key]["mase"] for r in done if key in r and r[key]["mase"] > 0])

    def beats(r: dict[str, Any], key: str) -> bool:
        return r["model"]["mase"] < r[key]["mase"]

    beat_naive = [r["series"] for r in done if beats(r, "naive") and beats(r, "seasonal_naive")]
    multi = [r for r in done if len(r.get("seasons", [])) >= 2 and "mstl" in r]
    summary: dict[str, Any] = {
        "n_series": len(rows),
        "n_scored": len(done),
        "beats_both_naive": beat_naive,
        "not_beating_naive": [r["series"] for r in done if r["series"] not in beat_naive],
        "median_ratio_naive": median_ratio("naive"),
        "median_ratio_seasonal_naive": median_ratio("seasonal_naive"),
        "median_ratio_ets": median_ratio("ets"),
        "median_ratio_mstl": median_ratio("mstl"),
        "median_ratio_theta": median_ratio("theta"),
        "multi_seasonal": [r["series"] for r in multi],
        "beats_mstl": [r["series"] for r in multi if beats(r, "mstl")],
        "not_beating_mstl": [r["series"] for r in multi if not beats(r, "mstl")],
        "beats_mstl_window": [r["series"] for r in multi if WINDOW_MSTL in r and beats(r, WINDOW_MSTL)],
        "not_beating_mstl_window": [r["series"] for r in multi if WINDOW_MSTL in r and not beats(r, WINDOW_MSTL)],
        "failed": [r["series"] for r in rows if "error" in r],
        "trained": {},
    }
    for r in done:
        summary["trained"].setdefault(trained_label(r), []).append(r["series"])
    intervals = interval_summary(rows)
    if intervals:
        summary["intervals"] = intervals
    return summary


def interval_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    with_model = [r for r in rows if "model_interval" in r]
    base = with_model or rows
    out = {}
    for method in ("model", *STATISTICAL):
        blocks = [r[f"{method}_interval"] for r in base if f"{method}_interval" in r]
        if not blocks:
            continue
        inside, points = sum(b["inside"] for b in blocks), sum(b["points"] for b in blocks)
        out[method] = {
            "n_series": len(blocks),
            "inside": inside,
            "points": points,
            "coverage": inside / points if points else None,
            "mean_scaled_pinball": float(np.mean([b["scaled_pinball"] for b in blocks])),
        }
    return out


MASE_COLUMNS = ("model", "naive", "seasonal_naive", *STATISTICAL)


def table(rows: list[dict[str, Any]]) -> str:
    names = ("windows", "model", "naive", "snaive", *STATISTICAL, "sMAPE%")
    quantile = any("model_interval" in r for r in rows)
    intervals = any("ets_interval" in r for r in rows) and not any("model" in r for r in rows)
    if quantile:
        names += ("cover", "pinball", "etscov", "etspb")
    elif intervals:  # --baselines-only: AutoETS's 80% interval
        names += ("etscov", "etspb")
    head = f"{'series':<11} {'freq':<11} {'h':>4} " + " ".join(f"{c:>7}" for c in names)
    lines = [head, "-" * len(head)]

    def cell(r: dict, key: str, field: str = "mase", fmt: str = "7.3f") -> str:
        return f"{r[key][field]:{fmt}}" if key in r else f"{'-':>7}"

    for r in rows:
        start = f"{r['series']:<11} {r['freq']:<11} {r['horizon']:>4} {r['n_windows']:>7}"
        if "error" in r:
            lines.append(f"{start}  failed: {r['error']}")
            continue
        cells = [cell(r, k) for k in MASE_COLUMNS] + [cell(r, "model", "smape", "7.2f")]
        if quantile:
            cells += [cell(r, "model_interval", "coverage", "7.1%"), cell(r, "model_interval", "scaled_pinball")]
        if quantile or intervals:
            cells += [cell(r, "ets_interval", "coverage", "7.1%"), cell(r, "ets_interval", "scaled_pinball")]
        lines.append(f"{start} " + " ".join(cells))
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """A markdown table of one run (MASE; bold: the model beats both naive forecasts) and its summary line."""
    quantile = any("model_interval" in r for r in rows)
    windowed = any(WINDOW_MSTL in r for r in rows)
    head = ["series", "freq", "horizon", "windows", "model", "naive", "seasonal naive", *STATISTICAL.values()]
    head += ["MSTL on the model's window"] if windowed else []
    if quantile:
        head += ["coverage 10-90%", "scaled pinball", "AutoETS coverage 80%", "AutoETS scaled pinball"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + " |"]

    def num(r: dict, key: str, field: str = "mase", fmt: str = ".3f") -> str:
        return format(r[key][field], fmt) if key in r else "-"

    for r in rows:
        cells = [r["series"], r["freq"], str(r["horizon"]), str(r["n_windows"])]
        if "error" in r:
            cells += ["failed"] + ["-"] * (len(head) - 5)
        else:
            model = num(r, "model")
            if "model" in r and r["model"]["mase"] < min(r["naive"]["mase"], r["seasonal_naive"]["mase"]):
                model = f"**{model}**"
            cells += [model, *(num(r, k) for k in MASE_COLUMNS[1:])]
            cells += [num(r, WINDOW_MSTL)] if windowed else []
            if quantile:
                cells += [num(r, "model_interval", "coverage", ".1%"), num(r, "model_interval", "scaled_pinball")]
                cells += [num(r, "ets_interval", "coverage", ".1%"), num(r, "ets_interval", "scaled_pinball")]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n\n" + summary_line(summary) + "\n"
    reused: dict[str, list[str]] = {}
    for r in rows:
        if "reused_from" in r:
            reused.setdefault(r["reused_from"], []).append(r["series"])
    for path, names in reused.items():
        text += f"\nrows of an earlier run ({path}): {', '.join(names)}\n"
    return text


def summary_line(s: dict[str, Any]) -> str:
    def ratio(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    def names(items: list[str]) -> str:
        return f" ({', '.join(items)})" if items else ""

    text = (
        f"model beats both naive baselines on {len(s['beats_both_naive'])} of {s['n_scored']} series"
        f"{'; not on ' + ', '.join(s['not_beating_naive']) if s['not_beating_naive'] else ''}; "
        f"median MASE ratio model/naive {ratio(s['median_ratio_naive'])}, "
        f"model/snaive {ratio(s['median_ratio_seasonal_naive'])}, model/ets {ratio(s['median_ratio_ets'])}, "
        f"model/mstl {ratio(s['median_ratio_mstl'])}, model/theta {ratio(s['median_ratio_theta'])}"
    )
    if s["multi_seasonal"]:
        text += (
            f"; beats mstl on {len(s['beats_mstl'])} of {len(s['multi_seasonal'])} multi-seasonal series"
            f"{names(s['beats_mstl'])}{'; not on ' + ', '.join(s['not_beating_mstl']) if s['not_beating_mstl'] else ''}"
        )
    windowed = s.get("beats_mstl_window", []) + s.get("not_beating_mstl_window", [])
    if windowed:
        text += (
            f"; beats MSTL on the model's window on {len(s['beats_mstl_window'])} of {len(windowed)}"
            f"{names(s['beats_mstl_window'])}"
        )
    iv = s.get("intervals", {})
    if "model" in iv:
        m = iv["model"]
        text += f"; {INTERVAL} coverage {m['coverage']:.1%} of {m['points']} test points (goal 75-85%)"
        text += f", scaled pinball (mean over data sets) model {m['mean_scaled_pinball']:.4f}"
        if "ets" in iv:
            e = iv["ets"]
            text += f" vs AutoETS 80% interval {e['mean_scaled_pinball']:.4f} (coverage {e['coverage']:.1%})"
    elif "ets" in iv:
        e = iv["ets"]
        text += (
            f"; AutoETS 80% interval coverage {e['coverage']:.1%} of {e['points']} test points, "
            f"scaled pinball (mean over data sets) {e['mean_scaled_pinball']:.4f}"
        )
    if s["failed"]:
        text += f"; failed: {', '.join(s['failed'])}"
    trained = s.get("trained", {})
    if list(trained) == ["not recorded"]:
        text += "; precision and CPU not recorded"
    elif len(trained) == 1:
        text += f"; trained in {next(iter(trained))}"
    elif trained:
        text += "; trained in " + "; ".join(f"{label} ({', '.join(names)})" for label, names in trained.items())
    return text


def with_earlier_rows(rows: list[dict[str, Any]], path: Path, overrides: list[str]) -> list[dict[str, Any]]:
    """`rows`, and in SERIES order the rows of `path` (an earlier --json) for the series not in them.

    For a change that can only move some series (a base that needs two seasons): the others'
    rows stand, each marked `reused_from`. The earlier run must have had the same overrides
    (seed, quantiles), or its rows would measure something else.
    """
    earlier = json.loads(path.read_text())
    if earlier.get("overrides") != overrides:
        raise SystemExit(f"--rows-from {path}: its overrides {earlier.get('overrides')} differ from {overrides}")
    ran = {r["series"]: r for r in rows}
    old = {r["series"]: {**r, "reused_from": str(path)} for r in earlier["rows"]}
    return [ran.get(name) or old[name] for name in SERIES if name in ran or name in old]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="recipe to measure (default: %(default)s)")
    p.add_argument("--workdir", type=Path, default=REPO / "runs" / "accuracy", help="run directories (%(default)s)")
    p.add_argument("--series", action="append", help="names to run, comma-separated or repeated (default: all)")
    p.add_argument("--max-steps", type=int, help="override train.max_steps")
    p.add_argument("--no-ets", action="store_true", help="skip the statistical columns (AutoETS, MSTL, AutoTheta)")
    p.add_argument(
        "--no-cache", action="store_true", help="refit the statistical columns, ignoring and not writing the cache"
    )
    p.add_argument(
        "--baselines-only", action="store_true", help="compute (and cache) the statistical columns, no pipeline runs"
    )
    p.add_argument("--cached-only", action="store_true", help="statistical columns only from the cache")
    p.add_argument(
        "--mstl-window",
        action="store_true",
        help="also MSTL fitted on the model's input window alone (window.lookback points) for the multi-seasonal sets",
    )
    p.add_argument("--json", type=Path, help="write the results (rows, per-series detail, summary) here")
    p.add_argument("--markdown", type=Path, help="write the markdown table and summary line here (also printed)")
    p.add_argument("--list", action="store_true", help="list the series and their protocol, then exit")
    p.add_argument(
        "--rows-from",
        type=Path,
        action="append",
        default=[],
        help="an earlier --json output (repeatable, the first wins): its rows complete the table for the series not"
        " run now; it must have had the same overrides",
    )
    p.add_argument("--rows-only", action="store_true", help="run nothing: the table from the --rows-from files alone")
    p.add_argument("overrides", nargs="*", help="extra key.sub=value overrides, applied last")
    args = p.parse_args(argv)
    args.workdir = args.workdir.resolve()
    names = [n.strip() for item in args.series or [] for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in SERIES]
    if unknown:
        p.error(f"unknown series {', '.join(unknown)} (choose from {', '.join(SERIES)})")
    if args.baselines_only and args.no_ets:
        p.error("--baselines-only computes the statistical columns: drop --no-ets")
    if args.rows_only and not args.rows_from:
        p.error("--rows-only needs --rows-from")
    args.names = [] if args.rows_only else names or list(SERIES)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.list:
        for name in args.names:
            s = SERIES[name]
            f = FREQUENCIES[s.freq]
            print(
                f"{name:<11} {s.freq:<11} horizon {f.horizon:>3}  season {f.season:>3}  "
                f"seasons {','.join(map(str, seasons_of(s))):<8}  source {s.source}"
                + (f"  overrides {' '.join(s.overrides)}" if s.overrides else "")
            )
        return 0
    with_ets = not args.no_ets and ets_available()
    if not args.no_ets and not with_ets:
        print("statsforecast is not installed: the statistical columns are skipped (pip install -e '.[bench]')")
        if args.baselines_only:
            return 1
    rows = []
    for name in args.names:
        if args.baselines_only:
            print(
                f"[{name}] statistical baselines (cache: {args.workdir / 'baselines' / (name + '.json')})", flush=True
            )
            row = baselines_only(SERIES[name], args)
        else:
            print(f"[{name}] running the pipeline (log: {args.workdir / (name + '.log')})", flush=True)
            row = bench_one(SERIES[name], args, with_ets)
            status = row.get("error") or f"model MASE {row['model']['mase']:.3f}"
            print(f"[{name}] {status} (pipeline {row['pipeline_seconds']} s)", flush=True)
        for note in row["notes"]:
            print(f"[{name}] note: {note}", flush=True)
        rows.append(row)
    for path in args.rows_from:
        rows = with_earlier_rows(rows, path, args.overrides)
    summary = summarise(rows)
    print()
    print(table(rows))
    print()
    print(summary_line(summary))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(rows, summary))
        print(f"wrote {args.markdown}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "config": str(args.config),
            "overrides": args.overrides,
            "max_steps": args.max_steps,
            "baselines_only": args.baselines_only,
            "frequencies": {k: dataclasses.asdict(v) for k, v in FREQUENCIES.items()},
            "rows": rows,
            "summary": summary,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
