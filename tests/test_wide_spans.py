"""A wide table whose series start and end at different times: each series is its own span, from ingest to predict.

The empty cells before a column's first value and after its last were missing values of that series: refused
under `data.missing: error`, and under interpolate/ffill filled with copies of its first and last values, which
entered its scaling statistics, its windows and its MASE scale. `predict` on the same table refused the series
that ends early (its last `lookback` cells are empty).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from .conftest import cli_in_process, write_config

pytestmark = pytest.mark.slow
LENGTH, LATE, EARLY = 200, 30, 20  # `late` starts LATE steps in, `early` ends EARLY steps before the table


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wide")
    t = np.arange(LENGTH)
    rng = np.random.default_rng(5)
    table = pd.DataFrame({"time": pd.date_range("2024-01-01", periods=LENGTH, freq="h").strftime("%Y-%m-%d %H:%M")})
    for k, name in enumerate(["early", "full", "late"]):
        table[name] = np.round(20 + 5 * k + 4 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.5, LENGTH), 3)
    table.loc[: LATE - 1, "late"] = np.nan
    table.loc[LENGTH - EARLY :, "early"] = np.nan
    table.to_csv(tmp / "wide.csv", index=False)
    overrides = {
        "data": {"source": str(tmp / "wide.csv"), "format": "wide", "freq": "h", "transform": "none"},
        "window.lookback": 24,
        "window.horizon": 6,
        "train.max_steps": 10,
        "export.onnx": False,
    }
    result = cli_in_process("run", "--config", str(write_config(tmp, overrides)))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, table


def test_each_series_is_ingested_from_its_first_to_its_last_value(trained):
    tmp, table = trained
    meta = json.loads((tmp / "run/ingest/meta.json").read_text())
    series = {s["id"]: s for s in meta["series"]}
    assert {k: s["length"] for k, s in series.items()} == {"early": 180, "full": 200, "late": 170}
    assert series["late"]["start"] == "2024-01-02T06:00:00"
    for name, s in series.items():  # the statistics of its own train part, not of copies of its end values
        values = table[name].dropna().to_numpy()
        assert s["train_end"] == len(values) - 2 * round(0.1 * len(values))
        np.testing.assert_allclose(s["mean"], values[: s["train_end"]].mean(), rtol=1e-6)
        np.testing.assert_allclose(s["scale"], values[: s["train_end"]].std(), rtol=1e-6)


def test_predict_on_the_same_table_forecasts_each_series_after_its_own_last_value(trained):
    tmp, _ = trained
    out = tmp / "forecast.csv"
    args = ["predict", "--model", str(tmp / "run/export"), "--input", str(tmp / "wide.csv"), "--output", str(out)]
    result = cli_in_process(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    first = pd.read_csv(out, parse_dates=["time"]).groupby("series")["time"].min()
    end = pd.Timestamp("2024-01-01") + pd.Timedelta(hours=LENGTH)
    assert first.to_dict() == {"early": end - pd.Timedelta(hours=EARLY), "full": end, "late": end}


def test_a_long_history_given_to_a_wide_model_is_named_as_such(trained):
    """Each column of a long history was read as a series, and the error blamed series 'id' for a duplicate
    timestamp."""
    tmp, table = trained
    long = table.melt(id_vars="time", var_name="id", value_name="value").dropna()
    long.to_csv(tmp / "long.csv", index=False)
    out = tmp / "never.csv"
    args = ["predict", "--model", str(tmp / "run/export"), "--input", str(tmp / "long.csv"), "--output", str(out)]
    result = cli_in_process(*args)
    assert result.returncode == 2 and not out.exists()
    first_repeat = int(long.reset_index(drop=True)["time"].duplicated().to_numpy().argmax()) + 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp / 'long.csv'}: row {first_repeat}: time {long['time'].iloc[first_repeat - 1]} appears in an "
        "earlier row too; this wide model reads one row per time and a column per series (columns: time, id, value)"
    ]
