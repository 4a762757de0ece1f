"""Seeded synthetic series for tests and benchmarks: many series, different scales and lengths."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd


class SyntheticParams(Protocol):
    """The generator's size and seed (`pipeline.config.SyntheticConfig` is one)."""

    n_series: int
    length: int
    min_length: int | None
    freq: str
    seed: int


def generate_synthetic(cfg: SyntheticParams) -> pd.DataFrame:
    """Long table (series, time, value): daily and weekly seasonality, trend, AR noise.

    Periods are expressed in steps of an hourly grid (24 and 168) whatever `freq` is, so the
    same seasonal structure exists at any frequency. Everything derives from `cfg.seed`.
    """
    rng = np.random.default_rng(cfg.seed)
    n = cfg.n_series
    low = cfg.min_length or cfg.length
    lengths = rng.integers(low, cfg.length + 1, size=n) if low < cfg.length else np.full(n, cfg.length)
    level = np.exp(rng.uniform(0.0, 6.0, n))  # scales from 1 to ~400
    daily_amp = rng.uniform(0.1, 0.4, n)
    weekly_amp = rng.uniform(0.0, 0.2, n)
    trend = rng.normal(0.0, 0.3, n)  # relative change over the series
    noise = rng.uniform(0.02, 0.08, n)
    phase = rng.uniform(0, 2 * np.pi, n)

    total = int(lengths.sum())
    series = np.repeat(np.arange(n), lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    t = np.arange(total) - np.repeat(offsets, lengths)
    rel = t / np.repeat(lengths, lengths)
    s = series
    shape = (
        1.0
        + daily_amp[s] * np.sin(2 * np.pi * t / 24 + phase[s])
        + weekly_amp[s] * np.sin(2 * np.pi * t / 168)
        + trend[s] * rel
    )
    eps = rng.normal(0.0, 1.0, total) * noise[s]
    ar = _ar1(eps, 0.6)
    values = (level[s] * (shape + ar)).astype(np.float64)

    end = pd.Timestamp("2024-01-01")
    step = pd.tseries.frequencies.to_offset(cfg.freq)
    # every series ends at the same timestamp, so shorter series start later
    start_times = [end - step * (int(L) - 1) for L in lengths]
    index = pd.DatetimeIndex(
        np.concatenate([pd.date_range(st, periods=int(L), freq=step).values for st, L in zip(start_times, lengths)])
    )
    ids = pd.Categorical.from_codes(series, categories=[f"s{i:04d}" for i in range(n)])
    return pd.DataFrame({"series": ids, "time": index, "value": values})


def _ar1(eps: np.ndarray, phi: float, lags: int = 24) -> np.ndarray:
    """AR(1) noise as a truncated moving sum (phi**24 < 1e-5): vectorised, no per-point loop."""
    out = eps.copy()
    for k in range(1, lags + 1):
        out[k:] += phi**k * eps[:-k]
    return out
