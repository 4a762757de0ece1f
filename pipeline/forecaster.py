"""Serving: `Forecaster.load(export_dir).predict(history)` using nothing but the export directory.

Needs only torch, safetensors, pandas and `pipeline.model` (the network definition), never the
training code. Every file is checked against the export's sha256 manifest before it is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from pipeline import scaling
from pipeline.artifacts import sha256_file
from pipeline.calendar import Calendar, encode, fixed_step_ns
from pipeline.errors import DataError
from pipeline.model import ModelSpec, build_model

MANIFEST = "manifest.json"
SPEC_FILE = "forecaster.json"
REQUIRED = ("model.safetensors", SPEC_FILE, MANIFEST)


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


@dataclass
class Forecaster:
    spec: dict
    model: torch.nn.Module

    @classmethod
    def load(cls, directory: str | Path) -> Forecaster:
        directory = Path(directory)
        if not directory.is_dir():
            raise DataError(f"model directory not found: {directory}")
        verify_manifest(directory)
        spec = json.loads((directory / SPEC_FILE).read_text())
        model = build_model(ModelSpec(**spec["model"]))
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
        return cls(spec, model.eval())

    @property
    def lookback(self) -> int:
        return int(self.spec["lookback"])

    @property
    def horizon(self) -> int:
        return int(self.spec["horizon"])

    @property
    def quantiles(self) -> list[float]:
        return list(self.spec["model"].get("quantiles") or [])

    def predict(self, history: pd.DataFrame, source: str = "history") -> pd.DataFrame:
        """Forecast the next `horizon` steps after the end of each series in `history`.

        Columns: the series (when the data has several), the time, `forecast` (the median of a
        quantile model) and, for a quantile model, `q<level>` for each other quantile.
        """
        ids, last, windows = self._split_history(history, source)
        stats = self.spec["series"]
        transform = self.spec.get("transform", "none")
        loc = np.array([stats[i]["mean"] for i in ids])[:, None]
        scale = np.array([stats[i]["scale"] for i in ids])[:, None]
        if transform == "log1p" and (windows < 0).any():
            k, j = np.argwhere(windows < 0)[0]
            raise DataError(f"{source}: series '{ids[k]}': negative value {windows[k, j]:.6g}; this model uses log1p")
        x = torch.from_numpy(scaling.forward(windows, loc, scale, transform).astype(np.float32))[:, :, None]
        x = self._with_calendar(x, last)
        with torch.no_grad():
            out = self.model(x).double().numpy()
        extra = (1,) * (out.ndim - 2)
        y = scaling.inverse(out, loc.reshape(-1, 1, *extra), scale.reshape(-1, 1, *extra), transform)
        columns = {"forecast": y}
        if self.quantiles:
            median = self.quantiles.index(0.5)
            columns = {"forecast": y[..., median]}
            columns.update({f"q{q:g}": y[..., k] for k, q in enumerate(self.quantiles) if k != median})
        future = self._future_times(last)
        out = pd.DataFrame(
            {
                "series": np.repeat(np.asarray(ids, dtype=object), self.horizon),
                self.spec["time_column"]: future.ravel(),
                **{name: v.reshape(-1) for name, v in columns.items()},
            }
        )
        id_col = self.spec.get("id_column")
        if id_col:
            return out.rename(columns={"series": id_col})
        if self.spec.get("format") == "wide":
            return out
        return out.drop(columns="series")

    def _step_ns(self) -> int | None:
        """Nanoseconds per step for fixed-duration frequencies (minutes, hours, days), else None."""
        return fixed_step_ns(pd.tseries.frequencies.to_offset(self.spec["freq"]))

    def _shifted(self, last: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """(series, len(steps)) datetime64[ns]: each series' last timestamp moved by `steps` steps.

        Array arithmetic for fixed-duration steps; calendar offsets (months, quarters, business
        days) move the whole column at once, one offset multiple at a time.
        """
        last = np.asarray(last, dtype="datetime64[ns]")
        step_ns = self._step_ns()
        if step_ns:
            return (last.view(np.int64)[:, None] + steps.astype(np.int64) * step_ns).view("datetime64[ns]")
        step = pd.tseries.frequencies.to_offset(self.spec["freq"])
        index = pd.DatetimeIndex(last)
        return np.stack([(index + int(k) * step).to_numpy(dtype="datetime64[ns]") for k in steps], axis=1)

    def _future_times(self, last: np.ndarray) -> np.ndarray:
        """(series, horizon) datetime64[ns]: the steps after each series' last timestamp."""
        return self._shifted(last, np.arange(1, self.horizon + 1))

    def _with_calendar(self, x: torch.Tensor, last_times) -> torch.Tensor:
        """The inputs the model was trained on: with calendar features, over the horizon too."""
        features = tuple(self.spec["model"].get("calendar") or ())
        if not features:
            return x
        last = pd.DatetimeIndex(last_times).as_unit("ns").to_numpy()
        firsts = self._shifted(last, np.array([1 - self.lookback]))[:, 0]
        phase0, rate = Calendar(features, self.spec["freq"]).phases(firsts)
        positions = torch.arange(self.lookback + self.horizon).expand(len(firsts), -1)
        cal = encode(torch.from_numpy(phase0), torch.from_numpy(rate), positions)
        known = torch.cat([x, torch.zeros(len(firsts), self.horizon, 1)], dim=1)
        return torch.cat([known, cal], dim=-1)

    def _split_history(self, history: pd.DataFrame, source: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(series ids, last timestamps (S,) datetime64[ns], last `lookback` values (S, lookback)).

        The common case (long format, a fixed-duration step, every series clean) is checked and
        cut in array ops over the whole history; anything else, or any problem, goes through the
        per-series checks, which name the series and what is wrong.
        """
        fast = self._split_history_fast(history)
        if fast is not None:
            return fast
        series = self._split_history_per_series(history, source)
        ids = list(series)
        last = np.array([series[i][0].to_datetime64() for i in ids], dtype="datetime64[ns]")
        return ids, last, np.stack([series[i][1] for i in ids])

    def _split_history_fast(self, history: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray] | None:
        s = self.spec
        time_col, target_col, id_col = s["time_column"], s["target_column"], s.get("id_column")
        n = self.lookback
        needed = [time_col, target_col, *([id_col] if id_col else [])]
        if s.get("format") == "wide" or len(history) == 0 or any(c not in history for c in needed):
            return None
        try:
            times = pd.to_datetime(history[time_col], errors="coerce", format="mixed")
        except (ValueError, TypeError, OverflowError):
            return None
        if not pd.api.types.is_datetime64_any_dtype(times):
            return None
        if times.dt.tz is not None:
            times = times.dt.tz_convert("UTC").dt.tz_localize(None)
        stamps = times.to_numpy(dtype="datetime64[ns]")
        values = pd.to_numeric(history[target_col], errors="coerce").to_numpy(dtype=np.float64)
        if id_col:
            try:
                codes, keys = pd.factorize(history[id_col], sort=True)  # the order of groupby(sort=True)
            except TypeError:  # ids of mixed types that do not sort
                return None
            ids = [str(k) for k in keys]
        else:
            codes, ids = np.zeros(len(history), dtype=np.int64), ["series"]
        known = s["series"]
        if np.isnat(stamps).any() or (codes < 0).any() or not all(i in known for i in ids) or len(set(ids)) < len(ids):
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
        return ids, last, windows

    def _split_history_per_series(
        self, history: pd.DataFrame, source: str
    ) -> dict[str, tuple[pd.Timestamp, np.ndarray]]:
        """Per series: (last timestamp, last `lookback` values), after checking the history."""
        s = self.spec
        time_col, target_col, id_col = s["time_column"], s["target_column"], s.get("id_column")
        found = ", ".join(map(str, history.columns))
        if time_col not in history.columns:
            raise DataError(f"{source}: time column '{time_col}' not found; columns: {found}")
        if s.get("format") == "wide":
            value_cols = [c for c in history.columns if c != time_col]
            frames = {str(c): history[[time_col, c]].rename(columns={c: "y"}) for c in value_cols}
        else:
            if target_col not in history.columns:
                raise DataError(f"{source}: target column '{target_col}' not found; columns: {found}")
            if id_col:
                if id_col not in history.columns:
                    raise DataError(f"{source}: id column '{id_col}' not found; columns: {found}")
                frames = {
                    str(k): g[[time_col, target_col]].rename(columns={target_col: "y"})
                    for k, g in history.groupby(id_col, sort=True)
                }
            else:
                frames = {"series": history[[time_col, target_col]].rename(columns={target_col: "y"})}
        if not frames:
            raise DataError(f"{source}: no rows")
        step = pd.tseries.frequencies.to_offset(s["freq"])
        out = {}
        for sid, frame in frames.items():
            if sid not in s["series"]:
                raise DataError(f"{source}: series '{sid}' was not in the training data of this model")
            out[sid] = self._last_window(sid, frame, step, time_col, source)
        return out

    def _last_window(self, sid, frame, step, time_col, source) -> tuple[pd.Timestamp, np.ndarray]:
        times = _parse_times(frame[time_col], sid, source)
        if times.isna().any():
            row = _row(frame, int(np.flatnonzero(times.isna().to_numpy())[0]))
            raise DataError(f"{source}: series '{sid}': unparseable timestamp in row {row}")
        values = pd.to_numeric(frame["y"], errors="coerce").to_numpy(dtype=np.float64)
        order = np.argsort(times.to_numpy(), kind="stable")
        times, values = pd.DatetimeIndex(times.to_numpy()[order]), values[order]
        if times.has_duplicates:
            raise DataError(f"{source}: series '{sid}': duplicate timestamp {times[times.duplicated()][0]}")
        if len(times) < self.lookback:
            raise DataError(
                f"{source}: series '{sid}' has {len(times)} points; this model needs the last {self.lookback}"
            )
        last = times[-self.lookback :]
        expected = pd.date_range(end=last[-1], periods=self.lookback, freq=step)
        if not last.equals(expected):
            gap = expected.difference(last)
            where = gap[-1] if len(gap) else last[0]
            raise DataError(
                f"{source}: series '{sid}': the last {self.lookback} steps are not a regular {step.freqstr} "
                f"sequence (missing {where}); fill the gap before forecasting"
            )
        window = values[-self.lookback :]
        if not np.isfinite(window).all():
            bad = last[int(np.flatnonzero(~np.isfinite(window))[0])]
            raise DataError(f"{source}: series '{sid}': missing or non-numeric value at {bad}")
        return last[-1], window


def _parse_times(col: pd.Series, sid: str, source: str) -> pd.Series:
    """Timestamps as naive datetimes (aware ones in UTC, as ingest stores them); NaT where unparseable."""
    zones = f"{source}: series '{sid}': mixed time zones in the time column; write all timestamps in one zone"
    try:
        times = pd.to_datetime(col, errors="coerce", format="mixed")
    except (ValueError, TypeError, OverflowError) as exc:
        if "zone" in str(exc).lower() or "offset" in str(exc).lower():
            raise DataError(zones) from None
        raise DataError(f"{source}: series '{sid}': cannot parse the time column: {exc}") from None
    if not pd.api.types.is_datetime64_any_dtype(times):  # pandas keeps mixed offsets as objects
        raise DataError(zones)
    if times.dt.tz is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    return times


def _row(frame: pd.DataFrame, position: int) -> object:
    """The 1-based data row of the history file (the frame keeps the file's row index)."""
    label = frame.index[position]
    return label + 1 if isinstance(label, (int, np.integer)) else position + 1


def read_history(path: str | Path) -> pd.DataFrame:
    """The history file for `predict` (csv, parquet or json), with a clear error when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"history file not found: {path}")
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        if path.suffix.lower() in (".json", ".jsonl"):
            return pd.read_json(path, lines=path.suffix.lower() == ".jsonl")
        return pd.read_csv(path)
    except Exception as exc:  # pandas raises many kinds for malformed files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read history: {first[:200]}") from None
