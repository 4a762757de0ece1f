"""`model.blend`: how much of the trained correction the forecast keeps over the residual base.

With a residual head the forecast is `base + w * correction`, where `base` is the seasonal
profile (the untrained model) and `correction` what training added. On short series a
correction learned on the training years often carries a trend that breaks later (bench/README:
h02, usmelec, arrivals); keeping only part of it is the classic combination of two forecasts.
After training, `w` is set in the best weights' `blend` buffer (so evaluate, export, ONNX and
predict all use it): a fixed value, or (`validation`) the value on a grid of 0, 0.05, ..., 1
with the lowest training loss on the validation windows (the smaller on a tie). Training itself
always runs with `w = 1`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from pipeline.library.checkpoint import save_weights
from pipeline.library.inference import load_model
from pipeline.library.model_spec import ModelSpec

log = logging.getLogger("pipeline")

GRID = tuple(round(float(w), 2) for w in np.linspace(0.0, 1.0, 21))


@torch.no_grad()
def validation_losses(model, buffer, pairs: torch.Tensor, batch_size: int, loss) -> dict[float, float]:
    """The loss of `base + w * correction` on the windows `pairs` for each `w` of GRID."""
    model.blend.fill_(1.0)
    sums = np.zeros(len(GRID))
    count = 0
    for chunk in pairs.split(batch_size):
        x, y = buffer.gather(chunk)
        head, spread, base = model.decompose(x)
        for i, w in enumerate(GRID):
            sums[i] += float(loss((base + w * head * spread).float(), y, reduction="none").sum(dtype=torch.float64))
        count += y.numel()
    return {w: s / count for w, s in zip(GRID, sums)}


def choose(losses: dict[float, float]) -> float:
    """The weight with the lowest loss; the smaller weight on a tie."""
    return min(losses, key=lambda w: (losses[w], w))


def blend_best(
    weights: Path, spec: ModelSpec, buffer, val_pairs: torch.Tensor, batch_size: int, loss, setting: float | str
) -> dict:
    """Set the `blend` share in the weights file (`model.blend`: a fixed share, or `validation`; idempotent)."""
    model = load_model(weights, spec).to(buffer.device)
    losses = validation_losses(model, buffer, val_pairs, batch_size, loss)
    weight = choose(losses) if setting == "validation" else float(setting)
    model.blend.fill_(weight)
    save_weights(model.state_dict(), weights)
    log.info(
        "train: the forecast keeps %.2f of the trained correction (validation loss %.5f; all of it %.5f, none %.5f)",
        weight,
        losses.get(weight, float("nan")),
        losses[1.0],
        losses[0.0],
    )
    return {"weight": weight, "val_loss": {str(w): v for w, v in losses.items()}}
