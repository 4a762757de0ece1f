"""The one-standard-error rule: the simplest candidate whose validation loss the data cannot tell from the best's.

A candidate chosen by its lowest loss on a few heavily overlapping validation windows follows
their noise (bench/LOG.md: arrivals' trained correction, favoured by 16% on its validation
windows, doubled its test error). Here the candidates come in order of preference (the simplest
first) and the first whose mean loss exceeds the lowest by at most one standard error of the
per-window differences wins, unless its mean is above the first's (the fallback it must never
lose to). Overlapping windows share most of their targets, so the standard error counts the
non-overlapping ones: per series, the span the windows cover in horizons, plus one. With fewer
than two of those there is no standard error, and the lowest wins.
"""

from __future__ import annotations

import numpy as np


def effective_windows(pairs: np.ndarray, horizon: int) -> float:
    """How many independent windows `pairs` (series, start) hold: per series at most one per horizon they span."""
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    series, starts = pairs[order, 0], pairs[order, 1].astype(np.float64)
    first = np.flatnonzero(np.r_[True, series[1:] != series[:-1]])  # where each series' rows begin
    counts = np.diff(np.r_[first, len(series)])
    spans = starts[np.r_[first[1:], len(series)] - 1] - starts[first]  # last start - first start, per series
    return float(np.minimum(counts, spans / horizon + 1).sum())


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
