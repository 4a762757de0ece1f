"""The experiment config: one dataclass per section, a docstring per field, checks in `__post_init__`.

The defaults are the measured recipe (what `make demo` runs): a YAML that names only its data
gets it. docs/config.md is generated from these docstrings (`pipeline.config.reference`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.library.errors import ConfigError, shown


def operational(f: dataclasses.Field) -> bool:
    """A field that changes how a run is operated, not what it computes (kept out of cache keys)."""
    return bool(f.metadata.get("operational"))


def _operational(default: Any) -> Any:
    return field(default=default, metadata={"operational": True})


def _added(default: Any) -> Any:
    """A field added after runs were made without it: in cache keys only when set, so those runs stay cached."""
    return field(default=default, metadata={"added": True})


@dataclass(kw_only=True, slots=True)
class SyntheticConfig:
    """Size of the seeded `synthetic` source (used when `data.source: synthetic`)."""

    n_series: int = 20
    """Number of series to generate."""
    length: int = 2000
    """Length of the longest series; lengths vary down to `min_length`."""
    min_length: int | None = None
    """Length of the shortest series (default: `length`, all series equally long)."""
    freq: str = "h"
    """Pandas frequency alias of the generated timestamps."""
    seed: int = 0
    """Seed of the generator (independent of the training seed)."""

    def __post_init__(self) -> None:
        _seed("data.synthetic.seed", self.seed)
        _positive("data.synthetic.n_series", self.n_series)
        _positive("data.synthetic.length", self.length)
        if self.min_length is not None:
            _positive("data.synthetic.min_length", self.min_length)
            if self.min_length > self.length:
                raise ConfigError(
                    f"data.synthetic.min_length ({self.min_length}) is larger than "
                    f"data.synthetic.length ({self.length})"
                )


@dataclass(kw_only=True, slots=True)
class DataConfig:
    """Where the data comes from and how it is cleaned and split."""

    source: str = "builtin:vic_elec"
    """Path or glob of csv/parquet/json files, a directory of them or one `datasets` saved (`save_to_disk`),
    `builtin:<name>`, `synthetic`, or a Hub dataset id."""
    format: Literal["long", "wide"] = "long"
    """`long`: one row per (series, time); `wide`: one column per series."""
    id_column: str | None = None
    """Long format: column naming the series (absent = a single series)."""
    time_column: str = "time"
    """Column holding the timestamps."""
    target_column: str = "demand"
    """Long format: column holding the values to forecast."""
    zone: str = _added("auto")
    """The time zone the data's clock is in: forecasts and backtests write their times in it, and the calendar
    features follow its wall clock (summer time included). `auto`: the timestamps' own (a named zone from typed
    parquet, the one UTC offset of the text; UTC where the offsets differ, as in local time written across a
    summer-time change); or a name from the time-zone database (e.g. `Europe/Berlin`) for timestamps that carry a
    zone or UTC offsets: the same instants, on that zone's clock. Naive timestamps are then local times on its clock:
    the hour summer time repeats is told apart by the order of each series' rows (the first is summer time), and a
    time the clock skips is refused in one line. Steps of a day or longer count days on the zone's clock (local
    midnights are 23 or 25 hours apart across a summer-time change), shorter steps are durations between instants."""
    date_order: Literal["auto", "day_first", "month_first"] = _added("auto")
    """How dates written in numbers only (02/01/2024, 2.1.2024, 02-01-2024) order the day and the month. `auto`: as
    the time column shows it (day first where some first number is above 12, month first where some second one is),
    refused in one line where no date tells (every number 12 or less, as in the first days of a month). The order is
    recorded: `predict` reads a history by it where the history does not tell. ISO dates (2024-01-02) need none.
    Two-digit years are read as `%y` reads them (69-99: 1900s, 00-68: 2000s)."""
    freq: str | None = None
    """Pandas frequency alias (e.g. `30min`, `h`, `D`, `MS`); inferred when absent, from the longest series (across
    its gaps: the step, of its most common difference and the business-day, month, quarter and year steps, whose grid
    holds every timestamp in the fewest points)."""
    missing: Literal["error", "interpolate", "ffill", "drop"] = "error"
    """Missing timestamps or NaN/inf targets: fail, fill linearly, carry forward, or drop the series."""
    short_series: Literal["drop", "error"] = "drop"
    """A series too short for one window in each split (train, validation, test): drop it with a warning, or fail."""
    val_size: int | float = 0.1
    """Validation part at the end of each series before the test part: a fraction of each series' length (rounded to
    the nearest step by Python's `round`, an exact half to the even step: 0.1 of 25 is 2, of 35 is 4; at least 1),
    or steps."""
    test_size: int | float = 0.1
    """Test part at the end of each series: a fraction of each series' length (rounded as `data.val_size`), or
    steps."""
    scaling: Literal["standard", "robust", "minmax", "none"] = "standard"
    """Per-series scaling fitted on the train part only: mean/std, median/IQR, min/range, or none."""
    transform: Literal["none", "log1p", "auto"] = "auto"
    """Target transform before scaling; `log1p` needs values >= 0 (outputs are mapped back to original units).
    `auto`: `log1p` where the windows before the test part forecast better from the log by more than a standard
    error (seasonal swings that grow with the level), else `none`; chosen at ingest, in ingest/meta.json."""
    calendar: list[str] | Literal["auto", "none"] = "auto"
    """Calendar features from the timestamps, known ahead: `day` (time of day), `week` (day of week), `year` (time
    of year), encoded as sine and cosine, on the wall clock of the data's zone (summer time included; naive
    timestamps as written); `auto`: with `model.seasons: auto`, those of the seasons ingest keeps (a daily season
    gives `day`, a weekly one `week`, a yearly one `year`; none from weekly data on), with a warm start those of its
    weights; with seasons given, day+week below daily, week+year daily, none from weekly on."""
    past_covariates: list[str] = field(default_factory=list)
    """Numeric columns known only up to the forecast time (e.g. a measured temperature): inputs over the lookback;
    scaled per series from the train part."""
    future_covariates: list[str] = field(default_factory=list)
    """Numeric columns known ahead (e.g. a work-day flag): inputs over the lookback and the horizon; `predict` needs
    their horizon values (`--future`). Scaled per series from the train part."""
    static_covariates: list[str] = field(default_factory=list)
    """Long format: numeric per-series columns, constant within each series (e.g. a store's size); standardised
    across series."""
    split: str = "train"
    """Hub datasets, and directories `datasets` saved a DatasetDict to (`save_to_disk`): which split to load."""
    revision: str | None = _added(None)
    """Hub datasets only: the git revision (tag, branch or commit) to load; pin one for repeatable runs."""
    subset: str | None = _added(None)
    """Hub datasets only: the subset (the dataset's configuration name), for datasets that have several."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Parameters of the `synthetic` source."""

    def __post_init__(self) -> None:
        if isinstance(self.calendar, list):
            from pipeline.library.calendar import FEATURES

            unknown = [f for f in self.calendar if f not in FEATURES]
            if unknown:
                raise ConfigError(f"data.calendar: unknown feature '{unknown[0]}' (choose from {', '.join(FEATURES)})")
            twice = [f for k, f in enumerate(self.calendar) if f in self.calendar[:k]]
            if twice:
                raise ConfigError(f"data.calendar: feature '{twice[0]}' is given twice")
        if not self.source.strip():
            raise ConfigError("data.source is empty")
        if self.zone != "auto":
            _check_zone(self.zone)
        if self.freq is not None:
            _check_freq("data.freq", self.freq)
        if self.source == "synthetic":  # checked where it is used: pandas stays out of a config that does not need it
            _check_freq("data.synthetic.freq", self.synthetic.freq)
        self._check_covariates()
        for key, value in (("data.val_size", self.val_size), ("data.test_size", self.test_size)):
            if isinstance(value, float) and not 0.0 < value < 1.0:
                raise ConfigError(f"{key} must be a fraction in (0, 1) or a whole number of steps, got {value}")
            if isinstance(value, int) and value < 1:
                raise ConfigError(f"{key} must be at least 1 step, got {value}")

    def _check_covariates(self) -> None:
        """Covariates are distinct columns other than the time, id and target columns."""
        seen: dict[str, str] = {}
        reserved = {self.time_column: "data.time_column", self.target_column: "data.target_column"}
        if self.id_column is not None:
            reserved[self.id_column] = "data.id_column"
        for kind in ("past_covariates", "future_covariates", "static_covariates"):
            for name in getattr(self, kind):
                if not isinstance(name, str) or not name.strip():
                    raise ConfigError(f"data.{kind}: column names must be non-empty strings, got {name!r}")
                if self.format == "long" and name in reserved:
                    raise ConfigError(f"data.{kind}: '{name}' is already {reserved[name]}")
                if self.format == "wide" and name == self.time_column:
                    raise ConfigError(f"data.{kind}: '{name}' is already data.time_column")
                if name in seen:
                    raise ConfigError(f"data.{kind}: '{name}' is also listed in data.{seen[name]}")
                seen[name] = kind
        if self.static_covariates and self.format == "wide":
            raise ConfigError("data.static_covariates needs long format (in wide format a series is one column)")
        if seen and self.source == "synthetic":
            raise ConfigError("data: the synthetic source has no covariate columns; remove data.*_covariates")

    @property
    def covariates(self) -> list[str]:
        """The time-varying covariate columns in the order the buffer and the model keep them: past, then future."""
        return [*self.past_covariates, *self.future_covariates]


@dataclass(kw_only=True, slots=True)
class WindowConfig:
    """How each series is cut into (input, target) windows."""

    lookback: int | Literal["auto"] = "auto"
    """Input length in steps; `auto`: five of the longest season (at least two horizons), at most half the shortest
    train part, or two thirds of it for whole cycles of that season: the residual base's profiles average up to five
    cycles (`model.base`)."""
    horizon: int = 48
    """Forecast length in steps."""
    stride: int = 1
    """Step between consecutive training windows."""
    val_stride: int | None = None
    """Step between validation windows (default: `stride`)."""
    test_stride: int | None = None
    """Step between test forecast origins (default: `horizon`: non-overlapping forecasts)."""

    def __post_init__(self) -> None:
        if self.lookback != "auto":
            _positive("window.lookback", self.lookback)
        _positive("window.horizon", self.horizon)
        _positive("window.stride", self.stride)
        for key in ("val_stride", "test_stride"):
            if getattr(self, key) is not None:
                _positive(f"window.{key}", getattr(self, key))


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    """The recurrent forecaster: an LSTM/GRU whose last hidden state feeds a linear head."""

    cell: Literal["lstm", "gru"] = "lstm"
    """Recurrent cell type."""
    hidden_size: int = 64
    """Hidden units per layer."""
    num_layers: int = 2
    """Stacked recurrent layers."""
    dropout: float = 0.0
    """Dropout between recurrent layers (ignored with one layer)."""
    instance_norm: bool = True
    """Standardise each input window by its own mean and spread (robust to level shifts)."""
    residual_season: int | Literal["auto"] = "auto"
    """Predict a correction to the seasonal-naive forecast of this season length (0 = off; `auto`: the
    evaluation season when the lookback holds it)."""
    season_average: int | Literal["auto"] = "auto"
    """Seasons averaged into the residual head's base forecast (1 = seasonal naive; `auto`: up to 3
    that the lookback holds)."""
    quantiles: list[float] = field(default_factory=list)
    """Quantiles to forecast (sorted, in (0, 1), with 0.5: the point forecast); sets `train.loss: pinball`."""

    calibrate: bool = True
    """With quantiles: after training, widen each central interval to its nominal coverage on the validation windows."""
    calibration_unit: Literal["recent_error", "spread"] = "recent_error"
    """The unit of that widening in each window: `recent_error`, how far the window's cycles moved from one to the
    next at the forecast step's phase (so it grows where the series stops repeating itself, and is small at quiet
    phases); `spread`, the window's spread alone (the unit before 2026-11-28)."""
    calibration_band: bool = True
    """With quantiles and calibrate: each central interval is also at least as wide as a symmetric band around the
    median, in units of the window's root-mean-square cycle-to-cycle change, itself calibrated to the nominal
    coverage on the validation windows: the learned quantiles carry what training saw, the band what the window
    shows now (a schedule change, a holiday season); `false`: the widened quantiles alone (as before)."""
    series_embedding: int = 0
    """Global models: a learned vector of this size per series, fed to the recurrent layers beside the inputs
    (0 = off); `predict` then serves only the series it was trained on (as it does anyway)."""
    blend: float | Literal["validation"] = "validation"
    """Share of the trained correction kept over the residual base after training, in [0, 1] (1 = all of it), or
    `validation`: on a grid of 0.05 steps, the smallest share whose loss on the validation windows is within one
    standard error of the lowest (over the windows that do not overlap) and no worse than the base alone."""
    base_level: Literal["season", "half_season", "smoothed"] = "half_season"
    """The residual base's level (with season_average > 1): the last season's mean, the mean of the last half
    season with the seasonal shape taken out (half the lag behind a trend, a little more noise), or `smoothed`: the
    exponentially weighted mean of the averaged seasons with the shape taken out, at the rate `level_smoothing`."""
    level_smoothing: float = 0.5
    """With `base_level: smoothed`: the rate in (0, 1] of the level's exponential weights (1: the last value's)."""
    ensemble: int = 1
    """Independently initialised recurrent networks and heads in one model, each trained on its own loss over the
    same batches; the forecast uses their mean correction (one graph in ONNX)."""
    seasons: list[int] | Literal["auto"] = "auto"
    """Seasonal periods in steps, for the residual base and the calendar features; `auto`: those of the frequency's
    candidates (day and week below daily data, week and year daily, the year above) that the train part holds twice
    and whose seasonal-naive forecast improves on the validation part (ingest/meta.json says which and why), left
    out quietly where the lookback cannot hold them; a season set explicitly that the lookback cannot hold is an
    error."""
    base: Literal["validation", "profile", "multi", "multi_recent"] = "validation"
    """The residual head's base: `validation` picks, on the windows before the test part, before training, the best
    of naive, seasonal naive at each season, and the averaged, the level-adjusted, the smoothed-level (at rates 0.2,
    0.5 and 0.8) and the multi-seasonal profile over three and over five cycles, the level-adjusted and the
    multi-seasonal also carrying on half or all of the window's slope, and the multi-seasonal as `multi_recent` reads
    it (never trained over: where it is best, the forecast if it beats the model on validation); `profile`: the
    profile set by residual_season, season_average and base_level; `multi`: every season's profile; `multi_recent`:
    the same with the shorter seasons' shapes read from the longest season's last cycle (a day's shape from the last
    week, for a day that drifts over the weeks), the longest's averaged over season_average cycles."""
    base_input: bool = True
    """The linear head also reads the base forecast over the horizon (in the window's own units), so the correction
    can depend on what it corrects; needed where the base reads further back than the recurrent layers."""
    recurrent_steps: int | Literal["auto"] = "auto"
    """The last steps of the input window the recurrent layers read (the base reads all of it); `auto`: one cycle of
    the longest season, three of the shortest, at least two horizons: a window that holds five weeks for a weekly
    base costs the training of one week. Set explicitly, at most `window.lookback`."""

    def __post_init__(self) -> None:
        _check_quantiles(self.quantiles)
        if self.series_embedding < 0:
            raise ConfigError(f"model.series_embedding must be >= 0, got {self.series_embedding}")
        _positive("model.ensemble", self.ensemble)
        if self.blend != "validation" and not 0.0 <= self.blend <= 1.0:
            raise ConfigError(f"model.blend must be in [0, 1] or validation, got {self.blend}")
        if not 0.0 < self.level_smoothing <= 1.0:
            raise ConfigError(f"model.level_smoothing must be in (0, 1], got {self.level_smoothing}")
        if self.residual_season != "auto" and self.residual_season < 0:
            raise ConfigError(f"model.residual_season must be >= 0, got {self.residual_season}")
        if self.season_average != "auto":
            _positive("model.season_average", self.season_average)
        if self.seasons != "auto":
            if not isinstance(self.seasons, list) or not all(isinstance(p, int) and p > 1 for p in self.seasons):
                raise ConfigError(f"model.seasons must be auto or a list of whole numbers > 1, got {self.seasons!r}")
            if sorted(set(self.seasons)) != self.seasons:
                raise ConfigError(f"model.seasons must be increasing without repeats, got {self.seasons}")
        if self.recurrent_steps != "auto":
            _positive("model.recurrent_steps", self.recurrent_steps)
        _positive("model.hidden_size", self.hidden_size)
        _positive("model.num_layers", self.num_layers)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    """The Accelerate training loop."""

    batch_size: int = 256
    """Global batch size per optimizer step, across all processes and accumulation steps."""
    max_steps: int | Literal["auto"] = "auto"
    """Optimizer steps to run (early stopping may end sooner); `auto`: 400, or one pass over the training windows
    when that is more, so the budget grows with the data."""
    lr: float = 3e-3
    """Peak learning rate of AdamW."""
    loss: Literal["mse", "mae", "huber", "pinball"] = "mae"
    """Loss on scaled targets (`mae` matches MAE/MASE; `huber`: MSE near 0); always `pinball` with `model.quantiles`."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 30
    """Linear warmup steps before the cosine decay."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of `lr`."""
    grad_clip: float = 1.0
    """Clip the global gradient norm at this value (0 disables)."""
    skip_nonfinite: bool = False
    """On a NaN/inf loss or gradient: skip that step and count it, instead of stopping with an error. Skipping
    reads each step's verdict from the device at once; stopping reads it a step later, so a GPU never waits."""
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    """Autocast precision of the training forward and backward: `auto` is bf16 on CPUs that compute it natively
    (AVX-512 BF16 or AMX) and no elsewhere, GPUs included (their float32 LSTM kernels were the fastest and most
    accurate, bench/README.md); `bf16` is a config error on a CPU whose oneDNN has no bf16 LSTM (AVX2 CPUs) and
    on a GPU whose torch runs the LSTM in float16 under bf16 autocast; `fp16` needs a GPU (it uses gradient
    scaling). Validation, evaluation, export and predict run in float32 on the float32 master weights."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step; `batch_size` stays the global effective batch."""
    eval_every: int = 50
    """Validate every N steps (and at the end)."""
    patience: int = 4
    """Stop after this many validations without improvement (0 disables early stopping)."""
    checkpoint_every: int = _operational(100)
    """Save a resumable checkpoint every N steps (0 disables)."""
    keep_last: int = _operational(2)
    """Checkpoints to keep."""
    resume: str = _operational("auto")
    """`auto`: continue from the latest checkpoint if any; `never`: start over; or a checkpoint path."""
    log_every: int = _operational(10)
    """Write train/metrics.jsonl and tracker scalars every N steps."""
    num_threads: int | Literal["auto"] = _operational("auto")
    """CPU threads per process; `auto` (or 0): timed on the model at the start, between one and the available cores
    divided by the local processes, and re-chosen when the step time jumps (another process took a core) where the
    counts compute the same bits for the model and batch, else kept for the whole run (and by a resume)."""
    eval_batch_size: int = _operational(1024)
    """Windows per forward pass in validation (larger batches raise peak memory more than speed)."""
    val_windows: int = 8192
    """Validate on at most this many windows, evenly spread over the validation windows (0 = all): keeps each
    validation pass, the one at step 0 included, to seconds on large data."""
    init_from: str = "none"
    """Warm start: `none`, `champion` (the registry's current model) or a model dir or .safetensors file."""
    deterministic: bool = _operational(False)
    """Deterministic GPU kernels (cuDNN, cuBLAS with CUBLAS_WORKSPACE_CONFIG): bit-identical reruns and resumes on a
    GPU, at some speed; CPU kernels are deterministic anyway."""
    device_resident: Literal["auto", "true", "false"] = "auto"
    """Keep the whole training buffer on the accelerator (`auto`: when it takes under half its free memory)."""

    def __post_init__(self) -> None:
        for key in ("batch_size", "gradient_accumulation_steps", "eval_every", "keep_last", "log_every"):
            _positive(f"train.{key}", getattr(self, key))
        if self.max_steps != "auto":
            _positive("train.max_steps", self.max_steps)
        _positive("train.lr", self.lr)
        _positive("train.eval_batch_size", self.eval_batch_size)
        for key in ("warmup_steps", "patience", "checkpoint_every", "val_windows"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if not (self.weight_decay >= 0 and self.grad_clip >= 0):
            raise ConfigError("train.weight_decay and train.grad_clip must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.batch_size % self.gradient_accumulation_steps:
            raise ConfigError(
                f"train.batch_size ({self.batch_size}) must be divisible by "
                f"train.gradient_accumulation_steps ({self.gradient_accumulation_steps})"
            )
        if self.num_threads != "auto" and self.num_threads < 0:
            raise ConfigError(f"train.num_threads must be auto or >= 0, got {self.num_threads}")
        if not self.resume.strip():
            raise ConfigError("train.resume must be auto, never or a checkpoint path")
        if not self.init_from.strip():
            raise ConfigError("train.init_from must be none, champion or a model directory")


@dataclass(kw_only=True, slots=True)
class BacktestConfig:
    """Rolling-origin evaluation: forecasts from several cutoffs at the end of each series, with the trained
    model inside the test part, or (`refit`) with a model retrained per fold."""

    folds: int = 0
    """Number of forecast origins (folds) at the end of each series (0 = off)."""
    step: int | None = None
    """Steps between consecutive cutoffs (default: `window.horizon`)."""
    refit: bool = False
    """Train a fresh model per fold on the data before its cutoff (validation part from its end, scaling from the
    rest, every `auto` setting resolved on it); the folds may then reach before the test part. `false`: the
    trained model scores every fold, and the folds must lie inside the test part."""

    def __post_init__(self) -> None:
        if self.folds < 0:
            raise ConfigError(f"evaluate.backtest.folds must be >= 0, got {self.folds}")
        if self.step is not None:
            _positive("evaluate.backtest.step", self.step)
        if self.refit and not self.folds:
            raise ConfigError("evaluate.backtest.refit: true needs evaluate.backtest.folds (the number of folds) > 0")


@dataclass(kw_only=True, slots=True)
class EvaluateConfig:
    """Scoring on the test split against naive baselines."""

    season_length: int | Literal["auto"] = "auto"
    """Season of the seasonal-naive baseline and of the MASE scale, in steps; `auto`: from the frequency
    (12 monthly, 4 quarterly, 52 weekly, 7 daily, the steps in a day below daily). Shorter than the train part of
    every series scored (the window stage checks it, before training)."""
    batch_size: int = 1024
    """Windows per forward pass."""
    plot_series: int = 4
    """How many series get a forecast-vs-actual plot."""
    backtest: BacktestConfig = field(default_factory=BacktestConfig)
    """Rolling-origin backtest at the end of each series."""

    def __post_init__(self) -> None:
        if self.season_length != "auto":
            _positive("evaluate.season_length", self.season_length)
        _positive("evaluate.batch_size", self.batch_size)
        if self.plot_series < 0:
            raise ConfigError(f"evaluate.plot_series must be >= 0, got {self.plot_series}")


@dataclass(kw_only=True, slots=True)
class ExportConfig:
    """The self-contained export directory."""

    onnx: bool = True
    """Also write model.onnx and check it against PyTorch with ONNX Runtime."""
    parity_atol: float = 1e-4
    """Largest allowed |ONNX - PyTorch| on the test windows (scaled units); beyond it export stops (exit 2) and the
    previous export stays."""

    def __post_init__(self) -> None:
        _positive("export.parity_atol", self.parity_atol)


@dataclass(kw_only=True, slots=True)
class TrackingConfig:
    """Experiment tracking through Accelerate's trackers."""

    backend: Literal["wandb", "tensorboard", "none"] = "wandb"
    """Where runs are tracked; `none` keeps only the local files."""
    project: str = "lstm-pipeline"
    """W&B project (at most 128 characters, none of `/ \\ # ? % :`)."""
    entity: str | None = None
    """W&B entity (team or user); default: the account's."""
    mode: Literal["online", "offline", "disabled"] = "online"
    """W&B mode; `online` falls back to `offline` when no W&B credentials are found; the environment variable
    WANDB_MODE, when set, overrides it."""
    group: str | None = None
    """W&B group (default: the experiment `name`)."""
    tags: list[str] = field(default_factory=list)
    """W&B tags (each 1 to 64 characters)."""
    registry_collection: str | None = None
    """A W&B registry collection (e.g. `wandb-registry-model/forecasters`) the promoted model is linked to, with
    the aliases `champion` and its version (online W&B only)."""
    keep_local_runs: int = 20
    """Local tracker files kept in the run directory: the newest this many W&B run folders (an offline one
    only once `wandb sync` has uploaded it) and TensorBoard event files per stage (with their hparams folders)."""

    def __post_init__(self) -> None:
        _positive("tracking.keep_local_runs", self.keep_local_runs)
        if self.backend == "wandb":  # what W&B refuses, said before any stage works (W&B: a traceback, mid-stage)
            _check_wandb_names(self.project, self.tags)


WANDB_PROJECT_CHARACTERS = "/\\#?%:"
"""Characters W&B refuses in a project name (as it refuses names over 128 characters and tags over 64)."""


def _check_wandb_names(project: str, tags: list[str]) -> None:
    found = [c for c in WANDB_PROJECT_CHARACTERS if c in project]
    if found or not 1 <= len(project) <= 128:
        why = f"may not contain {' '.join(found)}" if found else "must be 1 to 128 characters"
        raise ConfigError(f"tracking.project {why} (W&B refuses it), got {shown(repr(project))}")
    for tag in tags:
        if not 1 <= len(str(tag)) <= 64:
            raise ConfigError(f"tracking.tags: each tag must be 1 to 64 characters (W&B), got {shown(repr(tag))}")


@dataclass(kw_only=True, slots=True)
class RegistryConfig:
    """Model registry for scheduled retraining: champion/challenger promotion (see launch/cron)."""

    dir: str | None = None
    """Registry root; versions go to `<dir>/<name>/vNNNN`, the served one is `<dir>/<name>/current` (null = off)."""
    promote: bool = False
    """At the end of `run`, score the new export against the champion and promote it if better (`run --promote`)."""
    min_improvement: float = 0.0
    """Relative test-MASE improvement required: promote when challenger MASE < champion MASE x (1 - this)."""
    keep_versions: int = 10
    """Versions kept: the newest this many, and the champion whatever its age (history.jsonl keeps every
    decision)."""

    def __post_init__(self) -> None:
        _positive("registry.keep_versions", self.keep_versions)
        if self.dir is not None and not self.dir.strip():
            raise ConfigError("registry.dir is empty; use null to turn the registry off")
        if not 0.0 <= self.min_improvement < 1.0:
            raise ConfigError(f"registry.min_improvement must be in [0, 1), got {self.min_improvement}")
        if self.promote and self.dir is None:
            raise ConfigError("registry.promote (--promote) needs registry.dir")


@dataclass(kw_only=True, slots=True)
class Config:
    """One experiment: every stage section plus the run identity."""

    name: str = "experiment"
    """Experiment name; also names the run directory by default."""
    output_dir: str = "runs/{name}"
    """Where the stages write (not empty: `.` for the current directory); `{name}` is replaced by `name`."""
    seed: int = 0
    """Seed of weight initialisation and of the batch order."""
    data: DataConfig = field(default_factory=DataConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)

    def __post_init__(self) -> None:
        _check_finite(self)
        _seed("seed", self.seed)
        if not self.name.strip():
            raise ConfigError("name is empty")
        if not self.output_dir.strip():  # the run would write config.yaml and every stage into the current directory
            raise ConfigError("output_dir is empty; use . for the current directory")
        if self.train.init_from == "champion" and self.registry.dir is None:
            raise ConfigError("train.init_from: champion needs registry.dir (where the champion is)")
        if self.model.quantiles:  # a quantile head is trained with the pinball loss, whatever was set
            self.train.loss = "pinball"
        elif self.train.loss == "pinball":
            raise ConfigError("train.loss: pinball needs model.quantiles (e.g. [0.1, 0.5, 0.9])")
        m, lookback = self.model, self.window.lookback
        if "auto" not in (m.residual_season, m.season_average, lookback):
            check_base_fits(m.residual_season, m.season_average, lookback)
        if m.seasons != "auto" and lookback != "auto":
            check_seasons_fit(m.seasons, lookback)
        if m.recurrent_steps != "auto" and lookback != "auto" and m.recurrent_steps > lookback:
            raise ConfigError(
                f"model.recurrent_steps ({m.recurrent_steps}) is longer than window.lookback ({lookback}); the "
                f"recurrent layers read the last steps of the input window (set at most {lookback})"
            )

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.replace("{name}", self.name))

    @property
    def registry_root(self) -> Path | None:
        """`<registry.dir>/<name>`: this experiment's registry (None when the registry is off)."""
        return None if self.registry.dir is None else Path(self.registry.dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section_values(self, section: str) -> dict[str, Any]:
        """The values of one section that its hash covers (no operational fields), as JSON types."""
        return json.loads(json.dumps(_plain(functools.reduce(getattr, section.split("."), self))))

    def section_hash(self, *sections: str) -> str:
        """Stable hash of some sections or keys (`data.calendar`): what a stage's cached output depends on.

        Fields marked operational (how a run is operated: resume, logging, threads, checkpoint
        cadence) are left out, so changing them never invalidates an output or a checkpoint.
        """
        payload = {s: _plain(functools.reduce(getattr, s.split("."), self)) for s in sections}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def check_base_fits(residual_season: int, season_average: int, lookback: int) -> None:
    """The residual head's base is read from the input window: it must hold the seasons averaged."""
    if residual_season * season_average > lookback:
        raise ConfigError(
            f"model.residual_season ({residual_season}) x model.season_average ({season_average}) is longer "
            f"than window.lookback ({lookback}); the seasonal base is read from the input window"
        )


def check_seasons_fit(seasons: list[int], lookback: int, shortest_train: int | None = None) -> None:
    """Seasons set explicitly must fit the input window the seasonal base reads them from (`auto` seasons that do
    not are left out quietly). `shortest_train`: the lookback is `auto`, bounded by this shortest train part."""
    longer = [p for p in seasons if p > lookback]
    if not longer:
        return
    season, bound = longer[0], ""
    if shortest_train is not None:
        bound = f": auto, bounded by the shortest train part, {shortest_train} steps"
        bound += f", which holds fewer than two cycles of {season}" if 2 * season > shortest_train else ""
    raise ConfigError(
        f"model.seasons: season {season} is longer than window.lookback ({lookback}{bound}); the seasonal base "
        f"reads its seasons from the input window: leave {season} out or use a longer window"
    )


def _check_finite(section: Any, prefix: str = "") -> None:
    """No float key of any section takes inf or nan (a learning rate of inf would fail at train step 2, after
    ingest and window): one walk over every section, so a float key added later is checked too."""
    for f in dataclasses.fields(section):
        key, value = prefix + f.name, getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{key}.")
        for item in value if isinstance(value, list) else (value,):
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{key} must be a finite number, got {item}")


def _plain(value: Any) -> Any:
    if not dataclasses.is_dataclass(value):
        return value
    return {
        f.name: _plain(getattr(value, f.name))
        for f in dataclasses.fields(value)
        if not operational(f) and not (f.metadata.get("added") and getattr(value, f.name) == f.default)
    }


def _check_quantiles(quantiles: list[float]) -> None:
    for q in quantiles:
        if not 0.0 < q < 1.0:
            raise ConfigError(f"model.quantiles: {q} is outside (0, 1)")
    for a, b in itertools.pairwise(quantiles):
        if a == b:
            raise ConfigError(f"model.quantiles: {a} appears twice")
        if a > b:
            raise ConfigError(f"model.quantiles must be sorted ascending, got {a} before {b}")
    if quantiles and 0.5 not in quantiles:
        raise ConfigError(f"model.quantiles {quantiles} must include 0.5: the median is the point forecast")


def _check_zone(name: str) -> None:
    """`data.zone` is a zone of the time-zone database (through `zoneinfo`, as pandas reads it)."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"data.zone: unknown time zone {name!r}; give a name from the time-zone database (e.g. Europe/Berlin, "
            "America/New_York, UTC) or auto"
        ) from None


def _check_freq(key: str, value: str) -> None:
    """`value` is a pandas frequency alias of a positive step, as ingest and the synthetic source will read it."""
    import warnings

    import pandas as pd  # only here: a bare config import stays light

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # a deprecated alias ('H') still reads
        try:
            offset = pd.tseries.frequencies.to_offset(value)
        except ValueError:
            offset = None
    if offset is None:
        raise ConfigError(f"{key}: '{value}' is not a pandas frequency alias (e.g. 30min, h, D, MS)")
    if offset.n < 1:
        raise ConfigError(f"{key}: '{value}' is not a positive step (e.g. 30min, h, D, MS)")


def _seed(key: str, value: int) -> None:
    """numpy's and torch's generators take seeds from 0 to 2**32 - 1; another one fails only once training starts."""
    if not 0 <= value < 2**32:
        raise ConfigError(f"{key} must be between 0 and 4294967295 (2**32 - 1), got {value}")


def _positive(key: str, value: float) -> None:
    if not value > 0:  # also rejects NaN, which compares False with everything
        raise ConfigError(f"{key} must be positive, got {value}")
