"""Covariates: the user's own columns, fed to the network beside the target.

- `data.past_covariates`: measured with the target (e.g. temperature), so known only up to the
  forecast time: model inputs over the lookback, zero over the horizon.
- `data.future_covariates`: known ahead (e.g. the work-day flag): inputs over the lookback and
  the horizon, so `predict` needs their horizon values.
- `data.static_covariates`: one number per series (long format), constant in its rows.

Time-varying covariates go through ingest like the target (same grid, same missing-value
policy) and are stored beside it in values.arrow (`pipeline.library.store`) as float32 columns
in original units. Each is standardised per series with the mean and spread of its train part
(a covariate constant on the train part, such as a flag that never fires, keeps scale 1).
Static covariates are standardised across series, since within a series they do not vary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.library.chunks import series_chunks
from pipeline.library.errors import DataError, shown
from pipeline.library.history import shown_time
from pipeline.library.scaling import FLOAT32_MAX, too_large_for_float32

if TYPE_CHECKING:
    from pipeline.library.records import SeriesTable
    from pipeline.library.sources import DataLayout


FRAME_PREFIX = "covariate:"


def frame_column(name: str) -> str:
    """The column of a reader's frame that holds covariate `name`: prefixed, because those frames have columns of
    their own (series, time, target, row) that a covariate of the same name, a sales `target` say, would replace."""
    return FRAME_PREFIX + name


def on_grid(
    sid: str, part: pd.DataFrame, names: list[str], grid: pd.DatetimeIndex, data: DataLayout, zone: str | None = None
) -> np.ndarray | None:
    """(len(grid), K) float64 covariate values on the series' regular grid, by `data.missing`; None = drop the series.
    `zone`: errors name the (UTC) times in it, as the data wrote them (`shown_time`).

    `part` holds the series' rows (columns `time`, `row` and `frame_column(name)` of each covariate, sorted by time).
    """
    times = pd.DatetimeIndex(part["time"].to_numpy())
    values = part[[frame_column(n) for n in names]].to_numpy(dtype=np.float64)
    if len(grid) != len(times):
        values = pd.DataFrame(values, index=times).reindex(grid).to_numpy()
    huge = np.abs(np.nan_to_num(values, posinf=0.0, neginf=0.0)) > FLOAT32_MAX  # the buffer is float32: inf
    if huge.any():
        j, k = np.argwhere(huge)[0]
        row = part["row"].iloc[times.get_loc(grid[j])] if grid[j] in times else "?"
        what = too_large_for_float32(f"covariate '{shown(names[k])}' value", values[j, k], shown_time(grid[j], zone))
        raise DataError(f"{data.source}: series '{shown(sid)}': {what} (row {row})")
    bad = ~np.isfinite(values)
    if not bad.any():
        return values
    if data.missing == "error":
        j, k = np.argwhere(bad)[0]
        row = part["row"].iloc[times.get_loc(grid[j])] if grid[j] in times else "?"
        when = shown_time(grid[j], zone)
        raise DataError(
            f"{data.source}: series '{shown(sid)}': missing or non-finite value of covariate '{names[k]}' at {when} "
            f"(row {row}); set data.missing to interpolate, ffill or drop"
        )
    if data.missing == "drop":
        return None
    frame = pd.DataFrame(np.where(bad, np.nan, values))
    frame = frame.interpolate(limit_direction="both") if data.missing == "interpolate" else frame.ffill().bfill()
    empty = frame.isna().all().to_numpy()
    if empty.any():
        raise DataError(
            f"{data.source}: series '{shown(sid)}': covariate '{names[int(np.argmax(empty))]}' has no finite value"
        )
    return frame.to_numpy()


def static_row(sid: str, part: pd.DataFrame, names: list[str], source: str) -> list[float]:
    """The series' static covariates: each must be finite and the same in every row of the series.

    `part` holds the series' rows: columns `row` and `frame_column(name)` of each static covariate."""
    out = []
    for name in names:
        col = part[frame_column(name)].to_numpy(dtype=np.float64)
        if not np.isfinite(col).all():
            j = int(np.flatnonzero(~np.isfinite(col))[0])
            raise DataError(
                f"{source}: series '{shown(sid)}': missing or non-finite static covariate '{name}' "
                f"(row {part['row'].iloc[j]})"
            )
        if abs(col[0]) > FLOAT32_MAX:  # standardised into the model's float32 inputs
            raise DataError(
                f"{source}: series '{shown(sid)}': static covariate '{name}' value {col[0]:.6g} "
                f"(row {part['row'].iloc[0]}) is too large for float32 (|value| > 3.4e38)"
            )
        changed = np.flatnonzero(col != col[0])
        if len(changed):
            j = int(changed[0])
            raise DataError(
                f"{source}: series '{shown(sid)}': static covariate '{name}' changes within the series "
                f"({col[0]:g} in row {part['row'].iloc[0]}, {col[j]:g} in row {part['row'].iloc[j]})"
            )
        out.append(float(col[0]))
    return out


def train_stats(values: np.ndarray) -> tuple[list[float], list[float]]:
    """Per column (mean, spread) of one series' train part; a constant column keeps spread 1."""
    loc = values.mean(axis=0)
    spread = values.std(axis=0)
    spread = np.where(spread > 1e-12 * np.maximum(1.0, np.abs(loc)), spread, 1.0)
    return loc.tolist(), spread.tolist()


def standardise(raw: np.ndarray, series: SeriesTable) -> np.ndarray:
    """(n_points, K) float32: each series' covariates standardised with its train-part statistics."""
    out = np.empty(raw.shape, dtype=np.float32)
    lengths, offsets = series.lengths, series.offsets
    locs, spreads = series.stats.covariate_loc, series.stats.covariate_scale
    for first, stop in series_chunks(offsets):
        part = slice(offsets[first], offsets[stop - 1] + lengths[stop - 1])
        per_point = lengths[first:stop]
        loc, spread = np.repeat(locs[first:stop], per_point, axis=0), np.repeat(spreads[first:stop], per_point, axis=0)
        out[part] = (raw[part] - loc) / spread
    return out
