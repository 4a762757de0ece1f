"""The model's input tensor, assembled in one place for training, evaluation and serving.

Channels, in the order `pipeline.library.model` reads them: the scaled target; past covariates;
known-ahead channels (future covariates, then a sine and a cosine per calendar feature); static
covariates; the series' row in the embedding table (a float holding an integer). With anything
known ahead, the inputs span lookback + horizon steps and the target and past covariates are
zero over the horizon (the model must never see their future values); else they span the
lookback. `WindowBuffer.gather` (training, evaluation, export) and `Forecaster.predict` (serving)
both end here, so the two cannot drift apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def assemble_inputs(
    target: torch.Tensor,
    horizon: int,
    n_past: int = 0,
    covariates: torch.Tensor | None = None,
    calendar: torch.Tensor | None = None,
    static: torch.Tensor | None = None,
    series_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, T, channels) float32 inputs from each part, every tensor on the same device.

    `target` (B, lookback) scaled; `covariates` (B, >= T, K) standardised, the `n_past` past ones
    first (their values past the lookback are ignored); `calendar` (B, >= T, 2F) from
    `pipeline.library.calendar.encode`; `static` (B, S) standardised; `series_index` (B,).
    Anything known ahead (future covariates, calendar) makes T = lookback + horizon.
    """
    lookback = target.shape[1]
    ahead = calendar is not None or (covariates is not None and covariates.shape[-1] > n_past)
    steps = lookback + horizon if ahead else lookback
    if covariates is None and calendar is None and static is None and series_index is None:
        return target[:, :, None]
    hidden = steps - lookback  # horizon steps whose target and past covariates stay zero
    channels = [F.pad(target, (0, hidden))[..., None]]
    if covariates is not None:
        past = n_past
        channels.append(F.pad(covariates[:, :lookback, :past], (0, 0, 0, hidden)))
        channels.append(covariates[:, :steps, past:])
    if calendar is not None:
        channels.append(calendar[:, :steps])
    per_series = []
    if static is not None:
        per_series.append(static)
    if series_index is not None:
        per_series.append(series_index[:, None])
    if per_series:
        channels.append(torch.cat(per_series, dim=1)[:, None, :].expand(-1, steps, -1))
    return torch.cat(channels, dim=-1)
