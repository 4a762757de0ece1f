"""Model registry for scheduled retraining: champion/challenger promotion, never worse, never broken.

Layout, under `registry.dir`:

```
<name>/v0001/ v0002/ ...   one per evaluated challenger: a copy of the export directory (loadable
                           as is, manifest-checked) + metrics.json (both scores and the run's
                           evaluate metrics) + run_config.yaml (the resolved config of the run) +
                           data.json (the data fingerprint) + decision.json (its history record);
                           the export's meta.json key tells whether a rerun's export is already here
<name>/current             -> vNNNN: the version that serves (a relative symlink, or on a file
                           system without symlinks a one-line pointer file naming the version)
<name>/history.jsonl       one record per decision: time, version, both scores, decision, reason,
                           data fingerprint
```

Every evaluated challenger is kept as a version so that history can point at it; only `current`
decides what serves. At the end of `lstm-pipeline run --promote`, the challenger (this run's export)
and the champion (`current`) are scored on the same test windows of the current data, each with
its own scaler, MASE scaled by the current data's train part exactly as the evaluate stage does.
The challenger is promoted when its MASE < champion MASE x (1 - registry.min_improvement), or
when there is no champion yet. A rerun whose export is already the current version records
`unchanged` and changes nothing.

The registry is touched only at the very end of a run, under a lock: the version is built in a
hidden temporary directory and renamed into place, then `current` is switched by an atomic rename,
then the history record is appended. A failed, killed or worse run leaves `current` as it was; the
next registry operation cleans up after a run killed inside those few milliseconds.

`python -m pipeline.registry decision --config FILE [overrides]` prints the last decision and exits
0 (promoted or unchanged), 3 (not promoted) or 2 (no decision yet, or a broken registry): what
launch/cron/retrain.sh turns into its exit code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.artifacts import fsync_dir, sha256_file
from pipeline.errors import ConfigError, DataError, UserError

if TYPE_CHECKING:
    import numpy as np

    from pipeline.config import Config
    from pipeline.forecaster import Forecaster
    from pipeline.model import ModelSpec

log = logging.getLogger("pipeline")

CURRENT = "current"
HISTORY = "history.jsonl"
LOCK = ".lock"
DECISION = "decision.json"
_VERSION = re.compile(r"^v(\d{4,})$")
# ModelSpec fields that change what the weights mean; dropout does not
_ARCHITECTURE = (
    "input_size",
    "horizon",
    "hidden_size",
    "num_layers",
    "cell",
    "instance_norm",
    "residual_season",
    "season_average",
    "quantiles",
    "calendar",
    "past_covariates",
    "future_covariates",
    "static_covariates",
    "series_embedding",
    "n_series",
    "ensemble",
    "base_level",
    "blend",
)


# ---------------------------------------------------------------- layout and `current`


def registry_root(cfg: Config) -> Path:
    if cfg.registry.dir is None:
        raise ConfigError("registry.dir is not set (the registry is off)")
    return Path(cfg.registry.dir) / cfg.name


def versions(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if _VERSION.match(p.name) and p.is_dir()), key=_number)


def _number(version: str) -> int:
    return int(version[1:])


def current_version(root: Path) -> str | None:
    """The version `current` names (whether or not it exists), or None when nothing was promoted."""
    pointer = root / CURRENT
    if pointer.is_symlink():
        return Path(os.readlink(pointer)).name
    if pointer.is_file():
        return pointer.read_text().strip() or None
    return None


def champion_dir(root: Path) -> Path | None:
    """The promoted version's directory, None without a champion; a clear error when it is missing."""
    version = current_version(root)
    if version is None:
        return None
    path = root / version
    if not (path / "model.safetensors").is_file():
        raise UserError(
            f"registry {root}: {CURRENT} points at version {version}, which is missing ({path} does not exist "
            f"or is incomplete); restore {version} or point {CURRENT} at an existing version"
        )
    return path


def resolve_model_dir(path: Path) -> Path:
    """A model directory given to `predict`; a registry's `current` (symlink or pointer file) is followed."""
    if path.name == CURRENT and (path.is_symlink() or path.is_file()):
        return champion_dir(path.parent) or path
    return path


def switch_current(root: Path, version: str) -> None:
    """Point `current` at `version` atomically: made under a temporary name, then renamed over it."""
    tmp = root / f".{CURRENT}.tmp{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.symlink(version, tmp)
    except OSError:  # a file system without symlinks: a pointer file, written atomically
        from pipeline.artifacts import write_text_atomic

        write_text_atomic(root / CURRENT, version + "\n")
    else:
        os.replace(tmp, root / CURRENT)
    fsync_dir(root)


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """One registry operation at a time per registry name (another waits for the lock)."""
    import fcntl

    try:
        root.mkdir(parents=True, exist_ok=True)
        fh = open(root / LOCK, "a")  # noqa: SIM115 - held for the whole block
    except OSError as exc:
        raise UserError(f"registry {root}: cannot write: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield
    finally:
        fh.close()


def read_history(root: Path) -> list[dict]:
    path = root / HISTORY
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


def append_history(root: Path, record: dict) -> None:
    line = json.dumps(record, sort_keys=False) + "\n"
    fd = os.open(root / HISTORY, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one small write in append mode: readers see whole lines
        os.fsync(fd)
    finally:
        os.close(fd)


def recover(root: Path) -> None:
    """Tidy up after a run killed inside its registry step (called under the lock).

    Leftover temporary version directories are removed; a version that was renamed into place
    but never reached history.jsonl gets its record appended (as `interrupted` when it was to be
    promoted but `current` was not switched yet).
    """
    for tmp in root.glob(".v*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    recorded = {r.get("version") for r in read_history(root)}
    current = current_version(root)
    for version in versions(root):
        path = root / version / DECISION
        if version in recorded or not path.is_file():
            continue
        record = json.loads(path.read_text())
        if record.get("decision") == "promoted" and current != version:
            record.update(decision="interrupted", reason="the run stopped before current was switched")
        record["current"] = current
        record["recovered"] = True
        append_history(root, record)


# ---------------------------------------------------------------- scoring


@dataclass
class ScoringWindows:
    """The newest test windows of the current data: what champion and challenger are scored on."""

    raw32: np.ndarray
    records: list[dict]
    series: np.ndarray  # (W,) series index of each window
    target_start: np.ndarray  # (W,) position of each window's first target within its series
    horizon: int
    mase_scale: np.ndarray  # (W,) MASE denominator of each window's series
    freq: str
    ingest_dir: Path | None = None  # where the covariate columns are read from


def scoring_windows(cfg: Config) -> ScoringWindows:
    """From this run's ingest and window outputs, scaled for MASE as the evaluate stage does."""
    import numpy as np

    from pipeline import auto

    cfg = auto.resolve(cfg)

    from pipeline import metrics as M
    from pipeline.chunks import record_offsets
    from pipeline.ingest import load_ingest
    from pipeline.window import load_index

    ingest_meta, raw32 = load_ingest(cfg.run_dir, "registry")
    window_meta, index = load_index(cfg.run_dir, "registry")
    pairs = index["test"]
    if len(pairs) == 0:
        raise ConfigError("registry: no test window to score on; increase data.test_size")
    records = ingest_meta["series"]
    offsets = record_offsets(records)
    train_end = np.array([r["train_end"] for r in records])
    scale = M.mase_scale(raw32.astype(np.float64), offsets, train_end, cfg.evaluate.season_length)
    return ScoringWindows(
        raw32=raw32,
        records=records,
        series=pairs[:, 0],
        target_start=pairs[:, 1] + window_meta["lookback"],
        horizon=window_meta["horizon"],
        mase_scale=scale[pairs[:, 0]],
        freq=ingest_meta["freq"],
        ingest_dir=cfg.run_dir / "ingest",
    )


def comparable(forecaster: Forecaster, windows: ScoringWindows, label: str) -> np.ndarray:
    """Mask of the windows `forecaster` can score (series it knows, enough history); checks horizon/freq."""
    import numpy as np

    if forecaster.horizon != windows.horizon:
        raise UserError(
            f"registry: the {label} forecasts {forecaster.horizon} steps, the current data's windows "
            f"{windows.horizon}: they cannot be scored on the same windows; use a new `name` for a new horizon"
        )
    if forecaster.spec["freq"] != windows.freq:
        raise UserError(
            f"registry: the {label} was trained on frequency {forecaster.spec['freq']}, the data is {windows.freq}"
        )
    known = np.array([r["id"] in forecaster.spec["series"] for r in windows.records])
    return known[windows.series] & (windows.target_start >= forecaster.lookback)


def forecast(forecaster: Forecaster, windows: ScoringWindows, rows: np.ndarray) -> np.ndarray:
    """Forecasts in original units (len(rows), horizon), each series scaled with the model's own scaler."""
    import numpy as np

    from pipeline.data import WindowBuffer
    from pipeline.evaluate import forecast_windows, point_of, to_original_units

    spec = forecaster.model.spec
    stats = forecaster.spec["series"]
    unit = {  # series the model does not know are not scored; these only fill their slots
        "mean": 0.0,
        "scale": 1.0,
        "covariate_mean": [0.0] * len(spec.covariates),
        "covariate_scale": [1.0] * len(spec.covariates),
        "static": [0.0] * len(spec.static_covariates),
        "index": 0,
    }
    own = [{**r, **stats.get(r["id"], unit)} for r in windows.records]
    transform = forecaster.spec.get("transform", "none")
    buffer = WindowBuffer.for_model(
        spec, windows.ingest_dir, windows.raw32, own, forecaster.spec["freq"], forecaster.lookback, transform
    )
    series = windows.series[rows]
    pairs = np.stack([series, windows.target_start[rows] - forecaster.lookback], axis=1).astype(np.int64)
    scaled = forecast_windows(forecaster.model, buffer, pairs, 4096)
    return point_of(to_original_units(scaled, own, series, transform), forecaster.model.spec)


def score(forecaster: Forecaster, windows: ScoringWindows, rows: np.ndarray) -> dict[str, float]:
    """mae, rmse, smape, mase of `forecaster` on the windows `rows`, as the evaluate stage computes them."""
    import numpy as np

    from pipeline import metrics as M
    from pipeline.chunks import record_offsets

    offsets = record_offsets(windows.records)
    positions = offsets[windows.series[rows], None] + windows.target_start[rows, None] + np.arange(windows.horizon)
    actual = windows.raw32.astype(np.float64)[positions]
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


# ---------------------------------------------------------------- promotion


def promote(cfg: Config) -> dict:
    """Register this run's export as a challenger, promote it if it beats the champion; the history record."""
    from pipeline.artifacts import require_stage

    root = registry_root(cfg)
    export_meta = require_stage(cfg.run_dir / "export", "export", "registry")
    windows = scoring_windows(cfg)
    with locked(root):
        recover(root)
        previous = current_version(root)
        champion_path = champion_dir(root)  # a clear error when `current` names a missing version
        existing = _version_of_export(root, export_meta["key"])
        if existing is not None and existing == previous:
            record = _record(cfg, existing, "unchanged", f"the export is already {existing}, the current version")
            record.update(current=previous, champion_version=previous, data_fingerprint=_fingerprint(cfg))
            append_history(root, record)
            log.info("registry: %s unchanged (current %s); nothing to decide", root, existing)
            return record
        if existing is not None:  # evaluated before, not serving: decide again, against today's champion
            record = _judge(cfg, root / existing, champion_path, previous, windows, existing)
        else:
            version = f"v{(_number(versions(root)[-1]) + 1) if versions(root) else 1:04d}"
            tmp = root / f".{version}.tmp"
            _build_version(cfg, tmp)
            record = _judge(cfg, tmp, champion_path, previous, windows, version)
            _write_json(tmp / DECISION, record)
            os.rename(tmp, root / version)  # fails rather than replace an existing version
            fsync_dir(root)
        if record["decision"] == "promoted":
            switch_current(root, record["version"])
        append_history(root, record)
    log.info(
        "registry: %s %s (%s); current: %s", record["version"], record["decision"], record["reason"], record["current"]
    )
    return record


def _judge(cfg: Config, version_dir: Path, champion_path: Path | None, previous, windows, version: str) -> dict:
    """Score challenger (from `version_dir`) and champion on the same windows; the decision record."""
    import numpy as np

    from pipeline.forecaster import Forecaster

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
    if (version_dir / "metrics.json").is_file():  # a version decided again keeps its first metrics
        return record
    evaluate_metrics = cfg.run_dir / "evaluate" / "metrics.json"
    _write_json(
        version_dir / "metrics.json",
        {
            "challenger": ours,
            "champion": theirs,
            "champion_version": previous,
            "n_windows": len(rows),
            "evaluate": json.loads(evaluate_metrics.read_text()) if evaluate_metrics.is_file() else None,
        },
    )
    return record


def _record(cfg: Config, version: str, decision: str, reason: str) -> dict[str, Any]:
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
    import yaml

    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(cfg.run_dir / "export", tmp)
        (tmp / "run_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        _write_json(tmp / "data.json", _data_info(cfg))
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"registry: cannot write {tmp}: {exc.strerror or exc}") from None


def _data_info(cfg: Config) -> dict:
    from pipeline.artifacts import read_meta

    meta = read_meta(cfg.run_dir / "ingest") or {}
    return {
        "fingerprint": meta.get("fingerprint"),
        "source": cfg.data.source,
        "freq": meta.get("freq"),
        "n_series": meta.get("n_series"),
        "n_points": meta.get("n_points"),
        "series": {r["id"]: {"start": r["start"], "length": r["length"]} for r in meta.get("series", [])},
    }


def _fingerprint(cfg: Config) -> str | None:
    from pipeline.artifacts import read_meta

    return (read_meta(cfg.run_dir / "ingest") or {}).get("fingerprint")


def _version_of_export(root: Path, export_key: str) -> str | None:
    """The version already holding the export made with `export_key`, if any."""
    for version in reversed(versions(root)):
        meta = root / version / "meta.json"
        with contextlib.suppress(OSError, ValueError):
            if json.loads(meta.read_text()).get("key") == export_key:
                return version
    return None


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


# ---------------------------------------------------------------- warm start (train.init_from)


def warm_start_identity(cfg: Config) -> str:
    """What `train.init_from` resolves to now, for the train cache key: a newly promoted champion
    or changed starting weights make training run again."""
    choice = cfg.train.init_from
    if choice == "none":
        return ""
    if choice == "champion":
        return f"champion:{current_version(registry_root(cfg)) or 'none'}"
    weights, _ = _weights_and_spec(resolve_model_dir(Path(choice)), choice)
    return f"weights:{sha256_file(weights)}"


def warm_start_state(cfg: Config, spec: ModelSpec, current: dict) -> dict | None:
    """The weights `train.init_from` names, checked against this model; None for a fresh start."""
    choice = cfg.train.init_from
    if choice == "none":
        return None
    if choice == "champion":
        root = registry_root(cfg)
        source = champion_dir(root)
        if source is None:
            log.warning("train: train.init_from=champion, but %s has no champion yet: starting from scratch", root)
            return None
        label = f"champion {source.name}"
    else:
        source = resolve_model_dir(Path(choice))
        label = str(source)
    weights, saved = _weights_and_spec(source, choice)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (OSError, SafetensorError) as exc:
        raise DataError(f"train.init_from: cannot read {weights}: {exc}") from None
    _check_architecture(label, saved, spec, state, current)
    log.info("train: starting from the weights of %s (train.init_from)", label)
    return state


def _weights_and_spec(source: Path, choice: str) -> tuple[Path, dict | None]:
    """(weights file, saved ModelSpec dict or None) of an export, train, checkpoint dir or .safetensors file."""
    if source.is_file() and source.suffix == ".safetensors":
        return source, None
    for weights, spec_file in (
        (source / "model.safetensors", source / "forecaster.json"),  # export dir or registry version
        (source / "best" / "model.safetensors", source / "meta.json"),  # train/ dir: its best weights
        (source / "model.safetensors", source / "meta.json"),  # checkpoint step dir (no spec there)
    ):
        if weights.is_file():
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                return weights, dict(json.loads(spec_file.read_text())["model"])
            return weights, None
    raise ConfigError(
        f"train.init_from: {choice} is not none, champion, a .safetensors file or a directory "
        f"with model.safetensors (an export, a registry version, train/ or a checkpoint)"
    )


def _check_architecture(label: str, saved: dict | None, spec: ModelSpec, state: dict, current: dict) -> None:
    if saved is not None:
        before = {"quantiles": [], "season_average": 1, "calendar": [], "series_embedding": 0, "n_series": 0}
        before.update({f"{kind}_covariates": [] for kind in ("past", "future", "static")})
        before.update({"ensemble": 1, "base_level": "season", "blend": False})
        saved = {**before, **saved}  # specs from before these existed
        ours = spec.to_dict()
        diff = [f"{k}={saved.get(k)!r} (config: {ours[k]!r})" for k in _ARCHITECTURE if saved.get(k) != ours[k]]
        if diff:
            raise ConfigError(f"train.init_from: the architecture of {label} differs: {', '.join(diff)}")
    missing = sorted(set(current) - set(state))
    extra = sorted(set(state) - set(current))
    if missing or extra:
        raise ConfigError(
            f"train.init_from: the weights of {label} do not fit this model "
            f"(missing {missing[:3]}, unexpected {extra[:3]}); check model.* against it"
        )
    for key, tensor in current.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ConfigError(
                f"train.init_from: the weights of {label} do not fit this model: {key} has shape "
                f"{tuple(state[key].shape)} there, {tuple(tensor.shape)} here; check model.* against it"
            )


# ---------------------------------------------------------------- `python -m pipeline.registry`


def last_decision(cfg: Config) -> tuple[dict, int]:
    """The last history record and the exit code it means: 0 promoted or unchanged, 3 not promoted."""
    root = registry_root(cfg)
    champion_dir(root)  # a broken `current` is an error here too
    history = read_history(root)
    if not history:
        raise UserError(f"registry {root}: no decision recorded yet ({root / HISTORY})")
    record = history[-1]
    return record, 0 if record.get("decision") in ("promoted", "unchanged") else 3


def main(argv: list[str] | None = None) -> int:
    import argparse

    from pipeline.config import load_config

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.registry", description="Read the model registry of an experiment."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("decision", help="print the last decision; exit 0 promoted/unchanged, 3 not promoted")
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        record, code = last_decision(load_config(args.config, args.overrides))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(record))
    return code


if __name__ == "__main__":
    sys.exit(main())
