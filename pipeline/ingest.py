"""Stage 1, ingest: source -> clean, regular, split, scaled-on-train series in one Arrow buffer.

Output (`<output_dir>/ingest/`): `values.arrow` (one float32 column holding every series
back to back, in original units) and `meta.json` (fingerprint, frequency, and per series its
id, first timestamp, length, split boundaries and the scaling statistics of its train part).

Two readers give the same output: local parquet files with typed columns stream through
`pipeline.ingest_stream` in record batches (memory: the output buffer plus one batch); every
other source is loaded whole into a pandas frame and cleaned here (`prepare_series`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline import covariates, scaling
from pipeline.artifacts import META, is_cached, stage_key, staged_dir, write_json_atomic
from pipeline.chunks import offsets_of
from pipeline.config import Config, DataConfig
from pipeline.errors import DataError
from pipeline.runtime import main_process_only
from pipeline.sources import load_table, source_fingerprint

log = logging.getLogger("pipeline")

VALUES_FILE = "values.arrow"


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

    @property
    def offsets(self) -> np.ndarray:
        return offsets_of(self.lengths)


def run(cfg: Config, force: bool = False) -> Path:
    main_process_only(lambda: _run(cfg, force))
    return cfg.run_dir / "ingest"


def _run(cfg: Config, force: bool) -> None:
    out = cfg.run_dir / "ingest"
    key = stage_key("ingest", cfg.section_hash("data"), source_fingerprint(cfg.data))
    if not force and is_cached(out, key):
        log.info("ingest: up to date (inputs unchanged), skipped; --force redoes it")
        return
    series = read_series(cfg.data)
    meta = split_and_scale(series, cfg.data)
    meta.update(key=key, stage="ingest", source=cfg.data.source)
    with staged_dir(out) as tmp:
        write_values(tmp / VALUES_FILE, series.values, cfg.data.covariates, series.covariates)
        write_json_atomic(tmp / META, meta)
    log.info(
        "ingest: %d series, %d points, freq %s, fingerprint %s",
        len(series.ids),
        len(series.values),
        series.freq,
        meta["fingerprint"],
    )


# ---------------------------------------------------------------- reading and cleaning


def read_series(cfg: DataConfig) -> SeriesSet:
    """The source as clean regular series: streamed when it is typed parquet, else through pandas."""
    from pipeline.ingest_stream import stream_series
    from pipeline.sources import parquet_batches

    batches = parquet_batches(cfg)
    series = stream_series(batches, cfg) if batches is not None else None
    return series if series is not None else prepare_series(load_table(cfg), cfg)


def columns_of(columns: list, cfg: DataConfig) -> tuple[str | None, str, list[str]]:
    """(id column, time column, target columns) checked against the columns a table has."""
    found = ", ".join(map(str, columns))
    if cfg.source == "synthetic":
        return "series", "time", ["value"]
    if cfg.time_column not in columns:
        raise DataError(f"{cfg.source}: time column '{cfg.time_column}' (data.time_column) not found; columns: {found}")
    if cfg.format == "wide":
        targets = [c for c in columns if c != cfg.time_column]
        if not targets:
            raise DataError(f"{cfg.source}: wide format needs at least one series column besides '{cfg.time_column}'")
        return None, cfg.time_column, [c for c in targets if c not in cfg.covariates]
    if cfg.target_column not in columns:
        raise DataError(
            f"{cfg.source}: target column '{cfg.target_column}' (data.target_column) not found; columns: {found}"
        )
    if cfg.id_column is not None and cfg.id_column not in columns:
        raise DataError(f"{cfg.source}: id column '{cfg.id_column}' (data.id_column) not found; columns: {found}")
    return cfg.id_column, cfg.time_column, [cfg.target_column]


def to_long(table: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """Canonical long frame: series (str), time (datetime64), target (float64), row (1-based)."""
    id_col, time_col, targets = columns_of(list(table.columns), cfg)
    times = _parse_times(table[time_col], cfg.source)
    rows = np.arange(1, len(table) + 1)
    if cfg.format == "wide" and cfg.source != "synthetic":
        parts = []
        for col in targets:
            parts.append(
                pd.DataFrame({"series": str(col), "time": times, "target": _numeric(table[col], col, cfg), "row": rows})
            )
        return _with_covariates(pd.concat(parts, ignore_index=True), table, cfg)
    if id_col is not None and table[id_col].isna().any():  # grouping would silently drop these rows
        i = int(np.flatnonzero(table[id_col].isna().to_numpy())[0])
        raise DataError(f"{cfg.source}: row {i + 1}: missing series id in column '{id_col}' (data.id_column)")
    ids = table[id_col].astype(str) if id_col is not None else pd.Series("series", index=table.index)
    frame = pd.DataFrame(
        {"series": ids.values, "time": times, "target": _numeric(table[targets[0]], targets[0], cfg), "row": rows}
    )
    return _with_covariates(frame, table, cfg)


def _with_covariates(frame: pd.DataFrame, table: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """The long frame with a numeric column per covariate (wide format: shared by every series)."""
    names = [*cfg.covariates, *cfg.static_covariates]
    if not names:
        return frame
    missing = [n for n in names if n not in table.columns]
    if missing:
        kind = next(k for k in ("past", "future", "static") if missing[0] in getattr(cfg, f"{k}_covariates"))
        found = ", ".join(map(str, table.columns))
        raise DataError(
            f"{cfg.source}: covariate column '{missing[0]}' (data.{kind}_covariates) not found; columns: {found}"
        )
    repeats = len(frame) // len(table)  # wide format: each series repeats the table's rows
    for name in names:
        frame[name] = np.tile(_numeric(table[name], name, cfg), repeats)
    return frame


ONE_ZONE = "write all timestamps in one zone (or all with the same UTC offset)"


def _zone_change(col: pd.Series) -> str:
    """Where the zone first changes, e.g. ` (row 1: UTC+00:00, row 7: no zone)` (error path only)."""
    first = None
    for i, text in enumerate(col.tolist()):
        try:
            offset = pd.Timestamp(text).utcoffset()
        except (ValueError, TypeError, OverflowError):
            continue
        zone = "no zone" if offset is None else f"UTC{'-' if offset.days < 0 else '+'}{_hhmm(abs(offset))}"
        if first is None:
            first = (i, zone)
        elif zone != first[1]:
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
    try:
        parsed = pd.to_datetime(col, errors="coerce", format="mixed")
    except (ValueError, TypeError) as exc:
        if "zone" in str(exc).lower() or "offset" in str(exc).lower():
            raise DataError(f"{source}: mixed time zones in the time column{_zone_change(col)}; {ONE_ZONE}") from None
        raise DataError(f"{source}: cannot parse the time column: {exc}") from None
    if parsed.dtype == object:  # pandas keeps mixed offsets as objects
        raise DataError(f"{source}: mixed time zones in the time column{_zone_change(col)}; {ONE_ZONE}")
    bad = parsed.isna() & col.notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{source}: row {i + 1}: cannot parse timestamp {col.iloc[i]!r}")
    if col.isna().any():
        i = int(np.flatnonzero(col.isna().to_numpy())[0])
        raise DataError(f"{source}: row {i + 1}: missing timestamp")
    return parsed


def _numeric(col: pd.Series, name: str, cfg: DataConfig) -> np.ndarray:
    if pd.api.types.is_bool_dtype(col):
        return col.astype(np.float64).to_numpy()
    values = pd.to_numeric(col, errors="coerce")
    bad = values.isna() & col.notna()
    if bad.any():
        text = col[bad].astype(str).str.strip().str.lower()
        real_bad = ~text.isin(["nan", "", "na", "null", "none", "inf", "-inf"])
        if real_bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[int(np.flatnonzero(real_bad.to_numpy())[0])])
            raise DataError(f"{cfg.source}: row {i + 1}: non-numeric value {col.iloc[i]!r} in column '{name}'")
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


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
    alias = pd.infer_freq(pd.DatetimeIndex(longest.iloc[: min(len(longest), 10_000)]))
    if alias is None:  # gaps or irregular spacing: fall back to the most common step
        diffs = pd.Series(np.diff(longest.to_numpy())).mode()
        step = pd.Timedelta(diffs.iloc[0])
        if step <= pd.Timedelta(0):
            raise DataError(f"{source}: cannot infer the frequency; set data.freq")
        return pd.tseries.frequencies.to_offset(step)
    return pd.tseries.frequencies.to_offset(alias)


def prepare_series(table: pd.DataFrame, cfg: DataConfig) -> SeriesSet:
    """Sort, check duplicates and spacing, apply the missing-value policy; one clean regular set."""
    frame = to_long(table, cfg)
    if frame.empty:
        raise DataError(f"{cfg.source}: no rows")
    if frame["time"].dt.tz is not None:
        frame["time"] = frame["time"].dt.tz_convert("UTC").dt.tz_localize(None)
    order = np.lexsort((frame["time"].to_numpy(), frame["series"].to_numpy()))
    unsorted = False
    if not np.array_equal(order, np.arange(len(frame))):
        ordered_before = frame.groupby("series", sort=False, observed=True)["time"].apply(
            lambda t: t.is_monotonic_increasing
        )
        unsorted = not ordered_before.all()
        frame = frame.iloc[order].reset_index(drop=True)
    check_duplicates(frame, cfg.source)
    step = infer_freq(frame, cfg.freq, cfg.source)

    ids, starts, chunks, covs, statics = [], [], [], [], []
    dropped = []
    for sid, part in frame.groupby("series", sort=True, observed=True):
        values = regularise(str(sid), part, step, cfg)
        if values is not None and cfg.covariates:
            grid = pd.date_range(part["time"].iloc[0], part["time"].iloc[-1], freq=step)
            covs.append(covariates.on_grid(str(sid), part, cfg.covariates, grid, cfg))
            values = None if covs[-1] is None else values
        if values is None:
            dropped.append(str(sid))
            continue
        if cfg.static_covariates:
            statics.append(covariates.static_row(str(sid), part, cfg.static_covariates, cfg.source))
        ids.append(str(sid))
        starts.append(part["time"].iloc[0])
        chunks.append(values)
    accepted(cfg, ids, unsorted, dropped)
    lengths = np.array([len(c) for c in chunks], dtype=np.int64)
    cov = np.concatenate([c for c in covs if c is not None]) if cfg.covariates else None
    static = np.array(statics, dtype=np.float64) if cfg.static_covariates else None
    return SeriesSet(ids, starts, lengths, np.concatenate(chunks), step.freqstr, cov, static)


def check_duplicates(frame: pd.DataFrame, source: str) -> None:
    """The first repeated (series, time) of a frame sorted by series then time (stable: file order)."""
    dup = frame.duplicated(["series", "time"], keep="first")
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        r = frame.iloc[i]
        raise DataError(f"{source}: series '{r.series}': duplicate timestamp {r.time} (row {r.row})")


def accepted(cfg: DataConfig, ids: list[str], unsorted: bool, dropped: list[str]) -> None:
    """What is said once the data is accepted, so that a rejected file gets its one error line only."""
    if not ids:
        raise DataError(f"{cfg.source}: no series left after data.missing=drop")
    if unsorted:
        log.info("ingest: input was not sorted by time; sorted it")
    if dropped:
        log.warning("ingest: dropped %d series by data.missing=drop: %s", len(dropped), ", ".join(dropped[:10]))


MAX_GRID = 1_000_000
"""A series' regular grid may be longer than its rows by 10x, or up to this many points."""


def _check_span(sid: str, part: pd.DataFrame, times: pd.DatetimeIndex, step: pd.DateOffset, source: str) -> None:
    """Refuse a grid far longer than the series (one wrong year would allocate gigabytes)."""
    if isinstance(step, pd.offsets.Tick):  # fixed steps: count without building the grid
        points = int((times[-1] - times[0]) // pd.Timedelta(step)) + 1
    else:  # calendar steps (days and longer, business days): the grid stays small
        points = len(pd.date_range(times[0], times[-1], freq=step))
    if points <= max(MAX_GRID, 10 * len(times)):
        return
    j = int(np.argmax(np.diff(times.asi8))) if len(times) > 1 else 0
    rows = part["row"].to_numpy()
    raise DataError(
        f"{source}: series '{sid}': its timestamps span {points} steps of {step.freqstr} for {len(times)} rows "
        f"(largest gap from {times[j]} (row {rows[j]}) to {times[j + 1]} (row {rows[j + 1]})); "
        f"check those timestamps or data.freq"
    )


def regularise(sid: str, part: pd.DataFrame, step: pd.DateOffset, cfg: DataConfig) -> np.ndarray | None:
    """The series on its full regular grid, with gaps and NaN/inf handled by `data.missing`."""
    times = pd.DatetimeIndex(part["time"].to_numpy())
    _check_span(sid, part, times, step, cfg.source)
    grid = pd.date_range(times[0], times[-1], freq=step)
    target = part["target"].to_numpy(dtype=np.float64).copy()
    if len(grid) != len(times) or not grid.equals(times):
        on_grid = times.isin(grid)
        if not on_grid.all():
            j = int(np.flatnonzero(~on_grid)[0])
            raise DataError(
                f"{cfg.source}: series '{sid}': timestamp {times[j]} (row {part['row'].iloc[j]}) is off the "
                f"{step.freqstr} grid (irregular spacing or a different frequency); set data.freq or fix the data"
            )
        missing = grid.difference(times)
        if cfg.missing == "error":
            raise DataError(
                f"{cfg.source}: series '{sid}': {len(missing)} missing timestamp(s), first {missing[0]}; "
                f"set data.missing to interpolate, ffill or drop"
            )
        if cfg.missing == "drop":
            return None
        target = pd.Series(target, index=times).reindex(grid).to_numpy()
    bad = ~np.isfinite(target)
    if bad.any():
        if cfg.missing == "error":
            j = int(np.flatnonzero(bad)[0])
            row = part["row"].iloc[j] if j < len(part) and len(grid) == len(times) else "?"
            raise DataError(
                f"{cfg.source}: series '{sid}': missing or non-finite target at {grid[j]} (row {row}); "
                f"set data.missing to interpolate, ffill or drop"
            )
        if cfg.missing == "drop":
            return None
        target = fill_missing(target, bad, sid, cfg)
    j = scaling.first_outside_domain(target, cfg.transform)
    if j is not None:
        row = part["row"].iloc[times.get_loc(grid[j])] if grid[j] in times else "?"
        raise DataError(
            f"{cfg.source}: series '{sid}': value {target[j]:.6g} at {grid[j]} (row {row}) is negative; "
            f"data.transform: log1p needs values >= 0 (use data.transform: none)"
        )
    huge = np.abs(target) > np.finfo(np.float32).max
    if huge.any():  # the buffer is float32: it would hold inf
        j = int(np.flatnonzero(huge)[0])
        raise DataError(
            f"{cfg.source}: series '{sid}': value {target[j]:.6g} at {grid[j]} is too large for float32 "
            f"(|value| > 3.4e38)"
        )
    return target


def fill_missing(target: np.ndarray, bad: np.ndarray, sid: str, cfg: DataConfig) -> np.ndarray:
    """`data.missing` interpolate or ffill over the positions `bad` (float64 in, float64 out)."""
    filled = pd.Series(np.where(bad, np.nan, target))
    filled = filled.interpolate(limit_direction="both") if cfg.missing == "interpolate" else filled.ffill().bfill()
    if filled.isna().any():
        raise DataError(f"{cfg.source}: series '{sid}': no finite target value at all")
    return filled.to_numpy()


# ---------------------------------------------------------------- splitting and scaling


def split_sizes(length: int, val_size: int | float, test_size: int | float) -> tuple[int, int]:
    """(train_end, val_end) for one series; fractions round to at least one step."""
    val = val_size if isinstance(val_size, int) else max(1, round(length * val_size))
    test = test_size if isinstance(test_size, int) else max(1, round(length * test_size))
    return length - val - test, length - test


def train_statistics(train: np.ndarray, scaling_name: str, transform: str = "none") -> tuple[float, float]:
    """(location, scale) of one series' train part after the transform, in float64 whatever the buffer's dtype."""
    return scaling.fit(np.asarray(train, dtype=np.float64), scaling_name, transform)


HASH_CHUNK = 1 << 22


def split_and_scale(series: SeriesSet, cfg: DataConfig, test_size: int | float | None = None) -> dict:
    """Per-series split boundaries and train-part statistics, plus the content fingerprint.

    `test_size` replaces `cfg.test_size` when given: a refit fold (`pipeline.refit`) passes 0,
    its series already end at the fold's cutoff.
    """
    offsets = series.offsets
    test_size = cfg.test_size if test_size is None else test_size
    records = []
    if series.static is not None:
        static_mean, static_scale = covariates.train_stats(series.static)
        static = (series.static - np.array(static_mean)) / np.array(static_scale)
    for i, sid in enumerate(series.ids):
        length = int(series.lengths[i])
        train_end, val_end = split_sizes(length, cfg.val_size, test_size)
        if train_end < 2:
            raise DataError(
                f"{cfg.source}: series '{sid}' has {length} points, too few for data.val_size="
                f"{cfg.val_size} and data.test_size={cfg.test_size} plus a train part"
            )
        mean, scale = train_statistics(series.values[offsets[i] : offsets[i] + train_end], cfg.scaling, cfg.transform)
        if not scaling.has_spread(mean, scale):
            raise DataError(
                f"{cfg.source}: series '{sid}' is constant on its train part (zero scale); "
                f"remove it or set data.scaling: none"
            )
        record = {
            "id": sid,
            "start": series.starts[i].isoformat(),
            "length": length,
            "train_end": train_end,
            "val_end": val_end,
            "mean": mean,
            "scale": scale,
        }
        if series.covariates is not None:
            part = series.covariates[offsets[i] : offsets[i] + train_end]
            record["covariate_mean"], record["covariate_scale"] = covariates.train_stats(part)
        if series.static is not None:
            record["static"] = static[i].tolist()
        records.append(record)
    digest = hashlib.sha256()
    for start in range(0, len(series.values), HASH_CHUNK):  # no float32 copy of the whole buffer
        digest.update(np.ascontiguousarray(series.values[start : start + HASH_CHUNK], dtype=np.float32))
    if series.covariates is not None:
        digest.update(repr(cfg.covariates).encode())
        digest.update(np.ascontiguousarray(series.covariates, dtype=np.float32))
    if series.static is not None:
        digest.update(repr(cfg.static_covariates).encode())
        digest.update(np.ascontiguousarray(series.static))
    # the split boundaries too: a new data.val_size/test_size must rerun window, train and evaluate
    digest.update(repr([(r["id"], r["start"], r["length"], r["train_end"], r["val_end"]) for r in records]).encode())
    digest.update(series.freq.encode())
    digest.update(f"{cfg.scaling}/{cfg.transform}".encode())  # what the model sees: downstream stages rerun
    extra = {}
    if series.static is not None:
        extra["static_covariates"] = {"names": cfg.static_covariates, "mean": static_mean, "scale": static_scale}
    if series.covariates is not None:
        extra["covariates"] = {"past": cfg.past_covariates, "future": cfg.future_covariates}
    return {
        **extra,
        "fingerprint": digest.hexdigest()[:16],
        "freq": series.freq,
        "scaling": cfg.scaling,
        "transform": cfg.transform,
        "n_series": len(records),
        "n_points": int(series.lengths.sum()),
        "series": records,
    }


# ---------------------------------------------------------------- the Arrow buffer


def write_values(path: Path, values: np.ndarray, names: list[str] = (), covs: np.ndarray | None = None) -> None:
    """The target (and time-varying covariates, one column each) as float32 Arrow columns."""
    columns = {"target": pa.array(np.asarray(values, dtype=np.float32))}  # float32 in: no copy
    if names:
        columns.update(covariates.columns(names, covs))
    write_table(path, pa.table(columns))


def write_table(path: Path, table: pa.Table) -> None:
    """An Arrow IPC file (values.arrow's format) holding `table`."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def read_table(ingest_dir: Path) -> pa.Table:
    """Every column of values.arrow, memory-mapped."""
    return pa.ipc.open_file(pa.memory_map(str(ingest_dir / VALUES_FILE), "r")).read_all()


def column_values(column: pa.ChunkedArray) -> np.ndarray:
    """A column as numpy: zero-copy while it is one Arrow chunk."""
    return column.to_numpy() if column.num_chunks == 1 else column.combine_chunks().to_numpy()


def read_values(ingest_dir: Path) -> np.ndarray:
    """The float32 target buffer, memory-mapped."""
    return column_values(read_table(ingest_dir).column("target"))


def load_ingest(run_dir: Path, needed_by: str) -> tuple[dict, np.ndarray]:
    from pipeline.artifacts import require_stage

    meta = require_stage(run_dir / "ingest", "ingest", needed_by)
    return meta, read_values(run_dir / "ingest")
