"""Split-conformal calibration of quantile intervals: widening by hand, monotone offsets, coverage after."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.library.buffer import WindowBuffer
from pipeline.library.calibration import calibrate, conformal_widening, offsets
from pipeline.library.model import ModelSpec, build_model

from .conftest import series_table


def test_widening_by_hand():
    # 4 windows, 1 step; interval [0, 1] everywhere; scores max(lo - y, y - hi) / spread
    target = np.array([[0.5], [1.5], [-1.0], [3.0]])
    spread = np.array([[1.0], [1.0], [2.0], [1.0]])
    lower, upper = np.zeros((4, 1)), np.ones((4, 1))
    # scores -0.5, 0.5, 0.5 (1.0 / 2), 2.0; nominal 0.5: the ceil((4 + 1) * 0.5) = 3rd smallest score, 0.5
    np.testing.assert_allclose(conformal_widening(lower, upper, target, spread, 0.5), [0.5])
    # nominal 0.8 -> level min(1, ceil(4.0) / 4) = 1 -> the largest score
    np.testing.assert_allclose(conformal_widening(lower, upper, target, spread, 0.8), [2.0])
    # already covering: never narrows
    np.testing.assert_allclose(conformal_widening(lower - 10, upper + 10, target, spread, 0.5), [0.0])


def test_offsets_grow_outwards_and_reach_unpaired_outer_quantiles():
    # quantiles 0.02, 0.1, 0.5, 0.9, 0.98 with only the 10-90 interval widened
    table = offsets({(1, 3): np.array([0.3, 0.7])}, 5, 2, 2)
    np.testing.assert_allclose(table, [[-0.3, -0.3, 0, 0.3, 0.3], [-0.7, -0.7, 0, 0.7, 0.7]])
    # an inner interval widened more than the outer one: the outer follows
    table = offsets({(0, 4): np.array([0.1]), (1, 3): np.array([0.5])}, 5, 2, 1)
    np.testing.assert_allclose(table, [[-0.5, -0.5, 0, 0.5, 0.5]])
    assert (np.diff(table, axis=1) >= 0).all()


@pytest.mark.parametrize(("instance_norm", "interval_scale"), [(False, 0), (True, 0), (False, 5), (True, 5)])
def test_calibrated_intervals_cover_the_calibration_windows(instance_norm, interval_scale):
    rng = np.random.default_rng(0)
    raw = (np.sin(np.arange(600) / 5.0) + rng.normal(0, 4.0, 600)).astype(np.float32)
    buffer = WindowBuffer.from_ingest(raw, series_table([{"length": 600}]), lookback=20, horizon=4)
    pairs = torch.stack([torch.zeros(500, dtype=torch.long), torch.arange(500)], dim=1)
    spec = ModelSpec(
        1, 4, 8, 1, instance_norm=instance_norm, quantiles=(0.1, 0.25, 0.5, 0.75, 0.9), interval_scale=interval_scale
    )
    model = build_model(spec, seed=0).eval()
    with torch.no_grad():  # intervals far too narrow: softplus(-5) ~ 0.007 between quantiles
        model.head.weight.mul_(0.01)
        model.head.bias.fill_(-5.0)
    report = calibrate(model, buffer, pairs, batch_size=128)
    assert report["0.1-0.9"]["val_coverage_before"] < 0.5
    with torch.no_grad():
        x, y = buffer.gather(pairs)
        out = model(x)
    assert bool((out.diff(dim=-1) >= 0).all())
    for i, j, nominal in ((0, 4, 0.8), (1, 3, 0.5)):
        covered = ((y >= out[..., i]) & (y <= out[..., j])).double().mean(dim=0)  # per horizon step
        assert bool((covered >= nominal).all()), covered
        name = "0.1-0.9" if i == 0 else "0.25-0.75"
        assert report[name]["val_coverage_after"] >= nominal
    # idempotent: calibrating again from the calibrated weights gives the same offsets
    first = model.calibration.clone()
    calibrate(model, buffer, pairs, batch_size=128)
    torch.testing.assert_close(model.calibration, first, rtol=0, atol=1e-6)


def test_the_widening_scales_with_the_windows_recent_error():
    """The same offsets widen a window whose last cycle broke from the one before more than a repeating one, and
    most at the phases that moved most."""
    spec = ModelSpec(1, 4, 8, 1, instance_norm=True, residual_season=4, quantiles=(0.1, 0.5, 0.9), interval_scale=4)
    model = build_model(spec, seed=0).eval()
    cycle = torch.tensor([0.0, 1.0, 3.0, 1.0])
    repeating = cycle.repeat(3)
    broken = torch.cat([cycle, cycle, cycle + torch.tensor([0.0, 2.0, -2.0, 4.0])])
    x = torch.stack([repeating, broken])[:, :, None]
    with torch.no_grad():
        plain = model(x)
        model.calibration.copy_(torch.tensor([[-1.0, 0.0, 1.0]] * 4))
        widened = model(x)
    spread = x[..., 0].std(dim=1, unbiased=False)[:, None]  # instance norm's spread, over the whole window here
    # per phase, the mean |change| over the window's two cycle-to-cycle changes: 0 and |0, 2, -2, 4| -> 0, 1, 1, 2;
    # a phase that never moved gets a tenth of the mean (0.1); a window that never moved, 1% of its spread
    recent = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.1, 1.0, 1.0, 2.0]])
    scale = (recent / spread).clamp_min(0.01)
    grown = (widened[..., 2] - widened[..., 0]) - (plain[..., 2] - plain[..., 0])  # per window and step
    torch.testing.assert_close(grown, 2 * scale * spread, rtol=1e-4, atol=1e-5)
    assert float(grown[1, 3]) > 15 * float(grown[0, 3])
    assert float(grown[1, 3]) == pytest.approx(2 * float(grown[1, 1]), rel=1e-4)
    torch.testing.assert_close(widened[..., 1], plain[..., 1])  # the median does not move


def test_a_warm_start_matches_architectures_whatever_the_interval_scale():
    """The widening's unit is set again after every training: a champion saved before it existed still warm-starts."""
    ours = ModelSpec(1, 4, 8, 1, residual_season=4, quantiles=(0.1, 0.5, 0.9), interval_scale=4)
    saved = {k: v for k, v in ours.to_dict().items() if k not in ("interval_scale", "trend")}  # an older spec
    theirs = ModelSpec.from_dict(saved)
    assert (theirs.interval_scale, theirs.trend) == (0, 0.0)
    assert theirs.architecture() == ours.architecture()
    assert ModelSpec.from_dict({**saved, "trend": 0.5}).architecture() != ours.architecture()  # the base differs
