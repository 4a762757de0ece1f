"""Rolling-origin backtest: the fold index as a pure function, and fold metrics against a hand computation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from pipeline.library.backtest import backtest_windows
from pipeline.library.errors import ConfigError
from pipeline.library.model import ModelSpec, build_model

from .conftest import cli_in_process, write_config


def test_folds_end_at_the_series_end_and_step_back():
    # lengths 100 and 80, val_end 70 and 50, lookback 10, horizon 6, 3 folds 4 apart
    pairs, fold = backtest_windows(np.array([100, 80]), np.array([70, 50]), np.array([0, 1]), 10, 6, 3, 4)
    target_start = pairs[:, 1] + 10
    assert fold.tolist() == [1, 2, 3, 1, 2, 3]
    assert pairs[:, 0].tolist() == [0, 0, 0, 1, 1, 1]
    assert target_start.tolist() == [86, 90, 94, 66, 70, 74]  # fold 3 ends at the last point (94 + 6 = 100)


def test_folds_overlap_when_the_step_is_shorter_than_the_horizon_and_only_listed_series():
    pairs, _ = backtest_windows(np.array([50, 60, 70]), np.array([30, 30, 30]), np.array([2]), 5, 10, 2, 3)
    assert (pairs[:, 1] + 5).tolist() == [57, 60]
    assert set(pairs[:, 0]) == {2}


def test_a_fold_reaching_into_the_validation_part_is_an_error_naming_the_series():
    # fold 1 of 4 (step 6, horizon 6) starts 24 steps before the end: series 'b' has only 20 test steps
    with pytest.raises(ConfigError, match=r"series 'b' has a test part of 20 steps"):
        backtest_windows(np.array([100, 100]), np.array([70, 80]), np.array([0, 1]), 10, 6, 4, 6, ids=["a", "b"])
    pairs, _ = backtest_windows(np.array([100, 100]), np.array([70, 80]), np.array([0, 1]), 10, 6, 3, 6)
    assert len(pairs) == 6  # 3 folds fit: 18 steps <= 20


@pytest.mark.slow
def test_fold_metrics_equal_a_hand_computation(tmp_path):
    n, lookback, horizon, season, folds, step = 240, 24, 6, 12, 3, 4
    t = np.arange(n)
    y = 10 + 3 * np.sin(2 * np.pi * t / 12) + np.random.default_rng(0).normal(0, 0.5, n) + 0.01 * t
    path = tmp_path / "tiny.csv"
    pd.DataFrame({"time": pd.date_range("2024-01-01", periods=n, freq="h"), "y": y}).to_csv(path, index=False)
    config = write_config(
        tmp_path,
        {
            "data": {"source": str(path), "target_column": "y", "val_size": 40, "test_size": 30, "calendar": "none"},
            "window": {"lookback": lookback, "horizon": horizon, "stride": 1},
            "train.batch_size": 16,
            "train.max_steps": 6,
            "train.eval_every": 3,
            "train.checkpoint_every": 0,
            "evaluate.season_length": season,
            "evaluate.backtest": {"folds": folds, "step": step},
            "export.onnx": False,
        },
    )
    result = cli_in_process("run", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    bt = json.loads((run / "evaluate/metrics.json").read_text())["backtest"]
    assert (bt["folds"], bt["step"], bt["refit"]) == (folds, step, False)
    assert [f["steps_before_end"] for f in bt["per_fold"]] == [14, 10, 6]

    # by hand, with plain loops: the buffer holds float32 values, the scaler comes from the float64 train part
    y32 = y.astype(np.float32).astype(np.float64)
    train_end = n - 40 - 30
    mean, std = y[:train_end].mean(), y[:train_end].std()
    mase_scale = np.mean([abs(y32[i] - y32[i - season]) for i in range(season, train_end)])
    meta = json.loads((run / "train/meta.json").read_text())
    model = build_model(ModelSpec(**meta["model"]))
    model.load_state_dict(load_file(str(run / "train/best/model.safetensors")))
    model.eval()
    pooled = {m: [] for m in ("model", "naive", "seasonal_naive")}
    for k, entry in enumerate(bt["per_fold"], start=1):
        origin = n - horizon - (folds - k) * step
        x = (y.astype(np.float32)[origin - lookback : origin] - np.float32(mean)) / np.float32(std)
        with torch.no_grad():
            z = model(torch.from_numpy(x)[None, :, None]).double().numpy()[0]
        forecasts = {
            "model": z * std + mean,
            "naive": [y32[origin - 1]] * horizon,
            "seasonal_naive": [y32[origin + h - season * (1 + h // season)] for h in range(horizon)],
        }
        for method, f in forecasts.items():
            errors = [f[h] - y32[origin + h] for h in range(horizon)]
            pooled[method] += errors
            got = entry["model"] if method == "model" else entry["baselines"][method]
            rel = 1e-5 if method == "model" else 1e-9
            assert got["mae"] == pytest.approx(np.mean(np.abs(errors)), rel=rel)
            assert got["rmse"] == pytest.approx(np.sqrt(np.mean(np.square(errors))), rel=rel)
            assert got["mase"] == pytest.approx(np.mean(np.abs(errors)) / mase_scale, rel=rel)
    agg = bt["aggregate"]
    assert agg["baselines"]["naive"]["mae"] == pytest.approx(np.mean(np.abs(pooled["naive"])), rel=1e-9)
    assert agg["model"]["rmse"] == pytest.approx(np.sqrt(np.mean(np.square(pooled["model"]))), rel=1e-5)
    assert "## Backtest" in (run / "evaluate/report.md").read_text()

    too_many = cli_in_process("evaluate", "--config", str(config), "evaluate.backtest.folds=8")
    assert too_many.returncode == 2
    assert "evaluate.backtest: 8 folds" in too_many.stderr and "series 'series'" in too_many.stderr
    assert len(too_many.stderr.strip().splitlines()) == 1
