"""Refit backtest: one model per fold, trained only on the data before its cutoff, cached like a stage."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file

from pipeline.library.backtest import refit_windows
from pipeline.library.errors import ConfigError
from pipeline.library.model import ModelSpec, build_model
from pipeline.library.store import cut_table

from .conftest import cli_in_process, series_table, torchrun, write_config


def _run_backtest(config) -> tuple:
    """(the finished command, run dir, metrics.json's backtest) of `lstm-pipeline run`, which must succeed."""
    done = cli_in_process("run", "--config", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    run = config.parent / "run"
    return done, run, json.loads((run / "evaluate/metrics.json").read_text())["backtest"]


def test_refit_folds_may_reach_before_the_test_part():
    # length 100, validation 10 steps, lookback 10, horizon 6, 3 folds 20 apart: fold 1 starts 46 steps before the end
    pairs, fold = refit_windows(np.array([100]), np.array([0]), 10, 10, 6, 3, 20, 12, ["a"])
    assert fold.tolist() == [1, 2, 3]
    assert (pairs[:, 1] + 10).tolist() == [54, 74, 94]


def test_a_fold_without_room_for_train_and_validation_parts_names_the_series():
    lengths = np.array([300, 200])
    refit_windows(lengths, np.array([0, 1]), 30, 24, 6, 14, 10, 12, ["a", "b"])  # b: cut 64, train part 34
    with pytest.raises(ConfigError, match=r"fold 1 of 15 cuts series 'b' 146 steps before its end") as err:
        refit_windows(lengths, np.array([0, 1]), 30, 24, 6, 15, 10, 12, ["a", "b"])  # b: cut 54, train part 24
    assert "train part of 24 and a validation part of 30" in str(err.value)
    with pytest.raises(ConfigError, match="series 'a'"):  # a fraction of what remains: 0.5 of 40 leaves 20 < 30
        refit_windows(np.array([60]), np.array([0]), 0.5, 24, 6, 3, 7, 12, ["a"])


def test_the_fold_table_keeps_every_column_and_only_rows_before_each_cutoff():
    table = pa.table({"target": np.arange(10, dtype=np.float32), "temp": np.arange(100, 110, dtype=np.float64)})
    cut = cut_table(table, np.array([0, 4]), np.array([0, 1]), np.array([2, 3]))  # series of 4 and 6 rows
    assert cut.column_names == ["target", "temp"]
    assert cut.column("target").to_pylist() == [0, 1, 4, 5, 6]
    assert cut.column("temp").to_pylist() == [100, 101, 104, 105, 106]
    assert cut.column("target").num_chunks == 1


def test_fold_statistics_replace_the_scalers_but_not_the_full_series_splits():
    records = [
        {"id": "a", "length": 50, "train_end": 30, "val_end": 40, "mean": 1.0, "scale": 2.0},
        {"id": "b", "length": 60, "train_end": 40, "val_end": 50, "mean": 3.0, "scale": 4.0},
    ]
    cov = {"covariate_mean": [0.0], "covariate_scale": [1.0]}
    main = series_table([{**r, **cov} for r in records])
    fold = series_table(
        [{"id": "b", "length": 45, "train_end": 35, "val_end": 45, "mean": 5.0, "scale": 6.0, "covariate_mean": [7.0],
          "covariate_scale": [1.0]}]
    )  # fmt: skip
    out = main.with_stats(main.stats.with_rows([1], fold.stats)).to_json()
    assert out[0] == main.to_json()[0]
    assert {k: v for k, v in out[1].items() if k != "start"} == {
        "id": "b",
        "length": 60,
        "train_end": 40,
        "val_end": 50,
        "mean": 5.0,
        "scale": 6.0,
        "covariate_mean": [7.0],
        "covariate_scale": [1.0],
    }
    assert main.stats.with_rows([1], fold.stats).index.tolist() == [0, 0]  # b: its row in the fold model's embedding


def _fold_block(stderr: str, k: int) -> str:
    """The log lines of refit fold k (from its header to the next fold's or the end of the folds)."""
    return re.split(r"evaluate: refit fold \d+/\d+: \d+ series cut", stderr)[k]


@pytest.mark.slow
def test_refit_end_to_end_no_leakage_and_cached_folds(tmp_path):
    lengths, lookback, horizon, season, folds, step, val = {"a": 300, "b": 200}, 24, 6, 12, 3, 10, 30
    rng = np.random.default_rng(0)
    ys = {}
    for i, (sid, n) in enumerate(lengths.items()):
        t = np.arange(n)
        ys[sid] = 10 * (i + 1) + 3 * np.sin(2 * np.pi * t / season) + rng.normal(0, 0.5, n) + 0.01 * t

    def write_csv(values: dict) -> None:
        frames = [
            pd.DataFrame({"site": sid, "time": pd.date_range("2024-01-01", periods=len(y), freq="h"), "y": y})
            for sid, y in values.items()
        ]
        pd.concat(frames).to_csv(tmp_path / "two.csv", index=False)

    write_csv(ys)
    config = write_config(
        tmp_path,
        {
            "data": {
                "source": str(tmp_path / "two.csv"), "id_column": "site", "target_column": "y",
                "val_size": val, "test_size": 20, "calendar": "none",
                "transform": "none",  # the statistics are checked by hand below, on the values as they are
            },
            "window": {"lookback": lookback, "horizon": horizon, "stride": 1},
            "train.batch_size": 16,
            "train.max_steps": 6,
            "train.eval_every": 3,
            "train.checkpoint_every": 0,
            "train.num_threads": 1,
            "evaluate.season_length": season,
            "evaluate.backtest": {"folds": folds, "step": step, "refit": True},
            "export.onnx": False,
        },
    )  # fmt: skip
    first, run, bt = _run_backtest(config)
    assert (bt["folds"], bt["step"], bt["refit"]) == (folds, step, True)
    assert [f["steps_before_end"] for f in bt["per_fold"]] == [26, 16, 6]  # fold 1 reaches before the test part
    for entry in bt["per_fold"]:
        assert set(entry) >= {"model", "baselines", "refit"} and entry["n_windows"] == 2
        assert set(entry["baselines"]) == {"naive", "seasonal_naive"}
    assert set(bt["aggregate"]["model"]) == {"mae", "rmse", "smape", "mase"}
    assert "refit: folds lie" in (run / "evaluate/report.md").read_text()
    for k in (1, 2, 3):
        assert f"refit fold {k}/3" in first.stderr

    # fold 1 never saw data at or after its cutoff: its ingest ends there, its scaler and MASE scale come from its
    # own train part, and its model's forecast from those statistics gives the fold's metrics
    record = run / "evaluate/refit/fold_1"
    fold_ingest = json.loads((record / "ingest_meta.json").read_text())
    assert fold_ingest["transform"] == "none"
    spec = ModelSpec(**json.loads((record / "train_meta.json").read_text())["model"])
    model = build_model(spec)
    model.load_state_dict(load_file(str(record / "model.safetensors")))
    model.eval()
    errors, scaled_errors = [], []
    for r in fold_ingest["series"]:
        y, y32 = ys[r["id"]], ys[r["id"]].astype(np.float32).astype(np.float64)
        cutoff = len(y) - 26
        train_end = cutoff - val
        assert (r["length"], r["train_end"], r["val_end"]) == (cutoff, train_end, cutoff)
        assert r["mean"] == pytest.approx(y32[:train_end].mean(), rel=1e-9)
        assert r["scale"] == pytest.approx(y32[:train_end].std(), rel=1e-9)
        x = (y.astype(np.float32)[cutoff - lookback : cutoff] - np.float32(r["mean"])) / np.float32(r["scale"])
        with torch.no_grad():
            forecast = model(torch.from_numpy(x)[None, :, None]).double().numpy()[0] * r["scale"] + r["mean"]
        err = np.abs(forecast - y32[cutoff : cutoff + horizon])
        mase_scale = np.mean(np.abs(y32[season:train_end] - y32[: train_end - season]))
        errors += list(err)
        scaled_errors += list(err / mase_scale)
    assert bt["per_fold"][0]["model"]["mae"] == pytest.approx(np.mean(errors), rel=1e-5)
    assert bt["per_fold"][0]["model"]["mase"] == pytest.approx(np.mean(scaled_errors), rel=1e-5)

    # a re-run with unchanged inputs retrains nothing; a changed evaluate section reuses every fold model
    again = cli_in_process("evaluate", "--config", str(config))
    assert again.returncode == 0 and "evaluate: up to date" in again.stderr
    replot = cli_in_process("evaluate", "--config", str(config), "evaluate.plot_series=1")
    assert replot.returncode == 0, replot.stderr[-3000:]
    assert replot.stderr.count("train: up to date") == 3 and "train: world size" not in replot.stderr

    # new values at and after fold 1's cutoff: fold 1's model is kept as it was; folds 2 and 3 retrain
    fold1_weights = (record / "model.safetensors").read_bytes()
    changed = {sid: np.concatenate([y[: len(y) - 26], y[len(y) - 26 :] * 1.5 + 3]) for sid, y in ys.items()}
    write_csv(changed)
    second = cli_in_process("run", "--config", str(config))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "train: up to date" in _fold_block(second.stderr, 1)
    assert "train: world size" in _fold_block(second.stderr, 2) and "train: world size" in _fold_block(second.stderr, 3)
    assert (record / "model.safetensors").read_bytes() == fold1_weights
    assert json.loads((record / "ingest_meta.json").read_text())["series"] == fold_ingest["series"]

    # --force retrains every fold
    forced = cli_in_process("evaluate", "--config", str(config), "--force")
    assert forced.returncode == 0 and forced.stderr.count("train: world size") == 3

    # too many folds for series 'b' (200 steps): exit 2, one line naming it
    too_many = cli_in_process("evaluate", "--config", str(config), "evaluate.backtest.folds=15")
    assert too_many.returncode == 2
    assert "evaluate.backtest.refit: fold 1 of 15 cuts series 'b'" in too_many.stderr
    assert len(too_many.stderr.strip().splitlines()) == 1

    # refit: false keeps the folds inside the test part: 26 steps do not fit a 20-step test part
    inside = cli_in_process("evaluate", "--config", str(config), "evaluate.backtest.refit=false")
    assert inside.returncode == 2 and "series 'a' has a test part of 20 steps" in inside.stderr
    plain = cli_in_process(
        "evaluate", "--config", str(config), "evaluate.backtest.refit=false", "evaluate.backtest.step=4"
    )
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "refit fold" not in plain.stderr and not (run / "evaluate/refit").exists()
    assert json.loads((run / "evaluate/metrics.json").read_text())["backtest"]["refit"] is False


@pytest.mark.slow
def test_two_processes_train_the_fold_models_like_one(tmp_path):
    """evaluate under torchrun trains every fold with DDP (world size 2) and scores the folds as 1 process does."""
    config = write_config(
        tmp_path,
        {
            "train.max_steps": 8,
            "train.checkpoint_every": 0,
            "train.num_threads": 1,
            "evaluate.backtest": {"folds": 2, "refit": True},
            "export.onnx": False,
        },
    )
    single = cli_in_process("run", "--config", str(config))
    assert single.returncode == 0, single.stderr[-3000:]
    one = json.loads((tmp_path / "run/evaluate/metrics.json").read_text())["backtest"]
    double = torchrun(2, "evaluate", "--config", str(config), "--force")
    assert double.returncode == 0, double.stderr[-3000:]
    two = json.loads((tmp_path / "run/evaluate/metrics.json").read_text())["backtest"]
    for k in (1, 2):
        meta = json.loads((tmp_path / f"run/evaluate/refit/fold_{k}/train_meta.json").read_text())
        assert meta["setup"]["world_size"] == 2
    for a, b in zip(one["per_fold"], two["per_fold"], strict=True):
        assert b["model"]["mase"] == pytest.approx(a["model"]["mase"], rel=1e-4)
        assert b["baselines"] == a["baselines"]


@pytest.mark.slow
def test_refit_with_covariates_slices_every_column_and_rescales_them_on_the_fold(tmp_path):
    """Past, future and static covariates and a series embedding: the fold ingest carries them, cut and rescaled."""
    from .test_covariates import _frame

    frame = _frame()
    frame.to_csv(tmp_path / "shop.csv", index=False)
    config = write_config(
        tmp_path,
        {
            "data": {
                "source": str(tmp_path / "shop.csv"), "id_column": "id", "target_column": "y", "freq": "h",
                "val_size": 0.15, "test_size": 0.15, "calendar": "none",
                "past_covariates": ["temp"], "future_covariates": ["flag"], "static_covariates": ["size"],
            },
            "model.series_embedding": 3,
            "window": {"lookback": 24, "horizon": 6},
            "train.max_steps": 6,
            "train.checkpoint_every": 0,
            "train.num_threads": 1,
            "evaluate": {"plot_series": 0, "backtest": {"folds": 2, "step": 30, "refit": True}},
            "export.onnx": False,
        },
    )  # fmt: skip
    _, run, bt = _run_backtest(config)
    assert [f["steps_before_end"] for f in bt["per_fold"]] == [36, 6] and bt["refit"] is True
    assert (run / ".refit/fold_1/train/best/model.safetensors").is_file()
    assert not (run / ".refit/fold_1/train/checkpoints").exists()  # a finished fold keeps no checkpoints
    meta = json.loads((run / ".refit/fold_1/ingest/meta.json").read_text())
    table = pa.ipc.open_file(pa.memory_map(str(run / ".refit/fold_1/ingest/values.arrow"))).read_all()
    assert table.column_names == ["target", "covariate:temp", "covariate:flag"]
    assert table.num_rows == sum(r["length"] for r in meta["series"]) == 3 * (300 - 36)
    start = 0
    for r in meta["series"]:
        rows = frame[frame["id"] == r["id"]].iloc[: r["train_end"]]
        temp = table.column("covariate:temp").to_numpy()[start : start + r["train_end"]]
        np.testing.assert_array_equal(temp, rows["temp"].to_numpy(dtype=np.float32))
        assert r["covariate_mean"][0] == pytest.approx(temp.astype(np.float64).mean(), rel=1e-9)
        assert r["static"] is not None
        start += r["length"]
    assert meta["static_covariates"]["names"] == ["size"]
    assert meta["static_covariates"]["mean"] == pytest.approx([2.0])


@pytest.mark.slow
def test_each_fold_resolves_its_auto_settings_on_its_own_data(tmp_path):
    """A weekly cycle that starts after fold 1's cutoff: the main run keeps the week, fold 1 cannot know of it.

    Hourly data with a daily cycle and a wandering level throughout; from step 864 on, weekends run 30 higher. The main
    run's validation part (1184-1352) shows the week, so ingest keeps seasons 24 and 168 and the lookback is
    672. Fold 1 is cut at 864: a season, a lookback or a transform taken from the main run would have been read
    from values after its cutoff. It keeps the day alone (the level wanders: last week is a worse guess than
    yesterday) and its lookback follows from its own train part; fold 2, cut at 1376, sees the week again.
    """
    n, effect = 1400, 864
    rng = np.random.default_rng(1)
    t = np.arange(n)
    times = pd.date_range("2024-01-01", periods=n, freq="h")  # a Monday
    weekend = (times.dayofweek >= 5) & (t >= effect)
    level = 200 + np.cumsum(rng.normal(0, 0.3, n))
    y = level + 40 * np.sin(2 * np.pi * t / 24) + 30 * weekend + rng.normal(0, 0.1, n)
    pd.DataFrame({"time": times, "y": y}).to_csv(tmp_path / "week.csv", index=False)
    config = write_config(
        tmp_path,
        {
            "data": {
                "source": str(tmp_path / "week.csv"), "target_column": "y", "val_size": 168, "test_size": 48,
                "calendar": "none",  # the inputs are the target alone: the fold's forecast is recomputed by hand
            },
            "window": {"lookback": "auto", "horizon": 24, "stride": 1},
            "train.max_steps": 6,
            "train.eval_every": 3,
            "train.checkpoint_every": 0,
            "evaluate": {"season_length": 24, "plot_series": 0, "backtest": {"folds": 2, "step": 512, "refit": True}},
            "export.onnx": False,
        },
    )  # fmt: skip
    done, run, bt = _run_backtest(config)
    main = json.loads((run / "train/meta.json").read_text())
    assert main["model"]["seasons"] == [24, 168]
    assert json.loads((run / "window/meta.json").read_text())["lookback"] == 672
    assert [f["steps_before_end"] for f in bt["per_fold"]] == [536, 24]
    chosen = [(f["refit"]["seasons"], f["refit"]["lookback"]) for f in bt["per_fold"]]
    assert chosen == [([24], 120), ([24, 168], 672)]
    assert "evaluate: refit fold 1: data.transform auto ->" in done.stderr

    # fold 1's ingest decided the week and the transform on its 696 train and 168 validation steps
    record = run / "evaluate/refit/fold_1"
    fold_ingest = json.loads((record / "ingest_meta.json").read_text())
    assert [(c["season"], c["kept"]) for c in fold_ingest["seasons"]["checks"]] == [(24, True), (168, False)]
    assert fold_ingest["transform_check"] is not None
    transform = fold_ingest["transform"]
    spec = ModelSpec(**json.loads((record / "train_meta.json").read_text())["model"])
    assert (spec.residual_season, spec.seasons) == (24, ())

    # the fold's metrics are its model's forecast from the 120 steps before the cutoff, with its own transform
    model = build_model(spec)
    model.load_state_dict(load_file(str(record / "model.safetensors")))
    model.eval()
    (r,) = fold_ingest["series"]
    y32 = y.astype(np.float32)
    inputs = y32[effect - 120 : effect].astype(np.float64)
    inputs = np.log1p(inputs) if transform == "log1p" else inputs
    x = ((inputs - r["mean"]) / r["scale"]).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(x)[None, :, None]).double().numpy()[0] * r["scale"] + r["mean"]
    forecast = np.expm1(out) if transform == "log1p" else out
    mae = np.abs(forecast - y32[effect : effect + 24].astype(np.float64)).mean()
    assert bt["per_fold"][0]["model"]["mae"] == pytest.approx(mae, rel=1e-4)
