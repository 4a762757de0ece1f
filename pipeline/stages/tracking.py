"""Experiment tracking through Accelerate's trackers (W&B, TensorBoard), main process only.

Each stage opens a run of its own `job_type` in one group (the experiment name), so separate
stage commands read as one experiment. A resumed training run continues its W&B run (the id
is kept in the training work directory). Under `wandb agent` (a sweep) every stage logs into
the agent's run instead, so the sweep sees the whole trial, test metric included.
"""

from __future__ import annotations

import logging
import netrc
import os
import re
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
        self.last_step: int | None = None

    @property
    def name(self) -> str:
        return self.backend.name if self.backend is not None else "none"

    @property
    def run(self) -> Any:
        return getattr(self.backend, "tracker", None)

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        if self.backend is None:
            return
        if self.name == "wandb" and step is not None and step < getattr(self.run, "starting_step", 0):
            # a resumed online run already holds this step (from before the kill); W&B would refuse it
            return
        self.backend.log(values, step=step)
        if step is not None:
            self.last_step = max(step, self.last_step or 0)

    def summary(self, values: dict[str, Any]) -> None:
        """Final values (W&B run summary; TensorBoard scalars at the last logged step)."""
        if self.backend is None:
            return
        if self.name == "wandb":
            self.run.summary.update(values)
        else:  # at the last step: an earlier step would make TensorBoard drop the tag's later points
            scalars = {k: v for k, v in values.items() if isinstance(v, (int, float))}
            self.backend.log(scalars, step=self.last_step)

    def describe(self, info: dict[str, Any]) -> None:
        """Run facts (data, world size, device, precision, versions) into the run's config."""
        if self.backend is None:
            return
        if self.name == "wandb":
            self.run.config.update({"run_info": info}, allow_val_change=True)
        else:
            self.backend.store_init_configuration(_flat({"run_info": info}))

    def images(self, paths: dict[str, Path]) -> None:
        """PNG files as images (W&B media; TensorBoard image summaries)."""
        if self.backend is None or not paths:
            return
        if self.name == "wandb":
            import wandb

            self.backend.log({k: wandb.Image(str(p)) for k, p in paths.items()}, step=self.last_step)
            return
        import matplotlib.image

        for key, path in paths.items():
            pixels = matplotlib.image.imread(str(path))[..., :3]
            self.run.add_image(key, pixels, global_step=self.last_step or 0, dataformats="HWC")
        self.run.flush()

    def table(self, key: str, frame: Any) -> None:
        """A data frame as a W&B Table (TensorBoard: a markdown table in the text tab)."""
        if self.backend is None:
            return
        if self.name == "wandb":
            import wandb

            self.backend.log({key: wandb.Table(dataframe=frame)}, step=self.last_step)
            return
        header = "| " + " | ".join(map(str, frame.columns)) + " |"
        rows = [
            "| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r) + " |"
            for r in frame.itertuples(index=False)
        ]
        self.run.add_text(key, "\n".join([header, "|" + " --- |" * len(frame.columns), *rows]), self.last_step or 0)
        self.run.flush()

    def log_artifact(
        self, path: Path, name: str, type: str, metadata: dict[str, Any], description: str | None = None
    ) -> None:
        """A directory as a W&B artifact of this run (lineage links it to the run); no-op elsewhere."""
        if self.name != "wandb":
            return
        import wandb

        artifact = wandb.Artifact(artifact_name(name), type=type, description=description, metadata=metadata)
        artifact.add_dir(str(path))
        self.run.log_artifact(artifact)

    def finish(self) -> None:
        if self.backend is None:
            return
        self.backend.finish()
        if self.offline_dir is not None:
            log.info("W&B ran offline; upload with: wandb sync %s", self.offline_dir)
        self.backend = None


def artifact_name(name: str) -> str:
    """W&B artifact names allow letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-") or "model"


def sweep_run_id() -> str | None:
    """The run id `wandb agent` hands to the trial it starts, or None outside a sweep."""
    if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
        return os.environ["WANDB_RUN_ID"]
    return None


def open_tracker(cfg: Config, job_type: str, is_main: bool, run_id: str | None = None) -> Tracker:
    t = cfg.tracking
    if not is_main or t.backend == "none":
        return Tracker()
    from accelerate import PartialState

    PartialState()  # Accelerate's trackers need its process state; a no-op when a launcher set it up
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
    project: str | None = t.project
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
    if sweep_run_id():  # one run per trial: every stage continues the agent's run (id, project from its env)
        kwargs.update(id=None, resume="allow", job_type="sweep", name=None, entity=None)
        project = None
    backend = WandBTracker(project, **kwargs)
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


def prune_local_runs(run_dir: Path, keep: int) -> list[Path]:
    """Bound the tracker files a run directory collects night after night; the paths deleted.

    W&B writes a folder per stage run under `<run_dir>/wandb/`: online ones are copies of what
    was uploaded, offline ones are the only copy until `wandb sync` marks them uploaded
    (`run-<id>.wandb.synced`). The newest `keep` are kept, and an offline folder that was never
    uploaded is never deleted (a warning counts them). TensorBoard's event files: the newest
    `keep` per stage.
    """
    import shutil

    deleted: list[Path] = []
    folders = sorted((p for p in (run_dir / "wandb").glob("*run-*") if p.is_dir()), key=_started)
    unsynced = [p for p in folders if p.name.startswith("offline-") and not any(p.glob("*.wandb.synced"))]
    for folder in folders[:-keep]:
        if folder not in unsynced:
            shutil.rmtree(folder, ignore_errors=True)
            deleted.append(folder)
    if len(unsynced) > keep:
        log.warning(
            "%d offline W&B runs in %s were never uploaded; upload them with: wandb sync %s",
            len(unsynced),
            run_dir / "wandb",
            run_dir / "wandb" / "offline-run-*",
        )
    for stage in (p for p in (run_dir / "tensorboard").glob("*") if p.is_dir()):
        events = sorted(stage.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
        for path in events[:-keep]:
            path.unlink(missing_ok=True)
            deleted.append(path)
    return deleted


def _started(folder: Path) -> str:
    """A W&B run folder's start time as it names it (`[offline-]run-YYYYMMDD_HHMMSS-<id>`)."""
    found = re.search(r"run-(\d{8}_\d{6})", folder.name)
    return found.group(1) if found else ""
