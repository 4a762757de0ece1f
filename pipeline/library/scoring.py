"""Scoring forecasts of many windows against the naive baselines, in the data's original units.

The model, naive and seasonal-naive forecasts are scored on exactly the same points. MASE
divides by each window's series scale (the in-sample seasonal-naive error of the train part
the model learnt from). A quantile model is scored by its median for the point metrics, plus
the pinball loss and the coverage of its central intervals. Everything here is a function of
a `ScoredWindows` and plain values: the evaluate stage and the refit backtest share it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.library import metrics as M
from pipeline.library.calendar import fixed_step_ns
from pipeline.library.chunks import offsets_of
from pipeline.library.history import in_zone
from pipeline.library.records import SeriesTable

METHODS = ("model", "naive", "seasonal_naive")


@dataclass
class ScoredWindows:
    """Forecasts of a set of windows beside the values they forecast (original units, float64)."""

    pairs: np.ndarray  # (W, 2) (series, input start)
    positions: np.ndarray  # (W, horizon) buffer positions of the targets
    actual: np.ndarray  # (W, horizon)
    forecasts: dict[str, np.ndarray]  # METHODS -> (W, horizon); the model's point forecast (its median)
    window_scale: np.ndarray  # (W,) MASE denominator of each window
    quantiles: list[float]  # the model's quantile levels ([] for a point model)
    band: np.ndarray | None = None  # (W, horizon, Q) the model's quantile forecasts

    def __len__(self) -> int:
        return len(self.pairs)

    def rows(self, rows) -> ScoredWindows:
        """The windows selected by `rows` (a slice, mask or index array)."""
        return dataclasses.replace(
            self,
            pairs=self.pairs[rows],
            positions=self.positions[rows],
            actual=self.actual[rows],
            forecasts={m: f[rows] for m, f in self.forecasts.items()},
            window_scale=self.window_scale[rows],
            band=None if self.band is None else self.band[rows],
        )

    @property
    def series(self) -> np.ndarray:
        return self.pairs[:, 0]


def score(windows: ScoredWindows) -> tuple[dict, dict]:
    """(per-point terms of each method, the metrics block) on one set of windows."""
    terms = {m: M.error_terms(windows.actual, f, windows.window_scale) for m, f in windows.forecasts.items()}
    block = {"model": M.summarise(terms["model"]), "baselines": {m: M.summarise(terms[m]) for m in METHODS[1:]}}
    if windows.quantiles:
        block["quantiles"] = M.summarise_quantiles(
            windows.actual, windows.band, windows.quantiles, windows.window_scale
        )
    return terms, block


def per_series_table(windows: ScoredWindows, terms: dict, ids: list[str]) -> pd.DataFrame:
    """A row per series with test windows: the model's metrics and both baselines' MASE."""
    n, series, actual, quantiles = len(ids), windows.series, windows.actual, windows.quantiles
    by = {m: M.summarise_by_series(t, series, n) for m, t in terms.items()}
    counts = np.bincount(series, minlength=n)
    keep = counts > 0
    table = {"series": list(ids), "n_windows": counts}
    for metric in M.METRICS:
        table[f"model_{metric}"] = by["model"][metric]
    table["naive_mase"] = by["naive"]["mase"]
    table["seasonal_naive_mase"] = by["seasonal_naive"]["mase"]
    if quantiles:
        band = windows.band
        table["model_pinball"] = M.per_series_means(M.pinball_terms(actual, band, quantiles), series, n)
        for i, j in M.symmetric_intervals(quantiles):
            inside = M.coverage_terms(actual, band[..., i], band[..., j])
            table[f"model_coverage_{M.interval_name(quantiles[i], quantiles[j])}"] = M.per_series_means(
                inside, series, n
            )
    return pd.DataFrame(table)[keep].reset_index(drop=True)


def forecast_times(series: SeriesTable, freq: str, rows: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """(W, horizon) datetime64[ns] of the points at positions `steps` within the series `rows`.

    Fixed-duration steps are arithmetic; calendar steps (months, quarters) build each series'
    grid once and gather every window from it (no loop per window).
    """
    step_ns = fixed_step_ns(pd.tseries.frequencies.to_offset(freq))
    starts = pd.DatetimeIndex(series.starts).as_unit("ns").to_numpy()
    if step_ns:
        return (starts[rows].view(np.int64)[:, None] + steps * step_ns).view("datetime64[ns]")
    used, slot = np.unique(rows, return_inverse=True)
    longest = np.zeros(len(used), dtype=np.int64)
    np.maximum.at(longest, slot, steps.max(axis=1))
    grids = [pd.date_range(starts[s], periods=int(n) + 1, freq=freq).to_numpy() for s, n in zip(used, longest)]
    return np.concatenate(grids)[offsets_of(longest + 1)[slot, None] + steps]


def forecast_table(
    windows: ScoredWindows, series: SeriesTable, freq: str, zone: str | None = None, wall_clock: bool = False
) -> pd.DataFrame:
    """forecasts.csv: a row per scored point, so anyone can recompute the metrics and the coverage.

    Columns: series, origin (the time of the window's first forecast step), time, step (1 ahead
    to horizon ahead), actual (empty where the point was not observed), forecast (the median of a
    quantile model), `q<level>` for the other quantiles, naive, seasonal_naive. Times are in
    `zone` (the data's, ingest's record of it) where the data had one; `wall_clock`: the series' times are held on
    its clock, not in UTC.
    """
    rows = windows.series
    steps = windows.positions - series.offsets[rows, None]
    times = forecast_times(series, freq, rows, steps)
    horizon = steps.shape[1]
    return pd.DataFrame(
        {
            "series": np.repeat(np.array(series.ids, dtype=object)[rows], horizon),
            "origin": in_zone(np.repeat(times[:, 0], horizon), zone, wall_clock),
            "time": in_zone(times.ravel(), zone, wall_clock),
            "step": np.tile(np.arange(1, horizon + 1), len(rows)),
            "actual": windows.actual.ravel(),
            "forecast": windows.forecasts["model"].ravel(),
            **{name: values.ravel() for name, values in quantile_columns(windows.band, windows.quantiles).items()},
            "naive": windows.forecasts["naive"].ravel(),
            "seasonal_naive": windows.forecasts["seasonal_naive"].ravel(),
        }
    )


def quantile_columns(band: np.ndarray | None, quantiles: list[float]) -> dict[str, np.ndarray]:
    """`q<level>` columns of a quantile model's band (the median is the `model` column)."""
    if band is None:
        return {}
    return {f"q{q:g}": band[..., k] for k, q in enumerate(quantiles) if q != 0.5}
