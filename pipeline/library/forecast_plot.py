"""A figure of forecasts from DataFrames, over real timestamps: what the Python API's `plot` draws.

Works on what `predict` returns (time, forecast, `q<level>` columns) and on what
`cross_validation` returns (origin, actual, the baselines too), with the history before them.
"""

from __future__ import annotations

import re

import pandas as pd

from pipeline.library.errors import DataError, listed, shown


def _pyplot():
    import matplotlib.pyplot as plt  # the notebook's backend, whatever it is

    return plt


def forecast_figure(
    forecast: pd.DataFrame,
    history: pd.DataFrame | None,
    time_column: str,
    target_column: str,
    id_column: str | None,
    series: list[str] | None = None,
    max_series: int = 4,
    context: int | None = None,
):
    """One panel per series: the last `context` history points, the forecast and its intervals, the actual
    values and the baselines when the frame has them; a matplotlib Figure."""
    plt = _pyplot()
    key = id_column if id_column and id_column in forecast.columns else "series"
    if key not in forecast.columns:
        forecast = forecast.assign(**{key: "series"})
        if history is not None:
            history = history.assign(**{key: "series"})
    ids = list(dict.fromkeys(forecast[key].astype(str)))
    if history is not None and key not in history.columns and len(ids) == 1:
        # one series: a cross-validation frame names it `series`, its history has no id column
        history = history.assign(**{key: ids[0]})
    if series is not None:
        series = [str(s) for s in series]  # ids are compared as text: 7 names the series whose id is 7
        unknown = [s for s in series if s not in ids]
        if unknown:
            raise DataError(f"series '{shown(unknown[0])}' is not in the forecast; it has {listed(ids)}")
        ids = list(series)
    ids = ids[:max_series]
    levels = sorted(float(m.group(1)) for c in forecast.columns if (m := re.fullmatch(r"q([0-9.]+)", str(c))))
    fig, axes = plt.subplots(len(ids), 1, figsize=(10, 2.6 * len(ids)), squeeze=False)
    for ax, sid in zip(axes[:, 0], ids):
        rows = forecast[forecast[key].astype(str) == sid]
        if "origin" in rows.columns:  # cross-validation: every origin's forecasts, in time order
            rows = rows.sort_values(["origin", time_column])
        times = pd.to_datetime(rows[time_column])
        span = len(rows) if context is None else context
        if history is not None:
            past = history[history[key].astype(str) == sid].tail(max(span, 1) * 2)
            ax.plot(pd.to_datetime(past[time_column]), past[target_column], color="black", lw=1, label="history")
        if "actual" in rows.columns:
            ax.plot(times, rows["actual"], color="black", lw=1, ls=":", label="actual")
        lows, highs = [q for q in levels if q < 0.5], [q for q in levels if q > 0.5]
        for k, (lo, hi) in enumerate(zip(lows, reversed(highs))):
            label = f"{lo:g}-{hi:g}"
            ax.fill_between(times, rows[f"q{lo:g}"], rows[f"q{hi:g}"], color="C0", alpha=0.15 + 0.1 * k, lw=0,
                            label=label)  # fmt: skip
        ax.plot(times, rows["forecast"], color="C0", lw=1, label="forecast")
        if "seasonal_naive" in rows.columns:
            ax.plot(times, rows["seasonal_naive"], color="C1", lw=0.8, ls="--", label="seasonal naive")
        ax.set_title(f"series {sid}", fontsize=9)
    axes[0, 0].legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig
