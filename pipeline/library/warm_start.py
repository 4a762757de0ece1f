"""Warm starts (`train.init_from`): the weights of the registry's champion or of a saved model.

The starting weights must describe the same network: the saved spec's architecture (every
field but dropout) and every tensor's shape are checked against the model being trained. A
resume from a checkpoint of the same run still wins over a warm start.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from pipeline.library.artifacts import sha256_file
from pipeline.library.errors import ConfigError, DataError
from pipeline.library.model_spec import ModelSpec
from pipeline.library.registry_store import champion_dir, current_version, resolve_model_dir
from pipeline.library.scaling import TRANSFORMS

log = logging.getLogger("pipeline")


def warm_start_identity(choice: str, registry: Path | None) -> str:
    """What `train.init_from` (`choice`) resolves to now, for the train cache key: a newly promoted
    champion or changed starting weights make training run again. `registry`: `<registry.dir>/<name>`."""
    if choice == "none":
        return ""
    if choice == "champion":
        return f"champion:{current_version(registry) or 'none'}"
    weights, _, _ = _saved(resolve_model_dir(Path(choice)), choice)
    return f"weights:{sha256_file(weights)}"


def warm_start_state(choice: str, registry: Path | None, spec: ModelSpec, current: dict) -> dict | None:
    """The weights `train.init_from` (`choice`) names, checked against this model; None for a fresh start."""
    if choice == "none":
        return None
    if choice == "champion":
        root = registry
        source = champion_dir(root)
        if source is None:
            log.warning("train: train.init_from=champion, but %s has no champion yet: starting from scratch", root)
            return None
        label = f"champion {source.name}"
    else:
        source = resolve_model_dir(Path(choice))
        label = str(source)
    weights, forecast, fallback = _saved(source, choice)
    saved = _trained_spec(forecast, fallback)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (OSError, SafetensorError) as exc:
        raise DataError(f"train.init_from: cannot read {weights}: {exc}") from None
    state = _calibration_as_here(state, current)
    _check_architecture(label, saved, spec, state, current)
    log.info("train: starting from the weights of %s (train.init_from)", label)
    return state


def warm_start_spec(choice: str, registry: Path | None) -> ModelSpec | None:
    """The saved spec of the weights `train.init_from` names (None: a fresh start, or no spec saved with them)."""
    return warm_start_bases(choice, registry)[0]


def warm_start_bases(choice: str, registry: Path | None) -> tuple[ModelSpec | None, tuple[ModelSpec, dict] | None]:
    """(`warm_start_spec`, and where the starting weights' run had a fallback base, one their correction was not
    trained over (`train.fall_back`), (their spec with that base, {"chosen", "fallback"}: the bases' names), else
    None), from one read of the spec file."""
    source = _source(choice, registry)
    if source is None:
        return None, None
    _, forecast, fallback = _saved(source, choice)
    if forecast is None or fallback is None:
        return forecast, None
    names = {"chosen": "the base trained over", "fallback": "the fallback base"}  # a record without them
    kept = forecast.with_base(fallback["fallback_base"]), {key: str(fallback.get(key, d)) for key, d in names.items()}
    return _trained_spec(forecast, fallback), kept


def warm_start_transform(choice: str, registry: Path | None) -> str | None:
    """The target transform the weights `train.init_from` names were trained on (None: a fresh start, or not saved).

    An export or registry version says it in forecaster.json; a train/ directory in the config of its meta.json."""
    source = _source(choice, registry)
    if source is None or source.is_file():
        return None
    for spec_file, read in (
        (source / "forecaster.json", lambda payload: payload["transform"]),
        (source / "meta.json", lambda payload: payload["config"]["data"]["transform"]),
    ):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            found = read(json.loads(spec_file.read_text()))
            if found in TRANSFORMS:
                return found
    return None


def _source(choice: str, registry: Path | None) -> Path | None:
    """The directory (or weights file) `train.init_from` names; None for a fresh start or a registry without a
    champion."""
    if choice == "none":
        return None
    return champion_dir(registry) if choice == "champion" else resolve_model_dir(Path(choice))


def _saved(source: Path, choice: str) -> tuple[Path, ModelSpec | None, dict | None]:
    """(weights file, the ModelSpec saved with them or None, the base record where their forecast runs on a fallback
    base or None) of an export, train, checkpoint dir or .safetensors file."""
    if source.is_file() and source.suffix == ".safetensors":
        return source, None, None
    for weights, spec_file in (
        (source / "model.safetensors", source / "forecaster.json"),  # export dir or registry version
        (source / "best" / "model.safetensors", source / "meta.json"),  # train/ dir: its best weights
        (source / "model.safetensors", source / "meta.json"),  # checkpoint step dir (no spec there)
    ):
        if weights.is_file():
            return (weights, *_read_spec(spec_file))
    raise ConfigError(
        f"train.init_from: {choice} is not none, champion, a .safetensors file or a directory "
        f"with model.safetensors (an export, a registry version, train/ or a checkpoint)"
    )


def _read_spec(spec_file: Path) -> tuple[ModelSpec | None, dict | None]:
    """The ModelSpec saved in `spec_file` and its fallback record (`fallback_record`); (None, None) without a spec."""
    try:
        payload = json.loads(spec_file.read_text())
        forecast = ModelSpec.from_dict(payload["model"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    fallback = fallback_record(payload.get("base"))
    for key in ("trained_base", "fallback_base") if fallback is not None else ():
        try:
            forecast.with_base(fallback[key])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"train.init_from: {spec_file}: base.{key} is not a residual base ({exc})") from None
    return forecast, fallback


def fallback_record(base: object) -> dict | None:
    """The base record (train/meta.json's `base`, forecaster.json's) where the run had a fallback base, with the
    fields of the base the correction was trained over (`trained_base`) and of the fallback (`fallback_base`);
    None for any other."""
    if isinstance(base, dict) and all(isinstance(base.get(key), dict) for key in ("trained_base", "fallback_base")):
        return base
    return None


def _trained_spec(forecast: ModelSpec | None, fallback: dict | None) -> ModelSpec | None:
    """The spec the weights were trained with: the saved one, its base the one trained over where its run had a
    fallback (the same unless the fallback forecasts)."""
    if forecast is None or fallback is None:
        return forecast
    return forecast.with_base(fallback["trained_base"])  # checked by `_read_spec`


SET_AFTER_TRAINING = ("band",)
"""Buffers a model has or lacks by its calibration settings alone (`ModelSpec.band_season`): training starts
them at zero and `finish` sets them, so a champion calibrated otherwise still warm-starts."""


def _calibration_as_here(state: dict, current: dict) -> dict:
    kept = {k: v for k, v in state.items() if k in current or k not in SET_AFTER_TRAINING}
    return {**kept, **{k: current[k] for k in SET_AFTER_TRAINING if k in current and k not in state}}


def _check_architecture(label: str, saved: ModelSpec | None, spec: ModelSpec, state: dict, current: dict) -> None:
    if saved is not None:
        theirs, ours = saved.architecture(), spec.architecture()
        diff = [f"{k}={theirs[k]!r} (config: {v!r})" for k, v in ours.items() if theirs[k] != v]
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
