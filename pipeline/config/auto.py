"""`auto` settings, resolved from what ingest found: the frequency and the series' lengths.

A user who leaves `window.lookback`, `evaluate.season_length` or `model.residual_season` at
`auto` gets values derived from the data's frequency, so a config written for hourly data does
not silently carry a half-hourly season to monthly data. The rules are plain on purpose (the
season is the calendar cycle of the frequency; the lookback is a few seasons, bounded by the
shortest train part) and every stage after ingest resolves them the same way from
`ingest/meta.json`, so the window, the model and the scores always agree. `data.calendar` is
resolved the same way (`pipeline.library.calendar`: the cycles the frequency shows).
"""

from __future__ import annotations

import dataclasses
import logging

from pipeline.config.sections import Config, check_base_fits, check_seasons_fit
from pipeline.library import calendar
from pipeline.library.errors import ConfigError
from pipeline.library.model_spec import ModelSpec
from pipeline.library.records import IngestRecord
from pipeline.library.warm_start import warm_start_spec

log = logging.getLogger("pipeline")

AUTO = "auto"
LOOKBACK_SEASONS = 5  # input windows hold this many of the longest season (the residual base's profiles)
RECURRENT_SEASONS = 3  # ... and the recurrent layers read the last this many of the shortest
LOOKBACK_HORIZONS = 2  # ... and at least this many horizons
MAX_SEASON_AVERAGE = 3  # seasons averaged into the residual head's base, when the lookback holds them
MAX_DAILY_SEASON = 1440  # sub-daily steps: the daily cycle, down to one-minute data

# calendar cycles per period of the offset's base unit, for offsets that are not fixed durations
_CYCLES = {
    "Y": 1,  # yearly: no season
    "Q": 4,  # quarters in a year
    "M": 12,  # months in a year
    "SM": 24,  # semi-months in a year
    "W": 52,  # weeks in a year
    "B": 5,  # business days in a week
    "C": 5,  # custom business days in a week
    "D": 7,  # days in a week
}


def season_for(freq: str) -> int:
    """The season (in steps) of data at pandas frequency `freq`: 12 for monthly, 48 for 30min, ...

    Fixed-duration steps under a day use the daily cycle (24 hourly, 48 half-hourly, 288 for five
    minutes); calendar offsets use the yearly (or, for days, weekly) cycle. A multiple (`3MS`,
    `2h`) divides the cycle when it can; when it cannot, or the frequency has no calendar cycle,
    the season is 1 (seasonal naive is then naive).
    """
    import pandas as pd  # only here: resolving auto values must not slow a bare import

    offset = pd.tseries.frequencies.to_offset(freq)
    n = max(1, int(getattr(offset, "n", 1)))
    step_ns = calendar.fixed_step_ns(offset) or 0
    day_ns = calendar.DAY_NS
    if 0 < step_ns < day_ns:
        per_day, rest = divmod(day_ns, step_ns)
        return per_day if rest == 0 and per_day <= MAX_DAILY_SEASON else 1
    unit = _unit(offset.name)
    if unit is None:
        return 1
    if unit == "D" and n == 7:  # 7D: weekly steps
        unit, n = "W", 1
    cycle = _CYCLES[unit]
    return cycle // n if cycle % n == 0 and cycle // n > 1 else 1


def _unit(name: str) -> str | None:
    """The calendar unit of an offset name: `MS`, `ME`, `BMS` -> M; `QS-JAN`, `BQE` -> Q; `W-FRI` -> W."""
    base = name.split("-")[0]
    if base in ("B", "C"):
        return "B"
    base = base.removeprefix("C").removeprefix("B")
    for prefix, unit in (("SM", "SM"), ("Y", "Y"), ("A", "Y"), ("Q", "Q"), ("M", "M"), ("W", "W"), ("D", "D")):
        if base.startswith(prefix):
            return unit
    return None


def auto_lookback(season: int, horizon: int, shortest_train: int) -> int:
    """A few seasons (and at least two horizons), bounded by the shortest series' train part.

    The bound keeps at least half of that train part (after a horizon) as training-window
    origins: a lookback close to the series length would leave a handful of windows to learn
    from. For whole cycles of `season` only, the unit the residual base's profiles average, the
    window may take up to two thirds (a third left for origins): half cut eight weeks of
    half-hourly history (taylor in bench/accuracy.py) to a four-week window, where the
    multi-seasonal base needs five to read the week's shape well (its test MASE 0.178 at four
    weeks, 0.136 at five; bench/LOG.md).
    """
    wanted = max(LOOKBACK_SEASONS * season, LOOKBACK_HORIZONS * horizon)
    room = (shortest_train - horizon) // 2
    if room < 1:
        raise ConfigError(
            f"window.lookback: auto: the shortest train part ({shortest_train} steps) leaves no room for "
            f"an input window before a horizon of {horizon}; set window.lookback or use longer series"
        )
    cycles = (shortest_train - horizon) * 2 // 3 // season * season if season > 1 else 0  # within two thirds
    return min(wanted, max(room, cycles))


def needs_resolving(cfg: Config) -> bool:
    m = cfg.model
    auto_values = (
        cfg.window.lookback, cfg.evaluate.season_length, m.residual_season, m.season_average, m.recurrent_steps
    )  # fmt: skip
    return AUTO in auto_values or m.seasons == AUTO or isinstance(cfg.data.calendar, str) or cfg.data.transform == AUTO


def resolve(cfg: Config, ingest: IngestRecord | None = None) -> Config:
    """`cfg` with every `auto` replaced by its value for the ingested data (unchanged when none)."""
    if not needs_resolving(cfg):
        return cfg
    if ingest is None:
        ingest = IngestRecord.require(cfg.run_dir / "ingest", "resolving the auto settings")
    warm = warm_start_spec(cfg.train.init_from, cfg.registry_root)
    if cfg.data.transform == AUTO:  # ingest chose it (`pipeline.library.transform_choice`)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, transform=ingest.transform))
    return resolve_for(cfg, ingest.freq, int(ingest.series.train_end.min()), ingest.detected_seasons, warm)


def resolve_for(
    cfg: Config,
    freq: str,
    shortest_train: int,
    detected: tuple[int, ...] | None = None,
    warm: ModelSpec | None = None,
) -> Config:
    """`resolve` for data at `freq` whose shortest train part has `shortest_train` steps.

    `detected`: the seasons ingest kept (`pipeline.library.seasonality`); None for an ingest made
    before seasons were detected, which resolves as it did then (the frequency's one season).
    `warm`: the spec of the weights a warm start begins from (`train.init_from`): its seasons and
    calendar features stand in for the detected ones, so a nightly retrain from the champion
    trains the network the champion's weights fit even on a night the detection would differ.
    """
    if warm is not None and warm.residual_season and cfg.model.seasons == AUTO:
        detected = warm.seasons or tuple(p for p in (warm.residual_season,) if p > 1)
    season = cfg.evaluate.season_length
    if season == AUTO:
        season = season_for(freq)
    seasons = cfg.model.seasons
    if seasons == AUTO:
        seasons = list(detected) if detected is not None else ([season] if season > 1 else [])
    main = seasons[0] if seasons else season  # the profile's season; the evaluation season when none was kept
    horizon = cfg.window.horizon
    lookback = cfg.window.lookback
    if lookback == AUTO:
        lookback = auto_lookback(max([main, *seasons]), horizon, shortest_train)
        if cfg.model.seasons != AUTO:  # seasons set explicitly must fit; detected ones that do not are left out below
            check_seasons_fit(seasons, lookback, shortest_train)
    recurrent = cfg.model.recurrent_steps
    if recurrent == AUTO:
        recurrent = min(lookback, max(RECURRENT_SEASONS * main, LOOKBACK_HORIZONS * horizon, *seasons))
    elif recurrent > lookback:  # an explicit lookback was checked at load; this one is auto
        raise ConfigError(
            f"model.recurrent_steps ({recurrent}) is longer than window.lookback ({lookback}: auto, bounded by the "
            f"shortest train part, {shortest_train} steps); the recurrent layers read the last steps of the input "
            f"window (set at most {lookback})"
        )
    residual = cfg.model.residual_season
    if residual == AUTO:
        residual = main if 1 < main <= lookback else 0
    average = cfg.model.season_average
    if average == AUTO:
        average = max(1, min(MAX_SEASON_AVERAGE, lookback // residual)) if residual else 1
    check_base_fits(residual, average, lookback)
    features = cfg.data.calendar
    if features == AUTO and warm is not None:
        features = list(warm.calendar)
    elif features == AUTO and detected is not None and cfg.model.seasons == AUTO:
        features = calendar.features_of(seasons, freq)
    resolved = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, calendar=list(calendar.resolve(features, freq))),
        window=dataclasses.replace(cfg.window, lookback=lookback),
        evaluate=dataclasses.replace(cfg.evaluate, season_length=season),
        model=dataclasses.replace(
            cfg.model,
            residual_season=residual,
            season_average=average,
            seasons=[p for p in seasons if p <= lookback],
            recurrent_steps=recurrent,
        ),
    )
    log.debug(
        "auto settings for freq %s: season %d, seasons %s, lookback %d (recurrent %d), residual season %d x %d",
        freq,
        season,
        seasons,
        lookback,
        recurrent,
        residual,
        average,
    )
    return resolved
