"""Forecast accuracy metrics and the naive baselines, vectorised over all windows at once.

All sums run in float64: the metrics are averages over up to millions of points, where
float32 accumulation would drift in the last reported digits. An actual value of NaN is a point
that was not observed (`data.missing` filled it, `pipeline.library.store.read_observed`): its
terms are NaN and every mean here leaves it out, so a forecast is never scored against a value
the pipeline made up.
"""

from __future__ import annotations

import numpy as np

from pipeline.library.chunks import series_chunks

METRICS = ("mae", "rmse", "smape", "mase")


def target_positions(offsets: np.ndarray, pairs: np.ndarray, lookback: int, horizon: int) -> np.ndarray:
    """Buffer positions (W, horizon) of each window's targets."""
    origin = offsets[pairs[:, 0]] + pairs[:, 1] + lookback
    return origin[:, None] + np.arange(horizon)[None, :]


def naive_forecast(raw: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Repeat the last observed value over the horizon."""
    last = raw[positions[:, 0] - 1]
    return np.repeat(last[:, None], positions.shape[1], axis=1)


def seasonal_naive_forecast(raw: np.ndarray, positions: np.ndarray, season: int) -> np.ndarray:
    """Value one season earlier (k seasons for steps beyond the first season)."""
    h = np.arange(positions.shape[1])
    back = season * (1 + h // season)
    return raw[positions - back[None, :]]


def mase_scale(raw: np.ndarray, offsets: np.ndarray, train_end: np.ndarray, season: int) -> np.ndarray:
    """Per series, the mean absolute seasonal-naive error on its train part (in original units).

    NaN where the train part is not longer than a season. Vectorised over chunks of series:
    `|y[t] - y[t - season]|` over a chunk, summed per series with one `reduceat`. A pair with a
    NaN (a point not observed: `read_observed`) is left out of the mean.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    train_end = np.asarray(train_end, dtype=np.int64)
    scales = np.full(len(offsets), np.nan)
    for first, stop in series_chunks(offsets):
        base = offsets[first]
        segment = np.asarray(raw[base : offsets[stop - 1] + train_end[stop - 1]], dtype=np.float64)
        diffs = np.append(np.abs(segment[season:] - segment[:-season]), 0.0)  # diffs[j]: t = base + season + j
        unobserved = np.isnan(diffs)
        count = train_end[first:stop] - season
        lo = offsets[first:stop] - base
        bounds = np.minimum(np.stack([lo, lo + np.maximum(count, 0)], axis=1).ravel(), len(diffs) - 1)
        if unobserved.any():
            diffs[unobserved] = 0.0
            count = count - np.add.reduceat(unobserved.astype(np.int64), bounds)[::2] * (count > 0)
        sums = np.add.reduceat(diffs, bounds)[::2]
        scales[first:stop] = np.where(count > 0, sums / np.maximum(count, 1), np.nan)
    return scales


def flat_season_message(season: int, name: str) -> str:
    """Why a series cannot be scored: its train part repeats itself exactly at `season`, so the MASE scale is 0."""
    return (
        f"evaluate.season_length ({season}): series '{name}' repeats itself exactly at that season over its train "
        f"part (constant there, or periodic without noise), so its seasonal-naive error there, which scales MASE, is 0 "
        f"and its MASE is undefined; leave the series out of the data or give it a train part that varies"
    )


def error_terms(actual: np.ndarray, forecast: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """Per-point terms whose means are the metrics; `scale` is per window (its series' MASE scale)."""
    err = forecast.astype(np.float64) - actual.astype(np.float64)
    unobserved = np.isnan(np.broadcast_to(actual, err.shape))
    err[np.isnan(err) & ~unobserved] = np.inf  # a forecast that is not a number must not drop out of the mean
    denom = np.abs(actual) + np.abs(forecast)
    smape = np.divide(200.0 * np.abs(err), denom, out=np.zeros_like(err), where=denom > 0)
    smape[unobserved] = np.nan
    return {"mae": np.abs(err), "mse": err**2, "smape": smape, "mase": np.abs(err) / scale[:, None]}


def mean(terms: np.ndarray, axis=None):
    """The mean over the observed points (NaN terms left out); NaN where none was observed."""
    observed = ~np.isnan(terms)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(observed, terms, 0.0).sum(axis=axis) / observed.sum(axis=axis)


def summarise(terms: dict[str, np.ndarray]) -> dict[str, float]:
    return {
        "mae": float(mean(terms["mae"])),
        "rmse": float(np.sqrt(mean(terms["mse"]))),
        "smape": float(mean(terms["smape"])),
        "mase": float(mean(terms["mase"])),
    }


def per_series_means(values: np.ndarray, series: np.ndarray, n_series: int) -> np.ndarray:
    """Per series, the mean of `values` (W, ...) over its windows' observed entries (NaN left out)."""
    observed = ~np.isnan(values)
    flat = observed.reshape(len(values), -1)
    sums = np.where(observed, values, 0.0).reshape(len(values), -1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(series, weights=sums, minlength=n_series) / np.bincount(
            series, weights=flat.sum(axis=1), minlength=n_series
        )


def summarise_by_series(terms: dict[str, np.ndarray], series: np.ndarray, n_series: int) -> dict[str, np.ndarray]:
    """The same metrics per series, from per-window sums (no loop over series)."""
    means = {k: per_series_means(v, series, n_series) for k, v in terms.items()}
    return {"mae": means["mae"], "rmse": np.sqrt(means["mse"]), "smape": means["smape"], "mase": means["mase"]}


# ---------------------------------------------------------------- quantile forecasts


def pinball_terms(actual: np.ndarray, forecast: np.ndarray, quantiles) -> np.ndarray:
    """Pinball (quantile) loss per point and quantile, (W, horizon, Q), for forecasts (W, horizon, Q).

    For quantile q and error e = actual - forecast: q * e when the actual is above, (q - 1) * e below.
    """
    q = np.asarray(quantiles, dtype=np.float64)
    err = actual.astype(np.float64)[..., None] - forecast.astype(np.float64)
    return np.maximum(q * err, (q - 1.0) * err)


def symmetric_intervals(quantiles) -> list[tuple[int, int]]:
    """Index pairs (lower, upper) of the quantiles that bound a central interval (q and 1 - q)."""
    q = [float(x) for x in quantiles]
    pairs = []
    for i, lo in enumerate(q):
        if lo >= 0.5:
            break
        for j in range(len(q) - 1, i, -1):
            if abs(lo + q[j] - 1.0) < 1e-9:
                pairs.append((i, j))
    return pairs


def interval_name(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}"


def coverage_terms(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """1.0 where the actual lies inside [lower, upper] (bounds included), else 0.0; NaN where it was not observed."""
    inside = ((actual >= lower) & (actual <= upper)).astype(np.float64)
    inside[np.isnan(np.broadcast_to(actual, inside.shape))] = np.nan
    return inside


def summarise_quantiles(actual: np.ndarray, forecast: np.ndarray, quantiles, scale: np.ndarray) -> dict:
    """Mean pinball loss (original units, and divided by each series' MASE scale), per quantile,
    and the empirical coverage of every symmetric interval next to its nominal level."""
    terms = pinball_terms(actual, forecast, quantiles)
    result = {
        "pinball": float(mean(terms)),
        "scaled_pinball": float(mean(terms / scale[:, None, None])),
        "pinball_by_quantile": {f"{q:g}": float(mean(terms[..., k])) for k, q in enumerate(quantiles)},
        "coverage": {},
    }
    for i, j in symmetric_intervals(quantiles):
        inside = coverage_terms(actual, forecast[..., i], forecast[..., j])
        name = interval_name(quantiles[i], quantiles[j])
        result["coverage"][name] = {
            "nominal": round(quantiles[j] - quantiles[i], 12),
            "empirical": float(mean(inside)),
        }
    return result
