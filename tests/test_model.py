from dataclasses import replace

import pytest
import torch

from pipeline.library.model import ModelSpec, build_model, residual_base, seasonal_naive, seasonal_profile


def test_forward_shape_and_batch_independence():
    model = build_model(ModelSpec(input_size=1, horizon=7, hidden_size=8, num_layers=2), seed=0).eval()
    x = torch.randn(5, 30, 1)
    y = model(x)
    assert y.shape == (5, 7)
    # batch_first done right: each sample's forecast depends on that sample only
    y_single = model(x[2:3])
    torch.testing.assert_close(y[2:3], y_single, rtol=0, atol=1e-6)
    x2 = x.clone()
    x2[0] += 10.0
    torch.testing.assert_close(model(x2)[1:], y[1:], rtol=0, atol=1e-6)


def test_same_seed_same_weights():
    a = build_model(ModelSpec(1, 4, 8, 1), seed=3)
    b = build_model(ModelSpec(1, 4, 8, 1), seed=3)
    c = build_model(ModelSpec(1, 4, 8, 1), seed=4)
    for (name, pa), pb, _pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cells(cell):
    model = build_model(ModelSpec(1, 3, 4, 1, cell=cell), seed=0)
    assert isinstance(model.rnn, torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)
    assert model(torch.randn(2, 10, 1)).shape == (2, 3)


def test_seasonal_naive_indices():
    target = torch.arange(10.0)[None]  # values equal their position
    # season 4, horizon 6: steps 0..3 read positions 6..9, steps 4..5 read 6..7 (two seasons back)
    assert seasonal_naive(target, 6, 4).tolist() == [[6.0, 7.0, 8.0, 9.0, 6.0, 7.0]]


def test_residual_head_is_seasonal_naive_when_head_is_zero():
    spec = ModelSpec(1, 6, 8, 1, residual_season=4, instance_norm=True)
    model = build_model(spec, seed=0)
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    x = torch.randn(3, 12, 1)
    torch.testing.assert_close(model(x), seasonal_naive(x[..., 0], 6, 4), rtol=0, atol=0)


def test_instance_norm_is_equivariant_to_affine_input_changes():
    model = build_model(ModelSpec(1, 5, 8, 1, instance_norm=True), seed=0).eval()
    x = torch.randn(4, 20, 1)
    a, b = 3.5, -2.0
    torch.testing.assert_close(model(a * x + b), a * model(x) + b, rtol=1e-4, atol=1e-4)


def test_untrained_residual_model_is_seasonal_naive():
    """The head starts at zero, so before any step the forecast is exactly seasonal naive."""
    model = build_model(ModelSpec(1, 6, 8, 2, residual_season=4, instance_norm=True), seed=0)
    assert not model.head.weight.any() and not model.head.bias.any()
    x = torch.randn(3, 12, 1)
    torch.testing.assert_close(model(x), seasonal_naive(x[..., 0], 6, 4), rtol=0, atol=0)
    plain = build_model(ModelSpec(1, 6, 8, 2), seed=0)  # without the residual head: a normal init
    assert plain.head.weight.abs().sum() > 0


def test_seasonal_profile_by_hand():
    """Three seasons of 4: the average shape around each season's mean, at the last season's level."""
    seasons = torch.tensor([[0.0, 2, 4, 2], [1, 1, 5, 5], [10, 12, 14, 16]])  # means 2, 3, 13
    shape = torch.tensor([(-2 - 2 - 3) / 3, (0 - 2 - 1) / 3, (2 + 2 + 1) / 3, (0 + 2 + 3) / 3])
    target = torch.cat([torch.tensor([7.0, 7.0]), seasons.flatten()])[None]
    expected = 13 + shape[[0, 1, 2, 3, 0, 1]]
    torch.testing.assert_close(seasonal_profile(target, 6, 4, 3), expected[None])
    torch.testing.assert_close(seasonal_profile(target, 6, 4, 1), seasonal_naive(target, 6, 4), rtol=0, atol=0)


def test_untrained_model_with_season_average_is_the_profile():
    spec = ModelSpec(1, 5, 8, 1, residual_season=4, season_average=3, instance_norm=True)
    model = build_model(spec, seed=0)
    x = torch.randn(2, 14, 1)
    torch.testing.assert_close(model(x), seasonal_profile(x[..., 0], 5, 4, 3), rtol=0, atol=1e-6)


@pytest.mark.parametrize("quantiles", [(), (0.1, 0.5, 0.9)])
def test_ensemble_forecast_is_the_members_mean(quantiles):
    spec = ModelSpec(1, 6, 8, 2, residual_season=4, instance_norm=True, quantiles=quantiles, ensemble=3)
    model = build_model(spec, seed=0).eval()
    assert len(model.rnn) == len(model.head) == 3
    x = torch.randn(5, 12, 1)
    point = model(x)[..., 1] if quantiles else model(x)
    torch.testing.assert_close(point, seasonal_naive(x[..., 0], 6, 4), rtol=0, atol=0)  # untrained: the base
    for head in model.head:
        torch.nn.init.normal_(head.weight)
    members = model(x, members=True)
    assert members.shape == (3, *model(x).shape)
    assert all(not torch.allclose(members[0], m) for m in members[1:])  # independently initialised
    torch.testing.assert_close(model(x), members.mean(dim=0), rtol=0, atol=1e-6)
    one = build_model(replace(spec, ensemble=1), seed=0)
    assert set(one.state_dict()) == {k.replace(".0.", ".", 1) for k in model.state_dict() if ".0." in k} | (
        {"calibration"} if quantiles else set()
    )


def test_plain_model_weights_do_not_change_with_the_ensemble_code():
    """ensemble=1 builds exactly the weights and keys the model always had (old exports load)."""
    model = build_model(ModelSpec(1, 4, 8, 2), seed=5)
    torch.manual_seed(5)
    rnn = torch.nn.LSTM(1, 8, 2, batch_first=True)
    head = torch.nn.Linear(8, 4)
    expected = {
        **{f"rnn.{k}": v for k, v in rnn.state_dict().items()},
        **{f"head.{k}": v for k, v in head.state_dict().items()},
    }
    assert model.state_dict().keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_half_season_level_by_hand():
    """Level = the mean of the last half season's values minus their phases' shape."""
    seasons = torch.tensor([[0.0, 2, 4, 2], [1, 1, 5, 5], [10, 12, 14, 16]])  # means 2, 3, 13
    shape = torch.tensor([(-2 - 2 - 3) / 3, (0 - 2 - 1) / 3, (2 + 2 + 1) / 3, (0 + 2 + 3) / 3])
    target = seasons.flatten()[None]
    level = ((14 - shape[2]) + (16 - shape[3])) / 2  # 13.33: fresher than the season's mean 13 on a rise
    expected = level + shape[[0, 1, 2, 3, 0]]
    torch.testing.assert_close(seasonal_profile(target, 5, 4, 3, level_steps=2), expected[None])
    torch.testing.assert_close(seasonal_profile(target, 5, 4, 3, level_steps=4), seasonal_profile(target, 5, 4, 3))


def test_untrained_model_with_half_season_level_is_that_base():
    spec = ModelSpec(1, 5, 8, 1, residual_season=4, season_average=3, instance_norm=True, base_level="half_season")
    x = torch.randn(2, 14, 1)
    expected = seasonal_profile(x[..., 0], 5, 4, 3, level_steps=2)
    torch.testing.assert_close(build_model(spec, seed=0)(x), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(expected, seasonal_profile(x[..., 0], 5, 4, 3))


def test_smoothed_level_by_hand():
    """Level = the exponentially weighted mean of the averaged seasons with the shape taken out."""
    seasons = torch.tensor([[0.0, 2, 4, 2], [1, 1, 5, 5], [10, 12, 14, 16]])  # means 2, 3, 13
    shape = torch.tensor([(-2 - 2 - 3) / 3, (0 - 2 - 1) / 3, (2 + 2 + 1) / 3, (0 + 2 + 3) / 3])
    target = seasons.flatten()[None]
    rest = (seasons - shape).flatten()
    weights = 0.5 ** torch.arange(11, -1, -1.0)  # 1 for the last step, 1/2 the one before, ...
    level = (rest * weights).sum() / weights.sum()  # 14.20: the last season's 13 plus its rise
    expected = level + shape[[0, 1, 2, 3, 0]]
    torch.testing.assert_close(seasonal_profile(target, 5, 4, 3, smoothing=0.5), expected[None])
    last = rest[-1] + shape[[0, 1, 2, 3, 0]]  # rate 1: the last value with its phase's shape taken out
    torch.testing.assert_close(seasonal_profile(target, 5, 4, 3, smoothing=1.0), last[None])
    spec = ModelSpec(1, 5, 8, 1, residual_season=4, season_average=3, base_level="smoothed", level_smoothing=0.5)
    torch.testing.assert_close(residual_base(target, spec), expected[None])
    x = torch.randn(2, 14, 1)  # the untrained model is that base
    torch.testing.assert_close(
        build_model(spec, seed=0)(x), seasonal_profile(x[..., 0], 5, 4, 3, smoothing=0.5), rtol=0, atol=1e-6
    )


def test_a_smoothed_level_follows_a_shift_the_seasons_mean_lags():
    """Five years of a monthly pattern whose level rose by 10 three months before the window's end."""
    pattern = torch.tensor([1.0, -1, 2, -2, 0, 3, -3, 1, 0, -1, 2, -2])
    values = pattern.repeat(5) + torch.cat([torch.zeros(57), torch.full((3,), 10.0)])
    errors = {}
    for name, kwargs in {"season": {}, "half": {"level_steps": 6}, "fast": {"smoothing": 0.8}}.items():
        errors[name] = float((seasonal_profile(values[None], 12, 12, 5, **kwargs)[0] - (pattern + 10)).abs().mean())
    assert errors["fast"] < 0.3 * errors["half"] < 0.3 * errors["season"], errors  # 1.56, 5.5, 7.5
