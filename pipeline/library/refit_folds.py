"""A refit backtest's fold models, read back for scoring: forecasts, MASE scales, summaries.

`pipeline.orchestrators.refit` trains one model per fold in `<output_dir>/.refit/fold_<k>/`
(ingest cut at the fold's cutoff, window, train). The evaluate stage scores them through this
module: each fold's best model forecasts the fold's windows from the main buffer scaled with the
fold's own statistics (its inputs all lie before the cutoff), and each fold's MASE is scaled by
the seasonal-naive error of the fold's train part, the part its model learnt from.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.library import metrics as M
from pipeline.library.artifacts import META
from pipeline.library.backtest import BacktestPlan, fold_dir
from pipeline.library.buffer import WindowBuffer
from pipeline.library.errors import ConfigError, UserError
from pipeline.library.inference import forecast_sharded, load_model, to_original_units
from pipeline.library.records import IngestRecord, TrainRecord, WindowRecord


@dataclass
class RefitForecasts:
    """The folds' forecasts, aligned with the backtest pairs they were made for."""

    output: np.ndarray  # (n, horizon[, Q]) in original units
    window_scale: np.ndarray  # (n,) MASE scale of each window: its fold's train part
    folds: list[dict]  # per fold: where its model is and how its training went


def fold_mase_scale(raw, offsets, train_end, season: int, series: np.ndarray, ids: list[str], k: int) -> np.ndarray:
    """The MASE scale of each listed series on fold k's train part (`train_end` per series; float64 sums)."""
    scale = M.mase_scale(raw, offsets, train_end, season)[series]
    bad = np.isnan(scale) | (scale == 0)
    if bad.any():
        raise ConfigError(
            f"evaluate.season_length ({season}): series '{ids[int(series[bad][0])]}' has no seasonal "
            f"variation on the train part of refit fold {k} to scale MASE by (constant there)"
        )
    return scale


def fold_summary(k: int, fold_ingest: IngestRecord, window: WindowRecord, trained: TrainRecord) -> dict:
    """What metrics.json says about a fold's model, with the `auto` choices it made on its own data."""
    s, folded = trained.state, fold_ingest.series
    return {
        "dir": f"evaluate/refit/fold_{k}",
        "train_points": int(folded.train_end.sum()),
        "val_points": int((folded.val_end - folded.train_end).sum()),
        "steps": s.step,
        "best_step": s.best_step,
        "best_val_loss": s.best_val,
        "lookback": window.lookback,
        "seasons": list(fold_ingest.detected_seasons or ()),
        "transform": fold_ingest.transform,
    }


def copy_fold_models(tmp: Path, run_dir: Path, folds: int) -> None:
    """Copy each fold's model and metas into the evaluate stage's staged output (`refit/fold_<k>/`)."""
    for k in range(1, folds + 1):
        src, dst = fold_dir(run_dir, k), tmp / "refit" / f"fold_{k}"
        dst.mkdir(parents=True)
        shutil.copy2(src / "train" / "best" / "model.safetensors", dst / "model.safetensors")
        for stage in ("ingest", "window", "train"):
            shutil.copy2(src / stage / META, dst / f"{stage}_meta.json")


def fold_records(run_dir: Path, folds: int) -> list[tuple[IngestRecord, WindowRecord, TrainRecord]]:
    """Each fold's ingest, window and train records; one line naming the fold when one has not been trained."""
    out = []
    for k in range(1, folds + 1):
        path = fold_dir(run_dir, k)
        ingest, window = IngestRecord.read(path / "ingest"), WindowRecord.read(path / "window")
        trained = TrainRecord.read(path / "train")
        if ingest is None or window is None or trained is None:
            raise UserError(
                f"evaluate.backtest.refit: fold {k} has no trained model in {path}; run 'lstm-pipeline evaluate' "
                f"or 'lstm-pipeline run', which train the fold models first"
            )
        out.append((ingest, window, trained))
    return out


def refit_forecasts(
    run_dir: Path,
    ingest: IngestRecord,
    raw32: np.ndarray,
    observed: np.ndarray,
    plan: BacktestPlan,
    lookback: int,
    season: int,
    batch_size: int,
    state,
) -> RefitForecasts:
    """Every fold model's forecasts of its windows (called on every process; shards are gathered).

    The models read `raw32` (the values as ingested); the MASE scales come from `observed` (NaN where filled).

    `plan.pairs` start `lookback` (the main run's) before their cutoffs; a fold resolved its own
    lookback and transform from its data, and its model reads its windows with them.
    """
    series = ingest.series
    offsets = series.offsets
    output, window_scale, summaries = None, np.empty(len(plan.pairs)), []
    for k, (fold_ingest, window, trained) in enumerate(fold_records(run_dir, plan.folds), start=1):
        rows = np.flatnonzero(plan.fold == k)
        pairs = plan.pairs[rows].copy()
        pairs[:, 1] += lookback - window.lookback  # the same cutoffs, the fold's own input length
        listed = pairs[:, 0]
        # the fold's statistics (and embedding rows: positions in the fold) for its series, in the full buffer,
        # whose future covariates over the fold's horizon the model reads
        stats = series.stats.with_rows(listed, fold_ingest.series.stats)
        model = load_model(fold_dir(run_dir, k) / "train" / "best" / "model.safetensors", trained.model)
        with np.errstate(invalid="ignore"):  # log1p of a fold: values after its cutoffs are never its inputs
            buffer = WindowBuffer.for_model(
                model.spec, run_dir / "ingest", raw32, series.with_stats(stats), ingest.freq, window.lookback,
                fold_ingest.transform,
            )  # fmt: skip
        scaled = forecast_sharded(model, buffer, pairs, batch_size, state)
        if output is None:
            output = np.empty((len(plan.pairs), *scaled.shape[1:]))
        output[rows] = to_original_units(scaled, stats, listed, fold_ingest.transform)
        train_end = series.train_end.copy()
        train_end[listed] = fold_ingest.series.train_end
        window_scale[rows] = fold_mase_scale(observed, offsets, train_end, season, listed, series.ids, k)
        summaries.append(fold_summary(k, fold_ingest, window, trained))
    return RefitForecasts(output, window_scale, summaries)
