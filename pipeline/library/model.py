"""The forecaster network: the tutorial's LSTM done right.

Inputs are `(batch, steps, channels)` (`batch_first`), the last hidden state of the top layer
goes through one linear head to all `horizon` outputs at once (direct multi-step). Channels, in
this order: the scaled target; past covariates (`past_size`); known-ahead channels
(`future_size`: future covariates, then a sine and a cosine per calendar feature); static
covariates; with `series_embedding`, the series' row in the embedding table (a float holding an
integer). With known-ahead channels the inputs span `lookback + horizon` steps (target and
past covariates zero over the horizon) and the head also reads the horizon's known-ahead
channels; else they span `lookback`. Static covariates and the series' embedding vector go to
the recurrent layers at every step, beside the other inputs.

Switches that make it robust on data it was not tuned for:

- `instance_norm`: each input window is standardised by its own mean and spread, and the
  output is mapped back, so level shifts between training and test periods do not matter.
- `residual_season`: the head predicts a correction to a seasonal base forecast read from the
  input window; the head starts at zero, so the untrained model *is* that base.
- `season_average`: the base is the seasonal profile averaged over the last K seasons, put at
  the level of the last season. K = 1 is seasonal naive; K = 3 halves the noise a single past
  season carries, which measured better on most of bench/accuracy.py's short series.
- `base: multi`: the base sums the average shapes of several seasons (a day's and a week's),
  `multi_seasonal_profile`; which base a run uses is chosen before training
  (`pipeline.library.base_choice`).
- `recurrent_steps`: the recurrent layers read only the last steps of the input window, the
  base all of it, so a window long enough for a weekly base costs no more to train than a
  three-day one.
- `base_input`: the head also reads the base over the horizon (in the window's own units), so
  its correction can depend on what it corrects, which the recurrent layers may not have seen.

With `quantiles` (sorted, including 0.5) the output is `(batch, horizon, len(quantiles))`: the
head gives the median and, for each step away from it, a softplus increment, so the quantiles
are cumulative sums away from the median and never cross, by construction (also in ONNX and
under float rounding: the increments are >= 0, and scaling by a positive spread or adding the
same base keeps the order). Without quantiles the output is `(batch, horizon)` as before.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.library.model_spec import ModelSpec


class RecurrentForecaster(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        if spec.series_embedding:
            self.embedding = nn.Embedding(spec.n_series, spec.series_embedding)
        members = [_member(spec) for _ in range(spec.ensemble)]
        if spec.ensemble == 1:  # the plain model keeps its state-dict keys (rnn.*, head.*)
            self.rnn, self.head = members[0]
        else:
            self.rnn = nn.ModuleList(rnn for rnn, _ in members)
            self.head = nn.ModuleList(head for _, head in members)
        if spec.blend:  # the share of the trained correction kept, set after training (pipeline.library.blend)
            self.register_buffer("blend", torch.ones(()))
        if spec.quantiles:  # offsets added to the quantiles after training (see pipeline.library.calibration)
            self.register_buffer("calibration", torch.zeros(spec.horizon, len(spec.quantiles)))
        if spec.quantiles and spec.band_season:  # the volatility band's offsets around the median, set likewise
            self.register_buffer("band", torch.zeros(spec.horizon, len(spec.quantiles)))

    def forward(self, x: torch.Tensor, members: bool = False) -> torch.Tensor:
        """The forecast; with `members`, each ensemble member's forecast stacked first (ensemble, ...)."""
        head, spread, base = self.decompose(x, members)
        return base + head * spread

    def decompose(self, x: torch.Tensor, members: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(head, spread, base) with forecast = base + head * spread; spread > 0 (1 without instance_norm).

        `head` is (B, horizon) or (B, horizon, Q) in the window's own units; spread and base
        broadcast against it (base: the seasonal-naive forecast or the window's mean or 0).
        With known-ahead channels, `x` spans lookback + horizon and the head also reads the
        horizon's known-ahead channels (the other channels there are ignored). A quantile
        head's calibration is in it, in the window's units (`Parts`): its offsets widen each
        interval, and with `spec.band_season` every quantile below the median is at most, every
        one above at least, the median plus its offset in the volatility band.
        """
        head, spread, base, scale, band_scale = self.parts(x, members)
        if not self.spec.quantiles:
            return head, spread, base
        head = head + self.calibration * scale[:, :, None]
        if self.spec.band_season:
            head = widest(head, self.band * band_scale[:, :, None], self.spec.median_index)
        return head, spread, base

    def parts(self, x: torch.Tensor, members: bool = False) -> Parts:
        """`decompose` before calibration, with the units its offsets are multiplied by."""
        spec = self.spec
        future = series = None
        if spec.series_embedding:
            series = x[:, 0, -1].round().long()
        if spec.future_size:
            lookback = x.shape[1] - spec.horizon
            ahead = 1 + spec.past_size
            future = x[:, lookback:, ahead : ahead + spec.future_size].flatten(1)
            x = x[:, :lookback]
        x = x[..., : spec.input_size]
        base = residual_base(x[..., 0], spec)  # read from the whole input window
        recent = recent_error(x[..., 0], spec.interval_scale, spec.horizon) if spec.interval_scale else None
        volatility = recent_volatility(x[..., 0], spec.band_season) if spec.band_season else None
        if spec.recurrent_steps and spec.recurrent_steps < x.shape[1]:
            x = x[:, -spec.recurrent_steps :]
        if series is not None:
            x = torch.cat([x, self.embedding(series)[:, None, :].expand(-1, x.shape[1], -1)], dim=-1)
        target = x[..., 0]
        loc = torch.zeros_like(target[:, :1])
        spread = torch.ones_like(loc)
        if self.spec.instance_norm:
            loc = target.mean(dim=1, keepdim=True)
            spread = ((target - loc) ** 2).mean(dim=1, keepdim=True).add(1e-6).sqrt()
            x = torch.cat([((target - loc) / spread).unsqueeze(-1), x[..., 1:]], dim=-1)
        if spec.base_input and base is not None:  # the head sees what it corrects, in the window's own units
            seen = ((base - loc) / spread).to(x.dtype)
            future = seen if future is None else torch.cat([future, seen], dim=1)
        head = self.correction(x, future, members)
        if self.spec.blend:
            head = head * self.blend
        if base is None:
            base = loc
        scale = relative_unit(recent, spread)
        band_scale = relative_unit(volatility, spread)
        if self.spec.quantiles:
            return Parts(head, spread[:, :, None], base[:, :, None], scale, band_scale)
        return Parts(head, spread, base, scale, band_scale)

    def correction(self, x: torch.Tensor, future: torch.Tensor | None, members: bool = False) -> torch.Tensor:
        """The head's output (B, horizon) or (B, horizon, Q) for inputs `x` (B, lookback, features).

        With `ensemble` k > 1 it is the mean of the k members' outputs (with `members`, all of
        them, stacked first: what training fits, each member on its own loss).
        """
        out = self._members(x, future)
        return out if members else out.mean(dim=0)

    def _members(self, x: torch.Tensor, future: torch.Tensor | None) -> torch.Tensor:
        """Each member's head output, stacked: (ensemble, B, horizon[, Q])."""
        pairs = [(self.rnn, self.head)] if self.spec.ensemble == 1 else zip(self.rnn, self.head)
        outs = []
        for rnn, linear in pairs:
            out, _ = rnn(x)
            last = out[:, -1, :] if future is None else torch.cat([out[:, -1, :], future], dim=1)
            head = float32_linear(linear, last)
            if self.spec.quantiles:
                head = monotone_quantiles(
                    head.view(-1, self.spec.horizon, len(self.spec.quantiles)), self.spec.median_index
                )
            outs.append(head)
        return torch.stack(outs)


class Parts(NamedTuple):
    """A forecast before calibration: quantiles = base + (head + offsets * unit) * spread.

    `scale` ((B, 1) or (B, horizon)) is the unit of the calibration offsets, `band_scale` (B, 1)
    the unit of the volatility band's, both relative to the window's spread."""

    head: torch.Tensor
    spread: torch.Tensor
    base: torch.Tensor
    scale: torch.Tensor
    band_scale: torch.Tensor


def widest(head: torch.Tensor, band: torch.Tensor, median: int) -> torch.Tensor:
    """The quantiles `head` (..., Q) widened to the band `band` (offsets from the median, <= 0 below it, >= 0
    above it): the lower of the two below the median, the higher above it. The minimum of two non-decreasing
    sequences is non-decreasing, so quantiles that did not cross still do not."""
    centre = head[..., median : median + 1]
    around = centre + band
    lower = torch.minimum(head[..., :median], around[..., :median])
    upper = torch.maximum(head[..., median + 1 :], around[..., median + 1 :])
    return torch.cat([lower, centre, upper], dim=-1)


MIN_INTERVAL_SCALE = 0.01  # a window that repeats its last cycle exactly still gets some of the widening
PHASE_ERROR_FLOOR = 0.1  # a phase that never changed still gets this share of the window's mean recent error


def recent_error(target: torch.Tensor, season: int, horizon: int) -> torch.Tensor:
    """(batch, horizon): how far the window's cycles moved from one to the next, at each forecast step's phase.

    The error seasonal naive made inside the window, averaged over the cycles it holds, per phase
    (at least a tenth of its mean over the phases): it grows as soon as the series stops repeating
    itself (a schedule change, a holiday season, a storm), which the window's spread, dominated by
    the season's own swing, hardly notices; and it is small at the quiet phases (night hours) and
    large at the busy ones, where a single widening for every phase covers the first and misses
    the second."""
    per_phase = cycle_changes(target, season).abs().mean(dim=1)
    floor = PHASE_ERROR_FLOOR * per_phase.mean(dim=1, keepdim=True)
    return torch.maximum(per_phase[:, torch.arange(horizon, device=target.device) % season], floor)


def relative_unit(unit: torch.Tensor | None, spread: torch.Tensor) -> torch.Tensor:
    """`unit` in units of the window's spread (1 without one), at least MIN_INTERVAL_SCALE."""
    return torch.ones_like(spread) if unit is None else (unit / spread).clamp_min(MIN_INTERVAL_SCALE)


def recent_volatility(target: torch.Tensor, season: int) -> torch.Tensor:
    """(batch, 1): the root-mean-square change from each of the window's cycles to the next, over all of it.

    Seasonal naive's typical error inside the window, one number for every phase: the unit of the
    volatility band (`widest`). Unlike `recent_error` it does not follow the quiet phases down, and
    the square lets one broken cycle (a holiday, a schedule change) widen every later forecast
    that still sees it."""
    return cycle_changes(target, season).flatten(1).square().mean(dim=1, keepdim=True).sqrt()


def cycle_changes(target: torch.Tensor, season: int) -> torch.Tensor:
    """(batch, cycles, season): the change from each of the window's last cycles to the next, by phase
    (every whole cycle-to-cycle change the window holds, at least one)."""
    cycles = max(1, target.shape[1] // season - 1)
    change = target[:, season:] - target[:, :-season]
    return change[:, change.shape[1] - cycles * season :].reshape(-1, cycles, season)


def float32_linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The head in float32 also under mixed precision: it turns the recurrent state into the forecast's
    correction, where bf16's 8 bits of mantissa cost accuracy (bench/README.md) and the matmul is tiny."""
    if not torch.is_autocast_enabled(x.device.type):
        return linear(x)
    with torch.autocast(x.device.type, enabled=False):
        return linear(x.float())


def _member(spec: ModelSpec) -> tuple[nn.Module, nn.Linear]:
    """One (recurrent network, linear head) pair; the head starts at zero with a residual base."""
    rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[spec.cell](
        input_size=spec.input_size + spec.series_embedding,
        hidden_size=spec.hidden_size,
        num_layers=spec.num_layers,
        dropout=spec.dropout if spec.num_layers > 1 else 0.0,
        batch_first=True,
    )
    ahead = spec.future_size + (1 if spec.base_input and spec.residual_season else 0)
    head = nn.Linear(spec.hidden_size + spec.horizon * ahead, spec.horizon * max(1, len(spec.quantiles)))
    if spec.residual_season:  # start as the base: training must earn every departure from it
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    return rnn, head


def monotone_quantiles(raw: torch.Tensor, median: int) -> torch.Tensor:
    """(..., Q) unconstrained values to non-decreasing quantiles around the median's slot.

    `raw[..., median]` is the median; above it each quantile adds softplus(raw) to the one
    below, beneath it each subtracts softplus(raw) from the one above.
    """
    centre = raw[..., median : median + 1]
    up = torch.cumsum(F.softplus(raw[..., median + 1 :]), dim=-1)
    down = torch.flip(torch.cumsum(torch.flip(F.softplus(raw[..., :median]), [-1]), dim=-1), [-1])
    return torch.cat([centre - down, centre, centre + up], dim=-1)


def seasonal_naive(target: torch.Tensor, horizon: int, season: int) -> torch.Tensor:
    """Seasonal-naive forecast (batch, horizon) read from the end of the input window."""
    lookback = target.shape[1]
    steps = torch.arange(horizon, device=target.device)
    index = lookback + steps - season * (1 + steps // season)
    return target[:, index]


def seasonal_profile(
    target: torch.Tensor,
    horizon: int,
    season: int,
    seasons: int,
    level_steps: int | None = None,
    trend: float = 0.0,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """The last `seasons` seasons' average shape, at the last season's level (batch, horizon).

    With one season this is exactly seasonal naive; with more, each phase is the mean of its
    deviations from their season's mean, so a single noisy or unusual year weighs less. With
    `level_steps` (fewer than a season), the level is the mean of the last `level_steps` values
    with the shape taken out: a fresher level (it lags a trend by half as much for half a season).
    With `smoothing`, the level is instead the exponentially weighted mean of the last `seasons`
    seasons with the shape taken out (`smoothed_level`), as simple exponential smoothing reads it:
    a level that shifted within the last season is followed at once at a high rate, where the
    season's mean would still hold the old level for a year. With `trend`, the window's slope
    (`window_slope`) is taken out before the shape and level are read, and that share of it is
    carried on from the window's last step.
    """
    if seasons == 1:
        return seasonal_naive(target, horizon, season)  # the same values, without rounding
    block = target[:, target.shape[1] - seasons * season :].reshape(target.shape[0], seasons, season)
    if trend:
        slope = window_slope(block)
        block = block - slope[:, :, None] * _from_last(seasons * season, target).reshape(seasons, season)
    level = block[:, -1].mean(dim=1, keepdim=True)
    shape = average_shape(block)
    if smoothing:
        level = smoothed_level((block - shape[:, None, :]).flatten(1), smoothing)
    elif level_steps and level_steps < season:
        level = (block[:, -1, -level_steps:] - shape[:, -level_steps:]).mean(dim=1, keepdim=True)
    ahead = torch.arange(horizon, device=target.device)
    forecast = level + shape[:, ahead % season]
    if trend:
        forecast = forecast + trend * slope * (1 + ahead.to(target.dtype))
    return forecast


def smoothed_level(values: torch.Tensor, rate: float) -> torch.Tensor:
    """(batch, 1): the mean of `values` (batch, steps) weighted by (1 - rate) ** (steps back from the last).

    Simple exponential smoothing's level at the last step, with the weights that fall off the
    window's start spread over the rest (so it is a mean, whatever the first value)."""
    weights = (1.0 - rate) ** -_from_last(values.shape[1], values)
    return (values * weights).sum(dim=1, keepdim=True) / weights.sum()


def window_slope(block: torch.Tensor) -> torch.Tensor:
    """(batch, 1): the change per step between the first and the last cycle's mean of `block` (batch, cycles, season).

    Whole cycles' means hold every phase once, so the season does not leak into the slope."""
    means = block.mean(dim=2)
    return ((means[:, -1] - means[:, 0]) / ((block.shape[1] - 1) * block.shape[2]))[:, None]


def _from_last(steps: int, like: torch.Tensor) -> torch.Tensor:
    """Each of the last `steps` positions' offset from the last one: -(steps - 1), ..., -1, 0."""
    return torch.arange(1 - steps, 1, device=like.device, dtype=like.dtype)


def residual_base(target: torch.Tensor, spec: ModelSpec) -> torch.Tensor | None:
    """The base forecast (batch, horizon) the head corrects, from the input window's target; None without one."""
    if not spec.residual_season:
        return None
    level_steps = spec.residual_season // 2 if spec.base_level == "half_season" else None
    if spec.base == "multi":
        return multi_seasonal_profile(
            target, spec.horizon, spec.seasons, spec.season_average, level_steps, spec.trend, spec.recent_shapes,
            spec.level_smoothing,
        )  # fmt: skip
    return seasonal_profile(
        target, spec.horizon, spec.residual_season, spec.season_average, level_steps, spec.trend, spec.level_smoothing
    )


def multi_seasonal_profile(
    target: torch.Tensor,
    horizon: int,
    seasons: tuple[int, ...],
    most: int,
    level_steps: int | None,
    trend: float = 0.0,
    recent: bool = False,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """The sum of each season's average shape, shortest season first, at a level fresh from the window's end.

    The shortest season's shape (a day's) comes from its last cycles; each longer season's shape
    (a week's) from its last cycles after the shorter shapes are taken out, so it holds what
    the shorter cycle does not (Sunday's day differs from Monday's). Each shape averages up to
    `most` cycles that the window holds. The level is the mean of the last `level_steps` values
    (half the shortest season; a whole one without) with every shape taken out. An additive
    multi-seasonal decomposition read from one window, as MSTL's is from the whole history.
    With `smoothing`, the level is the exponentially weighted mean of the whole window with every
    shape taken out (`smoothed_level`). With `trend`, the slope between the first and the last
    cycle's mean of the longest season the window holds twice is taken out first, and that share
    of it carried on from the last step.

    With `recent`, the shorter shapes are read afresh in each cycle of the longest season and the
    forecast carries the last cycle's (`recent_shapes`): a day's shape that drifts over the weeks
    (daylight moves the evening peak) follows within a week, while the week's own shape still
    averages `most` weeks. Without it the shorter shapes average the same weeks as the longest,
    so the forecast is the week's average profile and lags such a drift by half of them.
    """
    steps = target.shape[1]
    rest = target
    twice = [p for p in seasons if steps // p >= 2]
    if trend and twice:
        cycles = min(most, steps // twice[-1])
        slope = window_slope(target[:, steps - cycles * twice[-1] :].reshape(-1, cycles, twice[-1]))
        rest = target - slope * _from_last(steps, target)
    if recent and len(seasons) > 1 and steps >= seasons[-1]:
        shapes = recent_shapes(rest, seasons, most)
    else:
        shapes = [None] * len(seasons)
    total = torch.zeros_like(target[:, :horizon])
    ahead = torch.arange(horizon, device=target.device)
    back = torch.arange(steps, device=target.device) - steps  # each position's phase, counted from the end
    for season, shape in zip(seasons, shapes):
        if shape is None:
            cycles = max(1, min(most, steps // season))
            block = rest[:, steps - cycles * season :].reshape(-1, cycles, season)
            shape = average_shape(block)  # (batch, season), phase 0 = a cycle's start
        rest = rest - shape[:, torch.remainder(back, season)]
        total = total + shape[:, ahead % season]
    last = level_steps if level_steps else seasons[0]
    level = smoothed_level(rest, smoothing) if smoothing else rest[:, -last:].mean(dim=1, keepdim=True)
    if trend and twice:
        level = level + trend * slope * (1 + ahead.to(target.dtype))
    return level + total


def recent_shapes(target: torch.Tensor, seasons: tuple[int, ...], most: int) -> list[torch.Tensor]:
    """Each season's shape (batch, season) for `multi_seasonal_profile(recent=True)`, shortest first.

    Each of the last `most` cycles of the longest season (that the window holds) is taken apart on
    its own, shortest season first, each shorter shape from every cycle of it inside; the longest
    shape averages what is left of those cycles. The shorter shapes returned are the last cycle's.
    """
    longest = seasons[-1]
    batch, steps = target.shape
    cycles = max(1, min(most, steps // longest))
    blocks = target[:, steps - cycles * longest :].reshape(batch * cycles, longest)
    back = torch.arange(longest, device=target.device) - longest
    shorter = []
    for season in seasons[:-1]:
        held = longest // season
        part = blocks[:, longest - held * season :].reshape(-1, held, season)
        shape = average_shape(part)  # (batch * cycles, season)
        blocks = blocks - shape[:, torch.remainder(back, season)]
        shorter.append(shape.reshape(batch, cycles, season)[:, -1])
    left = blocks.reshape(batch, cycles, longest)
    return [*shorter, average_shape(left)]


def average_shape(block: torch.Tensor) -> torch.Tensor:
    """(batch, season): the mean over `block`'s cycles (batch, cycles, season) of each cycle's deviations from its
    own mean, so a level that moves between cycles does not enter the shape."""
    return (block - block.mean(dim=2, keepdim=True)).mean(dim=1)


def build_model(spec: ModelSpec, seed: int | None = None) -> RecurrentForecaster:
    """A fresh model; with `seed`, its initial weights depend on nothing else (not on the rank)."""
    if seed is None:
        return RecurrentForecaster(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RecurrentForecaster(spec)
