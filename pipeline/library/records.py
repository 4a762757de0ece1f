"""What each stage writes to its meta.json, and an export to forecaster.json, as typed objects.

Stages read their upstream through these classes only; this is the one module that knows the
JSON layout. The layout is the one lstm-pipeline wrote before the records were typed, so run
directories and exports made then still load. A meta.json that lacks something a stage needs
now is refused with one line naming the file and asking for `--force`.

Per-series facts are columns (`SeriesTable`, `SeriesStats`: numpy arrays), not a list of
dicts, so stages index them in array operations over any number of series.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pipeline.library.artifacts import META, read_meta, write_json_atomic
from pipeline.library.chunks import offsets_of
from pipeline.library.errors import DataError, UserError
from pipeline.library.model_spec import ModelSpec


@dataclass(eq=False)
class SeriesStats:
    """Per series, what a model needs to scale its inputs and outputs (train-part statistics)."""

    loc: np.ndarray  # (n,) float64 location of the transformed target ("mean" in JSON)
    scale: np.ndarray  # (n,) float64 its spread
    index: np.ndarray  # (n,) int64 the series' row in the model's series embedding
    covariate_loc: np.ndarray | None = None  # (n, K) float64, time-varying covariates (past ones first)
    covariate_scale: np.ndarray | None = None
    static: np.ndarray | None = None  # (n, S) float64 standardised static covariates

    def __len__(self) -> int:
        return len(self.loc)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeriesStats):
            return NotImplemented
        pairs = [(getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)]
        return all(a is b is None or (a is not None and b is not None and np.array_equal(a, b)) for a, b in pairs)

    def take(self, rows) -> SeriesStats:
        """The statistics of the series at positions `rows`, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        return SeriesStats(**{f.name: _rows(getattr(self, f.name), rows) for f in dataclasses.fields(self)})

    def with_rows(self, rows, other: SeriesStats) -> SeriesStats:
        """A copy in which the series at positions `rows` take `other`'s statistics (row for row)."""
        out = {}
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine is None:
                out[f.name] = None
                continue
            mine = mine.copy()
            mine[np.asarray(rows, dtype=np.int64)] = theirs
            out[f.name] = mine
        return SeriesStats(**out)

    def row_json(self, i: int, with_index: bool = False) -> dict[str, Any]:
        row: dict[str, Any] = {"mean": float(self.loc[i]), "scale": float(self.scale[i])}
        if self.covariate_loc is not None:
            row["covariate_mean"] = self.covariate_loc[i].tolist()
            row["covariate_scale"] = self.covariate_scale[i].tolist()
        if self.static is not None:
            row["static"] = self.static[i].tolist()
        if with_index:
            row["index"] = int(self.index[i])
        return row

    @classmethod
    def from_rows(cls, rows: list[dict]) -> SeriesStats:
        def column(key: str) -> np.ndarray | None:
            if not rows or key not in rows[0]:
                return None
            return np.array([r[key] for r in rows], dtype=np.float64)

        return cls(
            loc=np.array([r["mean"] for r in rows], dtype=np.float64),
            scale=np.array([r["scale"] for r in rows], dtype=np.float64),
            index=np.array([r.get("index", i) for i, r in enumerate(rows)], dtype=np.int64),
            covariate_loc=column("covariate_mean"),
            covariate_scale=column("covariate_scale"),
            static=column("static"),
        )


def _rows(values: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if values is None else values[rows]


@dataclass(eq=False)
class SeriesTable:
    """The series of an ingest: ids, where each lies in the back-to-back buffer, splits, statistics.

    Series i is `buffer[offsets[i] : offsets[i] + lengths[i]]`; its train part ends at
    `train_end[i]`, its validation part at `val_end[i]` (the test part runs to its end).
    """

    ids: list[str]
    starts: list[str]  # ISO time of each series' first step
    lengths: np.ndarray  # (n,) int64
    train_end: np.ndarray  # (n,) int64
    val_end: np.ndarray  # (n,) int64
    stats: SeriesStats

    def __len__(self) -> int:
        return len(self.ids)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeriesTable):
            return NotImplemented
        same = self.ids == other.ids and self.starts == other.starts and self.stats == other.stats
        return same and all(
            np.array_equal(getattr(self, k), getattr(other, k)) for k in ("lengths", "train_end", "val_end")
        )

    @property
    def offsets(self) -> np.ndarray:
        """(n,) int64 start of each series in the buffer."""
        return offsets_of(self.lengths)

    def with_stats(self, stats: SeriesStats) -> SeriesTable:
        return dataclasses.replace(self, stats=stats)

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {
                "id": sid,
                "start": self.starts[i],
                "length": int(self.lengths[i]),
                "train_end": int(self.train_end[i]),
                "val_end": int(self.val_end[i]),
                **self.stats.row_json(i),
            }
            for i, sid in enumerate(self.ids)
        ]

    @classmethod
    def from_json(cls, rows: list[dict]) -> SeriesTable:
        def ints(key: str) -> np.ndarray:
            return np.array([r[key] for r in rows], dtype=np.int64)

        return cls(
            ids=[str(r["id"]) for r in rows],
            starts=[r["start"] for r in rows],
            lengths=ints("length"),
            train_end=ints("train_end"),
            val_end=ints("val_end"),
            stats=SeriesStats.from_rows(rows),
        )


class Record:
    """A stage's meta.json: `to_json`/`from_json`, read and written only through here."""

    STAGE: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_json(cls, payload: dict[str, Any]):
        raise NotImplementedError

    @classmethod
    def read(cls, stage_dir: Path):
        """The record of a complete stage output, None when there is none (a half-written one is recovered first)."""
        payload = read_meta(stage_dir)
        if payload is None:
            return None
        try:
            return cls.from_json(payload)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(
                f"{stage_dir / META}: not readable by this lstm-pipeline version ({type(exc).__name__}: {exc}); "
                f"redo the stage with --force"
            ) from None

    @classmethod
    def require(cls, stage_dir: Path, needed_by: str):
        """The upstream record, or one line naming the stage to run first."""
        record = cls.read(stage_dir)
        if record is None:
            raise UserError(
                f"{needed_by}: no output of the '{cls.STAGE}' stage in {stage_dir}; "
                f"run 'lstm-pipeline {cls.STAGE}' (or 'lstm-pipeline run') first"
            )
        return record

    def write(self, directory: Path) -> None:
        write_json_atomic(directory / META, self.to_json())


@dataclass
class KeyedRecord(Record):
    """A record whose fingerprint is its key: what the stage made is a function of its inputs (all but ingest)."""

    key: str
    config: dict[str, Any] | None = field(default=None, kw_only=True)  # the resolved config the stage ran with

    @property
    def fingerprint(self) -> str:
        return self.key

    def header(self) -> dict[str, Any]:
        head: dict[str, Any] = {"stage": self.STAGE, "key": self.key, "fingerprint": self.key}
        return {**head, "config": self.config} if self.config is not None else head


def is_cached(stage_dir: Path, key: str) -> bool:
    """True when the stage's output was made from exactly these inputs (its record's key)."""
    payload = read_meta(stage_dir)
    return payload is not None and payload.get("key") == key


@dataclass
class IngestRecord(Record):
    """ingest/meta.json: the data's identity, frequency, scaling, and its series table."""

    STAGE: ClassVar[str] = "ingest"

    fingerprint: str  # content hash of the values, splits and scaling: what downstream caches key on
    freq: str
    scaling: str
    transform: str
    n_points: int
    series: SeriesTable
    key: str = ""  # the inputs' hash (config and source), for the cache
    source: str = ""
    past_covariates: list[str] = field(default_factory=list)
    future_covariates: list[str] = field(default_factory=list)
    static_covariates: list[str] = field(default_factory=list)
    static_loc: list[float] = field(default_factory=list)  # across series, before standardising
    static_scale: list[float] = field(default_factory=list)
    refit_fold: int | None = None  # set on a refit fold's ingest (cut at its cutoff)
    config: dict[str, Any] | None = None  # the config the stage ran with
    season_checks: list[dict[str, Any]] | None = None  # each candidate season's test (pipeline.library.seasonality)
    transform_check: dict[str, Any] | None = None  # how `data.transform: auto` chose (library.transform_choice)
    zone: str | None = None  # the zone the source's timestamps carried (held in UTC), forecasts' times are in
    wall_clock: bool = False  # the series' times are held on the zone's wall clock, not in UTC (days and longer)
    local_times: bool = False  # the source's timestamps were naive local times on the zone's clock (data.zone)
    date_order: str | None = None  # dates written in numbers only: day_first or month_first
    filled_points: int = 0  # points data.missing filled (values.arrow's `filled` column): inputs, never scored

    @property
    def n_series(self) -> int:
        return len(self.series)

    @property
    def detected_seasons(self) -> tuple[int, ...] | None:
        """The seasons the checks kept; None for an ingest made before seasons were detected."""
        if self.season_checks is None:
            return None
        return tuple(int(c["season"]) for c in self.season_checks if c["kept"])

    @property
    def covariates(self) -> list[str]:
        """The time-varying covariate columns, past ones first (the buffer's order)."""
        return [*self.past_covariates, *self.future_covariates]

    def to_json(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"stage": self.STAGE, "key": self.key, "fingerprint": self.fingerprint}
        if self.static_covariates:
            payload["static_covariates"] = {
                "names": self.static_covariates,
                "mean": self.static_loc,
                "scale": self.static_scale,
            }
        if self.covariates:
            payload["covariates"] = {"past": self.past_covariates, "future": self.future_covariates}
        payload.update(
            source=self.source,
            freq=self.freq,
            scaling=self.scaling,
            transform=self.transform,
            n_series=self.n_series,
            n_points=self.n_points,
            series=self.series.to_json(),
        )
        payload.update(clock_to_json(self.zone, self.wall_clock, self.local_times, self.date_order))
        if self.filled_points:
            payload["filled_points"] = self.filled_points
        if self.season_checks is not None:
            payload["seasons"] = {"kept": list(self.detected_seasons or ()), "checks": self.season_checks}
        if self.transform_check is not None:
            payload["transform_check"] = self.transform_check
        if self.refit_fold is not None:
            payload["refit_fold"] = self.refit_fold
        if self.config is not None:
            payload["config"] = self.config
        return payload

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> IngestRecord:
        covariates = payload.get("covariates") or {}
        static = payload.get("static_covariates") or {}
        return cls(
            key=payload.get("key", ""),
            fingerprint=payload["fingerprint"],
            source=payload.get("source", ""),
            freq=payload["freq"],
            scaling=payload.get("scaling", "standard"),
            transform=payload.get("transform", "none"),
            n_points=int(payload["n_points"]),
            series=SeriesTable.from_json(payload["series"]),
            past_covariates=list(covariates.get("past", [])),
            future_covariates=list(covariates.get("future", [])),
            static_covariates=list(static.get("names", [])),
            static_loc=list(static.get("mean", [])),
            static_scale=list(static.get("scale", [])),
            refit_fold=payload.get("refit_fold"),
            config=payload.get("config"),
            season_checks=(payload.get("seasons") or {}).get("checks"),
            transform_check=payload.get("transform_check"),
            **clock_from_json(payload),
            filled_points=int(payload.get("filled_points", 0)),
        )


@dataclass
class WindowRecord(KeyedRecord):
    """window/meta.json: the window shape and how many windows each split holds."""

    STAGE: ClassVar[str] = "window"

    ingest_fingerprint: str
    lookback: int
    horizon: int
    counts: dict[str, int]
    dropped_series: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.header(),
            "ingest_fingerprint": self.ingest_fingerprint,
            "lookback": self.lookback,
            "horizon": self.horizon,
            "counts": self.counts,
            "dropped_series": self.dropped_series,
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> WindowRecord:
        return cls(
            key=payload["key"],
            ingest_fingerprint=payload["ingest_fingerprint"],
            lookback=int(payload["lookback"]),
            horizon=int(payload["horizon"]),
            counts={k: int(v) for k, v in payload["counts"].items()},
            dropped_series=list(payload.get("dropped_series", [])),
            config=payload.get("config"),
        )


@dataclass
class TrainState:
    """Where training stands; everything else (lr, batch order) derives from it and the config."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_val: float = float("inf")
    best_step: int = -1
    evals_since_best: int = 0
    stopped_early: bool = False
    skipped_steps: int = 0

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> TrainState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in payload.items() if k in names})


@dataclass
class TrainRecord(KeyedRecord):
    """train/meta.json: the trained network's spec, how training went, and what was set after it."""

    STAGE: ClassVar[str] = "train"

    model: ModelSpec
    state: TrainState
    setup: dict[str, Any]  # what ran where (world size, device, precision, versions): for people, not code
    calibration: dict[str, Any] | None = None  # per interval: coverage before and after (quantile models)
    blend: dict[str, Any] | None = None  # the share of the correction kept, and the validation losses
    settings: str | None = None  # hash of the config sections training depends on (None: written before it)
    base: dict[str, Any] | None = None  # the residual base chosen on validation, and every candidate's loss
    window_fingerprint: str | None = None  # the windows it was trained on (None: written before it was kept)

    def to_json(self) -> dict[str, Any]:
        payload = {
            **self.header(),
            "model": self.model.to_dict(),
            "state": dataclasses.asdict(self.state),
            "setup": self.setup,
            "calibration": self.calibration,
            "blend": self.blend,
        }
        if self.base is not None:
            payload["base"] = self.base
        if self.window_fingerprint is not None:
            payload["window_fingerprint"] = self.window_fingerprint
        return {**payload, "settings": self.settings} if self.settings is not None else payload

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> TrainRecord:
        return cls(
            key=payload["key"],
            model=ModelSpec.from_dict(payload["model"]),
            state=TrainState.from_json(payload["state"]),
            setup=payload.get("setup", {}),
            calibration=payload.get("calibration"),
            blend=payload.get("blend"),
            settings=payload.get("settings"),
            config=payload.get("config"),
            base=payload.get("base"),
            window_fingerprint=payload.get("window_fingerprint"),
        )


@dataclass
class EvaluateRecord(KeyedRecord):
    """evaluate/meta.json: the key its scores were made for (the scores are in metrics.json)."""

    STAGE: ClassVar[str] = "evaluate"

    def to_json(self) -> dict[str, Any]:
        return self.header()

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> EvaluateRecord:
        return cls(key=payload["key"], config=payload.get("config"))


@dataclass
class ExportRecord(KeyedRecord):
    """export/meta.json: the key of the export and its ONNX parity."""

    STAGE: ClassVar[str] = "export"

    onnx_parity: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {**self.header(), "onnx_parity": self.onnx_parity}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> ExportRecord:
        return cls(key=payload["key"], onnx_parity=payload.get("onnx_parity"), config=payload.get("config"))


@dataclass
class ServedSeries:
    """The series an export knows by id, with the statistics predict scales them by."""

    ids: list[str]
    stats: SeriesStats
    _positions: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._positions = {sid: i for i, sid in enumerate(self.ids)}

    def __contains__(self, sid: str) -> bool:
        return sid in self._positions

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, ids: list[str]) -> np.ndarray:
        """(len(ids),) int64 positions of known ids (KeyError on an unknown one)."""
        return np.array([self._positions[sid] for sid in ids], dtype=np.int64)

    def to_json(self) -> dict[str, dict]:
        return {sid: self.stats.row_json(i, with_index=True) for i, sid in enumerate(self.ids)}

    @classmethod
    def from_json(cls, payload: dict[str, dict]) -> ServedSeries:
        ids = list(payload)
        return cls(ids=ids, stats=SeriesStats.from_rows([payload[sid] for sid in ids]))


SPEC_FILE = "forecaster.json"


@dataclass
class ForecasterSpec:
    """forecaster.json: everything `Forecaster` needs beside the weights to forecast from a history."""

    name: str
    model: ModelSpec
    lookback: int
    horizon: int
    freq: str
    format: str  # long | wide: the layout of a history file
    time_column: str
    target_column: str
    id_column: str | None
    transform: str
    scaling: str
    series: ServedSeries
    data_fingerprint: str
    test_metrics: dict[str, Any] | None  # evaluate/metrics.json of the run, as written
    pipeline_version: str
    format_version: int = 1
    static_loc: list[float] = field(default_factory=list)  # across training series: how a new series'
    static_scale: list[float] = field(default_factory=list)  # static covariates are standardised
    base: dict[str, Any] | None = None  # where the forecast runs on a fallback base: train/meta.json's base record
    zone: str | None = None  # the data's zone: predict writes in it where a history's UTC offsets differ
    wall_clock: bool = False  # the model counts days on the zone's wall clock: a history's times are read on it
    local_times: bool = False  # trained on naive local times: a naive history is read on the zone's clock too
    date_order: str | None = None  # the data's dates were written in numbers only, in this order: a history's too

    def to_json(self) -> dict[str, Any]:
        payload = {
            "format_version": self.format_version,
            "pipeline_version": self.pipeline_version,
            "name": self.name,
            "model": self.model.to_dict(),
            "lookback": self.lookback,
            "horizon": self.horizon,
            "freq": self.freq,
            "format": self.format,
            "time_column": self.time_column,
            "target_column": self.target_column,
            "id_column": self.id_column,
            "transform": self.transform,
            "scaling": self.scaling,
            "series": self.series.to_json(),
            "data_fingerprint": self.data_fingerprint,
            "test_metrics": self.test_metrics,
        }
        if self.static_loc:
            payload["static_covariates"] = {"mean": self.static_loc, "scale": self.static_scale}
        if self.base is not None:
            payload["base"] = self.base
        payload.update(clock_to_json(self.zone, self.wall_clock, self.local_times, self.date_order))
        return payload

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> ForecasterSpec:
        static = payload.get("static_covariates") or {}
        return cls(
            format_version=int(payload.get("format_version", 1)),
            pipeline_version=payload.get("pipeline_version", "unknown"),
            name=payload.get("name", "model"),
            model=ModelSpec.from_dict(payload["model"]),
            lookback=int(payload["lookback"]),
            horizon=int(payload["horizon"]),
            freq=payload["freq"],
            format=payload.get("format", "long"),
            time_column=payload["time_column"],
            target_column=payload["target_column"],
            id_column=payload.get("id_column"),
            transform=payload.get("transform", "none"),
            scaling=payload.get("scaling", "standard"),
            series=ServedSeries.from_json(payload["series"]),
            data_fingerprint=payload.get("data_fingerprint", ""),
            test_metrics=payload.get("test_metrics"),
            static_loc=list(static.get("mean", [])),
            static_scale=list(static.get("scale", [])),
            base=payload.get("base"),
            **clock_from_json(payload),
        )


def clock_to_json(
    zone: str | None, wall_clock: bool, local_times: bool, date_order: str | None = None
) -> dict[str, Any]:
    """The data's clock (and how its dates were written) as ingest's and the forecaster's records write it: only
    what differs from naive ISO times in UTC, so that files written before a field existed read as they were."""
    fields = {
        "zone": zone,
        "wall_clock": wall_clock or None,
        "local_times": local_times or None,
        "date_order": date_order,
    }
    return {key: value for key, value in fields.items() if value is not None}


def clock_from_json(payload: dict[str, Any]) -> dict[str, Any]:
    """`clock_to_json` read back, with the defaults of a record written without it."""
    return {
        "zone": payload.get("zone"),
        "wall_clock": bool(payload.get("wall_clock", False)),
        "local_times": bool(payload.get("local_times", False)),
        "date_order": payload.get("date_order"),
    }
