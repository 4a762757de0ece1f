"""Stage 4, evaluate: score every test window in original units against naive baselines.

The model, naive and seasonal-naive forecasts are scored on exactly the same windows
(`pipeline.library.scoring`). MASE divides by each series' in-sample seasonal-naive error on its
train part. With `evaluate.backtest.folds`, the same scoring runs on every fold of a
rolling-origin backtest: inside the test part with the trained model, or, with `refit: true`,
with the fold models `pipeline.orchestrators.refit` trained beforehand (this stage only reads
them: it never trains). Writes metrics.json, per_series.csv, forecasts.csv, plots and report.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.config.auto import resolve
from pipeline.library import metrics as M
from pipeline.library.artifacts import staged_dir, write_json_atomic
from pipeline.library.backtest import BacktestPlan, backtest_result, backtest_windows, refit_windows
from pipeline.library.base_choice import multi_name, smoothed_name
from pipeline.library.buffer import WindowBuffer
from pipeline.library.errors import ConfigError, shown
from pipeline.library.inference import forecast_sharded, load_model, point_of, to_original_units
from pipeline.library.records import EvaluateRecord, IngestRecord, SeriesTable, TrainRecord, is_cached
from pipeline.library.refit_folds import copy_fold_models, fold_records, refit_forecasts
from pipeline.library.report import report, write_plots
from pipeline.library.runtime import dist_state
from pipeline.library.scoring import METHODS, ScoredWindows, forecast_table, per_series_table, score
from pipeline.library.store import observed_values, read_filled, read_values
from pipeline.library.windows import read_index
from pipeline.stages.table import cache_key, check_trained_with, check_upstream, stage_dir
from pipeline.stages.tracking import open_tracker

log = logging.getLogger("pipeline")

BACKTEST_FORECASTS = "backtest_forecasts.csv"


def run(cfg: Config, force: bool = False) -> Path:
    out = stage_dir(cfg, "evaluate")
    trained = TrainRecord.require(stage_dir(cfg, "train"), "evaluate")
    check_upstream(cfg, "evaluate", trained)
    cfg = resolve(cfg)
    check_trained_with(cfg, trained, "evaluate")
    key = evaluate_key(cfg, trained)
    state = dist_state()
    if not force and is_cached(out, key):
        log.info("evaluate: up to date (inputs unchanged), skipped; --force redoes it")
        return out
    evaluate(cfg, key, trained, state)
    state.wait_for_everyone()
    return out


def evaluate_key(cfg: Config, trained: TrainRecord) -> str:
    """The model scored, the evaluate settings, and with refit the data settings and every fold model."""
    inputs = [trained.fingerprint]
    if refit(cfg):  # the folds' own splits use the data section (data.val_size) directly
        folds = fold_records(cfg.run_dir, cfg.evaluate.backtest.folds)
        inputs += [cfg.section_hash("data"), *(fold.fingerprint for _, _, fold in folds)]
    return cache_key("evaluate", cfg, *inputs)


def refit(cfg: Config) -> bool:
    """Whether the backtest scores a model per fold."""
    return bool(cfg.evaluate.backtest.folds) and cfg.evaluate.backtest.refit


def evaluate(cfg: Config, key: str, trained: TrainRecord, state) -> None:
    """All processes forecast their shard of the test (and backtest) windows; the main one scores and writes."""
    ingest_dir = stage_dir(cfg, "ingest")
    ingest = IngestRecord.require(ingest_dir, "evaluate")
    raw32 = read_values(ingest_dir)
    pairs = read_index(stage_dir(cfg, "window"))["test"]
    if len(pairs) == 0:
        raise ConfigError("evaluate: no test window; increase data.test_size or decrease window.horizon")
    plan = plan_backtest(cfg, ingest.series, pairs)
    all_pairs = np.concatenate([pairs, plan.pairs]).astype(np.int64)
    raw = raw32.astype(np.float64)
    observed = observed_values(raw32, read_filled(ingest_dir))  # NaN where data.missing filled: never scored
    window_scale, positions = checked_scales(cfg, ingest.series, observed, pairs, all_pairs)

    refitted = None
    if refit(cfg):
        season, batch = cfg.evaluate.season_length, cfg.evaluate.batch_size
        refitted = refit_forecasts(
            cfg.run_dir, ingest, raw32, observed, plan, cfg.window.lookback, season, batch, state
        )
    by_model = all_pairs if refitted is None else pairs  # refit: the fold models forecast the folds
    output = model_forecasts(cfg, trained, ingest, raw32, by_model, state)
    if not state.is_main_process:
        return
    if refitted is not None:  # the folds: their models' forecasts, MASE scaled by the train part each learnt from
        output = np.concatenate([output, refitted.output])
        window_scale[len(pairs) :] = refitted.window_scale
    windows = scored_windows(cfg, trained, raw, observed, all_pairs, positions, window_scale, output)
    test = windows.rows(slice(0, len(pairs)))
    terms, result = summarise_test(cfg, test, trained)
    folds_table = None
    if len(plan.pairs):
        backtest = windows.rows(slice(len(pairs), None))
        folds = refitted.folds if refitted is not None else None
        result["backtest"] = backtest_result(plan, backtest, ingest.series, cfg.window.lookback, ingest.freq, folds)
        folds_table = forecast_table(backtest, ingest.series, ingest.freq, ingest.zone, ingest.wall_clock)
        folds_table.insert(0, "fold", np.repeat(plan.fold, cfg.window.horizon))
    per_series = per_series_table(test, terms, ingest.series.ids)
    write_outputs(cfg, key, result, per_series, test, ingest, refitted, folds_table)


def plan_backtest(cfg: Config, series: SeriesTable, test_pairs: np.ndarray) -> BacktestPlan:
    """Backtest windows and their fold numbers for the series that have test windows (empty when off)."""
    bt, w = cfg.evaluate.backtest, cfg.window
    step = bt.step or w.horizon
    if not bt.folds:
        return BacktestPlan.empty(step)
    used = np.unique(test_pairs[:, 0])
    if bt.refit:
        season = cfg.evaluate.season_length
        args = (series.lengths, used, cfg.data.val_size, w.lookback, w.horizon, bt.folds, step, season, series.ids)
        bt_pairs, fold = refit_windows(*args)
    else:
        bt_pairs, fold = backtest_windows(
            series.lengths, series.val_end, used, w.lookback, w.horizon, bt.folds, step, series.ids
        )
    return BacktestPlan(bt_pairs, fold, bt.folds, step, bt.refit)


def checked_scales(cfg: Config, series: SeriesTable, raw: np.ndarray, pairs: np.ndarray, all_pairs: np.ndarray):
    """(MASE scale of every window, target positions of every window), refusing a season the data cannot carry."""
    w, season = cfg.window, cfg.evaluate.season_length
    offsets = series.offsets
    scale = M.mase_scale(raw, offsets, series.train_end, season)
    used = np.unique(pairs[:, 0])
    bad = used[np.isnan(scale[used]) | (scale[used] == 0)]
    if len(bad):
        name = series.ids[int(bad[0])]
        if scale[bad[0]] == 0:
            raise ConfigError(M.flat_season_message(season, shown(name)))
        raise ConfigError(
            f"evaluate.season_length ({season}): series '{shown(name)}' has a train part too short to scale MASE by"
        )
    positions = M.target_positions(offsets, all_pairs, w.lookback, w.horizon)
    if (positions.min(axis=1) - season * (1 + (w.horizon - 1) // season) < offsets[all_pairs[:, 0]]).any():
        raise ConfigError(f"evaluate.season_length ({season}) reaches before the start of a series")
    return scale[all_pairs[:, 0]], positions


def model_forecasts(cfg, trained: TrainRecord, ingest: IngestRecord, raw32, pairs: np.ndarray, state) -> np.ndarray:
    """The trained model's forecasts of `pairs` in original units (every process its shard, gathered)."""
    model = load_model(stage_dir(cfg, "train") / "best" / "model.safetensors", trained.model)
    buffer = WindowBuffer.for_model(
        model.spec, stage_dir(cfg, "ingest"), raw32, ingest.series, ingest.freq, cfg.window.lookback, ingest.transform
    )
    scaled = forecast_sharded(model, buffer, pairs, cfg.evaluate.batch_size, state)
    return to_original_units(scaled, ingest.series.stats, pairs[:, 0], ingest.transform)


def scored_windows(cfg, trained: TrainRecord, raw, observed, pairs, positions, window_scale, output) -> ScoredWindows:
    """The test and backtest windows with the model's and both baselines' forecasts.

    The baselines forecast from the values as ingested (`raw`, filled points included, as the model reads them);
    the actuals are the observed values (`observed`: NaN where `data.missing` filled one, left out of every score).
    """
    quantiles = list(trained.model.quantiles)
    forecasts = {
        "model": point_of(output, trained.model),
        "naive": M.naive_forecast(raw, positions),
        "seasonal_naive": M.seasonal_naive_forecast(raw, positions, cfg.evaluate.season_length),
    }
    band = output if quantiles else None
    return ScoredWindows(pairs, positions, observed[positions], forecasts, window_scale, quantiles, band)


def summarise_test(cfg: Config, test: ScoredWindows, trained: TrainRecord) -> tuple[dict, dict]:
    """(per-point terms, metrics.json without the backtest) of the test windows."""
    terms, block = score(test)
    result = {
        **block,
        "n_windows": len(test),
        "n_series": len(np.unique(test.series)),
        "filled_points": int(np.isnan(test.actual).sum()),  # not observed (data.missing): left out of every score
        "horizon": cfg.window.horizon,
        "season_length": cfg.evaluate.season_length,
        "mae_by_horizon": {m: M.mean(terms[m]["mae"], axis=0).tolist() for m in METHODS},
        "seasons": list(cfg.model.seasons),
        "base": describe_base(trained),
        "transform": cfg.data.transform,
    }
    if test.quantiles:
        result["quantiles"] = {"levels": test.quantiles, "point_forecast": "median (0.5)", **result["quantiles"]}
        result["quantiles"]["calibration"] = trained.calibration
    return terms, result


def describe_base(trained: TrainRecord) -> str:
    """The residual base in words, for metrics.json and report.md ("none" without a residual head)."""
    spec = trained.model
    how = "kept from the starting weights" if trained.base and trained.base.get("kept_from") else "chosen on validation"
    if trained.base is not None and trained.base.get("fallback_used"):
        return f"{trained.base['fallback']} ({how}; no correction kept over {trained.base['chosen']})"
    if trained.base is not None:
        return f"{trained.base['chosen']} ({how})"
    if not spec.residual_season:
        return "none"
    if spec.base == "multi":
        return multi_name(spec.seasons, spec.season_average, spec.recent_shapes)
    if spec.level_smoothing:  # named as the candidate of `model.base: validation` is
        return smoothed_name(spec.residual_season, spec.season_average, spec.level_smoothing)
    return f"profile {spec.residual_season} x {spec.season_average}"


def write_outputs(
    cfg, key, result: dict, per_series, test: ScoredWindows, ingest: IngestRecord, refitted, folds_table=None
) -> None:
    """evaluate/: metrics.json, per_series.csv, forecasts.csv (and backtest_forecasts.csv, the folds' rows with
    their fold number), plots, report.md (and the fold models), at once."""
    with staged_dir(stage_dir(cfg, "evaluate")) as tmp:
        write_json_atomic(tmp / "metrics.json", result)
        if refitted is not None:
            copy_fold_models(tmp, cfg.run_dir, cfg.evaluate.backtest.folds)
        per_series.to_csv(tmp / "per_series.csv", index=False)
        forecast_table(test, ingest.series, ingest.freq, ingest.zone, ingest.wall_clock).to_csv(
            tmp / "forecasts.csv", index=False
        )
        if folds_table is not None:
            folds_table.to_csv(tmp / BACKTEST_FORECASTS, index=False)
        plots = write_plots(tmp, test, ingest.series, ingest.freq, result, cfg.evaluate.plot_series)
        loss = "../train/loss.png" if (stage_dir(cfg, "train") / "loss.png").is_file() else None
        (tmp / "report.md").write_text(report(cfg.name, result, per_series, plots, loss))
        EvaluateRecord(key, config=cfg.to_dict()).write(tmp)
    _log_result(result)
    _track(cfg, result, per_series, stage_dir(cfg, "evaluate"), plots)


def _log_result(result: dict) -> None:
    m, b = result["model"], result["baselines"]
    log.info(
        "evaluate: test MASE model %.4f | naive %.4f | seasonal naive %.4f",
        m["mase"],
        b["naive"]["mase"],
        b["seasonal_naive"]["mase"],
    )
    if "quantiles" in result:
        q = result["quantiles"]
        cover = ", ".join(f"{k} {v['empirical']:.1%} (nominal {v['nominal']:.0%})" for k, v in q["coverage"].items())
        log.info("evaluate: pinball loss %.4g; coverage %s", q["pinball"], cover or "-")
    if "backtest" in result:
        agg = result["backtest"]["aggregate"]
        log.info(
            "evaluate: backtest over %d folds, MASE model %.4f | naive %.4f | seasonal naive %.4f",
            result["backtest"]["folds"],
            agg["model"]["mase"],
            agg["baselines"]["naive"]["mase"],
            agg["baselines"]["seasonal_naive"]["mase"],
        )


def _track(cfg: Config, result: dict, per_series, out: Path, plots: list[str]) -> None:
    """Test metrics of the model and both baselines as summary values, the per-series table, the plots."""
    tracker = open_tracker(cfg, "evaluate", True)
    try:
        flat = {f"test/model/{k}": v for k, v in result["model"].items()}
        for name, values in result["baselines"].items():
            flat.update({f"test/{name}/{k}": v for k, v in values.items()})
        flat.update({"test/n_windows": result["n_windows"], "test/n_series": result["n_series"]})
        flat.update(_quantile_scalars("test/model", result.get("quantiles")))
        if "backtest" in result:
            bt = result["backtest"]
            blocks = [("backtest", bt["aggregate"]), *((f"backtest/fold_{f['fold']}", f) for f in bt["per_fold"])]
            for prefix, block in blocks:
                flat.update({f"{prefix}/model/{k}": v for k, v in block["model"].items()})
                for name, values in block["baselines"].items():
                    flat.update({f"{prefix}/{name}/{k}": v for k, v in values.items()})
                flat.update(_quantile_scalars(f"{prefix}/model", block.get("quantiles")))
        tracker.summary(flat)
        tracker.table("test/per_series", per_series)
        tracker.images({f"plots/{p.removesuffix('.png')}": out / p for p in plots})
    finally:
        tracker.finish()


def _quantile_scalars(prefix: str, block: dict | None) -> dict[str, float]:
    if not block:
        return {}
    flat = {f"{prefix}/pinball": block["pinball"], f"{prefix}/scaled_pinball": block["scaled_pinball"]}
    flat.update({f"{prefix}/coverage_{k}": v["empirical"] for k, v in block["coverage"].items()})
    return flat
