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


def loss_function(name: str, quantiles=(), partial: bool = False) -> Callable:
    """`train.loss` as a callable (forecast, target, reduction="mean"); `pinball` needs the quantile levels.

    `partial`: some targets are NaN (points data.missing filled, `WindowBuffer.partial_targets`) and are left
    out (`observed_only`)."""
    if name == "pinball":
        levels = tuple(quantiles)
        loss = lambda forecast, target, reduction="mean": pinball_loss(forecast, target, levels, reduction)  # noqa: E731
    else:
        loss = LOSSES[name]
    return observed_only(loss) if partial else loss


def observed_only(loss: Callable) -> Callable:
    """`loss` over the observed targets only (NaN targets: points data.missing filled, never learnt from).

    `reduction="none"` gives NaN at those points; `"mean"` sums the observed points' losses over the number of
    all points of the batch, a denominator that does not depend on the data, so every rank of a DDP run divides
    alike and the averaged gradient is the same for any number of processes.
    """

    def masked(forecast: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        unobserved = torch.isnan(target)
        per_point = loss(forecast, torch.where(unobserved, torch.zeros_like(target), target), reduction="none")
        if reduction == "none":
            return per_point.masked_fill(unobserved, float("nan"))
        return per_point.masked_fill(unobserved, 0.0).sum() / per_point.numel()

    return masked


def observed_total(per_point: torch.Tensor, target: torch.Tensor, dim: int | None = None):
    """(sum in float64, count) of per-point losses over the observed targets, whole or along `dim`.

    A NaN target is a point data.missing filled and is left out. A NaN loss at an observed point (a NaN forecast)
    stays in and makes the sum NaN: `nansum` would drop it too, and a model that forecasts NaN there would score as
    if it had been right. Without NaN targets this is the plain sum and the number of points.
    """
    observed = ~torch.isnan(target)
    total = per_point.double().masked_fill(~observed, 0.0)
    if dim is None:
        return total.sum(), observed.sum()
    return total.sum(dim), observed.sum(dim)


def training_loss(loss: Callable, model, x: torch.Tensor, y: torch.Tensor, ensemble: int = 1) -> torch.Tensor:
    """The loss of a batch; with an ensemble (k > 1 members), the mean of each member's own loss."""
    if ensemble == 1:
        return loss(model(x).float(), y)
    forecasts = model(x, members=True).float()  # (ensemble, B, horizon[, Q])
    return loss(forecasts, y.expand(forecasts.shape[: y.dim() + 1]))
