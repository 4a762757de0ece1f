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
from pipeline.config.auto import AUTO, resolve
from pipeline.library.artifacts import stage_key
from pipeline.library.errors import UserError, shown
from pipeline.library.records import IngestRecord, TrainRecord, WindowRecord


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


def train_settings(cfg: Config) -> str:
    """The hash of what training depends on in the config (the train stage's sections)."""
    return cfg.section_hash(*BY_NAME["train"].sections)


DERIVED_FROM = ("window.horizon", "window.lookback", "evaluate.season_length")
"""Keys outside the train sections that their `auto` values derive from (`pipeline.config.auto`): a changed horizon
shows in the train settings as another `model.recurrent_steps`, and the message names the horizon."""


def check_trained_with(cfg: Config, trained, needed_by: str) -> None:
    """Refuse to score or export a model trained with other settings than `cfg`'s (a `train` run with overrides
    that this command does not repeat): one line naming the keys that differ."""
    if trained.settings is None or trained.settings == train_settings(cfg):
        return
    differ = []
    if trained.config is not None:
        mine = cfg.to_dict()
        for key in DERIVED_FROM:  # named first: the change behind the `auto` values that differ
            head, _, leaf = key.partition(".")
            theirs, ours = (trained.config.get(head) or {}).get(leaf), mine[head][leaf]
            if theirs != ours:
                differ.append(f"{key}={theirs!r} there, {ours!r} here")
        for section in BY_NAME["train"].sections:
            head, _, leaf = section.partition(".")
            theirs, ours = trained.config.get(head), mine.get(head)
            if leaf:
                theirs, ours = (theirs or {}).get(leaf), (ours or {}).get(leaf)
            if isinstance(ours, dict):
                differ += [f"{head}.{k}={theirs.get(k)!r} there, {v!r} here" for k, v in ours.items()
                           if isinstance(theirs, dict) and theirs.get(k) != v]  # fmt: skip
            elif theirs != ours:
                differ.append(f"{section}={theirs!r} there, {ours!r} here")
    differ = list(dict.fromkeys(differ))
    detail = f" ({'; '.join(differ[:3])})" if differ else ""
    raise UserError(
        f"{needed_by}: {stage_dir(cfg, 'train')} holds a model trained with other settings than this config's"
        f"{detail}; run 'lstm-pipeline train' with this config and overrides first (or 'lstm-pipeline run')"
    )


def check_upstream(cfg: Config, needed_by: str, trained: TrainRecord | None = None) -> None:
    """Refuse the outputs `needed_by` reads when they no longer belong together or to `cfg`: windows made
    from other data than ingest holds now, a model trained on other windows (a stage command run alone
    since, or a run that failed after replacing them), or data and windows made with other settings than
    `cfg`'s (a stage command given overrides its upstream stages did not get). Scoring or exporting
    such a mix would forecast from the wrong positions or record settings the model never saw."""
    ingest = IngestRecord.require(stage_dir(cfg, "ingest"), needed_by)
    window = WindowRecord.require(stage_dir(cfg, "window"), needed_by)
    redo = "run 'lstm-pipeline run' with this config and overrides"
    if window.ingest_fingerprint != ingest.fingerprint:
        raise UserError(
            f"{needed_by}: {stage_dir(cfg, 'window')} was made from other data than {stage_dir(cfg, 'ingest')} "
            f"holds now (ingest ran after it); {redo}"
        )
    if trained is not None and trained.window_fingerprint not in (None, window.fingerprint):
        raise UserError(
            f"{needed_by}: {stage_dir(cfg, 'train')} holds a model trained on other windows than "
            f"{stage_dir(cfg, 'window')} holds now (ingest or window ran after it); {redo}"
        )

    def value(key: str, v):  # `data.transform: auto` as ingest resolved it equals that value given explicitly
        return ingest.transform if key == "transform" and v == AUTO else v

    for name, record, mine in (("ingest", ingest, cfg), ("window", window, resolve(cfg, ingest))):
        section = BY_NAME[name].sections[0]
        theirs = (record.config or {}).get(section)
        if not isinstance(theirs, dict):
            continue  # a record written before stages kept their config
        differ = [
            f"{section}.{k}={shown(repr(theirs[k]), 100)} there, {shown(repr(v), 100)} here"
            for k, v in mine.section_values(section).items()
            if k in theirs and value(k, v) != value(k, theirs[k])
        ]
        if differ:
            raise UserError(
                f"{needed_by}: {stage_dir(cfg, name)} was made with other settings than this config's "
                f"({'; '.join(differ[:3])}); {redo}"
            )


def stage_function(name: str) -> Callable[..., Path]:
    """A stage's `run(cfg, force=False)`, imported on demand."""
    if name not in BY_NAME:
        raise ValueError(f"unknown stage {name!r}")
    return importlib.import_module(f"pipeline.stages.{name}").run
