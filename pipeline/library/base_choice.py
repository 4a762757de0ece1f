"""`model.base: validation`: the residual head's base, chosen before training on the windows before the test part.

The head learns a correction to its base and starts at zero, so the untrained model is the base,
and early stopping and the blend (`pipeline.library.blend`) can always fall back to it. That
fallback is only as good as the base: on data with a daily and a weekly cycle, a daily profile
is a weak base where last week's same day is a strong one, and no share of a correction trained
on top of the weak one recovers it. So the base is picked first, among a small fixed set read
from the input window, by the training loss on the validation windows and on up to
`train.val_windows` training windows. A base has nothing fitted, so a training window tests it
out of sample as well as a validation window does, and there are many more of them: on the
short series of bench/accuracy.py a choice on the validation windows alone (a few heavily
overlapping windows) followed their noise and forecast the test part worse (bench/LOG.md).

- naive (the last value), and seasonal naive at each season;
- the averaged profile of the shortest season at the last cycle's mean;
- the same at a fresher level (`base_level: half_season`);
- the same at an exponentially smoothed level (`base_level: smoothed`) at three rates: where the
  level shifts (a recession in a monthly series) the mean of a season lags the shift for a year,
  and simple exponential smoothing's level, what AutoETS forecasts from, follows it within a few
  steps at the fast rate;
- with two or more seasons, the multi-seasonal profile (`pipeline.library.model.multi_seasonal_profile`),
  and its `recent` variant (`model.base: multi_recent`), flat: the day's shape read from the last
  week, where the plain profile averages it over the same weeks as the week's and so lags a day
  that drifts (daylight moving the evening peak through a summer). With a slope as well it was
  chosen where the training weeks trend and the test weeks do not (bench/LOG.md);
- the level-adjusted and the plain multi-seasonal profile carrying on half, or all, of the
  window's slope (`model.window_slope`): the profiles alone hold the level flat, and on a
  trending series the correction trained on top then has to learn the trend from a few years
  (half the slope is the theta method's drift).

Each profile averages the last three cycles, and again the last five where the window holds
them: more cycles carry less noise, fewer follow a changing shape sooner, and which matters more
differs between data sets (bench/README.md).

The first in that order wins a tie, so a simpler base is kept unless another is better. A run
never does worse on validation than its base: the untrained model is a candidate of early
stopping and `w = 0` one of the blend. The recent profile is the one candidate the correction is
never trained over (`fallback_only`): where it is the best base, the correction is trained over
the best of the others, and where the recent profile alone is better than the model on the
validation windows by more than a standard error, the forecast is the recent profile alone
(`pipeline.stages.train.fall_back`).
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from pipeline.library.losses import observed_total
from pipeline.library.model import residual_base
from pipeline.library.model_spec import ModelSpec

log = logging.getLogger("pipeline")

CYCLES = (3, 5)  # the profiles average this many of the last cycles (fewer where the window holds fewer)
TRENDS = ((0.5, "with half its trend"), (1.0, "with its trend"))  # shares of the window's slope carried on
SMOOTHING = (0.2, 0.5, 0.8)  # the rates of the smoothed-level profiles: slow, middling and fast to follow a shift


def candidates(spec: ModelSpec, seasons: tuple[int, ...], lookback: int) -> dict[str, ModelSpec]:
    """The bases to compare, by name, in order of preference on a tie; each a variant of `spec`."""
    main = spec.residual_season
    plain = {"base": "profile", "seasons": (), "base_level": "season", "trend": 0.0, "level_smoothing": 0.0}
    found = {"naive": dataclasses.replace(spec, residual_season=1, season_average=1, **plain)}
    for season in sorted({main, *seasons}):
        if 1 < season <= lookback:
            found[f"seasonal naive {season}"] = dataclasses.replace(
                spec, residual_season=season, season_average=1, **plain
            )
    for cycles in held(main, lookback) if main > 1 else ():
        found[f"profile {main} x {cycles}"] = dataclasses.replace(
            spec, residual_season=main, season_average=cycles, **plain
        )
        adjusted = dataclasses.replace(
            spec, residual_season=main, season_average=cycles, **{**plain, "base_level": "half_season"}
        )
        found[f"level-adjusted profile {main} x {cycles}"] = adjusted
        for share, name in TRENDS:
            found[f"level-adjusted profile {main} x {cycles} {name}"] = dataclasses.replace(adjusted, trend=share)
        for rate in SMOOTHING:
            found[smoothed_name(main, cycles, rate)] = dataclasses.replace(
                spec, residual_season=main, season_average=cycles,
                **{**plain, "base_level": "smoothed", "level_smoothing": rate},
            )  # fmt: skip
    usable = tuple(p for p in seasons if 1 < p <= lookback)
    if len(usable) >= 2:
        for cycles in held(usable[-1], lookback):
            multi = dataclasses.replace(
                spec, residual_season=usable[0], season_average=cycles, base="multi", seasons=usable,
                base_level="half_season", trend=0.0, level_smoothing=0.0,
            )  # fmt: skip
            found[multi_name(usable, cycles)] = multi
            for share, name in TRENDS:
                found[f"{multi_name(usable, cycles)} {name}"] = dataclasses.replace(multi, trend=share)
            found[multi_name(usable, cycles, recent=True)] = dataclasses.replace(multi, recent_shapes=True)
    return found


def held(season: int, lookback: int) -> list[int]:
    """The numbers of cycles of CYCLES a profile of `season` averages in a window of `lookback` (at least 2)."""
    return sorted({min(cycles, lookback // season) for cycles in CYCLES} - {0, 1})


def smoothed_name(season: int, cycles: int, rate: float) -> str:
    return f"smoothed-level profile {season} x {cycles} at {rate}"


def multi_name(seasons: tuple[int, ...], cycles: int, recent: bool = False) -> str:
    kind = "recent multi-seasonal profile " if recent else "multi-seasonal profile "
    return kind + " + ".join(map(str, seasons)) + f" x {cycles}"


@torch.no_grad()
def window_losses(bases: dict[str, ModelSpec], buffer, pairs: torch.Tensor, batch_size: int, loss) -> dict:
    """Each base's mean training loss on the windows `pairs` (the loss of the untrained model with that base)."""
    sums = dict.fromkeys(bases, 0.0)
    count = 0
    shared = next(iter(bases.values()))  # the candidates differ only in their base, not in their inputs
    ahead = shared.horizon if shared.future_size else 0  # known-ahead inputs extend the window past the lookback
    for chunk in pairs.split(batch_size):
        x, y = buffer.gather(chunk)
        target = x[:, : x.shape[1] - ahead, 0]
        for name, spec in bases.items():
            base = residual_base(target, spec)
            forecast = base[:, :, None].expand(-1, -1, len(spec.quantiles)) if spec.quantiles else base
            total, observed = observed_total(loss(forecast.float(), y, reduction="none"), y)
            sums[name] += float(total)
        count += int(observed)
    return {name: total / count for name, total in sums.items()}


def fallback_only(spec: ModelSpec) -> bool:
    """Whether a candidate is never trained over, only the forecast where the model is not better than it.

    The recent multi-seasonal profile: trained over it, the correction did worse on vic_elec's test
    part than over the plain profile (the recurrent layers read the last week, so they learn the
    day's drift themselves), while on taylor, where no correction is kept, it is the best base by
    far (bench/LOG.md).
    """
    return spec.recent_shapes


def choose_base(
    spec: ModelSpec, seasons: tuple[int, ...], lookback: int, buffer, pairs, batch_size: int, loss
) -> tuple[ModelSpec, ModelSpec | None, dict]:
    """(the spec with the best base to train over on the windows `pairs`, the spec with the best base of all
    where that one is `fallback_only` (else None), the record for train/meta.json)."""
    bases = candidates(spec, seasons, lookback)
    losses = window_losses(bases, buffer, pairs, batch_size, loss)
    order = list(bases)

    def rank(name: str) -> tuple[float, int]:
        return losses[name], order.index(name)

    best = min((name for name in order if not fallback_only(bases[name])), key=rank)
    overall = min(order, key=rank)
    log.info(
        "train: residual base %s (loss %.5f on %d windows before the test part; %s)",
        best,
        losses[best],
        len(pairs),
        ", ".join(f"{name} {value:.5f}" for name, value in losses.items() if name != best),
    )
    record = {"chosen": best, "loss": losses, "windows": len(pairs)}
    if overall == best:
        return bases[best], None, record
    log.info("train: %s is the forecast unless the model beats it on validation (not trained over)", overall)
    return bases[best], bases[overall], {**record, "fallback": overall, "fallback_used": False}
