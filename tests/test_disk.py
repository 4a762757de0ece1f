"""Nothing grows without bound: the datasets cache, the registry, the tracker files of a run directory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.library import registry_store as store
from pipeline.stages.tracking import prune_local_runs

from .conftest import cli, write_config


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _rows(start: pd.Timestamp, n: int, rng) -> pd.DataFrame:
    t = pd.date_range(start, periods=n, freq="h")
    parts = [
        pd.DataFrame({"id": sid, "time": t, "y": 10 * k + np.sin(np.arange(n) / 3.8) + rng.normal(0, 0.1, n)})
        for k, sid in enumerate(("a", "b", "c"))
    ]
    return pd.concat(parts)


def test_appending_to_a_source_five_times_leaves_no_copy_behind(tmp_path):
    source = tmp_path / "data.csv"
    rng = np.random.default_rng(0)
    frame = _rows(pd.Timestamp("2024-01-01"), 300, rng)
    frame.to_csv(source, index=False)
    config = write_config(tmp_path, {"data.source": str(source), "data.id_column": "id", "data.target_column": "y"})
    hf, scratch = tmp_path / "hf", tmp_path / "scratch"
    scratch.mkdir()
    env = {"HF_HOME": str(hf), "HF_DATASETS_CACHE": str(hf / "datasets"), "TMPDIR": str(scratch)}
    sizes = []
    for night in range(5):
        if night:  # a nightly append: a day more of every series
            end = frame["time"].max() + pd.Timedelta(hours=1)
            more = _rows(end, 24, rng)
            frame = pd.concat([frame, more])
            more.to_csv(source, mode="a", header=False, index=False)
        result = cli("ingest", "--config", str(config), env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "ingest: 3 series" in result.stderr
        sizes.append((_size(hf), _size(tmp_path / "run"), list(scratch.iterdir())))
    assert all(hf_size == sizes[0][0] for hf_size, _, _ in sizes), sizes  # the datasets cache does not grow
    assert not list(hf.rglob("*.arrow"))
    assert all(left == [] for _, _, left in sizes)  # its temporary cache is gone after every run
    grown = sizes[-1][1] - sizes[0][1]
    assert grown < 4 * 24 * 3 * 4 * 4  # the run directory grows by the new rows' values (4 appends), no copy


def test_the_registry_keeps_the_newest_versions_and_the_champion(tmp_path):
    root = tmp_path / "registry" / "demo"
    for n in range(1, 7):
        (root / f"v{n:04d}").mkdir(parents=True)
    store.switch_current(root, "v0002")
    assert store.prune_versions(root, 3) == ["v0001", "v0003"]
    assert store.versions(root) == ["v0002", "v0004", "v0005", "v0006"]
    assert store.current_version(root) == "v0002"


def test_tracker_files_keep_the_newest_and_every_offline_run_not_yet_uploaded(tmp_path):
    wandb = tmp_path / "run" / "wandb"
    names = [
        "run-20261101_010000-aaaa1111",
        "offline-run-20261102_010000-bbbb2222",  # never uploaded: kept whatever its age
        "offline-run-20261103_010000-cccc3333",  # uploaded (wandb sync marks it)
        "run-20261104_010000-dddd4444",
        "run-20261105_010000-eeee5555",
        "offline-run-20261106_010000-ffff6666",
    ]
    for name in names:
        (wandb / name).mkdir(parents=True)
    (wandb / names[2] / "run-cccc3333.wandb.synced").touch()
    board = tmp_path / "run" / "tensorboard" / "train"
    board.mkdir(parents=True)
    for k in range(4):
        event = board / f"events.out.tfevents.{k}"
        event.touch()
        os.utime(event, (time.time() + k, time.time() + k))
    deleted = prune_local_runs(tmp_path / "run", keep=3)
    left = sorted(p.name for p in wandb.iterdir())
    assert left == sorted([names[1], names[3], names[4], names[5]])
    assert {p.name for p in deleted} >= {names[0], names[2], "events.out.tfevents.0"}
    assert sorted(p.name for p in board.iterdir()) == [f"events.out.tfevents.{k}" for k in (1, 2, 3)]


def test_tensorboard_keeps_the_hparams_folders_of_the_runs_it_keeps_only(tmp_path):
    """Each TensorBoard session adds two dated folders per stored config (hparams events, hparams.yml) beside its
    event file; pruning removed old event files but kept every folder, so a nightly run's folder grew forever."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipeline.config import load_config
    from pipeline.stages.tracking import open_tracker

    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", "tracking.backend=tensorboard"])
    for night in range(3):
        if night:
            time.sleep(1.1)  # event file names hold whole seconds
        tracker = open_tracker(cfg, "train", True)
        tracker.describe({"night": night})  # a second stored config, as training stores its run facts
        tracker.log({"train/loss": float(night)}, step=1)
        tracker.finish()
    board = tmp_path / "run" / "tensorboard" / "train"
    assert len([p for p in board.iterdir() if p.is_dir()]) == 3 * 4
    prune_local_runs(tmp_path / "run", keep=1)
    [event] = board.glob("events.out.tfevents.*")
    folders = [p for p in board.iterdir() if p.is_dir()]
    assert len(folders) == 4 and all(float(p.name) >= int(event.name.split(".")[3]) for p in folders)
    scalars = EventAccumulator(str(event)).Reload().Scalars("train/loss")
    assert [(s.step, s.value) for s in scalars] == [(1, 2.0)]  # the newest night's
