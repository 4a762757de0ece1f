"""`lstm-pipeline rollback`: put an earlier version back into service, and keep it there.

A promoted model that misbehaves in production is an operator's call, not the validation
windows': rollback switches `current` (atomically, under the registry's lock, as a promotion does)
to the version that served before it, or to the one named by `--to`, and records a `rolled_back`
line in history.jsonl naming the version withdrawn. The nightly decision never promotes a
withdrawn export again (`registry_store.withdrawn_keys`): without that, the next night with nothing
new would judge it against the version rolled back to and, being better on the test windows,
promote it straight back. A new challenger (new data or settings) is judged as usual, and rolling
back `--to` a withdrawn version puts it back into service.

The forecast service follows `current`, so it serves the version rolled back to within its poll
interval. With `tracking.backend: wandb` a `rollback` run moves W&B's `champion` alias too: it logs
the version's export files as the model artifact again, aliased `champion` and the version, and
W&B, finding the same files, puts the aliases on the version it already holds (offline runs do so
when synced).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from pipeline.config import Config
from pipeline.library import registry_store as store
from pipeline.library.errors import UserError, shown
from pipeline.library.forecaster import Forecaster
from pipeline.orchestrators.registry import registry_root

log = logging.getLogger("pipeline")


def rollback(cfg: Config, to: str | None = None) -> dict:
    """Switch `current` to `to` (default: the version that served before the current one); the history record."""
    root = registry_root(cfg)
    if not (root / store.HISTORY).is_file() and store.current_version(root) is None:
        raise UserError(f"registry {root}: nothing was promoted there, so there is nothing to roll back")
    with store.locked(root):
        store.recover(root)
        history = store.read_history(root)
        current = store.current_version(root)
        target = to or previous_version(root, history, current)
        if target is None:
            raise UserError(
                f"registry {root}: no version served before {current} that is still there and not withdrawn; "
                f"name one with --to vNNNN (versions: {', '.join(store.versions(root)) or 'none'})"
            )
        if target == current:
            raise UserError(f"registry {root}: {target} is already the current version")
        check_servable(root, target)
        store.switch_current(root, target)
        record = {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "name": cfg.name,
            "version": target,
            "decision": store.ROLLED_BACK,
            "reason": f"rolled back from {current} to {target} by an operator",
            "current": target,
            "withdrawn": current,
            "withdrawn_export_key": store.export_key(root, current) if current else None,
            "export_key": store.export_key(root, target),
        }
        store.append_history(root, record)
    log.info("registry: %s; %s is never promoted again unless rolled back to", record["reason"], current)
    track_rollback(cfg, root / target, record)
    return record


def track_rollback(cfg: Config, version_dir: Path, record: dict) -> None:
    """W&B's `champion` alias follows `current`: the model artifact of the version rolled back to, aliased again
    (and linked to `tracking.registry_collection` when one is set, as a promotion is)."""
    if cfg.tracking.backend != "wandb":
        return
    from pipeline.stages.tracking import open_tracker

    name, aliases = f"{cfg.name}-model", [record["version"], "champion"]
    files = store.export_files(version_dir)
    tracker = open_tracker(cfg, "rollback", True)
    try:
        tracker.summary({f"registry/{k}": record[k] for k in ("decision", "version", "withdrawn")})
        tracker.log_artifact(None, name, "model", {"registry": record}, aliases=aliases, files=files)
        collection = cfg.tracking.registry_collection
        if collection:
            tracker.link_artifact(None, name, "model", {"registry": record}, collection, aliases, files)
    finally:
        tracker.finish()


def previous_version(root: Path, history: list[dict], current: str | None) -> str | None:
    """The latest version that served before `current` took over (history's `current` column, newest first) and
    is still there and not withdrawn."""
    withdrawn = store.withdrawn_keys(history)
    served = [r.get("current") for r in history if r.get("current")]
    while served and served[-1] == current:
        served.pop()
    usable = (
        v
        for v in reversed(served)
        if v != current and (root / v / "model.safetensors").is_file() and store.export_key(root, v) not in withdrawn
    )
    return next(usable, None)


def check_servable(root: Path, version: str) -> None:
    """The version rolled back to loads (complete, manifest-checked) before `current` points at it."""
    if not store.is_version(version):
        raise UserError(f"rollback --to: {shown(repr(version))} is not a version name (vNNNN)")
    path = root / version
    if not path.is_dir():
        raise UserError(f"registry {root}: no version {version} (versions: {', '.join(store.versions(root))})")
    try:
        Forecaster.load(path)
    except UserError as exc:
        raise UserError(f"registry {root}: {version} cannot serve: {exc}") from None
