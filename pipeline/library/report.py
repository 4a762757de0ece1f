"""evaluate's report.md and plots: what a person reads of a run's scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.library import metrics as M
from pipeline.library.records import SeriesTable
from pipeline.library.scoring import METHODS, ScoredWindows, forecast_times


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(
    directory: Path, windows: ScoredWindows, series: SeriesTable, freq: str, result: dict, plot_series: int
) -> list[str]:
    """Forecast vs actual for a few series (against their timestamps), and MAE by horizon step; the file names."""
    plt = _pyplot()
    horizon = windows.actual.shape[1]
    fig, ax = plt.subplots(figsize=(7, 4))
    for m in METHODS:
        ax.plot(np.arange(1, horizon + 1), result["mae_by_horizon"][m], label=m.replace("_", " "))
    ax.set(xlabel="horizon step", ylabel="MAE (original units)", title="Test error by horizon step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(directory / "error_by_horizon.png", dpi=100)
    plt.close(fig)
    names = ["error_by_horizon.png"]
    fig = forecast_figure(windows, series, freq, result, plot_series)
    if fig is not None:
        fig.savefig(directory / "forecasts.png", dpi=100)
        plt.close(fig)
        names.append("forecasts.png")
    return names


def forecast_figure(windows: ScoredWindows, series: SeriesTable, freq: str, result: dict, plot_series: int):
    """The last test windows of the `plot_series` series with the most of them, over real time (None: no window)."""
    plt = _pyplot()
    pairs, actual, band, forecasts = windows.pairs, windows.actual, windows.band, windows.forecasts
    horizon = actual.shape[1]
    counts = np.bincount(pairs[:, 0], minlength=len(series))
    chosen = [int(s) for s in np.argsort(-counts, kind="stable")[:plot_series] if counts[s] > 0]
    if not chosen:
        return None
    times = forecast_times(series, freq, pairs[:, 0], windows.positions - series.offsets[pairs[:, 0], None])
    fig, axes = plt.subplots(len(chosen), 1, figsize=(10, 2.6 * len(chosen)), squeeze=False)
    for ax, s in zip(axes[:, 0], chosen):
        rows = np.flatnonzero(pairs[:, 0] == s)[-max(1, 336 // horizon) :]
        t = times[rows].ravel()
        ax.plot(t, actual[rows].ravel(), color="black", lw=1, label="actual")
        if band is not None:
            levels = result["quantiles"]["levels"]
            for k, (i, j) in enumerate(M.symmetric_intervals(levels)):
                lo, hi = band[rows][..., i].ravel(), band[rows][..., j].ravel()
                name = M.interval_name(levels[i], levels[j])
                ax.fill_between(t, lo, hi, color="C0", alpha=0.15 + 0.1 * k, lw=0, label=f"model {name}")
        ax.plot(t, forecasts["model"][rows].ravel(), lw=1, label="model" if band is None else "model (median)")
        ax.plot(t, forecasts["seasonal_naive"][rows].ravel(), lw=0.8, ls="--", label="seasonal naive")
        ax.set_title(f"series {series.ids[s]} (last test windows)", fontsize=9)
    axes[0, 0].legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def write_loss_curve(metrics_jsonl: Path, path: Path) -> bool:
    """train/loss.png: the training loss and the validation loss by step (whatever the tracker); False: no rows."""
    rows = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train and not val:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for points, label in ((train, "train (logged steps)"), (val, "validation")):
        if points:
            ax.plot(*zip(*points), marker="o" if label == "validation" else None, ms=3, label=label)
    ax.set(xlabel="step", ylabel="loss (scaled units)", title="Training and validation loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def report(name: str, result: dict, per_series: pd.DataFrame, plots: list[str], loss_curve: str | None = None) -> str:
    """evaluate/report.md: the metrics table, the per-series spread, quantiles, backtest, the plots."""
    rows = [("model", result["model"]), *result["baselines"].items()]
    lines = [
        f"# Evaluation: {name}",
        "",
        f"{result['n_windows']} test windows over {result['n_series']} series, horizon {result['horizon']}, "
        f"season length {result['season_length']}. Errors in the data's original units; MASE is scaled by the "
        "in-sample seasonal-naive error of each series' train part." + _filled_sentence(result.get("filled_points", 0)),
        "",
        "| method | MAE | RMSE | sMAPE | MASE |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, m in rows:
        lines.append(
            f"| {name.replace('_', ' ')} | {m['mae']:.4g} | {m['rmse']:.4g} | {m['smape']:.3f} | {m['mase']:.4f} |"
        )
    wins = int((per_series["model_mase"] < per_series["seasonal_naive_mase"]).sum())
    if "base" in result:
        seasons = ", ".join(map(str, result["seasons"])) or "none"
        transform = f"; target transform: {result['transform']}" if result.get("transform", "none") != "none" else ""
        lines += ["", f"Seasons (steps): {seasons}; residual base: {result['base']}{transform}."]
    lines += ["", f"The model beats seasonal naive on {wins} of {len(per_series)} series (per-series MASE).", ""]
    if len(per_series) > 1:
        lines += _per_series_lines(per_series)
    if "quantiles" in result:
        lines += _quantile_lines(result["quantiles"])
    if "backtest" in result:
        lines += _backtest_lines(result["backtest"])
    lines += [f"![{p}]({p})" for p in plots]
    if loss_curve:
        lines += ["", f"Training: ![loss by step]({loss_curve})"]
    return "\n".join(lines) + "\n"


def _filled_sentence(filled: int) -> str:
    if not filled:
        return ""
    return (
        f" {filled} points of the test windows were filled by data.missing, not observed: they are left out of every "
        "score (and of the MASE scales)."
    )


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
    ]
    if not block["coverage"]:  # no (q, 1 - q) pair: nothing to score coverage on, nothing calibrated
        return [
            *lines,
            "No central interval among the quantiles (a pair q and 1 - q): no coverage to report, and nothing was "
            "calibrated on the validation windows (model.calibrate widens central intervals).",
            "",
        ]
    lines += ["| interval | nominal coverage | empirical coverage |", "| --- | ---: | ---: |"]
    for name, c in block["coverage"].items():
        lines.append(f"| {name} | {c['nominal']:.0%} | {c['empirical']:.1%} |")
    if block.get("calibration"):
        cal = "; ".join(
            f"{k}: {c['val_coverage_before']:.1%} before, {c['val_coverage_after']:.1%} after"
            for k, c in block["calibration"].items()
        )
        band = " and model.calibration_band" if any("mean_band" in c for c in block["calibration"].values()) else ""
        lines += [
            "",
            f"Intervals calibrated on the validation windows (model.calibrate{band}; validation coverage {cal}).",
        ]
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
        cover = f"; coverage {cover}" if cover else " (no central interval to cover)"
        lines.append(f"\nPooled pinball loss {agg['quantiles']['pinball']:.4g}{cover}.")
    return [*lines, ""]
