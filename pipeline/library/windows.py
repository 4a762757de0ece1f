"""The window index: (series, start) pairs per split, as a pure function; no window is ever materialised.

A window starting at `start` reads inputs `[start, start + lookback)` and targets
`[start + lookback, start + lookback + horizon)` of its series. Splits are by the position of
the *targets*: a training window's targets end at or before the series' `train_end`, a
validation window's targets lie in `[train_end, val_end)`, a test window's in
`[val_end, length)`. Inputs may reach back into earlier parts (that is history, not leakage).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.library.errors import DataError
from pipeline.library.records import SeriesTable

log = logging.getLogger("pipeline")

SPLITS = ("train", "val", "test")


def window_starts(first: np.ndarray, last: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """All (series, target_start) with target_start in [first[i], last[i]] stepping by `step`.


    Vectorised over series: no Python loop per series or per window.
    """
    counts = np.where(last >= first, (last - first) // step + 1, 0).astype(np.int64)
    series = np.repeat(np.arange(len(first), dtype=np.int64), counts)
    begin = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(begin, counts)
    return series, np.repeat(first, counts) + within * step


def build_window_index(
    lengths: np.ndarray,
    train_end: np.ndarray,
    val_end: np.ndarray,
    lookback: int,
    horizon: int,
    stride: int = 1,
    val_stride: int | None = None,
    test_stride: int | None = None,
) -> dict[str, np.ndarray]:
    """Per split an (n, 2) int64 array of (series, input start); pure function of its arguments."""
    lengths, train_end, val_end = (np.asarray(a, dtype=np.int64) for a in (lengths, train_end, val_end))
    # bounds on the first target position t of a window (input start = t - lookback)
    bounds = {
        "train": (np.full_like(lengths, lookback), train_end - horizon, stride),
        "val": (np.maximum(train_end, lookback), val_end - horizon, val_stride or stride),
        "test": (np.maximum(val_end, lookback), lengths - horizon, test_stride or horizon),
    }
    index = {}
    for split, (first, last, step) in bounds.items():
        series, target_start = window_starts(first, last, step)
        index[split] = np.stack([series, target_start - lookback], axis=1)
    return index


def drop_short_series(
    index: dict[str, np.ndarray], series: SeriesTable, lookback: int, horizon: int, policy: str
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Series without a window in every split are dropped with a warning, or fail (`policy`: drop|error).

    An ingest without a test part (a refit fold's, cut at its cutoff) needs train and validation
    windows only.
    """
    n = len(series)
    splits = SPLITS if (series.val_end < series.lengths).any() else SPLITS[:2]
    has = np.logical_and.reduce([np.bincount(index[s][:, 0], minlength=n) > 0 for s in splits])
    short = np.flatnonzero(~has)
    need = f"window.lookback + window.horizon = {lookback + horizon}"
    if len(short) == n:
        raise DataError(
            f"every series is too short for {need} within its splits (e.g. series '{series.ids[0]}': "
            f"{series.lengths[0]} points, train part {series.train_end[0]}, test part "
            f"{series.lengths[0] - series.val_end[0]}); shorten the window or use longer series"
        )
    names = [series.ids[i] for i in short]
    if len(short) and policy == "error":
        raise DataError(
            f"series '{names[0]}' is too short for {need} in its train/val/test parts "
            f"({len(names)} such series); set data.short_series: drop to skip them"
        )
    if len(short):
        log.warning("window: dropped %d series too short for %s: %s", len(names), need, ", ".join(names[:10]))
        keep = np.ones(n, dtype=bool)
        keep[short] = False
        index = {s: a[keep[a[:, 0]]] for s, a in index.items()}
    return index, names


def without_unobserved_targets(
    index: dict[str, np.ndarray], offsets: np.ndarray, observed: np.ndarray, lookback: int, horizon: int
) -> tuple[dict[str, np.ndarray], int]:
    """(the index without the training windows whose every target data.missing filled, how many those were).

    Such a window teaches nothing (its targets are left out of the loss), yet it would count in the loss's fixed
    denominator (`losses.observed_only`) and shrink the step of every batch that drew it. `observed`: the targets
    back to back, NaN where filled (`store.read_observed`). Validation and test windows stay: they score only
    observed points, and a test window still shows its forecast."""
    seen = np.concatenate([[0], np.cumsum(~np.isnan(observed), dtype=np.int64)])
    pairs = index["train"]
    first = np.asarray(offsets, dtype=np.int64)[pairs[:, 0]] + pairs[:, 1] + lookback
    keep = seen[first + horizon] > seen[first]
    return {**index, "train": pairs[keep]}, int((~keep).sum())


def write_index(directory: Path, index: dict[str, np.ndarray]) -> None:
    for split in SPLITS:
        np.save(directory / f"{split}.npy", index[split])


def read_index(window_dir: Path) -> dict[str, np.ndarray]:
    """The (n, 2) int64 (series, start) pairs of each split, as the window stage wrote them."""
    return {s: np.load(window_dir / f"{s}.npy", allow_pickle=False) for s in SPLITS}
