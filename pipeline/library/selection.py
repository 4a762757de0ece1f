"""The one-standard-error rule: the simplest candidate whose validation loss the data cannot tell from the best's.

A candidate chosen by its lowest loss on a few heavily overlapping validation windows follows
their noise (bench/LOG.md: arrivals' trained correction, favoured by 16% on its validation
windows, doubled its test error). Here the candidates come in order of preference (the simplest
first) and the first whose mean loss exceeds the lowest by at most one standard error of the
per-window differences wins. Overlapping windows share most of their targets, so the standard
error counts the non-overlapping ones: per series, the span the windows cover in horizons.
"""

from __future__ import annotations

import numpy as np


def effective_windows(pairs: np.ndarray, horizon: int) -> float:
    """How many independent windows `pairs` (series, start) hold: per series at most one per horizon they span."""
    total = 0.0
    for series in np.unique(pairs[:, 0]):
        starts = pairs[pairs[:, 0] == series, 1]
        total += min(len(starts), (starts.max() - starts.min()) / horizon + 1)
    return total


def one_standard_error(losses: np.ndarray, n_effective: float) -> int:
    """The first column of `losses` (windows, candidates in order of preference) within one standard error of the
    lowest mean, and no worse than the first column's: the simplest candidate is the fallback (the base alone, for
    the blend) the choice must never lose to on these windows."""
    means = losses.mean(axis=0)
    best = int(np.argmin(means))
    if len(losses) < 2 or n_effective < 2:
        return best
    for j in range(best):
        diff = losses[:, j] - losses[:, best]
        if diff.mean() <= diff.std(ddof=1) / np.sqrt(n_effective) and means[j] <= means[0]:
            return j
    return best
