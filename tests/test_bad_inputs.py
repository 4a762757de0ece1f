"""Bad input and faults: a clear one-line error every time, and nothing already written is lost.

One table of bad inputs (`CASES`), each run through the CLI in a subprocess against a copy of a
finished good run: exit code 2, exactly one `error: ` line on stderr naming what is wrong and
where, no traceback, and every file under `output_dir` byte-for-byte as before. Then the
policies that are not errors (short series dropped, unsorted input sorted), unwritable output
paths, and stages killed with SIGKILL while they replace their output.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from .conftest import REPO, cli, run_main, write_config

pytestmark = pytest.mark.slow

LOOKBACK, HORIZON = 24, 6
# three hourly series; `east` is shorter and starts later
LENGTHS = {"north": 240, "south": 240, "east": 150}
STARTS = {"north": "2022-01-01 00:00", "south": "2022-01-01 00:00", "east": "2022-01-04 18:00"}
DATA = {
    "data.id_column": "station",
    "data.time_column": "ts",
    "data.target_column": "load",
    "data.val_size": 0.15,
    "data.test_size": 0.15,
    "window.lookback": LOOKBACK,
    "window.horizon": HORIZON,
    "window.val_stride": 1,
    "train.max_steps": 10,
    "train.eval_every": 5,
    "train.checkpoint_every": 0,
    "train.warmup_steps": 0,
    "train.num_threads": 1,
    "evaluate.season_length": 24,
    "evaluate.plot_series": 1,
    "export.onnx": False,
}


def good_frame() -> pd.DataFrame:
    """The good data set, in file order: north (rows 1-240), south (241-480), east (481-630)."""
    rng = np.random.default_rng(7)
    parts = []
    for k, (sid, n) in enumerate(LENGTHS.items()):
        t = np.arange(n)
        load = 50 + 10 * k + 8 * np.sin(2 * np.pi * t / 24 + k) + rng.normal(0, 1, n)
        times = pd.date_range(STARTS[sid], periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S")
        parts.append(pd.DataFrame({"station": sid, "ts": times, "load": np.round(load, 3)}))
    return pd.concat(parts, ignore_index=True)


def csv_text(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False)


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A finished run of every stage on the good data: root/data.csv, root/run/."""
    root = tmp_path_factory.mktemp("good")
    (root / "data.csv").write_text(csv_text(good_frame()))
    config = write_config(root, {**DATA, "data.source": str(root / "data.csv")})
    result = cli("run", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (root / "run/export/model.safetensors").is_file()
    return root


@dataclass
class Workspace:
    """A copy of the good run in a fresh directory, with its config and data."""

    root: Path
    config: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def model(self) -> Path:
        return self.run / "export"

    @property
    def data(self) -> Path:
        return self.root / "data.csv"

    @property
    def forecast(self) -> Path:
        return self.run / "forecast.csv"

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    def stage(self, stage: str, *overrides: str) -> list[str]:
        return [stage, "--config", str(self.config), *overrides]

    def ingest(self, name: str, content: str | bytes, *overrides: str) -> list[str]:
        """`ingest` of a new data file (the good data stays where it was)."""
        return self.stage("ingest", f"data.source={self.write(name, content)}", *overrides)

    def history(self, frame: pd.DataFrame | None = None, name: str = "history.csv") -> Path:
        """The last 30 hours of every series (or `frame`), as predict's input."""
        if frame is None:
            frame = good_frame().groupby("station", sort=False).tail(30)
        return self.write(name, csv_text(frame))

    def predict(self, history: Path | None = None, model: Path | None = None, output: Path | None = None):
        history = history if history is not None else self.history()
        return [
            "predict",
            "--model",
            str(model or self.model),
            "--input",
            str(history),
            "--output",
            str(output or self.forecast),
        ]


def workspace(good: Path, tmp: Path) -> Workspace:
    shutil.copytree(good / "run", tmp / "run", symlinks=True)
    shutil.copyfile(good / "data.csv", tmp / "data.csv")
    (tmp / "run/forecast.csv").write_text("a previous forecast that must survive\n")
    config = write_config(tmp, {**DATA, "data.source": str(tmp / "data.csv")})
    return Workspace(tmp, config)


def edited(change: Callable[[pd.DataFrame], pd.DataFrame | None]) -> str:
    frame = good_frame()
    out = change(frame)
    return csv_text(frame if out is None else out)


def at(row: int, column: str, value) -> Callable[[pd.DataFrame], None]:
    """Set a cell by its 1-based data row (as the error messages count)."""

    def change(frame: pd.DataFrame) -> None:
        frame[column] = frame[column].astype(object)
        frame.loc[row - 1, column] = value

    return change


def ts(row: int) -> str:
    """The timestamp of a 1-based data row of the good data."""
    return good_frame()["ts"].iloc[row - 1]


@dataclass
class Case:
    id: str
    args: Callable[[Workspace], list[str]]
    expect: tuple[str, ...]  # substrings of the error line; `{data}`, `{run}`, `{model}`... are filled in

    def words(self, ws: Workspace) -> list[str]:
        names = {"root": ws.root, "run": ws.run, "model": ws.model, "config": ws.config, "data": ws.data}
        return [e.format(**{k: str(v) for k, v in names.items()}) for e in self.expect]


def _drop_rows(*rows: int) -> Callable[[pd.DataFrame], pd.DataFrame]:
    return lambda f: f.drop(index=[r - 1 for r in rows])


def _history_without(*rows_from_end: int) -> Callable[[Workspace], list[str]]:
    def args(ws: Workspace) -> list[str]:
        frame = good_frame().groupby("station", sort=False).tail(30)
        north = frame[frame.station == "north"]
        frame = frame.drop(index=[north.index[-k] for k in rows_from_end])
        return ws.predict(ws.history(frame))

    return args


def _east_every_2h(frame: pd.DataFrame) -> None:
    east = frame.station == "east"
    frame.loc[east, "ts"] = pd.date_range(STARTS["east"], periods=int(east.sum()), freq="2h").strftime(
        "%Y-%m-%d %H:%M:%S"
    )


def _east_every_30min(frame: pd.DataFrame) -> None:
    east = frame.station == "east"
    frame.loc[east, "ts"] = pd.date_range(STARTS["east"], periods=int(east.sum()), freq="30min").strftime(
        "%Y-%m-%d %H:%M:%S"
    )


def _yaml_error(ws: Workspace) -> list[str]:
    text = ws.config.read_text().splitlines()
    text.insert(3, "oops: lookback: 24")  # line 4
    ws.config.write_text("\n".join(text) + "\n")
    return ws.stage("ingest")


def _duplicate_key(ws: Workspace) -> list[str]:
    lines = ws.config.read_text().splitlines()
    at = lines.index(f"  lookback: {LOOKBACK}")
    ws.config.write_text("\n".join([*lines[: at + 1], "  lookback: 48", *lines[at + 1 :]]) + "\n")
    return ws.stage("ingest")


def _without_stage(stage: str, run: str) -> Callable[[Workspace], list[str]]:
    def args(ws: Workspace) -> list[str]:
        shutil.rmtree(ws.run / stage)
        return ws.stage(run, "--force")

    return args


def _tamper(name: str, content: bytes | None) -> Callable[[Workspace], list[str]]:
    def args(ws: Workspace) -> list[str]:
        path = ws.model / name
        if content is None:
            path.unlink()
        else:
            path.write_bytes(path.read_bytes() + content)
        return ws.predict()

    return args


def _glob_of_two_headers(ws: Workspace) -> list[str]:
    frame = good_frame()
    (ws.root / "parts").mkdir()
    ws.write("parts/a.csv", csv_text(frame[frame.station == "north"]))
    ws.write("parts/b.csv", csv_text(frame[frame.station != "north"].rename(columns={"load": "kw"})))
    return ws.stage("ingest", f"data.source={ws.root}/parts/*.csv")


def _repeated_column(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.assign(extra=frame["load"])
    frame.columns = ["station", "ts", "load", "load"]
    return frame


def _short_history(ws: Workspace) -> list[str]:
    return ws.predict(ws.history(good_frame().groupby("station", sort=False).tail(LOOKBACK - 1)))


def _history_edit(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Workspace], list[str]]:
    return lambda ws: ws.predict(ws.history(change(good_frame().groupby("station", sort=False).tail(30).copy())))


def _set_last(column: str, value, station: str = "south") -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame[column] = frame[column].astype(object)
        frame.loc[frame.index[frame.station == station][-1], column] = value
        return frame

    return change


LAST_SOUTH = good_frame()[lambda f: f.station == "south"]["ts"].iloc[-1]
LAST_NORTH = good_frame()[lambda f: f.station == "north"]["ts"]

CASES = [
    # ------------------------------------------------ files and formats
    Case(
        "missing-file",
        lambda ws: ws.stage("ingest", f"data.source={ws.root}/absent.csv"),
        ("data.source", "file not found", "{root}/absent.csv"),
    ),
    Case("empty-file", lambda ws: ws.ingest("bad.csv", ""), ("{root}/bad.csv", "file is empty")),
    Case("header-only", lambda ws: ws.ingest("bad.csv", "station,ts,load\n"), ("{root}/bad.csv", "no rows")),
    Case(
        "xlsx",
        lambda ws: ws.ingest("bad.xlsx", b"PK\x03\x04 not really a workbook"),
        ("{root}/bad.xlsx", "unknown file format '.xlsx'", ".csv"),
    ),
    Case(
        "txt", lambda ws: ws.ingest("bad.txt", csv_text(good_frame())), ("{root}/bad.txt", "unknown file format '.txt'")
    ),
    Case(
        "binary-as-csv",
        lambda ws: ws.ingest("bad.csv", bytes(range(256)) * 4),
        ("{root}/bad.csv", "cannot read as csv"),
    ),
    Case(
        "glob-of-two-headers",
        _glob_of_two_headers,
        ("{root}/parts/b.csv", "columns differ from those of {root}/parts/a.csv", "missing load; extra kw"),
    ),
    # ------------------------------------------------ columns
    Case(
        "repeated-column",
        lambda ws: ws.ingest("bad.csv", edited(_repeated_column)),
        ("{root}/bad.csv", "column 'load' appears twice in the header (columns 3 and 4)"),
    ),
    Case(
        "no-id-column",
        lambda ws: ws.ingest("bad.csv", edited(lambda f: f.drop(columns="station"))),
        ("{root}/bad.csv", "id column 'station'", "data.id_column", "columns: ts, load"),
    ),
    Case(
        "no-time-column",
        lambda ws: ws.ingest("bad.csv", edited(lambda f: f.rename(columns={"ts": "when"}))),
        ("{root}/bad.csv", "time column 'ts'", "data.time_column", "columns: station, when, load"),
    ),
    Case(
        "no-target-column",
        lambda ws: ws.ingest("bad.csv", edited(lambda f: f.rename(columns={"load": "kw"}))),
        ("{root}/bad.csv", "target column 'load'", "data.target_column", "columns: station, ts, kw"),
    ),
    Case(  # a message quotes at most ~40 characters of a name, and at most 10 names
        "huge-column-name",
        lambda ws: ws.ingest("bad.csv", edited(lambda f: f.rename(columns={"ts": "x" * 100_000}))),
        ("{root}/bad.csv", "time column 'ts'", "columns: station, " + "x" * 37 + "..., load"),
    ),
    Case(
        "huge-non-numeric-value",
        lambda ws: ws.ingest("bad.csv", edited(at(5, "load", "y" * 100_000))),
        ("{root}/bad.csv", "row 5", "non-numeric value '" + "y" * 36 + "... in column 'load'"),
    ),
    Case(
        "missing-series-id",
        lambda ws: ws.ingest("bad.csv", edited(at(12, "station", ""))),
        ("{root}/bad.csv", "row 12", "missing series id", "'station'"),
    ),
    # ------------------------------------------------ values
    Case(
        "non-numeric-target",
        lambda ws: ws.ingest("bad.csv", edited(at(5, "load", "n/a?"))),
        ("{root}/bad.csv", "row 5", "'n/a?'", "column 'load'"),
    ),
    Case(
        "nan-target",
        lambda ws: ws.ingest("bad.csv", edited(at(10, "load", "nan"))),
        ("{root}/bad.csv", "series 'north'", ts(10), "row 10", "data.missing"),
    ),
    Case(
        "inf-target",
        lambda ws: ws.ingest("bad.csv", edited(at(300, "load", "inf"))),
        ("{root}/bad.csv", "series 'south'", ts(300), "non-finite", "data.missing"),
    ),
    Case(
        "too-large-for-float32",
        lambda ws: ws.ingest("bad.csv", edited(at(7, "load", "1e39"))),
        ("{root}/bad.csv", "series 'north'", ts(7), "too large"),
    ),
    Case(
        "constant-series",
        lambda ws: ws.ingest("bad.csv", edited(lambda f: f.assign(load=f.load.where(f.station != "south", 5.0)))),
        ("{root}/bad.csv", "series 'south'", "constant", "zero scale", "data.scaling"),
    ),
    # ------------------------------------------------ timestamps
    Case(
        "numbers-as-times",
        lambda ws: ws.ingest("bad.csv", edited(lambda f: f.assign(ts=range(len(f))))),
        ("{root}/bad.csv", "the time column holds numbers (first 0), not timestamps"),
    ),
    Case(
        "numbers-as-times-in-history",
        lambda ws: ws.predict(ws.history(good_frame().groupby("station").tail(30).assign(ts=range(90)))),
        ("{root}/history.csv", "series 'east': the time column holds numbers (first 60), not timestamps"),
    ),
    Case(
        "duplicate-timestamp",
        lambda ws: ws.ingest("bad.csv", edited(lambda f: pd.concat([f, f.iloc[[299]]]))),
        ("{root}/bad.csv", "series 'south'", f"duplicate timestamp {ts(300)}"),
    ),
    Case(
        "unparseable-date",
        lambda ws: ws.ingest("bad.csv", edited(at(7, "ts", "31/31/2022 25:00"))),
        ("{root}/bad.csv", "row 7", "cannot parse timestamp", "'31/31/2022 25:00'"),
    ),
    Case(
        "empty-date",
        lambda ws: ws.ingest("bad.csv", edited(at(3, "ts", ""))),
        ("{root}/bad.csv", "row 3", "missing timestamp"),
    ),
    Case(
        "mixed-time-zones",
        lambda ws: ws.ingest("bad.csv", edited(at(4, "ts", ts(4) + "+02:00"))),
        ("{root}/bad.csv", "timestamps with and without a zone", "row 1: no zone", "row 4: UTC+02:00"),
    ),
    Case(
        "irregular-spacing",
        lambda ws: ws.ingest("bad.csv", edited(at(20, "ts", ts(20)[:-5] + "20:00"))),
        ("{root}/bad.csv", "series 'north'", "row 20", "off the h grid"),
    ),
    Case(
        "different-frequency",
        lambda ws: ws.ingest("bad.csv", edited(_east_every_30min)),
        ("{root}/bad.csv", "series 'east'", "row 482", "off the h grid", "different frequency"),
    ),
    Case(
        "coarser-frequency",
        lambda ws: ws.ingest("bad.csv", edited(_east_every_2h), "data.freq=null"),
        (
            "{root}/bad.csv",
            "series 'east': its timestamps are mostly 2 hours apart, not 1 hour (inferred from the "
            "longest series), so 149 would be missing; keep one frequency per source or set data.freq",
        ),
    ),
    Case(
        "gap-under-missing-error",
        lambda ws: ws.ingest("bad.csv", edited(_drop_rows(520, 521))),
        ("{root}/bad.csv", "series 'east'", "2 missing timestamp(s)", f"first {ts(520)}", "data.missing"),
    ),
    Case(
        "timestamp-centuries-away",
        lambda ws: ws.ingest("bad.csv", edited(at(240, "ts", "2262-01-01 00:00:00"))),
        ("{root}/bad.csv", "series 'north'", "largest gap", "row 240", "2262-01-01"),
    ),
    Case(
        "bad-freq-alias",
        lambda ws: ws.stage("ingest", "data.freq=fortnightly"),
        ("data.freq", "'fortnightly'", "not a pandas frequency"),
    ),
    Case(
        "too-short-for-split",
        lambda ws: ws.stage("ingest", "data.test_size=200"),
        ("series 'east'", "150 points", "data.test_size=200"),
    ),
    # ------------------------------------------------ window
    Case(
        "short-series-error",
        lambda ws: ws.stage("window", "window.lookback=120", "data.short_series=error"),
        ("series 'east'", "too short", "window.lookback + window.horizon = 126", "data.short_series"),
    ),
    Case(
        "every-series-too-short",
        lambda ws: ws.stage("window", "window.lookback=500"),
        ("every series is too short", "window.lookback + window.horizon = 506"),
    ),
    # ------------------------------------------------ config
    Case(
        "lookback-zero",
        lambda ws: ws.stage("ingest", "window.lookback=0"),
        ("override 'window.lookback=0'", "window.lookback must be positive, got 0"),  # the override's fault
    ),
    Case(
        "horizon-negative",
        lambda ws: ws.stage("window", "window.horizon=-3"),
        ("window.horizon must be positive, got -3",),
    ),
    Case(
        "batch-size-zero",
        lambda ws: ws.stage("train", "train.batch_size=0"),
        ("train.batch_size must be positive, got 0",),
    ),
    Case("lr-negative", lambda ws: ws.stage("train", "train.lr=-0.01"), ("train.lr must be positive, got -0.01",)),
    Case(
        "unknown-key",
        lambda ws: ws.stage("ingest", "window.lookbak=24"),
        ("override 'window.lookbak=24'", "unknown config key 'window.lookbak'", "did you mean 'window.lookback'"),
    ),
    Case(
        "wrong-type",
        lambda ws: ws.stage("ingest", "window.lookback=abc"),
        ("window.lookback must be an integer", "'abc'"),
    ),
    Case(
        "bad-choice",
        lambda ws: ws.stage("ingest", "data.missing=sometimes"),
        ("data.missing must be one of error|interpolate|ffill|drop", "'sometimes'"),
    ),
    Case(
        "bad-override",
        lambda ws: ws.stage("ingest", "window.lookback"),
        ("override 'window.lookback'", "key.sub=value"),
    ),
    Case(
        "lr-infinite",
        lambda ws: ws.stage("ingest", "train.lr=1e400"),  # refused before ingest, not at train step 2
        ("override 'train.lr=1e400'", "train.lr must be a finite number, got inf"),
    ),
    Case(
        "output-dir-empty",
        lambda ws: ws.stage("ingest", "output_dir="),  # would write every stage into the current directory
        ("override 'output_dir='", "output_dir is empty"),
    ),
    Case(
        "synthetic-bad-freq",
        lambda ws: ws.stage("ingest", "data.source=synthetic", "data.synthetic.freq=bogus"),
        ("data.synthetic.freq", "'bogus'", "not a pandas frequency alias"),
    ),
    Case(
        "season-over-lookback",
        lambda ws: ws.stage("ingest", "model.seasons=[48]"),
        ("model.seasons: season 48 is longer than window.lookback (24)",),
    ),
    Case(
        "season-over-auto-lookback",  # the lengths ingest found bound the lookback: the window stage says it
        lambda ws: ws.stage("window", "window.lookback=auto", "model.seasons=[200]"),
        ("model.seasons: season 200 is longer than window.lookback (", "auto", "shortest train part, 106 steps"),
    ),
    Case(
        "recurrent-steps-over-lookback",
        lambda ws: ws.stage("train", "model.recurrent_steps=1000"),
        ("model.recurrent_steps (1000) is longer than window.lookback (24)",),
    ),
    Case(
        "season-length-over-train-part",  # said by the window stage (cached here), before training
        lambda ws: ws.stage("window", "evaluate.season_length=1000"),
        ("evaluate.season_length (1000)", "series 'east'", "train part of 106 steps"),
    ),
    Case(
        "season-length-over-train-part-forced",
        lambda ws: ws.stage("window", "evaluate.season_length=150", "--force"),
        ("evaluate.season_length (150)", "series 'east'", "train part of 106 steps"),
    ),
    Case("yaml-syntax", _yaml_error, ("{config}", "YAML syntax error at line 4")),
    Case("yaml-duplicate-key", _duplicate_key, ("{config}", "duplicate key 'window.lookback' at line")),
    Case(
        "config-not-a-mapping",
        lambda ws: [*ws.stage("ingest")[:2], str(ws.write("list.yaml", "- 1\n- 2\n"))],
        ("{root}/list.yaml", "must be a mapping"),
    ),
    Case(
        "missing-config",
        lambda ws: ["ingest", "--config", f"{ws.root}/none.yaml"],
        ("config file not found", "{root}/none.yaml"),
    ),
    Case("unknown-stage", lambda ws: ["deploy", "--config", str(ws.config)], ("invalid choice: 'deploy'",)),
    Case(
        "window-before-ingest",
        _without_stage("ingest", "window"),
        ("window", "no output of the 'ingest' stage", "{run}/ingest", "lstm-pipeline ingest"),
    ),
    Case(
        "evaluate-before-train",
        _without_stage("train", "evaluate"),
        ("evaluate", "no output of the 'train' stage", "{run}/train", "lstm-pipeline train"),
    ),
    # ------------------------------------------------ predict
    Case(
        "history-of-another-format",
        lambda ws: ws.predict(ws.write("history.yaml", "load: 1\n")),
        ("{root}/history.yaml", "unknown history file format '.yaml'", ".csv"),
    ),
    Case(
        "history-repeating-a-column",
        lambda ws: ws.predict(ws.history(_repeated_column(good_frame().groupby("station").tail(30)))),
        ("{root}/history.csv", "column 'load' appears twice in the header (columns 3 and 4)"),
    ),
    Case(
        "history-row-without-id",
        lambda ws: ws.predict(
            ws.history(
                good_frame()
                .groupby("station")
                .tail(30)
                .reset_index(drop=True)
                .assign(station=lambda f: f.station.where(f.index != 40))
            )
        ),
        ("{root}/history.csv", "row 41: missing series id (column 'station'; empty, or text read as missing"),
    ),
    Case(
        "future-for-a-model-without",
        lambda ws: [*ws.predict(), "--future", str(ws.history(name="future.csv"))],
        ("{root}/future.csv", "this model takes no future covariates"),
    ),
    Case("model-missing-file", _tamper("model.safetensors", None), ("{model}", "missing file model.safetensors")),
    Case(
        "model-file-altered",
        _tamper("forecaster.json", b" "),
        ("{model}", "forecaster.json", "sha256", "manifest.json"),
    ),
    Case("model-manifest-broken", _tamper("manifest.json", b"{"), ("{model}", "manifest.json is not a valid manifest")),
    Case(
        "model-dir-missing",
        lambda ws: ws.predict(model=ws.root / "no-model"),
        ("model directory not found", "{root}/no-model"),
    ),
    Case(
        "history-missing",
        lambda ws: ws.predict(history=ws.root / "no-history.csv"),
        ("history file not found", "{root}/no-history.csv"),
    ),
    Case(
        "history-too-short",
        _short_history,
        ("{root}/history.csv", "series 'east'", f"has {LOOKBACK - 1} points", f"last {LOOKBACK}"),
    ),
    Case(
        "history-wrong-columns",
        _history_edit(lambda f: f.rename(columns={"ts": "when", "load": "value"})),
        ("{root}/history.csv", "time column 'ts' not found", "columns: station, when, value"),
    ),
    Case(
        "history-gap-at-end",
        _history_without(2),
        ("{root}/history.csv", "series 'north'", "not a regular h sequence", f"missing {LAST_NORTH.iloc[-2]}"),
    ),
    Case(
        "history-new-series-constant",  # a new series is scaled by its own history: a flat one cannot be
        _history_edit(
            lambda f: f.assign(station=f.station.replace("east", "west")).assign(
                load=lambda g: g.load.where(g.station != "west", 5.0)
            )
        ),
        ("{root}/history.csv", "series 'west' is new to this model and constant over its history"),
    ),
    Case(
        "history-huge-column-name",
        _history_edit(lambda f: f.rename(columns={"ts": "x" * 100_000}).assign(**{f"c{k}": 0 for k in range(12)})),
        (
            "{root}/history.csv",
            "time column 'ts' not found",
            "columns: station, " + "x" * 37 + "..., load, c0,",
            "(5 more)",
        ),
    ),
    Case(
        "history-value-beyond-float32",  # refused as ingest refuses it
        _history_edit(_set_last("load", "1e300")),
        (
            "{root}/history.csv",
            f"series 'south': value 1e+300 at {LAST_SOUTH} is too large for float32 (|value| > 3.4e38)",
        ),
    ),
    Case(
        "history-nan-at-end",
        _history_edit(_set_last("load", "")),
        ("{root}/history.csv", "series 'south'", f"missing or non-numeric value at {LAST_SOUTH}"),
    ),
    Case(
        "history-unparseable-date",
        _history_edit(_set_last("ts", "soon", "east")),
        ("{root}/history.csv", "series 'east'", "unparseable timestamp", "row 90"),
    ),
    Case(
        "predict-output-under-a-file",
        lambda ws: ws.predict(output=ws.write("afile", "x") / "forecast.csv"),
        ("cannot write", "{root}/afile/forecast.csv", "Not a directory"),
    ),
]


IN_A_PROCESS = {
    "missing-file", "non-numeric-target", "unknown-key", "bad-override", "window-before-ingest",
    "model-file-altered", "history-gap-at-end", "predict-output-under-a-file",
}  # fmt: skip
"""Cases also run as a real process (one of each kind of command and failure): the exit code and stderr as a
shell sees them. Every case runs through the CLI's `main` in this process, which is what that process runs,
without the ~2.5 s start of a Python with torch per case (the catalogue would cost two minutes of the suite)."""


@pytest.fixture
def in_process(monkeypatch):
    """`lstm-pipeline ARGS` through the CLI's `main` in this process (`conftest.run_main`), as `cli` would run it."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(REPO)

    def run(*args: str) -> subprocess.CompletedProcess:
        code, err = run_main(list(args))
        return subprocess.CompletedProcess(list(args), code, "", err)

    return run


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_error_and_nothing_is_lost(good, tmp_path, case, in_process):
    ws = workspace(good, tmp_path)
    args = case.args(ws)
    before = tree_hashes(ws.run)
    result = cli(*args) if case.id in IN_A_PROCESS else in_process(*args)
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert len(lines[0]) < 1000, lines[0][:3000]  # whatever the input: nothing is quoted at length
    for word in case.words(ws):
        assert word in lines[0], f"{word!r} not in: {lines[0]}"
    assert tree_hashes(ws.run) == before, "a failed command changed the previous artifacts"


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 35 and len({c.id for c in CASES}) == len(CASES)
    assert {c.id for c in CASES} >= IN_A_PROCESS


def test_a_missing_resume_checkpoint_fails_before_any_stage(good, tmp_path, in_process):
    ws = workspace(good, tmp_path)
    fresh = tmp_path / "fresh"
    result = in_process(*ws.stage("run", f"output_dir={fresh}", f"train.resume={tmp_path}/none"))
    _assert_one_error(result, "train.resume", f"{tmp_path}/none", "not a checkpoint directory")
    assert not fresh.exists(), "ingest and window ran before the resume checkpoint was looked for"


# ---------------------------------------------------------------- policies that are not errors


def test_short_series_is_dropped_with_a_warning_naming_it(good, tmp_path):
    ws = workspace(good, tmp_path)
    result = cli(*ws.stage("window", "window.lookback=120"))
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "dropped 1 series too short" in warnings[0] and "east" in warnings[0], warnings
    import json

    meta = json.loads((ws.run / "window/meta.json").read_text())
    assert meta["dropped_series"] == ["east"]
    index = np.load(ws.run / "window/train.npy", allow_pickle=False)
    assert set(np.unique(index[:, 0])) == {1, 2}  # ids sorted: east (0) is gone, north and south stay


def test_unsorted_input_is_sorted_and_logged(good, tmp_path):
    ws = workspace(good, tmp_path)
    shuffled = good_frame().sample(frac=1.0, random_state=3)
    result = cli(*ws.ingest("shuffled.csv", csv_text(shuffled)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not sorted by time; sorted it" in result.stderr
    # the same series, values and fingerprint as the sorted file gave
    assert (ws.run / "ingest/values.arrow").read_bytes() == (good / "run/ingest/values.arrow").read_bytes()
    import json

    new, old = (json.loads((d / "ingest/meta.json").read_text()) for d in (ws.run, good / "run"))
    assert new["fingerprint"] == old["fingerprint"] and new["series"] == old["series"]


# ---------------------------------------------------------------- output paths that cannot be written


def _assert_one_error(result, *words: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"


def test_output_dir_under_a_regular_file_is_a_clear_error(good, tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    config = write_config(
        tmp_path, {**DATA, "data.source": str(good / "data.csv"), "output_dir": str(tmp_path / "afile/run")}
    )
    _assert_one_error(cli("ingest", "--config", str(config)), f"{tmp_path}/afile/run", "Not a directory")
    assert (tmp_path / "afile").read_text() == "not a directory"


def test_read_only_output_dir_is_a_clear_error(good, tmp_path):
    ws = workspace(good, tmp_path)
    probe = ws.run / ".probe"
    ws.run.chmod(0o555)
    try:
        try:
            probe.write_text("x")
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("running as root: chmod does not stop writes (the not-a-directory test covers this path)")
        before = tree_hashes(ws.run)
        _assert_one_error(cli(*ws.stage("ingest", "--force")), str(ws.run), "Permission denied")
        assert tree_hashes(ws.run) == before
    finally:
        ws.run.chmod(0o755)


# ---------------------------------------------------------------- SIGKILL while a stage replaces its output

# how each stage is killed besides at a random moment: inside the write (new output complete in its
# temporary directory) or between the two renames (old output moved aside, new one not in place)
HOOK_POINT = {"ingest": "swap", "window": "written", "evaluate": "swap", "export": "written"}


def _start(ws: Workspace, stage: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *ws.stage(stage, "--force")],
        cwd=REPO,
        env={**os.environ, "WANDB_MODE": "offline", **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _kill(proc: subprocess.Popen) -> int:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=30)


def _assert_stage_intact(ws: Workspace, stage: str, before: dict[str, str], note: str) -> None:
    from pipeline.library.artifacts import read_meta

    assert read_meta(ws.run / stage) is not None, note  # what every reader does first: recovers a swap
    after = tree_hashes(ws.run)
    visible = {k: v for k, v in after.items() if not k.startswith(".")}
    assert visible == before, f"{stage} output changed after the kill ({note})"


@pytest.mark.parametrize("stage", ["ingest", "window", "evaluate", "export"])
def test_sigkill_during_a_stage_keeps_its_previous_output(good, tmp_path, stage):
    ws = workspace(good, tmp_path)
    if stage in ("evaluate", "export"):  # the copy reads its own data.csv: ingest records that path first
        assert _start(ws, "ingest").wait(timeout=300) == 0

    # 1. at the most delicate moment of replacing the output
    before = tree_hashes(ws.run)
    point = HOOK_POINT[stage]
    flag = tmp_path / "paused"
    proc = _start(
        ws, stage, {"PIPELINE_TEST_PAUSE": f"stage:{stage}:{point}:60", "PIPELINE_TEST_PAUSE_FLAG": str(flag)}
    )
    deadline = time.monotonic() + 120
    try:
        while not flag.exists():
            assert proc.poll() is None, f"{stage} ended before reaching the '{point}' point"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        code = _kill(proc)
    assert code == -signal.SIGKILL
    hidden = ws.run / (f".{stage}.old" if point == "swap" else f".{stage}.tmp")
    assert hidden.is_dir(), sorted(p.name for p in ws.run.iterdir())
    if point == "swap":
        assert not (ws.run / stage).exists()  # until the next reader puts the old output back
    _assert_stage_intact(ws, stage, before, f"killed at '{point}'")

    # 2. at a random moment of a forced rerun (the outputs of a complete rerun are the reference:
    # this copy's config differs from the good run's in its paths)
    started = time.monotonic()
    proc = _start(ws, stage)
    assert proc.wait(timeout=300) == 0
    duration = time.monotonic() - started
    before = tree_hashes(ws.run)
    seed = time.time_ns() % 1_000_000
    delay = random.Random(seed).uniform(0.2, duration)
    proc = _start(ws, stage)
    time.sleep(delay)
    code = _kill(proc)
    _assert_stage_intact(ws, stage, before, f"killed after {delay:.2f}s of {duration:.2f}s (seed {seed}), exit {code}")
