"""The network's description: what `pipeline.library.model` builds and every reader of a model checks.

Torch-free, so the typed stage records (and the ingest and window stages) can carry it without
loading torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

# fields added after the format was first used, as they read when switched off
_LATER = {
    "base": "profile",
    "seasons": [],
    "recurrent_steps": 0,
    "base_input": False,
    "trend": 0.0,
    "interval_scale": 0,
    "band_season": 0,
    "recent_shapes": False,
    "level_smoothing": 0.0,
    "calendar_zone": None,
}

BASE_FIELDS = (
    "residual_season", "season_average", "base_level", "base", "seasons", "trend", "recent_shapes", "level_smoothing"
)  # fmt: skip
"""The fields that say which residual base the head corrects; no weight's shape depends on them."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network; saved beside the weights (train/meta.json, forecaster.json).

    Built from the config in one place (`pipeline.config.model_spec`), which sets every field.
    The defaults here are the plain network with every switch off: what a spec saved before a
    field existed meant, so older run directories and exports read as they were trained.
    """

    input_size: int
    horizon: int
    hidden_size: int
    num_layers: int
    dropout: float = 0.0
    cell: str = "lstm"
    instance_norm: bool = False
    residual_season: int = 0
    season_average: int = 1
    quantiles: tuple[float, ...] = ()
    calendar: tuple[str, ...] = ()  # calendar features (pipeline.library.calendar), known over the horizon too
    calendar_zone: str | None = None  # the wall clock the calendar follows (None: UTC), the data's zone
    past_covariates: tuple[str, ...] = ()
    future_covariates: tuple[str, ...] = ()
    static_covariates: tuple[str, ...] = ()
    series_embedding: int = 0  # size of the learned per-series vector (0 = none)
    n_series: int = 0  # rows of the embedding table
    base_level: str = "season"  # the base's level: the last season's mean, or (half_season) the last half's
    blend: bool = False  # a `blend` buffer: the share of the correction kept (pipeline.library.blend)
    ensemble: int = 1  # independently initialised (rnn, head) members; the correction is their mean
    base: str = "profile"  # the residual base: the profile of residual_season, or (multi) of every season in `seasons`
    seasons: tuple[int, ...] = ()  # the seasons of a multi-seasonal base, shortest first
    recurrent_steps: int = 0  # the last steps of the input window the recurrent layers read (0: all of it)
    base_input: bool = False  # the head also reads the base forecast (in the window's own units)
    trend: float = 0.0  # the share of the window's slope the base carries on over the horizon (0: a flat level)
    interval_scale: int = 0  # calibration offsets scale with the window's recent error at this season (0: spread only)
    band_season: int = 0  # intervals also span a calibrated band of the window's volatility at this season (0: none)
    recent_shapes: bool = False  # a multi-seasonal base's shorter shapes come from its longest season's last cycle
    level_smoothing: float = 0.0  # base_level smoothed: the rate of the exponentially weighted level (0: off)

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantiles", tuple(float(q) for q in self.quantiles))  # JSON gives a list
        for name in ("calendar", "past_covariates", "future_covariates", "static_covariates", "seasons"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def covariates(self) -> tuple[str, ...]:
        """Time-varying covariates in the buffer's order: past ones, then future ones."""
        return self.past_covariates + self.future_covariates

    @property
    def past_size(self) -> int:
        return len(self.past_covariates)

    @property
    def future_size(self) -> int:
        """Known-ahead input channels: future covariates, and a sine and a cosine per calendar feature."""
        return len(self.future_covariates) + 2 * len(self.calendar)

    @property
    def channels(self) -> int:
        """Input channels: 1 + past + known-ahead + static, and the series index with an embedding."""
        return 1 + self.past_size + self.future_size + len(self.static_covariates) + (self.series_embedding > 0)

    @property
    def median_index(self) -> int | None:
        """Position of the 0.5 quantile in the output's last axis (None for a point forecast)."""
        return self.quantiles.index(0.5) if self.quantiles else None

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one sample's output: (horizon,) or (horizon, quantiles)."""
        return (self.horizon, len(self.quantiles)) if self.quantiles else (self.horizon,)

    def _plain(self) -> dict:
        """Every field, tuples as lists (as JSON holds them)."""
        lists = ("quantiles", "calendar", "past_covariates", "future_covariates", "static_covariates", "seasons")
        return {**asdict(self), **{name: list(getattr(self, name)) for name in lists}}

    def base_fields(self) -> dict:
        """The residual base's fields (`BASE_FIELDS`), as JSON holds them."""
        plain = self._plain()
        return {name: plain[name] for name in BASE_FIELDS}

    def with_base(self, base: dict) -> ModelSpec:
        """This spec with the residual base `base` (fields of `base_fields`; others are refused)."""
        unknown = sorted(set(base) - set(BASE_FIELDS))
        if unknown:
            raise ValueError(f"not residual base fields: {unknown}")
        return replace(self, **base)

    def to_dict(self) -> dict:
        saved = self._plain()
        for name, off in _LATER.items():  # switched off, they are left out: a spec saved before them reads back equal
            if saved[name] == off:
                del saved[name]
        return saved

    @classmethod
    def from_dict(cls, saved: dict) -> ModelSpec:
        """A saved spec; fields it lacks (saved before they existed) take their switched-off defaults."""
        unknown = sorted(set(saved) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown model spec fields {unknown} (saved by a newer lstm-pipeline?)")
        return cls(**saved)

    def architecture(self) -> dict:
        """The fields that change what the weights mean: what a warm start must match.

        All of them, switched-off ones included (a spec saved before a field existed compares as
        switched off), but dropout, interval_scale and band_season: the calibration is set again after
        every training; nor calendar_zone: a model trained on UTC cycles (before they followed the data's
        zone) starts a retraining as well as any, so an upgrade does not break a scheduled warm start."""
        skipped = ("dropout", "interval_scale", "band_season", "calendar_zone")
        return {k: v for k, v in self._plain().items() if k not in skipped}
