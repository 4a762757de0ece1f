"""Experiment tracking through Accelerate's trackers (W&B, TensorBoard), main process only.

Each stage opens a run of its own `job_type` in one group (the experiment name), so separate
stage commands read as one experiment. A resumed training run continues its W&B run (the id
is kept in the training work directory).
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

from pipeline.config import Config

log = logging.getLogger("pipeline")


def wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class Tracker:
    """A thin front to one Accelerate tracker; every method is a no-op without one."""

    def __init__(self, backend: Any = None, offline_dir: Path | None = None) -> None:
        self.backend = backend
        self.offline_dir = offline_dir

    @property
    def run(self) -> Any:
        return getattr(self.backend, "tracker", None)

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        if self.backend is not None:
            self.backend.log(values, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        """Final values (W&B run summary; TensorBoard scalars at the last step)."""
        if self.backend is None:
            return
        if self.backend.name == "wandb":
            self.run.summary.update(values)
        else:
            self.backend.log({k: v for k, v in values.items() if isinstance(v, (int, float))})

    def describe(self, info: dict[str, Any]) -> None:
        """Run facts (data, world size, device, precision, versions) into the run's config."""
        if self.backend is None:
            return
        if self.backend.name == "wandb":
            self.run.config.update({"run_info": info}, allow_val_change=True)
        else:
            self.backend.store_init_configuration(_flat({"run_info": info}))

    def finish(self) -> None:
        if self.backend is None:
            return
        self.backend.finish()
        if self.offline_dir is not None:
            log.info("W&B ran offline; upload with: wandb sync %s", self.offline_dir)
        self.backend = None


def open_tracker(cfg: Config, job_type: str, is_main: bool, run_id: str | None = None) -> Tracker:
    t = cfg.tracking
    if not is_main or t.backend == "none":
        return Tracker()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if t.backend == "tensorboard":
        from accelerate.tracking import TensorBoardTracker

        backend = TensorBoardTracker(job_type, str(run_dir / "tensorboard"))
        backend.start()
        backend.store_init_configuration(_flat(cfg.to_dict()))
        return Tracker(backend)

    from accelerate.tracking import WandBTracker

    mode = os.environ.get("WANDB_MODE") or t.mode
    if mode == "online" and not wandb_credentials_present():
        log.info("no W&B credentials found; tracking offline")
        mode = "offline"
    kwargs: dict[str, Any] = {
        "entity": t.entity,
        "group": t.group or cfg.name,
        "job_type": job_type,
        "tags": t.tags or None,
        "mode": mode,
        "dir": str(run_dir),
        "name": f"{cfg.name}-{job_type}",
        "config": cfg.to_dict(),
        "settings": _wandb_settings(),
    }
    if run_id:
        kwargs.update(id=run_id, resume="allow")
    backend = WandBTracker(t.project, **kwargs)
    backend.start()
    return Tracker(backend, offline_dir=Path(backend.run.dir).parent if mode == "offline" else None)


def _wandb_settings() -> Any:
    import wandb

    return wandb.Settings(console="off", silent=True, x_disable_stats=True)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out
