"""Experiment tracking through Accelerate's trackers (W&B, TensorBoard), main process only.

Each stage opens a run of its own `job_type` in one group (the experiment name), so separate
stage commands read as one experiment. A resumed training run continues its W&B run (the id
is kept in the training work directory). Under `wandb agent` (a sweep) every stage logs into
the agent's run instead, so the sweep sees the whole trial, test metric included.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.library.errors import ConfigError, shown

log = logging.getLogger("pipeline")


def wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


WANDB_MODES = {"online": "online", "offline": "offline", "disabled": "disabled", "dryrun": "offline", "run": "online"}
"""The values of the environment variable WANDB_MODE a stage runs under, and what each means here (W&B's older
names `dryrun` and `run` are offline and online: an offline run takes the offline path, which W&B requires)."""


def wandb_mode(configured: str) -> str:
    """The W&B mode of a stage: WANDB_MODE when set (it overrides `tracking.mode`), else the configured one.

    Checked before a stage works (`open_tracker`, and `run` before its first stage): W&B itself would refuse
    an unknown value with a traceback at the first logged step, and would refuse `use_artifact` under
    `dryrun`, after training.
    """
    given = os.environ.get("WANDB_MODE", "")
    if not given:
        return configured
    mode = WANDB_MODES.get(given)
    if mode is None:
        raise ConfigError(
            f"environment variable WANDB_MODE must be one of online|offline|disabled (or dryrun, run), "
            f"got {shown(repr(given))}"
        )
    return mode


TENSORBOARD_INSTALL = "pip install 'lstm-pipeline[tensorboard]'"


def check_tracking(cfg: Config) -> None:
    """What the configured backend needs, checked before any stage works: a WANDB_MODE W&B takes, or TensorBoard
    installed (an extra; without it the first stage to log failed with a traceback, after the stages before it)."""
    t = cfg.tracking
    if t.backend == "wandb":
        wandb_mode(t.mode)
    elif t.backend == "tensorboard":
        import importlib.util

        if not any(importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX")):
            raise ConfigError(f"tracking.backend: tensorboard needs the tensorboard package: {TENSORBOARD_INSTALL}")


class Tracker:
    """A thin front to one Accelerate tracker; every method is a no-op without one.

    The backend starts at its first use, so a run killed before logging anything leaves no
    tracker file. A `deferred` tracker (training with checkpoints) holds what it is given until
    `commit()`, which training calls when a checkpoint is written: the tracker then never holds a
    step that a resume from the last checkpoint would log again, so a killed and resumed run has
    each step once, in order (exact resume, as for the weights). What is committed is on disk
    within a fraction of a second (W&B's offline log is flushed every 0.25 s, TensorBoard's at
    each commit), so a SIGKILL loses at most the steps since the last checkpoint, which the
    resumed run logs again.
    """

    def __init__(self, opener: Callable[[], tuple[Any, Path | None]] | None = None, kind: str = "none",
                 deferred: bool = False) -> None:  # fmt: skip
        self._opener = opener  # starts the backend: (Accelerate tracker, W&B offline folder or None)
        self.kind = kind if opener is not None else "none"
        self.deferred = deferred
        self.backend: Any = None
        self.offline_dir: Path | None = None
        self.pending: list[tuple[str, dict[str, Any], int | None]] = []
        self.last_step: int | None = None

    @property
    def name(self) -> str:
        return self.kind

    @property
    def run(self) -> Any:
        return getattr(self.backend, "tracker", None)

    def _started(self) -> bool:
        if self.backend is None and self._opener is not None:
            self.backend, self.offline_dir = self._opener()
            self._opener = None
        return self.backend is not None

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        if self.kind == "none":
            return
        if step is not None:
            self.last_step = max(step, self.last_step or 0)
        if self.deferred:
            self.pending.append(("log", values, step))
            return
        self._log(values, step)

    def _log(self, values: dict[str, Any], step: int | None, whole: bool = False) -> None:
        """`whole`: every value of this step is in `values` (W&B writes the row now, not at the next step)."""
        if not self._started():
            return
        if self.kind == "wandb" and step is not None and step < getattr(self.run, "starting_step", 0):
            # a resumed online run already holds this step (from before the kill); W&B would refuse it
            return
        if self.kind == "wandb" and whole:
            self.backend.log(values, step=step, commit=True)
        else:
            self.backend.log(values, step=step)

    def commit(self) -> None:
        """Send what a deferred tracker holds and get it onto disk (at a checkpoint, and at the end)."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        rows: dict[int | None, dict[str, Any]] = {}  # one row per step: the train and the validation values
        for kind, values, step in pending:
            if kind == "log":
                rows.setdefault(step, {}).update(values)
            else:
                self._describe(values)
        for step, values in rows.items():
            self._log(values, step, whole=True)
        if self.kind == "tensorboard":
            self.run.flush()
        elif self.offline_dir is not None:
            time.sleep(WANDB_FLUSH_SECONDS * 1.5)  # the offline log's next flush

    def discard(self) -> None:
        """Drop what a deferred tracker holds (training failed: a resume from the checkpoint logs it again)."""
        self.pending.clear()

    def summary(self, values: dict[str, Any]) -> None:
        """Final values (W&B run summary; TensorBoard scalars at the last logged step)."""
        self.commit()
        if not self._started():
            return
        if self.name == "wandb":
            self.run.summary.update(values)
        else:  # at the last step: an earlier step would make TensorBoard drop the tag's later points
            scalars = {k: v for k, v in values.items() if isinstance(v, (int, float))}
            self.backend.log(scalars, step=self.last_step)

    def describe(self, info: dict[str, Any]) -> None:
        """Run facts (data, world size, device, precision, versions) into the run's config."""
        if self.kind == "none":
            return
        if self.deferred:
            self.pending.append(("describe", info, None))
            return
        self._describe(info)

    def _describe(self, info: dict[str, Any]) -> None:
        if not self._started():
            return
        if self.name == "wandb":
            self.run.config.update({"run_info": info}, allow_val_change=True)
        else:
            self.backend.store_init_configuration(_flat({"run_info": info}))

    def images(self, paths: dict[str, Path]) -> None:
        """PNG files as images (W&B media; TensorBoard image summaries)."""
        self.commit()
        if not paths or not self._started():
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
        self.commit()
        if not self._started():
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
        self, path: Path | None, name: str, type: str, metadata: dict[str, Any], description: str | None = None,
        aliases: list[str] | None = None, files: list[Path] = (), references: list[str] = (),
    ) -> None:  # fmt: skip
        """An artifact this run made (a directory, files, references to data left where it is); W&B only."""
        self.commit()
        if self.name != "wandb" or not self._started():
            return
        artifact = _artifact(path, name, type, metadata, description, files, references)
        self.run.log_artifact(artifact, aliases=aliases)

    def use_artifact(
        self, name: str, type: str, metadata: dict[str, Any], files: list[Path] = (), references: list[str] = ()
    ) -> None:
        """Record that this run used an artifact an earlier run logged (built again from the same content: W&B
        matches it by its digest), the input edge of the lineage graph; W&B only."""
        self.commit()
        if self.name != "wandb" or not self._started():
            return
        artifact = _artifact(None, name, type, metadata, None, files, references)
        if self.offline_dir is None:
            self.run.use_artifact(artifact)
        elif hasattr(self.run, "_log_artifact"):  # offline: what use_artifact records online, synced later
            self.run._log_artifact(artifact, is_user_created=True, use_after_commit=True)

    def link_artifact(self, path: Path | None, name: str, type: str, metadata: dict[str, Any], target: str,
                      aliases: list[str], files: list[Path] = ()) -> None:  # fmt: skip
        """Link an artifact to a W&B registry collection (online; offline W&B cannot link: said in the log)."""
        if self.name != "wandb" or not self._started():
            return
        if self.offline_dir is not None:
            log.warning(
                "W&B is offline: link %s to the registry collection %s after `wandb sync` (W&B links online only)",
                name,
                target,
            )
            return
        self.run.link_artifact(_artifact(path, name, type, metadata, None, files, ()), target, aliases=aliases)

    def finish(self) -> None:
        self.commit()
        if self.backend is None:
            return
        self.backend.finish()
        if self.offline_dir is not None:
            log.info("W&B ran offline; upload with: wandb sync %s", self.offline_dir)
        self.backend = None


def _artifact(path, name, type, metadata, description, files, references) -> Any:
    import wandb

    artifact = wandb.Artifact(artifact_name(name), type=type, description=description, metadata=metadata)
    if path is not None:
        artifact.add_dir(str(path))
    for file in files:
        artifact.add_file(str(file))
    for uri in references:
        artifact.add_reference(uri, checksum=False)  # the data stays where it is; its fingerprint is in a file
    return artifact


def artifact_name(name: str) -> str:
    """W&B artifact names allow letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-") or "model"


def sweep_run_id() -> str | None:
    """The run id `wandb agent` hands to the trial it starts, or None outside a sweep."""
    if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
        return os.environ["WANDB_RUN_ID"]
    return None


def open_tracker(
    cfg: Config, job_type: str, is_main: bool, run_id: str | None = None, deferred: bool = False
) -> Tracker:
    """The stage's tracker (started at its first use); `deferred`: logged values wait for `commit()`."""
    t = cfg.tracking
    check_tracking(cfg)  # every process: what stops one stops them all, before the stage's work
    if not is_main or t.backend == "none":
        return Tracker()
    return Tracker(lambda: _start(cfg, job_type, run_id), t.backend, deferred)


def _start(cfg: Config, job_type: str, run_id: str | None) -> tuple[Any, Path | None]:
    t = cfg.tracking
    from accelerate import PartialState

    PartialState()  # Accelerate's trackers need its process state; a no-op when a launcher set it up
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if t.backend == "tensorboard":
        from accelerate.tracking import TensorBoardTracker

        backend = TensorBoardTracker(job_type, str(run_dir / "tensorboard"))
        backend.start()
        backend.store_init_configuration(_flat(cfg.to_dict()))
        return backend, None

    from accelerate.tracking import WandBTracker

    mode = wandb_mode(t.mode)
    if os.environ.get("WANDB_MODE") == "":  # unset, as `wandb_mode` reads it (a manifest's `value: ""`); W&B refuses ""
        del os.environ["WANDB_MODE"]
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
    try:
        backend.start()
    except OSError as exc:
        raise _unwritable(exc) from None
    return backend, Path(backend.run.dir).parent if mode == "offline" else None


def _unwritable(exc: OSError) -> OSError:
    """W&B's error for a run folder it cannot make, with the errno it drops: W&B raises `PermissionError("<dir> is
    not writable")` without one, from the real error, so the CLI took it for an internal error (a traceback, exit 1)
    where a path that cannot be written is the user's to fix (one line, exit 2)."""
    cause = exc if exc.errno else exc.__cause__
    if not isinstance(cause, OSError) or not cause.errno:
        return exc
    path = cause.filename or str(exc).removesuffix(" is not writable")
    reason = cause.strerror or os.strerror(cause.errno)
    hint = "W&B cannot write its run files there (tracking.backend=none runs without W&B)"
    return OSError(cause.errno, f"{reason}: {hint}", path)


WANDB_FLUSH_SECONDS = 0.25
"""How often W&B writes its offline log (its default, 15 s, would let a SIGKILL lose a checkpoint's steps)."""


def _wandb_settings() -> Any:
    import wandb

    try:
        return wandb.Settings(
            console="off", silent=True, x_disable_stats=True, x_transaction_log_flush_interval=WANDB_FLUSH_SECONDS
        )
    except Exception:  # a wandb without the setting flushes on its own schedule
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
    `keep` per stage, and the hparams folders made since the oldest of those.
    """
    import shutil

    deleted: list[Path] = []
    folders = sorted((p for p in (run_dir / "wandb").glob("*run-*") if p.is_dir()), key=_started)
    unsynced = unsynced_offline_runs(run_dir)
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
        deleted += _prune_hparams(stage, events[-keep:])
    return deleted


def _prune_hparams(stage: Path, kept: list[Path]) -> list[Path]:
    """The folders TensorBoard's hparams (and Accelerate's hparams.yml) add to a stage's folder, two each time a run
    stores its config, named by the time they were made: those older than the oldest event file kept go with it."""
    import shutil

    created = [_seconds(p.name.removeprefix("events.out.tfevents.").split(".")[0]) for p in kept]
    if not created or None in created:
        return []
    deleted = []
    for folder in (p for p in stage.iterdir() if p.is_dir()):
        made = _seconds(folder.name)
        if made is not None and made < min(created):
            shutil.rmtree(folder, ignore_errors=True)
            deleted.append(folder)
    return deleted


def _seconds(text: str) -> float | None:
    """A Unix time written in a TensorBoard file or folder name, or None where the name holds none."""
    try:
        return float(text)
    except ValueError:
        return None


def unsynced_offline_runs(run_dir: Path) -> list[Path]:
    """The offline W&B run folders of a run directory that `wandb sync` has not uploaded (it marks those it has with
    `run-<id>.wandb.synced`), oldest first."""
    folders = sorted((p for p in (run_dir / "wandb").glob("offline-run-*") if p.is_dir()), key=_started)
    return [p for p in folders if not any(p.glob("*.wandb.synced"))]


def _started(folder: Path) -> str:
    """A W&B run folder's start time as it names it (`[offline-]run-YYYYMMDD_HHMMSS-<id>`)."""
    found = re.search(r"run-(\d{8}_\d{6})", folder.name)
    return found.group(1) if found else ""


# ---------------------------------------------------------------- the lineage: data -> train -> weights -> model

DATA_FILE = "data.json"
"""ingest/data.json: the data's identity (fingerprint, source, size), the content of the dataset artifact."""


def dataset_artifact(cfg: Config, ingest_dir: Path) -> dict[str, Any] | None:
    """The data as an artifact: data.json (its fingerprint: a new version when the data changes) and a reference to
    each source file (no copy of the data). None for an ingest output written before data.json existed."""
    path = ingest_dir / DATA_FILE
    if not path.is_file():
        return None
    from pipeline.library.sources import resolve_files

    identity = json.loads(path.read_text())
    files = resolve_files(cfg.data.source) or []
    return {
        "name": f"{cfg.name}-data",
        "type": "dataset",
        "metadata": identity,
        "files": [path],
        "references": [p.resolve().as_uri() for p in files],
    }


def weights_artifact(cfg: Config, train_dir: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """The trained weights (train/best/model.safetensors): what train logs and export uses."""
    return {
        "name": f"{cfg.name}-weights",
        "type": "checkpoint",
        "metadata": metadata,
        "files": [train_dir / "best" / "model.safetensors"],
    }
