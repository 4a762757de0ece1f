"""Plots people read: forecasts over real time, one loss curve whatever the tracker, linked from the report."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.library.report import forecast_figure, write_loss_curve
from pipeline.library.scoring import ScoredWindows, forecast_times

from .conftest import series_table


@pytest.mark.parametrize("freq", ["h", "MS"])
def test_the_forecast_plot_runs_over_the_series_timestamps(freq):
    series = series_table([{"id": "a", "length": 60, "start": "2024-03-01T00:00:00"}])
    pairs = np.array([[0, 24], [0, 36]])
    positions = pairs[:, 1:2] + 12 + np.arange(6)[None, :]  # lookback 12, horizon 6
    actual = np.arange(12.0).reshape(2, 6)
    forecasts = {"model": actual + 1, "naive": actual - 1, "seasonal_naive": actual * 0.5}
    windows = ScoredWindows(pairs, positions, actual, forecasts, np.ones(2), [])
    fig = forecast_figure(windows, series, freq, {}, plot_series=1)
    x = fig.axes[0].lines[0].get_xdata()
    assert np.issubdtype(np.asarray(x).dtype, np.datetime64)
    expected = forecast_times(series, freq, pairs[:, 0], positions).ravel()
    np.testing.assert_array_equal(np.asarray(x, dtype="datetime64[ns]"), expected)
    assert str(expected[0])[:10] == ("2024-03-02" if freq == "h" else "2027-03-01")


def test_the_loss_curve_is_drawn_from_the_training_log(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 0, "val_loss": 1.0, "best_val_loss": 1.0}\n{"step": 5, "loss": 0.9}\n'
                   '{"step": 10, "loss": 0.7}\n{"step": 10, "val_loss": 0.8, "best_val_loss": 0.8}\n')  # fmt: skip
    assert write_loss_curve(log, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "empty.jsonl").write_text("")
    assert not write_loss_curve(tmp_path / "empty.jsonl", tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_the_api_plot_of_a_single_series_backtest_draws_its_history():
    """A cross-validation frame of data without an id column names its one series `series`; its history
    has no such column (it used to raise KeyError: 'series')."""
    import pandas as pd

    from pipeline.library.forecast_plot import forecast_figure

    times = pd.date_range("2024-01-01", periods=30, freq="h")
    history = pd.DataFrame({"time": times, "value": np.arange(30.0)})
    cv = pd.DataFrame(
        {
            "fold": 1, "series": "series", "origin": times[24], "time": times[24:27], "step": [1, 2, 3],
            "actual": [24.0, 25.0, 26.0], "forecast": [23.5, 25.5, 26.5], "seasonal_naive": [0.0, 1.0, 2.0],
        }
    )  # fmt: skip
    fig = forecast_figure(cv, history, "time", "value", None)
    [ax] = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"history", "actual", "forecast", "seasonal naive"}
    np.testing.assert_array_equal(lines["history"].get_ydata(), np.arange(24.0, 30.0))  # the last 2 x 3 points
    assert ax.get_title() == "series series"


def test_the_api_plot_picks_series_with_numeric_ids_by_their_number():
    """`plot(series=[7])` on data whose ids are integers (it raised "series '7' is not in the forecast; it
    has 3, 7", the ids being compared as text and the request as a number)."""
    import pandas as pd

    from pipeline.library.forecast_plot import forecast_figure

    times = pd.date_range("2024-01-01", periods=3, freq="h")
    forecast = pd.DataFrame({"store": [3, 3, 3, 7, 7, 7], "time": times.append(times), "forecast": np.arange(6.0)})
    fig = forecast_figure(forecast, None, "time", "value", "store", series=[7])
    [ax] = fig.axes
    assert ax.get_title() == "series 7"
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), [3.0, 4.0, 5.0])
