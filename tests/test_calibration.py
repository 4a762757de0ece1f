"""Split-conformal calibration of quantile intervals: widening by hand, monotone offsets, coverage after."""

from __future__ import annotations

import tempfile
from pathlib import Path

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


@pytest.mark.parametrize(
    ("instance_norm", "interval_scale", "band_season"), [(False, 0, 0), (True, 0, 0), (False, 5, 0), (True, 5, 5)]
)
def test_calibrated_intervals_cover_the_calibration_windows(instance_norm, interval_scale, band_season):
    rng = np.random.default_rng(0)
    raw = (np.sin(np.arange(600) / 5.0) + rng.normal(0, 4.0, 600)).astype(np.float32)
    buffer = WindowBuffer.from_ingest(raw, series_table([{"length": 600}]), lookback=20, horizon=4)
    pairs = torch.stack([torch.zeros(500, dtype=torch.long), torch.arange(500)], dim=1)
    spec = ModelSpec(
        1, 4, 8, 1, instance_norm=instance_norm, quantiles=(0.1, 0.25, 0.5, 0.75, 0.9),
        interval_scale=interval_scale, band_season=band_season,
    )  # fmt: skip
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
    band = model.band.clone() if band_season else None
    calibrate(model, buffer, pairs, batch_size=128)
    torch.testing.assert_close(model.calibration, first, rtol=0, atol=1e-6)
    if band_season:
        assert float(band.abs().sum()) > 0
        torch.testing.assert_close(model.band, band, rtol=0, atol=1e-6)


def repeating_and_broken() -> torch.Tensor:
    """Two windows of three 4-step cycles: one repeats its cycle, the other's last cycle moves by 0, 2, -2, 4."""
    cycle = torch.tensor([0.0, 1.0, 3.0, 1.0])
    broken = torch.cat([cycle, cycle, cycle + torch.tensor([0.0, 2.0, -2.0, 4.0])])
    return torch.stack([cycle.repeat(3), broken])[:, :, None]


def test_the_widening_scales_with_the_windows_recent_error():
    """The same offsets widen a window whose last cycle broke from the one before more than a repeating one, and
    most at the phases that moved most."""
    spec = ModelSpec(1, 4, 8, 1, instance_norm=True, residual_season=4, quantiles=(0.1, 0.5, 0.9), interval_scale=4)
    model = build_model(spec, seed=0).eval()
    x = repeating_and_broken()
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


def test_the_volatility_band_by_hand():
    """Each bound is the wider of the widened quantile and the median +/- the band in units of the window's RMS
    cycle-to-cycle change; the median never moves and nothing crosses."""
    spec = ModelSpec(1, 4, 8, 1, instance_norm=True, residual_season=4, quantiles=(0.1, 0.5, 0.9), band_season=4)
    model = build_model(spec, seed=0).eval()
    x = repeating_and_broken()
    with torch.no_grad():
        plain = model(x)
        model.band.copy_(torch.tensor([[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0], [-3.0, 0.0, 3.0], [-3.0, 0.0, 3.0]]))
        banded = model(x)
    spread = x[..., 0].std(dim=1, unbiased=False)[:, None]
    # changes over the window's last two cycle-to-cycle steps: 8 zeros, then 0, 2, -2, 4 -> RMS sqrt(24 / 8)
    volatility = torch.tensor([[0.0], [3.0**0.5]])
    unit = (volatility / spread).clamp_min(0.01) * spread  # in original units: 1% of the spread, or sqrt(3)
    half = torch.tensor([1.0, 1.0, 3.0, 3.0]) * unit
    median = plain[..., 1]
    torch.testing.assert_close(banded[..., 1], median)
    torch.testing.assert_close(banded[..., 0], torch.minimum(plain[..., 0], median - half), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(banded[..., 2], torch.maximum(plain[..., 2], median + half), rtol=1e-5, atol=1e-5)
    # the repeating window keeps its learned quantiles (its band is 1% of its spread); the broken one takes the band
    torch.testing.assert_close(banded[0], plain[0])
    assert bool((banded[1, :, 2] - banded[1, :, 0] >= 2 * half[1] - 1e-5).all())
    assert float(banded[1, 3, 2] - median[1, 3]) == pytest.approx(3 * 3**0.5, rel=1e-5)


def test_calibration_sets_the_band_to_the_conformal_quantile_of_the_median_error():
    rng = np.random.default_rng(1)
    raw = (np.sin(np.arange(400) / 3.0) * 3 + rng.normal(0, 1.0, 400)).astype(np.float32)
    buffer = WindowBuffer.from_ingest(raw, series_table([{"length": 400}]), lookback=24, horizon=3)
    pairs = torch.stack([torch.zeros(99, dtype=torch.long), torch.arange(0, 297, 3)], dim=1)
    spec = ModelSpec(1, 3, 8, 1, instance_norm=True, quantiles=(0.1, 0.5, 0.9), interval_scale=6, band_season=6)
    model = build_model(spec, seed=0).eval()
    report = calibrate(model, buffer, pairs, batch_size=32)
    with torch.no_grad():
        x, y = buffer.gather(pairs)
        p = model.parts(x)
        target = x[..., 0]
        change = target[:, 6:] - target[:, :-6]
        volatility = change[:, -18:].square().mean(dim=1, keepdim=True).sqrt()  # 24 // 6 - 1 = 3 cycles of changes
        unit = (volatility / p.spread[:, :, 0]).clamp_min(0.01) * p.spread[:, :, 0]
        median = (p.base + p.head * p.spread)[..., 1]
        scores = ((y - median).abs() / unit).double().numpy()
    # 99 windows, nominal 0.8: the ceil(100 * 0.8) = 80th smallest score per step
    expected = np.sort(scores, axis=0)[79]
    np.testing.assert_allclose(model.band[:, 2].numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(model.band[:, 0].numpy(), -expected, rtol=1e-5)
    assert report["0.1-0.9"]["mean_band"] == pytest.approx(expected.mean(), rel=1e-5)
    with torch.no_grad():
        out = model(x)
    covered = ((y >= out[..., 0]) & (y <= out[..., 2])).double().mean(dim=0)
    assert bool((covered >= 0.8).all()) and report["0.1-0.9"]["val_coverage_after"] == pytest.approx(
        float(covered.mean()), abs=1e-6
    )


def test_a_warm_start_carries_over_whatever_the_band():
    """A champion calibrated without the band warm-starts a model with it, and the other way round."""
    from pipeline.library.checkpoint import save_weights
    from pipeline.library.warm_start import warm_start_state

    without = ModelSpec(1, 4, 8, 1, residual_season=4, quantiles=(0.1, 0.5, 0.9))
    banded = ModelSpec(1, 4, 8, 1, residual_season=4, quantiles=(0.1, 0.5, 0.9), band_season=4)
    for saved, ours in ((without, banded), (banded, without)):
        champion = build_model(saved, seed=1)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.safetensors"
            save_weights(champion.state_dict(), path)
            model = build_model(ours, seed=0)
            state = warm_start_state(str(path), None, ours, model.state_dict())
        model.load_state_dict(state)
        torch.testing.assert_close(model.head.weight, champion.head.weight)
        assert ("band" in state) == bool(ours.band_season)
