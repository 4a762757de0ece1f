"""The recipe switches of issue 9 through training and export: ensemble members, the blend."""

from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ModelConfig, load_config
from pipeline.library import blend, selection
from pipeline.library.buffer import WindowBuffer
from pipeline.library.errors import ConfigError
from pipeline.library.losses import loss_function, training_loss
from pipeline.library.model import ModelSpec, build_model, seasonal_profile
from pipeline.library.onnx_export import export_onnx

from .conftest import series_table


def _buffer(lookback: int = 16, horizon: int = 4) -> WindowBuffer:
    t = np.arange(400)
    raw = (np.sin(2 * np.pi * t / 4) + 0.01 * t + np.random.default_rng(0).normal(0, 0.1, 400)).astype(np.float32)
    return WindowBuffer.from_ingest(raw, series_table([{"length": 400}]), lookback, horizon)


def test_ensemble_loss_is_the_mean_of_the_members_own_losses():
    buffer = _buffer()
    model = build_model(ModelSpec(1, 4, 8, 1, residual_season=4, instance_norm=True, ensemble=3), seed=0)
    torch.manual_seed(0)
    for head in model.head:  # members far apart: their errors differ in sign somewhere
        torch.nn.init.normal_(head.weight, std=3.0)
    x, y = buffer.gather(torch.tensor([[0, 0], [0, 7], [0, 100]]))
    members = model(x, members=True)
    expected = torch.stack([(m - y).abs().mean() for m in members]).mean()
    torch.testing.assert_close(training_loss(loss_function("mae"), model, x, y, ensemble=3), expected)
    # not the loss of the mean forecast: members are fitted each on its own, as separate models would be
    assert expected > (model(x) - y).abs().mean() + 1e-3  # |mean error| <= mean |error|, strictly here
    loss = training_loss(loss_function("mae"), model, x, y, ensemble=3)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(1, 4, 8, 2, residual_season=4, season_average=2, instance_norm=True, ensemble=3),
        ModelSpec(1, 4, 8, 1, residual_season=4, season_average=2, base_level="half_season", blend=True),
        ModelSpec(1, 4, 8, 1, residual_season=4, instance_norm=True, ensemble=2, quantiles=(0.1, 0.5, 0.9)),
        ModelSpec(  # a multi-seasonal base over the whole window, the recurrent layers on its end, the head seeing it
            1,
            4,
            8,
            1,
            residual_season=2,
            season_average=3,
            base="multi",
            seasons=(2, 4),
            instance_norm=True,
            recurrent_steps=6,
            base_input=True,
            blend=True,
            base_level="half_season",
        ),
    ],
)
def test_switches_export_to_one_onnx_graph_that_matches_pytorch(spec, tmp_path):
    buffer = _buffer()
    model = build_model(spec, seed=0).eval()
    heads = model.head if spec.ensemble > 1 else [model.head]
    for head in heads:
        torch.nn.init.normal_(head.weight, std=0.3)
    if spec.blend:
        model.blend.fill_(0.4)
    pairs = np.stack([np.zeros(50, dtype=np.int64), np.arange(0, 350, 7)], axis=1)
    diff = export_onnx(model, buffer, pairs, tmp_path / "model.onnx", atol=1e-4)
    assert diff <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x, _ = buffer.gather(torch.from_numpy(pairs[:3]))
    got = session.run(None, {"x": x.numpy()})[0]
    assert got.shape == (3, *spec.output_shape)
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-4)


def test_the_recurrent_layers_read_only_the_end_of_the_window_and_the_base_all_of_it():
    spec = ModelSpec(1, 4, 8, 1, residual_season=4, season_average=3, instance_norm=True, recurrent_steps=6)
    model = build_model(replace(spec, base_input=True), seed=0).eval()
    torch.nn.init.normal_(model.head.weight, std=0.3)
    x, _ = _buffer().gather(torch.tensor([[0, 3], [0, 50]]))
    changed = x.clone()
    changed[:, 4, 0] += 5.0  # before the last 6 steps, inside the base's three seasons (window 16)
    head, _, base = model.decompose(x)
    head2, _, base2 = model.decompose(changed)
    assert (base2 - base).abs().min() > 0.1  # the base reads the whole window
    no_input = build_model(spec, seed=0).eval()
    no_input.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("head")}, strict=False)
    torch.nn.init.normal_(no_input.head.weight, std=0.3)
    assert torch.equal(no_input.decompose(x)[0], no_input.decompose(changed)[0])  # the LSTM never saw the change
    assert not torch.equal(head, head2)  # ... but with base_input the head sees the base, which did change
    assert model.head.in_features == 8 + 4 and no_input.head.in_features == 8


def test_blend_zero_is_the_base_and_one_is_the_trained_model():
    spec = ModelSpec(1, 4, 8, 1, residual_season=4, season_average=2, instance_norm=True)
    trained = build_model(spec, seed=0).eval()
    torch.nn.init.normal_(trained.head.weight)
    blended = build_model(replace(spec, blend=True), seed=0).eval()
    blended.load_state_dict({**trained.state_dict(), "blend": torch.tensor(1.0)})
    x, _ = _buffer().gather(torch.tensor([[0, 3], [0, 50]]))
    torch.testing.assert_close(blended(x), trained(x), rtol=0, atol=0)
    blended.blend.fill_(0.0)
    torch.testing.assert_close(blended(x), seasonal_profile(x[..., 0], 4, 4, 2), rtol=0, atol=0)
    blended.blend.fill_(0.25)
    base = seasonal_profile(x[..., 0], 4, 4, 2)
    torch.testing.assert_close(blended(x), base + 0.25 * (trained(x) - base), rtol=0, atol=1e-6)
    assert "blend" in blended.state_dict() and "blend" not in trained.state_dict()


def test_blend_chosen_on_validation_by_hand():
    """The grid's losses are those of base + w * correction per window; the rule picks among them."""
    buffer = _buffer()
    spec = ModelSpec(1, 4, 8, 1, residual_season=4, instance_norm=True, blend=True)
    model = build_model(spec, seed=0).eval()
    torch.nn.init.normal_(model.head.weight, std=0.2)
    pairs = torch.tensor([[0, s] for s in range(300, 380, 3)])
    per_window = blend.validation_losses(model, buffer, pairs, 7, F.l1_loss)
    assert per_window.shape == (len(pairs), 21) and tuple(round(0.05 * i, 2) for i in range(21)) == blend.GRID
    x, y = buffer.gather(pairs)
    with torch.no_grad():
        head, spread, base = model.decompose(x)
    for i in (0, 7, 20):
        w = blend.GRID[i]
        by_hand = (base + w * head * spread - y).abs().mean(dim=1).double().numpy()
        np.testing.assert_allclose(per_window[:, i], by_hand, rtol=1e-5)
    n_effective = selection.effective_windows(pairs.numpy(), 4)
    assert n_effective == (378 - 300) / 4 + 1  # 27 windows starting at 300, 303, ..., 378: 20.5 horizons
    assert blend.choose(per_window, n_effective) == blend.GRID[selection.one_standard_error(per_window, n_effective)]
    untrained = build_model(spec, seed=0).eval()  # no correction: every share ties, the smallest wins
    assert blend.choose(blend.validation_losses(untrained, buffer, pairs, 64, F.l1_loss), n_effective) == 0.0


@pytest.mark.parametrize("value", [-0.1, 1.5, "often"])
def test_blend_config_values(value):
    with pytest.raises(ConfigError, match=r"model\.blend"):
        ModelConfig(blend=value) if not isinstance(value, str) else load_config(None, [f"model.blend={value}"])
    assert ModelConfig(blend="validation").blend == "validation"


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5])
def test_level_smoothing_is_a_rate(value):
    with pytest.raises(ConfigError, match=r"model\.level_smoothing must be in \(0, 1\]"):
        load_config(None, [f"model.level_smoothing={value}"])
    smoothed = load_config(None, ["model.base_level=smoothed", "model.level_smoothing=0.3"]).model
    assert (smoothed.base_level, smoothed.level_smoothing) == ("smoothed", 0.3)
