"""The Python API: train, forecast, cross-validate and plot from DataFrames, in a notebook or a script.

    from pipeline.orchestrators.api import Experiment

    exp = Experiment("configs/default.yaml", name="stores", **{"train.max_steps": 300})
    forecaster = exp.fit(df)                      # every stage, the same run directory as the CLI
    forecast = exp.predict(history)               # series unseen in training included
    cv = exp.cross_validation(df, folds=3)        # one DataFrame, a row per forecast point
    fig = exp.plot(forecast, history)

`fit(df)` writes the frame to a parquet file in `<run dir>/input/` and runs the same stages as
`lstm-pipeline run` with `data.source` set to that file, so the run directory, its artifacts and
its cache keys are the CLI's: `lstm-pipeline run --config <run dir>/config.yaml` afterwards skips
every stage, and the CLI on the same data and settings trains the same weights. A frame the stages
reject leaves the last good run's input and config as they were.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import Config, load_config
from pipeline.config.loading import build
from pipeline.library.errors import ConfigError, DataError, UserError, shown
from pipeline.library.forecast_plot import forecast_figure
from pipeline.library.forecaster import Forecaster
from pipeline.library.records import IngestRecord
from pipeline.library.run_lock import run_lock
from pipeline.library.runtime import configure_process, setup_logging
from pipeline.orchestrators.run import run_stages
from pipeline.stages.evaluate import BACKTEST_FORECASTS
from pipeline.stages.table import stage_dir

log = logging.getLogger("pipeline")

INPUT_DIR = Path("input")
"""Where `fit` keeps the frame it was given, inside the run directory: `data-<hash of its bytes>.parquet`, the
config's `data.source`."""
LEGACY_INPUT = "data.parquet"
"""The one name earlier versions kept every frame under: a run directory they made reuses it for the same bytes."""


def make_config(config: str | Path | Config | None = None, /, **settings: Any) -> Config:
    """A checked Config from a YAML file (or the defaults, or a Config) and keyword settings.

    A setting is a top-level key (`name="stores"`), a dotted key (`**{"train.max_steps": 300}`) or a
    whole section as a dict (`train={"max_steps": 300}`), merged over the file; a wrong key or value
    raises ConfigError naming it, as the CLI does.
    """
    if isinstance(config, Config):
        raw = config.to_dict()
    else:
        raw = load_config(config).to_dict() if config is not None else {}
    for key, value in settings.items():
        value = _setting(value)
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"keyword {key}: '{part}' is not a section")
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = {**node[leaf], **value}
        else:
            node[leaf] = value
    where = f"{config} with keywords" if isinstance(config, (str, Path)) else "keywords"
    return build(Config, raw, "", where)


def _setting(value: Any) -> Any:
    """A keyword's value as YAML gives it: numpy scalars as Python numbers, tuples and arrays as lists, paths as
    text. Values computed in a notebook then pass the checks the CLI's pass (12.5 or a bool is still no integer),
    and config.yaml stays plain YAML."""
    if isinstance(value, dict):
        return {k: _setting(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _setting(list(value)) if value.ndim else _setting(value[()])
    if isinstance(value, (list, tuple)):
        return [_setting(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.floating):  # a float32 0.001 as 0.001 (its shortest form), not 0.0010000000474974513
        return float(str(value)) if value.dtype.itemsize < 8 else float(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


class Experiment:
    """One experiment (one config, one run directory), driven from DataFrames."""

    def __init__(self, config: str | Path | Config | None = None, /, verbose: bool = True, **settings: Any) -> None:
        self.cfg = make_config(config, **settings)
        self._history: pd.DataFrame | None = None
        self._forecaster: Forecaster | None = None
        if verbose and not log.handlers:
            setup_logging()

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    @property
    def forecaster(self) -> Forecaster:
        """The exported model of the last `fit` (or of a run directory the CLI made with this config)."""
        if self._forecaster is None:
            self._forecaster = Forecaster.load(stage_dir(self.cfg, "export"))
        return self._forecaster

    @property
    def metrics(self) -> dict:
        """evaluate/metrics.json: the model's and the baselines' test metrics."""
        path = stage_dir(self.cfg, "evaluate") / "metrics.json"
        if not path.is_file():
            raise DataError(f"metrics: no {path} yet; fit a frame first (or run the CLI with this config)")
        return json.loads(path.read_text())

    def fit(self, df: pd.DataFrame | Any, force: bool = False) -> Forecaster:
        """Train on `df` (pandas or pyarrow; long or wide as `data.format` says) through every stage; the
        exported Forecaster. Stages whose inputs did not change are skipped, as with the CLI."""
        with run_lock(self.run_dir):  # the input file too: a second fit on this directory stops before writing
            self.cfg, frame = self._run_on(df, "fit", self.cfg, force)
        self._history = frame
        self._forecaster = None
        return self.forecaster

    def predict(
        self, history: pd.DataFrame | None = None, future: pd.DataFrame | None = None, scale: str = "training"
    ) -> pd.DataFrame:
        """Forecast the `window.horizon` steps after each series of `history` (default: the frame given to
        `fit`); the same columns as `lstm-pipeline predict`. See `Forecaster.predict` for `scale`."""
        if history is None:
            if self._history is None:
                raise DataError("predict: no history given and no frame fitted in this session")
            history = self._history
        time_col = self.forecaster.spec.time_column
        future = _frame(future, time_col) if future is not None else None
        return self.forecaster.predict(_frame(history, time_col), future=future, scale=scale)

    def cross_validation(
        self, df: pd.DataFrame | Any, folds: int = 3, step: int | None = None, refit: bool = False
    ) -> pd.DataFrame:
        """Rolling-origin forecasts at `folds` origins, `step` steps apart (default: the horizon), at the end of
        each series; one row per forecast point: fold, series, origin, time, step, actual, forecast, the
        quantiles, and the naive and seasonal-naive forecasts. `refit=False`: the model trained on the train
        part forecasts every fold (the folds lie in the test part); `refit=True`: a model per fold, trained on
        the data before its origin. Runs the stages with `evaluate.backtest` set, in this run directory
        (training is reused when `fit` ran with the same settings), and never promotes to the registry."""
        folds, step, refit = _setting(folds), _setting(step), _setting(refit)
        if isinstance(folds, int) and not isinstance(folds, bool) and folds < 1:  # other types: the config check
            raise ConfigError(f"cross_validation: folds must be >= 1, got {folds}")
        with run_lock(self.run_dir):
            return self._cross_validation(df, folds, step, refit)

    def _cross_validation(self, df: pd.DataFrame | Any, folds: int, step: int | None, refit: bool) -> pd.DataFrame:
        # an evaluation, never a promotion: with registry.promote each call registered the same model again
        backtest = {"folds": folds, "step": step, "refit": refit}
        cfg = make_config(self.cfg, **{"evaluate.backtest": backtest, "registry.promote": False})
        cfg, _ = self._run_on(df, "cross_validation", cfg, force=False)
        self._forecaster = None
        # ids as the text they are, as `predict` returns them: read as numbers, '007' became 7.0 and 'NA' NaN (every
        # id in this file is a real one, so no cell is missing; pandas 3 reads 'NA' as missing before a converter)
        path = stage_dir(cfg, "evaluate") / BACKTEST_FORECASTS
        table = pd.read_csv(path)
        table["series"] = pd.read_csv(path, usecols=["series"], dtype=str, keep_default_na=False)["series"]
        zone = IngestRecord.require(stage_dir(cfg, "ingest"), "cross_validation").zone
        for column in ("origin", "time"):  # in the data's zone where it had one (offsets change across summer time)
            times = pd.to_datetime(table[column], utc=zone is not None, format="mixed")
            table[column] = times if zone is None else times.dt.tz_convert(zone)
        id_col = self.cfg.data.id_column
        return table.rename(columns={"series": id_col}) if id_col else table

    def plot(
        self,
        forecast: pd.DataFrame | None = None,
        history: pd.DataFrame | None = None,
        series: str | list[str] | None = None,
        max_series: int = 4,
    ):
        """A matplotlib Figure of `forecast` (default: `predict()`) after `history` (default: the fitted
        frame), one panel per series (`series`: one id or a list of them), against real timestamps."""
        max_series = _setting(max_series)
        if isinstance(max_series, bool) or not isinstance(max_series, int) or max_series < 1:
            raise ConfigError(f"plot: max_series must be an integer >= 1, got {shown(repr(max_series))}")
        if isinstance(series, str) or (series is not None and not isinstance(series, Iterable)):
            series = [series]  # one id, not the characters of one
        elif series is not None:
            series = list(series)
            if not series:
                raise ConfigError("plot: series names no series (an empty list)")
        spec = self.forecaster.spec
        history = self._history if history is None else _frame(history, spec.time_column)
        if forecast is None:
            forecast = self.predict(history)
        id_col = spec.id_column if spec.format != "wide" else None
        if history is not None and spec.format == "wide":
            history = _long(history, spec.time_column, spec.target_column)
            id_col = "series"
        return forecast_figure(forecast, history, spec.time_column, spec.target_column, id_col, series, max_series)

    def _run_on(self, df: pd.DataFrame | Any, caller: str, cfg: Config, force: bool) -> tuple[Config, pd.DataFrame]:
        """Run the stages of `cfg` on the frame `df`; (that config, with `data.source` at the frame's file, the
        frame as read).

        The frame becomes the run's input only when the stages succeed: it is written beside the last good run's
        input under a name of its own (its content's hash: the same bytes, the same file and cache keys), and the
        older input goes once `config.yaml` names the new one. A rejected frame leaves the last good run as it
        was, and its error names the frame, not a file the user never wrote."""
        frame = _frame(df, cfg.data.time_column)
        if frame.empty:
            raise DataError(f"{caller}: the frame has no rows")
        folder = (self.run_dir / INPUT_DIR).resolve()
        path, written = _write_input(frame, folder, f"the frame given to {caller}")
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=str(path)))
        try:
            self._run(cfg, force)
        except BaseException as exc:
            if written:
                path.unlink(missing_ok=True)
            if type(exc) in (DataError, ConfigError, UserError) and str(path) in str(exc):
                raise type(exc)(str(exc).replace(str(path), f"the frame given to {caller}")) from None
            raise
        for other in folder.glob("*.parquet"):  # earlier inputs, and what a killed write left
            if other != path:
                other.unlink(missing_ok=True)
        return cfg, frame

    @staticmethod
    def _run(cfg: Config, force: bool) -> None:
        """The stages in this process, with training's process-wide settings (threads, flushing denormals)
        for their duration only: the notebook's own torch work keeps its settings."""
        import torch

        threads = torch.get_num_threads()
        configure_process(cfg.train.num_threads)
        try:
            run_stages(cfg, force=force)
        finally:
            torch.set_num_threads(threads)
            torch.set_flush_denormal(False)


def _frame(frame: Any, time_col: str) -> pd.DataFrame:
    """The frame as a pandas DataFrame with its times in a column, as the readers take it: a frame indexed by
    time (a `DatetimeIndex`, or index levels one of which is named as the time column) has its index moved into
    columns. Every method that takes a frame reads it so: what `fit` took, `predict` and `plot` take."""
    frame = _pandas(frame)
    if time_col in frame.columns:
        return frame
    if isinstance(frame.index, pd.DatetimeIndex):
        return frame.rename_axis(time_col).reset_index()
    if time_col in frame.index.names:
        return frame.reset_index()
    return frame


def _pandas(frame: Any) -> pd.DataFrame:
    if isinstance(frame, pd.DataFrame):
        return frame
    to_pandas = getattr(frame, "to_pandas", None)  # a pyarrow Table (or a polars frame)
    if to_pandas is None:
        raise DataError(f"expected a pandas DataFrame or a pyarrow Table, got {type(frame).__name__}")
    return to_pandas()


def _long(wide: pd.DataFrame, time_col: str, target: str) -> pd.DataFrame:
    return wide.melt(id_vars=[time_col], var_name="series", value_name=target)


def _write_input(frame: pd.DataFrame, folder: Path, name: str) -> tuple[Path, bool]:
    """(the parquet file in `folder` that holds `frame`, whether it was written now). An existing file with the
    same bytes is reused, so fitting the same frame again keeps `data.source` and every cache key. `name`: the
    frame in an error message."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".incoming{os.getpid()}.parquet"
    try:
        _storable(frame).to_parquet(tmp, index=False)
    except (ValueError, TypeError, NotImplementedError) as exc:  # pyarrow's errors derive from these
        tmp.unlink(missing_ok=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{name}: cannot be stored as a table: {shown(first, 200)}") from None
    digest = _digest(tmp)
    path = folder / f"data-{digest[:16]}.parquet"
    legacy = folder / LEGACY_INPUT
    if not path.is_file() and legacy.is_file() and _digest(legacy) == digest:
        path = legacy
    if path.is_file():
        tmp.unlink()
        return path, False
    os.replace(tmp, path)
    return path, True


def _storable(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with each object column that pyarrow cannot type (numbers mixed with text: ids 0 and 's1', a '?'
    among the values) as text, which is how the rows read from a CSV file: mixed ids become text ids, and a '?'
    among the values gets the reader's one-line error naming its row, not pyarrow's exception."""
    import pyarrow as pa

    mixed = {}
    for k in range(frame.shape[1]):  # by position: names may repeat, or be numbers
        column = frame.iloc[:, k]
        if column.dtype != object:
            continue
        try:
            pa.array(column, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            mixed[k] = column.map(str, na_action="ignore")
    if not mixed:
        return frame
    frame = frame.copy()
    for k, column in mixed.items():
        frame.isetitem(k, column)
    return frame


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
