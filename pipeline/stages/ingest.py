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

from pipeline.config import Config, DataConfig
from pipeline.library.artifacts import staged_dir
from pipeline.library.records import is_cached
from pipeline.library.runtime import main_process_only
from pipeline.library.series import SeriesSet, prepare_series
from pipeline.library.series_stream import stream_series
from pipeline.library.sources import load_table, parquet_batches, source_fingerprint
from pipeline.library.splits import split_and_scale
from pipeline.library.store import VALUES_FILE, write_values
from pipeline.stages.table import cache_key, stage_dir
from pipeline.stages.tracking import DATA_FILE, dataset_artifact, open_tracker

log = logging.getLogger("pipeline")


def run(cfg: Config, force: bool = False) -> Path:
    main_process_only(lambda: _run(cfg, force))
    return stage_dir(cfg, "ingest")


def _run(cfg: Config, force: bool) -> None:
    out = stage_dir(cfg, "ingest")
    key = cache_key("ingest", cfg, source_fingerprint(cfg.data))
    if not force and is_cached(out, key):
        log.info("ingest: up to date (inputs unchanged), skipped; --force redoes it")
        return
    series = read_series(cfg.data)
    record = dataclasses.replace(split_and_scale(series, cfg.data), key=key, config=cfg.to_dict())
    identity = {
        "fingerprint": record.fingerprint,
        "source": cfg.data.source,
        "freq": record.freq,
        "n_series": record.n_series,
        "n_points": record.n_points,
    }
    with staged_dir(out) as tmp:
        write_values(tmp / VALUES_FILE, series.values, cfg.data.covariates, series.covariates)
        (tmp / DATA_FILE).write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n")
        record.write(tmp)
    log.info(
        "ingest: %d series, %d points, freq %s, fingerprint %s",
        len(series.ids),
        len(series.values),
        series.freq,
        record.fingerprint,
    )
    for check in record.season_checks or ():
        log.info("ingest: season %d %s: %s", check["season"], "kept" if check["kept"] else "not kept", check["why"])
    _track(cfg, out)


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
