"""Stage 5, export: a self-contained model directory that serves without the training code.

Writes model.safetensors, forecaster.json (network spec, window, frequency, per-series
scaler), config.yaml, model.onnx (dynamic batch; checked against PyTorch with ONNX Runtime on
every test window), a model card, and manifest.json with the sha256 of every file.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

from pipeline import __version__, auto
from pipeline.artifacts import (
    META,
    is_cached,
    read_meta,
    require_stage,
    sha256_file,
    stage_key,
    staged_dir,
    write_json_atomic,
)
from pipeline.config import Config
from pipeline.data import WindowBuffer
from pipeline.evaluate import forecast_windows, load_trained_model
from pipeline.forecaster import MANIFEST, SPEC_FILE
from pipeline.ingest import load_ingest
from pipeline.runtime import dist_state
from pipeline.tracking import open_tracker
from pipeline.window import load_index

log = logging.getLogger("pipeline")


def run(cfg: Config, force: bool = False) -> Path:
    out = cfg.run_dir / "export"
    train_meta = require_stage(cfg.run_dir / "train", "train", "export")
    cfg = auto.resolve(cfg)
    eval_meta = read_meta(cfg.run_dir / "evaluate") or {}
    key = stage_key("export", cfg.section_hash("export"), train_meta["fingerprint"], eval_meta.get("key", ""))
    state = dist_state()
    if not force and is_cached(out, key):
        log.info("export: up to date (inputs unchanged), skipped; --force redoes it")
        return out
    if state.is_main_process:
        export(cfg, key, train_meta)
    state.wait_for_everyone()
    return out


def export(cfg: Config, key: str, train_meta: dict) -> None:
    ingest_meta, raw = load_ingest(cfg.run_dir, "export")
    _, index = load_index(cfg.run_dir, "export")
    model = load_trained_model(cfg.run_dir / "train", train_meta)
    metrics_path = cfg.run_dir / "evaluate" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    spec = forecaster_spec(cfg, train_meta, ingest_meta, metrics)

    with staged_dir(cfg.run_dir / "export") as tmp:
        shutil.copyfile(cfg.run_dir / "train" / "best" / "model.safetensors", tmp / "model.safetensors")
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=2))
        (tmp / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        parity = None
        if cfg.export.onnx:
            w = cfg.window
            records, transform = ingest_meta["series"], ingest_meta.get("transform", "none")
            buffer = WindowBuffer.for_model(
                model.spec, cfg.run_dir / "ingest", raw, records, ingest_meta["freq"], w.lookback, transform
            )
            pairs = index["test"] if len(index["test"]) else index["val"]
            parity = export_onnx(model, buffer, pairs, tmp / "model.onnx", cfg.export.parity_atol)
        (tmp / "README.md").write_text(model_card(cfg, spec, metrics, parity))
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json_atomic(tmp / MANIFEST, {"files": files})
        write_json_atomic(tmp / META, {"stage": "export", "key": key, "fingerprint": key, "onnx_parity": parity})
    log.info("export: wrote %s%s", cfg.run_dir / "export", f" (ONNX max |diff| {parity:.2e})" if parity else "")
    _track(cfg, cfg.run_dir / "export", spec, train_meta, parity)


def _track(cfg: Config, out: Path, spec: dict, train_meta: dict, parity: float | None) -> None:
    """The export directory as a W&B `model` artifact of the export run (main process only).

    Its metadata carries what a reviewer needs to promote it: the test metrics of the model and
    the baselines, the data fingerprint, and the fingerprint of the training run it came from.
    """
    metrics = spec["test_metrics"]
    metadata = {
        "name": cfg.name,
        "data_fingerprint": spec["data_fingerprint"],
        "train_fingerprint": train_meta["fingerprint"],
        "test_metrics": {"model": metrics["model"], "baselines": metrics["baselines"]} if metrics else None,
        "model": spec["model"],
        "lookback": spec["lookback"],
        "horizon": spec["horizon"],
        "freq": spec["freq"],
        "n_series": len(spec["series"]),
        "onnx_parity": parity,
        "pipeline_version": spec["pipeline_version"],
    }
    tracker = open_tracker(cfg, "export", True)
    try:
        if parity is not None:
            tracker.summary({"export/onnx_parity": parity})
        description = f"{cfg.name}: LSTM forecaster ({spec['horizon']} steps of {spec['freq']}), see README.md"
        tracker.log_artifact(out, f"{cfg.name}-model", "model", metadata, description)
    finally:
        tracker.finish()


def forecaster_spec(cfg: Config, train_meta: dict, ingest_meta: dict, metrics: dict | None) -> dict:
    d = cfg.data
    synthetic = d.source == "synthetic"
    return {
        "format_version": 1,
        "pipeline_version": __version__,
        "name": cfg.name,
        "model": train_meta["model"],
        "lookback": cfg.window.lookback,
        "horizon": cfg.window.horizon,
        "freq": ingest_meta["freq"],
        "format": "long" if synthetic else d.format,
        "time_column": "time" if synthetic else d.time_column,
        "target_column": "value" if synthetic else d.target_column,
        "id_column": "series" if synthetic else d.id_column,
        "transform": ingest_meta.get("transform", "none"),
        "scaling": ingest_meta.get("scaling", d.scaling),
        "series": {r["id"]: served_record(r, i) for i, r in enumerate(ingest_meta["series"])},
        "data_fingerprint": ingest_meta["fingerprint"],
        "test_metrics": metrics,
    }


SERVED = ("mean", "scale", "covariate_mean", "covariate_scale", "static")


def served_record(record: dict, index: int) -> dict:
    """What predict needs of a series: its scalers, static covariates, and its row in the embedding table."""
    return {**{k: record[k] for k in SERVED if k in record}, "index": index}


def export_onnx(model: torch.nn.Module, buffer: WindowBuffer, pairs: np.ndarray, path: Path, atol: float) -> float:
    """Write the ONNX graph and return its largest deviation from PyTorch on `pairs`."""
    import onnxruntime as ort

    example, _ = buffer.gather(torch.from_numpy(pairs[:2]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        names = {"input_names": ["x"], "output_names": ["forecast"]}
        try:  # the TorchScript exporter takes 0.2 s for an LSTM, the dynamo one about 10 s
            batch_axes = {"x": {0: "batch"}, "forecast": {0: "batch"}}  # quantiles: (batch, horizon, Q)
            torch.onnx.export(
                model, (example,), str(path), dynamic_axes=batch_axes, opset_version=17, dynamo=False, **names
            )
        except (TypeError, RuntimeError, NotImplementedError):  # a torch without the legacy exporter
            batch = {"x": {0: torch.export.Dim("batch", min=1)}}
            torch.onnx.export(model, (example,), str(path), dynamic_shapes=batch, dynamo=True, **names)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = forecast_windows(model, buffer, pairs, 4096)
    got = np.concatenate(
        [
            session.run(None, {"x": buffer.gather(torch.from_numpy(chunk))[0].numpy()})[0]
            for chunk in np.array_split(pairs, max(1, len(pairs) // 4096 + 1))
            if len(chunk)
        ]
    )
    diff = float(np.abs(got - expected).max())
    if not diff <= atol:
        raise RuntimeError(f"export: ONNX output differs from PyTorch by {diff:.3g} > export.parity_atol={atol}")
    return diff


def onnx_input_description(spec: dict) -> str:
    """The ONNX input's shape and channels in words, as `pipeline.model` lays them out."""
    m = spec["model"]
    calendar = m.get("calendar") or []
    past, future, static = (m.get(k) or [] for k in ("past_covariates", "future_covariates", "static_covariates"))
    parts = ["the scaled values"]
    parts += [f"past covariates {', '.join(past)}"] if past else []
    parts += [f"future covariates {', '.join(future)}"] if future else []
    parts += [f"sin and cos of {', '.join(calendar)} (pipeline.calendar)"] if calendar else []
    parts += [f"static covariates {', '.join(static)}"] if static else []
    parts += ["the series' index (forecaster.json)"] if m.get("series_embedding") else []
    channels = 1 + len(past) + len(future) + 2 * len(calendar) + len(static) + bool(m.get("series_embedding"))
    if len(parts) == 1:
        return f"(batch, {spec['lookback']}, 1)"
    steps = f"{spec['lookback']} + {spec['horizon']}" if future or calendar else f"{spec['lookback']}"
    ahead = "; values and past covariates are 0 over the horizon" if future or calendar else ""
    return f"(batch, {steps}, {channels}): {'; '.join(parts)}{ahead}"


def model_card(cfg: Config, spec: dict, metrics: dict | None, parity: float | None) -> str:
    m = spec["model"]
    lines = [
        f"# Model card: {cfg.name}",
        "",
        f"A {m['num_layers']}-layer {m['cell'].upper()} ({m['hidden_size']} hidden units) forecasting the next "
        f"{spec['horizon']} steps ({spec['freq']}) from the last {spec['lookback']} values of each series.",
        "",
        f"- Data: `{cfg.data.source}`, {len(spec['series'])} series, fingerprint `{spec['data_fingerprint']}`.",
        f"- Inputs are scaled per series ({spec['scaling']}) with the statistics of its train part (in "
        f"forecaster.json){' after log1p' if spec['transform'] == 'log1p' else ''}.",
        "- Trained by lstm-pipeline; serve with `Forecaster.load(dir).predict(history)` or "
        "`lstm-pipeline predict --model DIR --input HISTORY.csv --output FORECAST.csv`.",
    ]
    quantiles = m.get("quantiles") or []
    if quantiles:
        lines.append(
            f"- Probabilistic: quantiles {', '.join(f'{q:g}' for q in quantiles)} (pinball loss, never crossing); "
            "`predict` writes the median as `forecast` and the others as `q<level>` columns."
        )
    if parity is not None:
        out = f"(batch, {spec['horizon']})"
        if quantiles:
            out = f"(batch, {spec['horizon']}, {len(quantiles)}) (the quantiles on the last axis)"
        back = "expm1(z * scale + mean)" if spec["transform"] == "log1p" else "z * scale + mean"
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
    lines += ["", "Limitations: trained on the series listed in forecaster.json; other series are refused."]
    return "\n".join(lines) + "\n"
