"""Per-series target transform and scaler: the statistics and the forward/inverse maps.

The model sees `z = (f(y) - loc) / scale`, where `f` is the target transform (`none` or
`log1p`) and `(loc, scale)` are fitted per series on the transformed train part only:

- `standard`: mean and standard deviation;
- `robust`: median and interquartile range (the standard deviation when the IQR is zero but
  the part is not constant, e.g. a series that is mostly zeros);
- `minmax`: minimum and range (the train part maps onto [0, 1]);
- `none`: 0 and 1.

Every output in original units is `f⁻¹(z * scale + loc)`. Both maps are strictly increasing,
so they carry quantiles to quantiles and never make forecast quantiles cross. Everything here
is a pure function of its arguments (numpy arrays or floats that broadcast).
"""

from __future__ import annotations

import numpy as np

SCALINGS = ("standard", "robust", "minmax", "none")
TRANSFORMS = ("none", "log1p")


def transform(values: np.ndarray, kind: str) -> np.ndarray:
    """The target transform `f` (same dtype as `values`)."""
    return np.log1p(values) if kind == "log1p" else values


def untransform(values: np.ndarray, kind: str) -> np.ndarray:
    """The inverse transform `f⁻¹`."""
    return np.expm1(values) if kind == "log1p" else values


def first_outside_domain(values: np.ndarray, kind: str) -> int | None:
    """Index of the first value the transform does not accept (log1p: below 0), or None."""
    if kind != "log1p":
        return None
    bad = np.flatnonzero(values < 0)
    return int(bad[0]) if len(bad) else None


FLOAT32_MAX = float(np.finfo(np.float32).max)
"""The largest value float32 holds (3.4e38): the window buffer and the model's inputs are float32."""


def too_large_for_float32(what: str, value: float, when: object) -> str:
    """How ingest and predict refuse a value beyond float32 (the end of their one-line error)."""
    return f"{what} {value:.6g} at {when} is too large for float32 (|value| > 3.4e38)"


def fit(train: np.ndarray, scaling: str, kind: str = "none") -> tuple[float, float]:
    """(loc, scale) of one series' train part after the transform, in float64.

    A part without spread (constant) gives scale 0.0; callers refuse it (see `has_spread`).
    """
    x = transform(np.asarray(train, dtype=np.float64), kind)
    if scaling == "none":
        return 0.0, 1.0
    if scaling == "standard":
        return float(x.mean()), float(x.std())
    if scaling == "robust":
        q25, median, q75 = np.quantile(x, [0.25, 0.5, 0.75])
        iqr = float(q75 - q25)
        return float(median), iqr if iqr > 0 else float(x.std())
    if scaling == "minmax":
        low = float(x.min())
        return low, float(x.max()) - low
    raise ValueError(f"unknown scaling {scaling!r}")


def has_spread(loc: float, scale: float) -> bool:
    """False for a constant train part: its scale is zero (up to rounding relative to its level)."""
    return scale > 1e-12 * max(1.0, abs(loc))


def forward(values: np.ndarray, loc, scale, kind: str = "none", out: np.ndarray | None = None) -> np.ndarray:
    """`(f(values) - loc) / scale` in the dtype of `out` (or of `values`), without a float64 copy."""
    if out is None:
        out = np.empty_like(values)
    loc, scale = np.asarray(loc, dtype=out.dtype), np.asarray(scale, dtype=out.dtype)
    if kind == "log1p":
        np.log1p(values, out=out, dtype=out.dtype)
        out -= loc
    else:
        np.subtract(values, loc, out=out, dtype=out.dtype)
    out /= scale
    return out


def inverse(scaled: np.ndarray, loc, scale, kind: str = "none") -> np.ndarray:
    """Back to original units in float64: `f⁻¹(scaled * scale + loc)`; loc/scale broadcast."""
    return untransform(np.asarray(scaled, dtype=np.float64) * scale + loc, kind)
