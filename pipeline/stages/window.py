"""Stage 2, window: the (series, start) index pairs of every split; no window is ever materialised.

The index is a pure function of the series' lengths and split boundaries
(`pipeline.library.windows`) and, where data.missing filled points, of which targets were
observed (a training window with none is left out); series too short for a window in every split
are dropped with a warning or fail, by `data.short_series`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.config.auto import resolve
from pipeline.library import metrics as M
from pipeline.library.artifacts import staged_dir
from pipeline.library.errors import DataError, shown
from pipeline.library.records import IngestRecord, SeriesTable, WindowRecord, is_cached
from pipeline.library.runtime import main_process_only
from pipeline.library.store import read_observed
from pipeline.library.windows import (
    SPLITS,
    build_window_index,
    drop_short_series,
    without_unobserved_targets,
    write_index,
)
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
        dropped = WindowRecord.require(out, "window").dropped_series
        check_scoring_season(cfg, ingest.series, dropped)
        check_mase_scale(cfg, ingest.series, dropped, read_observed(stage_dir(cfg, "ingest")))
        log.info("window: up to date (inputs unchanged), skipped; --force redoes it")
        return
    series, w = ingest.series, cfg.window
    index = build_window_index(
        series.lengths, series.train_end, series.val_end, w.lookback, w.horizon, w.stride, w.val_stride, w.test_stride
    )
    index, dropped = drop_short_series(index, series, w.lookback, w.horizon, cfg.data.short_series)
    check_scoring_season(cfg, series, dropped)
    observed = read_observed(stage_dir(cfg, "ingest"))
    check_mase_scale(cfg, series, dropped, observed)
    if ingest.filled_points:
        index, unobserved = without_unobserved_targets(index, series.offsets, observed, w.lookback, w.horizon)
        if unobserved:
            log.info("window: %d training windows left out: data.missing filled every target of them", unobserved)
    counts = {s: len(index[s]) for s in SPLITS}
    with staged_dir(out) as tmp:
        write_index(tmp, index)
        WindowRecord(key, ingest.fingerprint, w.lookback, w.horizon, counts, dropped, config=cfg.to_dict()).write(tmp)
    log.info("window: train %d, val %d, test %d windows", counts["train"], counts["val"], counts["test"])


def scored_series(series: SeriesTable, dropped: list[str]) -> np.ndarray:
    """(n_series,) bool: the series evaluate scores (kept, with a test part)."""
    return (series.val_end < series.lengths) & ~np.isin(np.asarray(series.ids, dtype=object), dropped)


def check_mase_scale(cfg: Config, series: SeriesTable, dropped: list[str], observed: np.ndarray) -> None:
    """Every series scored has a MASE scale above 0: a series constant on its train part (which `data.scaling: none`
    admits) would otherwise be trained on and then refuse evaluate's scoring, here before training. `observed`:
    ingest's target buffer with NaN where data.missing filled it, as evaluate scales MASE."""
    season = cfg.evaluate.season_length
    scale = M.mase_scale(observed, series.offsets, series.train_end, season)
    scored = scored_series(series, dropped)
    flat = np.flatnonzero(scored & (scale == 0))
    if len(flat):
        raise DataError(M.flat_season_message(season, shown(series.ids[int(flat[0])])))
    unscaled = np.flatnonzero(scored & np.isnan(scale) & (series.train_end > season))
    if len(unscaled):
        raise DataError(
            f"series '{shown(series.ids[int(unscaled[0])])}': no two observed values evaluate.season_length ({season}) "
            f"apart on its train part to scale MASE by (data.missing={cfg.data.missing} filled the others); give it "
            f"more observed history or leave it out"
        )


def check_scoring_season(cfg: Config, series: SeriesTable, dropped: list[str]) -> None:
    """Every series kept with a test part can be scored at `evaluate.season_length`: said here, before training,
    where evaluate would say it after. MASE divides by the seasonal-naive error on the train part (a train part
    longer than one season), and the seasonal-naive baseline reads whole seasons back from the test part."""
    season = cfg.evaluate.season_length
    back = season * (1 + (cfg.window.horizon - 1) // season)  # how far the baseline reads back from a test origin
    scored = scored_series(series, dropped)
    short = np.flatnonzero(scored & (series.train_end <= season))
    if len(short):
        i = int(short[0])
        raise DataError(
            f"evaluate.season_length ({season}): series '{shown(series.ids[i])}' has a train part of "
            f"{series.train_end[i]} steps, not longer than one season, to scale MASE by; set a shorter "
            f"evaluate.season_length"
        )
    first_test = np.maximum(series.val_end, cfg.window.lookback)  # where the first test forecast starts
    early = np.flatnonzero(scored & (first_test < back))
    if len(early):
        i = int(early[0])
        raise DataError(
            f"evaluate.season_length ({season}): the seasonal-naive forecast of series '{shown(series.ids[i])}' reads "
            f"{back} steps back from its first test forecast, before its start ({first_test[i]} steps earlier); "
            f"set a shorter evaluate.season_length"
        )
