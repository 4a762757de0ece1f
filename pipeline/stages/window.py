"""Stage 2, window: the (series, start) index pairs of every split; no window is ever materialised.

The index is a pure function of the series' lengths and split boundaries
(`pipeline.library.windows`); series too short for a window in every split are dropped with a
warning or fail, by `data.short_series`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import Config
from pipeline.config.auto import resolve
from pipeline.library.artifacts import staged_dir
from pipeline.library.records import IngestRecord, WindowRecord, is_cached
from pipeline.library.runtime import main_process_only
from pipeline.library.windows import SPLITS, build_window_index, drop_short_series, write_index
from pipeline.stages.table import cache_key, stage_dir

log = logging.getLogger("pipeline")


def run(cfg: Config, force: bool = False) -> Path:
    main_process_only(lambda: _run(cfg, force))
    return stage_dir(cfg, "window")


def _run(cfg: Config, force: bool) -> None:
    out = stage_dir(cfg, "window")
    ingest = IngestRecord.require(stage_dir(cfg, "ingest"), "window")
    cfg = resolve(cfg, ingest)
    key = cache_key("window", cfg, ingest.fingerprint)
    if not force and is_cached(out, key):
        log.info("window: up to date (inputs unchanged), skipped; --force redoes it")
        return
    series, w = ingest.series, cfg.window
    index = build_window_index(
        series.lengths, series.train_end, series.val_end, w.lookback, w.horizon, w.stride, w.val_stride, w.test_stride
    )
    index, dropped = drop_short_series(index, series, w.lookback, w.horizon, cfg.data.short_series)
    counts = {s: len(index[s]) for s in SPLITS}
    with staged_dir(out) as tmp:
        write_index(tmp, index)
        WindowRecord(key, ingest.fingerprint, w.lookback, w.horizon, counts, dropped, config=cfg.to_dict()).write(tmp)
    log.info("window: train %d, val %d, test %d windows", counts["train"], counts["val"], counts["test"])
