"""Ingest of typed parquet in record batches: memory is the output buffer, not the rows.

For local parquet files in long format whose time column is an Arrow timestamp, target
numeric and series id a string or integer (or absent). Two passes over the batches:

1. per series (ids dictionary-encoded batch by batch): row count, first and last timestamp;
2. each row's value goes straight to its place in the preallocated float32 output,
   `offset[series] + (time - start[series]) / step`; a bit per slot finds duplicates and gaps.

Nothing proportional to rows x Python objects is ever held, and unsorted input needs no sort.
A series found at fault is read once more on its own and checked by the pandas path's code,
so that the error line is the one `prepare_series` gives. Steps that are not fixed durations
(months, weeks, business days) go to the pandas path (`stream_series` returns None).

The result equals `prepare_series` on the same data, byte for byte (values.arrow and
meta.json), when every target value is exact in float32 (float32 columns, integers up to
2**24). Otherwise, and for the points `data.missing=interpolate` creates, the scaling
statistics here come from the stored float32 values where the pandas path uses float64
ones: they agree to about 1e-7 (values.arrow is the same either way for float32 input).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.library.calendar import fixed_step_ns
from pipeline.library.chunks import offsets_of
from pipeline.library.errors import DataError
from pipeline.library.history import MISSING_ID, skipped_midnights, zone_name
from pipeline.library.series import (
    MAX_GRID,
    SeriesSet,
    accepted,
    check_duplicates,
    columns_of,
    data_zone,
    fill_missing,
    freq_of,
    on_wall_clock,
    parse_freq,
    regularise,
)
from pipeline.library.sources import DataLayout, ParquetBatches

FLOAT32_MAX = float(np.finfo(np.float32).max)
SINGLE = "series"  # the id of the one series when there is no id column


def streamable(batches: ParquetBatches, data: DataLayout) -> bool:
    """Long format; in every file a timestamp time column, a numeric target, a string/integer id (or none)."""
    if data.format != "long" or data.covariates or data.static_covariates:  # covariates: through pandas
        return False
    id_col, time_col, targets = columns_of(batches.schemas[0].names, data)  # fails here on a missing column
    return all(_typed(schema, id_col, time_col, targets[0]) for schema in batches.schemas)


def _typed(schema: pa.Schema, id_col: str | None, time_col: str, target_col: str) -> bool:
    if any(c not in schema.names for c in (id_col, time_col, target_col) if c is not None):
        return False  # another file's columns differ: the pandas path reports it
    if not pa.types.is_timestamp(schema.field(time_col).type):
        return False
    target = schema.field(target_col).type
    if not (pa.types.is_integer(target) or pa.types.is_floating(target) or pa.types.is_boolean(target)):
        return False
    if id_col is None:
        return True
    kind = schema.field(id_col).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)


@dataclass
class Batch:
    """One record batch as arrays: series code, time (int64 ns, UTC), value (float64), first row number."""

    codes: np.ndarray
    times: np.ndarray
    values: np.ndarray
    first_row: int


@dataclass
class Reader:
    """The batches of a source as arrays, with the series ids dictionary-encoded into `ids`."""

    batches: ParquetBatches
    data: DataLayout
    ids: dict[str, int] = field(default_factory=dict)
    known: int | None = None  # after the first pass: how many ids there are
    zone: str | None = None  # the time column's zone (Arrow's text for it), None for naive timestamps
    clock: str | None = None  # read the times on this zone's wall clock (days in a zone: `on_wall_clock`), not UTC

    def __post_init__(self) -> None:
        self.id_col, self.time_col, targets = columns_of(self.batches.schemas[0].names, self.data)
        self.target_col = targets[0]

    def __iter__(self):
        columns = [c for c in (self.id_col, self.time_col, self.target_col) if c is not None]
        row = 1
        for batch in self.batches.iter(columns):
            times = self._times(batch.column(self.time_col), row)
            codes = self._codes(batch, row)
            values = batch.column(self.target_col).cast(pa.float64()).to_numpy(zero_copy_only=False)  # null: NaN
            yield Batch(codes, times, values, row)
            row += batch.num_rows

    def _times(self, col: pa.Array, first_row: int) -> np.ndarray:
        if col.null_count:
            i = int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
            raise DataError(f"{self.data.source}: row {first_row + i}: missing timestamp")
        self.zone = col.type.tz
        try:  # aware timestamps are stored as UTC instants: the values ingest keeps (naive UTC)
            col = col.cast(pa.timestamp("ns", col.type.tz))
        except pa.ArrowInvalid:
            raise DataError(
                f"{self.data.source}: timestamps outside the years 1677-2262 (the range of nanosecond times)"
            ) from None
        if self.clock is not None and col.type.tz is not None:  # the same instants, as that clock shows them
            instants = col.cast(pa.int64()).to_numpy()
            local = pc.local_timestamp(col.cast(pa.timestamp("ns", self.clock))).cast(pa.int64()).to_numpy()
            return skipped_midnights(local, instants, self.clock)
        return col.cast(pa.int64()).to_numpy()

    def _codes(self, batch: pa.RecordBatch, first_row: int) -> np.ndarray:
        if self.id_col is None:
            self.ids.setdefault(SINGLE, 0)
            return np.zeros(batch.num_rows, dtype=np.int64)
        col = batch.column(self.id_col)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        encoded = pc.dictionary_encode(col)
        names = encoded.dictionary.to_pandas()  # the batch's distinct ids only
        bad = names.isna().to_numpy()
        indices = encoded.indices.to_numpy(zero_copy_only=False)  # nulls come out as NaN
        missing = np.isnan(indices) if indices.dtype.kind == "f" else np.zeros(len(indices), dtype=bool)
        if missing.any() or bad.any():
            safe = np.where(missing, 0, indices).astype(np.int64)
            i = int(np.argmax(missing | (bad[safe] & ~missing)))
            raise DataError(
                f"{self.data.source}: row {first_row + i}: missing series id in column '{self.id_col}' "
                f"(data.id_column; {MISSING_ID})"
            )
        lookup = np.fromiter(
            (self.ids.setdefault(name, len(self.ids)) for name in names.astype(str)), np.int64, len(names)
        )
        if self.known is not None and len(self.ids) > self.known:
            raise DataError(f"{self.batches.label}: the file changed while it was being read; run ingest again")
        return lookup[indices.astype(np.int64, copy=False)]


def stream_series(batches: ParquetBatches, data: DataLayout) -> SeriesSet | None:
    """The clean regular series of a parquet source, or None when it is not for this reader."""
    if not streamable(batches, data):
        return None
    reader, (counts, first, last, unsorted), step = _surveyed(Reader(batches, data))
    zone = data_zone(zone_name(reader.zone), data)
    if reader.zone is None and zone is not None:  # naive local times: the pandas path reads them on the zone's clock
        return None
    wall_clock = on_wall_clock(zone, step)
    if wall_clock and fixed_step_ns(step) is not None:  # whole days: again, on the zone's clock
        clock = reader.zone if data.zone == "auto" else data.zone  # Arrow's own text for a fixed offset
        try:
            reader, (counts, first, last, unsorted), step = _surveyed(Reader(batches, data, clock=clock))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # a zone Arrow's time-zone database lacks
            return None
    step_ns = fixed_step_ns(step)
    if step_ns is None:  # calendar steps (months, weeks, business days): the pandas path
        return None
    names = list(reader.ids)
    limit = np.maximum(MAX_GRID, 10 * counts)
    too_long = (last.astype(np.float64) - first.astype(np.float64)) / step_ns + 1 > limit  # no int64 overflow here
    points = np.where(too_long, 0, (last - first) // step_ns + 1)  # exact where it counts (the span fits int64)
    too_long |= points > limit  # the pandas path's _check_span
    lengths = np.where(too_long, 0, points)
    offsets = offsets_of(lengths)
    grid = Grid(np.full(int(lengths.sum()), np.nan, dtype=np.float32), offsets, first, step_ns, too_long)
    for batch in reader:
        grid.scatter(batch)
    del grid.filled
    duplicate = grid.duplicate
    gappy = (grid.rows < lengths) & ~duplicate

    faults = Faults(reader, names, step, data, None if wall_clock else zone)
    if duplicate.any():  # the pandas path checks every series for duplicates first
        faults.raise_for(int(np.argmax(duplicate)))
    keep = np.ones(len(names), dtype=bool)
    filled = None  # allocated at the first series data.missing fills
    for i in np.flatnonzero(too_long | grid.off_grid | gappy | grid.non_finite | grid.huge):
        if too_long[i] or grid.off_grid[i]:
            faults.raise_for(i)
        if gappy[i] or grid.non_finite[i]:
            if data.missing == "error":
                faults.raise_for(i)
            if data.missing == "drop":
                keep[i] = False
                continue
            segment = grid.values[offsets[i] : offsets[i] + lengths[i]]
            target = segment.astype(np.float64)
            if filled is None:
                filled = np.zeros(len(grid.values), dtype=bool)
            filled[offsets[i] : offsets[i] + lengths[i]] = ~np.isfinite(target)
            segment[:] = fill_missing(target, ~np.isfinite(target), names[i], data)
        if grid.huge[i]:
            faults.raise_for(i)
    if data.transform == "log1p":  # a negative value: the pandas path's check names it with its row
        lowest = np.minimum.reduceat(grid.values, offsets) if len(offsets) else np.array([])
        for i in np.flatnonzero((lowest < 0) & keep):
            faults.raise_for(int(i))
    values, kept_lengths = _compact(grid.values, offsets, lengths, keep)
    if filled is not None:
        filled, _ = _compact(filled, offsets, lengths, keep)
        filled = filled if filled.any() else None
    kept = [names[i] for i in np.flatnonzero(keep)]
    accepted(data, kept, unsorted, [names[i] for i in np.flatnonzero(~keep)])
    starts = [pd.Timestamp(int(t)) for t in first[keep]]
    return SeriesSet(kept, starts, kept_lengths, values, step.freqstr, filled=filled, zone=zone, wall_clock=wall_clock)


def _surveyed(reader: Reader) -> tuple[Reader, tuple[np.ndarray, np.ndarray, np.ndarray, bool], pd.DateOffset]:
    """Pass 1 (`_survey`) with the series in id order, and the step: `data.freq`, else inferred as prepare_series
    infers it."""
    counts, first, last, unsorted = _survey(reader)
    if counts.sum() == 0:
        raise DataError(f"{reader.batches.label}: no rows")
    # from here on a series' code is its rank among the sorted ids, as prepare_series orders them
    order = sorted(range(len(reader.ids)), key=list(reader.ids).__getitem__)
    reader.ids = {name: i for i, name in enumerate(sorted(reader.ids))}
    reader.known = len(reader.ids)
    counts, first, last = counts[order], first[order], last[order]
    data = reader.data
    step = parse_freq(data.freq) if data.freq is not None else _infer_step(reader, counts)
    return reader, (counts, first, last, unsorted), step


def _survey(reader: Reader) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Pass 1: per series (in order of first appearance) rows, first and last time; unsorted?"""
    counts = np.zeros(0, dtype=np.int64)
    first = np.zeros(0, dtype=np.int64)
    last = np.zeros(0, dtype=np.int64)
    latest = np.zeros(0, dtype=np.int64)  # each series' time in its last row so far
    unsorted = False
    for b in reader:
        n = len(reader.ids)
        if n > len(counts):
            grow = n - len(counts)
            counts = np.concatenate([counts, np.zeros(grow, dtype=np.int64)])
            first = np.concatenate([first, np.full(grow, np.iinfo(np.int64).max)])
            last = np.concatenate([last, np.full(grow, np.iinfo(np.int64).min)])
            latest = np.concatenate([latest, np.full(grow, np.iinfo(np.int64).min)])
        counts += np.bincount(b.codes, minlength=n)
        np.minimum.at(first, b.codes, b.times)
        np.maximum.at(last, b.codes, b.times)
        if not unsorted:
            unsorted = _out_of_order(b.codes, b.times, latest)
    return counts, first, last, unsorted


def _out_of_order(codes: np.ndarray, times: np.ndarray, latest: np.ndarray) -> bool:
    """Does some series go back in time (in file order) within this batch or since the last one?

    Updates `latest` to each series' time in its last row of this batch.
    """
    if not len(codes):
        return False
    if np.any(np.diff(codes) < 0):  # rows of a series are not together: group them, keeping file order
        order = np.argsort(codes, kind="stable")
        codes, times = codes[order], times[order]
    same = codes[1:] == codes[:-1]
    if np.any(same & (times[1:] < times[:-1])):
        return True
    starts = np.flatnonzero(np.r_[True, ~same])
    ends = np.r_[starts[1:] - 1, len(codes) - 1]
    if np.any(times[starts] < latest[codes[starts]]):
        return True
    latest[codes[ends]] = times[ends]
    return False


def _infer_step(reader: Reader, counts: np.ndarray) -> pd.DateOffset:
    """`data.freq` absent: the step of the longest series (the first in id order), as prepare_series does."""
    longest = int(np.argmax(counts))
    # unique: a duplicate is reported as such after the second pass, as prepare_series does
    times = np.unique(np.concatenate([b.times[b.codes == longest] for b in reader]))
    return freq_of(pd.Series(times.astype("datetime64[ns]")), reader.data.source)


POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@dataclass
class Grid:
    """The float32 output (NaN where nothing arrived), filled batch by batch, and per series what was wrong.

    A bit per grid point records that a row arrived there (an eighth of the output's size):
    a row whose bit is already set is a duplicate, and a series without duplicates has gaps
    when fewer of its rows than its grid points arrived.
    """

    values: np.ndarray
    offsets: np.ndarray
    first: np.ndarray
    step_ns: int
    skip: np.ndarray  # series left out of the grid (their span is too long; an error follows)

    def __post_init__(self) -> None:
        n = len(self.offsets)
        self.filled = np.zeros((len(self.values) + 7) // 8, dtype=np.uint8)
        self.rows = np.zeros(n, dtype=np.int64)  # rows that fell on the grid
        self.duplicate, self.off_grid, self.non_finite, self.huge = (np.zeros(n, dtype=bool) for _ in range(4))

    def scatter(self, b: Batch) -> None:
        steps, rest = np.divmod(b.times - self.first[b.codes], self.step_ns)
        self.off_grid[b.codes[rest != 0]] = True
        on = (rest == 0) & ~self.skip[b.codes]
        codes, values = b.codes[on], b.values[on]
        slots = self.offsets[codes] + steps[on]
        self.rows += np.bincount(codes, minlength=len(self.rows))
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf here; `huge` reports it
            self.values[slots] = values
        self._mark(codes, slots)
        finite = np.isfinite(values)
        self.non_finite[codes[~finite]] = True
        self.huge[codes[finite & (np.abs(values) > FLOAT32_MAX)]] = True

    def _mark(self, codes: np.ndarray, slots: np.ndarray) -> None:
        """Set the slots' bits; a bit set before, or twice in this batch, is a duplicate of its series."""
        if not len(slots):
            return
        byte, bit = slots >> 3, np.left_shift(1, slots & 7).astype(np.uint8)
        earlier = (self.filled[byte] & bit) != 0
        self.duplicate[codes[earlier]] = True
        lo, hi = int(byte.min()), int(byte.max()) + 1
        before = int(POPCOUNT[self.filled[lo:hi]].sum())
        np.bitwise_or.at(self.filled, byte, bit)
        if int(POPCOUNT[self.filled[lo:hi]].sum()) - before < len(slots) - np.count_nonzero(earlier):
            order = np.argsort(slots, kind="stable")  # some slot came twice within this batch
            again = np.flatnonzero(slots[order][1:] == slots[order][:-1]) + 1
            self.duplicate[codes[order[again]]] = True


@dataclass
class Faults:
    """The error line for a series found at fault, from the pandas path's own checks on that series."""

    reader: Reader
    names: list[str]
    step: pd.DateOffset
    data: DataLayout
    zone: str | None = None  # the times are UTC instants, named in this zone (`shown_time`)

    def raise_for(self, code: int) -> None:
        parts = []
        for b in self.reader:
            mine = np.flatnonzero(b.codes == code)
            parts.append((b.times[mine], b.values[mine], b.first_row + mine))
        times, values, rows = (np.concatenate(p) for p in zip(*parts))
        frame = pd.DataFrame(
            {"series": self.names[code], "time": times.astype("datetime64[ns]"), "target": values, "row": rows}
        )
        frame = frame.sort_values("time", kind="stable").reset_index(drop=True)
        check_duplicates(frame, self.data.source, self.zone)
        regularise(self.names[code], frame, self.step, self.data, self.zone)
        raise AssertionError(f"ingest: series '{self.names[code]}' was flagged but passes the checks")


def _compact(values: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, keep: np.ndarray):
    """Drop the series not kept, moving the others down in place (no second buffer)."""
    if keep.all():
        return values, lengths
    end = 0
    for i in np.flatnonzero(keep):
        values[end : end + lengths[i]] = values[offsets[i] : offsets[i] + lengths[i]]
        end += int(lengths[i])
    return values[:end], lengths[keep]
