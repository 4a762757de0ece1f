"""Which seasonal cycles a data set has: candidates from the frequency, kept on the train and validation parts.

Sub-daily data often carry a daily and a weekly cycle (electricity, call centres, traffic);
daily data a weekly and a yearly one. One season per frequency misses the second cycle, and
assuming both for every data set adds a cycle where there is none. The rule, on the series'
values up to the end of their validation parts (never the test part):

1. candidates from the frequency, shortest first (`candidates`): the day and the week below
   daily data, the week and the year for daily data, the year for weekly to quarterly data;
2. a candidate needs two full cycles in the shortest train part (the input window, bounded by
   that part, must be able to hold one cycle of it and the model still have windows to learn from);
3. it is kept when its seasonal-naive forecast beats the best forecast the seasons kept before
   it can make (the naive forecast when none is kept yet), forecasting up to one cycle ahead of
   every origin in the validation part. Errors are summed over series in units of each series'
   mean absolute step on its train part, so no single series' scale dominates.

Rule 3 asks whether the cycle exists (a day ahead, is yesterday a better guess than now?) and
whether a longer cycle adds to the shorter ones (is last Monday a better guess for Monday than
yesterday, a Sunday?). It reads only values, so it costs the same for any model; on large data
it looks at up to `MAX_SERIES` series and `MAX_POINTS` validation points each, evenly spaced.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_SERIES = 256
MAX_POINTS = 256
DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class SeasonCheck:
    """One candidate's test: its error and the best error without it, in train-step units (lower is better)."""

    season: int
    kept: bool
    why: str
    error: float | None = None
    without: float | None = None

    def to_json(self) -> dict:
        return {"season": self.season, "kept": self.kept, "why": self.why, "error": self.error, "without": self.without}


def candidates(freq: str) -> tuple[int, ...]:
    """Candidate seasons (in steps) for data at pandas frequency `freq`, shortest first."""
    import pandas as pd

    from pipeline.library.calendar import fixed_step_ns

    offset = pd.tseries.frequencies.to_offset(freq)
    step = fixed_step_ns(offset)
    if step and step < DAY_NS:
        per_day, rest = divmod(DAY_NS, step)
        return (per_day, 7 * per_day) if rest == 0 and per_day > 1 else ()
    if step == DAY_NS:
        return (7, 365)
    base = offset.name.split("-")[0]
    n = max(1, int(getattr(offset, "n", 1)))
    per_year = {"W": 52, "MS": 12, "ME": 12, "M": 12, "QS": 4, "QE": 4, "Q": 4, "BMS": 12, "BME": 12}.get(base)
    if base == "B":
        return (5, 260) if n == 1 else ()
    if per_year and per_year % n == 0 and per_year // n > 1:
        return (per_year // n,)
    return ()


def detect(
    values: np.ndarray, offsets: np.ndarray, train_end: np.ndarray, val_end: np.ndarray, freq: str
) -> list[SeasonCheck]:
    """Test each candidate season of `freq` on the series `values[offsets[i] : offsets[i] + val_end[i]]`."""
    checks: list[SeasonCheck] = []
    shortest = int(train_end.min()) if len(train_end) else 0
    chosen = _sample(len(offsets), MAX_SERIES)
    series = [np.asarray(values[offsets[i] : offsets[i] + val_end[i]], dtype=np.float64) for i in chosen]
    train = [int(train_end[i]) for i in chosen]
    kept: list[int] = []
    for season in candidates(freq):
        if shortest < 2 * season:
            checks.append(SeasonCheck(season, False, f"the shortest train part ({shortest}) holds < 2 cycles"))
            continue
        error, without = _errors(series, train, season, kept)
        if error is None or without is None:
            checks.append(SeasonCheck(season, False, "no validation points to test it on"))
            continue
        keep = error < without
        why = "beats" if keep else "does not beat"
        checks.append(SeasonCheck(season, keep, f"{why} {_name(kept)} one cycle ahead", error, without))
        if keep:
            kept.append(season)
    return checks


def kept(checks: list[SeasonCheck]) -> tuple[int, ...]:
    return tuple(c.season for c in checks if c.kept)


def _name(kept: list[int]) -> str:
    return "naive" if not kept else "seasonal naive at " + " and ".join(map(str, kept))


def _errors(series: list[np.ndarray], train: list[int], season: int, kept: list[int]) -> tuple[float | None, ...]:
    """Summed scaled mean errors over series: seasonal naive at `season`, and the best forecast without it."""
    error = without = 0.0
    used = 0
    leads = np.arange(1, season + 1)  # the origin lies 1..season steps before the point
    for y, start in zip(series, train):
        points = np.arange(start, len(y))
        scale = np.nanmean(np.abs(np.diff(y[:start])))
        if len(points) == 0 or not np.isfinite(scale) or scale <= 0:
            continue
        points = points[_sample(len(points), MAX_POINTS)]
        origins = points[:, None] - leads[None, :]
        target = y[points][:, None]
        naive = np.nanmean(np.abs(target - y[origins]))
        own = _seasonal_errors(y, target, origins, leads, season)
        others = [naive, *(_seasonal_errors(y, target, origins, leads, c) for c in kept)]
        if not np.isfinite([own, *others]).all():
            continue
        error += own / scale
        without += min(others) / scale
        used += 1
    return (float(error), float(without)) if used else (None, None)


def _seasonal_errors(y: np.ndarray, target: np.ndarray, origins: np.ndarray, leads: np.ndarray, season: int) -> float:
    """Mean error of the better of two seasonal-naive forecasts from `origins`: the value a whole number of
    seasons back, and the same moved to the origin's level (the season's change added to the origin's value,
    so a trend over the past season does not count against the cycle)."""
    lags = season * np.ceil(leads / season).astype(np.int64)
    back = origins + leads[None, :] - lags[None, :]
    plain = np.nanmean(np.abs(target - y[back]))
    moved = np.nanmean(np.abs(target - (y[origins] + y[back] - y[origins - lags[None, :]])))
    return float(min(plain, moved))


def _sample(n: int, limit: int) -> np.ndarray:
    """Up to `limit` evenly spaced positions of range(n)."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))
