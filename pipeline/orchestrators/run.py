"""Running stages in order: what `lstm-pipeline run` and each stage command do, and the Python entry point.

Before the evaluate stage of a refit backtest, the fold models are trained (`refit`); after a
full run with `registry.promote`, the export is scored against the champion (`registry`). The
config is written to the run directory once every stage asked for (and the promotion) has
succeeded, so a failed run keeps the last good one; the stages after a failed one refuse what
it left half-renewed (`check_upstream`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import Config, save_config
from pipeline.library.artifacts import META
from pipeline.library.run_lock import run_lock
from pipeline.library.runtime import dist_state
from pipeline.stages.table import NAMES, stage_dir, stage_function
from pipeline.stages.tracking import check_tracking, prune_local_runs, unsynced_offline_runs

log = logging.getLogger("pipeline")


def run_stages(cfg: Config, names: Sequence[str] = NAMES, force: bool = False) -> Path:
    """Run `names` in order (each skipped when its inputs are unchanged, unless `force`); the run directory.

    The main process holds the run directory's lock throughout (`run_lock`): a second command on the same
    `output_dir` stops in one line instead of sharing its temporary and work directories."""
    state = dist_state()
    check_tracking(cfg)  # a bad WANDB_MODE, or TensorBoard not installed, fails before ingest, not at the first log
    if "train" in names[1:] and (force or not (stage_dir(cfg, "train") / META).is_file()):
        from pipeline.stages.train import check_resume, training_precision

        training_precision(cfg)  # a precision this machine refuses fails before ingest and window work
        check_resume(cfg)  # ... and so does a train.resume checkpoint that is not there
    with run_lock(cfg.run_dir) if state.is_main_process else contextlib.nullcontext():
        return _run_stages(cfg, names, force, state)


def _run_stages(cfg: Config, names: Sequence[str], force: bool, state) -> Path:
    for name in names:
        if name == "evaluate" and cfg.evaluate.backtest.folds and cfg.evaluate.backtest.refit:
            from pipeline.orchestrators import refit

            refit.prepare_folds(cfg, force)
        stage_function(name)(cfg, force=force)
    if tuple(names) == NAMES and state.is_main_process and cfg.registry.promote:
        from pipeline.orchestrators import registry

        registry.promote(cfg)
    if state.is_main_process:  # only once everything asked for succeeded: a failed run keeps the last good config
        save_config(cfg, cfg.run_dir / "config.yaml")
        if tuple(names) == NAMES:
            log.info("done: %s", cfg.run_dir)
    if state.is_main_process:
        prune_local_runs(cfg.run_dir, cfg.tracking.keep_local_runs)
    waiting = unsynced_offline_runs(cfg.run_dir) if state.is_main_process else []
    if waiting:  # this command's runs, or earlier ones: either way, not in W&B until synced
        pattern = cfg.run_dir / "wandb" / "offline-run-*"
        log.info("W&B: %d offline runs here are not uploaded yet; upload them with: wandb sync %s", len(waiting),
                 pattern)  # fmt: skip
    return cfg.run_dir
