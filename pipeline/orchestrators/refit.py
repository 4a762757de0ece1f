"""Refit backtest (`evaluate.backtest.refit: true`): each fold gets a fresh model trained before its cutoff.

Fold k of N has the origins of the no-refit backtest (`pipeline.library.backtest`): in every series its
forecast window starts at the cutoff `length - horizon - (N - k) * step`. Without refit those
windows must lie in the test part (the one model has trained on everything before it); with
refit each fold is scored by a model that never saw anything at or after its cutoff, so the
folds may reach back before the test part, as long as each series keeps room for a train and a
validation part before its earliest cutoff. For every fold:

1. **Fold ingest.** Every column of `ingest/values.arrow` is sliced at each series' cutoff (a
   generic slice of the Arrow table: whatever columns ingest writes, nothing at or after the
   cutoff is copied), and the per-series records come from one call to `ingest.split_and_scale`
   with no test part: `data.val_size` (a fraction of what remains, or steps) carves the
   validation part from the end, and the scaling statistics are recomputed on the rest, the
   fold's own train part.
   With `data.transform: auto` the fold chooses its transform on its own windows, as ingest does.
2. **Window and train** stages run on it, in `<output_dir>/.refit/fold_<k>/`, under the same
   Accelerate set-up (this runs on every process, so DDP training works as in the train stage,
   and a killed fold resumes from its own checkpoints). The fold uses the run's config as the
   user wrote it, so every `auto` setting (the seasons kept, the calendar features, the lookback,
   the transform) is resolved from the fold's own ingest: a choice read from the main run's
   train and validation parts would have read values at and after an early fold's cutoff. It
   trains without a tracker run of its own, without a warm start (a champion has seen the
   future) and with `train.resume: auto` on its own work directory.
3. **Forecast and score.** The evaluate stage, which runs next, reads the fold models back
   (`pipeline.library.refit_folds`): the fold's best model forecasts the fold's window of every
   series from the main buffer scaled with the fold's statistics (its inputs all lie before the
   cutoff). The evaluate stage itself never trains.

Caching: the fold ingest's fingerprint hashes its content (the values before the cutoffs, the
splits and the statistics), and window and train cache on it exactly as in the main run. An
evaluate re-run with unchanged fold data and settings retrains nothing, and changing data at or
after a fold's cutoff leaves that fold's model as it was; `--force` redoes every fold. The
evaluate stage copies each fold's model and metas into `evaluate/refit/fold_<k>/` with its own
atomically staged output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Config, RegistryConfig
from pipeline.config.auto import AUTO, resolve
from pipeline.library import checkpoint as ckpt
from pipeline.library import store
from pipeline.library.artifacts import stage_key, staged_dir
from pipeline.library.backtest import REFIT_DIR, fold_dir
from pipeline.library.errors import ConfigError
from pipeline.library.records import IngestRecord, WindowRecord, is_cached
from pipeline.library.runtime import main_process_only
from pipeline.library.series import SeriesSet
from pipeline.library.splits import split_and_scale
from pipeline.library.windows import read_index
from pipeline.stages import train, window
from pipeline.stages.evaluate import plan_backtest
from pipeline.stages.ingest import split_and_transform
from pipeline.stages.table import stage_dir
from pipeline.stages.train import train_key

log = logging.getLogger("pipeline")


def prepare_folds(cfg: Config, force: bool = False) -> None:
    """Train (or reuse) one model per fold of the refit backtest; called on every process.

    `cfg` is the config as written: the folds resolve its `auto` settings on their own data.
    """
    written, cfg = cfg, resolve(cfg)
    ingest = IngestRecord.require(stage_dir(cfg, "ingest"), "evaluate")
    test = read_index(stage_dir(cfg, "window"))["test"]
    if len(test) == 0:
        raise ConfigError("evaluate: no test window; increase data.test_size or decrease window.horizon")
    plan = plan_backtest(cfg, ingest.series, test)
    main_process_only(partial(_drop_other_folds, cfg.run_dir / REFIT_DIR, plan.folds))
    lengths = ingest.series.lengths
    for k in range(1, plan.folds + 1):
        rows = np.flatnonzero(plan.fold == k)
        series, cutoffs = plan.pairs[rows, 0], plan.pairs[rows, 1] + cfg.window.lookback
        log.info(
            "evaluate: refit fold %d/%d: %d series cut %d steps before their end (%d points to train and validate on)",
            k,
            plan.folds,
            len(series),
            int(lengths[series[0]] - cutoffs[0]),  # the same for every series
            int(cutoffs.sum()),
        )
        path = fold_dir(cfg.run_dir, k)
        fold_cfg = fold_config(written, path)
        ingest_dir = stage_dir(cfg, "ingest")
        main_process_only(partial(write_fold_ingest, fold_cfg, ingest_dir, ingest, series, cutoffs, k, force))
        window.run(fold_cfg, force=force)
        main_process_only(partial(_drop_stale_work, fold_cfg))
        train.run(fold_cfg, force=force)
        # a finished fold is never resumed: its checkpoints would only fill the disk night after night
        main_process_only(partial(shutil.rmtree, path / "train" / "checkpoints", ignore_errors=True))


def fold_series(table, ingest: IngestRecord, series: np.ndarray, cutoffs: np.ndarray) -> SeriesSet:
    """The cut series as a `SeriesSet` (the one place that maps a fold table to ingest's input).

    Time-varying covariates come from their values.arrow columns; static covariates (not in
    values.arrow) are the ingest's standardised values mapped back through its statistics.
    """
    table_rows = ingest.series
    static = None
    if ingest.static_covariates:
        standardised = table_rows.stats.static[series]
        static = standardised * np.array(ingest.static_scale) + np.array(ingest.static_loc)
    covs = None
    if ingest.covariates:  # float64, as ingest hands them to split_and_scale (float32 sums would drift)
        columns = [store.column_values(table.column(store.COVARIATE + n)) for n in ingest.covariates]
        covs = np.stack(columns, axis=1, dtype=np.float64)
    filled = store.column_values(table.column(store.FILLED)) if store.FILLED in table.column_names else None
    return SeriesSet(
        ids=[table_rows.ids[s] for s in series],
        starts=[pd.Timestamp(table_rows.starts[s]) for s in series],
        lengths=np.asarray(cutoffs, dtype=np.int64),
        values=store.column_values(table.column(store.TARGET)),
        freq=ingest.freq,
        covariates=covs,
        static=static,
        filled=filled if filled is not None and filled.any() else None,
        zone=ingest.zone,
        wall_clock=ingest.wall_clock,
        local_times=ingest.local_times,
        date_order=ingest.date_order,
    )


def write_fold_ingest(
    fold_cfg: Config, ingest_dir: Path, ingest: IngestRecord, series: np.ndarray, cutoffs: np.ndarray, k: int,
    force: bool,
) -> None:  # fmt: skip
    """The fold's ingest directory: the series cut at their cutoffs, split, scaled and transformed on their own.

    With `data.transform: auto` the transform is chosen on the fold's windows as ingest chooses it
    (`pipeline.stages.ingest.split_and_transform`); the cache key then also holds what that choice reads.
    """
    out = stage_dir(fold_cfg, "ingest")
    table = store.cut_table(store.read_table(ingest_dir), ingest.series.offsets, series, cutoffs)
    cut = fold_series(table, ingest, series, cutoffs)
    data = dataclasses.replace(fold_cfg.data, scaling=ingest.scaling)
    auto = data.transform == AUTO
    record = split_and_scale(cut, dataclasses.replace(data, transform="none") if auto else data, test_size=0)
    # the content: values (split_and_scale's fingerprint) and every series' splits and statistics
    inputs = [record.fingerprint, json.dumps(record.series.to_json(), sort_keys=True)]
    if auto:  # the transform choice compares the model section's bases at the window's lookback and horizon
        inputs.append(fold_cfg.section_hash("data", "window", "model", "evaluate.season_length"))
    fingerprint = stage_key("refit-ingest", *inputs)
    if not force and is_cached(out, fingerprint):
        return
    if auto:
        record = split_and_transform(dataclasses.replace(fold_cfg, data=data), cut, test_size=0)
        log.info("evaluate: refit fold %d: data.transform auto -> %s: %s", k, record.transform,
                 record.transform_check["why"])  # fmt: skip
    record = dataclasses.replace(
        record, fingerprint=fingerprint, key=fingerprint, source=f"{ingest_dir} cut at refit fold {k}",
        refit_fold=k,
    )  # fmt: skip
    with staged_dir(out) as tmp:
        store.write_table(tmp / store.VALUES_FILE, table)
        record.write(tmp)


def fold_config(cfg: Config, fold_dir: Path) -> Config:
    """The run's config as written, pointed at the fold's directory, training from scratch, untracked.

    Its `auto` values stay `auto`: each stage of the fold resolves them from the fold's ingest.
    """
    return dataclasses.replace(
        cfg,
        output_dir=str(fold_dir),
        train=dataclasses.replace(cfg.train, init_from="none", resume="auto"),
        tracking=dataclasses.replace(cfg.tracking, backend="none"),
        registry=RegistryConfig(),
    )


def _drop_other_folds(work: Path, folds: int) -> None:
    """Fold directories beyond the configured number are left from a run with more folds."""
    for path in work.glob("fold_*") if work.is_dir() else ():
        number = path.name.removeprefix("fold_")
        if not number.isdigit() or int(number) > folds:
            shutil.rmtree(path, ignore_errors=True)


def _drop_stale_work(fold_cfg: Config) -> None:
    """Remove a fold's interrupted training made for other inputs (the train stage would refuse to resume it).


    A fold's inputs change whenever its data or the settings do, and the user cannot point a fold
    at `train.resume: never`; an interrupted training of the same inputs is kept and resumed.
    """
    work = fold_cfg.run_dir / ".train.work"
    window = WindowRecord.read(fold_cfg.run_dir / "window")
    if not work.is_dir() or window is None:
        return
    key = train_key(resolve(fold_cfg), window.fingerprint)  # as the train stage keys it: on the fold's auto values
    for path in ckpt.list_checkpoints(work / "checkpoints"):
        with contextlib.suppress(OSError, ValueError):
            if ckpt.read_state(path).get("key") != key:
                log.info("evaluate: refit: dropping %s, an interrupted training for other inputs", work)
                shutil.rmtree(work, ignore_errors=True)
                return
