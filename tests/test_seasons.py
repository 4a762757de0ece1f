"""Several seasonalities (found on the train and validation parts) and a residual base chosen on validation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import auto, load_config
from pipeline.library import seasonality
from pipeline.library.errors import ConfigError
from pipeline.library.model import multi_seasonal_profile, seasonal_profile
from tests.conftest import run_main, write_config

DAY, WEEK = 24, 168


@pytest.mark.parametrize(
    ("freq", "expected"),
    [
        ("30min", (48, 336)),
        ("h", (24, 168)),
        ("5min", (288, 2016)),
        ("D", (7, 365)),
        ("B", (5, 260)),
        ("W-FRI", (52,)),
        ("MS", (12,)),
        ("QS-JAN", (4,)),
        ("3MS", (4,)),
        ("YS-JAN", ()),
        ("7h", ()),
    ],
)
def test_candidate_seasons_follow_the_frequency(freq: str, expected: tuple[int, ...]):
    assert seasonality.candidates(freq) == expected


def _hourly(weeks: int, weekly: float, seed: int = 0, noise: float = 0.3) -> np.ndarray:
    """A daily cycle of amplitude 3, weekends lower by `weekly`, a slow level and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(weeks * WEEK)
    day = 3 * np.sin(2 * np.pi * t / DAY)
    weekend = weekly * ((t // DAY) % 7 >= 5)
    level = np.cumsum(rng.normal(0, 0.02, len(t)))
    return 10 + day - weekend + level + rng.normal(0, noise, len(t))


def _detect(values: np.ndarray, freq: str = "h") -> list[seasonality.SeasonCheck]:
    n = len(values)
    val_end, train_end = int(n * 0.8), int(n * 0.7)
    return seasonality.detect(values, np.array([0]), np.array([train_end]), np.array([val_end]), freq)


def test_a_daily_and_a_weekly_cycle_are_both_kept():
    checks = _detect(_hourly(12, weekly=4.0))
    assert seasonality.kept(checks) == (DAY, WEEK)
    assert all(c.error < c.without for c in checks)
    assert "beats naive" in checks[0].why and "beats seasonal naive at 24" in checks[1].why


def test_a_week_that_adds_nothing_to_the_day_is_not_kept():
    checks = _detect(_hourly(12, weekly=0.0))
    assert seasonality.kept(checks) == (DAY,)
    assert checks[1].error >= checks[1].without  # last week's hour is no better a guess than yesterday's


def test_a_random_walk_has_no_season_and_a_short_train_part_cannot_show_one():
    walk = np.cumsum(np.random.default_rng(1).normal(size=12 * WEEK))
    assert seasonality.kept(_detect(walk)) == ()
    short = _detect(_hourly(3, weekly=4.0))  # a train part of 2.1 weeks: one week fits twice, barely
    assert [c.kept for c in short] == [True, True]
    shorter = _detect(_hourly(2, weekly=4.0))
    assert seasonality.kept(shorter) == (DAY,)
    assert "holds < 2 cycles" in shorter[1].why


def test_the_test_part_is_never_read():
    values = _hourly(12, weekly=4.0)
    changed = values.copy()
    changed[int(len(values) * 0.8) :] = np.random.default_rng(2).normal(size=len(values) - int(len(values) * 0.8))
    assert _detect(values) == _detect(changed)


def _ingest(freq: str, detected):
    from pipeline.library.records import IngestRecord
    from tests.conftest import series_table

    table = series_table([{"id": "a", "length": 4000, "train_end": 3000, "val_end": 3500}])
    checks = None if detected is None else [{"season": p, "kept": True, "why": ""} for p in detected]
    return IngestRecord("f", freq, "standard", "none", 4000, table, season_checks=checks)


@pytest.mark.parametrize(
    ("detected", "lookback", "recurrent", "calendar", "seasons"),
    [
        ((48, 336), 1680, 336, ["day", "week"], [48, 336]),  # the base: five whole weeks within two thirds
        ((48,), 240, 144, ["day"], [48]),  # five days for the base, three for the recurrent layers
        ((), 240, 144, [], []),  # none kept: no calendar; the profile of the frequency's season stays a candidate
        (None, 240, 144, ["day", "week"], [48]),  # an ingest made before detection: the frequency's season
    ],
)
def test_auto_settings_follow_the_detected_seasons(detected, lookback, recurrent, calendar, seasons):
    cfg = auto.resolve(load_config(None, ["window.horizon=48"]), _ingest("30min", detected))
    assert (cfg.window.lookback, cfg.model.recurrent_steps) == (lookback, recurrent)
    assert (cfg.data.calendar, cfg.model.seasons) == (calendar, seasons)
    assert cfg.model.residual_season == 48 and cfg.evaluate.season_length == 48


def test_a_warm_start_keeps_the_seasons_and_calendar_its_weights_were_trained_with(tmp_path):
    from pipeline.library.model_spec import ModelSpec

    champion = ModelSpec(5, 48, 8, 1, residual_season=48, base="multi", seasons=(48, 336), calendar=("day", "week"))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "forecaster.json").write_text(json.dumps({"model": champion.to_dict()}))
    cfg = load_config(None, ["window.horizon=48", f"train.init_from={tmp_path}"])
    tonight = auto.resolve(cfg, _ingest("30min", (48,)))  # tonight's data shows no weekly cycle
    assert tonight.model.seasons == [48, 336] and tonight.data.calendar == ["day", "week"]
    assert tonight.window.lookback == 1680  # five weeks: the weekly season is kept
    fresh = auto.resolve(load_config(None, ["window.horizon=48"]), _ingest("30min", (48,)))
    assert fresh.model.seasons == [48] and fresh.data.calendar == ["day"]


def test_a_warm_start_whose_base_reads_more_than_the_window_is_one_config_error(tmp_path):
    from pipeline.library.model_spec import ModelSpec
    from pipeline.stages.train import choose_residual_base

    champion = ModelSpec(1, 12, 8, 1, residual_season=12, season_average=5, base_level="half_season", trend=0.5)
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "forecaster.json").write_text(json.dumps({"model": champion.to_dict()}))
    spec = ModelSpec(1, 12, 8, 1, residual_season=12, season_average=3)
    short = load_config(None, ["window.horizon=12", "window.lookback=48", f"train.init_from={tmp_path}"])
    with pytest.raises(ConfigError, match=r"residual base reads 60 input steps, window.lookback is 48"):
        choose_residual_base(short, spec, None, {})
    wide = load_config(None, ["window.horizon=12", "window.lookback=60", f"train.init_from={tmp_path}"])
    kept, fallback, record = choose_residual_base(wide, spec, None, {})
    assert (kept.season_average, kept.trend, kept.base_level, fallback, record) == (5, 0.5, "half_season", None, None)
    for saved in (  # every field of the starting weights' base is kept, the smoothed level's rate and recent shapes too
        replace(champion, base_level="smoothed", level_smoothing=0.8, trend=0.0),
        replace(champion, residual_season=2, base="multi", seasons=(2, 12), recent_shapes=True),
    ):
        (tmp_path / "forecaster.json").write_text(json.dumps({"model": saved.to_dict()}))
        kept, _, _ = choose_residual_base(wide, spec, None, {})
        fields = (
            "residual_season",
            "season_average",
            "base_level",
            "level_smoothing",
            "base",
            "seasons",
            "recent_shapes",
        )
        assert [getattr(kept, name) for name in fields] == [getattr(saved, name) for name in fields]
    # weights whose forecast was a fallback base: the base their correction was trained over, and the fallback
    recent = replace(champion, residual_season=2, base="multi", seasons=(2, 12), recent_shapes=True, trend=0.0)
    names = {"chosen": "level-adjusted profile 12 x 5 with half its trend", "fallback": "recent multi-seasonal ..."}
    fields = {"trained_base": champion.base_fields(), "fallback_base": recent.base_fields()}
    # weights whose fallback forecasts, and weights whose correction was kept: the same two bases for the warm start
    for forecast, used in ((recent, True), (champion, False)):
        record = {**names, "fallback_used": used, **fields}
        (tmp_path / "forecaster.json").write_text(json.dumps({"model": forecast.to_dict(), "base": record}))
        kept, fallback, record = choose_residual_base(wide, spec, None, {})
        assert kept.base_fields() == champion.base_fields() and fallback.base_fields() == recent.base_fields()
        assert record == {**names, "fallback_used": False, "kept_from": "train.init_from"}
    unnamed = {"fallback_used": True, **fields}  # a record without the bases' names
    (tmp_path / "forecaster.json").write_text(json.dumps({"model": recent.to_dict(), "base": unnamed}))
    _, _, record = choose_residual_base(wide, spec, None, {})
    assert (record["chosen"], record["fallback"]) == ("the base trained over", "the fallback base")
    bad = {**record, "fallback_used": True, **fields, "fallback_base": {"hidden_size": 3}}
    (tmp_path / "forecaster.json").write_text(json.dumps({"model": recent.to_dict(), "base": bad}))
    with pytest.raises(
        ConfigError, match=r"forecaster.json: base.fallback_base is not a residual base \(not residual base fields"
    ):
        choose_residual_base(wide, spec, None, {})


def test_explicit_seasons_an_auto_lookback_cannot_hold_are_an_error():
    cfg = load_config(None, ["window.horizon=48", "model.seasons=[24, 500]"])
    why = r"\(136: auto, bounded by the shortest train part, 320 steps, which holds fewer than two cycles of 500\)"
    with pytest.raises(ConfigError, match=rf"^model\.seasons: season 500 is longer than window\.lookback {why}"):
        auto.resolve_for(cfg, "h", 320)
    detected = auto.resolve_for(load_config(None, ["window.horizon=48"]), "h", 320, detected=(24, 500))
    assert detected.window.lookback == 136 and detected.model.seasons == [24]  # auto: left out quietly


def test_explicit_recurrent_steps_an_auto_lookback_cannot_hold_are_an_error():
    cfg = load_config(None, ["window.horizon=48", "model.recurrent_steps=200"])
    why = r"\(120: auto, bounded by the shortest train part, 320 steps\)"
    with pytest.raises(ConfigError, match=rf"^model\.recurrent_steps \(200\) is longer than window\.lookback {why}"):
        auto.resolve_for(cfg, "h", 320)
    assert auto.resolve_for(load_config(None, ["window.horizon=48", "model.recurrent_steps=120"]), "h", 320)


def test_explicit_seasons_are_used_as_given():
    cfg = load_config(None, ["window.horizon=48", "model.seasons=[169, 845]"])
    resolved = auto.resolve(cfg, _ingest("5min", (288,)))
    assert resolved.model.seasons == [169, 845] and resolved.model.residual_season == 169
    assert resolved.window.lookback == 2 * 845  # five cycles of 845 do not fit: the two whole ones in two thirds
    assert resolved.model.recurrent_steps == 845  # a whole week
    with pytest.raises(ConfigError, match=r"model\.seasons must be increasing"):
        load_config(None, ["model.seasons=[336, 48]"])


def test_multi_seasonal_profile_continues_an_exact_double_cycle():
    t = torch.arange(3 * WEEK + 24, dtype=torch.float64)
    day = torch.sin(2 * torch.pi * t / DAY)
    week = 2.0 * ((t // DAY) % 7 >= 5) - 4.0 / 7  # weekends up, mean zero over a week
    series = 5 + day + week
    window, future = series[None, : 3 * WEEK], series[3 * WEEK :]
    multi = multi_seasonal_profile(window, 24, (DAY, WEEK), 3, None)
    torch.testing.assert_close(multi[0], future, rtol=0, atol=1e-9)
    for rate in (0.2, 1.0):  # a steady level: any smoothed level is that level
        smoothed = multi_seasonal_profile(window, 24, (DAY, WEEK), 3, None, smoothing=rate)
        torch.testing.assert_close(smoothed[0], future, rtol=0, atol=1e-9)
    stepped = window.clone()
    stepped[0, -2:] += 3.0  # the level rose by 3 two steps before the end (a third of it goes into the shapes)
    moved = {
        rate: float((multi_seasonal_profile(stepped, 24, (DAY, WEEK), 3, None, smoothing=rate)[0] - future).mean())
        for rate in (0.0, 1.0)  # 0: the mean of the last day with the shapes taken out
    }
    assert moved[0.0] < 0.3 and moved[1.0] > 1.9, moved
    daily = seasonal_profile(window, 24, DAY, 3)  # the daily profile alone misses the weekend's step
    assert (daily[0] - future).abs().max() > 1.0
    same = multi_seasonal_profile(window, 24, (DAY,), 3, None)  # one season: the plain profile
    torch.testing.assert_close(same, daily, rtol=0, atol=1e-12)


@pytest.mark.parametrize("level_steps", [None, 6])
def test_a_profile_with_its_trend_continues_a_trending_season_exactly(level_steps):
    t = torch.arange(36 + 12, dtype=torch.float64)
    series = 100 + 0.5 * t + 3 * torch.sin(2 * torch.pi * t / 12)
    window, future = series[None, :36], series[36:]
    full = seasonal_profile(window, 12, 12, 3, level_steps, trend=1.0)
    torch.testing.assert_close(full[0], future, rtol=0, atol=1e-9)
    flat = seasonal_profile(window, 12, 12, 3, level_steps)  # no trend: the level stays where it was read
    assert (flat[0] - future).abs().min() > 3.0
    half = seasonal_profile(window, 12, 12, 3, level_steps, trend=0.5)  # half the slope from the last step on
    torch.testing.assert_close(half[0], future - 0.25 * torch.arange(1, 13, dtype=torch.float64), rtol=0, atol=1e-9)


def test_a_multi_seasonal_profile_with_its_trend_continues_a_trending_double_cycle_exactly():
    t = torch.arange(3 * WEEK + 24, dtype=torch.float64)
    series = 5 + 0.01 * t + torch.sin(2 * torch.pi * t / DAY) + 2.0 * ((t // DAY) % 7 >= 5)
    window, future = series[None, : 3 * WEEK], series[3 * WEEK :]
    torch.testing.assert_close(
        multi_seasonal_profile(window, 24, (DAY, WEEK), 3, 12, trend=1.0)[0], future, rtol=0, atol=1e-9
    )
    assert (multi_seasonal_profile(window, 24, (DAY, WEEK), 3, 12)[0] - future).abs().max() > 0.5


def _drifting_day(weeks: int, shift: float = 0.4) -> torch.Tensor:
    """Hourly: a daily sine whose phase moves by `shift` radians a week, a weekend step, level 5."""
    t = torch.arange(weeks * WEEK, dtype=torch.float64)
    phase = shift * (t // WEEK)
    return 5 + torch.sin(2 * torch.pi * t / DAY + phase) + 2.0 * ((t // DAY) % 7 >= 5)


def test_a_recent_multi_seasonal_profile_follows_a_day_that_changed_within_the_window():
    t = torch.arange(4 * WEEK + 24, dtype=torch.float64)
    early = torch.sin(2 * torch.pi * t / DAY)
    late = 0.5 * torch.sin(2 * torch.pi * t / DAY + 1.0)  # the day's shape from the fourth week on
    week = 2.0 * ((t // DAY) % 7 >= 5)
    series = 5 + torch.where(t < 3 * WEEK, early, late) + week
    window, future = series[None, : 4 * WEEK], series[4 * WEEK :]
    recent = multi_seasonal_profile(window, 24, (DAY, WEEK), 4, 12, recent=True)
    torch.testing.assert_close(recent[0], future, rtol=0, atol=1e-9)  # the last week's day, the weeks' weekend
    averaged = multi_seasonal_profile(window, 24, (DAY, WEEK), 4, 12)  # the four weeks' average day
    assert (averaged[0] - future).abs().max() > 0.9
    one = multi_seasonal_profile(window, 24, (DAY,), 4, 12, recent=True)  # one season: nothing to read afresh
    torch.testing.assert_close(one, multi_seasonal_profile(window, 24, (DAY,), 4, 12), rtol=0, atol=0)


def test_a_recent_multi_seasonal_profile_with_its_trend_continues_a_trending_double_cycle_exactly():
    t = torch.arange(3 * WEEK + 24, dtype=torch.float64)
    series = 5 + 0.01 * t + torch.sin(2 * torch.pi * t / DAY) + 2.0 * ((t // DAY) % 7 >= 5)
    window, future = series[None, : 3 * WEEK], series[3 * WEEK :]
    forecast = multi_seasonal_profile(window, 24, (DAY, WEEK), 3, 12, trend=1.0, recent=True)
    torch.testing.assert_close(forecast[0], future, rtol=0, atol=1e-9)


def test_a_smoothed_level_profile_from_the_config_is_built_and_reported_as_such():
    from types import SimpleNamespace

    from pipeline.config.model_spec import model_spec
    from pipeline.stages.evaluate import describe_base

    overrides = ["window.horizon=12", "model.base=profile", "model.base_level=smoothed", "model.level_smoothing=0.8"]
    ingest = _ingest("MS", (12,))
    spec = model_spec(auto.resolve(load_config(None, overrides), ingest), ingest)
    assert (spec.base, spec.base_level, spec.level_smoothing) == ("profile", "smoothed", 0.8)
    assert spec.to_dict()["level_smoothing"] == 0.8
    assert (
        describe_base(SimpleNamespace(model=spec, base=None))
        == f"smoothed-level profile 12 x {spec.season_average} at 0.8"
    )
    half = model_spec(auto.resolve(load_config(None, overrides[:3]), ingest), ingest)
    assert (half.base_level, half.level_smoothing) == ("smoothed", 0.5)
    assert "level_smoothing" not in model_spec(auto.resolve(load_config(None, overrides[:2]), ingest), ingest).to_dict()


def test_model_base_multi_recent_reads_the_day_from_the_last_week():
    from pipeline.config.model_spec import model_spec
    from pipeline.library import base_choice
    from pipeline.library.buffer import WindowBuffer
    from pipeline.library.losses import loss_function

    specs = {}
    for base in ("multi", "multi_recent"):
        cfg = load_config(None, ["window.horizon=24", f"model.base={base}", "model.seasons=[24, 168]"])
        specs[base] = model_spec(auto.resolve(cfg, _ingest("h", (24, 168))), _ingest("h", (24, 168)))
        assert specs[base].base == "multi" and specs[base].seasons == (DAY, WEEK)
    assert (specs["multi"].recent_shapes, specs["multi_recent"].recent_shapes) == (False, True)
    lookback = 4 * WEEK
    bases = {name: replace(spec, season_average=4, calendar=()) for name, spec in specs.items()}  # the target alone
    for shift, noise, better in ((0.4, 0.05, "multi_recent"), (0.0, 0.3, "multi")):
        values = _drifting_day(12, shift) + torch.from_numpy(np.random.default_rng(1).normal(0, noise, 12 * WEEK))
        buffer = WindowBuffer(values.float(), torch.zeros(1, dtype=torch.int64), lookback, 24)
        pairs = torch.tensor([[0, start] for start in range(0, 12 * WEEK - lookback - 24, 5)])
        losses = base_choice.window_losses(bases, buffer, pairs, 256, loss_function("mae"))
        worse = ({"multi", "multi_recent"} - {better}).pop()
        assert losses[better] < 0.97 * losses[worse], losses  # a drifting day: the last week's; a steady one: all four


def test_the_recent_profile_is_a_fallback_never_trained_over():
    from pipeline.library import base_choice
    from pipeline.library.buffer import WindowBuffer
    from pipeline.library.losses import loss_function
    from pipeline.library.model_spec import ModelSpec

    lookback = 5 * WEEK
    spec = ModelSpec(1, 24, 8, 1, residual_season=DAY, season_average=3, base_level="half_season")
    pairs = torch.tensor([[0, start] for start in range(0, 12 * WEEK - lookback - 24, 5)])
    for shift, fallback_expected in ((0.4, "recent multi-seasonal profile 24 + 168 x 5"), (0.0, None)):
        values = _drifting_day(12, shift) + torch.from_numpy(np.random.default_rng(1).normal(0, 0.05, 12 * WEEK))
        buffer = WindowBuffer(values.float(), torch.zeros(1, dtype=torch.int64), lookback, 24)
        trained, fallback, record = base_choice.choose_base(
            spec, (DAY, WEEK), lookback, buffer, pairs, 256, loss_function("mae")
        )
        assert not trained.recent_shapes and not record["chosen"].startswith("recent")
        assert record.get("fallback") == fallback_expected
        if fallback_expected:  # a drifting day: the recent profile is the best base, by more than 3%
            assert fallback.recent_shapes
            assert (fallback.base, fallback.seasons, fallback.trend) == ("multi", (24, 168), 0)
            assert record["loss"][fallback_expected] < 0.97 * record["loss"][record["chosen"]]
            assert record["fallback_used"] is False  # until the model is not better than it on validation
        else:  # a steady one: no fallback, the plain profile is better
            assert fallback is None and record["loss"][record["chosen"]] < min(
                v for k, v in record["loss"].items() if k.startswith("recent")
            )


@pytest.mark.parametrize(
    ("lookback", "seasons", "profiles"),
    [
        (60, (12,), ["profile 12 x 3", "profile 12 x 5"]),  # five years: three and five cycles
        (40, (12,), ["profile 12 x 3"]),  # three years only
        (1476, (48, 336), ["profile 48 x 3", "profile 48 x 5", "multi-seasonal profile 48 + 336 x 3",
                           "multi-seasonal profile 48 + 336 x 4"]),  # four weeks fit: four stand in for five
    ],
)  # fmt: skip
def test_the_candidate_bases_follow_what_the_window_holds(lookback, seasons, profiles):
    from pipeline.library import base_choice
    from pipeline.library.model_spec import ModelSpec

    spec = ModelSpec(1, 12, 8, 1, residual_season=seasons[0], season_average=3, base_level="half_season")
    found = base_choice.candidates(spec, seasons, lookback)
    variants = {"level-adjusted", "smoothed-level", "trend", "recent"}
    plain = [name for name in found if "profile" in name and not variants & set(name.split())]
    assert plain == profiles
    for name in profiles:  # each with a fresher level (the multi-seasonal one has it already) and both trends
        adjusted = name if "multi" in name else f"level-adjusted {name}"
        assert {adjusted, f"{adjusted} with half its trend", f"{adjusted} with its trend"} <= set(found)
        assert (found[f"{adjusted} with half its trend"].trend, found[f"{adjusted} with its trend"].trend) == (0.5, 1)
        assert found[name].season_average == int(name.rsplit(" ", 1)[1])
        assert not found[name].recent_shapes
        if "multi" in name:  # and as `model.base: multi_recent` reads it (the day from the last week), flat
            recent = found[f"recent {name}"]
            assert (recent.recent_shapes, recent.trend) == (True, 0.0)
            assert recent.season_average == found[name].season_average
            assert f"recent {name} with half its trend" not in found
        if "multi" not in name:  # a season's profile also at a smoothed level, at three rates
            smoothed = [found[f"smoothed-level {name} at {rate}"] for rate in (0.2, 0.5, 0.8)]
            assert [(b.base_level, b.level_smoothing, b.trend) for b in smoothed] == [
                ("smoothed", rate, 0.0) for rate in (0.2, 0.5, 0.8)
            ]
    assert list(found)[:2] == ["naive", f"seasonal naive {seasons[0]}"]  # the simplest first: they win a tie


@pytest.mark.slow
def test_weekly_seasonal_naive_is_chosen_where_it_is_the_best_forecast(tmp_path):
    """A seasonal random walk at the week: last week's same hour is the best forecast there is."""
    rng = np.random.default_rng(0)
    weeks = 16
    pattern = rng.normal(0, 1, WEEK)
    values = np.concatenate([pattern := pattern + rng.normal(0, 0.15, WEEK) for _ in range(weeks)]) + 20
    frame = pd.DataFrame({"time": pd.date_range("2024-01-01", periods=len(values), freq="h"), "value": values})
    source = tmp_path / "weekly.csv"
    frame.to_csv(source, index=False)
    overrides = {
        "data": {"source": str(source), "time_column": "time", "target_column": "value", "freq": "h"},
        "window": {"horizon": 24},
        "model": {"hidden_size": 16, "num_layers": 1},
        "train.max_steps": 30,
        "train.loss": "mae",
        "train.checkpoint_every": 0,
        "evaluate.plot_series": 0,
        "export.onnx": True,
    }
    config = write_config(tmp_path, overrides)
    code, err = run_main(["run", "--config", str(config)])
    assert code == 0, err[-2000:]
    run = tmp_path / "run"
    ingest = json.loads((run / "ingest" / "meta.json").read_text())
    assert 168 in ingest["seasons"]["kept"]
    train = json.loads((run / "train" / "meta.json").read_text())
    losses = train["base"]["loss"]  # on the validation windows and the training windows
    assert train["base"]["chosen"] == "seasonal naive 168", losses
    assert losses["seasonal naive 168"] < 0.9 * min(v for k, v in losses.items() if k != "seasonal naive 168")
    base_val = train["blend"]["val_loss"]["0.0"]  # the chosen base alone on the validation windows
    assert train["state"]["best_val"] <= base_val + 1e-9  # the model never does worse there than its base
    assert train["blend"]["val_loss"][str(train["blend"]["weight"])] <= base_val + 1e-9
    assert train["model"]["residual_season"] == 168 and train["model"]["season_average"] == 1
    report = (run / "evaluate" / "report.md").read_text()
    assert "residual base: seasonal naive 168 (chosen on validation)" in report
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert 168 in metrics["seasons"]
    assert json.loads((run / "export" / "meta.json").read_text())["onnx_parity"] < 1e-4


def _drift_config(tmp_path: Path, **overrides) -> Path:
    """A config reading `_drifting_day(12)` with a little noise (written to tmp_path/drift.csv): hourly, a day's and
    a week's season, a small network, the MAE loss; `overrides` (dotted keys) on top."""
    values = _drifting_day(12).numpy() + np.random.default_rng(2).normal(0, 0.05, 12 * WEEK)
    frame = pd.DataFrame({"time": pd.date_range("2024-01-01", periods=len(values), freq="h"), "value": values})
    frame.to_csv(tmp_path / "drift.csv", index=False)
    base = {
        "data": {"source": str(tmp_path / "drift.csv"), "time_column": "time", "target_column": "value"},
        "data.freq": "h",
        "data.transform": "none",
        "window": {"horizon": 24},
        "model": {"hidden_size": 8, "num_layers": 1, "seasons": [DAY, WEEK]},
        "train.loss": "mae",
        "train.checkpoint_every": 0,
        "evaluate.plot_series": 0,
    }
    return write_config(tmp_path, {**base, **overrides})


def test_the_fallback_forecasts_where_it_beats_the_model_on_validation_by_a_standard_error(tmp_path):
    from safetensors.torch import load_file

    from pipeline.library.checkpoint import save_weights
    from pipeline.library.model import build_model
    from pipeline.stages.train import fall_back, load_training_data

    config = _drift_config(tmp_path)
    for stage in ("ingest", "window"):
        code, err = run_main([stage, "--config", str(config)])
        assert code == 0, err[-2000:]
    data = load_training_data(auto.resolve(load_config(config)), torch.device("cpu"))
    assert data.fallback is not None and data.fallback.recent_shapes and not data.spec.recent_shapes
    weights = tmp_path / "model.safetensors"
    save_weights(build_model(data.spec).state_dict(), weights)  # an untrained head: the model is its base alone
    # the blend kept half of a correction that adds nothing: the fallback alone is clearly better on validation
    spec, base, blend = fall_back(data, data.spec, {"weight": 0.5}, weights, 256)
    assert spec == data.fallback and base["fallback_used"] is True
    assert blend == {"weight": 0.0, "kept_before_fallback": 0.5} and float(load_file(weights)["blend"]) == 0.0
    errors = base["validation_error"]
    assert errors["fallback"] < 0.97 * errors["model"]
    assert base["trained_base"] == data.spec.base_fields()
    # a fallback worse than the model on validation is not used (naive here)
    naive = {"residual_season": 1, "season_average": 1, "base_level": "season", "seasons": (), "base": "profile"}
    worse = replace(data, fallback=data.spec.with_base(naive))
    spec, base, blend = fall_back(worse, data.spec, {"weight": 0.5}, weights, 256)
    assert (spec, blend, base.get("fallback_used")) == (data.spec, {"weight": 0.5}, False)
    assert base["validation_error"]["fallback"] > 1.5 * base["validation_error"]["model"]
    assert (base["trained_base"], base["fallback_base"]) == (data.spec.base_fields(), worse.fallback.base_fields())
    # on a tie the model is kept (here the fallback is the model's own base, and the correction adds nothing)
    spec, base, blend = fall_back(replace(data, fallback=data.spec), data.spec, {"weight": 0.5}, weights, 256)
    assert (spec, blend) == (data.spec, {"weight": 0.5})
    # a share the config fixes is kept: no comparison
    spec, base, blend = fall_back(data, data.spec, {"weight": 0.5}, weights, 256, compare=False)
    assert (spec, blend, "validation_error" in base) == (data.spec, {"weight": 0.5}, False)


@pytest.mark.slow
def test_with_no_correction_kept_the_forecast_is_the_recent_profile_it_was_not_trained_over(tmp_path):
    for blend, used in ((0.0, True), (1.0, False)):
        out = tmp_path / f"blend{blend}"
        config = _drift_config(
            tmp_path, output_dir=str(out), **{"model.blend": blend, "train.max_steps": 10, "export.onnx": used}
        )
        code, err = run_main(["run", "--config", str(config)])
        assert code == 0, err[-2000:]
        train = json.loads((out / "train" / "meta.json").read_text())
        recent = "recent multi-seasonal profile 24 + 168 x 5"
        assert (train["base"]["fallback"], train["base"]["fallback_used"]) == (recent, used)
        assert not train["base"]["chosen"].startswith("recent")  # the correction is trained over another base
        assert train["model"].get("recent_shapes", False) is used
        assert (train["blend"] or {"weight": 1.0})["weight"] == blend  # 1: no blend, no fallback
        base = json.loads((out / "evaluate" / "metrics.json").read_text())["base"]
        if used:  # the report names what forecasts; ONNX runs the same base
            assert base == f"{recent} (chosen on validation; no correction kept over {train['base']['chosen']})"
            assert json.loads((out / "export" / "meta.json").read_text())["onnx_parity"] < 1e-4
        else:
            assert base == f"{train['base']['chosen']} (chosen on validation)"
    first = json.loads((tmp_path / "blend0.0" / "train" / "meta.json").read_text())["base"]
    trained_over = first["trained_base"]
    assert trained_over["recent_shapes"] is False  # the first run's correction was trained over another base
    served = json.loads((tmp_path / "blend0.0" / "export" / "forecaster.json").read_text())
    assert served["base"]["trained_base"] == trained_over and served["model"]["recent_shapes"] is True
    # a warm start from the export trains on over the base its correction was learned on, never over the fallback
    for blend, used in ((0.0, True), (0.5, False)):  # a share: the blend's buffer is part of the architecture
        out = tmp_path / f"warm{blend}"
        start = str(tmp_path / "blend0.0" / "export")
        config = _drift_config(
            tmp_path, output_dir=str(out), **{"model.blend": blend, "train.max_steps": 2, "train.init_from": start}
        )
        code, err = run_main(["run", "--config", str(config)])
        assert code == 0, err[-2000:]
        assert "starting from the weights of" in err
        train = json.loads((out / "train" / "meta.json").read_text())
        assert (train["base"]["chosen"], train["base"]["fallback"]) == (first["chosen"], first["fallback"])
        assert (train["base"]["fallback_used"], train["base"]["kept_from"]) == (used, "train.init_from")
        assert train["model"].get("recent_shapes", False) is used
        if not used:  # the correction kept runs over the base it was trained over, the first run's
            assert {k: train["model"].get(k, v) for k, v in trained_over.items()} == trained_over
        base = json.loads((out / "evaluate" / "metrics.json").read_text())["base"]
        assert "(kept from the starting weights" in base
        served = json.loads((out / "export" / "forecaster.json").read_text())["base"]  # the next night's start
        assert (served["trained_base"], served["fallback_used"]) == (trained_over, used)
        assert served["fallback_base"] == first["fallback_base"] and served["fallback_base"]["recent_shapes"] is True
