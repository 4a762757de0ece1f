"""Rolling-origin backtest: the trained model forecasts from N cutoffs at the end of each series.

Fold k of N (k = 1 is the earliest) forecasts the `horizon` steps starting at
`length - horizon - (N - k) * step` of every series, so fold N ends at the last observation and
earlier folds move back by `step` (folds overlap when `step < horizon`). By default there is
no refit: the one trained model scores every fold, so every fold's forecast window must lie
inside the test part (after the train and validation parts); a series whose test part is too
short is a config error naming it. Inputs reach back into earlier parts, as they would in
production. With `evaluate.backtest.refit: true` the same origins are forecast by a model per
fold trained only on the data before its cutoff, so the folds may reach before the test part
(`pipeline.refit`: fold planning, fold runs, and the fold's own MASE scale).

Each fold is scored like the test split (model, naive, seasonal naive; MASE scaled by the
train part), and the aggregate pools every fold's points: each series contributes one window
per fold, so pooled MAE/sMAPE/MASE equal the mean of the fold values.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import ConfigError


def backtest_windows(
    lengths: np.ndarray,
    val_end: np.ndarray,
    series: np.ndarray,
    lookback: int,
    horizon: int,
    folds: int,
    step: int,
    ids: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """((n, 2) (series, input start) pairs, (n,) fold numbers 1..folds) for the given series.

    Pure function; raises ConfigError naming the first series whose earliest fold would reach
    before its test part (leakage without refit) or before `lookback` steps of history.
    """
    series = np.asarray(series, dtype=np.int64)
    lengths, val_end = np.asarray(lengths, dtype=np.int64), np.asarray(val_end, dtype=np.int64)
    back = (folds - np.arange(1, folds + 1)) * step  # fold k starts (N - k) * step before the last one
    target_start = lengths[series, None] - horizon - back[None, :]  # (series, fold)
    earliest = target_start[:, 0]
    bad = np.flatnonzero((earliest < val_end[series]) | (earliest < lookback))
    if len(bad):
        s = int(series[bad[0]])
        name = f"'{ids[s]}'" if ids is not None else f"#{s}"
        need = horizon + (folds - 1) * step
        raise ConfigError(
            f"evaluate.backtest: {folds} folds {step} steps apart with horizon {horizon} need the last {need} "
            f"steps inside the test part (and {lookback} steps of history before); series {name} has a test "
            f"part of {int(lengths[s] - val_end[s])} steps; use fewer folds, a smaller step or a larger "
            f"data.test_size"
        )
    pairs = np.stack([np.repeat(series, folds), (target_start - lookback).ravel()], axis=1)
    fold = np.tile(np.arange(1, folds + 1), len(series))
    return pairs, fold


def describe_folds(fold: np.ndarray, pairs: np.ndarray, records: list[dict], lookback: int, freq: str) -> list[dict]:
    """Per fold: its number, steps from its cutoff to the series end, and the cutoff times."""
    import pandas as pd

    step = pd.tseries.frequencies.to_offset(freq)
    out = []
    for k in np.unique(fold):
        rows = pairs[fold == k]
        cutoffs = [pd.Timestamp(records[s]["start"]) + step * int(t + lookback) for s, t in rows]
        from_end = {int(records[s]["length"] - (t + lookback)) for s, t in rows}
        out.append(
            {
                "fold": int(k),
                "n_windows": len(rows),
                "steps_before_end": sorted(from_end)[0] if len(from_end) == 1 else sorted(from_end),
                "first_cutoff": min(cutoffs).isoformat(),
                "last_cutoff": max(cutoffs).isoformat(),
            }
        )
    return out
