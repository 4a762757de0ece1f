"""`data.transform: auto`: the log where the seasonal swing grows with the level, chosen at ingest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import auto, load_config
from pipeline.library.records import IngestRecord
from tests.conftest import run_main, write_config

MONTHS = 204  # 17 years, as the monthly sets of bench/accuracy.py


def _monthly(multiplicative: bool, seed: int = 0) -> np.ndarray:
    """A rising monthly series with a yearly swing: a share of the level (multiplicative) or fixed units (additive)."""
    rng = np.random.default_rng(seed)
    t = np.arange(MONTHS)
    season = np.sin(2 * np.pi * t / 12) + 0.5 * np.sin(4 * np.pi * t / 12)
    if multiplicative:  # 1.5% growth a month, a swing of +-35% of the level, 2% noise
        return 20 * np.exp(0.015 * t) * (1 + 0.35 * season) * np.exp(rng.normal(0, 0.02, MONTHS))
    return 200 + 1.5 * t + 40 * season + rng.normal(0, 4, MONTHS)  # the same rise in a straight line, fixed swing


def _config(tmp_path: Path, values: np.ndarray, **overrides) -> Path:
    frame = pd.DataFrame({"time": pd.date_range("1991-07-01", periods=len(values), freq="MS"), "value": values})
    tmp_path.mkdir(parents=True, exist_ok=True)
    source = tmp_path / "monthly.csv"
    frame.to_csv(source, index=False)
    settings = {
        "data": {"source": str(source), "time_column": "time", "target_column": "value", "freq": "MS"},
        "data.val_size": 0.1,
        "data.test_size": 0.2,
        "window": {"lookback": "auto", "horizon": 12, "stride": 1, "test_stride": 12},
        "evaluate.season_length": "auto",
        **overrides,
    }
    return write_config(tmp_path, settings)


def _ingest(config: Path) -> dict:
    code, err = run_main(["ingest", "--config", str(config)])
    assert code == 0, err[-2000:]
    return json.loads((Path(load_config(config).output_dir) / "ingest" / "meta.json").read_text())


def test_a_swing_that_grows_with_the_level_gets_the_log(tmp_path):
    config = _config(tmp_path, _monthly(multiplicative=True))
    meta = _ingest(config)
    check = meta["transform_check"]
    assert meta["transform"] == "log1p" and check["transform"] == "log1p", check
    assert check["loss"]["log1p"] < 0.8 * check["loss"]["none"], check  # far apart, not a near tie
    assert check["windows"] == 92  # every window ending by the validation part's end (163): lookback 60, horizon 12
    assert "better by more than a standard error" in check["why"]
    ingest = IngestRecord.from_json(meta)
    values = _monthly(multiplicative=True)[: int(ingest.series.train_end[0])]
    assert ingest.series.stats.loc[0] == pytest.approx(np.log1p(values).mean())  # statistics of the log's train part
    resolved = auto.resolve(load_config(config), ingest)
    assert resolved.data.transform == "log1p"  # what every later stage runs with


def test_the_test_part_does_not_move_the_choice(tmp_path):
    """No leakage: the check reads the windows up to the validation part's end, whatever the test part holds (kept
    >= 0: a negative value anywhere rules the log out, its inputs at test time included)."""
    values = _monthly(multiplicative=True)
    first = _ingest(_config(tmp_path / "a", values))["transform_check"]
    changed = values.copy()
    changed[-41:] = changed[-41:][::-1] * 3  # the 41 test points: reversed and tripled
    assert _ingest(_config(tmp_path / "b", changed))["transform_check"] == first


def test_a_fixed_swing_keeps_the_values(tmp_path):
    meta = _ingest(_config(tmp_path, _monthly(multiplicative=False)))
    check = meta["transform_check"]
    assert meta["transform"] == "none" and check["transform"] == "none", check
    assert check["loss"]["none"] <= check["loss"]["log1p"] or "less than a standard error" in check["why"]
    ingest = IngestRecord.from_json(meta)
    assert auto.resolve(load_config(tmp_path / "config.yaml"), ingest).data.transform == "none"


def test_a_negative_value_keeps_the_values_and_says_which_series(tmp_path):
    values = _monthly(multiplicative=True)
    values[5] = -1.0
    check = _ingest(_config(tmp_path, values))["transform_check"]
    assert check["transform"] == "none"
    assert check["why"] == "series 'series' has a value below 0 (log1p needs values >= 0)"


def test_a_transform_set_in_the_config_is_not_checked(tmp_path):
    meta = _ingest(_config(tmp_path, _monthly(multiplicative=True), **{"data.transform": "none"}))
    assert meta["transform"] == "none" and "transform_check" not in meta


def test_a_warm_start_keeps_the_transform_of_its_weights(tmp_path):
    """A nightly retrain from the champion keeps the space its correction was learned in, whatever the data say."""
    start = tmp_path / "champion"
    start.mkdir()
    (start / "model.safetensors").write_bytes(b"")  # only the saved forecaster.json is read at ingest
    (start / "forecaster.json").write_text(json.dumps({"transform": "log1p", "model": {}}))
    config = _config(tmp_path, _monthly(multiplicative=False), **{"train.init_from": str(start)})
    meta = _ingest(config)
    assert meta["transform"] == "log1p"
    assert meta["transform_check"]["why"] == "kept from the starting weights (train.init_from)"
    values = _monthly(multiplicative=False)
    values[7] = -3.0
    code, err = run_main(["ingest", "--config", str(_config(tmp_path, values, **{"train.init_from": str(start)}))])
    assert code == 2
    assert "series 'series' has a value below 0, and the starting weights (train.init_from)" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_run_on_the_log_reports_it_and_serves_in_the_data_units(tmp_path):
    values = _monthly(multiplicative=True)
    overrides = {
        "model": {"hidden_size": 16, "num_layers": 1},
        "train.max_steps": 20,
        "train.checkpoint_every": 0,
        "train.loss": "mae",
        "evaluate.plot_series": 0,
        "export.onnx": True,
    }
    config = _config(tmp_path, values, **overrides)
    code, err = run_main(["run", "--config", str(config)])
    assert code == 0, err[-2000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert metrics["transform"] == "log1p"
    assert "target transform: log1p." in (run / "evaluate" / "report.md").read_text()
    forecaster = json.loads((run / "export" / "forecaster.json").read_text())
    assert forecaster["transform"] == "log1p"
    assert json.loads((run / "train" / "meta.json").read_text())["config"]["data"]["transform"] == "log1p"
    # in the data's units: seasonal naive lags a year of growth (20%), the log's profile carries it
    assert metrics["model"]["mae"] < 0.5 * metrics["baselines"]["seasonal_naive"]["mae"], metrics["model"]


@pytest.mark.parametrize("limit", [5, 40, 10_000])
def test_the_windows_compared_are_the_train_stages_mix_without_listing_them_all(monkeypatch, limit):
    """Up to MAX_WINDOWS windows ending in the train part and as many ending after it, evenly spaced, picked from
    the counts alone (listing every window of 10,000 long series would take gigabytes)."""
    from pipeline.library import transform_choice

    monkeypatch.setattr(transform_choice, "MAX_WINDOWS", limit)
    train_end, val_end, lookback, horizon = np.array([30, 12, 50, 40]), np.array([36, 20, 60, 40]), 8, 4
    every = {"train": [], "rest": []}
    for i, (t, v) in enumerate(zip(train_end, val_end)):
        for start in range(v - lookback - horizon + 1):
            every["train" if start + lookback + horizon <= t else "rest"].append((i, start))
    expected = []
    for part in every.values():
        rows = np.array(part)
        if len(rows) > limit:
            rows = rows[np.linspace(0, len(rows) - 1, limit).round().astype(int)]
        expected.append(rows)
    got = transform_choice._windows(train_end, val_end, lookback, horizon)
    np.testing.assert_array_equal(got, np.concatenate(expected))
    assert len(got) == min(limit, 19 + 1 + 39 + 29) + min(limit, 6 + 8 + 10 + 0)  # per series, in train + after


def test_a_window_that_cannot_be_resolved_is_left_to_the_window_stage(tmp_path):
    """Ingest is about the data: a horizon the train part cannot hold is the window stage's error, not ingest's."""
    config = _config(tmp_path, _monthly(multiplicative=True)[:60], **{"window.horizon": 42})
    check = _ingest(config)["transform_check"]
    assert check["transform"] == "none" and check["why"].startswith("not checked: window.lookback: auto:"), check
    code, err = run_main(["window", "--config", str(config)])
    assert code == 2 and "window.lookback: auto: the shortest train part" in err
