"""Forecasts for series the model never saw: statistics from their own history, accuracy as for trained ones."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import SyntheticConfig
from pipeline.library.errors import DataError
from pipeline.library.forecaster import Forecaster
from pipeline.library.history_stats import stats_from_history
from pipeline.library.model import build_model
from pipeline.library.synthetic import generate_synthetic

from .conftest import cli_in_process, write_config

HORIZON, SEASON, ORIGINS = 24, 24, 4
TRAINED, HELD_OUT = 40, 10


def _train(tmp, frame: pd.DataFrame) -> Forecaster:
    frame.to_csv(tmp / "data.csv", index=False)
    config = write_config(
        tmp,
        {
            "data": {"source": str(tmp / "data.csv"), "id_column": "series", "target_column": "value",
                     "freq": "h", "val_size": 0.15, "test_size": 0.15},
            "window.lookback": 96, "window.horizon": HORIZON, "window.stride": 2,
            "model.hidden_size": 32, "train.max_steps": 300, "train.batch_size": 128, "train.lr": 0.005,
            "train.eval_every": 50, "train.checkpoint_every": 0, "evaluate.plot_series": 0, "export.onnx": False,
        },
    )  # fmt: skip
    result = cli_in_process("run", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    return Forecaster.load(tmp / "run" / "export")


@pytest.fixture(scope="module")
def global_model(tmp_path_factory):
    """A model trained on 40 series of the generator; 10 more series of the same generator held out."""
    tmp = tmp_path_factory.mktemp("global")
    data = generate_synthetic(SyntheticConfig(n_series=TRAINED + HELD_OUT, length=900, freq="h", seed=11))
    ids = sorted(data["series"].unique())
    train_ids, new_ids = ids[:TRAINED], ids[TRAINED:]
    return _train(tmp, data[data["series"].isin(train_ids)]), data, train_ids, new_ids, tmp


def _mase_by_series(forecaster: Forecaster, data: pd.DataFrame) -> pd.Series:
    """Mean MASE over the last ORIGINS horizons of each series (inside the test part of the trained ones),
    each scaled by the seasonal-naive error of the history it was given; forecast in one call per origin."""
    scores: dict[str, list[float]] = {}
    from_end = data.groupby("series").cumcount(ascending=False)  # 0 at each series' last point
    for k in range(ORIGINS, 0, -1):
        cut = data[from_end >= k * HORIZON]
        actual = data[(from_end < k * HORIZON) & (from_end >= (k - 1) * HORIZON)]
        forecast = forecaster.predict(cut)
        for sid, got in forecast.groupby("series"):
            history = cut.loc[cut["series"] == sid, "value"].to_numpy()
            scale = np.abs(history[SEASON:] - history[:-SEASON]).mean()
            truth = actual.loc[actual["series"] == sid, "value"].to_numpy()
            scores.setdefault(sid, []).append(np.abs(got["forecast"].to_numpy() - truth).mean() / scale)
    return pd.Series({sid: float(np.mean(v)) for sid, v in scores.items()})


@pytest.mark.slow
def test_held_out_series_are_forecast_as_well_as_the_trained_ones(global_model, tmp_path):
    """The ten held-out series' MASE is within 10% of their MASE under a model that was trained on them too
    (the same recipe on all 50 series): what is left is the cost of being new, not of being other series.

    Against the 40 trained series' MASE instead, ten series are too few to tell: ten-series subsets of the
    trained series themselves range over about +-18% (5-95%, seed 11). That comparison is kept as a bound.
    """
    forecaster, data, train_ids, new_ids, _ = global_model
    mase = _mase_by_series(forecaster, data)
    seen = _mase_by_series(_train(tmp_path, data), data)  # the same series, trained on
    assert len(mase) == TRAINED + HELD_OUT and np.isfinite(mase).all()
    held_out, trained, as_trained = mase[new_ids].mean(), mase[train_ids].mean(), seen[new_ids].mean()
    assert abs(held_out / as_trained - 1.0) <= 0.10, (held_out, as_trained)
    assert held_out <= 1.2 * trained, (held_out, trained)
    seasonal_naive = []  # and the model beats the seasonal-naive forecast, so the comparison means something
    for _, g in data[data["series"].isin(new_ids)].groupby("series", observed=True):
        y = g["value"].to_numpy()
        cut = len(y) - HORIZON
        scale = np.abs(y[SEASON:cut] - y[: cut - SEASON]).mean()
        seasonal_naive.append(np.abs(y[cut:] - y[cut - SEASON : cut]).mean() / scale)
    assert held_out < np.mean(seasonal_naive)


@pytest.mark.slow
def test_a_trained_series_keeps_its_forecast_whatever_else_is_asked(global_model):
    forecaster, data, train_ids, _, _ = global_model
    alone = forecaster.predict(data[data["series"].isin(train_ids)])
    mixed = forecaster.predict(data)  # the same series, with ten the model never saw
    pd.testing.assert_frame_equal(mixed[mixed["series"].isin(train_ids)].reset_index(drop=True), alone)
    # scale="history" rescales the trained series by their own histories: a different, still sane forecast
    rescaled = forecaster.predict(data[data["series"].isin(train_ids)], scale="history")
    gap = np.abs(rescaled["forecast"] - alone["forecast"]) / alone["forecast"].abs().mean()
    assert 0 < gap.max() < 0.5


@pytest.mark.slow
def test_a_new_series_is_scaled_by_its_whole_history(global_model):
    forecaster, data, _, new_ids, _ = global_model
    sid = new_ids[0]
    history = data[data["series"] == sid]
    values = history["value"].to_numpy()
    forecast = forecaster.predict(history)
    expected = stats_from_history([sid], [values[:, None]], None, "standard", "none", [], [], "history")
    assert expected.loc[0] == pytest.approx(values.mean()) and expected.scale[0] == pytest.approx(values.std())
    # the forecast is the model's output on the window scaled by those statistics, scaled back
    loc, scale = expected.loc[0], expected.scale[0]
    z = (values[-forecaster.lookback :] - loc) / scale
    last = pd.Timestamp(history["time"].iloc[-1])
    x = forecaster._inputs(z[None], np.zeros((1, forecaster.lookback, 0)), None, expected, [last])
    with torch.no_grad():
        manual = forecaster.model(x).double().numpy()[0] * scale + loc
    np.testing.assert_allclose(forecast["forecast"].to_numpy(), manual, rtol=1e-9)
    assert forecast["series"].unique().tolist() == [sid] and len(forecast) == HORIZON


@pytest.mark.slow
def test_the_cli_forecasts_a_new_series_and_refuses_a_constant_one(global_model, tmp_path):
    forecaster, data, _, new_ids, run_tmp = global_model
    history = data[data["series"].isin(new_ids[:2])]
    history.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "forecast.csv"
    model = str(run_tmp / "run" / "export")
    ok = cli_in_process("predict", "--model", model, "--input", str(tmp_path / "new.csv"), "--output", str(out))
    assert ok.returncode == 0, ok.stderr[-2000:]
    got = pd.read_csv(out)
    np.testing.assert_allclose(got["forecast"], forecaster.predict(history)["forecast"], rtol=1e-6)
    flat = history.assign(value=np.where(history["series"] == new_ids[1], 5.0, history["value"]))
    flat.to_csv(tmp_path / "flat.csv", index=False)
    bad = cli_in_process("predict", "--model", model, "--input", str(tmp_path / "flat.csv"), "--output", str(out))
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .endswith(
            f"series '{new_ids[1]}' is new to this model and constant over its history: there is no spread to scale "
            "it by; give a longer history"
        )
    )


def test_a_model_with_a_series_embedding_refuses_a_new_series_in_one_line(global_model):
    forecaster, data, _, new_ids, _ = global_model
    spec = dataclasses.replace(forecaster.spec.model, series_embedding=4, n_series=TRAINED)
    embedded = Forecaster(dataclasses.replace(forecaster.spec, model=spec), build_model(spec).eval())
    known = data[data["series"] == forecaster.spec.series.ids[0]]
    assert len(embedded.predict(known)) == HORIZON
    refusal = rf"series '{new_ids[0]}' was not in the training data, and this model learnt a vector per training"
    with pytest.raises(DataError, match=refusal + r" series \(model.series_embedding=4\)"):
        embedded.predict(data[data["series"] == new_ids[0]])


def test_static_covariates_of_a_new_series_come_from_its_rows(global_model):
    """A copy of a trained series under a new id, with the same static value: the same statistics, so the
    same forecast as the original scaled by its own history (scale="history")."""
    forecaster, data, _, _, _ = global_model
    spec = dataclasses.replace(forecaster.spec.model, static_covariates=("size",))
    known = forecaster.spec.series
    sizes = np.arange(len(known), dtype=np.float64)  # raw static values 0..39, standardised as training would
    loc, scale = float(sizes.mean()), float(sizes.std())
    stats = dataclasses.replace(known.stats, static=((sizes - loc) / scale)[:, None])
    served = dataclasses.replace(known, stats=stats)
    model = build_model(spec).eval()
    statics = {"static_loc": [loc], "static_scale": [scale]}
    with_statics = dataclasses.replace(forecaster.spec, model=spec, series=served, **statics)
    fc = Forecaster(with_statics, model)
    sid = known.ids[7]
    original = data[data["series"] == sid].assign(size=7.0)
    twin = original.assign(series="twin")
    got = fc.predict(pd.concat([original, twin]), scale="history")
    np.testing.assert_allclose(got.loc[got["series"] == "twin", "forecast"].to_numpy(),
                               got.loc[got["series"] == sid, "forecast"].to_numpy(), rtol=1e-6)  # fmt: skip
    with pytest.raises(DataError, match="series 'twin': static covariate 'size' changes within the series"):
        fc.predict(pd.concat([original, twin.assign(size=np.r_[np.full(len(twin) - 1, 7.0), 8.0])]))
    with pytest.raises(DataError, match="static covariate column 'size' not found \\(series 'twin' is new"):
        fc.predict(pd.concat([original, twin]).drop(columns="size"))
