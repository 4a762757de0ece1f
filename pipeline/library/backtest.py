"""Rolling-origin backtest: the trained model forecasts from N cutoffs at the end of each series.

Fold k of N (k = 1 is the earliest) forecasts the `horizon` steps starting at
`length - horizon - (N - k) * step` of every series, so fold N ends at the last observation and
earlier folds move back by `step` (folds overlap when `step < horizon`). By default there is
no refit: the one trained model scores every fold, so every fold's forecast window must lie
inside the test part (after the train and validation parts); a series whose test part is too
short is a config error naming it. Inputs reach back into earlier parts, as they would in
production. With `evaluate.backtest.refit: true` the same origins are forecast by a model per
fold trained only on the data before its cutoff, so the folds may reach before the test part
(fold planning here; the fold runs in `pipeline.orchestrators.refit`; their scoring in the
evaluate stage, each fold with the MASE scale of its own train part).

Each fold is scored like the test split (model, naive, seasonal naive; MASE scaled by the
train part), and the aggregate pools every fold's points: each series contributes one window
per fold, so pooled MAE/sMAPE/MASE equal the mean of the fold values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.library.errors import ConfigError
from pipeline.library.records import SeriesTable
from pipeline.library.scoring import ScoredWindows, score
from pipeline.library.splits import split_sizes

REFIT_DIR = ".refit"
"""A refit backtest's fold runs live in `<output_dir>/.refit/fold_<k>/` (a cache: deleting it only costs retraining)."""
NO_REFIT_PLACEMENT = "inside the test part: no fold's forecast window overlaps the train or validation part"
REFIT_PLACEMENT = (
    "anywhere that leaves each series a train and a validation part before the fold's cutoff: each fold is "
    "forecast by a model trained only on the data before its cutoff (validation part carved from its end; "
    "scaling statistics and the fold's MASE scale from the rest, its train part)"
)


def fold_dir(run_dir: Path, k: int) -> Path:
    """Where refit fold k's ingest, window and train outputs are."""
    return run_dir / REFIT_DIR / f"fold_{k}"


@dataclass
class BacktestPlan:
    """The backtest's windows: `pairs` (n, 2) (series, input start) and their fold numbers 1..folds."""

    pairs: np.ndarray
    fold: np.ndarray
    folds: int
    step: int
    refit: bool

    @classmethod
    def empty(cls, step: int) -> BacktestPlan:
        return cls(np.empty((0, 2), dtype=np.int64), np.empty(0, dtype=np.int64), 0, step, False)


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


def refit_windows(
    lengths: np.ndarray,
    series: np.ndarray,
    val_size: int | float,
    lookback: int,
    horizon: int,
    folds: int,
    step: int,
    season: int,
    ids: list[str],
) -> tuple[np.ndarray, np.ndarray]:
    """((n, 2) (series, input start) pairs, (n,) fold numbers) of a refit backtest.

    The origins are the no-refit backtest's, without the test-part bound. Raises ConfigError
    naming the first series whose earliest cutoff leaves no train part with a training window
    (and a seasonal MASE scale) or no validation part with a validation window.
    """
    series = np.asarray(series, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    need_train = max(lookback + horizon, season + 1)
    before_end = horizon + (folds - 1) * step
    for s in series:
        cut = int(lengths[s]) - before_end  # fold 1 has the earliest cutoff
        train_end, _ = split_sizes(cut, val_size, 0) if cut > 0 else (0, 0)
        if train_end < need_train or cut - train_end < horizon:
            raise ConfigError(
                f"evaluate.backtest.refit: fold 1 of {folds} cuts series '{ids[s]}' {before_end} steps before its "
                f"end, leaving {max(cut, 0)} of its {int(lengths[s])} steps: a train part of {max(train_end, 0)} "
                f"and a validation part of {max(cut - train_end, 0)} (data.val_size={val_size}); each fold needs a "
                f"train part of at least {need_train} steps (window.lookback + window.horizon, and more than "
                f"evaluate.season_length) and a validation part of at least window.horizon ({horizon}); use fewer "
                f"folds, a smaller step or a smaller data.val_size"
            )
    return backtest_windows(lengths, np.zeros_like(lengths), series, lookback, horizon, folds, step, ids)


def describe_folds(fold: np.ndarray, pairs: np.ndarray, series: SeriesTable, lookback: int, freq: str) -> list[dict]:
    """Per fold: its number, steps from its cutoff to the series end, and the cutoff times."""
    import pandas as pd

    step = pd.tseries.frequencies.to_offset(freq)
    out = []
    for k in np.unique(fold):
        rows = pairs[fold == k]
        cutoffs = [pd.Timestamp(series.starts[s]) + step * int(t + lookback) for s, t in rows]
        from_end = {int(series.lengths[s] - (t + lookback)) for s, t in rows}
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


def backtest_result(
    plan: BacktestPlan, windows: ScoredWindows, series: SeriesTable, lookback: int, freq: str,
    refitted: list[dict] | None = None,
) -> dict:  # fmt: skip
    """metrics.json's `backtest`: the fold layout, each fold's metrics (and model, with refit), all folds pooled."""
    folds = describe_folds(plan.fold, plan.pairs, series, lookback, freq)
    for entry, trained in zip(folds, refitted or [None] * len(folds), strict=True):
        if trained is not None:
            entry["refit"] = trained
        _, block = score(windows.rows(plan.fold == entry["fold"]))
        entry.update(block)
    _, pooled = score(windows)
    return {
        "folds": plan.folds,
        "step": plan.step,
        "refit": plan.refit,
        "placement": REFIT_PLACEMENT if plan.refit else NO_REFIT_PLACEMENT,
        "per_fold": folds,
        "aggregate": pooled,
    }
