"""The stages in one table: name, upstream stage, and the config sections their cache keys hash.

A stage's output is reused when its key is unchanged: the hash of its sections (without the
fields marked operational, which change how a run is operated, not what it computes) and of
its inputs (the upstream stage's fingerprint, or the source files for ingest). `--force`
redoes it. Orchestrators run the stages through `stage_function`, importing each on demand so
that ingest and window never load torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config
from pipeline.library.artifacts import stage_key


@dataclass(frozen=True)
class Stage:
    name: str
    upstream: str | None  # the stage whose output directory this one reads
    sections: tuple[str, ...]  # config sections (or keys) in the cache key
    makes: str  # what its output directory holds


STAGES = (
    Stage("ingest", None, ("data",), "values.arrow: the series back to back, split and scaled on their train part"),
    Stage("window", "ingest", ("window",), "the (series, start) pairs of the train, validation and test windows"),
    Stage(
        "train",
        "window",
        ("model", "train", "seed", "data.calendar"),
        "the best and last weights, the training log, the resumable checkpoints while it runs",
    ),
    Stage("evaluate", "train", ("evaluate",), "metrics against naive baselines, per-series table, plots, report"),
    Stage("export", "train", ("export",), "a self-contained model directory: safetensors, ONNX, scalers, model card"),
)
NAMES = tuple(s.name for s in STAGES)
BY_NAME = {s.name: s for s in STAGES}


def cache_key(name: str, cfg: Config, *inputs: str) -> str:
    """The stage's cache key: its config sections and its inputs (upstream fingerprint first)."""
    return stage_key(name, cfg.section_hash(*BY_NAME[name].sections), *inputs)


def stage_dir(cfg: Config, name: str) -> Path:
    return cfg.run_dir / name


def stage_function(name: str) -> Callable[..., Path]:
    """A stage's `run(cfg, force=False)`, imported on demand."""
    if name not in BY_NAME:
        raise ValueError(f"unknown stage {name!r}")
    return importlib.import_module(f"pipeline.stages.{name}").run
