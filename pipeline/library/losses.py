"""Training losses on scaled targets: point losses and the pinball loss of quantile forecasts."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def pinball_loss(forecast: torch.Tensor, target: torch.Tensor, quantiles, reduction: str = "mean") -> torch.Tensor:
    """Pinball loss of quantile forecasts (B, horizon, Q) against targets (B, horizon).


    Averaged over the quantiles, so `reduction="none"` gives (B, horizon) like the point losses.
    """
    q = torch.as_tensor(quantiles, dtype=forecast.dtype, device=forecast.device)
    err = target[..., None] - forecast
    per_point = torch.maximum(q * err, (q - 1.0) * err).mean(dim=-1)
    return per_point.mean() if reduction == "mean" else per_point


LOSSES = {"mse": F.mse_loss, "mae": F.l1_loss, "huber": F.huber_loss}


def loss_function(name: str, quantiles=()) -> Callable:
    """`train.loss` as a callable (forecast, target, reduction="mean"); `pinball` needs the quantile levels."""
    if name == "pinball":
        levels = tuple(quantiles)
        return lambda forecast, target, reduction="mean": pinball_loss(forecast, target, levels, reduction)
    return LOSSES[name]


def training_loss(loss: Callable, model, x: torch.Tensor, y: torch.Tensor, ensemble: int = 1) -> torch.Tensor:
    """The loss of a batch; with an ensemble (k > 1 members), the mean of each member's own loss."""
    if ensemble == 1:
        return loss(model(x).float(), y)
    forecasts = model(x, members=True).float()  # (ensemble, B, horizon[, Q])
    return loss(forecasts, y.expand(forecasts.shape[: y.dim() + 1]))
