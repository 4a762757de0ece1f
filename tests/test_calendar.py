"""Calendar features: phases on known dates, auto choice per frequency, no leakage, predict = training."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import load_config
from pipeline.library import calendar
from pipeline.library.buffer import WindowBuffer
from pipeline.library.calendar import Calendar, encode
from pipeline.library.errors import ConfigError
from pipeline.library.forecaster import Forecaster
from tests.conftest import cli_in_process, series_table, write_config


def _angles(features: tuple[str, ...], freq: str, start: str, positions: list[int]) -> np.ndarray:
    """Cycle fractions (T, F) recovered from the (sin, cos) encoding."""
    phase0, rate = Calendar(features, freq).phases([start])
    enc = encode(torch.from_numpy(phase0), torch.from_numpy(rate), torch.tensor([positions]))[0].double().numpy()
    f = len(features)
    return np.mod(np.arctan2(enc[:, :f], enc[:, f:]) / (2 * math.pi), 1.0)


def _same_cycle(got, expected) -> None:
    """Equal as points on the circle: 0.9999999 and 0 are the same phase."""
    gap = np.mod(np.asarray(got) - np.asarray(expected) + 0.5, 1.0) - 0.5
    np.testing.assert_allclose(gap, 0.0, atol=1e-6)


def test_phases_on_known_dates():
    # 2024-01-01 is a Monday: hourly steps, time of day and day of week
    got = _angles(("day", "week"), "h", "2024-01-01 00:00", [0, 6, 12, 24, 36, 24 * 7])
    expected = [[0, 0], [0.25, 0.25 / 7], [0.5, 0.5 / 7], [0, 1 / 7], [0.5, 1.5 / 7], [0, 0]]
    _same_cycle(got, expected)
    # monthly from March: month of year; ten steps later it is January
    _same_cycle(_angles(("year",), "MS", "2020-03-01", [0, 10, 12]).ravel(), [2 / 12, 0, 2 / 12])
    # quarterly from Q3
    _same_cycle(_angles(("year",), "QS-JAN", "2001-07-01", [0, 1, 2]).ravel(), [0.5, 0.75, 0])
    # half-hourly from 07:30 on a Wednesday, far into the data (float64 phases stay exact)
    far = 10**8
    got = _angles(("day",), "30min", "2014-01-01 07:30", [0, far])
    _same_cycle(got[:, 0], [7.5 / 24, ((7.5 + far * 0.5) % 24) / 24])


@pytest.mark.parametrize(
    ("freq", "features"),
    [
        ("30min", ("day", "week")),
        ("h", ("day", "week")),
        ("D", ("week", "year")),
        ("B", ("week", "year")),
        ("W-FRI", ()),  # the year is their season: the seasonal base carries it
        ("MS", ()),
        ("QS-JAN", ()),
        ("YS-JAN", ()),
    ],
)
def test_auto_features_per_frequency(freq, features):
    assert calendar.resolve("auto", freq) == features
    assert calendar.resolve("none", freq) == ()


def test_features_the_frequency_cannot_show_are_config_errors():
    with pytest.raises(
        ConfigError, match=r"data.calendar: 'day' needs steps shorter than a day; the data's step is MS"
    ):
        calendar.resolve(["day"], "MS")
    with pytest.raises(ConfigError, match=r"'week' needs steps shorter than a week"):
        calendar.resolve(["week"], "W-FRI")
    with pytest.raises(ConfigError, match=r"data.calendar: unknown feature 'hour' \(choose from day, week, year\)"):
        load_config(None, ["data.calendar=[hour]"])
    with pytest.raises(ConfigError, match="listed twice"):
        calendar.resolve(["year", "year"], "MS")
    with pytest.raises(ConfigError, match=r"^override 'data.calendar=\[day,day\]': data.calendar: feature 'day' is"):
        load_config(None, ["data.calendar=[day,day]"])  # when the config loads, not after ingest ran


def _buffer(values: np.ndarray, start: str, freq: str, lookback: int, horizon: int) -> WindowBuffer:
    records = [{"id": "a", "start": start, "length": len(values), "mean": 0.0, "scale": 1.0}]
    cal = Calendar(calendar.resolve("auto", freq), freq)
    return WindowBuffer.from_ingest(values.astype(np.float32), series_table(records), lookback, horizon, calendar=cal)


def test_inputs_never_carry_the_values_being_forecast():
    values = np.arange(100, dtype=np.float64)
    buffer = _buffer(values, "2024-01-01", "h", lookback=10, horizon=5)
    x, y = buffer.gather(torch.tensor([[0, 20]]))
    assert x.shape == (1, 15, 5) and y.shape == (1, 5)
    assert x[0, :10, 0].tolist() == list(range(20, 30)) and y[0].tolist() == list(range(30, 35))
    assert not x[0, 10:, 0].any()  # the horizon's target channel is zero
    changed = values.copy()
    changed[30:35] = -1e6
    x2, _ = _buffer(changed, "2024-01-01", "h", 10, 5).gather(torch.tensor([[0, 20]]))
    assert torch.equal(x, x2)


@pytest.mark.slow
def test_calendar_run_end_to_end_and_predict_builds_the_training_inputs(tmp_path):
    config = write_config(
        tmp_path,
        {
            "evaluate.plot_series": 0,
            "data.calendar": ["day", "week"],
            "train.max_steps": 20,
            "train.checkpoint_every": 0,
        },
    )
    done = cli_in_process("run", "--config", str(config))
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "run"
    spec = json.loads((run / "export" / "forecaster.json").read_text())
    assert spec["model"]["calendar"] == ["day", "week"] and spec["model"]["input_size"] == 5
    assert "(batch, 48 + 12, 5)" in (run / "export" / "README.md").read_text()  # the ONNX input documented

    # predict's inputs for a history ending at some step = the training buffer's window ending there
    _predict_reads_the_training_window(run, Calendar(("day", "week"), "h"), start=100)


def _predict_reads_the_training_window(run, cal: Calendar, start: int) -> torch.Tensor:
    """predict's inputs (1, 60, 5) for the history of the run's first series ending at `start + 47`, checked equal to
    the training buffer's window starting at `start` (lookback 48, horizon 12)."""
    from pipeline.library.store import read_values

    forecaster = Forecaster.load(run / "export")
    meta = json.loads((run / "ingest" / "meta.json").read_text())
    raw = read_values(run / "ingest")
    rec = meta["series"][0]
    buffer = WindowBuffer.from_ingest(raw, series_table(meta["series"]), 48, 12, calendar=cal)
    x_train, _ = buffer.gather(torch.tensor([[0, start]]))
    times = pd.date_range(rec["start"], periods=rec["length"], freq=meta["freq"])
    window = (raw[start : start + 48].astype(np.float64) - rec["mean"]) / rec["scale"]
    stats = forecaster.spec.series.stats.take(forecaster.spec.series.positions([rec["id"]]))
    x_pred = forecaster._inputs(window[None], np.zeros((1, 48, 0)), None, stats, [times[start + 47]])
    torch.testing.assert_close(x_pred, x_train, rtol=0, atol=1e-5)
    return x_pred


def test_phases_at_the_ends_of_the_datetime_range():
    """Found by the predict fuzzer: normalize() overflowed on a history in September 1677."""
    got = _angles(("day", "week"), "h", "1677-09-21 17:00:00", [0, 1])
    _same_cycle(got[:, 0], [17 / 24, 18 / 24])
    _same_cycle(_angles(("day",), "h", "2262-04-11 20:00:00", [0]).ravel(), [20 / 24])


def _wall_clock(features, freq, zone, start_utc: str, positions: list[int]) -> np.ndarray:
    """Cycle fractions (T, F) at `positions` of a series starting at `start_utc`, on `zone`'s wall clock."""
    clock = Calendar(features, freq, zone)
    phase0, rate = clock.phases([start_utc])
    steps = torch.tensor([positions])
    changes = clock.offset_changes([start_utc], max(positions) + 1)
    shift = None if changes is None else changes.to().cycles(torch.tensor([0]), steps)
    enc = encode(torch.from_numpy(phase0), torch.from_numpy(rate), steps, shift)[0].double().numpy()
    f = len(features)
    return np.mod(np.arctan2(enc[:, :f], enc[:, f:]) / (2 * math.pi), 1.0)


def test_cycles_follow_the_zones_wall_clock_across_summer_time():
    """Berlin: 2024-03-31 00:00 local is 2024-03-30 23:00 UTC; at 01:00 UTC the clocks jump from 02:00 to 03:00,
    and on 27 October from 03:00 back to 02:00 (at 01:00 UTC). The day and week cycles read the local hour."""
    hours = [0, 1, 2, 3, 23, 24 + 23]
    got = _wall_clock(("day", "week"), "h", "Europe/Berlin", "2024-03-30 23:00", hours)
    local = [0, 1, 3, 4, 24, 48]  # hours after local midnight of Sunday 31 March
    _same_cycle(got[:, 0], [h % 24 / 24 for h in local])
    _same_cycle(got[:, 1], [(6 + h / 24) / 7 for h in local])  # Sunday is day 6 of the week
    autumn = _wall_clock(("day",), "h", "Europe/Berlin", "2024-10-26 22:00", [0, 1, 2, 3, 4])  # 00:00 CEST
    _same_cycle(autumn[:, 0], [0, 1 / 24, 2 / 24, 2 / 24, 3 / 24])  # 02:00 twice
    # half-hourly far from the start: every change since is counted (seven of them by 2027-07)
    far = 2 * 24 * (365 * 3 + 181)
    got = _wall_clock(("day",), "30min", "Europe/Berlin", "2024-01-01 00:00", [0, far])
    expected = pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(minutes=30 * far)
    local_hour = expected.tz_convert("Europe/Berlin")
    _same_cycle(got[:, 0], [1 / 24, (local_hour.hour + local_hour.minute / 60) / 24])
    # a fixed offset is a constant shift, and UTC or no zone leaves the cycles as steps of UTC
    assert Calendar(("day",), "h", "UTC+10:00").offset_changes(["2024-01-01"], 10_000) is None
    _same_cycle(_wall_clock(("day",), "h", "UTC+10:00", "2024-01-01 14:00", [0, 5])[:, 0], [0, 5 / 24])
    assert Calendar(("day",), "h", "Asia/Tokyo").offset_changes(["2024-01-01"], 10_000) is None
    _same_cycle(_wall_clock(("day",), "h", None, "2024-03-30 23:00", [0, 2])[:, 0], [23 / 24, 1 / 24])
    # daily data: the zone's changes move no date
    assert Calendar(("week", "year"), "D", "Europe/Berlin").offset_changes(["2024-01-01"], 400) is None


def test_training_windows_carry_the_wall_clock_of_the_datas_zone():
    """The buffer's calendar channels at a window across the spring change equal the local hour of each step."""
    start = "2024-03-25 23:00"  # Tuesday 00:00 in Berlin
    records = [{"id": "a", "start": start, "length": 400, "mean": 0.0, "scale": 1.0}]
    cal = Calendar(("day", "week"), "h", "Europe/Berlin")
    buffer = WindowBuffer.from_ingest(np.zeros(400, np.float32), series_table(records), 96, 24, calendar=cal)
    x, _ = buffer.gather(torch.tensor([[0, 60]]))
    local = pd.date_range(start, periods=400, freq="h", tz="UTC").tz_convert("Europe/Berlin")[60 : 60 + 120]
    day = np.mod(np.arctan2(x[0, :, 1].double().numpy(), x[0, :, 3].double().numpy()) / (2 * math.pi), 1.0)
    _same_cycle(day, (local.hour + local.minute / 60) / 24)


@pytest.mark.slow
def test_a_run_on_zoned_data_keeps_the_zones_wall_clock_from_training_to_predict(tmp_path):
    """Hourly Berlin data across the spring change: the model records the zone its calendar follows, and predict's
    inputs for a history ending after the change equal the training buffer's window ending there."""
    n = 400
    local = pd.date_range("2024-03-20", periods=n, freq="h", tz="Europe/Berlin")  # the change at step 265
    y = 20 + 5 * np.sin(2 * np.pi * local.hour / 24) + np.random.default_rng(3).normal(0, 0.3, n)
    pd.DataFrame({"time": local, "y": y}).to_parquet(tmp_path / "berlin.parquet")
    config = write_config(
        tmp_path,
        {
            "data": {
                "source": str(tmp_path / "berlin.parquet"),
                "target_column": "y",
                "val_size": 0.15,
                "test_size": 0.15,
                "calendar": ["day", "week"],
            },
            "train.max_steps": 4,
            "train.checkpoint_every": 0,
            "evaluate.plot_series": 0,
        },
    )
    done = cli_in_process("run", "--config", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    spec = json.loads((run / "export" / "forecaster.json").read_text())
    assert spec["model"]["calendar_zone"] == "Europe/Berlin"
    assert "sin and cos of day, week on the wall clock of Europe/Berlin" in (run / "export" / "README.md").read_text()

    start = 240  # the window's input ends at step 287, after the change; its first step is before it
    x_pred = _predict_reads_the_training_window(run, Calendar(("day", "week"), "h", "Europe/Berlin"), start)
    hours = local[start : start + 60]
    day = np.mod(np.arctan2(x_pred[0, :, 1].double().numpy(), x_pred[0, :, 3].double().numpy()) / (2 * math.pi), 1)
    _same_cycle(day, hours.hour / 24)
    forecast = Forecaster.load(run / "export").predict(pd.DataFrame({"time": local[:300], "y": y[:300]}))
    assert str(forecast["time"].dt.tz) == "Europe/Berlin" and forecast["time"].iloc[0] == local[300]
