"""Scaling statistics of a series from its own history: how `Forecaster` serves a series it never saw.

A global model learns one mapping for scaled series; each series only brings its level and spread.
Training fits them on the train part of each series (`pipeline.library.splits`). A series that was
not in the training data has no train part the model knows, so its statistics come from the whole
history given to `predict`, by the same rule: the target's `(loc, scale)` with `scaling.fit`
(after the transform) over its finite values, each time-varying covariate's mean and spread with
`covariates.train_stats` over its finite rows, and its static covariates read from its rows and
standardised with the training series' across-series mean and spread. The whole history is the
past at forecast time, so nothing leaks: it is exactly what the series' own train part would be
if it were trained on today.
"""

from __future__ import annotations

import numpy as np

from pipeline.library import covariates, scaling
from pipeline.library.errors import DataError, shown
from pipeline.library.records import SeriesStats


def stats_from_history(
    ids: list[str],
    histories: list[np.ndarray],
    statics: np.ndarray | None,
    scaling_name: str,
    transform: str,
    static_loc: list[float],
    static_scale: list[float],
    source: str,
) -> SeriesStats:
    """SeriesStats of `ids` from their histories: `histories[i]` is (T, 1 + K) (target, then the K
    time-varying covariates) in time order; `statics` (n, S) raw static covariates or None."""
    n = len(ids)
    loc, scale = np.empty(n), np.empty(n)
    k = histories[0].shape[1] - 1 if histories else 0
    cov_loc = cov_scale = None
    if k:
        cov_loc, cov_scale = np.empty((n, k)), np.empty((n, k))
    for i, (sid, values) in enumerate(zip(ids, histories, strict=True)):
        target = values[:, 0]
        target = target[np.isfinite(target)]
        if scaling.first_outside_domain(target, transform) is not None:
            raise DataError(
                f"{source}: series '{shown(sid)}': negative value in its history; this model uses {transform}"
            )
        loc[i], scale[i] = scaling.fit(target, scaling_name, transform)
        if not scaling.has_spread(loc[i], scale[i]):
            raise DataError(
                f"{source}: series '{shown(sid)}' is new to this model and constant over its history: there is no "
                f"spread to scale it by; give a longer history"
            )
        if k:
            rows = values[:, 1:]
            cov_loc[i], cov_scale[i] = covariates.train_stats(rows[np.isfinite(rows).all(axis=1)])
    static = None
    if statics is not None:
        static = (statics - np.asarray(static_loc)) / np.asarray(static_scale)
    return SeriesStats(loc, scale, np.zeros(n, dtype=np.int64), cov_loc, cov_scale, static)
