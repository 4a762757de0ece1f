"""`model.blend`: how much of the trained correction the forecast keeps over the residual base.

With a residual head the forecast is `base + w * correction`, where `base` is the seasonal
profile (the untrained model) and `correction` what training added. On short series a
correction learned on the training years often carries a trend that breaks later (bench/README:
h02, usmelec, arrivals); keeping only part of it is the classic combination of two forecasts.
After training, `w` is set in the best weights' `blend` buffer (so evaluate, export, ONNX and
predict all use it): a fixed value, or (`validation`) the smallest value on a grid of 0, 0.05,
..., 1 whose training loss on the validation windows is within one standard error of the
lowest (`pipeline.library.selection`): on a few overlapping windows the lowest alone follows
their noise. The share chosen never does worse on the validation windows than `w = 0`, the base
alone. Training itself always runs with `w = 1`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from pipeline.library.checkpoint import save_weights
from pipeline.library.inference import load_model
from pipeline.library.losses import observed_total
from pipeline.library.model_spec import ModelSpec
from pipeline.library.selection import effective_windows, one_standard_error

log = logging.getLogger("pipeline")

GRID = tuple(round(float(w), 2) for w in np.linspace(0.0, 1.0, 21))


@torch.no_grad()
def validation_losses(model, buffer, pairs: torch.Tensor, batch_size: int, loss) -> np.ndarray:
    """(windows, len(GRID)): the loss of `base + w * correction` per window of `pairs` for each `w` of GRID."""
    model.blend.fill_(1.0)
    rows = []
    for chunk in pairs.split(batch_size):
        x, y = buffer.gather(chunk)
        head, spread, base = model.decompose(x)
        columns = [window_mean(loss((base + w * head * spread).float(), y, reduction="none"), y) for w in GRID]
        rows.append(torch.stack(columns, dim=1).cpu())
    return torch.cat(rows).numpy()


def choose(per_window: np.ndarray, n_effective: float) -> float:
    """The smallest share whose validation loss is within one standard error of the lowest over `n_effective`
    independent windows (`selection`)."""
    return GRID[one_standard_error(per_window, n_effective)]


def blend_best(
    weights: Path, spec: ModelSpec, buffer, val_pairs: torch.Tensor, batch_size: int, loss, setting: float | str
) -> dict:
    """Set the `blend` share in the weights file (`model.blend`: a fixed share, or `validation`; idempotent)."""
    model = load_model(weights, spec).to(buffer.device)
    per_window = validation_losses(model, buffer, val_pairs, batch_size, loss)
    scored = ~np.isnan(per_window).any(axis=1)  # a window whose targets were all filled says nothing
    per_window = per_window[scored]
    losses = dict(zip(GRID, per_window.mean(axis=0).tolist()))
    n_effective = effective_windows(val_pairs.cpu().numpy()[scored], spec.horizon)
    weight = choose(per_window, n_effective) if setting == "validation" else float(setting)
    model.blend.fill_(weight)
    save_weights(model.state_dict(), weights)
    log.info(
        "train: the forecast keeps %.2f of the trained correction (validation loss %.5f; all of it %.5f, none %.5f)",
        weight,
        losses.get(weight, float("nan")),
        losses[1.0],
        losses[0.0],
    )
    return {
        "weight": weight,
        "lowest": min(losses, key=lambda w: (losses[w], w)),
        "effective_windows": n_effective,
        "val_loss": {str(w): v for w, v in losses.items()},
    }


@torch.no_grad()
def point_errors(weights: Path, spec: ModelSpec, share: float, buffer, pairs: torch.Tensor, batch_size: int):
    """(windows,): the mean absolute error of the point forecast (a quantile model's median) of the weights run as
    `spec` keeping `share` of the correction, per window of `pairs` (in the scaled units training uses)."""
    model = load_model(weights, spec).to(buffer.device)
    model.blend.fill_(share)
    rows = []
    for chunk in pairs.split(batch_size):
        x, y = buffer.gather(chunk)
        out = model(x)
        point = out[..., spec.median_index] if spec.quantiles else out
        rows.append(window_mean((point.float() - y).abs(), y).cpu())
    return torch.cat(rows).numpy()


def window_mean(per_point: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(windows,): the mean per-point loss of each window over its observed targets (`observed_total`)."""
    total, count = observed_total(per_point.flatten(1), y.flatten(1), dim=1)
    return total / count


def set_share(weights: Path, spec: ModelSpec, share: float) -> None:
    """Set the `blend` share in the weights file."""
    model = load_model(weights, spec)
    model.blend.fill_(share)
    save_weights(model.state_dict(), weights)
