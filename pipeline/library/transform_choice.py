"""`data.transform: auto`: model the log of the data where its seasonal swing grows with its level.

A seasonal profile is additive: it carries the same swing in units at any level. Sales whose
January dip is a fixed share of the level (multiplicative seasonality) grow out of it as the level
rises, and a trend that compounds is a straight line only in logs. `log1p` turns both into the
additive case; on data without them it only bends the errors. Which one a data set is, the
windows before the test part tell: each candidate base of the train stage
(`pipeline.library.base_choice`) forecasts the same windows from the values as they are and from
their log, and the errors of both, mapped back to the data's units, are compared in each series'
units (its train part's standard deviation), as the train stage's loss compares bases.

The log is taken only when the best base on the log is better than the best on the values by more
than one standard error of the per-window differences (`pipeline.library.selection`): the plain
values are the simpler model, kept unless the windows show otherwise. Data with a negative value
anywhere keep them (log1p is not defined there). Nothing is fitted, so training and validation
windows alike test the bases out of sample; the test part is never read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.library import scaling
from pipeline.library.model import residual_base
from pipeline.library.model_spec import ModelSpec
from pipeline.library.records import SeriesTable
from pipeline.library.selection import effective_windows, one_standard_error

CHUNK = 1024  # windows gathered at a time (a window of calls is 4,394 values)
MAX_WINDOWS = 8192  # at most this many training windows, and as many validation windows, evenly spaced


@dataclass(frozen=True)
class TransformCheck:
    """The choice and its evidence, for ingest's meta.json and the report."""

    transform: str
    why: str
    loss: dict[str, float] | None = None  # the best base's mean loss per transform
    base: dict[str, str] | None = None  # which base that was
    windows: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def choose_transform(
    values: np.ndarray, table: SeriesTable, bases: dict[str, ModelSpec], lookback: int, horizon: int
) -> TransformCheck:
    """`none` or `log1p` for the series of `table` in `values` (back to back), read up to their validation ends."""
    if not bases:
        return TransformCheck("none", "no base to compare the transforms with")
    negative = first_negative(values, table.offsets)
    if negative is not None:
        return TransformCheck("none", f"series '{table.ids[negative]}' has a value below 0 (log1p needs values >= 0)")
    offsets = table.offsets
    pairs = _windows(table.train_end, table.val_end, lookback, horizon)
    if len(pairs) == 0:
        return TransformCheck("none", "no window before the test part")
    units = _units(values, offsets, table.train_end)
    spaces = (("none", _same, _same), ("log1p", np.log1p, np.expm1))
    errors = {kind: [] for kind, _, _ in spaces}
    for chunk in np.array_split(pairs, max(1, len(pairs) // CHUNK)):
        x, y = _gather(values, offsets, chunk, lookback, horizon)
        unit = units[chunk[:, 0]][:, None]
        for kind, forward, inverse in spaces:
            errors[kind].append(_base_errors(forward(x), bases, inverse, y, unit))
    losses, names = {}, {}
    for kind, parts in errors.items():
        per_base = np.concatenate(parts)  # (windows, bases)
        best = int(np.argmin(per_base.mean(axis=0)))
        losses[kind], names[kind] = per_base[:, best], list(bases)[best]
    columns = np.stack([losses["none"], losses["log1p"]], axis=1)
    chosen = ("none", "log1p")[one_standard_error(columns, effective_windows(pairs, horizon))]
    means = {kind: float(loss.mean()) for kind, loss in losses.items()}
    figures = f"loss {means['log1p']:.4f} on the log, {means['none']:.4f} on the values"
    if chosen == "log1p":
        why = f"the log's best base is better by more than a standard error ({figures})"
    elif means["log1p"] < means["none"]:
        why = f"the log's best base is better by less than a standard error ({figures})"
    else:
        why = f"the log's best base is no better ({figures})"
    return TransformCheck(chosen, why, means, names, len(pairs))


def _same(a: np.ndarray) -> np.ndarray:
    return a


def first_negative(values: np.ndarray, offsets: np.ndarray) -> int | None:
    """The index of the first series (starting at `offsets`) with a value outside log1p's domain, or None."""
    if len(values) == 0 or np.nanmin(values) >= 0:  # the common case without a temporary the size of the data
        return None
    first = scaling.first_outside_domain(values, "log1p")
    return None if first is None else int(np.searchsorted(offsets, first, side="right")) - 1


def _windows(train_end: np.ndarray, val_end: np.ndarray, lookback: int, horizon: int) -> np.ndarray:
    """(series, start) of the windows whose target ends by the validation part's end: up to MAX_WINDOWS of those
    that end in the train part and as many of the rest, evenly spaced (the mix the train stage's choice reads).
    Only the chosen pairs are made: 10,000 long series hold tens of millions of windows."""
    span = lookback + horizon
    total = np.maximum(np.asarray(val_end, dtype=np.int64) - span + 1, 0)
    in_train = np.clip(np.asarray(train_end, dtype=np.int64) - span + 1, 0, total)
    return np.concatenate([_spread(in_train, np.zeros_like(in_train)), _spread(total - in_train, in_train)])


def _spread(counts: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Up to MAX_WINDOWS pairs evenly spaced over windows numbered series by series, series i holding `counts[i]`
    windows that start at `first[i]`, `first[i] + 1`, ..."""
    n = int(counts.sum())
    picked = np.arange(n) if n <= MAX_WINDOWS else np.linspace(0, n - 1, MAX_WINDOWS).round().astype(np.int64)
    ends = np.cumsum(counts)
    series = np.searchsorted(ends, picked, side="right")
    starts = picked - (ends[series] - counts[series]) + first[series]
    return np.stack([series, starts], axis=1).astype(np.int64)


def _units(values: np.ndarray, offsets: np.ndarray, train_end: np.ndarray) -> np.ndarray:
    """Each series' train part's standard deviation: the loss's unit under the train stage's standard scaling."""
    units = np.array(
        [np.nanstd(values[start : start + end], dtype=np.float64) for start, end in zip(offsets, train_end)]
    )
    return np.where(units > 0, units, 1.0)


def _gather(values: np.ndarray, offsets: np.ndarray, pairs: np.ndarray, lookback: int, horizon: int):
    """Inputs (W, lookback) and targets (W, horizon) of the windows `pairs`, in float64 (a chunk at a time: the
    data's buffer stays as it is)."""
    index = offsets[pairs[:, 0]][:, None] + pairs[:, 1][:, None] + np.arange(lookback + horizon)
    rows = np.asarray(values[index], dtype=np.float64)
    return rows[:, :lookback], rows[:, lookback:]


def _base_errors(inputs, bases, inverse, target, unit) -> np.ndarray:
    """Each base's mean absolute error per window (W, bases) in series units, its forecast mapped back by `inverse`."""
    window = torch.from_numpy(np.ascontiguousarray(inputs))
    out = np.empty((len(inputs), len(bases)))
    for j, spec in enumerate(bases.values()):
        forecast = inverse(residual_base(window, spec).numpy())
        out[:, j] = np.abs(forecast - target).mean(axis=1) / unit[:, 0]
    return out
