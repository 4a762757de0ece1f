"""Target transforms and scalers: statistics by hand, exact round trips, domain and constant-series errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import DataConfig
from pipeline.library import scaling
from pipeline.library.buffer import WindowBuffer
from pipeline.library.errors import DataError
from pipeline.library.series import SeriesSet
from pipeline.library.splits import split_and_scale

from .conftest import cli_in_process, series_table, write_config


def test_statistics_by_hand():
    x = np.array([1.0, 2.0, 4.0, 8.0, 100.0])
    assert scaling.fit(x, "standard") == pytest.approx((23.0, np.sqrt(np.mean((x - 23.0) ** 2))))
    # numpy's linear quantiles: q25 = 2, median = 4, q75 = 8
    assert scaling.fit(x, "robust") == (4.0, 6.0)
    assert scaling.fit(x, "minmax") == (1.0, 99.0)
    assert scaling.fit(x, "none") == (0.0, 1.0)
    loc, scale = scaling.fit(x, "minmax", "log1p")
    assert (loc, scale) == pytest.approx((np.log(2.0), np.log(101.0) - np.log(2.0)), rel=1e-15)


def test_minmax_maps_the_train_part_onto_unit_interval():
    x = np.array([3.0, -1.0, 7.0, 5.0])
    loc, scale = scaling.fit(x, "minmax")
    z = scaling.forward(x, loc, scale)
    assert z.min() == 0.0 and z.max() == 1.0


def test_robust_falls_back_to_std_when_iqr_is_zero():
    x = np.array([0.0] * 9 + [5.0])  # mostly zeros: IQR 0 but not constant
    loc, scale = scaling.fit(x, "robust")
    assert loc == 0.0 and scale == pytest.approx(np.std(x))
    assert scaling.has_spread(loc, scale)


@pytest.mark.parametrize("kind", ["standard", "robust", "minmax"])
def test_constant_series_has_no_spread(kind):
    loc, scale = scaling.fit(np.full(20, 7.5), kind)
    assert not scaling.has_spread(loc, scale)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(0, 1e6, allow_nan=False, allow_subnormal=False), min_size=2, max_size=50),
    kind=st.sampled_from(scaling.SCALINGS),
    transform=st.sampled_from(scaling.TRANSFORMS),
)
def test_round_trip_is_exact_in_float64(values, kind, transform):
    x = np.array(values)
    loc, scale = scaling.fit(x, kind, transform)
    if not scaling.has_spread(loc, scale):
        scale = 1.0
    z = scaling.forward(x, loc, scale, transform)
    assert z.dtype == np.float64
    back = scaling.inverse(z, loc, scale, transform)
    # float64 rounding only: a few ulps of the larger of the value and the scaler's magnitude
    tol = 1e-13 * (np.abs(x) + (np.abs(loc) + scale if transform == "none" else 1.0))
    assert np.all(np.abs(back - x) <= tol + 1e-300)


def test_inverse_is_increasing_so_quantiles_stay_ordered():
    z = np.sort(np.random.default_rng(0).normal(size=(3, 5, 4)), axis=-1)
    for transform in scaling.TRANSFORMS:
        y = scaling.inverse(z, np.array([1.0, 2.0, 3.0])[:, None, None], 2.0, transform)
        assert (np.diff(y, axis=-1) >= 0).all()


def test_log1p_buffer_matches_float64_maps():
    raw = np.array([0.0, 1.0, 9.0, 99.0, 0.5, 3.0], dtype=np.float32)
    records = [{"length": 4, "mean": 1.0, "scale": 2.0}, {"length": 2, "mean": 0.5, "scale": 0.25}]
    buffer = WindowBuffer.from_ingest(raw, series_table(records), lookback=1, horizon=1, transform="log1p")
    expected = np.concatenate(
        [(np.log1p(raw[:4].astype(np.float64)) - 1.0) / 2.0, (np.log1p(raw[4:].astype(np.float64)) - 0.5) / 0.25]
    )
    np.testing.assert_allclose(buffer.values.numpy(), expected, rtol=1e-6)
    back = scaling.inverse(
        buffer.values.numpy(), np.repeat([1.0, 0.5], [4, 2]), np.repeat([2.0, 0.25], [4, 2]), "log1p"
    )
    np.testing.assert_allclose(back, raw, rtol=1e-6, atol=1e-6)


def _series(a: np.ndarray) -> SeriesSet:
    return SeriesSet(["a"], [pd.Timestamp("2024-01-01")], np.array([len(a)]), a, "h")


@pytest.mark.parametrize("kind", ["robust", "minmax"])
def test_ingest_statistics_come_from_the_train_part_only(kind):
    a = np.arange(50.0) ** 1.5
    meta = split_and_scale(_series(a), DataConfig(scaling=kind, transform="none", val_size=10, test_size=10)).to_json()
    r = meta["series"][0]
    assert (r["mean"], r["scale"]) == scaling.fit(a[:30], kind)
    assert meta["scaling"] == kind and meta["transform"] == "none"


@pytest.mark.parametrize("kind", ["robust", "minmax"])
def test_ingest_refuses_a_constant_train_part(kind):
    with pytest.raises(DataError, match="series 'a' is constant on its train part"):
        split_and_scale(
            _series(np.r_[np.ones(30), np.arange(20.0)]),
            DataConfig(scaling=kind, transform="none", val_size=10, test_size=10),
        )


def test_log1p_on_negative_data_is_exit_2_naming_series_and_row(tmp_path):
    data = pd.DataFrame(
        {
            "time": list(pd.date_range("2024-01-01", periods=60, freq="h")) * 2,
            "id": ["a"] * 60 + ["b"] * 60,
            "y": np.r_[np.arange(60.0), np.arange(60.0)],
        }
    )
    data.loc[60 + 17, "y"] = -0.5
    path = tmp_path / "data.csv"
    data.to_csv(path, index=False)
    overrides = {"data.source": str(path), "data.id_column": "id", "data.target_column": "y", "data.transform": "log1p"}
    result = cli_in_process("ingest", "--config", str(write_config(tmp_path, overrides)))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "series 'b'" in result.stderr and "(row 78)" in result.stderr and "log1p" in result.stderr
    ok = cli_in_process("ingest", "--config", str(write_config(tmp_path, overrides)), "data.transform=none")
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_changing_the_scaler_or_transform_changes_the_fingerprint():
    """Window, train and evaluate are cached on the ingest fingerprint: a new scaler must retrain."""
    a = np.arange(1.0, 51.0) ** 1.5
    prints = {
        split_and_scale(_series(a), DataConfig(scaling=kind, transform=t, val_size=10, test_size=10)).fingerprint
        for kind in scaling.SCALINGS
        for t in scaling.TRANSFORMS
    }
    assert len(prints) == len(scaling.SCALINGS) * len(scaling.TRANSFORMS)
