"""The model section of the config, as the network's spec: the one place the two meet.

Every reader of a model (the registry's warm start and comparison, export's model card, the
`Forecaster`) reads the `ModelSpec` this function made and the train stage saved; nothing else
translates config fields into network fields.
"""

from __future__ import annotations

from pipeline.config.sections import Config
from pipeline.library.calendar import Calendar
from pipeline.library.model_spec import ModelSpec
from pipeline.library.records import IngestRecord

MULTI = ("multi", "multi_recent")  # the `model.base` values of a multi-seasonal base


def model_spec(cfg: Config, ingest: IngestRecord) -> ModelSpec:
    """The spec of the network `cfg` trains on this ingest (`cfg` resolved: no `auto` left)."""
    d, m = cfg.data, cfg.model
    zone = calendar_zone(ingest.zone, ingest.wall_clock) if d.calendar else None
    calendar = Calendar(tuple(d.calendar), ingest.freq, zone)
    return ModelSpec(
        input_size=1 + len(d.past_covariates) + len(d.future_covariates) + calendar.size + len(d.static_covariates),
        horizon=cfg.window.horizon,
        hidden_size=m.hidden_size,
        num_layers=m.num_layers,
        dropout=m.dropout,
        cell=m.cell,
        instance_norm=m.instance_norm,
        residual_season=m.residual_season,
        season_average=m.season_average,
        quantiles=tuple(m.quantiles),
        calendar=calendar.features,
        calendar_zone=calendar.zone,
        past_covariates=tuple(d.past_covariates),
        future_covariates=tuple(d.future_covariates),
        static_covariates=tuple(d.static_covariates),
        series_embedding=m.series_embedding,
        n_series=ingest.n_series if m.series_embedding else 0,
        base_level=m.base_level,
        level_smoothing=m.level_smoothing if m.base_level == "smoothed" else 0.0,
        blend=m.blend != 1.0,
        ensemble=m.ensemble,
        base="multi" if m.base in MULTI else "profile",  # `validation`: the train stage picks it
        seasons=tuple(m.seasons) if m.base in MULTI else (),
        recent_shapes=m.base == "multi_recent",
        recurrent_steps=m.recurrent_steps if m.recurrent_steps < cfg.window.lookback else 0,
        base_input=m.base_input and m.residual_season > 0,
        interval_scale=interval_season(cfg)
        if m.quantiles and m.calibrate and m.calibration_unit == "recent_error"
        else 0,
        band_season=interval_season(cfg) if m.quantiles and m.calibrate and m.calibration_band else 0,
    )


def calendar_zone(zone: str | None, wall_clock: bool = False) -> str | None:
    """The zone whose wall clock the calendar follows: the data's, but None for UTC (the same cycles, and a spec
    that reads as one saved before the field existed) and where the times are held on that wall clock already."""
    return None if zone in (None, "UTC") or wall_clock else zone


def interval_season(cfg: Config) -> int:
    """The season whose cycle-to-cycle changes in the window measure its recent error and volatility
    (`model.recent_error`, `model.recent_volatility`): the longest the lookback holds twice, else one step
    (the error of naive)."""
    m, lookback = cfg.model, cfg.window.lookback
    seasons = (*m.seasons, m.residual_season, cfg.evaluate.season_length)
    return max((p for p in seasons if p > 1 and 2 * p <= lookback), default=1)
