"""`auto` settings: season and lookback from the frequency and the series' lengths; batch fitting."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from pipeline.config import auto, load_config
from pipeline.library.errors import ConfigError
from pipeline.library.records import IngestRecord
from pipeline.stages.train import fit_batch
from tests.conftest import cli_in_process, series_table, write_config


@pytest.mark.parametrize(
    ("freq", "season"),
    [
        ("MS", 12),
        ("ME", 12),
        ("BMS", 12),
        ("QS-JAN", 4),
        ("QE-DEC", 4),
        ("W-FRI", 52),
        ("W", 52),
        ("7D", 52),
        ("D", 7),
        ("B", 5),
        ("h", 24),
        ("2h", 12),
        ("30min", 48),
        ("15min", 96),
        ("5min", 288),
        ("min", 1440),
        ("3MS", 4),
        ("SMS", 24),
        ("YS-JAN", 1),  # yearly data: no season, seasonal naive is naive
        ("7h", 1),  # 7 h steps do not tile a day
        ("2D", 1),  # nor do 2-day steps tile a week
        ("s", 1),  # 86,400 steps a day: too long a season to be useful
    ],
)
def test_season_follows_the_calendar_cycle_of_the_frequency(freq: str, season: int):
    assert auto.season_for(freq) == season


@pytest.mark.parametrize(
    ("season", "horizon", "shortest_train", "lookback"),
    [
        (12, 12, 142, 60),  # monthly (a10: 204 points, 70% train): five years
        (4, 8, 152, 20),  # quarterly, long horizon: five seasons beat two horizons
        (4, 24, 152, 48),  # ... a longer one: two horizons beat five seasons
        (52, 52, 948, 260),  # weekly: five years
        (48, 48, 14016, 240),  # half-hourly vic_elec with its day only: five days
        (12, 12, 60, 24),  # a short series: at most half of what the train part leaves
        (12, 12, 62, 25),  # ... two thirds hold no more whole seasons (two) than half does: half
        (12, 12, 90, 48),  # ... they hold four, half (39) three: four
        (1, 40, 100, 30),  # no season: half, even where two horizons want more
        (336, 48, 2823, 1680),  # taylor (eight weeks of half-hourly train part): five whole weeks in two thirds
        (336, 48, 2400, 1344),  # ... seven weeks: four whole weeks, more than half (1176)
    ],
)
def test_auto_lookback(season: int, horizon: int, shortest_train: int, lookback: int):
    assert auto.auto_lookback(season, horizon, shortest_train) == lookback


def test_auto_lookback_with_no_room_is_a_config_error():
    with pytest.raises(ConfigError, match=r"window.lookback: auto: the shortest train part \(13 steps\)"):
        auto.auto_lookback(12, 12, 13)


def _meta(freq: str, train_ends: list[int]) -> IngestRecord:
    table = series_table([{"id": str(i), "length": t + 20, "train_end": t} for i, t in enumerate(train_ends)])
    return IngestRecord("fingerprint", freq, "standard", "none", int(table.lengths.sum()), table)


def test_resolve_fills_every_auto_and_keeps_explicit_values():
    cfg = load_config(None, ["window.horizon=12"])
    resolved = auto.resolve(cfg, _meta("MS", [300, 142]))
    assert (resolved.window.lookback, resolved.evaluate.season_length, resolved.model.residual_season) == (60, 12, 12)
    assert resolved.model.season_average == 3  # the 60-step lookback holds five seasons; the plain profile takes three
    assert cfg.window.lookback == "auto"  # the user's config is left as written

    explicit = ["window.lookback=20", "evaluate.season_length=6", "model.residual_season=0"]
    explicit = [*explicit, "model.season_average=1", "model.seasons=[]", "model.recurrent_steps=20"]
    explicit = load_config(None, [*explicit, "data.calendar=[]", "data.transform=none"])
    assert auto.resolve(explicit, _meta("MS", [300])) is explicit
    mixed = load_config(None, ["window.horizon=12", "window.lookback=10"])
    out = auto.resolve(mixed, _meta("MS", [300]))
    assert (out.window.lookback, out.evaluate.season_length, out.model.residual_season) == (10, 12, 0)
    assert out.model.season_average == 1


def test_explicit_residual_season_longer_than_an_auto_lookback_is_a_config_error():
    cfg = load_config(None, ["window.horizon=12", "model.residual_season=48"])
    with pytest.raises(
        ConfigError,
        match=r"model.residual_season \(48\) x model.season_average \(1\) is longer than window.lookback \(24\)",
    ):
        auto.resolve(cfg, _meta("MS", [60]))


@pytest.mark.parametrize(
    ("batch", "n_train", "world", "accum", "expected"),
    [
        (256, 10_000, 1, 1, 256),  # fits: unchanged
        (256, 96, 1, 1, 64),  # a10-sized: largest power of two that fits
        (256, 96, 2, 1, 64),  # ... the same on two processes (world-size invariance)
        (256, 256, 2, 2, 256),
        (256, 3, 2, 1, 2),
    ],
)
def test_fit_batch(batch: int, n_train: int, world: int, accum: int, expected: int, caplog):
    cfg = load_config(None, [f"train.batch_size={batch}", f"train.gradient_accumulation_steps={accum}"])
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        fitted = fit_batch(cfg, n_train, world)
    assert fitted.train.batch_size == expected
    assert ("batch is" in caplog.text) == (expected != batch)


@pytest.mark.parametrize(
    ("max_steps", "batch", "n_train", "world", "expected"),
    [
        ("auto", 256, 13_825, 1, 400),  # vic_elec: 54 steps a pass, so the floor of 400
        ("auto", 256, 96, 1, 400),  # a10: fitted batch 64, still 400
        ("auto", 256, 256_000, 1, 1000),  # large data: one pass over its windows
        ("auto", 256, 256_000, 2, 1000),  # the same on two processes (the batch is global)
        ("auto", 256, 256_001, 1, 1001),
        (50, 256, 256_000, 1, 50),  # a number is kept
    ],
)
def test_auto_training_budget_grows_with_the_data(max_steps, batch: int, n_train: int, world: int, expected: int):
    cfg = load_config(None, [f"train.max_steps={max_steps}", f"train.batch_size={batch}"])
    assert fit_batch(cfg, n_train, world).train.max_steps == expected
    assert load_config("configs/default.yaml").train.max_steps == "auto"


def test_fit_batch_that_the_world_size_does_not_divide_is_a_config_error():
    cfg = load_config(None, ["train.batch_size=256"])
    with pytest.raises(ConfigError, match=r"train.batch_size \(1, fitted to 1 training windows\) must be divisible"):
        fit_batch(cfg, 1, 2)
    with pytest.raises(ConfigError, match=r"train.batch_size \(256\) must be divisible by the number of processes"):
        fit_batch(load_config(None, ["train.batch_size=256"]), 10_000, 3)


@pytest.mark.slow
def test_monthly_data_runs_with_auto_settings_end_to_end(tmp_path):
    """A short monthly series with the library defaults (batch 256, auto lookback/season) runs through."""
    times = pd.date_range("2000-01-01", periods=180, freq="MS")
    t = np.arange(180)
    values = 100 + 0.5 * t + 10 * np.sin(2 * np.pi * t / 12) + np.random.default_rng(0).normal(0, 1, 180)
    pd.DataFrame({"time": times.strftime("%Y-%m-%d"), "value": values}).to_csv(tmp_path / "m.csv", index=False)
    config = write_config(
        tmp_path,
        {
            "data": {"source": str(tmp_path / "m.csv"), "target_column": "value", "val_size": 0.1, "test_size": 0.2},
            "window": {"horizon": 12},
            "model": {"hidden_size": 16, "num_layers": 1},
            "train": {"max_steps": 30, "eval_every": 10, "checkpoint_every": 0, "patience": 0},
            "evaluate": {},
            "export": {"onnx": False},
        },
    )
    done = cli_in_process("run", "--config", str(config))
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    window = json.loads((run / "window" / "meta.json").read_text())
    assert window["lookback"] == 60  # five seasons: half of the train part (126) after a horizon is 57, two thirds 76
    assert json.loads((run / "evaluate" / "metrics.json").read_text())["season_length"] == 12
    train = json.loads((run / "train" / "meta.json").read_text())
    assert train["model"]["residual_season"] == 12 and train["model"]["instance_norm"] is True
    assert "batch is 32" in done.stderr  # 180 points leave 55 training windows for the default batch of 256
    spec = json.loads((run / "export" / "forecaster.json").read_text())
    assert spec["lookback"] == 60


def test_validation_windows_are_capped_evenly_and_the_same_for_any_world_size():
    from pipeline.stages.train import spread_subset

    windows = np.stack([np.zeros(100, dtype=np.int64), np.arange(100)], axis=1)
    picked = spread_subset(windows, 5)
    assert picked[:, 1].tolist() == [0, 25, 50, 74, 99]  # evenly spread, first and last kept
    assert spread_subset(windows, 0) is windows and spread_subset(windows, 100) is windows
