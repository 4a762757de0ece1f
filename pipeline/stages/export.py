"""Stage 5, export: a self-contained model directory that serves without the training code.

Writes model.safetensors, forecaster.json (`ForecasterSpec`: network spec, window, frequency,
per-series scaler), config.yaml, model.onnx (dynamic batch; checked against PyTorch with ONNX
Runtime on every test window), a model card, and manifest.json with the sha256 of every file.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import yaml

from pipeline import __version__
from pipeline.config import Config
from pipeline.config.auto import resolve
from pipeline.library.artifacts import sha256_file, staged_dir, write_json_atomic
from pipeline.library.buffer import WindowBuffer
from pipeline.library.forecaster import MANIFEST
from pipeline.library.inference import load_model
from pipeline.library.onnx_export import export_onnx
from pipeline.library.records import (
    SPEC_FILE,
    EvaluateRecord,
    ExportRecord,
    ForecasterSpec,
    IngestRecord,
    ServedSeries,
    TrainRecord,
    is_cached,
)
from pipeline.library.runtime import dist_state
from pipeline.library.store import read_values
from pipeline.library.windows import read_index
from pipeline.stages.table import cache_key, check_trained_with, check_upstream, stage_dir
from pipeline.stages.tracking import open_tracker, weights_artifact

log = logging.getLogger("pipeline")


def run(cfg: Config, force: bool = False) -> Path:
    out = stage_dir(cfg, "export")
    trained = TrainRecord.require(stage_dir(cfg, "train"), "export")
    check_upstream(cfg, "export", trained)
    cfg = resolve(cfg)
    check_trained_with(cfg, trained, "export")
    scored = EvaluateRecord.read(stage_dir(cfg, "evaluate"))
    key = cache_key("export", cfg, trained.fingerprint, scored.key if scored is not None else "")
    state = dist_state()
    if not force and is_cached(out, key):
        log.info("export: up to date (inputs unchanged), skipped; --force redoes it")
        return out
    if state.is_main_process:
        export(cfg, key, trained)
    state.wait_for_everyone()
    return out


def export(cfg: Config, key: str, trained: TrainRecord) -> None:
    ingest_dir = stage_dir(cfg, "ingest")
    ingest = IngestRecord.require(ingest_dir, "export")
    index = read_index(stage_dir(cfg, "window"))
    best = stage_dir(cfg, "train") / "best" / "model.safetensors"
    model = load_model(best, trained.model)
    metrics_path = stage_dir(cfg, "evaluate") / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    spec = forecaster_spec(cfg, trained, ingest, metrics)

    with staged_dir(stage_dir(cfg, "export")) as tmp:
        shutil.copyfile(best, tmp / "model.safetensors")
        (tmp / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=2))
        (tmp / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        parity = None
        if cfg.export.onnx:
            buffer = WindowBuffer.for_model(
                model.spec, ingest_dir, read_values(ingest_dir), ingest.series, ingest.freq, cfg.window.lookback,
                ingest.transform,
            )  # fmt: skip
            pairs = index["test"] if len(index["test"]) else index["val"]
            parity = export_onnx(model, buffer, pairs, tmp / "model.onnx", cfg.export.parity_atol)
        (tmp / "README.md").write_text(model_card(cfg, spec, metrics, parity))
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json_atomic(tmp / MANIFEST, {"files": files})
        ExportRecord(key, parity, config=cfg.to_dict()).write(tmp)
    log.info("export: wrote %s%s", stage_dir(cfg, "export"), f" (ONNX max |diff| {parity:.2e})" if parity else "")
    _track(cfg, stage_dir(cfg, "export"), spec, trained, parity)


def _track(cfg: Config, out: Path, spec: ForecasterSpec, trained: TrainRecord, parity: float | None) -> None:
    """The export directory as a W&B `model` artifact of the export run (main process only).


    Its metadata carries what a reviewer needs to promote it: the test metrics of the model and
    the baselines, the data fingerprint, and the fingerprint of the training run it came from.
    """
    metadata = model_metadata(cfg, spec, trained, parity)
    tracker = open_tracker(cfg, "export", True)
    try:
        s = trained.state  # the weights train logged: the input edge of the model in W&B's lineage
        weights = {"train_fingerprint": trained.fingerprint, "best_step": s.best_step, "best_val_loss": s.best_val}
        tracker.use_artifact(**weights_artifact(cfg, stage_dir(cfg, "train"), weights))
        if parity is not None:
            tracker.summary({"export/onnx_parity": parity})
        description = f"{cfg.name}: LSTM forecaster ({spec.horizon} steps of {spec.freq}), see README.md"
        tracker.log_artifact(out, f"{cfg.name}-model", "model", metadata, description)
    finally:
        tracker.finish()


def model_metadata(cfg: Config, spec: ForecasterSpec, trained: TrainRecord, parity: float | None) -> dict:
    """What a reviewer needs to promote the model: test metrics of the model and the baselines, the data's
    and the training's fingerprints (the registry logs the same export again with its aliases)."""
    metrics = spec.test_metrics
    return {
        "name": cfg.name,
        "data_fingerprint": spec.data_fingerprint,
        "train_fingerprint": trained.fingerprint,
        "test_metrics": {"model": metrics["model"], "baselines": metrics["baselines"]} if metrics else None,
        "model": spec.model.to_dict(),
        "lookback": spec.lookback,
        "horizon": spec.horizon,
        "freq": spec.freq,
        "n_series": len(spec.series),
        "onnx_parity": parity,
        "pipeline_version": spec.pipeline_version,
    }


def forecaster_spec(cfg: Config, trained: TrainRecord, ingest: IngestRecord, metrics: dict | None) -> ForecasterSpec:
    """forecaster.json: the trained spec, the window, the history layout, every series' scaler."""
    d = cfg.data
    synthetic = d.source == "synthetic"
    return ForecasterSpec(
        pipeline_version=__version__,
        name=cfg.name,
        model=trained.model,
        lookback=cfg.window.lookback,
        horizon=cfg.window.horizon,
        freq=ingest.freq,
        format="long" if synthetic else d.format,
        time_column="time" if synthetic else d.time_column,
        target_column="value" if synthetic else d.target_column,
        id_column="series" if synthetic else d.id_column,
        transform=ingest.transform,
        scaling=ingest.scaling,
        series=ServedSeries(list(ingest.series.ids), ingest.series.stats),
        data_fingerprint=ingest.fingerprint,
        test_metrics=metrics,
        static_loc=list(ingest.static_loc),
        static_scale=list(ingest.static_scale),
        base=fallback_base(trained.base),
        zone=ingest.zone,
        wall_clock=ingest.wall_clock,
        local_times=ingest.local_times,
        date_order=ingest.date_order,
    )


def fallback_base(base: dict | None) -> dict | None:
    """forecaster.json's `base` where the run had a fallback base: the names and fields of the base the correction
    was trained over and of the fallback, and which one forecasts, so a warm start from the export trains on as the
    run did; None otherwise."""
    if not base or "fallback_base" not in base:
        return None
    keys = ("chosen", "fallback", "fallback_used", "trained_base", "fallback_base")
    return {key: base[key] for key in keys if key in base}


def onnx_input_description(spec: ForecasterSpec) -> str:
    """The ONNX input's shape and channels in words, as `pipeline.library.inputs` lays them out."""
    m = spec.model
    calendar, past, future, static = m.calendar, m.past_covariates, m.future_covariates, m.static_covariates
    parts = ["the scaled values"]
    parts += [f"past covariates {', '.join(past)}"] if past else []
    parts += [f"future covariates {', '.join(future)}"] if future else []
    zone = m.calendar_zone or (spec.zone if spec.wall_clock else None)
    clock = f" on the wall clock of {zone}" if zone else " in UTC"
    parts += [f"sin and cos of {', '.join(calendar)}{clock} (pipeline.library.calendar)"] if calendar else []
    parts += [f"static covariates {', '.join(static)}"] if static else []
    parts += ["the series' index (forecaster.json)"] if m.series_embedding else []
    channels = m.channels
    if len(parts) == 1:
        return f"(batch, {spec.lookback}, 1)"
    steps = f"{spec.lookback} + {spec.horizon}" if future or calendar else f"{spec.lookback}"
    ahead = "; values and past covariates are 0 over the horizon" if future or calendar else ""
    return f"(batch, {steps}, {channels}): {'; '.join(parts)}{ahead}"


def model_card(cfg: Config, spec: ForecasterSpec, metrics: dict | None, parity: float | None) -> str:
    """The export's README.md: what the model is, what it was trained and scored on, how to serve it."""
    m = spec.model
    lines = [
        f"# Model card: {cfg.name}",
        "",
        f"A {m.num_layers}-layer {m.cell.upper()} ({m.hidden_size} hidden units) forecasting the next "
        f"{spec.horizon} steps ({spec.freq}) from the last {spec.lookback} values of each series.",
        "",
        f"- Data: `{cfg.data.source}`, {len(spec.series)} series, fingerprint `{spec.data_fingerprint}`.",
        f"- Inputs are scaled per series ({spec.scaling}) with the statistics of its train part (in "
        f"forecaster.json){' after log1p' if spec.transform == 'log1p' else ''}.",
        "- Trained by lstm-pipeline; serve with `Forecaster.load(dir).predict(history)` or "
        "`lstm-pipeline predict --model DIR --input HISTORY.csv --output FORECAST.csv`.",
    ]
    quantiles = list(m.quantiles)
    if quantiles:
        lines.append(
            f"- Probabilistic: quantiles {', '.join(f'{q:g}' for q in quantiles)} (pinball loss, never crossing); "
            "`predict` writes the median as `forecast` and the others as `q<level>` columns."
        )
    if parity is not None:
        out = f"(batch, {spec.horizon})"
        if quantiles:
            out = f"(batch, {spec.horizon}, {len(quantiles)}) (the quantiles on the last axis)"
        back = "expm1(z * scale + mean)" if spec.transform == "log1p" else "z * scale + mean"
        shape = onnx_input_description(spec)
        lines.append(
            f"- model.onnx: input `x` {shape} and output `forecast` {out}, both in scaled "
            f"units z (original units: {back} with the series' entry in forecaster.json); max |ONNX - PyTorch| "
            f"on the test windows: {parity:.2e}."
        )
    if metrics:
        lines += ["", "## Test metrics (original units)", "", "| method | MAE | RMSE | sMAPE | MASE |"]
        lines.append("| --- | ---: | ---: | ---: | ---: |")
        for name, v in [("model", metrics["model"]), *metrics["baselines"].items()]:
            lines.append(f"| {name} | {v['mae']:.4g} | {v['rmse']:.4g} | {v['smape']:.3f} | {v['mase']:.4f} |")
        if "quantiles" in metrics:
            cover = ", ".join(f"{k}: {v['empirical']:.1%}" for k, v in metrics["quantiles"]["coverage"].items())
            calibrated = (
                " (intervals calibrated on the validation windows)" if metrics["quantiles"].get("calibration") else ""
            )
            lines += ["", f"Pinball loss {metrics['quantiles']['pinball']:.4g}; interval coverage {cover}{calibrated}."]
    lines += ["", f"Limitations: trained on the series listed in forecaster.json; {other_series(m.series_embedding)}"]
    return "\n".join(lines) + "\n"


def other_series(series_embedding: int) -> str:
    """What `predict` and the service do with a series the model never saw (docs/concepts.md)."""
    if series_embedding:
        return (
            f"other series are refused: the model learnt a vector per training series "
            f"(model.series_embedding={series_embedding}) and has none for another."
        )
    return (
        "other series are forecast too, scaled by the statistics of their own history (the whole history given to "
        '`predict`, by the same scaler; a series constant over it is refused), see "Series the model never saw" '
        "in docs/concepts.md."
    )
