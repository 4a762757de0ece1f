"""Stage 1, ingest: source -> clean, regular, split, scaled-on-train series in one Arrow buffer.

Output (`<output_dir>/ingest/`): `values.arrow` (every series back to back, in original units:
`pipeline.library.store`) and `meta.json` (`IngestRecord`: fingerprint, frequency, and per
series its id, first timestamp, length, split boundaries and its train part's statistics).

Two readers give the same output: local parquet files with typed columns stream through
`pipeline.library.series_stream` in record batches (memory: the output buffer plus one batch);
every other source is loaded whole into a pandas frame and cleaned by
`pipeline.library.series.prepare_series`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import Config, DataConfig
from pipeline.config.auto import resolve
from pipeline.config.model_spec import model_spec
from pipeline.library.artifacts import staged_dir
from pipeline.library.errors import ConfigError, DataError
from pipeline.library.records import IngestRecord, is_cached
from pipeline.library.runtime import main_process_only
from pipeline.library.series import SeriesSet, prepare_series
from pipeline.library.series_stream import stream_series
from pipeline.library.sources import load_table, parquet_batches, source_fingerprint, table_fingerprint
from pipeline.library.splits import split_and_scale
from pipeline.library.store import VALUES_FILE, write_values
from pipeline.library.warm_start import warm_start_transform
from pipeline.stages.table import cache_key, stage_dir
from pipeline.stages.tracking import DATA_FILE, dataset_artifact, open_tracker

if TYPE_CHECKING:
    from pipeline.library.transform_choice import TransformCheck

log = logging.getLogger("pipeline")


def run(cfg: Config, force: bool = False) -> Path:
    main_process_only(lambda: _run(cfg, force))
    return stage_dir(cfg, "ingest")


def _run(cfg: Config, force: bool) -> None:
    out = stage_dir(cfg, "ingest")
    content, table = source_fingerprint(cfg.data), None
    if content is None:  # a Hub dataset: its rows are its identity (its branch may have moved since)
        table = load_table(cfg.data)
        content = table_fingerprint(table)
    key = cache_key("ingest", cfg, content)
    if not force and is_cached(out, key):
        log.info("ingest: up to date (inputs unchanged), skipped; --force redoes it")
        return
    series = read_series(cfg.data) if table is None else prepare_series(table, cfg.data)
    record = dataclasses.replace(split_and_transform(cfg, series), key=key, config=cfg.to_dict())
    identity = {
        "fingerprint": record.fingerprint,
        "source": cfg.data.source,
        "freq": record.freq,
        "n_series": record.n_series,
        "n_points": record.n_points,
    }
    with staged_dir(out) as tmp:
        write_values(tmp / VALUES_FILE, series.values, cfg.data.covariates, series.covariates, series.filled)
        (tmp / DATA_FILE).write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n")
        record.write(tmp)
    log.info(
        "ingest: %d series, %d points, freq %s, fingerprint %s",
        len(series.ids),
        len(series.values),
        series.freq,
        record.fingerprint,
    )
    if series.filled is not None:
        log.info("ingest: %d points filled by data.missing=%s; evaluate leaves them out of every score",
                 int(series.filled.sum()), cfg.data.missing)  # fmt: skip
    for check in record.season_checks or ():
        log.info("ingest: season %d %s: %s", check["season"], "kept" if check["kept"] else "not kept", check["why"])
    if record.transform_check:
        log.info("ingest: data.transform auto -> %s: %s", record.transform, record.transform_check["why"])
    _track(cfg, out)


def split_and_transform(cfg: Config, series: SeriesSet, test_size: int | None = None) -> IngestRecord:
    """The ingest record, with `data.transform: auto` decided on the windows before the test part.

    The bases compared are the ones the train stage will choose from (or its one configured base),
    read at the lookback and seasons the later stages resolve from the untransformed record: the
    transform does not move the split, the seasons or the lookback. A warm start keeps the
    transform of the weights it starts from, as it keeps their base: the correction was learned there.
    `test_size` replaces `data.test_size` (a refit fold passes 0: its series end at its cutoff).
    """
    if cfg.data.transform != "auto":
        return split_and_scale(series, cfg.data, test_size)
    # imported here: the bases are torch code, and torch (190 MB) stays out of an ingest given its transform
    from pipeline.library.transform_choice import TransformCheck, first_negative

    plain = split_and_scale(series, dataclasses.replace(cfg.data, transform="none"), test_size)
    kept = warm_start_transform(cfg.train.init_from, cfg.registry_root)
    if kept is not None:
        negative = first_negative(series.values, series.offsets) if kept == "log1p" else None
        if negative is not None:
            raise DataError(
                f"{cfg.data.source}: series '{series.ids[negative]}' has a value below 0, and the starting weights "
                f"(train.init_from) were trained on log1p of the data: set data.transform: none and train afresh"
            )
        check = TransformCheck(kept, "kept from the starting weights (train.init_from)")
    else:
        try:
            check = _check_transform(cfg, series, plain)
        except ConfigError as error:  # the window stage after this one says it, where it belongs
            check = TransformCheck("none", f"not checked: {error}")
    record = plain
    if check.transform != "none":
        record = split_and_scale(series, dataclasses.replace(cfg.data, transform=check.transform), test_size)
    return dataclasses.replace(record, transform_check=check.to_json())


def _check_transform(cfg: Config, series: SeriesSet, plain: IngestRecord) -> TransformCheck:
    """`choose_transform` on the bases the train stage will compare, at the lookback and seasons it will resolve."""
    from pipeline.library.base_choice import candidates
    from pipeline.library.transform_choice import choose_transform

    resolved = resolve(cfg, plain)
    spec = model_spec(resolved, plain)
    seasons, lookback = tuple(resolved.model.seasons), resolved.window.lookback
    if resolved.model.base == "validation" or not spec.residual_season:
        bases = candidates(spec, seasons if spec.residual_season else (), lookback)
    else:
        bases = {"the configured base": spec}
    return choose_transform(series.values, plain.series, bases, lookback, resolved.window.horizon)


def _track(cfg: Config, out: Path) -> None:
    """The data as a W&B `dataset` artifact of the ingest run: the start of the lineage (train uses it)."""
    artifact = dataset_artifact(cfg, out)
    if cfg.tracking.backend == "none" or artifact is None:
        return
    tracker = open_tracker(cfg, "ingest", True)
    try:
        tracker.log_artifact(None, description=f"{cfg.data.source}: the data as ingested, by reference", **artifact)
    finally:
        tracker.finish()


def read_series(data: DataConfig) -> SeriesSet:
    """The source as clean regular series: streamed when it is typed parquet, else through pandas."""
    batches = parquet_batches(data)
    series = stream_series(batches, data) if batches is not None else None
    return series if series is not None else prepare_series(load_table(data), data)
