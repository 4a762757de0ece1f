"""Whole series grouped into chunks of bounded size, for vectorised per-series work.

A loop per series costs Python time on 10,000 short series; one array op over the whole
buffer costs a float64 copy of 100 M points. Groups of consecutive series of about
`CHUNK_POINTS` points take the middle road: a few dozen iterations on the largest data, each a
handful of array ops over at most one chunk (a single longer series is its own chunk).
"""

from __future__ import annotations

import itertools

import numpy as np

CHUNK_POINTS = 1 << 22  # 4 M points: 32 MB in float64


def offsets_of(lengths) -> np.ndarray:
    """(n,) int64 start of each series in a buffer holding the series back to back, in order."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def series_chunks(offsets: np.ndarray, chunk_points: int = CHUNK_POINTS) -> list[tuple[int, int]]:
    """(first, stop) series index ranges whose first offsets lie within one chunk of points."""
    n = len(offsets)
    if n == 0:
        return []
    marks = np.arange(0, int(offsets[-1]) + 1, chunk_points)
    bounds = np.unique(np.append(np.searchsorted(offsets, marks, side="left"), n))
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
