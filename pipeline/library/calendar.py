"""Calendar features from the timestamps alone: time of day, day of week, time of year.

They are known for the future as well as the past, so the model sees them over the lookback
(as input channels beside the target) and over the horizon (the head reads them). Nothing is
stored: every step's position in a cycle is `phase0 + position * rate` (mod 1), with `phase0`
from each series' first timestamp and `rate` from the frequency, then encoded as (sin, cos)
so that 23:30 sits next to 00:00 and December next to January. The same function serves
training batches (vectorised over positions, on the training device) and `predict` (from the
history's last timestamps), so they cannot disagree.

The cycles follow the wall clock of the data's zone (`zone`; ingest holds every timestamp in
UTC). Where that zone keeps summer time, the clock jumps an hour twice a year while the steps
do not, so sub-daily data add the offset's change since each series' start
(`OffsetChanges`): demand that peaks at 08:00 local time keeps one phase all year.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.library.errors import ConfigError

if TYPE_CHECKING:  # torch only where batches are built: ingest and window never import it
    import torch

FEATURES = ("day", "week", "year")  # time of day, day of week, time of year
DAY_NS = 86_400 * 10**9
WEEK_NS = 7 * DAY_NS
YEAR_NS = round(365.2425 * DAY_NS)


@dataclass(frozen=True)
class Calendar:
    """Which cycles to encode for data at `freq` (an empty tuple: none)."""

    features: tuple[str, ...]
    freq: str
    zone: str | None = None  # the wall clock the cycles follow (None: UTC, where zoned timestamps are held)

    @property
    def size(self) -> int:
        """Input channels: a sine and a cosine per feature."""
        return 2 * len(self.features)

    def phases(self, starts: list) -> tuple[np.ndarray, np.ndarray]:
        """(phase0 (n_series, F), rate (F,)) in cycles, float64, for series starting at `starts`."""
        import pandas as pd

        offset = pd.tseries.frequencies.to_offset(self.freq)
        step_ns = _fixed_ns(offset)
        phase0 = np.zeros((len(starts), len(self.features)))
        rate = np.zeros(len(self.features))
        stamps = pd.DatetimeIndex(starts).as_unit("ns")  # pandas 3 may pick seconds
        if stamps.tz is not None:
            stamps = stamps.tz_localize(None)  # local wall-clock time is what the cycles follow
        elif self.zone is not None:  # UTC instants, read on the zone's wall clock
            stamps = stamps.tz_localize("UTC").tz_convert(self.zone).tz_localize(None)
        ns = stamps.asi8.astype(np.int64)
        since_midnight = np.mod(ns, DAY_NS) / DAY_NS  # wall-clock days start at multiples of a day (no overflow
        # at the ends of the datetime64 range, where normalize() fails)
        for k, name in enumerate(self.features):
            if name == "day":
                phase0[:, k], rate[k] = since_midnight, step_ns / DAY_NS
            elif name == "week" and offset.name == "B":
                phase0[:, k], rate[k] = stamps.dayofweek / 5, offset.n / 5
            elif name == "week":
                phase0[:, k], rate[k] = (stamps.dayofweek + since_midnight) / 7, step_ns / WEEK_NS
            elif step_ns:  # year, fixed-duration steps
                phase0[:, k], rate[k] = (stamps.dayofyear - 1 + since_midnight) / 365.2425, step_ns / YEAR_NS
            elif offset.name == "B":  # year, business days: about 261 a year
                phase0[:, k], rate[k] = (stamps.dayofyear - 1) / 365.2425, offset.n / 260.89
            else:  # year, month-based steps (monthly, quarterly, semi-monthly)
                months = _months_per_step(offset)
                phase0[:, k], rate[k] = (stamps.month - 1 + (stamps.day - 1) / 31) / 12, months / 12
        return phase0, rate

    def offset_changes(self, starts: list, steps: int) -> OffsetChanges | None:
        """The zone's offset changes over `steps` steps from each of `starts` (naive UTC), for sub-daily data
        in a zone with summer time; None where the wall clock keeps one offset there (the cycles are linear)."""
        import pandas as pd

        step_ns = fixed_step_ns(pd.tseries.frequencies.to_offset(self.freq)) or 0
        if self.zone is None or not self.features or not 0 < step_ns < DAY_NS or not len(starts):
            return None
        if isinstance(pd.Timestamp(0, tz=self.zone).tz, datetime.timezone):  # a fixed offset: nothing to look up
            return None
        first = pd.DatetimeIndex(starts).as_unit("ns").asi8.astype(np.int64)
        bounds, offsets = _changes(self.zone, int(first.min()), int(first.max()) + steps * step_ns)
        if not len(bounds):
            return None
        cycle = {"day": DAY_NS, "week": WEEK_NS, "year": YEAR_NS}
        per_ns = np.array([1.0 / cycle[name] for name in self.features])
        at_start = offsets[np.searchsorted(bounds, first, side="right")]
        return OffsetChanges(first, step_ns, bounds, offsets, per_ns, at_start)


@dataclass(frozen=True)
class OffsetChanges:
    """Where a zone's UTC offset changes, as cycle shifts: the wall clock's jumps that steps of UTC miss.

    Numpy arrays, or torch tensors after `to` (the training buffer keeps them on its device).
    """

    starts: np.ndarray  # (S,) int64: each series' first instant, ns since 1970 UTC
    step_ns: int
    bounds: np.ndarray  # (K,) int64: the instants at which the offset changes, sorted
    offsets: np.ndarray  # (K + 1,) int64 ns: the offset before the first change, then after each
    per_ns: np.ndarray  # (F,) float64: cycles of each feature per nanosecond
    at_start: np.ndarray  # (S,) int64 ns: each series' offset at its start, which its phase0 holds already

    def to(self, device: torch.device | str = "cpu") -> OffsetChanges:
        import torch

        arrays = (self.starts, self.bounds, self.offsets, self.per_ns, self.at_start)
        starts, bounds, offsets, per_ns, at_start = (torch.as_tensor(a).to(device) for a in arrays)
        return OffsetChanges(starts, self.step_ns, bounds, offsets, per_ns, at_start)

    def cycles(self, series: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B, T, F) float64: how far each cycle's wall clock at `positions` (B, T) of `series` (B,) has moved
        from where steps of UTC put it, by the offset changes since the series' start."""
        import torch

        instants = self.starts[series][:, None] + positions * self.step_ns
        since = self.offsets[torch.searchsorted(self.bounds, instants, right=True)] - self.at_start[series][:, None]
        return since.to(torch.float64)[..., None] * self.per_ns


def _changes(zone: str, first_ns: int, last_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """(bounds, offsets) of `zone` between two instants: each change's first second, and the offsets around them.

    The zone is read on an hourly grid, then each hour with a change second by second: no private
    tz-database API, and exact for every change at a whole second (all of them).
    """
    hour, second = 3_600 * 10**9, 10**9
    lowest, highest = np.iinfo(np.int64).min + 2 * DAY_NS, np.iinfo(np.int64).max - 2 * DAY_NS  # local time fits too
    grid = np.arange(max(first_ns - DAY_NS, lowest), min(last_ns, highest - DAY_NS) + DAY_NS, hour, dtype=np.int64)
    offsets = _offsets(zone, grid)
    bounds, after = [], [offsets[0]]
    for k in np.flatnonzero(np.diff(offsets)):
        seconds = grid[k] + second * np.arange(1, 3_601, dtype=np.int64)
        within = _offsets(zone, seconds)
        for j in np.flatnonzero(np.diff(np.concatenate([[offsets[k]], within]))):
            bounds.append(seconds[j])
            after.append(within[j])
    return np.array(bounds, dtype=np.int64), np.array(after, dtype=np.int64)


def _offsets(zone: str, instants_ns: np.ndarray) -> np.ndarray:
    """The zone's UTC offset (ns) at each instant."""
    import pandas as pd

    utc = pd.DatetimeIndex(instants_ns.astype("datetime64[ns]"))
    return (utc.tz_localize("UTC").tz_convert(zone).tz_localize(None).asi8 - utc.asi8).astype(np.int64)


def encode(
    phase0: torch.Tensor, rate: torch.Tensor, positions: torch.Tensor, shift: torch.Tensor | None = None
) -> torch.Tensor:
    """(sin, cos) of each cycle at `positions` (B, T) of series with start phases `phase0` (B, F).

    `shift` (B, T, F): cycles the wall clock moved beyond the steps (`OffsetChanges.cycles`).
    Computed in float64 (positions reach 10^8 on big data) and returned as float32 (B, T, 2F).
    """
    import torch

    cycles = phase0[:, None, :] + positions[..., None].to(torch.float64) * rate
    if shift is not None:
        cycles = cycles + shift
    angle = (2 * math.pi) * torch.remainder(cycles, 1.0)
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1).to(torch.float32)


def auto_features(freq: str) -> tuple[str, ...]:
    """Cycles the seasonal base does not already carry: day and week below daily, week and year daily.

    Weekly to quarterly data get none: their season is the year, which the residual head's
    seasonal base already follows. Measured with bench/accuracy.py (2026-11-27): the day and
    week features took vic_elec's test MASE from 0.73 to 0.57; the year feature on the monthly
    and quarterly series was neutral (better on 4, worse on 2, equal on 3), so it is left to
    an explicit `data.calendar: [year]`.
    """
    import pandas as pd

    offset = pd.tseries.frequencies.to_offset(freq)
    step_ns = _fixed_ns(offset)
    if 0 < step_ns < DAY_NS:
        return ("day", "week")
    if step_ns == DAY_NS or offset.name == "B":
        return ("week", "year")
    return ()


def features_of(seasons: list[int] | tuple[int, ...], freq: str) -> list[str]:
    """The calendar features of the seasons kept for data at `freq` (`model.seasons: auto`): a daily season
    gives `day`, a weekly one `week`, a yearly one `year`, for daily and finer data; none from weekly data on
    (as `auto_features`: the base's own season is the year there)."""
    import pandas as pd

    offset = pd.tseries.frequencies.to_offset(freq)
    step_ns = fixed_step_ns(offset) or 0
    if offset.name == "B":
        cycles = {5: "week", 260: "year"}
        return [cycles[p] for p in seasons if p in cycles]
    if not 0 < step_ns <= DAY_NS:
        return []
    named = {DAY_NS: "day", WEEK_NS: "week", 365 * DAY_NS: "year"}
    return [named[p * step_ns] for p in seasons if p * step_ns in named]


def resolve(setting: str | list[str], freq: str) -> tuple[str, ...]:
    """`data.calendar` (auto, none or a list of features) for data at `freq`, checked."""
    if setting == "auto":
        return auto_features(freq)
    if setting == "none":
        return ()
    import pandas as pd

    offset = pd.tseries.frequencies.to_offset(freq)
    step_ns = _fixed_ns(offset)
    for name in setting:  # names are checked when the config loads (DataConfig)
        too_coarse = {"day": not 0 < step_ns < DAY_NS, "week": not (0 < step_ns < WEEK_NS or offset.name == "B")}
        if too_coarse.get(name, False):
            raise ConfigError(f"data.calendar: '{name}' needs steps shorter than a {name}; the data's step is {freq}")
        if name == "year" and not step_ns and offset.name != "B" and not _months_per_step(offset):
            raise ConfigError(f"data.calendar: 'year' is not defined for steps of {freq}")
    if len(set(setting)) != len(setting):
        raise ConfigError(f"data.calendar: a feature is listed twice in {list(setting)}")
    return tuple(setting)


def fixed_step_ns(step) -> int | None:
    """The step in nanoseconds when it is a fixed duration (seconds to days), else None.

    Shared by ingest's streamed reader, the auto settings and predict: one answer to "is this
    frequency plain arithmetic on nanoseconds" everywhere.
    """
    import pandas as pd

    if isinstance(step, pd.offsets.Tick):
        return int(pd.Timedelta(step).value)
    if type(step) is pd.offsets.Day:  # not a Tick in pandas 3; 24 h on naive (UTC) timestamps
        return int(step.n) * DAY_NS
    return None


def _fixed_ns(offset) -> int:
    """Nanoseconds per step for the cycles' arithmetic: fixed steps, and weeks (anchored or not), else 0."""
    if offset.name.split("-")[0] == "W":
        return offset.n * WEEK_NS
    return fixed_step_ns(offset) or 0


def _months_per_step(offset) -> int:
    """Months per step of a month-based offset (0 for anything else)."""
    base = offset.name.split("-")[0].removeprefix("B")
    if base.startswith("Q"):
        return 3 * offset.n
    if base in ("MS", "ME", "M"):
        return offset.n
    return 0
