"""The registry's policy: score this run's export (the challenger) against `current` (the champion).

At the end of `lstm-pipeline run --promote`, champion and challenger are scored on the same test
windows of the current data, each with its own scaler, MASE scaled by the current data's train
part exactly as the evaluate stage does. The challenger is promoted when its MASE < champion
MASE x (1 - registry.min_improvement), or when there is no champion yet. A rerun whose export
is already the current version records `unchanged` and changes nothing. Every evaluated
challenger is kept as a version; the store (`pipeline.library.registry_store`) makes each change
atomic under a lock, so a failed, killed or worse run leaves `current` as it was.

`lstm-pipeline decision --config FILE [overrides]` prints the last decision and exits 0 (promoted,
unchanged or rolled back), 3 (not promoted) or 2 (no decision yet, or a broken registry): what
launch/cron/retrain.sh turns into its exit code. An export withdrawn by `lstm-pipeline rollback`
(`pipeline.orchestrators.rollback`) is never judged again: it is recorded `rejected`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.config import Config
from pipeline.config.auto import resolve
from pipeline.library import metrics as M
from pipeline.library import registry_store as store
from pipeline.library.artifacts import fsync_dir
from pipeline.library.buffer import WindowBuffer
from pipeline.library.errors import ConfigError, UserError
from pipeline.library.forecaster import Forecaster
from pipeline.library.inference import forecast_windows, point_of, to_original_units
from pipeline.library.records import ExportRecord, IngestRecord, SeriesStats, SeriesTable, WindowRecord
from pipeline.library.registry_store import (
    DECISION,
    HISTORY,
    append_history,
    champion_dir,
    current_version,
    locked,
    read_history,
    recover,
    switch_current,
    versions,
)
from pipeline.library.store import observed_values, read_filled, read_values
from pipeline.library.windows import read_index
from pipeline.stages.table import stage_dir

log = logging.getLogger("pipeline")


def registry_root(cfg: Config) -> Path:
    if cfg.registry_root is None:
        raise ConfigError("registry.dir is not set (the registry is off)")
    return cfg.registry_root


@dataclass
class ScoringWindows:
    """The newest test windows of the current data: what champion and challenger are scored on."""

    raw32: np.ndarray
    observed: np.ndarray  # float64, NaN where data.missing filled a point (never scored against)
    table: SeriesTable  # the current data's series (ids, lengths, statistics)
    series: np.ndarray  # (W,) series index of each window
    target_start: np.ndarray  # (W,) position of each window's first target within its series
    horizon: int
    mase_scale: np.ndarray  # (W,) MASE denominator of each window's series
    freq: str
    ingest_dir: Path | None = None  # where the covariate columns are read from
    covariates: tuple[str, ...] = ()  # the time-varying covariate columns this run ingested


def scoring_windows(cfg: Config) -> ScoringWindows:
    """From this run's ingest and window outputs, scaled for MASE as the evaluate stage does."""
    cfg = resolve(cfg)
    ingest_dir = stage_dir(cfg, "ingest")
    ingest = IngestRecord.require(ingest_dir, "registry")
    window = WindowRecord.require(stage_dir(cfg, "window"), "registry")
    raw32 = read_values(ingest_dir)
    pairs = read_index(stage_dir(cfg, "window"))["test"]
    if len(pairs) == 0:
        raise ConfigError("registry: no test window to score on; increase data.test_size")
    table = ingest.series
    observed = observed_values(raw32, read_filled(ingest_dir))
    scale = M.mase_scale(observed, table.offsets, table.train_end, cfg.evaluate.season_length)
    return ScoringWindows(
        raw32=raw32,
        observed=observed,
        table=table,
        series=pairs[:, 0],
        target_start=pairs[:, 1] + window.lookback,
        horizon=window.horizon,
        mase_scale=scale[pairs[:, 0]],
        freq=ingest.freq,
        ingest_dir=ingest_dir,
        covariates=tuple(ingest.covariates),
    )


def comparable(forecaster: Forecaster, windows: ScoringWindows, label: str) -> np.ndarray:
    """Mask of the windows `forecaster` can score (series it knows, enough history); checks horizon/freq."""
    if forecaster.horizon != windows.horizon:
        raise UserError(
            f"registry: the {label} forecasts {forecaster.horizon} steps, the current data's windows "
            f"{windows.horizon}: they cannot be scored on the same windows; use a new `name` for a new horizon"
        )
    if forecaster.spec.freq != windows.freq:
        raise UserError(
            f"registry: the {label} was trained on frequency {forecaster.spec.freq}, the data is {windows.freq}"
        )
    missing = [name for name in forecaster.model.spec.covariates if name not in windows.covariates]
    if missing:
        raise UserError(
            f"registry: the {label} reads the covariate '{missing[0]}', which this run does not ingest "
            f"(data.past_covariates, data.future_covariates): list it again to score the two on the same windows, "
            f"or use a new `name` for a model without it"
        )
    known = np.array([sid in forecaster.spec.series for sid in windows.table.ids])
    return known[windows.series] & (windows.target_start >= forecaster.lookback)


def forecast(forecaster: Forecaster, windows: ScoringWindows, rows: np.ndarray) -> np.ndarray:
    """Forecasts in original units (len(rows), horizon), each series scaled with the model's own scaler."""
    spec = forecaster.model.spec
    own = model_stats(forecaster, windows)
    table = windows.table.with_stats(own)
    transform = forecaster.spec.transform
    buffer = WindowBuffer.for_model(
        spec, windows.ingest_dir, windows.raw32, table, forecaster.spec.freq, forecaster.lookback, transform
    )
    series = windows.series[rows]
    pairs = np.stack([series, windows.target_start[rows] - forecaster.lookback], axis=1).astype(np.int64)
    scaled = forecast_windows(forecaster.model, buffer, pairs, 4096)
    return point_of(to_original_units(scaled, own, series, transform), spec)


def model_stats(forecaster: Forecaster, windows: ScoringWindows) -> SeriesStats:
    """Per series of the current data, the statistics `forecaster` was trained with: its scaler, its covariate
    scaling and static values, its embedding row. Taken whole from the export, so a model scores the same
    whichever covariates this run added or dropped; series it does not know borrow a known one's (their
    windows are never scored)."""
    served = forecaster.spec.series
    known = [sid for sid in windows.table.ids if sid in served]
    if not known:
        raise UserError("registry: the model knows none of the current data's series")
    return served.stats.take(served.positions([sid if sid in served else known[0] for sid in windows.table.ids]))


def score(forecaster: Forecaster, windows: ScoringWindows, rows: np.ndarray) -> dict[str, float]:
    """mae, rmse, smape, mase of `forecaster` on the windows `rows`, as the evaluate stage computes them."""
    offsets = windows.table.offsets
    positions = offsets[windows.series[rows], None] + windows.target_start[rows, None] + np.arange(windows.horizon)
    actual = windows.observed[positions]
    terms = M.error_terms(actual, forecast(forecaster, windows, rows), windows.mase_scale[rows])
    return M.summarise(terms)


def decide(challenger: float, champion: float | None, min_improvement: float) -> tuple[bool, str]:
    """(promote?, why): promote when challenger < champion x (1 - min_improvement), or without a champion."""
    if not math.isfinite(challenger):
        return False, f"challenger MASE is {challenger}"
    if champion is None:
        return True, "no champion yet"
    if not math.isfinite(champion):
        return True, f"champion MASE is {champion}"
    threshold = champion * (1.0 - min_improvement)
    rule = f"champion {champion:.5f} x (1 - {min_improvement:g}) = {threshold:.5f}"
    if challenger < threshold:
        return True, f"challenger MASE {challenger:.5f} < {rule}"
    return False, f"challenger MASE {challenger:.5f} >= {rule}"


def promote(cfg: Config) -> dict:
    """Register this run's export as a challenger, promote it if it beats the champion; the history record."""
    root = registry_root(cfg)
    export = ExportRecord.require(stage_dir(cfg, "export"), "registry")
    windows = scoring_windows(cfg)
    with locked(root):
        recover(root)
        previous = current_version(root)
        champion_path = champion_dir(root)  # a clear error when `current` names a missing version
        existing = store.version_of_export(root, export.key)
        if export.key in store.withdrawn_keys(read_history(root)):
            why = f"{existing or 'this export'} was withdrawn by a rollback; new data or settings make a new challenger"
            record = _record(cfg, existing, "rejected", why)
            record.update(current=previous, champion_version=previous, data_fingerprint=_fingerprint(cfg))
            append_history(root, record)
            log.info("registry: %s not judged: %s; current: %s", existing or "the export", why, previous)
            return record
        if existing is not None and existing == previous:
            record = _record(cfg, existing, "unchanged", f"the export is already {existing}, the current version")
            record.update(current=previous, champion_version=previous, data_fingerprint=_fingerprint(cfg))
            append_history(root, record)
            log.info("registry: %s unchanged (current %s); nothing to decide", root, existing)
            return record
        if existing is not None:  # evaluated before, not serving: decide again, against today's champion
            record = _judge(cfg, root / existing, champion_path, previous, windows, existing)
        else:
            version = f"v{(store.number(versions(root)[-1]) + 1) if versions(root) else 1:04d}"
            tmp = root / f".{version}.tmp"
            _build_version(cfg, tmp)
            try:
                record = _judge(cfg, tmp, champion_path, previous, windows, version)
                store.write_json(tmp / DECISION, record)
            except BaseException:  # a challenger that cannot be judged leaves no trace in the registry
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            os.rename(tmp, root / version)  # fails rather than replace an existing version
            fsync_dir(root)
        if record["decision"] == "promoted":
            switch_current(root, record["version"])
        append_history(root, record)
        dropped = store.prune_versions(root, cfg.registry.keep_versions)
    track_decision(cfg, record)
    if dropped:
        log.info("registry: deleted %s (registry.keep_versions=%d)", ", ".join(dropped), cfg.registry.keep_versions)
    log.info(
        "registry: %s %s (%s); current: %s", record["version"], record["decision"], record["reason"], record["current"]
    )
    return record


def track_decision(cfg: Config, record: dict) -> None:
    """The decision in W&B: the export's model artifact gets the aliases `v<N>` and, when promoted,
    `champion` (the same files as export logged, so W&B finds the same version), and is linked to the
    registry collection `tracking.registry_collection` when one is set."""
    if cfg.tracking.backend != "wandb":
        return
    from pipeline.library.forecaster import SPEC_FILE
    from pipeline.library.records import ForecasterSpec, TrainRecord
    from pipeline.stages.export import model_metadata
    from pipeline.stages.tracking import open_tracker

    out = stage_dir(cfg, "export")
    spec = ForecasterSpec.from_json(json.loads((out / SPEC_FILE).read_text()))
    trained = TrainRecord.require(stage_dir(cfg, "train"), "registry")
    export = ExportRecord.require(out, "registry")
    metadata = model_metadata(cfg, spec, trained, export.onnx_parity)
    aliases = [record["version"], *(["champion"] if record["decision"] == "promoted" else [])]
    name = f"{cfg.name}-model"
    tracker = open_tracker(cfg, "registry", True)
    try:
        tracker.summary({f"registry/{k}": record[k] for k in ("decision", "challenger_mase", "champion_mase")})
        tracker.log_artifact(out, name, "model", {**metadata, "registry": record}, aliases=aliases)
        collection = cfg.tracking.registry_collection
        if collection and record["decision"] == "promoted":
            tracker.link_artifact(out, name, "model", metadata, collection, aliases)
    finally:
        tracker.finish()


def _judge(cfg: Config, version_dir: Path, champion_path: Path | None, previous, windows, version: str) -> dict:
    """Score challenger (from `version_dir`) and champion on the same windows; the decision record."""
    challenger = Forecaster.load(version_dir)  # the very files that would serve, manifest-checked
    rows = comparable(challenger, windows, f"challenger {version}")
    champion = None
    if champion_path is not None:
        champion = Forecaster.load(champion_path)
        rows &= comparable(champion, windows, f"champion {previous}")
    rows = np.flatnonzero(rows)
    if len(rows) == 0:
        raise UserError(
            f"registry: no test window both challenger {version} and champion {previous} can forecast "
            f"(no series in common, or too little history)"
        )
    ours = score(challenger, windows, rows)
    theirs = score(champion, windows, rows) if champion is not None else None
    promoted, reason = decide(ours["mase"], theirs["mase"] if theirs else None, cfg.registry.min_improvement)
    record = _record(cfg, version, "promoted" if promoted else "rejected", reason)
    record.update(
        challenger_mase=ours["mase"],
        champion_mase=theirs["mase"] if theirs else None,
        champion_version=previous,
        current=version if promoted else previous,
        n_windows=len(rows),
        n_series=len(np.unique(windows.series[rows])),
        data_fingerprint=_fingerprint(cfg),
    )
    if (version_dir / store.METRICS).is_file():  # a version decided again keeps its first metrics
        return record
    evaluate_metrics = cfg.run_dir / "evaluate" / "metrics.json"
    store.write_json(
        version_dir / store.METRICS,
        {
            "challenger": ours,
            "champion": theirs,
            "champion_version": previous,
            "n_windows": len(rows),
            "evaluate": json.loads(evaluate_metrics.read_text()) if evaluate_metrics.is_file() else None,
        },
    )
    return record


def _record(cfg: Config, version: str | None, decision: str, reason: str) -> dict[str, Any]:
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "name": cfg.name,
        "version": version,
        "decision": decision,
        "reason": reason,
        "challenger_mase": None,
        "champion_mase": None,
        "min_improvement": cfg.registry.min_improvement,
        "run_dir": str(cfg.run_dir),
    }


def _build_version(cfg: Config, tmp: Path) -> None:
    """The export copied as is, plus the run's resolved config and its data fingerprint."""
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(cfg.run_dir / "export", tmp)
        (tmp / store.RUN_CONFIG).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        store.write_json(tmp / store.DATA, _data_info(cfg))
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"registry: cannot write {tmp}: {exc.strerror or exc}") from None


def _data_info(cfg: Config) -> dict:
    ingest = IngestRecord.read(stage_dir(cfg, "ingest"))
    if ingest is None:
        return {"fingerprint": None, "source": cfg.data.source, "freq": None, "n_series": None, "n_points": None}
    table = ingest.series
    return {
        "fingerprint": ingest.fingerprint,
        "source": cfg.data.source,
        "freq": ingest.freq,
        "n_series": ingest.n_series,
        "n_points": ingest.n_points,
        "series": {sid: {"start": table.starts[i], "length": int(table.lengths[i])} for i, sid in enumerate(table.ids)},
    }


def _fingerprint(cfg: Config) -> str | None:
    ingest = IngestRecord.read(stage_dir(cfg, "ingest"))
    return None if ingest is None else ingest.fingerprint


def last_decision(cfg: Config) -> tuple[dict, int]:
    """The last history record and the exit code it means: 0 promoted or unchanged, 3 not promoted."""
    root = registry_root(cfg)
    champion_dir(root)  # a broken `current` is an error here too
    history = read_history(root)
    if not history:
        raise UserError(f"registry {root}: no decision recorded yet ({root / HISTORY})")
    record = history[-1]
    return record, 0 if record.get("decision") in ("promoted", "unchanged", store.ROLLED_BACK) else 3
