"""Raw tables to clean, regular series: the pandas path of ingest.

A table in long or wide format becomes one long frame (series, time, target, row), is sorted,
checked for duplicates, put on its regular grid and cleaned by `data.missing`; the result is a
`SeriesSet` holding every series back to back. Errors name the file, series, row and value.
Local typed parquet takes the streaming path instead (`pipeline.library.series_stream`), which
reuses these checks to word its errors the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.library import covariates, scaling
from pipeline.library.calendar import DAY_NS, fixed_step_ns
from pipeline.library.chunks import offsets_of
from pipeline.library.errors import DataError, listed, shown
from pipeline.library.history import (
    MISSING_ID,
    instants_in_utc,
    localised,
    numbers_as_times,
    numeric_dates,
    on_the_wall_clock,
    shown_time,
    within_its_span,
    zone_name,
)

if TYPE_CHECKING:
    from pipeline.library.sources import DataLayout

log = logging.getLogger("pipeline")


@dataclass
class SeriesSet:
    """Regular series back to back: series i is values[offsets[i] : offsets[i] + lengths[i]]."""

    ids: list[str]
    starts: list[pd.Timestamp]
    lengths: np.ndarray
    values: np.ndarray
    freq: str
    covariates: np.ndarray | None = None  # (n_points, K) time-varying covariates beside `values`
    static: np.ndarray | None = None  # (n_series, S) static covariates
    filled: np.ndarray | None = None  # (n_points,) bool: made by data.missing, not observed; None when none was
    zone: str | None = None  # the zone the timestamps were written in (they are held in UTC); None: none given
    wall_clock: bool = False  # held on the zone's wall clock, not in UTC: steps of a day or longer (`on_wall_clock`)
    local_times: bool = False  # the source's timestamps were naive, local times on the clock data.zone names
    date_order: str | None = None  # dates written in numbers only: day_first or month_first (`numeric_dates`)

    @property
    def offsets(self) -> np.ndarray:
        return offsets_of(self.lengths)


def columns_of(columns: list, data: DataLayout) -> tuple[str | None, str, list[str]]:
    """(id column, time column, target columns) checked against the columns a table has."""
    found = listed(columns)
    if data.source == "synthetic":
        return "series", "time", ["value"]
    if data.time_column not in columns:
        raise DataError(
            f"{data.source}: time column '{data.time_column}' (data.time_column) not found; columns: {found}"
        )
    if data.format == "wide":
        targets = [c for c in columns if c != data.time_column]
        if not targets:
            raise DataError(f"{data.source}: wide format needs at least one series column besides '{data.time_column}'")
        return None, data.time_column, [c for c in targets if c not in data.covariates]
    if data.target_column not in columns:
        raise DataError(
            f"{data.source}: target column '{data.target_column}' (data.target_column) not found; columns: {found}"
        )
    if data.id_column is not None and data.id_column not in columns:
        raise DataError(f"{data.source}: id column '{data.id_column}' (data.id_column) not found; columns: {found}")
    return data.id_column, data.time_column, [data.target_column]


def to_long(table: pd.DataFrame, data: DataLayout) -> pd.DataFrame:
    """Canonical long frame: series (str), time (datetime64), target (float64), row (1-based)."""
    id_col, time_col, targets = columns_of(list(table.columns), data)
    times = _parse_times(table[time_col], data.source)
    rows = np.arange(1, len(table) + 1)
    if data.format == "wide" and data.source != "synthetic":
        parts = []
        for col in targets:
            values = _numeric(table[col], col, data, series=str(col))
            inside = within_its_span(times.to_numpy(), values)
            part = {"series": str(col), "time": times[inside], "target": values[inside], "row": rows[inside]}
            parts.append(pd.DataFrame(part))
        return _with_covariates(pd.concat(parts, ignore_index=True), table, data)
    if id_col is not None and table[id_col].isna().any():  # grouping would silently drop these rows
        i = int(np.flatnonzero(table[id_col].isna().to_numpy())[0])
        raise DataError(
            f"{data.source}: row {i + 1}: missing series id in column '{id_col}' (data.id_column; {MISSING_ID})"
        )
    ids = table[id_col].astype(str) if id_col is not None else pd.Series("series", index=table.index)
    values = _numeric(table[targets[0]], targets[0], data, series=ids if id_col is not None else None)
    frame = pd.DataFrame({"series": ids.values, "time": times, "target": values, "row": rows})
    return _with_covariates(frame, table, data, ids if id_col is not None else None)


def _with_covariates(frame: pd.DataFrame, table: pd.DataFrame, data: DataLayout, ids=None) -> pd.DataFrame:
    """The long frame with a numeric column per covariate (wide format: shared by every series)."""
    names = [*data.covariates, *data.static_covariates]
    if not names:
        return frame
    missing = [n for n in names if n not in table.columns]
    if missing:
        kind = next(k for k in ("past", "future", "static") if missing[0] in getattr(data, f"{k}_covariates"))
        found = listed(table.columns)
        raise DataError(
            f"{data.source}: covariate column '{missing[0]}' (data.{kind}_covariates) not found; columns: {found}"
        )
    rows = frame["row"].to_numpy() - 1  # wide format: each series' rows of the table (its span)
    for name in names:
        frame[covariates.frame_column(name)] = _numeric(table[name], name, data, series=ids)[rows]
    return frame


ONE_ZONE = "give all of them a zone (or a UTC offset) or none"


def _zone_change(col: pd.Series) -> str:
    """The first rows with and without a zone, e.g. ` (row 1: UTC+00:00, row 7: no zone)` (error path only)."""
    first = None
    for i, text in enumerate(col.tolist()):
        try:
            offset = pd.Timestamp(text).utcoffset()
        except (ValueError, TypeError, OverflowError):
            continue
        zone = "no zone" if offset is None else f"UTC{'-' if offset.days < 0 else '+'}{_hhmm(abs(offset))}"
        if first is None:
            first = (i, zone)
        elif (zone == "no zone") != (first[1] == "no zone"):
            return f" (row {first[0] + 1}: {first[1]}, row {i + 1}: {zone})"
    return ""


def _hhmm(delta) -> str:
    minutes = int(delta.total_seconds()) // 60
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _parse_times(col: pd.Series, source: str) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(col):
        if col.isna().any():  # a null in a typed (parquet) timestamp column
            raise DataError(f"{source}: row {int(np.flatnonzero(col.isna().to_numpy())[0]) + 1}: missing timestamp")
        return col
    numbers_as_times(col, source)
    mixed = f"{source}: timestamps with and without a zone in the time column{_zone_change(col)}; {ONE_ZONE}"
    try:
        parsed = pd.to_datetime(col, errors="coerce", format="mixed")
    except (ValueError, TypeError) as exc:
        if "zone" not in str(exc).lower() and "offset" not in str(exc).lower():
            raise DataError(f"{source}: cannot parse the time column: {shown(exc, 200)}") from None
        parsed = instants_in_utc(col)  # different UTC offsets (pandas 3 refuses them): the instants they name
        if parsed is None:
            raise DataError(mixed) from None
    if parsed.dtype == object:  # pandas 2 keeps different offsets as objects
        parsed = instants_in_utc(col)
        if parsed is None:
            raise DataError(mixed)
    bad = parsed.isna() & col.notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{source}: row {i + 1}: cannot parse timestamp {shown(repr(col.iloc[i]))}")
    if col.isna().any():
        i = int(np.flatnonzero(col.isna().to_numpy())[0])
        raise DataError(f"{source}: row {i + 1}: missing timestamp")
    return parsed


def _numeric(col: pd.Series, name: str, data: DataLayout, series: pd.Series | str | None = None) -> np.ndarray:
    """The column as float64 (NaN where empty); a value that is not a number names its row, series and line."""
    if pd.api.types.is_bool_dtype(col):
        return col.astype(np.float64).to_numpy()
    values = pd.to_numeric(col, errors="coerce")
    bad = values.isna() & col.notna()
    if bad.any():
        text = col[bad].astype(str).str.strip().str.lower()
        real_bad = ~text.isin(["nan", "", "na", "null", "none", "inf", "-inf"])
        if real_bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[int(np.flatnonzero(real_bad.to_numpy())[0])])
            where = (
                [f"series '{shown(series if isinstance(series, str) else series.iloc[i])}'"]
                if series is not None
                else []
            )
            where += [f"line {i + 2} of the file"] if _one_text_file(data.source) else []
            also = f" ({', '.join(where)})" if where else ""
            raise DataError(
                f"{data.source}: row {i + 1}: non-numeric value {shown(repr(col.iloc[i]))} in column "
                f"'{shown(name)}'{also}"
            )
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def _one_text_file(source: str) -> bool:
    """A single csv/tsv file: its line numbers are the data rows plus the header (error messages only)."""
    from pipeline.library.sources import resolve_files

    try:
        files = resolve_files(source)
    except DataError:
        return False
    return files is not None and len(files) == 1 and files[0].suffix.lower() in (".csv", ".tsv")


def infer_freq(frame: pd.DataFrame, given: str | None, source: str) -> pd.DateOffset:
    """The series' common step: `data.freq` when given, else inferred from the longest series."""
    if given is not None:
        return parse_freq(given)
    sizes = frame.groupby("series", sort=False, observed=True).size()
    return freq_of(frame.loc[frame["series"] == sizes.idxmax(), "time"], source)


def parse_freq(given: str) -> pd.DateOffset:
    try:
        return pd.tseries.frequencies.to_offset(given)
    except ValueError:
        raise DataError(f"data.freq: '{given}' is not a pandas frequency alias (e.g. 30min, h, D, MS)") from None


def freq_of(longest: pd.Series, source: str) -> pd.DateOffset:
    """The step of one series' sorted timestamps: pandas' alias, else the most common difference."""
    if len(longest) < 3:
        raise DataError(f"{source}: cannot infer the frequency from {len(longest)} timestamps; set data.freq")
    alias = _pandas_infer_freq(pd.DatetimeIndex(longest.iloc[: min(len(longest), 10_000)]))
    if alias is None:  # gaps or irregular spacing: fall back to the most common step
        diffs = pd.Series(np.diff(longest.to_numpy())).mode()
        step = pd.Timedelta(diffs.iloc[0])
        if step <= pd.Timedelta(0):
            raise DataError(f"{source}: cannot infer the frequency; set data.freq")
        return _coarsest_step(pd.DatetimeIndex(longest.to_numpy()), pd.tseries.frequencies.to_offset(step))
    return _first_quarter_anchor(pd.tseries.frequencies.to_offset(alias))


def _coarsest_step(times: pd.DatetimeIndex, common: pd.DateOffset) -> pd.DateOffset:
    """The step, of the most common difference `common` and the calendar steps, whose grid from the first timestamp
    holds every timestamp of a series with gaps in the fewest points (`common` when none does: the grid check names
    the timestamp off it). The most common difference of monthly data is 31 days, on whose grid the next month is
    not; that of business days is 1 day, whose grid would fill every weekend under data.missing: interpolate."""
    first, last = times[0], times[-1]
    if not (times == times.normalize()).all():  # calendar steps fall on midnights
        return common
    candidates = [
        pd.offsets.BusinessDay(),
        pd.offsets.MonthBegin(),
        pd.offsets.MonthEnd(),
        pd.offsets.QuarterBegin(startingMonth=first.month),
        pd.offsets.QuarterEnd(startingMonth=first.month),
        pd.offsets.YearBegin(month=first.month),
        pd.offsets.YearEnd(month=first.month),
    ]
    best = (_grid_points(times, common), common)
    for step in candidates:
        grid = pd.date_range(first, last, freq=step)
        if len(grid) and grid[0] == first and len(grid) < best[0] and times.isin(grid).all():
            best = (len(grid), step)
    return _first_quarter_anchor(best[1])


def _grid_points(times: pd.DatetimeIndex, step: pd.DateOffset) -> int:
    """Points of the grid of a fixed `step` from the first timestamp to the last, or a number larger than any
    calendar grid's where some timestamp is off it."""
    step_ns = fixed_step_ns(step)
    ns = times.as_unit("ns").asi8  # pandas 3 keeps the unit of the source (seconds, microseconds)
    offsets = ns - ns[0]
    if step_ns is None or (offsets % step_ns != 0).any():
        return np.iinfo(np.int64).max
    return int(offsets[-1] // step_ns) + 1


def _pandas_infer_freq(index: pd.DatetimeIndex) -> str | pd.DateOffset | None:
    """pandas' inferred step: an offset where pandas (3.1 on) can return one, which pandas 4 will by default
    (asked for, not left to a deprecation warning per call); an alias string on older pandas."""
    try:
        with pd.option_context("future.infer_freq_returns_offset", True):
            return pd.infer_freq(index)
    except pd.errors.OptionError:
        return pd.infer_freq(index)


def _first_quarter_anchor(step: pd.DateOffset) -> pd.DateOffset:
    """A quarter-start step anchored in the first quarter's month, as pandas 3 infers it (QS-JAN); pandas 2
    infers the same dates as QS-OCT, and the record and its fingerprint name the step."""
    if step.n != 1 or not isinstance(step, (pd.offsets.QuarterBegin, pd.offsets.BQuarterBegin)):
        return step
    return type(step)(startingMonth=(step.startingMonth - 1) % 3 + 1)


def prepare_series(table: pd.DataFrame, data: DataLayout) -> SeriesSet:
    """Sort, check duplicates and spacing, apply the missing-value policy; one clean regular set."""
    time_col = columns_of(list(table.columns), data)[1]
    written, date_order = numeric_dates(table[time_col], data.source, data.date_order)
    if date_order is not None:  # 02/01/2024 read as the column shows it, not row by row
        table = table.assign(**{time_col: written})
        log.info("ingest: dates written in numbers only read %s", date_order.replace("_", " "))
    frame = to_long(table, data)
    if frame.empty:
        raise DataError(f"{data.source}: no rows")
    written = zone_name(frame["time"].dt.tz)
    zone = data_zone(written, data)  # forecasts are written back in it
    local_times = written is None and zone is not None  # naive local times on the clock data.zone names
    if local_times:
        frame["time"] = _localised(frame, zone, data.source)
    aware = frame["time"]
    if zone is not None:
        frame["time"] = aware.dt.tz_convert("UTC").dt.tz_localize(None)
    order = np.lexsort((frame["time"].to_numpy(), frame["series"].to_numpy()))
    unsorted = False
    if not np.array_equal(order, np.arange(len(frame))):
        ordered_before = frame.groupby("series", sort=False, observed=True)["time"].apply(
            lambda t: t.is_monotonic_increasing
        )
        unsorted = not ordered_before.all()
        frame = frame.iloc[order].reset_index(drop=True)
    check_duplicates(frame, data.source, zone)
    step = infer_freq(frame, data.freq, data.source)
    wall_clock = on_wall_clock(zone, step)
    if wall_clock:  # the same rows on the zone's clock: the order of instants is theirs, bar a repeated hour
        frame["time"] = on_the_wall_clock(aware.iloc[order], zone)
        check_duplicates(frame, data.source)
        step = infer_freq(frame, data.freq, data.source)
    shown_in = None if wall_clock else zone  # errors name times as the data wrote them (`shown_time`)

    ids, starts, chunks, covs, statics, filled = [], [], [], [], [], []
    dropped = []
    for sid, part in frame.groupby("series", sort=True, observed=True):
        values, made = regularise(str(sid), part, step, data, shown_in) or (None, None)
        if values is not None and data.covariates:
            grid = pd.date_range(part["time"].iloc[0], part["time"].iloc[-1], freq=step)
            covs.append(covariates.on_grid(str(sid), part, data.covariates, grid, data, shown_in))
            values = None if covs[-1] is None else values
        if values is None:
            dropped.append(str(sid))
            continue
        if data.static_covariates:
            statics.append(covariates.static_row(str(sid), part, data.static_covariates, data.source))
        ids.append(str(sid))
        starts.append(part["time"].iloc[0])
        chunks.append(values)
        filled.append(made if made is not None else np.zeros(len(values), dtype=bool))
    accepted(data, ids, unsorted, dropped)
    lengths = np.array([len(c) for c in chunks], dtype=np.int64)
    cov = np.concatenate([c for c in covs if c is not None]) if data.covariates else None
    static = np.array(statics, dtype=np.float64) if data.static_covariates else None
    made = np.concatenate(filled)
    made = made if made.any() else None
    values = np.concatenate(chunks)
    return SeriesSet(
        ids, starts, lengths, values, step.freqstr, cov, static, made, zone, wall_clock, local_times, date_order
    )


def data_zone(written: str | None, data: DataLayout) -> str | None:
    """The zone the data is read on: `data.zone` where one is named, else the one the timestamps were written in
    (naive timestamps with a zone named are local times on its clock: `_localised`)."""
    return written if data.zone == "auto" else data.zone


def _localised(frame: pd.DataFrame, zone: str, source: str) -> pd.Series:
    """The long frame's naive times as instants on `zone`'s clock; where summer time repeats an hour, each series
    is read in the order its rows were written (`history.localised`)."""
    try:  # most data: no repeated or skipped hour, and then the order of rows does not matter
        return frame["time"].dt.tz_localize(zone, ambiguous="raise", nonexistent="raise")
    except Exception:  # pytz's and pandas' own errors, by pandas version
        pass
    parts = [
        localised(part["time"], zone, f"{source}: series '{shown(sid)}'", part["row"].to_numpy())
        for sid, part in frame.groupby("series", sort=False, observed=True)
    ]
    return pd.concat(parts).reindex(frame.index)


def on_wall_clock(zone: str | None, step: pd.DateOffset) -> bool:
    """Whether series of this step are held on the zone's wall clock rather than in UTC.

    A step of a day or longer counts calendar days: daily data at local midnight in Berlin is 23:00 UTC in winter
    and 22:00 in summer, on no UTC grid, yet one day apart on Berlin's clock. A shorter step is a fixed duration,
    which the instants (UTC) keep across a change of the clock. UTC itself is the same either way and stays as it was.
    """
    if zone is None or zone == "UTC":
        return False
    step_ns = fixed_step_ns(step)
    return step_ns is None or step_ns >= DAY_NS


def check_duplicates(frame: pd.DataFrame, source: str, zone: str | None = None) -> None:
    """The first repeated (series, time) of a frame sorted by series then time (stable: file order); `zone`: the
    times are held in UTC and named in that zone (`shown_time`)."""
    dup = frame.duplicated(["series", "time"], keep="first")
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        r = frame.iloc[i]
        raise DataError(
            f"{source}: series '{shown(r.series)}': duplicate timestamp {shown_time(r.time, zone)} (row {r.row})"
        )


def accepted(data: DataLayout, ids: list[str], unsorted: bool, dropped: list[str]) -> None:
    """What is said once the data is accepted, so that a rejected file gets its one error line only."""
    if not ids:
        raise DataError(f"{data.source}: no series left after data.missing=drop")
    if unsorted:
        log.info("ingest: input was not sorted by time; sorted it")
    if dropped:
        log.warning("ingest: dropped %d series by data.missing=drop: %s", len(dropped), ", ".join(dropped[:10]))


MAX_GRID = 1_000_000
"""A series' regular grid may be longer than its rows by 10x, or up to this many points."""


def _check_span(
    sid: str, part: pd.DataFrame, times: pd.DatetimeIndex, step: pd.DateOffset, source: str, zone: str | None
) -> None:
    """Refuse a grid far longer than the series (one wrong year would allocate gigabytes)."""
    if isinstance(step, pd.offsets.Tick):  # fixed steps: count without building the grid, in Python integers
        unit_ns = pd.Timedelta(1, unit=times.unit).value  # pandas 3 parses text to seconds or microseconds
        span_ns = (int(times.asi8[-1]) - int(times.asi8[0])) * unit_ns  # 1677 to 2262 is more than int64 holds
        points = span_ns // pd.Timedelta(step).value + 1
    else:  # calendar steps (days and longer, business days): the grid stays small
        points = len(pd.date_range(times[0], times[-1], freq=step))
    if points <= max(MAX_GRID, 10 * len(times)):
        return
    j = int(np.argmax(np.diff(times.asi8.astype(np.float64)))) if len(times) > 1 else 0
    rows = part["row"].to_numpy()
    raise DataError(
        f"{source}: series '{shown(sid)}': its timestamps span {points} steps of {step.freqstr} for {len(times)} rows "
        f"(largest gap from {shown_time(times[j], zone)} (row {rows[j]}) to {shown_time(times[j + 1], zone)} "
        f"(row {rows[j + 1]})); "
        f"check those timestamps or data.freq"
    )


def _coarser_step(times: pd.DatetimeIndex, step: pd.DateOffset) -> pd.Timedelta | None:
    """The series' most common spacing where it is a multiple of a fixed `step` (a daily series in an hourly
    file), else None: gaps here and there leave the most common spacing at the step itself."""
    if not isinstance(step, pd.offsets.Tick) or len(times) < 3:
        return None
    common = pd.Timedelta(times.to_series().diff().mode().iloc[0])
    return common if common >= 2 * pd.Timedelta(step) and common % pd.Timedelta(step) == pd.Timedelta(0) else None


def _span(delta: pd.Timedelta) -> str:
    """`delta` in the largest whole unit: 1 day, 6 hours, 15 minutes."""
    for unit, name in (("1D", "day"), ("1h", "hour"), ("1min", "minute"), ("1s", "second")):
        count, rest = divmod(delta, pd.Timedelta(unit))
        if count and not rest:
            return f"{count} {name}{'s' if count > 1 else ''}"
    return str(delta)


def _an_hour_off(stamp: pd.Timestamp, grid: pd.DatetimeIndex) -> bool:
    """Whether `stamp` lies an hour from a point of a grid of days or longer: local midnights in UTC across a
    daylight-saving change, not data of another frequency."""
    if len(grid) < 2 or grid[1] - grid[0] < pd.Timedelta("1D"):
        return False
    return bool(np.abs(grid - stamp).min() == pd.Timedelta("1h"))


def regularise(
    sid: str, part: pd.DataFrame, step: pd.DateOffset, data: DataLayout, zone: str | None = None
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(the series on its full regular grid, with gaps and NaN/inf handled by `data.missing`; where it was filled,
    or None where nothing was), or None for a series `data.missing: drop` leaves out. `zone`: the times are held in
    UTC and errors name them in that zone (`shown_time`)."""
    times = pd.DatetimeIndex(part["time"].to_numpy())
    _check_span(sid, part, times, step, data.source, zone)
    grid = pd.date_range(times[0], times[-1], freq=step).as_unit(times.unit)  # pandas 2: ns whatever the times
    target = part["target"].to_numpy(dtype=np.float64).copy()
    if len(grid) != len(times) or not grid.equals(times):
        on_grid = times.isin(grid)
        if not on_grid.all():
            j = int(np.flatnonzero(~on_grid)[0])
            when = shown_time(times[j], zone)
            at = f"{data.source}: series '{shown(sid)}': timestamp {when} (row {part['row'].iloc[j]}) is off the"
            if zone == "UTC" and _an_hour_off(times[j], grid):  # read in UTC: local midnights across a change
                raise DataError(
                    f"{at} {step.freqstr} grid by an hour: a daylight-saving change moves local midnights by an hour "
                    f"in UTC, the clock these timestamps are read on; set data.zone to theirs (e.g. Europe/Berlin) to "
                    f"count days on its clock, or write the dates without a zone"
                )
            raise DataError(
                f"{at} {step.freqstr} grid (irregular spacing or a different frequency); set data.freq or fix the data"
            )
        missing = grid.difference(times)
        if data.missing == "error":
            coarser = _coarser_step(times, step)
            if coarser is not None:  # every point a few steps apart: another frequency, not gaps to fill
                origin = "data.freq" if data.freq else "inferred from the longest series"
                raise DataError(
                    f"{data.source}: series '{shown(sid)}': its timestamps are mostly {_span(coarser)} apart, not "
                    f"{_span(pd.Timedelta(step))} ({origin}), so {len(missing)} would be missing; keep one frequency "
                    f"per source or set data.freq"
                )
            first = shown_time(missing[0], zone)
            raise DataError(
                f"{data.source}: series '{shown(sid)}': {len(missing)} missing timestamp(s), first {first}; "
                f"set data.missing to interpolate, ffill or drop"
            )
        if data.missing == "drop":
            return None
        target = pd.Series(target, index=times).reindex(grid).to_numpy()
    bad = ~np.isfinite(target)
    if bad.any():
        if data.missing == "error":
            j = int(np.flatnonzero(bad)[0])
            row = part["row"].iloc[j] if j < len(part) and len(grid) == len(times) else "?"
            when = shown_time(grid[j], zone)
            raise DataError(
                f"{data.source}: series '{shown(sid)}': missing or non-finite target at {when} (row {row}); "
                f"set data.missing to interpolate, ffill or drop"
            )
        if data.missing == "drop":
            return None
        target = fill_missing(target, bad, sid, data)
    j = scaling.first_outside_domain(target, data.transform)
    if j is not None:
        row = part["row"].iloc[times.get_loc(grid[j])] if grid[j] in times else "?"
        when = shown_time(grid[j], zone)
        raise DataError(
            f"{data.source}: series '{shown(sid)}': value {target[j]:.6g} at {when} (row {row}) is negative; "
            f"data.transform: log1p needs values >= 0 (use data.transform: none)"
        )
    huge = np.abs(target) > scaling.FLOAT32_MAX
    if huge.any():  # the buffer is float32: it would hold inf
        j = int(np.flatnonzero(huge)[0])
        what = scaling.too_large_for_float32("value", target[j], shown_time(grid[j], zone))
        raise DataError(f"{data.source}: series '{shown(sid)}': {what}")
    return target, (bad if bad.any() else None)


def fill_missing(target: np.ndarray, bad: np.ndarray, sid: str, data: DataLayout) -> np.ndarray:
    """`data.missing` interpolate or ffill over the positions `bad` (float64 in, float64 out)."""
    filled = pd.Series(np.where(bad, np.nan, target))
    filled = filled.interpolate(limit_direction="both") if data.missing == "interpolate" else filled.ffill().bfill()
    if filled.isna().any():
        raise DataError(f"{data.source}: series '{shown(sid)}': no finite target value at all")
    return filled.to_numpy()
