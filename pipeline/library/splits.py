"""Split each series by time and fit its scaler on the train part only: ingest's record.

Splits are by position: the validation part, then the test part, at the end of each series
(fractions of its length, at least one step, or whole steps). The statistics of the target (and
of the time-varying covariates) come from the train part alone, so nothing of the validation or
test targets reaches the model's inputs through scaling. The fingerprint hashes everything the
model sees (values, splits, scaling), so downstream stages rerun whenever any of it changes.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from pipeline.library import covariates, scaling, seasonality
from pipeline.library.errors import DataError, shown
from pipeline.library.records import IngestRecord, SeriesStats, SeriesTable

if TYPE_CHECKING:
    from pipeline.library.series import SeriesSet
    from pipeline.library.sources import DataLayout


def split_sizes(length: int, val_size: int | float, test_size: int | float) -> tuple[int, int]:
    """(train_end, val_end) for one series; fractions round to at least one step."""
    val = val_size if isinstance(val_size, int) else max(1, round(length * val_size))
    test = test_size if isinstance(test_size, int) else max(1, round(length * test_size))
    return length - val - test, length - test


def train_statistics(train: np.ndarray, scaling_name: str, transform: str = "none") -> tuple[float, float]:
    """(location, scale) of one series' train part after the transform, in float64 whatever the buffer's dtype."""
    return scaling.fit(np.asarray(train, dtype=np.float64), scaling_name, transform)


HASH_CHUNK = 1 << 22


def split_and_scale(series: SeriesSet, data: DataLayout, test_size: int | float | None = None) -> IngestRecord:
    """Per-series split boundaries and train-part statistics (`data.val_size`, `data.test_size`,
    `data.scaling`, `data.transform`), with the content fingerprint.

    `test_size` replaces `data.test_size` when given: a refit fold (`pipeline.orchestrators.refit`)
    passes 0, its series already end at the fold's cutoff.
    """
    val_size, scaling_name, transform = data.val_size, data.scaling, data.transform
    if transform not in scaling.TRANSFORMS:  # `auto` is decided by the ingest stage before it gets here
        raise ValueError(f"split_and_scale needs a transform of {scaling.TRANSFORMS}, got {transform!r}")
    test_size = data.test_size if test_size is None else test_size
    offsets = series.offsets
    n = len(series.ids)
    train_end = np.empty(n, dtype=np.int64)
    val_end = np.empty(n, dtype=np.int64)
    loc, spread = np.empty(n), np.empty(n)
    cov_loc = cov_scale = static = None
    if series.covariates is not None:
        cov_loc, cov_scale = (np.empty((n, series.covariates.shape[1])) for _ in range(2))
    static_mean: list[float] = []
    static_scale: list[float] = []
    if series.static is not None:
        static_mean, static_scale = covariates.train_stats(series.static)
        static = (series.static - np.array(static_mean)) / np.array(static_scale)
    for i, sid in enumerate(series.ids):
        length = int(series.lengths[i])
        train_end[i], val_end[i] = split_sizes(length, val_size, test_size)
        if train_end[i] < 2:
            raise DataError(
                f"{data.source}: series '{shown(sid)}' has {length} points, too few for data.val_size="
                f"{data.val_size} and data.test_size={data.test_size} plus a train part"
            )
        train = series.values[offsets[i] : offsets[i] + train_end[i]]
        loc[i], spread[i] = train_statistics(train, scaling_name, transform)
        if not scaling.has_spread(loc[i], spread[i]):
            raise DataError(
                f"{data.source}: series '{shown(sid)}' is constant on its train part (zero scale); "
                f"remove it or set data.scaling: none"
            )
        if series.covariates is not None:
            cov_loc[i], cov_scale[i] = covariates.train_stats(series.covariates[offsets[i] : offsets[i] + train_end[i]])
    starts = [t.isoformat() for t in series.starts]
    stats = SeriesStats(loc, spread, np.arange(n, dtype=np.int64), cov_loc, cov_scale, static)
    table = SeriesTable(list(series.ids), starts, np.asarray(series.lengths, dtype=np.int64), train_end, val_end, stats)
    freq = series.freq
    return IngestRecord(
        fingerprint=fingerprint(series, table, data, scaling_name, transform),
        freq=series.freq,
        scaling=scaling_name,
        transform=transform,
        n_points=int(series.lengths.sum()),
        series=table,
        source=data.source,
        past_covariates=list(data.past_covariates) if series.covariates is not None else [],
        future_covariates=list(data.future_covariates) if series.covariates is not None else [],
        static_covariates=list(data.static_covariates) if series.static is not None else [],
        static_loc=list(static_mean),
        static_scale=list(static_scale),
        season_checks=[c.to_json() for c in seasonality.detect(series.values, offsets, train_end, val_end, freq)],
        zone=series.zone,
        wall_clock=series.wall_clock,
        local_times=series.local_times,
        date_order=series.date_order,
        filled_points=0 if series.filled is None else int(series.filled.sum()),
    )


def fingerprint(series: SeriesSet, table: SeriesTable, data: DataLayout, scaling_name: str, transform: str) -> str:
    """What the model sees: values, covariates, splits, frequency, scaling (a change reruns every later stage)."""
    digest = hashlib.sha256()
    for start in range(0, len(series.values), HASH_CHUNK):  # no float32 copy of the whole buffer
        digest.update(np.ascontiguousarray(series.values[start : start + HASH_CHUNK], dtype=np.float32))
    if series.covariates is not None:
        digest.update(repr(data.covariates).encode())
        digest.update(np.ascontiguousarray(series.covariates, dtype=np.float32))
    if series.static is not None:
        digest.update(repr(data.static_covariates).encode())
        digest.update(np.ascontiguousarray(series.static))
    # the split boundaries too: a new data.val_size/test_size must rerun window, train and evaluate
    bounds = zip(table.ids, table.starts, table.lengths.tolist(), table.train_end.tolist(), table.val_end.tolist())
    digest.update(repr(list(bounds)).encode())
    digest.update(series.freq.encode())
    digest.update(f"{scaling_name}/{transform}".encode())
    if series.zone is not None:  # the calendar follows its wall clock (data without one hashes as before zones)
        digest.update(f"zone/{series.zone}".encode())
    if series.wall_clock:
        digest.update(b"wall clock")
    if series.local_times:
        digest.update(b"local times")
    return digest.hexdigest()[:16]
