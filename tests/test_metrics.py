"""Metrics and naive baselines on small arrays with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.library import metrics as M
from pipeline.library.chunks import series_chunks

from .conftest import series_table

ACTUAL = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
FORECAST = np.array([[2.0, 2.0, 1.0], [4.0, 7.0, 6.0]])
SCALE = np.array([2.0, 0.5])


def test_error_terms_by_hand():
    terms = M.error_terms(ACTUAL, FORECAST, SCALE)
    # errors: [[1, 0, -2], [0, 2, 0]]
    np.testing.assert_array_equal(terms["mae"], [[1, 0, 2], [0, 2, 0]])
    np.testing.assert_array_equal(terms["mse"], [[1, 0, 4], [0, 4, 0]])
    # sMAPE: 200 |e| / (|a| + |f|)
    np.testing.assert_allclose(terms["smape"], [[200 / 3, 0, 100], [0, 200 * 2 / 12, 0]], rtol=1e-15)
    # MASE: |e| / scale of the window's series
    np.testing.assert_array_equal(terms["mase"], [[0.5, 0, 1], [0, 4, 0]])


def test_summarise_by_hand():
    result = M.summarise(M.error_terms(ACTUAL, FORECAST, SCALE))
    assert set(result) == set(M.METRICS)
    assert result["mae"] == pytest.approx(5 / 6, rel=1e-15)
    assert result["rmse"] == pytest.approx(math.sqrt(9 / 6), rel=1e-15)
    assert result["smape"] == pytest.approx((200 / 3 + 100 + 100 / 3) / 6, rel=1e-15)
    assert result["smape"] == pytest.approx(100 / 3, rel=1e-15)
    assert result["mase"] == pytest.approx(5.5 / 6, rel=1e-15)
    assert all(isinstance(v, float) for v in result.values())


def test_perfect_forecast_scores_zero():
    result = M.summarise(M.error_terms(ACTUAL, ACTUAL.copy(), SCALE))
    assert result == {"mae": 0.0, "rmse": 0.0, "smape": 0.0, "mase": 0.0}


def test_smape_zero_over_zero_is_zero_and_bounds():
    actual = np.array([[0.0, 0.0, 3.0, -2.0]])
    forecast = np.array([[0.0, 1.0, -3.0, -2.0]])
    terms = M.error_terms(actual, forecast, np.array([1.0]))
    # 0/0 -> 0; one side zero -> 200; opposite signs -> 200; equal -> 0
    np.testing.assert_array_equal(terms["smape"], [[0.0, 200.0, 200.0, 0.0]])
    assert M.summarise(terms)["smape"] == 100.0


def test_error_terms_accumulate_in_float64():
    actual = np.array([[16777216.0, 1.0]], dtype=np.float32)  # 2**24
    forecast = np.array([[16777217.0, 1.0]], dtype=np.float64)
    terms = M.error_terms(actual, forecast, np.array([1.0]))
    assert terms["mae"].dtype == np.float64
    np.testing.assert_array_equal(terms["mae"], [[1.0, 0.0]])


# ---------------------------------------------------------------- baselines

RAW = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0, 8.0])


def test_target_positions():
    pos = M.target_positions(np.array([0]), np.array([[0, 2]]), lookback=4, horizon=3)
    np.testing.assert_array_equal(pos, [[6, 7, 8]])
    pos = M.target_positions(np.array([0, 12]), np.array([[1, 0], [0, 1], [1, 3]]), lookback=4, horizon=2)
    np.testing.assert_array_equal(pos, [[16, 17], [5, 6], [19, 20]])


def test_naive_forecast():
    pos = np.array([[6, 7, 8], [3, 4, 5]])
    np.testing.assert_array_equal(M.naive_forecast(RAW, pos), [[9.0, 9.0, 9.0], [4.0, 4.0, 4.0]])


def test_seasonal_naive_within_one_season():
    pos = np.array([[6, 7]])
    # season 3: each step takes the value three steps earlier: raw[3], raw[4]
    np.testing.assert_array_equal(M.seasonal_naive_forecast(RAW, pos, 3), [[1.0, 5.0]])


def test_seasonal_naive_horizon_longer_than_season():
    pos = np.array([[6, 7, 8, 9, 10]])
    # season 2: the last observed season (raw[4], raw[5]) = (5, 9) repeats
    np.testing.assert_array_equal(M.seasonal_naive_forecast(RAW, pos, 2), [[5.0, 9.0, 5.0, 9.0, 5.0]])
    # season 3: last season raw[3:6] = (1, 5, 9) repeats
    np.testing.assert_array_equal(M.seasonal_naive_forecast(RAW, pos, 3), [[1.0, 5.0, 9.0, 1.0, 5.0]])
    # season 1 is the naive forecast
    np.testing.assert_array_equal(M.seasonal_naive_forecast(RAW, pos, 1), M.naive_forecast(RAW, pos))


def test_seasonal_naive_never_reads_a_target():
    # every value used lies before the window's first target position
    pos = M.target_positions(np.array([0]), np.array([[0, 3], [0, 1]]), lookback=5, horizon=7)
    for season in range(1, 6):
        h = np.arange(7)
        src = pos - season * (1 + h // season)
        assert (src < pos[:, :1]).all()
        np.testing.assert_array_equal(M.seasonal_naive_forecast(RAW, pos, season), RAW[src])


def test_mase_scale_by_hand():
    raw = np.array([1.0, 3.0, 2.0, 5.0, 4.0, 8.0, 100.0, 200.0, 0.0, 0.0, 10.0, 20.0, 40.0, 7.0, 7.0])
    offsets = np.array([0, 8, 13])
    train_end = np.array([6, 4, 2])
    # series 0, train [1, 3, 2, 5, 4, 8] (100, 200 lie after train_end and are ignored)
    np.testing.assert_allclose(
        M.mase_scale(raw, offsets, train_end, 1)[:2],
        [np.mean([2, 1, 3, 1, 4]), np.mean([0, 10, 10])],
        rtol=1e-15,
    )
    scale = M.mase_scale(raw, offsets, train_end, 2)
    assert scale[0] == pytest.approx(np.mean([1, 2, 2, 3]), rel=1e-15)  # = 2.0
    assert scale[1] == pytest.approx(np.mean([10, 20]), rel=1e-15)  # = 15.0
    assert math.isnan(scale[2])  # train part not longer than the season


def test_points_not_observed_are_left_out_of_every_score():
    """NaN actuals (points data.missing filled): each mean is over the observed points only."""
    actual = np.array([[1.0, np.nan, 3.0], [np.nan, 5.0, 6.0]])
    forecast = np.array([[2.0, 9.0, 3.0], [9.0, 3.0, 9.0]])
    terms = M.error_terms(actual, forecast, np.array([1.0, 2.0]))
    out = M.summarise(terms)
    assert out["mae"] == pytest.approx((1 + 0 + 2 + 3) / 4)
    assert out["rmse"] == pytest.approx(np.sqrt((1 + 0 + 4 + 9) / 4))
    assert out["mase"] == pytest.approx((1 + 0 + 1 + 1.5) / 4)
    assert out["smape"] == pytest.approx((200 / 3 + 0 + 400 / 8 + 600 / 15) / 4)
    by = M.summarise_by_series(terms, np.array([0, 1]), 3)
    np.testing.assert_allclose(by["mae"][:2], [0.5, 2.5])
    assert np.isnan(by["mae"][2])  # no window
    band = np.stack([forecast - 1, forecast, forecast + 1], axis=-1)
    q = M.summarise_quantiles(actual, band, [0.1, 0.5, 0.9], np.array([1.0, 2.0]))
    assert q["coverage"]["0.1-0.9"]["empirical"] == pytest.approx(2 / 4)  # 1 in [1, 3]; 3 in [2, 4]; not 5, 6
    assert q["pinball_by_quantile"]["0.5"] == pytest.approx(0.5 * 6 / 4)
    assert np.isnan(M.summarise(M.error_terms(np.full((1, 2), np.nan), np.ones((1, 2)), np.ones(1)))["mae"])
    broken = M.summarise(M.error_terms(np.ones((1, 2)), np.array([[1.0, np.nan]]), np.ones(1)))
    assert broken["mae"] == np.inf  # a forecast that is not a number shows, it is not left out


def test_mase_scale_leaves_out_pairs_with_a_point_not_observed():
    raw = np.array([1.0, 3.0, np.nan, 5.0, 4.0, 8.0, 2.0, 4.0, 7.0])
    offsets, train_end = np.array([0, 6]), np.array([6, 3])
    # series 0, season 1: |3-1|, (3, nan), (nan, 5), |4-5|, |8-4| -> 3 pairs; series 1: |4-2|, |7-4|
    np.testing.assert_allclose(M.mase_scale(raw, offsets, train_end, 1), [(2 + 1 + 4) / 3, (2 + 3) / 2])
    # season 2: (nan, 1), |5-3|, (4, nan), |8-5| -> 2 pairs
    assert M.mase_scale(raw, offsets, train_end, 2)[0] == pytest.approx((2 + 3) / 2)
    assert np.isnan(M.mase_scale(np.array([1.0, np.nan, 2.0]), np.array([0]), np.array([3]), 1)[0])


# ---------------------------------------------------------------- per series


def test_summarise_by_series_matches_manual():
    rng = np.random.default_rng(3)
    actual = rng.normal(10, 3, size=(7, 4))
    forecast = actual + rng.normal(0, 1, size=(7, 4))
    series = np.array([0, 2, 0, 2, 2, 0, 4])
    mase_per_series = np.array([1.5, 9.0, 0.7, 9.0, 2.5])
    terms = M.error_terms(actual, forecast, mase_per_series[series])
    by = M.summarise_by_series(terms, series, n_series=5)
    assert set(by) == set(M.METRICS)
    for s in (0, 2, 4):
        rows = series == s
        a, f = actual[rows], forecast[rows]
        err = f - a
        assert by["mae"][s] == pytest.approx(np.mean(np.abs(err)), rel=1e-12)
        assert by["rmse"][s] == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-12)
        assert by["smape"][s] == pytest.approx(np.mean(200 * np.abs(err) / (np.abs(a) + np.abs(f))), rel=1e-12)
        assert by["mase"][s] == pytest.approx(np.mean(np.abs(err)) / mase_per_series[s], rel=1e-12)
        single = M.summarise({k: v[rows] for k, v in terms.items()})
        for metric in M.METRICS:
            assert by[metric][s] == pytest.approx(single[metric], rel=1e-12)
    # series without windows have no score
    assert np.isnan(by["mae"][[1, 3]]).all() and np.isnan(by["rmse"][[1, 3]]).all()


def test_summarise_by_series_by_hand():
    terms = M.error_terms(ACTUAL, FORECAST, SCALE)
    by = M.summarise_by_series(terms, np.array([1, 0]), n_series=2)
    np.testing.assert_allclose(by["mae"], [2 / 3, 1.0], rtol=1e-15)
    np.testing.assert_allclose(by["rmse"], [math.sqrt(4 / 3), math.sqrt(5 / 3)], rtol=1e-15)
    np.testing.assert_allclose(by["mase"], [4 / 3, 0.5], rtol=1e-15)
    np.testing.assert_allclose(by["smape"], [(200 * 2 / 12) / 3, (200 / 3 + 100) / 3], rtol=1e-15)


# ---------------------------------------------------------------- chunked per-series work


def _mase_scale_by_loop(raw, offsets, train_end, season):
    out = np.empty(len(offsets))
    for i, (o, e) in enumerate(zip(offsets, train_end)):
        part = raw[o : o + e]
        out[i] = np.mean(np.abs(part[season:] - part[:-season])) if e > season else np.nan
    return out


@pytest.mark.parametrize("chunk", [1, 7, 50, 1 << 22])
@pytest.mark.parametrize("season", [1, 4, 12])
def test_mase_scale_in_chunks_equals_a_loop_per_series(monkeypatch, chunk, season):
    rng = np.random.default_rng(season)
    lengths = rng.integers(1, 40, 150)  # many shorter than a season: NaN
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    train_end = np.maximum(1, (lengths * 0.7).astype(int))
    raw = rng.normal(10, 3, lengths.sum())
    monkeypatch.setattr(M, "series_chunks", lambda o: series_chunks(o, chunk))
    got, expected = M.mase_scale(raw, offsets, train_end, season), _mase_scale_by_loop(raw, offsets, train_end, season)
    assert np.array_equal(np.isnan(got), np.isnan(expected)) and np.isnan(got).any() and not np.isnan(got).all()
    np.testing.assert_allclose(got[~np.isnan(got)], expected[~np.isnan(expected)], rtol=1e-12)


def test_series_chunks_cover_every_series_once_in_order():
    offsets = np.array([0, 3, 10, 11, 30, 31, 32])
    chunks = series_chunks(offsets, 10)
    assert chunks == [(0, 2), (2, 4), (4, 7)]  # a chunk starts at the first series at or past 0, 10, 20, 30
    assert series_chunks(np.array([], dtype=np.int64)) == []
    assert series_chunks(offsets) == [(0, 7)]


def test_buffer_scaling_in_chunks_is_bit_identical_to_per_series(monkeypatch):
    from pipeline.library import buffer as data
    from pipeline.library import scaling
    from pipeline.library.buffer import WindowBuffer

    rng = np.random.default_rng(1)
    lengths = rng.integers(5, 30, 40)
    raw = rng.normal(100, 20, lengths.sum()).astype(np.float32)
    records = [
        {"length": int(n), "mean": float(rng.normal(100, 5)), "scale": float(rng.uniform(1, 30))} for n in lengths
    ]
    monkeypatch.setattr(data, "series_chunks", lambda o: series_chunks(o, 64))
    got = WindowBuffer.from_ingest(raw, series_table(records), 2, 1).values.numpy()
    start = 0
    for r in records:
        end = start + r["length"]
        expected = scaling.forward(raw[start:end], r["mean"], r["scale"], out=np.empty(end - start, np.float32))
        assert np.array_equal(got[start:end], expected)
        start = end


def test_forecast_table_times_for_fixed_and_calendar_steps():
    from pipeline.library.scoring import ScoredWindows, forecast_table

    records = [{"id": "a", "start": "2020-01-01T00:00:00"}, {"id": "b", "start": "2021-03-01T00:00:00"}]
    series = series_table([{**r, "length": 30} for r in records])
    pairs = np.array([[1, 0], [0, 5], [1, 3]])
    steps = np.array([[10, 11], [20, 21], [13, 14]])  # positions of the forecast points within their series
    actual = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    forecasts = {"model": actual + 0.5, "naive": actual - 1, "seasonal_naive": actual * 2}
    positions = series.offsets[pairs[:, 0], None] + steps

    def windows(band=None, quantiles=()):
        return ScoredWindows(pairs, positions, actual, forecasts, np.ones(3), list(quantiles), band)

    monthly = forecast_table(windows(), series, "MS")
    times = ["2022-01-01", "2022-02-01", "2021-09-01", "2021-10-01", "2022-04-01", "2022-05-01"]
    assert monthly["time"].astype(str).tolist() == times
    assert monthly["origin"].astype(str).tolist() == [times[0]] * 2 + [times[2]] * 2 + [times[4]] * 2
    assert monthly["series"].tolist() == ["b", "b", "a", "a", "b", "b"] and monthly["step"].tolist() == [1, 2] * 3
    hourly = forecast_table(windows(), series, "h")
    assert str(hourly["time"].iloc[0]) == "2021-03-01 10:00:00" and str(hourly["time"].iloc[3]) == "2020-01-01 21:00:00"
    band = np.stack([actual - 1, actual, actual + 1], axis=-1)
    q = forecast_table(windows(band, [0.1, 0.5, 0.9]), series, "h")
    assert list(q.columns) == [
        "series", "origin", "time", "step", "actual", "forecast", "q0.1", "q0.9", "naive", "seasonal_naive"
    ]  # fmt: skip
    assert q["q0.9"].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
