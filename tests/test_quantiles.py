"""Quantile forecasts: pinball loss and coverage by hand, no crossing, config errors, and a run end to end."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import SyntheticConfig
from pipeline.library import metrics as M
from pipeline.library.calibration import offsets
from pipeline.library.forecaster import Forecaster
from pipeline.library.losses import pinball_loss
from pipeline.library.model import ModelSpec, build_model, monotone_quantiles
from pipeline.library.synthetic import generate_synthetic

from .conftest import cli, cli_in_process, write_config

QUANTILES = [0.1, 0.5, 0.9]


def test_pinball_loss_by_hand():
    actual = np.array([[10.0, 20.0]])
    forecast = np.array([[[8.0, 11.0, 12.0], [15.0, 25.0, 30.0]]])  # (1 window, 2 steps, 3 quantiles)
    terms = M.pinball_terms(actual, forecast, QUANTILES)
    # step 1: actual 10 -> q0.1 at 8: 0.1*2 = 0.2; q0.5 at 11: 0.5*1 = 0.5; q0.9 at 12: 0.1*2 = 0.2
    # step 2: actual 20 -> q0.1 at 15: 0.1*5 = 0.5; q0.5 at 25: 0.5*5 = 2.5; q0.9 at 30: 0.1*10 = 1.0
    np.testing.assert_allclose(terms[0], [[0.2, 0.5, 0.2], [0.5, 2.5, 1.0]])
    summary = M.summarise_quantiles(actual, forecast, QUANTILES, scale=np.array([2.0]))
    assert summary["pinball"] == pytest.approx(4.9 / 6)
    assert summary["scaled_pinball"] == pytest.approx(4.9 / 12)
    assert summary["pinball_by_quantile"] == pytest.approx({"0.1": 0.35, "0.5": 1.5, "0.9": 0.6})
    # the torch training loss is the same number (averaged over the quantiles)
    loss = pinball_loss(torch.tensor(forecast), torch.tensor(actual), QUANTILES)
    assert float(loss) == pytest.approx(4.9 / 6)
    per_point = pinball_loss(torch.tensor(forecast), torch.tensor(actual), QUANTILES, reduction="none")
    np.testing.assert_allclose(per_point.numpy(), [[0.9 / 3, 4.0 / 3]])


def test_coverage_by_hand():
    actual = np.array([[1.0, 5.0, 9.0, 3.0], [0.0, 2.0, 2.0, 2.0]])
    qs = [0.05, 0.1, 0.5, 0.9, 0.95]
    low = np.array([[0.0, 6.0, 1.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    high = np.array([[2.0, 7.0, 8.0, 4.0], [1.0, 1.0, 3.0, 2.0]])
    mid = (low + high) / 2
    forecast = np.stack([low - 1, low, mid, high, high + 1], axis=-1)
    # 10-90: inside (bounds included): 1 in [0,2], 5 not in [6,7], 9 not in [1,8], 3 in [3,4]; 0 in, 2 no, 2 in, 2 in
    c = M.summarise_quantiles(actual, forecast, qs, np.ones(2))["coverage"]
    assert list(c) == ["0.05-0.95", "0.1-0.9"]
    assert c["0.1-0.9"] == {"nominal": 0.8, "empirical": 5 / 8}
    # 5-95 widens each bound by 1: 5 now in [5,8], 9 in [0,9], 2 in [-1,2]
    assert c["0.05-0.95"] == {"nominal": 0.9, "empirical": 8 / 8}


def _report_of(quantiles: list[float]) -> str:
    """report.md of two windows of one series scored with a band at `quantiles`."""
    from pipeline.library.report import report
    from pipeline.library.scoring import ScoredWindows, per_series_table, score

    actual = np.array([[1.0, 2.0], [3.0, 4.0]])
    offsets = np.array(quantiles) - 0.5
    band = actual[..., None] + offsets
    point = band[..., quantiles.index(0.5)]
    forecasts = {"model": point, "naive": actual + 1.0, "seasonal_naive": actual - 0.5}
    windows = ScoredWindows(np.zeros((2, 2), np.int64), np.zeros((2, 2), np.int64), actual, forecasts, np.ones(2),
                            quantiles, band)  # fmt: skip
    terms, result = score(windows)
    folds = {"folds": 1, "step": 2, "refit": False, "placement": "inside the test part", "per_fold": []}
    result.update(
        n_windows=2, n_series=1, horizon=2, season_length=1, backtest={**folds, "aggregate": score(windows)[1]}
    )
    result["quantiles"]["levels"] = quantiles
    return report("q", result, per_series_table(windows, terms, ["s"]), [])


def test_the_report_says_when_no_quantiles_bound_a_central_interval():
    """[0.05, 0.5, 0.8] has no pair q, 1 - q: the report showed an empty coverage table and did not say that
    nothing was calibrated."""
    lopsided = _report_of([0.05, 0.5, 0.8])
    assert "| interval |" not in lopsided
    assert "No central interval among the quantiles (a pair q and 1 - q): no coverage to report" in lopsided
    assert "Pooled pinball loss 0.0275 (no central interval to cover)." in lopsided  # was "; coverage ."
    central = _report_of([0.1, 0.5, 0.9])
    assert "| 0.1-0.9 | 80% | 100.0% |" in central and "No central interval" not in central
    assert "Pooled pinball loss 0.02667; coverage 0.1-0.9 100.0%." in central


def test_symmetric_intervals_pair_q_with_one_minus_q():
    assert M.symmetric_intervals([0.1, 0.5, 0.9]) == [(0, 2)]
    assert M.symmetric_intervals([0.025, 0.1, 0.25, 0.5, 0.9, 0.975]) == [(0, 5), (1, 4)]
    assert M.symmetric_intervals([0.5]) == []


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    quantiles=st.sampled_from([(0.5,), (0.1, 0.5, 0.9), (0.02, 0.1, 0.25, 0.5, 0.75, 0.99), (0.5, 0.6, 0.7)]),
    instance_norm=st.booleans(),
    residual=st.sampled_from([0, 3]),
    interval_scale=st.sampled_from([0, 1, 6]),
    band_season=st.sampled_from([0, 1, 4]),
    weight_scale=st.floats(0.01, 30.0),
    input_scale=st.floats(1e-3, 1e4),
)
def test_quantiles_never_cross(
    seed, quantiles, instance_norm, residual, interval_scale, band_season, weight_scale, input_scale
):
    spec = ModelSpec(
        1, 5, 8, 2, instance_norm=instance_norm, residual_season=residual, quantiles=quantiles,
        interval_scale=interval_scale, band_season=band_season,
    )  # fmt: skip
    model = build_model(spec, seed=seed).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * weight_scale)
        widening = {
            pair: torch.rand(5, generator=gen).numpy() * weight_scale for pair in M.symmetric_intervals(quantiles)
        }
        model.calibration.copy_(torch.from_numpy(offsets(widening, len(quantiles), spec.median_index, 5)))
        if band_season:
            half = {pair: torch.rand(5, generator=gen).numpy() * weight_scale for pair in widening}
            model.band.copy_(torch.from_numpy(offsets(half, len(quantiles), spec.median_index, 5)))
        y = model(torch.randn(16, 12, 1, generator=gen) * input_scale)
    assert y.shape == (16, 5, len(quantiles))
    assert bool(torch.isfinite(y).all())
    assert bool((y.diff(dim=-1) >= 0).all())


def test_monotone_quantiles_centre_is_the_raw_median():
    raw = torch.tensor([[-50.0, 3.0, 2.0, 40.0]])
    out = monotone_quantiles(raw, median=1)
    assert out[0, 1] == raw[0, 1]
    sp = torch.nn.functional.softplus
    torch.testing.assert_close(out[0, 0], raw[0, 1] - sp(raw[0, 0]))
    torch.testing.assert_close(out[0, 3], raw[0, 1] + sp(raw[0, 2]) + sp(raw[0, 3]))
    assert bool((out.diff(dim=-1) >= 0).all())


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("[0.1,0.5,1.0]", "model.quantiles: 1.0 is outside (0, 1)"),
        ("[0.0,0.5]", "model.quantiles: 0.0 is outside (0, 1)"),
        ("[0.5,0.1,0.9]", "model.quantiles must be sorted ascending, got 0.5 before 0.1"),
        ("[0.1,0.5,0.5,0.9]", "model.quantiles: 0.5 appears twice"),
        ("[0.1,0.9]", "must include 0.5"),
    ],
)
def test_bad_quantiles_are_exit_2_with_one_line(value, words):
    result = cli("train", "--config", "configs/default.yaml", f"model.quantiles={value}")
    assert result.returncode == 2
    assert words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_pinball_without_quantiles_and_refit_without_folds_are_config_errors():
    for override, words in [
        ("train.loss=pinball", "train.loss: pinball needs model.quantiles"),
        ("evaluate.backtest.refit=true", "evaluate.backtest.refit: true needs evaluate.backtest.folds"),
    ]:
        result = cli("train", "--config", "configs/default.yaml", override)
        assert result.returncode == 2 and words in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_quantile_run_end_to_end(tmp_path):
    """train -> evaluate -> export -> predict with quantiles, the default recipe's switches and log1p + robust."""
    overrides = {
        "model.quantiles": QUANTILES,
        "model.instance_norm": True,
        "model.residual_season": 24,
        "data.transform": "log1p",
        "data.scaling": "robust",
        "train.max_steps": 30,
    }
    config = write_config(tmp_path, overrides)
    result = cli_in_process("run", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    assert "pinball" in (run / "config.yaml").read_text()
    metrics = json.loads((run / "evaluate/metrics.json").read_text())
    q = metrics["quantiles"]
    assert q["levels"] == QUANTILES and q["pinball"] > 0 and 0 <= q["coverage"]["0.1-0.9"]["empirical"] <= 1
    assert set(metrics["model"]) == {"mae", "rmse", "smape", "mase"}
    per_series = pd.read_csv(run / "evaluate/per_series.csv")
    assert {"model_pinball", "model_coverage_0.1-0.9"} <= set(per_series.columns)
    assert "## Quantile forecast" in (run / "evaluate/report.md").read_text()
    # forecasts.csv holds every scored point: the coverage and MAE recomputed from it match metrics.json
    points = pd.read_csv(run / "evaluate/forecasts.csv")
    assert len(points) == metrics["n_windows"] * 12 and (points["step"].between(1, 12)).all()
    inside = (points["actual"] >= points["q0.1"]) & (points["actual"] <= points["q0.9"])
    assert inside.mean() == pytest.approx(q["coverage"]["0.1-0.9"]["empirical"], abs=1e-12)
    assert (points["actual"] - points["forecast"]).abs().mean() == pytest.approx(metrics["model"]["mae"], rel=1e-9)
    assert (points["actual"] - points["seasonal_naive"]).abs().mean() == pytest.approx(
        metrics["baselines"]["seasonal_naive"]["mae"], rel=1e-9
    )
    assert json.loads((run / "export/meta.json").read_text())["onnx_parity"] <= 1e-4

    forecaster = Forecaster.load(run / "export")
    assert forecaster.spec.model.band_season == 24 and float(forecaster.model.band[:, 2].min()) > 0  # in the ONNX
    session = ort.InferenceSession(str(run / "export/model.onnx"), providers=["CPUExecutionProvider"])
    channels = 1 + 2 * len(forecaster.spec.model.calendar)  # the target, sin/cos per calendar feature
    x = np.random.default_rng(0).normal(size=(7, 48 + 12, channels)).astype(np.float32)  # lookback + horizon
    onnx_out = session.run(None, {"x": x})[0]
    assert onnx_out.shape == (7, 12, 3) and (np.diff(onnx_out, axis=-1) >= 0).all()
    with torch.no_grad():
        np.testing.assert_allclose(onnx_out, forecaster.model(torch.from_numpy(x)).numpy(), atol=1e-4)

    data = generate_synthetic(SyntheticConfig(n_series=4, length=400, min_length=300, freq="h", seed=1))
    history = data[data["time"] <= data["time"].max() - pd.Timedelta(hours=30)]
    history.to_csv(tmp_path / "history.csv", index=False)
    out = tmp_path / "forecast.csv"
    predicted = cli_in_process(
        "predict", "--model", str(run / "export"), "--input", str(tmp_path / "history.csv"), "--output", str(out)
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    forecast = pd.read_csv(out)
    assert list(forecast.columns) == ["series", "time", "forecast", "q0.1", "q0.9"]
    assert len(forecast) == 4 * 12
    assert (forecast["q0.1"] <= forecast["forecast"]).all() and (forecast["forecast"] <= forecast["q0.9"]).all()
    # the CSV is the model output mapped back by hand: expm1(z * IQR + median) of each series' scaler
    spec = json.loads((run / "export/forecaster.json").read_text())
    assert spec["transform"] == "log1p" and spec["scaling"] == "robust"
    sid = "s0002"
    window = history[history["series"] == sid]["value"].to_numpy()[-48:]
    stats = spec["series"][sid]
    z = ((np.log1p(window) - stats["mean"]) / stats["scale"]).astype(np.float32)
    last_time = pd.Timestamp(history[history["series"] == sid]["time"].iloc[-1])
    served = forecaster.spec.series.stats.take(forecaster.spec.series.positions([sid]))
    x = forecaster._inputs(z[None], np.zeros((1, 48, 0)), None, served, [last_time])  # + the calendar channels
    with torch.no_grad():
        raw = forecaster.model(x).double().numpy()[0]
    by_hand = np.expm1(raw * stats["scale"] + stats["mean"])
    mine = forecast[forecast["series"] == sid]
    np.testing.assert_allclose(mine[["q0.1", "forecast", "q0.9"]].to_numpy(), by_hand, rtol=1e-5)
    # a log1p model refuses a negative history value, naming the series
    bad = history.copy()
    bad.loc[bad.index[-1], "value"] = -1.0
    bad.to_csv(tmp_path / "bad.csv", index=False)
    refused = cli_in_process(
        "predict", "--model", str(run / "export"), "--input", str(tmp_path / "bad.csv"), "--output", str(out)
    )
    assert refused.returncode == 2 and "negative value" in refused.stderr and "log1p" in refused.stderr


@pytest.mark.slow
def test_quantile_model_resumes_bit_for_bit(tmp_path):
    from .test_resume import assert_bitwise_equal, finish, kill_at_step
    from .test_resume import prepared as prepared_for_resume

    overrides = {"model.quantiles": QUANTILES, "model.residual_season": 24, "train.max_steps": 60}
    overrides["train.checkpoint_every"] = 10
    reference = prepared_for_resume(tmp_path / "reference", **overrides)
    finish(reference, 1)
    resumed = prepared_for_resume(tmp_path / "resumed", **overrides)
    kill_at_step(resumed, 1, 23)
    assert "resumed from" in finish(resumed, 1)
    assert_bitwise_equal(reference.parent / "run", resumed.parent / "run")
