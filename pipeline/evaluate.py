"""Stage 4, evaluate: score every test window in original units against naive baselines.

The model, naive and seasonal-naive forecasts are scored on exactly the same windows. MASE
divides by each series' in-sample seasonal-naive error on its train part. A quantile model
is scored by its median for the point metrics, plus the pinball loss and the coverage of its
central intervals. With `evaluate.backtest.folds`, the same scoring runs on every fold of a
rolling-origin backtest: inside the test part with the trained model (`pipeline.backtest`), or,
with `refit: true`, with a model retrained per fold on the data before its cutoff
(`pipeline.refit`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from pipeline import auto, refit, scaling
from pipeline import metrics as M
from pipeline.artifacts import META, is_cached, require_stage, stage_key, staged_dir, write_json_atomic
from pipeline.backtest import backtest_windows, describe_folds
from pipeline.calendar import fixed_step_ns
from pipeline.chunks import offsets_of, record_offsets
from pipeline.config import Config
from pipeline.data import WindowBuffer
from pipeline.errors import ConfigError
from pipeline.ingest import load_ingest
from pipeline.model import ModelSpec, build_model
from pipeline.runtime import dist_state
from pipeline.tracking import open_tracker
from pipeline.window import load_index

log = logging.getLogger("pipeline")

METHODS = ("model", "naive", "seasonal_naive")


def run(cfg: Config, force: bool = False) -> Path:
    out = cfg.run_dir / "evaluate"
    train_meta = require_stage(cfg.run_dir / "train", "train", "evaluate")
    cfg = auto.resolve(cfg)
    key = stage_key("evaluate", cfg.section_hash("evaluate"), train_meta["fingerprint"])
    if bt_refit(cfg):  # the folds' own splits use the data section (data.val_size) directly
        key = stage_key(key, cfg.section_hash("data"))
    state = dist_state()
    if not force and is_cached(out, key):
        log.info("evaluate: up to date (inputs unchanged), skipped; --force redoes it")
        return out
    evaluate(cfg, key, train_meta, state, force)
    state.wait_for_everyone()
    return out


def load_trained_model(train_dir: Path, meta: dict) -> torch.nn.Module:
    """The best checkpoint by validation loss, in eval mode on the CPU."""
    model = build_model(ModelSpec(**meta["model"]))
    model.load_state_dict(load_file(str(train_dir / "best" / "model.safetensors")))
    return model.eval()


@torch.no_grad()
def forecast_windows(model: torch.nn.Module, buffer: WindowBuffer, pairs: np.ndarray, batch_size: int) -> np.ndarray:
    """Scaled forecasts (W, horizon) for all windows, batched (never a loop per window)."""
    out = np.empty((len(pairs), *model.spec.output_shape), dtype=np.float32)
    tensor = torch.from_numpy(pairs)
    for start in range(0, len(pairs), batch_size):
        x, _ = buffer.gather(tensor[start : start + batch_size])
        out[start : start + batch_size] = model(x).float().numpy()
    return out


def forecast_sharded(model, buffer: WindowBuffer, pairs: np.ndarray, batch_size: int, state) -> np.ndarray:
    """Each process forecasts a contiguous shard; the shards are gathered back in order.

    Every window is scored exactly once, whatever the number of processes (no padding, no
    duplicated samples as with a distributed sampler).
    """
    shards = np.array_split(np.arange(len(pairs)), state.num_processes)
    mine = forecast_windows(model, buffer, pairs[shards[state.process_index]], batch_size)
    if state.num_processes == 1:
        return mine
    from accelerate.utils import gather_object

    return np.concatenate(gather_object([mine]))


def to_original_units(scaled: np.ndarray, records: list[dict], series: np.ndarray, transform: str) -> np.ndarray:
    """Model outputs (W, horizon[, Q]) in scaled space back to the data's units, in float64."""
    shape = (-1,) + (1,) * (scaled.ndim - 1)
    loc = np.array([r["mean"] for r in records])[series].reshape(shape)
    spread = np.array([r["scale"] for r in records])[series].reshape(shape)
    return scaling.inverse(scaled, loc, spread, transform)


def point_of(output: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The point forecast of a model output: itself, or the median of a quantile forecast."""
    return output if spec.median_index is None else output[..., spec.median_index]


def score(actual: np.ndarray, forecasts: dict, window_scale: np.ndarray, quantile_output, quantiles) -> tuple:
    """(per-point terms of each method, the metrics block) on one set of windows."""
    terms = {m: M.error_terms(actual, f, window_scale) for m, f in forecasts.items()}
    block = {"model": M.summarise(terms["model"]), "baselines": {m: M.summarise(terms[m]) for m in METHODS[1:]}}
    if quantiles:
        block["quantiles"] = M.summarise_quantiles(actual, quantile_output, quantiles, window_scale)
    return terms, block


def plan_backtest(cfg: Config, records: list[dict], test_pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Backtest windows and their fold numbers for the series that have test windows (empty when off)."""
    bt = cfg.evaluate.backtest
    if not bt.folds:
        return np.empty((0, 2), dtype=np.int64), np.empty(0, dtype=np.int64)
    lengths = np.array([r["length"] for r in records])
    val_end = np.array([r["val_end"] for r in records])
    w = cfg.window
    series = np.unique(test_pairs[:, 0])
    ids = [r["id"] for r in records]
    step, season = bt.step or w.horizon, cfg.evaluate.season_length
    if bt.refit:
        return refit.refit_windows(
            lengths, series, cfg.data.val_size, w.lookback, w.horizon, bt.folds, step, season, ids
        )
    return backtest_windows(lengths, val_end, series, w.lookback, w.horizon, bt.folds, step, ids)


def evaluate(cfg: Config, key: str, train_meta: dict, state, force: bool = False) -> None:
    """All processes forecast their shard of the test windows; the main one scores and writes.

    With a refit backtest, all processes first train (or reuse) the fold models; `force` retrains them.
    """
    ingest_meta, raw32 = load_ingest(cfg.run_dir, "evaluate")
    _, index = load_index(cfg.run_dir, "evaluate")
    records = ingest_meta["series"]
    transform = ingest_meta.get("transform", "none")
    pairs = index["test"]
    if len(pairs) == 0:
        raise ConfigError("evaluate: no test window; increase data.test_size or decrease window.horizon")
    bt_pairs, bt_fold = plan_backtest(cfg, records, pairs)
    n_test = len(pairs)
    all_pairs = np.concatenate([pairs, bt_pairs]).astype(np.int64)
    w, season = cfg.window, cfg.evaluate.season_length
    raw = raw32.astype(np.float64)
    offsets = record_offsets(records)
    train_end = np.array([r["train_end"] for r in records])
    scale = M.mase_scale(raw, offsets, train_end, season)
    used = np.unique(pairs[:, 0])
    if np.isnan(scale[used]).any() or (scale[used] == 0).any():
        bad = records[int(used[np.isnan(scale[used]) | (scale[used] == 0)][0])]["id"]
        raise ConfigError(
            f"evaluate.season_length ({season}): series '{bad}' has no seasonal variation on its train part "
            f"to scale MASE by (train part of {bad} too short or constant)"
        )
    all_positions = M.target_positions(offsets, all_pairs, w.lookback, w.horizon)
    if (all_positions.min(axis=1) - season * (1 + (w.horizon - 1) // season) < offsets[all_pairs[:, 0]]).any():
        raise ConfigError(f"evaluate.season_length ({season}) reaches before the start of a series")

    refitted = refit.run_folds(cfg, ingest_meta, raw32, bt_pairs, bt_fold, force, state) if bt_refit(cfg) else None
    model = load_trained_model(cfg.run_dir / "train", train_meta)
    buffer = WindowBuffer.for_model(
        model.spec, cfg.run_dir / "ingest", raw32, records, ingest_meta["freq"], w.lookback, transform
    )
    by_main_model = all_pairs if refitted is None else pairs  # refit: fold models forecast the folds
    scaled = forecast_sharded(model, buffer, by_main_model, cfg.evaluate.batch_size, state)
    if not state.is_main_process:
        return
    spec, quantiles = model.spec, list(model.spec.quantiles)
    output = to_original_units(scaled, records, by_main_model[:, 0], transform)
    if refitted is not None:
        output = np.concatenate([output, refitted.output])
    all_forecasts = {
        "model": point_of(output, spec),
        "naive": M.naive_forecast(raw, all_positions),
        "seasonal_naive": M.seasonal_naive_forecast(raw, all_positions, season),
    }
    all_actual, all_scale = raw[all_positions], scale[all_pairs[:, 0]]
    if refitted is not None:  # a fold's MASE scale: the train part its model learnt from
        all_scale[n_test:] = refitted.window_scale
    test = slice(0, n_test)
    positions, actual, band = all_positions[test], all_actual[test], output[test] if quantiles else None
    forecasts = {m: f[test] for m, f in all_forecasts.items()}
    terms, block = score(actual, forecasts, all_scale[test], band, quantiles)
    result = {
        **block,
        "n_windows": n_test,
        "n_series": len(used),
        "horizon": w.horizon,
        "season_length": season,
        "mae_by_horizon": {m: terms[m]["mae"].mean(axis=0).tolist() for m in METHODS},
    }
    if quantiles:
        result["quantiles"] = {"levels": quantiles, "point_forecast": "median (0.5)", **result["quantiles"]}
        result["quantiles"]["calibration"] = train_meta.get("calibration")
    if len(bt_pairs):
        rest = slice(n_test, None)
        result["backtest"] = backtest_result(
            cfg, bt_fold, bt_pairs, all_actual[rest], {m: f[rest] for m, f in all_forecasts.items()},
            all_scale[rest], output[rest] if quantiles else None, quantiles, records, ingest_meta["freq"],
            refitted.folds if refitted is not None else None,
        )  # fmt: skip
    per_series = per_series_table(terms, pairs[:, 0], records, actual, band, quantiles)

    with staged_dir(cfg.run_dir / "evaluate") as tmp:
        write_json_atomic(tmp / "metrics.json", result)
        if refitted is not None:
            refit.record(tmp, cfg.run_dir, cfg.evaluate.backtest.folds)
        per_series.to_csv(tmp / "per_series.csv", index=False)
        steps = positions - offsets[pairs[:, 0], None]
        table = forecast_table(records, ingest_meta["freq"], pairs, steps, actual, forecasts, band, quantiles)
        table.to_csv(tmp / "forecasts.csv", index=False)
        plots = write_plots(tmp, cfg, records, pairs, positions, actual, forecasts, result, band, offsets)
        (tmp / "report.md").write_text(report(cfg, result, per_series, plots))
        write_json_atomic(tmp / META, {"stage": "evaluate", "key": key, "fingerprint": key})
    _log_result(result)
    _track(cfg, result, per_series, cfg.run_dir / "evaluate", plots)


def forecast_table(
    records: list[dict],
    freq: str,
    pairs: np.ndarray,
    steps: np.ndarray,
    actual: np.ndarray,
    forecasts: dict[str, np.ndarray],
    band: np.ndarray | None,
    quantiles: list[float],
) -> pd.DataFrame:
    """forecasts.csv: a row per scored test point, so anyone can recompute the metrics and the coverage.

    Columns: series, origin (the time of the window's first forecast step), time, step (1 ahead
    to horizon ahead), actual, forecast (the median of a quantile model), `q<level>` for the
    other quantiles, naive, seasonal_naive. `steps` (W, horizon) are the points' positions
    within their series.
    """
    step_ns = fixed_step_ns(pd.tseries.frequencies.to_offset(freq))
    starts = pd.DatetimeIndex([r["start"] for r in records]).as_unit("ns").to_numpy()
    series = pairs[:, 0]
    if step_ns:
        times = (starts[series].view(np.int64)[:, None] + steps * step_ns).view("datetime64[ns]")
    else:  # calendar steps (months, quarters): each series' grid once, then one gather for every window
        used, slot = np.unique(series, return_inverse=True)
        longest = np.zeros(len(used), dtype=np.int64)
        np.maximum.at(longest, slot, steps.max(axis=1))
        grids = [pd.date_range(starts[s], periods=int(n) + 1, freq=freq).to_numpy() for s, n in zip(used, longest)]
        times = np.concatenate(grids)[offsets_of(longest + 1)[slot, None] + steps]
    horizon = steps.shape[1]
    return pd.DataFrame(
        {
            "series": np.repeat(np.array([r["id"] for r in records], dtype=object)[series], horizon),
            "origin": np.repeat(times[:, 0], horizon),
            "time": times.ravel(),
            "step": np.tile(np.arange(1, horizon + 1), len(series)),
            "actual": actual.ravel(),
            "forecast": forecasts["model"].ravel(),
            **{name: values.ravel() for name, values in quantile_columns(band, quantiles).items()},
            "naive": forecasts["naive"].ravel(),
            "seasonal_naive": forecasts["seasonal_naive"].ravel(),
        }
    )


def quantile_columns(band: np.ndarray | None, quantiles: list[float]) -> dict[str, np.ndarray]:
    """`q<level>` columns of a quantile model's band (the median is the `model` column)."""
    if band is None:
        return {}
    return {f"q{q:g}": band[..., k] for k, q in enumerate(quantiles) if q != 0.5}


def bt_refit(cfg: Config) -> bool:
    """Whether the backtest retrains a model per fold."""
    return bool(cfg.evaluate.backtest.folds) and cfg.evaluate.backtest.refit


def backtest_result(cfg, fold, pairs, actual, forecasts, window_scale, band, quantiles, records, freq, refitted=None):
    """metrics.json's `backtest`: the fold layout, each fold's metrics (and model, with refit), all folds pooled."""
    bt = cfg.evaluate.backtest
    folds = describe_folds(fold, pairs, records, cfg.window.lookback, freq)
    for entry, trained in zip(folds, refitted or [None] * len(folds), strict=True):
        if trained is not None:
            entry["refit"] = trained
        rows = fold == entry["fold"]
        _, block = score(
            actual[rows], {m: f[rows] for m, f in forecasts.items()}, window_scale[rows],
            band[rows] if band is not None else None, quantiles,
        )  # fmt: skip
        entry.update(block)
    _, pooled = score(actual, forecasts, window_scale, band, quantiles)
    return {
        "folds": bt.folds,
        "step": bt.step or cfg.window.horizon,
        "refit": bt.refit,
        "placement": REFIT_PLACEMENT if bt.refit else NO_REFIT_PLACEMENT,
        "per_fold": folds,
        "aggregate": pooled,
    }


NO_REFIT_PLACEMENT = "inside the test part: no fold's forecast window overlaps the train or validation part"
REFIT_PLACEMENT = (
    "anywhere that leaves each series a train and a validation part before the fold's cutoff: each fold is "
    "forecast by a model trained only on the data before its cutoff (validation part carved from its end; "
    "scaling statistics and the fold's MASE scale from the rest, its train part)"
)


def per_series_table(terms: dict, series: np.ndarray, records: list[dict], actual, band, quantiles) -> pd.DataFrame:
    n = len(records)
    by = {m: M.summarise_by_series(t, series, n) for m, t in terms.items()}
    counts = np.bincount(series, minlength=n)
    keep = counts > 0
    table = {"series": [r["id"] for r in records], "n_windows": counts}
    for metric in M.METRICS:
        table[f"model_{metric}"] = by["model"][metric]
    table["naive_mase"] = by["naive"]["mase"]
    table["seasonal_naive_mase"] = by["seasonal_naive"]["mase"]
    if quantiles:
        points = np.bincount(series, minlength=n) * actual.shape[1]
        pinball = M.pinball_terms(actual, band, quantiles).mean(axis=2).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            table["model_pinball"] = np.bincount(series, weights=pinball, minlength=n) / points
            for i, j in M.symmetric_intervals(quantiles):
                inside = M.coverage_terms(actual, band[..., i], band[..., j]).sum(axis=1)
                name = M.interval_name(quantiles[i], quantiles[j])
                table[f"model_coverage_{name}"] = np.bincount(series, weights=inside, minlength=n) / points
    return pd.DataFrame(table)[keep].reset_index(drop=True)


def write_plots(tmp: Path, cfg, records, pairs, positions, actual, forecasts, result, band, offsets) -> list[str]:
    """Forecast vs actual for a few series, and MAE by horizon step; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    steps = np.arange(1, cfg.window.horizon + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    for m in METHODS:
        ax.plot(steps, result["mae_by_horizon"][m], label=m.replace("_", " "))
    ax.set(xlabel="horizon step", ylabel="MAE (original units)", title="Test error by horizon step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(tmp / "error_by_horizon.png", dpi=100)
    plt.close(fig)
    names.append("error_by_horizon.png")

    counts = np.bincount(pairs[:, 0], minlength=len(records))
    chosen = np.argsort(-counts, kind="stable")[: cfg.evaluate.plot_series]
    chosen = [int(s) for s in chosen if counts[s] > 0]
    if chosen:
        fig, axes = plt.subplots(len(chosen), 1, figsize=(10, 2.6 * len(chosen)), squeeze=False)
        for ax, s in zip(axes[:, 0], chosen):
            rows = np.flatnonzero(pairs[:, 0] == s)[-max(1, 336 // cfg.window.horizon) :]
            t = positions[rows].ravel() - offsets[s]
            ax.plot(t, actual[rows].ravel(), color="black", lw=1, label="actual")
            if band is not None:
                for k, (i, j) in enumerate(M.symmetric_intervals(result["quantiles"]["levels"])):
                    lo, hi = band[rows][..., i].ravel(), band[rows][..., j].ravel()
                    name = M.interval_name(result["quantiles"]["levels"][i], result["quantiles"]["levels"][j])
                    ax.fill_between(t, lo, hi, color="C0", alpha=0.15 + 0.1 * k, lw=0, label=f"model {name}")
            ax.plot(t, forecasts["model"][rows].ravel(), lw=1, label="model" if band is None else "model (median)")
            ax.plot(t, forecasts["seasonal_naive"][rows].ravel(), lw=0.8, ls="--", label="seasonal naive")
            ax.set_title(f"series {records[s]['id']} (last test windows)", fontsize=9)
            ax.set_xlabel("step in series")
        axes[0, 0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(tmp / "forecasts.png", dpi=100)
        plt.close(fig)
        names.append("forecasts.png")
    return names


def report(cfg: Config, result: dict, per_series: pd.DataFrame, plots: list[str]) -> str:
    rows = [("model", result["model"]), *result["baselines"].items()]
    lines = [
        f"# Evaluation: {cfg.name}",
        "",
        f"{result['n_windows']} test windows over {result['n_series']} series, horizon {result['horizon']}, "
        f"season length {result['season_length']}. Errors in the data's original units; MASE is scaled by the "
        "in-sample seasonal-naive error of each series' train part.",
        "",
        "| method | MAE | RMSE | sMAPE | MASE |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, m in rows:
        lines.append(
            f"| {name.replace('_', ' ')} | {m['mae']:.4g} | {m['rmse']:.4g} | {m['smape']:.3f} | {m['mase']:.4f} |"
        )
    wins = int((per_series["model_mase"] < per_series["seasonal_naive_mase"]).sum())
    lines += ["", f"The model beats seasonal naive on {wins} of {len(per_series)} series (per-series MASE).", ""]
    if len(per_series) > 1:
        lines += _per_series_lines(per_series)
    if "quantiles" in result:
        lines += _quantile_lines(result["quantiles"])
    if "backtest" in result:
        lines += _backtest_lines(result["backtest"])
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _per_series_lines(per_series: pd.DataFrame) -> list[str]:
    """Spread of the per-series MASE (per_series.csv has every series)."""
    ratio = per_series["model_mase"] / per_series["seasonal_naive_mase"]
    q = per_series["model_mase"].quantile([0.1, 0.5, 0.9])
    worst = per_series.loc[ratio.nlargest(min(3, len(ratio))).index, "series"].tolist()
    return [
        f"Per-series model MASE: 10% {q[0.1]:.4f}, median {q[0.5]:.4f}, 90% {q[0.9]:.4f}; model / seasonal-naive "
        f"MASE median {ratio.median():.3f}; largest ratios: {', '.join(map(str, worst))} (all series in "
        "per_series.csv).",
        "",
    ]


def _quantile_lines(block: dict) -> list[str]:
    levels = ", ".join(f"{q:g}" for q in block["levels"])
    lines = [
        "## Quantile forecast",
        "",
        f"Quantiles {levels}; the point metrics above score the median. Mean pinball loss "
        f"{block['pinball']:.4g} (original units; {block['scaled_pinball']:.4f} scaled like MASE).",
        "",
        "| interval | nominal coverage | empirical coverage |",
        "| --- | ---: | ---: |",
    ]
    for name, c in block["coverage"].items():
        lines.append(f"| {name} | {c['nominal']:.0%} | {c['empirical']:.1%} |")
    if block.get("calibration"):
        cal = "; ".join(
            f"{k}: {c['val_coverage_before']:.1%} before, {c['val_coverage_after']:.1%} after"
            for k, c in block["calibration"].items()
        )
        lines += ["", f"Intervals calibrated on the validation windows (model.calibrate; validation coverage {cal})."]
    elif block.get("coverage"):
        lines += ["", "Intervals not calibrated (model.calibrate: false)."]
    return [*lines, ""]


def _backtest_lines(bt: dict) -> list[str]:
    lines = [
        "## Backtest",
        "",
        f"{bt['folds']} rolling origins {bt['step']} steps apart, "
        + ("refit: folds lie " if bt["refit"] else "no refit; folds lie ")
        + f"{bt['placement']}. MASE per fold:",
        "",
        "| fold | cutoffs | windows | model | naive | seasonal naive |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for f in bt["per_fold"]:
        when = (
            f["first_cutoff"] if f["first_cutoff"] == f["last_cutoff"] else f"{f['first_cutoff']} .. {f['last_cutoff']}"
        )
        b = f["baselines"]
        lines.append(
            f"| {f['fold']} | {when} | {f['n_windows']} | {f['model']['mase']:.4f} | {b['naive']['mase']:.4f} "
            f"| {b['seasonal_naive']['mase']:.4f} |"
        )
    agg = bt["aggregate"]
    lines += [
        "",
        "All folds pooled:",
        "",
        "| method | MAE | RMSE | sMAPE | MASE |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, m in [("model", agg["model"]), *agg["baselines"].items()]:
        lines.append(
            f"| {name.replace('_', ' ')} | {m['mae']:.4g} | {m['rmse']:.4g} | {m['smape']:.3f} | {m['mase']:.4f} |"
        )
    if "quantiles" in agg:
        cover = ", ".join(f"{k} {v['empirical']:.1%}" for k, v in agg["quantiles"]["coverage"].items())
        lines.append(f"\nPooled pinball loss {agg['quantiles']['pinball']:.4g}; coverage {cover}.")
    return [*lines, ""]


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


def _track(cfg: Config, result: dict, per_series: pd.DataFrame, out: Path, plots: list[str]) -> None:
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
