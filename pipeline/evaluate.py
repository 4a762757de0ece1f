"""Stage 4, evaluate: score every test window in original units against naive baselines.

The model, naive and seasonal-naive forecasts are scored on exactly the same windows. MASE
divides by each series' in-sample seasonal-naive error on its train part.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from pipeline import auto
from pipeline import metrics as M
from pipeline.artifacts import META, is_cached, require_stage, stage_key, staged_dir, write_json_atomic
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
    state = dist_state()
    if not force and is_cached(out, key):
        log.info("evaluate: up to date (inputs unchanged), skipped; --force redoes it")
        return out
    evaluate(cfg, key, train_meta, state)
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
    out = np.empty((len(pairs), buffer.horizon), dtype=np.float32)
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


def evaluate(cfg: Config, key: str, train_meta: dict, state) -> None:
    """All processes forecast their shard of the test windows; the main one scores and writes."""
    ingest_meta, raw32 = load_ingest(cfg.run_dir, "evaluate")
    _, index = load_index(cfg.run_dir, "evaluate")
    records = ingest_meta["series"]
    pairs = index["test"]
    if len(pairs) == 0:
        raise ConfigError("evaluate: no test window; increase data.test_size or decrease window.horizon")
    w, season = cfg.window, cfg.evaluate.season_length
    raw = raw32.astype(np.float64)
    offsets = np.concatenate([[0], np.cumsum([r["length"] for r in records])[:-1]]).astype(np.int64)
    train_end = np.array([r["train_end"] for r in records])
    scale = M.mase_scale(raw, offsets, train_end, season)
    used = np.unique(pairs[:, 0])
    if np.isnan(scale[used]).any() or (scale[used] == 0).any():
        bad = records[int(used[np.isnan(scale[used]) | (scale[used] == 0)][0])]["id"]
        raise ConfigError(
            f"evaluate.season_length ({season}): series '{bad}' has no seasonal variation on its train part "
            f"to scale MASE by (train part of {bad} too short or constant)"
        )
    positions = M.target_positions(offsets, pairs, w.lookback, w.horizon)
    if (positions.min(axis=1) - season * (1 + (w.horizon - 1) // season) < offsets[pairs[:, 0]]).any():
        raise ConfigError(f"evaluate.season_length ({season}) reaches before the start of a series")

    buffer = WindowBuffer.from_ingest(raw32, records, w.lookback, w.horizon)
    model = load_trained_model(cfg.run_dir / "train", train_meta)
    scaled = forecast_sharded(model, buffer, pairs, cfg.evaluate.batch_size, state)
    if not state.is_main_process:
        return
    mean = np.array([r["mean"] for r in records])[pairs[:, 0]]
    std = np.array([r["scale"] for r in records])[pairs[:, 0]]
    forecasts = {
        "model": scaled.astype(np.float64) * std[:, None] + mean[:, None],
        "naive": M.naive_forecast(raw, positions),
        "seasonal_naive": M.seasonal_naive_forecast(raw, positions, season),
    }
    actual = raw[positions]
    window_scale = scale[pairs[:, 0]]
    terms = {m: M.error_terms(actual, f, window_scale) for m, f in forecasts.items()}
    result = {
        "model": M.summarise(terms["model"]),
        "baselines": {m: M.summarise(terms[m]) for m in METHODS[1:]},
        "n_windows": len(pairs),
        "n_series": len(used),
        "horizon": w.horizon,
        "season_length": season,
        "mae_by_horizon": {m: terms[m]["mae"].mean(axis=0).tolist() for m in METHODS},
    }
    per_series = per_series_table(terms, pairs[:, 0], records)

    with staged_dir(cfg.run_dir / "evaluate") as tmp:
        write_json_atomic(tmp / "metrics.json", result)
        per_series.to_csv(tmp / "per_series.csv", index=False)
        plots = write_plots(tmp, cfg, records, pairs, positions, actual, forecasts, result, raw, offsets)
        (tmp / "report.md").write_text(report(cfg, result, per_series, plots))
        write_json_atomic(tmp / META, {"stage": "evaluate", "key": key, "fingerprint": key})
    _log_result(result)
    _track(cfg, result, per_series, cfg.run_dir / "evaluate", plots)


def per_series_table(terms: dict, series: np.ndarray, records: list[dict]) -> pd.DataFrame:
    n = len(records)
    by = {m: M.summarise_by_series(t, series, n) for m, t in terms.items()}
    counts = np.bincount(series, minlength=n)
    keep = counts > 0
    table = {"series": [r["id"] for r in records], "n_windows": counts}
    for metric in M.METRICS:
        table[f"model_{metric}"] = by["model"][metric]
    table["naive_mase"] = by["naive"]["mase"]
    table["seasonal_naive_mase"] = by["seasonal_naive"]["mase"]
    return pd.DataFrame(table)[keep].reset_index(drop=True)


def write_plots(tmp: Path, cfg, records, pairs, positions, actual, forecasts, result, raw, offsets) -> list[str]:
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
            ax.plot(t, forecasts["model"][rows].ravel(), lw=1, label="model")
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
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _log_result(result: dict) -> None:
    m, b = result["model"], result["baselines"]
    log.info(
        "evaluate: test MASE model %.4f | naive %.4f | seasonal naive %.4f",
        m["mase"],
        b["naive"]["mase"],
        b["seasonal_naive"]["mase"],
    )


def _track(cfg: Config, result: dict, per_series: pd.DataFrame, out: Path, plots: list[str]) -> None:
    """Test metrics of the model and both baselines as summary values, the per-series table, the plots."""
    tracker = open_tracker(cfg, "evaluate", True)
    try:
        flat = {f"test/model/{k}": v for k, v in result["model"].items()}
        for name, values in result["baselines"].items():
            flat.update({f"test/{name}/{k}": v for k, v in values.items()})
        flat.update({"test/n_windows": result["n_windows"], "test/n_series": result["n_series"]})
        tracker.summary(flat)
        tracker.table("test/per_series", per_series)
        tracker.images({f"plots/{p.removesuffix('.png')}": out / p for p in plots})
    finally:
        tracker.finish()
