"""Points data.missing filled are inputs, never targets: the losses, validation and calibration leave them out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.library.buffer import WindowBuffer
from pipeline.library.calibration import conformal_widening
from pipeline.library.losses import loss_function

from .conftest import series_table


def test_a_masked_loss_leaves_out_nan_targets_with_a_fixed_denominator():
    forecast = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    target = torch.tensor([[2.0, float("nan"), 1.0], [4.0, 7.0, float("nan")]])
    loss = loss_function("mae", partial=True)
    value = loss(forecast, target)
    assert value.item() == pytest.approx((1 + 2 + 0 + 2) / 6)  # observed errors over every point of the batch
    value.backward()
    assert (
        forecast.grad[0, 1] == 0 and forecast.grad[1, 2] == 0 and forecast.grad[0, 0] == pytest.approx(-1 / 6)
    )  # forecast 1 below its target 2
    per_point = loss(forecast.detach(), target, reduction="none")
    assert torch.isnan(per_point).tolist() == torch.isnan(target).tolist()
    assert float(per_point.nansum()) == pytest.approx(5.0)
    pinball = loss_function("pinball", (0.1, 0.5, 0.9), partial=True)
    band = forecast.detach()[..., None].expand(-1, -1, 3)
    assert torch.isfinite(pinball(band, target)) and torch.isnan(pinball(band, target, reduction="none")[0, 1])
    # without partial targets the loss is torch's own, bit for bit
    full = torch.tensor([[2.0, 1.0, 1.0], [4.0, 7.0, 5.0]])
    assert torch.equal(loss_function("mae")(forecast.detach(), full), torch.nn.functional.l1_loss(forecast, full))


def test_gathered_targets_are_nan_where_filled_and_inputs_keep_the_filled_values():
    raw = np.arange(20, dtype=np.float32) + 10
    filled = np.zeros(20, dtype=bool)
    filled[[6, 7, 17]] = True
    table = series_table([{"length": 12}, {"length": 8}])
    buffer = WindowBuffer.from_ingest(raw, table, lookback=4, horizon=3, filled=filled)
    assert buffer.partial_targets
    x, y = buffer.gather(torch.tensor([[0, 2], [0, 5], [1, 0]]))
    assert x[0, :, 0].tolist() == [12.0, 13.0, 14.0, 15.0]
    assert np.isnan(y[0, :2]).all() and y[0, 2] == 18.0  # points 6 and 7 were filled
    assert x[1, :, 0].tolist() == [15.0, 16.0, 17.0, 18.0]  # ... and are inputs as they are
    assert y[1].tolist() == [19.0, 20.0, 21.0]
    assert y[2, 0] == 26.0 and np.isnan(y[2, 1]) and y[2, 2] == 28.0  # series 1 starts at point 12
    plain = WindowBuffer.from_ingest(raw, table, lookback=4, horizon=3)
    assert not plain.partial_targets and torch.equal(plain.gather(torch.tensor([[0, 2]]))[0], x[:1])


def test_conformal_widening_reads_each_step_over_its_observed_targets():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(40, 3))
    lower, upper, spread = np.full((40, 3), -1.0), np.full((40, 3), 1.0), np.ones((40, 3))
    full = conformal_widening(lower, upper, target, spread, 0.8)
    holes = target.copy()
    holes[:10, 1] = np.nan
    partial = conformal_widening(lower, upper, holes, spread, 0.8)
    assert partial[0] == full[0] and partial[2] == full[2]
    assert partial[1] == conformal_widening(lower[10:, 1:2], upper[10:, 1:2], target[10:, 1:2], spread[10:, 1:2], 0.8)
    holes[:, 2] = np.nan
    assert conformal_widening(lower, upper, holes, spread, 0.8)[2] == 0.0  # no observed target: not widened


def test_validation_loss_is_the_mean_over_the_observed_targets():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from pipeline.stages.train import validation_loss

    class LastValue(torch.nn.Module):  # forecasts the last input value over the horizon
        def forward(self, x):
            return x[:, -1:, 0].expand(-1, 3)

    raw = np.sin(np.arange(60) / 3).astype(np.float32)
    filled = np.zeros(60, dtype=bool)
    filled[[20, 21, 40]] = True
    buffer = WindowBuffer.from_ingest(raw, series_table([{"length": 60}]), lookback=5, horizon=3, filled=filled)
    pairs = torch.stack([torch.zeros(50, dtype=torch.long), torch.arange(50)], dim=1)
    errors = []
    for start in range(50):
        for h in range(3):
            t = start + 5 + h
            if t not in (20, 21, 40):
                errors.append(abs(raw[start + 4] - raw[t]))
    try:
        accelerator = Accelerator(cpu=True)
        value = validation_loss(accelerator, LastValue(), buffer, pairs, 16, loss_function("mae", partial=True))
    finally:
        AcceleratorState._reset_state(True)
    assert len(errors) == 50 * 3 - 9  # each filled point is a target of three windows
    assert value == pytest.approx(np.mean(errors), rel=1e-6)


def test_a_nan_forecast_where_the_target_was_observed_is_not_left_out():
    """Losses were summed with `nansum` wherever data.missing had filled some target, which left out a NaN loss at an
    observed point too: a model forecasting NaN there scored as if it had been right, and validation never said so.
    Only a NaN target marks a point to leave out."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from pipeline.library.blend import window_mean
    from pipeline.library.losses import observed_total
    from pipeline.stages.train import validation_loss

    nan = float("nan")
    target = torch.tensor([[1.0, nan, 3.0], [nan, nan, nan]])
    per_point = torch.tensor([[0.5, 9.0, 1.5], [1.0, 1.0, 1.0]])
    assert [float(v) for v in observed_total(per_point, target)] == [2.0, 2.0]
    means = window_mean(per_point, target)
    assert means[0] == 1.0 and torch.isnan(means[1])  # a window with no observed target says nothing
    per_point[0, 2] = nan  # a NaN forecast where the target is 3.0
    assert torch.isnan(observed_total(per_point, target)[0]) and torch.isnan(window_mean(per_point, target)[0])

    class NaNOnce(torch.nn.Module):  # the last input value, but NaN at the first window's first step
        def forward(self, x):
            out = x[:, -1:, 0].expand(-1, 3).clone()
            out[0, 0] = nan
            return out

    raw = np.sin(np.arange(60) / 3).astype(np.float32)
    filled = np.zeros(60, dtype=bool)
    filled[[20, 21, 40]] = True
    buffer = WindowBuffer.from_ingest(raw, series_table([{"length": 60}]), lookback=5, horizon=3, filled=filled)
    pairs = torch.stack([torch.zeros(50, dtype=torch.long), torch.arange(50)], dim=1)
    try:
        accelerator = Accelerator(cpu=True)
        value = validation_loss(accelerator, NaNOnce(), buffer, pairs, 64, loss_function("mae", partial=True))
    finally:
        AcceleratorState._reset_state(True)
    assert np.isnan(value)
