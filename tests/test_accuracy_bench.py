"""The accuracy benchmark's data and protocol (bench/accuracy.py); fast, no training."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import DataConfig, load_config
from pipeline.library.series import prepare_series
from pipeline.library.sources import load_table
from pipeline.library.splits import split_sizes

REPO = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_accuracy", REPO / "bench" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


acc = _load_bench()

# name: (pandas frequency inferred by ingest, {series id: length}, first timestamp)
EXPECTED = {
    "a10": ("MS", {"series": 204}, "1991-07-01"),
    "h02": ("MS", {"series": 204}, "1991-07-01"),
    "usmelec": ("MS", {"series": 486}, "1973-01-01"),
    "auscafe": ("MS", {"series": 426}, "1982-04-01"),
    "elecequip": ("MS", {"series": 195}, "1996-01-01"),
    "departures": (
        "MS",
        {k: 498 for k in ("permanent", "reslong", "resshort", "vislong", "visshort")},
        "1976-01-01",
    ),
    "ausbeer": ("QS-JAN", {"series": 218}, "1956-01-01"),
    "qcement": ("QS-JAN", {"series": 233}, "1956-01-01"),
    "arrivals": ("QS-JAN", {k: 127 for k in ("Japan", "NZ", "UK", "US")}, "1981-01-01"),
    "gasoline": ("W-FRI", {"series": 1355}, "1991-02-08"),
    "vic_elec": ("30min", {"series": 17520}, "2014-01-01"),
    "calls": ("5min", {"series": 27716}, "2003-03-03 07:00"),
}


def test_every_series_is_listed():
    assert set(acc.SERIES) == set(EXPECTED)
    files = {p.name for p in (REPO / "bench" / "data").glob("*.csv")}
    assert files == {s.source for s in acc.SERIES.values() if not s.source.startswith("builtin:")}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_file_loads_through_ingest(name, tmp_path):
    """What the bench feeds the pipeline passes ingest, on the grid and with the lengths it claims."""
    freq, lengths, first = EXPECTED[name]
    cfg = acc.data_config(acc.SERIES[name], tmp_path)
    assert cfg.freq == freq
    inferred = dataclasses.replace(cfg, freq=None)  # the timestamps alone must give the frequency
    series = prepare_series(load_table(inferred), inferred)
    assert series.freq == freq
    assert dict(zip(series.ids, series.lengths.tolist())) == lengths
    assert all(start == pd.Timestamp(first) for start in series.starts)
    assert np.isfinite(series.values).all()


def test_calls_file_has_real_call_centre_timestamps(tmp_path):
    """calls.csv: 164 weekdays x 169 five-minute intervals from 07:00 (last starts 21:00)."""
    table = pd.read_csv(REPO / "bench" / "data" / "calls.csv", parse_dates=["time"])
    days = table["time"].dt.normalize()
    assert days.nunique() == 164 and (days.groupby(days).size() == 169).all()
    assert (table["time"].dt.day_of_week < 5).all()
    clock = table["time"] - days
    assert clock.min() == pd.Timedelta(hours=7) and clock.max() == pd.Timedelta(hours=21)
    view = pd.read_csv(acc.data_config(acc.SERIES["calls"], tmp_path).source, parse_dates=["time"])
    assert (view["value"] == table["value"]).all()
    assert (view["time"].diff().dropna() == pd.Timedelta(minutes=5)).all()


@pytest.mark.parametrize(
    ("freq", "length", "horizon", "season", "lookback", "average"),
    [
        ("monthly", 204, 12, 12, 36, 3),
        ("quarterly", 127, 8, 4, 16, 3),  # two horizons are longer than three seasons
        ("weekly", 1355, 52, 52, 156, 3),
        ("half-hourly", 17520, 48, 48, 144, 3),
        ("5-minute", 27716, 169, 169, 507, 3),
        ("monthly", 60, 12, 12, 15, 1),  # bounded: half of the train part (42) left after a horizon
        ("monthly", 40, 12, 12, 8, 1),  # shorter than a season: no residual head
    ],
)
def test_protocol_per_frequency_and_the_auto_recipe(freq, length, horizon, season, lookback, average):
    p = acc.protocol(freq)
    assert (p.test_size, p.val_size) == (0.2, 0.1)
    assert (p.horizon, p.test_stride, p.season) == (horizon, horizon, season)
    data = DataConfig(freq=acc.FREQUENCIES[freq].alias, val_size=p.val_size, test_size=p.test_size)
    cfg = load_config(acc.DEFAULT_CONFIG, [f"window.horizon={horizon}", f"evaluate.season_length={season}"])
    cfg = acc.resolved(dataclasses.replace(cfg, data=data), [np.zeros(length)])
    assert cfg.window.lookback == lookback
    assert cfg.model.residual_season == (season if lookback >= season else 0)
    assert cfg.model.season_average == average
    train_end, _ = split_sizes(length, p.val_size, p.test_size)
    assert cfg.window.lookback + horizon <= train_end


def test_overrides_resolve_and_windows_start_at_the_test_part(tmp_path):
    series = acc.SERIES["a10"]
    data = acc.data_config(series, tmp_path)
    ids, values = acc.load_values(data)
    p = acc.protocol(series.freq)
    cfg = acc.resolved(load_config(acc.DEFAULT_CONFIG, acc.overrides_for(series, data, p, tmp_path)), values)
    assert (cfg.data.test_size, cfg.data.val_size, cfg.window.test_stride) == (0.2, 0.1, 12)
    assert (cfg.evaluate.season_length, cfg.model.residual_season, cfg.window.lookback) == (12, 12, 36)
    assert (cfg.tracking.backend, cfg.export.onnx, cfg.data.id_column) == ("none", False, None)
    assert cfg.run_dir == tmp_path / "a10"
    windows = acc.test_windows(ids, values, cfg)
    _, val_end = split_sizes(204, 0.1, 0.2)
    assert val_end == 163 and windows.origins[0].tolist() == [163, 175, 187]
    assert windows.n_train_windows == 143 - 36 - 12 + 1


def _trend(n: int = 40) -> np.ndarray:
    return 10.0 + 2.0 * np.arange(n)


def test_mase_of_baselines_on_a_hand_made_series():
    """y = 10 + 2t, season 4: scale |y_t - y_t-4| = 8; naive errs 2k at step k (mean 5), snaive 8."""
    y = _trend()
    args = ([y], [28], [np.array([28, 32])], 4, 4)
    naive = acc.score(*args, acc.naive)
    assert naive["mase"] == pytest.approx(5 / 8) and naive["mae"] == pytest.approx(5.0)
    assert naive["per_series"] == [pytest.approx(5 / 8)]
    snaive = acc.score(*args, acc.seasonal_naive(4))
    assert snaive["mase"] == pytest.approx(1.0) and snaive["rmse"] == pytest.approx(8.0)


def test_ets_on_a_hand_made_series():
    pytest.importorskip("statsforecast")
    y = _trend()
    result = acc.score([y], [28], [np.array([28, 32])], 4, 4, acc.ets(4))
    assert result["mase"] == pytest.approx(0.0, abs=1e-3)  # a linear trend: Holt's method is exact
    t = np.arange(200)
    periodic = 50 + 0.1 * t + 5 * np.sin(2 * np.pi * t / 30)  # a season over 24: STL + ETS
    failures: list[str] = []
    result = acc.score([periodic], [120], [np.array([150, 170])], 30, 30, acc.ets(30, failures))
    assert not failures and result["mase"] < 0.1
