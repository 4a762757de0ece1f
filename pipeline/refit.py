"""Refit backtest (`evaluate.backtest.refit: true`): each fold gets a fresh model trained before its cutoff.

Fold k of N has the origins of the no-refit backtest (`pipeline.backtest`): in every series its
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
2. **Window and train** run on it with the stage code of the main run, in
   `<output_dir>/.refit/fold_<k>/`, under the same Accelerate set-up (evaluate runs on every
   process, so DDP training works as in the train stage, and a killed fold resumes from its own
   checkpoints). The fold uses the main run's resolved config (same lookback, model and train
   settings), without a tracker run of its own, without a warm start (a champion has seen the
   future) and with `train.resume: auto` on its own work directory.
3. **Forecast.** The fold's best model forecasts the fold's window of every series from the main
   buffer scaled with the fold's statistics (its inputs all lie before the cutoff).

Caching: the fold ingest's fingerprint hashes its content (the values before the cutoffs, the
splits and the statistics), and window and train cache on it exactly as in the main run. An
evaluate re-run with unchanged fold data and settings retrains nothing, and changing data at or
after a fold's cutoff leaves that fold's model as it was; `--force` redoes every fold. The
evaluate stage copies each fold's model and metas into `evaluate/refit/fold_<k>/` with its own
atomically staged output. A fold's MASE is scaled by the seasonal-naive error of its own train
part, the part its model learnt from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline import covariates as cov
from pipeline import ingest
from pipeline import metrics as M
from pipeline.artifacts import META, is_cached, read_meta, stage_key, staged_dir, write_json_atomic
from pipeline.backtest import backtest_windows
from pipeline.chunks import record_offsets
from pipeline.config import Config, DataConfig, RegistryConfig
from pipeline.errors import ConfigError
from pipeline.runtime import main_process_only

log = logging.getLogger("pipeline")

WORK = ".refit"
"""Fold runs live in `<output_dir>/.refit/fold_<k>/` (a cache: deleting it only costs retraining)."""
SPLIT_KEYS = ("length", "train_end", "val_end")
"""Record keys that describe a fold's cut series; every other key (statistics) applies to the full series."""
TARGET = "target"
"""The column of values.arrow holding the target (`ingest.write_values`)."""


def refit_windows(
    lengths: np.ndarray,
    series: np.ndarray,
    val_size: int | float,
    lookback: int,
    horizon: int,
    folds: int,
    step: int,
    season: int,
    ids: list[str],
) -> tuple[np.ndarray, np.ndarray]:
    """((n, 2) (series, input start) pairs, (n,) fold numbers) of a refit backtest.

    The origins are the no-refit backtest's, without the test-part bound. Raises ConfigError
    naming the first series whose earliest cutoff leaves no train part with a training window
    (and a seasonal MASE scale) or no validation part with a validation window.
    """
    series = np.asarray(series, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    need_train = max(lookback + horizon, season + 1)
    before_end = horizon + (folds - 1) * step
    for s in series:
        cut = int(lengths[s]) - before_end  # fold 1 has the earliest cutoff
        train_end, _ = ingest.split_sizes(cut, val_size, 0) if cut > 0 else (0, 0)
        if train_end < need_train or cut - train_end < horizon:
            raise ConfigError(
                f"evaluate.backtest.refit: fold 1 of {folds} cuts series '{ids[s]}' {before_end} steps before its "
                f"end, leaving {max(cut, 0)} of its {int(lengths[s])} steps: a train part of {max(train_end, 0)} "
                f"and a validation part of {max(cut - train_end, 0)} (data.val_size={val_size}); each fold needs a "
                f"train part of at least {need_train} steps (window.lookback + window.horizon, and more than "
                f"evaluate.season_length) and a validation part of at least window.horizon ({horizon}); use fewer "
                f"folds, a smaller step or a smaller data.val_size"
            )
    return backtest_windows(lengths, np.zeros_like(lengths), series, lookback, horizon, folds, step, ids)


@dataclass
class RefitForecasts:
    """The folds' forecasts, aligned with the backtest pairs they were made for."""

    output: np.ndarray  # (n, horizon[, Q]) in original units
    window_scale: np.ndarray  # (n,) MASE scale of each window: its fold's train part
    folds: list[dict]  # per fold: where its model is and how its training went


def run_folds(
    cfg: Config,
    ingest_meta: dict,
    raw32: np.ndarray,
    pairs: np.ndarray,
    fold: np.ndarray,
    force: bool,
    state,
) -> RefitForecasts:
    """Train (or reuse) one model per fold and forecast its windows; called on every process.

    `cfg` is the resolved config of the main run; `pairs`/`fold` come from `refit_windows`.
    """
    records = ingest_meta["series"]
    n_folds = cfg.evaluate.backtest.folds
    offsets = record_offsets(records)
    main_process_only(partial(_drop_other_folds, cfg.run_dir / WORK, n_folds))
    output, window_scale, summaries = None, np.empty(len(pairs)), []
    for k in range(1, n_folds + 1):
        rows = np.flatnonzero(fold == k)
        series, cutoffs = pairs[rows, 0], pairs[rows, 1] + cfg.window.lookback
        log.info(
            "evaluate: refit fold %d/%d: %d series cut %d steps before their end (%d points to train and validate on)",
            k,
            n_folds,
            len(series),
            int(records[series[0]]["length"] - cutoffs[0]),  # the same for every series
            int(cutoffs.sum()),
        )
        fold_dir = train_fold(cfg, ingest_meta, series, cutoffs, k, force)
        fold_ingest, train_meta = read_meta(fold_dir / "ingest"), read_meta(fold_dir / "train")
        scaled = forecast_fold(cfg, ingest_meta, raw32, fold_ingest, train_meta, fold_dir, pairs[rows], state)
        if output is None:
            output = np.empty((len(pairs), *scaled.shape[1:]))
        output[rows] = scaled
        train_end = np.array([r["train_end"] for r in records], dtype=np.int64)
        train_end[series] = [r["train_end"] for r in fold_ingest["series"]]
        window_scale[rows] = fold_mase_scale(raw32, offsets, train_end, cfg.evaluate.season_length, series, records, k)
        summaries.append(fold_summary(k, fold_ingest, train_meta))
        s = train_meta["state"]
        log.info(
            "evaluate: refit fold %d/%d: %d windows forecast by its model of step %d (best val loss %.5f of %d steps)",
            k,
            n_folds,
            len(rows),
            s["best_step"],
            s["best_val"],
            s["step"],
        )
    return RefitForecasts(output, window_scale, summaries)


def train_fold(cfg: Config, ingest_meta: dict, series: np.ndarray, cutoffs: np.ndarray, k: int, force: bool) -> Path:
    """Fold k's ingest, window and train outputs (each stage skipped when its inputs are unchanged)."""
    from pipeline import train, window

    fold_dir = cfg.run_dir / WORK / f"fold_{k}"
    main_process_only(partial(write_fold_ingest, cfg, ingest_meta, series, cutoffs, fold_dir / "ingest", k, force))
    fold_cfg = fold_config(cfg, fold_dir)
    window.run(fold_cfg, force=force)
    main_process_only(partial(_drop_stale_work, fold_cfg))
    train.run(fold_cfg, force=force)
    return fold_dir


def forecast_fold(cfg, ingest_meta, raw32, fold_ingest, train_meta, fold_dir, pairs, state) -> np.ndarray:
    """The fold model's forecasts (original units) of `pairs` from the main buffer scaled with the fold's statistics."""
    from pipeline.data import WindowBuffer
    from pipeline.evaluate import forecast_sharded, load_trained_model, to_original_units

    transform = ingest_meta.get("transform", "none")
    records = with_fold_statistics(ingest_meta["series"], pairs[:, 0], fold_ingest["series"])
    model = load_trained_model(fold_dir / "train", train_meta)
    ingest_dir, freq = cfg.run_dir / "ingest", ingest_meta["freq"]  # the full series: future covariates included
    buffer = WindowBuffer.for_model(model.spec, ingest_dir, raw32, records, freq, cfg.window.lookback, transform)
    scaled = forecast_sharded(model, buffer, pairs, cfg.evaluate.batch_size, state)
    return to_original_units(scaled, records, pairs[:, 0], transform)


def fold_mase_scale(
    raw, offsets, train_end, season: int, series: np.ndarray, records: list[dict], k: int
) -> np.ndarray:
    """The MASE scale of each listed series on fold k's train part (`train_end` per series; float64 sums)."""
    scale = M.mase_scale(raw, offsets, train_end, season)[series]
    bad = np.isnan(scale) | (scale == 0)
    if bad.any():
        raise ConfigError(
            f"evaluate.season_length ({season}): series '{records[int(series[bad][0])]['id']}' has no seasonal "
            f"variation on the train part of refit fold {k} to scale MASE by (constant there)"
        )
    return scale


def fold_config(cfg: Config, fold_dir: Path) -> Config:
    """The main run's resolved config, pointed at the fold's directory, training from scratch, untracked."""
    return dataclasses.replace(
        cfg,
        output_dir=str(fold_dir),
        train=dataclasses.replace(cfg.train, init_from="none", resume="auto"),
        tracking=dataclasses.replace(cfg.tracking, backend="none"),
        registry=RegistryConfig(),
    )


def cut_table(table: pa.Table, offsets: np.ndarray, series: np.ndarray, cutoffs: np.ndarray) -> pa.Table:
    """The rows of each listed series before its cutoff, every column, as one contiguous chunk."""
    parts = [table.slice(int(offsets[s]), int(c)) for s, c in zip(series, cutoffs, strict=True)]
    return pa.concat_tables(parts).combine_chunks()


def fold_series(table: pa.Table, ingest_meta: dict, data: DataConfig, series: np.ndarray, cutoffs: np.ndarray):
    """The cut series as an `ingest.SeriesSet` (the one place that maps a fold table to ingest's input).

    Time-varying covariates come from their values.arrow columns; static covariates (not in
    values.arrow) are the ingest's standardised values mapped back through its statistics.
    """
    records = ingest_meta["series"]
    names = data.covariates
    static = None
    if data.static_covariates:
        stats = ingest_meta["static_covariates"]
        standardised = np.array([records[s]["static"] for s in series], dtype=np.float64)
        static = standardised * np.array(stats["scale"]) + np.array(stats["mean"])
    covs = None
    if names:  # float64, as ingest hands them to split_and_scale (float32 sums would drift)
        covs = np.stack([ingest.column_values(table.column(cov.PREFIX + n)) for n in names], axis=1, dtype=np.float64)
    return ingest.SeriesSet(
        ids=[records[s]["id"] for s in series],
        starts=[pd.Timestamp(records[s]["start"]) for s in series],
        lengths=np.asarray(cutoffs, dtype=np.int64),
        values=ingest.column_values(table.column(TARGET)),
        freq=ingest_meta["freq"],
        covariates=covs,
        static=static,
    )


def write_fold_ingest(
    cfg: Config, ingest_meta: dict, series: np.ndarray, cutoffs: np.ndarray, out: Path, k: int, force: bool
) -> None:
    """The fold's ingest directory: the series cut at their cutoffs, split and scaled on their own."""
    records = ingest_meta["series"]
    offsets = record_offsets(records)
    table = cut_table(ingest.read_table(cfg.run_dir / "ingest"), offsets, series, cutoffs)
    data = dataclasses.replace(
        cfg.data, scaling=ingest_meta.get("scaling", cfg.data.scaling), transform=ingest_meta.get("transform", "none")
    )
    meta = ingest.split_and_scale(fold_series(table, ingest_meta, data, series, cutoffs), data, test_size=0)
    # the content: values (split_and_scale's fingerprint) and every record (splits, statistics)
    fingerprint = stage_key("refit-ingest", meta["fingerprint"], json.dumps(meta["series"], sort_keys=True))
    if not force and is_cached(out, fingerprint):
        return
    meta.update(
        fingerprint=fingerprint,
        key=fingerprint,
        stage="ingest",
        source=f"{cfg.run_dir / 'ingest'} cut at refit fold {k}",
        refit_fold=k,
    )
    with staged_dir(out) as tmp:
        ingest.write_table(tmp / ingest.VALUES_FILE, table)
        write_json_atomic(tmp / META, meta)


def with_fold_statistics(records: list[dict], series: np.ndarray, fold_records: list[dict]) -> list[dict]:
    """The main records, with each listed series' statistics (every non-split key) taken from its fold record.

    `index` is the series' position in the fold, its row in a fold model's series embedding.
    """
    out = list(records)
    for j, (s, fold_record) in enumerate(zip(series, fold_records, strict=True)):
        if fold_record["id"] != records[s]["id"]:
            raise RuntimeError(f"refit fold ingest is out of step: {fold_record['id']} != {records[s]['id']}")
        out[s] = {**records[s], **{k: v for k, v in fold_record.items() if k not in SPLIT_KEYS}, "index": j}
    return out


def fold_summary(k: int, fold_ingest: dict, train_meta: dict) -> dict:
    """What metrics.json says about a fold's model."""
    s = train_meta["state"]
    return {
        "dir": f"evaluate/refit/fold_{k}",
        "train_points": int(sum(r["train_end"] for r in fold_ingest["series"])),
        "val_points": int(sum(r["val_end"] - r["train_end"] for r in fold_ingest["series"])),
        "steps": s["step"],
        "best_step": s["best_step"],
        "best_val_loss": s["best_val"],
    }


def record(tmp: Path, run_dir: Path, folds: int) -> None:
    """Copy each fold's model and metas into the evaluate stage's staged output (`refit/fold_<k>/`)."""
    for k in range(1, folds + 1):
        src, dst = run_dir / WORK / f"fold_{k}", tmp / "refit" / f"fold_{k}"
        dst.mkdir(parents=True)
        shutil.copy2(src / "train" / "best" / "model.safetensors", dst / "model.safetensors")
        for stage in ("ingest", "window", "train"):
            shutil.copy2(src / stage / META, dst / f"{stage}_meta.json")


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
    from pipeline import checkpoint as ckpt
    from pipeline.train import train_key

    work = fold_cfg.run_dir / ".train.work"
    window_meta = read_meta(fold_cfg.run_dir / "window")
    if not work.is_dir() or window_meta is None:
        return
    key = train_key(fold_cfg, window_meta["fingerprint"])
    for path in ckpt.list_checkpoints(work / "checkpoints"):
        with contextlib.suppress(OSError, ValueError):
            if ckpt.read_state(path).get("key") != key:
                log.info("evaluate: refit: dropping %s, an interrupted training for other inputs", work)
                shutil.rmtree(work, ignore_errors=True)
                return
