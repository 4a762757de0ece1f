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
from pipeline.calendar import Calendar, encode
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
        series = self._split_history(history, source)
        ids = list(series)
        stats = self.spec["series"]
        transform = self.spec.get("transform", "none")
        windows = np.stack([series[i][1] for i in ids])
        loc = np.array([stats[i]["mean"] for i in ids])[:, None]
        scale = np.array([stats[i]["scale"] for i in ids])[:, None]
        if transform == "log1p" and (windows < 0).any():
            k, j = np.argwhere(windows < 0)[0]
            raise DataError(f"{source}: series '{ids[k]}': negative value {windows[k, j]:.6g}; this model uses log1p")
        x = torch.from_numpy(scaling.forward(windows, loc, scale, transform).astype(np.float32))[:, :, None]
        x = self._with_calendar(x, [series[i][0] for i in ids])
        with torch.no_grad():
            out = self.model(x).double().numpy()
        extra = (1,) * (out.ndim - 2)
        y = scaling.inverse(out, loc.reshape(-1, 1, *extra), scale.reshape(-1, 1, *extra), transform)
        columns = {"forecast": y}
        if self.quantiles:
            median = self.quantiles.index(0.5)
            columns = {"forecast": y[..., median]}
            columns.update({f"q{q:g}": y[..., k] for k, q in enumerate(self.quantiles) if k != median})
        step = pd.tseries.frequencies.to_offset(self.spec["freq"])
        rows = []
        for k, sid in enumerate(ids):
            future = pd.date_range(series[sid][0] + step, periods=self.horizon, freq=step)
            values = {name: v[k] for name, v in columns.items()}
            rows.append(pd.DataFrame({"series": sid, self.spec["time_column"]: future, **values}))
        out = pd.concat(rows, ignore_index=True)
        id_col = self.spec.get("id_column")
        if id_col:
            return out.rename(columns={"series": id_col})
        if self.spec.get("format") == "wide":
            return out
        return out.drop(columns="series")

    def _with_calendar(self, x: torch.Tensor, last_times: list[pd.Timestamp]) -> torch.Tensor:
        """The inputs the model was trained on: with calendar features, over the horizon too."""
        features = tuple(self.spec["model"].get("calendar") or ())
        if not features:
            return x
        step = pd.tseries.frequencies.to_offset(self.spec["freq"])
        firsts = [pd.date_range(end=t, periods=self.lookback, freq=step)[0] for t in last_times]
        phase0, rate = Calendar(features, self.spec["freq"]).phases(firsts)
        positions = torch.arange(self.lookback + self.horizon).expand(len(firsts), -1)
        cal = encode(torch.from_numpy(phase0), torch.from_numpy(rate), positions)
        known = torch.cat([x, torch.zeros(len(firsts), self.horizon, 1)], dim=1)
        return torch.cat([known, cal], dim=-1)

    def _split_history(self, history: pd.DataFrame, source: str) -> dict[str, tuple[pd.Timestamp, np.ndarray]]:
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
