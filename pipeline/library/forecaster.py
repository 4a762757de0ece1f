"""Serving: `Forecaster.load(export_dir).predict(history)` using nothing but the export directory.

Needs only torch, safetensors, pandas and the library's model, scaling, calendar and input
assembly (the functions training uses), never the training code. Every file is checked against
the export's sha256 manifest before it is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from pipeline.library import scaling
from pipeline.library.artifacts import sha256_file
from pipeline.library.calendar import Calendar, encode, fixed_step_ns
from pipeline.library.covariates import frame_column, static_row
from pipeline.library.errors import DataError, listed, shown
from pipeline.library.history import (
    MISSING_ID,
    held,
    in_zone,
    numeric_dates,
    parse_times,
    parsed_column,
    read_history,
    row_of,
    shown_time,
    within_its_span,
    written_zone,
    zone_of,
)
from pipeline.library.history_stats import stats_from_history
from pipeline.library.inputs import assemble_inputs
from pipeline.library.model import build_model
from pipeline.library.records import SPEC_FILE, ForecasterSpec, SeriesStats
from pipeline.library.registry_store import resolve_model_dir

__all__ = ["MANIFEST", "SPEC_FILE", "Forecaster", "MissingFuture", "read_history", "verify_manifest"]

MANIFEST = "manifest.json"
REQUIRED = ("model.safetensors", SPEC_FILE, MANIFEST)
SCALE_FROM = ("training", "history")
"""`predict(scale=...)`: where a series' scaling statistics come from (see `Forecaster.predict`)."""


def verify_manifest(directory: Path) -> dict[str, str]:
    """Refuse a model directory with a missing or altered file, naming it."""
    for name in REQUIRED:
        if not (directory / name).is_file():
            raise DataError(f"model directory {directory}: missing file {name}")
    try:
        manifest = json.loads((directory / MANIFEST).read_text())["files"]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"model directory {directory}: {MANIFEST} is not a valid manifest") from None
    for name, digest in manifest.items():
        path = directory / name
        if not path.is_file():
            raise DataError(f"model directory {directory}: missing file {name}")
        if sha256_file(path) != digest:
            raise DataError(f"model directory {directory}: {name} does not match its sha256 in {MANIFEST}")
    return manifest


class MissingFuture(DataError):
    """`predict` without the future covariates its model needs. How to pass them depends on the caller (a
    frame, `predict --future FILE`, a request's JSON body): `needs` says what is missing, `columns` the
    columns they must come in."""

    def __init__(self, needs: str, columns: str) -> None:
        self.needs, self.columns = needs, columns
        super().__init__(f"{needs}: pass them as `future`, a frame with the columns {columns}")


def _float32(values: np.ndarray) -> torch.Tensor:
    """`values` as a float32 tensor; one beyond float32 becomes inf, and `predict` refuses that series."""
    with np.errstate(over="ignore"):
        return torch.from_numpy(np.asarray(values, dtype=np.float32))


def _refuse_beyond_float32(
    values: np.ndarray, times, names: list[str], sid: str, source: str, zone: str | None = None
) -> None:
    """Refuse a value the model's float32 inputs cannot hold, worded as ingest refuses it: `values` (T, C) in
    time order at `times` (named in `zone`: `shown_time`), `names[c]` what column c is called ("value" for the
    target)."""
    huge = np.abs(values) > scaling.FLOAT32_MAX  # NaN compares False
    if huge.any():
        j, c = np.argwhere(huge)[0]
        text = scaling.too_large_for_float32(names[c], values[j, c], shown_time(times[j], zone))
        raise DataError(f"{source}: series '{shown(sid)}': {text}")


@dataclass
class Forecaster:
    spec: ForecasterSpec
    model: torch.nn.Module

    @classmethod
    def load(cls, directory: str | Path) -> Forecaster:
        """An export directory, or a registry's `current` (a symlink, or the pointer file written where the file
        system has no symlinks: `predict` and the service follow it, so this does too)."""
        directory = resolve_model_dir(Path(directory))
        if not directory.is_dir():
            raise DataError(f"model directory not found: {directory}")
        verify_manifest(directory)
        try:
            spec = ForecasterSpec.from_json(json.loads((directory / SPEC_FILE).read_text()))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"model directory {directory}: {SPEC_FILE} is not readable ({exc})") from None
        model = build_model(spec.model)
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
        return cls(spec, model.eval())

    @property
    def lookback(self) -> int:
        return self.spec.lookback

    @property
    def horizon(self) -> int:
        return self.spec.horizon

    @property
    def quantiles(self) -> list[float]:
        return list(self.spec.model.quantiles)

    @property
    def covariates(self) -> list[str]:
        """Time-varying covariate columns the history must carry: past ones, then future ones."""
        return list(self.model.spec.covariates)

    @property
    def future_covariates(self) -> list[str]:
        return list(self.model.spec.future_covariates)

    def read_history(self, path: str | Path, what: str = "history") -> pd.DataFrame:
        """A history (or future covariates) file as `predict` reads it: the model's id column as text, so that ids
        "007" and "7" stay two series (read as numbers, they merge, or come back as 7)."""
        return read_history(path, what, self.spec.id_column)

    def predict(
        self,
        history: pd.DataFrame,
        source: str = "history",
        future: pd.DataFrame | None = None,
        future_source: str = "future",
        scale: str = "training",
    ) -> pd.DataFrame:
        """Forecast the next `horizon` steps after the end of each series in `history`.

        Columns: the series (when the data has several), the time, `forecast` (the median of a
        quantile model) and, for a quantile model, `q<level>` for each other quantile. A model
        with covariates reads them from `history` (its last `lookback` rows); one with future
        covariates also needs `future`: their values for the `horizon` steps after each
        series' history (columns: the id column where the data has one, the time, the names).

        Times are naive where the history's are, else in the history's zone (where its timestamps carry
        different offsets, the training data's zone, `data.zone`, or UTC); the model reads them in UTC either way,
        or, where it counts days on its data's wall clock (steps of a day or longer in a zone), on that clock and
        writes them in that zone.

        Any series can be forecast, not only those of the training data. `scale="training"` scales a
        series the model was trained on by its training statistics (its train part), and any other
        series by statistics of its own whole history, by the same rule
        (`pipeline.library.history_stats`); `scale="history"` does the latter for every series.
        """
        if scale not in SCALE_FROM:
            raise DataError(f"scale must be one of {', '.join(SCALE_FROM)}, got {shown(repr(scale))}")
        time_col = self.spec.time_column
        history, future = _frame(history, source), None if future is None else _frame(future, future_source)
        history, future = self._dates_in_order(history, source), self._dates_in_order(future, future_source)
        parsed = parsed_column(history[time_col]) if time_col in history else None  # once: large histories
        ids, last, windows, fresh = self._split_history(history, source, scale, parsed)
        wanted = self._future_times_in_range(ids, last, source)
        # the history's zone, if any; where its offsets differ (local time across summer time), the data's
        zone = zone_of(parsed, self.spec.zone or "UTC") if time_col in history else None
        zone = self._clock if self._clock and zone else zone  # days counted on the model's clock are written on it
        if future is not None and time_col in future and (written_zone(future[time_col]) is None) != (zone is None):
            raise DataError(
                f"{future_source}: its times {'carry no zone' if zone else 'carry a zone'} where the history's "
                f"{'are in ' + zone if zone else 'carry none'}; give both a zone (or a UTC offset) or neither"
            )
        ahead = self._future_values(future, ids, last, future_source, wanted)
        stats = self._stats(ids, fresh, history, source)
        transform = self.spec.transform
        target = windows[..., 0]
        loc, spread = stats.loc[:, None], stats.scale[:, None]  # `scale` names where they come from
        if transform == "log1p" and (target < 0).any():
            k, j = np.argwhere(target < 0)[0]
            raise DataError(
                f"{source}: series '{shown(ids[k])}': negative value {target[k, j]:.6g}; this model uses log1p"
            )
        z = scaling.forward(target, loc, spread, transform)
        x = self._inputs(z, windows[..., 1:], ahead, stats, last)
        with torch.no_grad():
            out = self.model(x).double().numpy()
        extra = (1,) * (out.ndim - 2)
        y = scaling.inverse(out, loc.reshape(-1, 1, *extra), spread.reshape(-1, 1, *extra), transform)
        overflow = ~torch.isfinite(x).flatten(1).all(1).numpy() | ~np.isfinite(y.reshape(len(ids), -1)).all(1)
        if overflow.any():
            k = int(np.flatnonzero(overflow)[0])
            self._refuse_overflow(k, ids, last, windows, ahead, z, stats, (source, future_source))
        columns = {"forecast": y}
        if self.quantiles:
            median = self.quantiles.index(0.5)
            columns = {"forecast": y[..., median]}
            columns.update({f"q{q:g}": y[..., k] for k, q in enumerate(self.quantiles) if k != median})
        out = pd.DataFrame(
            {
                "series": np.repeat(np.asarray(ids, dtype=object), self.horizon),
                time_col: self._written_times(wanted, zone),
                **{name: v.reshape(-1) for name, v in columns.items()},
            }
        )
        id_col = self.spec.id_column
        if id_col:
            return out.rename(columns={"series": id_col})
        if self.spec.format == "wide":
            return out
        return out.drop(columns="series")

    def _stats(self, ids: list[str], fresh: dict[str, np.ndarray], history: pd.DataFrame, source: str) -> SeriesStats:
        """Statistics of the series `ids`, in that order: the training ones, except for the series in `fresh`
        (their whole histories), whose statistics come from those histories."""
        known = self.spec.series
        if not fresh:
            return known.stats.take(known.positions(ids))
        model = self.model.spec
        unseen = [sid for sid in ids if sid not in known]
        if unseen and model.series_embedding:
            raise DataError(
                f"{source}: series '{shown(unseen[0])}' was not in the training data, and this model learnt a vector "
                f"per training series (model.series_embedding={model.series_embedding}), so it forecasts only those; "
                f"train with model.series_embedding: 0 to forecast new series"
            )
        rows = [j for j, sid in enumerate(ids) if sid in fresh]
        new = [ids[j] for j in rows]
        statics = None
        if model.static_covariates:
            if not self.spec.static_loc:
                raise DataError(
                    f"{source}: series '{shown(new[0])}' needs its static covariates standardised, and this export "
                    f"predates that (no static_covariates in {SPEC_FILE}); export the model again"
                )
            statics = self._static_rows(history, new, source)
        s = self.spec
        computed = stats_from_history(
            new, [fresh[sid] for sid in new], statics, s.scaling, s.transform, s.static_loc, s.static_scale, source
        )
        positions = [known.positions([sid])[0] if sid in known else 0 for sid in ids]  # 0: a placeholder row
        computed.index[:] = [positions[j] for j in rows]  # a trained series keeps its embedding row
        return known.stats.take(positions).with_rows(rows, computed)

    def _refuse_overflow(self, k, ids, last, windows, ahead, z, stats, sources: tuple[str, str]) -> None:
        """Series `k`'s inputs overflow float32, or its forecast is not finite: name the input that is largest
        once scaled by the series' statistics (a value far beyond what the model was trained on).
        `sources`: what the history and the future covariates are called."""
        window_times = self._shifted(last[k : k + 1], np.arange(1 - self.lookback, 1))[0]
        # (source, times, raw (T, C), scaled (T, C), what each column is)
        blocks = [(sources[0], window_times, windows[k, :, :1], z[k][:, None], ["value"])]
        if self.covariates:
            loc, spread = stats.covariate_loc[k], stats.covariate_scale[k]
            named = [f"covariate '{name}' value" for name in self.covariates]
            blocks.append((sources[0], window_times, windows[k, :, 1:], (windows[k, :, 1:] - loc) / spread, named))
            if ahead is not None:
                past = self.model.spec.past_size
                future_times = self._future_times(last[k : k + 1])[0]
                blocks.append(
                    (sources[1], future_times, ahead[k], (ahead[k] - loc[past:]) / spread[past:], named[past:])
                )
        largest = []
        for source, times, raw, scaled, named in blocks:
            size = np.abs(np.nan_to_num(scaled, nan=0.0, posinf=np.inf, neginf=np.inf))
            j, c = np.unravel_index(int(np.argmax(size)), size.shape)
            largest.append((size[j, c], source, named[c], raw[j, c], times[j]))
        size, source, what, value, when = max(largest, key=lambda entry: entry[0])
        when = shown_time(when, self._named_in)
        raise DataError(
            f"{source}: series '{shown(ids[k])}': {what} {value:.6g} at {when} is too large for this "
            f"model: scaled by the series' statistics it is {size:.3g}, and the forecast overflows float32"
        )

    def _static_rows(self, history: pd.DataFrame, ids: list[str], source: str) -> np.ndarray:
        """(len(ids), S) the static covariates of series new to the model, read from their rows."""
        names = list(self.model.spec.static_covariates)
        id_col = self.spec.id_column
        for name in names:
            if name not in history.columns:
                found = listed(history.columns)
                raise DataError(
                    f"{source}: static covariate column '{name}' not found (series '{shown(ids[0])}' is new to this "
                    f"model: its static covariates come from its rows); columns: {found}"
                )
        keys = history[id_col].astype(str)
        out = []
        for sid in ids:
            part = history[keys == sid]
            frame = part[names].apply(pd.to_numeric, errors="coerce").set_axis([frame_column(n) for n in names], axis=1)
            frame["row"] = [row_of(part, j) for j in range(len(part))]
            out.append(static_row(sid, frame, names, source))
        return np.array(out, dtype=np.float64)

    def _step_ns(self) -> int | None:
        """Nanoseconds per step for fixed-duration frequencies (minutes, hours, days), else None."""
        return fixed_step_ns(pd.tseries.frequencies.to_offset(self.spec.freq))

    def _shifted(self, last: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """(series, len(steps)) datetime64[ns]: each series' last timestamp moved by `steps` steps.

        Array arithmetic for fixed-duration steps; calendar offsets (months, quarters, business
        days) move the whole column at once, one offset multiple at a time.
        """
        last = np.asarray(last, dtype="datetime64[ns]")
        step_ns = self._step_ns()
        if step_ns:
            return (last.view(np.int64)[:, None] + steps.astype(np.int64) * step_ns).view("datetime64[ns]")
        step = pd.tseries.frequencies.to_offset(self.spec.freq)
        index = pd.DatetimeIndex(last)
        return np.stack([(index + int(k) * step).to_numpy(dtype="datetime64[ns]") for k in steps], axis=1)

    def _written_times(self, wanted: np.ndarray, zone: str | None) -> pd.DatetimeIndex:
        """The forecast's times as written: in `zone` (the history's), or naive as the history's were (local times
        where the model was trained on naive local times)."""
        if zone is None and self._local:
            return in_zone(wanted.ravel(), self._local).tz_localize(None)
        return in_zone(wanted.ravel(), zone, self._clock is not None)

    def _future_times_in_range(self, ids: list[str], last: np.ndarray, source: str) -> np.ndarray:
        """`_future_times`, after refusing a series whose horizon would run past 2262-04-11 (datetime64[ns] would
        wrap around to 1677)."""
        ns = np.asarray(last, dtype="datetime64[ns]").view(np.int64)
        step_ns = self._step_ns()
        if step_ns:
            late = np.flatnonzero(ns.astype(np.float64) + self.horizon * step_ns >= float(np.iinfo(np.int64).max))
            if len(late):
                raise self._too_late(ids[int(late[0])], last[int(late[0])], source)
            return self._future_times(last)
        try:  # calendar steps: pandas refuses the months past the range
            return self._future_times(last)
        except (OverflowError, ValueError):  # OutOfBoundsDatetime is a ValueError
            k = int(np.argmax(ns))
            raise self._too_late(ids[k], last[k], source) from None

    def _too_late(self, sid: str, last, source: str) -> DataError:
        last = shown_time(last, self._named_in)
        return DataError(
            f"{source}: series '{shown(sid)}': timestamp {last} lies too near the end of the range of "
            f"timestamps (1677-09-21 to 2262-04-11) to forecast {self.horizon} steps of {self.spec.freq} after it"
        )

    def _future_times(self, last: np.ndarray) -> np.ndarray:
        """(series, horizon) datetime64[ns]: the steps after each series' last timestamp."""
        return self._shifted(last, np.arange(1, self.horizon + 1))

    def _inputs(
        self, z: np.ndarray, covs: np.ndarray, ahead: np.ndarray | None, stats: SeriesStats, last
    ) -> torch.Tensor:
        """The model's input tensor, assembled as for training (`pipeline.library.inputs`).

        `z` (S, lookback) scaled targets, `covs` (S, lookback, K) covariates from the history,
        `ahead` (S, horizon, F) the future covariates' horizon values (original units).
        """
        spec = self.model.spec
        n, lookback, horizon = len(stats), self.lookback, self.horizon
        steps = lookback + horizon if spec.future_size else lookback
        covariates = calendar = static = index = None
        if covs.shape[-1]:
            later = np.zeros((n, steps - lookback, covs.shape[-1]))  # past covariates: unknown there, never read
            if ahead is not None:
                later[..., spec.past_size :] = ahead
            values = np.concatenate([covs, later], axis=1)
            scaled = (values - stats.covariate_loc[:, None, :]) / stats.covariate_scale[:, None, :]
            covariates = _float32(scaled)
        if spec.calendar:
            firsts = self._shifted(pd.DatetimeIndex(last).as_unit("ns").to_numpy(), np.array([1 - lookback]))[:, 0]
            clock = Calendar(spec.calendar, self.spec.freq, spec.calendar_zone)
            phase0, rate = clock.phases(firsts)
            positions = torch.arange(steps).expand(n, -1)
            changes = clock.offset_changes(firsts, steps)
            shift = None if changes is None else changes.to().cycles(torch.arange(n), positions)
            calendar = encode(torch.from_numpy(phase0), torch.from_numpy(rate), positions, shift)
        if spec.static_covariates:
            static = _float32(stats.static)
        if spec.series_embedding:
            index = torch.from_numpy(stats.index.astype(np.float32))
        target = _float32(z)
        return assemble_inputs(target, horizon, spec.past_size, covariates, calendar, static, index)

    def _future_values(
        self, future: pd.DataFrame | None, ids: list[str], last: np.ndarray, source: str, wanted=None
    ) -> np.ndarray | None:
        """(S, horizon, F) future covariate values for the steps after each series' history (at `wanted`, the
        times `_future_times` gives), checked."""
        names = self.future_covariates
        if not names:
            if future is not None:  # values the caller expects to matter would be ignored
                raise DataError(f"{source}: this model takes no future covariates (none were given to training)")
            return None
        s = self.spec
        time_col, id_col = s.time_column, s.id_column
        if future is None:
            raise MissingFuture(
                f"this model needs the future covariates {', '.join(names)} for the {self.horizon} steps after each "
                f"series' history",
                ", ".join([*([id_col] if id_col else []), time_col, *names]),
            )
        keyed = id_col and s.format != "wide"
        for col in [*([id_col] if keyed else []), time_col, *names]:
            if col not in future.columns:
                found = listed(future.columns)
                raise DataError(f"{source}: column '{col}' not found; columns: {found}")
        times = self._future_frame_times(future, time_col, id_col if keyed else None, source)
        if times.isna().any():
            row = int(np.flatnonzero(times.isna().to_numpy())[0]) + 1
            raise DataError(f"{source}: row {row}: unparseable timestamp")
        frame = pd.DataFrame({"id": future[id_col].astype(str) if keyed else "series", "time": times.to_numpy()})
        keys = [frame_column(name) for name in names]  # a covariate called `id` or `time` keeps its own column
        for name, key in zip(names, keys, strict=True):
            frame[key] = pd.to_numeric(future[name], errors="coerce").to_numpy(dtype=np.float64)
        dup = frame.duplicated(["id", "time"])
        if dup.any():
            r = frame[dup].iloc[0]
            when = shown_time(r["time"], self._named_in)
            if keyed:
                raise DataError(f"{source}: duplicate row for series '{shown(r['id'])}' at {when}")
            shared = "shared by every series of this wide model" if s.format == "wide" else "of the one series"
            raise DataError(f"{source}: duplicate row at {when}: the future covariates are one row per time, {shared}")
        wanted = self._future_times(last) if wanted is None else wanted
        index = pd.MultiIndex.from_arrays(
            [np.repeat(np.asarray(ids if keyed else ["series"] * len(ids), dtype=object), self.horizon), wanted.ravel()]
        )
        values = frame.set_index(["id", "time"])[keys].reindex(index).to_numpy()
        bad = ~np.isfinite(values)
        if bad.any():
            row, k = np.argwhere(bad)[0]
            sid, when = ids[row // self.horizon], wanted.ravel()[row]
            present = (frame["id"] == index[row][0]) & (frame["time"] == when)
            what = f"a missing or non-numeric '{names[k]}'" if present.any() else "no row"
            when = shown_time(when, self._named_in)
            raise DataError(
                f"{source}: series '{shown(sid)}': {what} at {when}; the future covariates are needed "
                f"for the {self.horizon} steps after the history's last timestamp "
                f"{shown_time(last[row // self.horizon], self._named_in)}"
            )
        values = values.reshape(len(ids), self.horizon, len(names))
        huge = np.abs(values) > scaling.FLOAT32_MAX
        if huge.any():
            k = int(np.argwhere(huge)[0][0])
            named = [f"covariate '{n}' value" for n in names]
            _refuse_beyond_float32(values[k], wanted[k], named, ids[k], source, self._named_in)
        return values

    def _future_frame_times(self, future: pd.DataFrame, time_col: str, id_col: str | None, source: str) -> pd.Series:
        """The future covariates' times as the model holds them; naive local times read per series in file order."""
        if not self._local:
            return parse_times(future[time_col], "all", source, self._clock)
        groups = future.groupby(id_col, sort=False, dropna=False).indices.values() if id_col else [slice(None)]
        times = np.full(len(future), np.datetime64("NaT"), dtype="datetime64[ns]")
        for at in groups:
            part = future.iloc[at]
            times[at] = parse_times(part[time_col], "all", source, None, self._local, _rows(part)).to_numpy(
                dtype="datetime64[ns]"
            )
        return pd.Series(times, index=future.index)

    def _split_history(
        self, history: pd.DataFrame, source: str, scale: str = "training", parsed: pd.Series | None = None
    ) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(series ids, last timestamps (S,) datetime64[ns], last `lookback` rows (S, lookback, 1 + K), and the
        whole histories (T, 1 + K) of the series whose statistics come from them: see `predict`'s `scale`).

        The rows hold the target, then the K time-varying covariates.

        The common case (long format, a fixed-duration step, every series clean) is checked and
        cut in array ops over the whole history; anything else, or any problem, goes through the
        per-series checks, which name the series and what is wrong.
        """
        fast = self._split_history_fast(history, scale, parsed)
        if fast is not None:
            return fast
        series = self._split_history_per_series(history, source, scale)
        ids = list(series)
        last = np.array([series[i][0].to_datetime64() for i in ids], dtype="datetime64[ns]")
        fresh = {i: series[i][2] for i in ids if self._needs_history(i, scale)}
        return ids, last, np.stack([series[i][1] for i in ids]), fresh

    @property
    def _clock(self) -> str | None:
        """The zone on whose wall clock this model holds times (days in a zone), or None: UTC."""
        return self.spec.zone if self.spec.wall_clock else None

    @property
    def _local(self) -> str | None:
        """The zone whose local time a naive history is (a model trained on naive local times of steps under a
        day), or None: naive times are read as they are."""
        return self.spec.zone if self.spec.local_times and not self.spec.wall_clock else None

    def _dates_in_order(self, frame: pd.DataFrame | None, source: str) -> pd.DataFrame | None:
        """`frame` with its dates written in numbers only (02/01/2024) rewritten year first, in the order its time
        column shows, else the order of the model's data (a history of the first days of a month does not tell)."""
        time_col = self.spec.time_column
        if not isinstance(frame, pd.DataFrame) or time_col not in frame:
            return frame
        written, order = numeric_dates(frame[time_col], source, fallback=self.spec.date_order)
        return frame if order is None else frame.assign(**{time_col: written})

    @property
    def _named_in(self) -> str | None:
        """The zone errors name times in (`shown_time`): the data's, where this model holds times in UTC; None where
        they are naive or on the data's wall clock, and so already as written."""
        return None if self.spec.wall_clock else self.spec.zone

    def _needs_history(self, sid: str, scale: str) -> bool:
        return scale == "history" or sid not in self.spec.series

    def _split_history_fast(
        self, history: pd.DataFrame, scale: str, parsed: pd.Series | None = None
    ) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, np.ndarray]] | None:
        s = self.spec
        time_col, target_col, id_col = s.time_column, s.target_column, s.id_column
        n = self.lookback
        value_cols = [target_col, *self.covariates]
        needed = [time_col, *value_cols, *([id_col] if id_col else [])]
        if s.format == "wide" or len(history) == 0 or any(c not in history for c in needed):
            return None
        times = parsed_column(history[time_col]) if parsed is None else parsed
        if times is None:
            return None
        if self._local and times.dt.tz is None:  # naive local times: here only where no hour is repeated or skipped
            try:
                times = times.dt.tz_localize(self._local, ambiguous="raise", nonexistent="raise")
            except Exception:  # pytz's and pandas' own errors: the per-series path reads each series in its order
                return None
        stamps = held(times, self._clock).to_numpy(dtype="datetime64[ns]")
        values = np.stack(
            [pd.to_numeric(history[c], errors="coerce").to_numpy(dtype=np.float64) for c in value_cols], axis=1
        )
        if id_col:
            try:
                codes, keys = pd.factorize(history[id_col], sort=True)  # the order of groupby(sort=True)
            except TypeError:  # ids of mixed types that do not sort
                return None
            ids = [str(k) for k in keys]
        else:
            codes, ids = np.zeros(len(history), dtype=np.int64), ["series"]
        fresh_ids = [i for i in ids if self._needs_history(i, scale)]
        if fresh_ids and self.model.spec.static_covariates:  # their static values: the per-series checks read them
            return None
        if np.isnat(stamps).any() or (codes < 0).any() or len(set(ids)) < len(ids):
            return None
        ns = stamps.view(np.int64)
        order = np.lexsort((ns, codes))
        codes, ns, values = codes[order], ns[order], values[order]
        counts = np.bincount(codes, minlength=len(ids))
        if (counts < n).any() or ((codes[1:] == codes[:-1]) & (ns[1:] == ns[:-1])).any():
            return None
        rows = np.cumsum(counts)[:, None] - n + np.arange(n)
        window_ns, windows = ns[rows], values[rows]
        last = window_ns[:, -1].view("datetime64[ns]")
        try:
            expected = self._shifted(last, np.arange(1 - n, 1)).view(np.int64)
        except (ValueError, OverflowError):  # out of the datetime64 range: the per-series checks say so
            return None
        if (window_ns != expected).any() or not np.isfinite(windows).all():
            return None
        ends = np.cumsum(counts)
        position = {sid: k for k, sid in enumerate(ids)}
        fresh = {sid: values[ends[position[sid]] - counts[position[sid]] : ends[position[sid]]] for sid in fresh_ids}
        read = [windows, *fresh.values()]  # what the forecast reads; a value beyond float32: the checks name it
        if any((np.abs(part) > scaling.FLOAT32_MAX).any() for part in read):
            return None
        return ids, last, windows, fresh

    def _split_history_per_series(
        self, history: pd.DataFrame, source: str, scale: str = "training"
    ) -> dict[str, tuple[pd.Timestamp, np.ndarray, np.ndarray]]:
        """Per series: (last timestamp, last `lookback` rows of target and covariates, all its rows in time order),
        after checking the history."""
        s = self.spec
        covs = self.covariates
        for col in covs:
            if col not in history.columns:
                found = listed(history.columns)
                raise DataError(f"{source}: covariate column '{col}' not found; columns: {found}")
        time_col, target_col, id_col = s.time_column, s.target_column, s.id_column
        found = listed(history.columns)
        if time_col not in history.columns:
            raise DataError(f"{source}: time column '{time_col}' not found; columns: {found}")
        if s.format == "wide":
            repeated = history[time_col].duplicated()
            if repeated.any():  # a long-format history: each column would be a 'series' with repeated timestamps
                row = row_of(history, int(np.flatnonzero(repeated.to_numpy())[0]))
                raise DataError(
                    f"{source}: row {row}: time {shown(str(history[time_col][repeated].iloc[0]))} appears in an "
                    f"earlier row too; this wide model reads one row per time and a column per series (columns: "
                    f"{found})"
                )
            value_cols = [c for c in history.columns if c != time_col and c not in covs]
            frames = {str(c): _its_span(self._series_frame(history, time_col, c), str(c), source) for c in value_cols}
        else:
            if target_col not in history.columns:
                raise DataError(f"{source}: target column '{target_col}' not found; columns: {found}")
            if id_col:
                if id_col not in history.columns:
                    raise DataError(f"{source}: id column '{id_col}' not found; columns: {found}")
                if history[id_col].isna().any():  # groupby would drop the row, and blame its series' gap
                    row = row_of(history, int(np.flatnonzero(history[id_col].isna().to_numpy())[0]))
                    raise DataError(f"{source}: row {row}: missing series id (column '{id_col}'; {MISSING_ID})")
                frames = {
                    str(k): self._series_frame(g, time_col, target_col)
                    for k, g in history.groupby(_id_keys(history, id_col, source), sort=True, observed=True)
                }
            else:
                frames = {"series": self._series_frame(history, time_col, target_col)}
        if not frames:
            raise DataError(f"{source}: no rows")
        step = pd.tseries.frequencies.to_offset(s.freq)
        out = {}
        for sid, frame in frames.items():
            out[sid] = self._last_window(sid, frame, step, source, self._needs_history(sid, scale))
        return out

    def _series_frame(self, rows: pd.DataFrame, time_col: str, target_col: str) -> pd.DataFrame:
        """One series' rows as columns `time`, `y` and `frame_column(name)` per covariate (the history's row index
        kept): fixed names that no column of the user's, a covariate called `y` or `time` say, can take."""
        columns = {"time": rows[time_col], "y": rows[target_col]}
        columns.update({frame_column(name): rows[name] for name in self.covariates})
        return pd.DataFrame(columns, index=rows.index)

    def _last_window(
        self, sid, frame, step, source, whole: bool = False
    ) -> tuple[pd.Timestamp, np.ndarray, np.ndarray]:
        """`frame`: `_series_frame`'s; `whole`: the series' statistics come from its whole history, which is checked as
        its window is."""
        rows = _rows(frame) if self._local else None  # only naive local times' errors need them
        times = parse_times(frame["time"], sid, source, self._clock, self._local, rows)
        if times.isna().any():
            row = row_of(frame, int(np.flatnonzero(times.isna().to_numpy())[0]))
            raise DataError(f"{source}: series '{shown(sid)}': unparseable timestamp in row {row}")
        columns = ["y", *map(frame_column, self.covariates)]
        values = np.stack(
            [pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64) for c in columns], axis=1
        )
        order = np.argsort(times.to_numpy(), kind="stable")
        times, values = pd.DatetimeIndex(times.to_numpy()[order]), values[order]
        if times.has_duplicates:
            twice = shown_time(times[times.duplicated()][0], self._named_in)
            raise DataError(f"{source}: series '{shown(sid)}': duplicate timestamp {twice}")
        if len(times) < self.lookback:
            raise DataError(
                f"{source}: series '{shown(sid)}' has {len(times)} points; this model needs the last {self.lookback}"
            )
        last = times[-self.lookback :]
        try:
            expected = pd.date_range(end=last[-1], periods=self.lookback, freq=step)
        except (AssertionError, OverflowError, ValueError):  # pandas, at the ends of the datetime64 range
            raise self._too_late(sid, last[-1], source) from None
        if not last.equals(expected):
            gap = expected.difference(last)
            where = gap[-1] if len(gap) else last[0]
            raise DataError(
                f"{source}: series '{shown(sid)}': the last {self.lookback} steps are not a regular {step.freqstr} "
                f"sequence (missing {shown_time(where, self._named_in)}); fill the gap before forecasting"
            )
        window = values[-self.lookback :]
        if not np.isfinite(window).all():
            j, k = np.argwhere(~np.isfinite(window))[0]
            what = f"covariate '{self.covariates[k - 1]}'" if k else "value"
            when = shown_time(last[j], self._named_in)
            raise DataError(f"{source}: series '{shown(sid)}': missing or non-numeric {what} at {when}")
        names = ["value", *[f"covariate '{name}' value" for name in self.covariates]]
        _refuse_beyond_float32(
            values if whole else window, times if whole else last, names, sid, source, self._named_in
        )
        return last[-1], window, values


def _frame(table: object, source: str) -> pd.DataFrame:
    """A history as a pandas DataFrame: an Arrow table (or anything with `to_pandas`) converted, anything else
    refused in one line (`in` on it would test its values, and the error would quote them all)."""
    if isinstance(table, pd.DataFrame):
        return table
    if callable(getattr(table, "to_pandas", None)):
        return table.to_pandas()
    raise DataError(f"{source}: expected a pandas DataFrame (or an Arrow table), got {type(table).__name__}")


def _id_keys(history: pd.DataFrame, id_col: str, source: str) -> pd.Series:
    """The id column to group a history by: as it is where its ids sort, else as text (ids 7 and "s1" of a JSON
    history, which ingest reads as the text "7" and "s1" too); an id that is no single value (a JSON object or
    list) is one line naming its row."""
    ids = history[id_col]
    if ids.dtype == object:
        nested = ids.map(lambda v: isinstance(v, (dict, list, tuple, set))).to_numpy(dtype=bool)
        if nested.any():
            k = int(np.flatnonzero(nested)[0])
            raise DataError(
                f"{source}: row {row_of(history, k)}: series id {shown(repr(ids.iloc[k]), 80)} (column '{id_col}') is "
                "not a single value"
            )
        try:
            sorted(ids.unique())
        except TypeError:
            return ids.astype(str)
    return ids


def _rows(frame: pd.DataFrame) -> np.ndarray:
    """The 1-based rows of a history file a frame holds (`row_of` for each)."""
    return np.array([row_of(frame, i) for i in range(len(frame))], dtype=np.int64)


def _its_span(frame: pd.DataFrame, sid: str, source: str) -> pd.DataFrame:
    """A wide history column's rows from its first to its last value, as ingest reads a wide table: a series
    that ends before the table does is forecast from its own last value (timestamps that do not parse are left
    for `_last_window` to name)."""
    times = parse_times(frame["time"], sid, source)
    if times.isna().any():
        return frame
    present = np.where(frame["y"].isna().to_numpy(), np.nan, 0.0)  # a cell that is not a number is present
    return frame[within_its_span(times.to_numpy(), present)]
