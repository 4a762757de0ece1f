"""Experiment tracking, checked by reading what was written: W&B offline run files, TensorBoard events.

W&B runs offline here; its `.wandb` file is a LevelDB-style log of protobuf records (the
format `wandb sync` uploads), read back by `read_wandb_run` below.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config import load_config
from pipeline.library.errors import ConfigError
from pipeline.library.runtime import dist_state
from pipeline.stages.tracking import Tracker, artifact_name, open_tracker

from .conftest import REPO, cli, cli_in_process, write_config
from .test_resume import kill_group, logged_step

# ---------------------------------------------------------------- reading W&B's offline run files

BLOCK = 32768  # LevelDB log: 32 KiB blocks of records, each with a 7-byte header (crc32, length, type)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)


def wandb_records(path: Path) -> Iterator[bytes]:
    """The protobuf payloads of a `.wandb` file; a torn tail (a killed writer) ends the iteration."""
    data = path.read_bytes()
    assert data[: len(FILE_HEADER)] == FILE_HEADER, f"{path} is not a W&B transaction log"
    pos, parts = len(FILE_HEADER), b""
    while True:
        room = BLOCK - pos % BLOCK
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        if pos + 7 > len(data):
            return
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        if kind == 0 or len(chunk) < length or zlib.crc32(bytes([kind]) + chunk) != crc:
            return
        pos += 7 + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            parts = chunk
        elif kind == MIDDLE:
            parts += chunk
        elif kind == LAST:
            yield parts + chunk


@dataclass
class WandbRun:
    dir: Path
    run: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    exited: bool = False

    @property
    def id(self) -> str:
        return self.run.get("id") or next(self.dir.glob("run-*.wandb")).stem.removeprefix("run-")

    def steps(self, key: str) -> dict[int, Any]:
        return {row["_step"]: row[key] for row in self.history if key in row}


def _put(tree: dict, item: Any, value: Any) -> None:
    path = list(item.nested_key) or [item.key]
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def _history_value(item: Any) -> Any:
    kind = item.WhichOneof("value")
    if kind is None:
        return json.loads(item.value_json)
    return None if kind == "none" else json.loads(item.json) if kind == "json" else getattr(item, kind)


def read_wandb_run(run_dir: Path) -> WandbRun:
    """Run facts, config, history rows, summary, artifacts and files of one offline run directory."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = WandbRun(run_dir)
    for payload in wandb_records(next(run_dir.glob("run-*.wandb"))):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out.run = {
                "id": r.run_id,
                "project": r.project,
                "group": r.run_group,
                "job_type": r.job_type,
                "name": r.display_name,
                "tags": list(r.tags),
                "sweep_id": r.sweep_id,
            }
            for item in r.config.update:
                _put(out.config, item, json.loads(item.value_json))
        elif kind == "config":
            for item in record.config.update:
                _put(out.config, item, json.loads(item.value_json))
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _put(row, item, _history_value(item))
            out.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _put(out.summary, item, json.loads(item.value_json))
        elif kind == "artifact":
            a = record.artifact
            out.artifacts.append(
                {
                    "type": a.type,
                    "name": a.name,
                    "description": a.description,
                    "metadata": json.loads(a.metadata or "{}"),
                    "files": {e.path: e.digest for e in a.manifest.contents if not e.ref},
                    "refs": [e.ref for e in a.manifest.contents if e.ref],
                    "aliases": list(a.aliases),
                    "used": a.use_after_commit,  # offline, what use_artifact records: an input of the run
                }
            )
        elif kind == "files":
            out.files += [f.path for f in record.files.files]
        elif kind == "exit":
            out.exited = True
    return out


def wandb_runs(run_dir: Path) -> list[WandbRun]:
    """Every offline W&B run under an output directory, oldest first."""
    return [read_wandb_run(d) for d in sorted((run_dir / "wandb").glob("offline-run-*"))]


# ---------------------------------------------------------------- helpers

FAST = {"train.max_steps": 20, "train.eval_every": 10, "train.checkpoint_every": 20, "train.num_threads": 1}


def wandb_env(tmp: Path, **extra: str) -> dict[str, str]:
    """Offline W&B with its caches (artifact staging included) inside the test's directory."""
    return {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DATA_DIR": str(tmp / "wandb-data"),
        "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
        **extra,
    }


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_job(runs: list[WandbRun]) -> dict[str, WandbRun]:
    return {r.run["job_type"]: r for r in runs}


# ---------------------------------------------------------------- W&B: one full offline run


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wandb")
    config = write_config(tmp, {**FAST, "tracking.backend": "wandb", "tracking.tags": ["ci"]})
    result = cli("run", "--config", str(config), env=wandb_env(tmp))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "run", result


@pytest.mark.slow
def test_stages_are_runs_of_one_group_with_a_job_type_each(wandb_run):
    run, result = wandb_run
    runs = wandb_runs(run)
    jobs = by_job(runs)
    assert sorted(jobs) == ["evaluate", "export", "ingest", "train"]
    for job, r in jobs.items():
        assert r.run["group"] == "small" and r.run["project"] == "lstm-pipeline"
        assert r.run["name"] == f"small-{job}" and r.run["tags"] == ["ci"]
        assert r.exited, f"{job}: the run was not finished"
        assert f"wandb sync {r.dir}" in result.stderr  # how to upload what ran offline
    assert len({r.id for r in runs}) == 4
    assert jobs["train"].id == (run / "train/wandb_run_id").read_text().strip()
    assert not (run / "tensorboard").exists()


@pytest.mark.slow
def test_config_is_nested_and_carries_the_run_facts(wandb_run):
    run, _ = wandb_run
    train = by_job(wandb_runs(run))["train"]
    config = train.config
    assert config["train"]["lr"] == 0.01 and config["train"]["max_steps"] == 20
    assert config["model"]["hidden_size"] == 16 and config["window"]["lookback"] == 48
    assert config["tracking"]["backend"] == "wandb"
    info = config["run_info"]
    assert info["world_size"] == 1 and info["device"] == "cpu" and info["precision"] == "no"
    assert {"pipeline", "torch", "accelerate"} <= set(info["versions"])
    ingest = json.loads((run / "ingest/meta.json").read_text())
    window = json.loads((run / "window/meta.json").read_text())
    assert info["data"] == {
        "data_fingerprint": ingest["fingerprint"],
        "freq": "h",
        "n_series": 4,
        "windows": window["counts"],
    }


@pytest.mark.slow
def test_history_holds_every_logged_step_of_metrics_jsonl(wandb_run):
    run, _ = wandb_run
    train = by_job(wandb_runs(run))["train"]
    rows = jsonl(run / "train/metrics.jsonl")
    logged = [r for r in rows if "loss" in r]
    assert [r["step"] for r in logged] == [5, 10, 15, 20]
    for key in ("loss", "lr", "grad_norm", "windows_per_s", "epoch"):
        assert train.steps(f"train/{key}") == {r["step"]: r[key] for r in logged}, key
    assert train.steps("val/loss") == {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    assert train.summary["val/best_loss"] == min(r["val_loss"] for r in rows if "val_loss" in r)
    assert train.summary["train/steps"] == 20


@pytest.mark.slow
def test_evaluate_logs_test_metrics_table_and_plots(wandb_run):
    run, _ = wandb_run
    evaluate = by_job(wandb_runs(run))["evaluate"]
    metrics = json.loads((run / "evaluate/metrics.json").read_text())
    for method, values in [("model", metrics["model"]), *metrics["baselines"].items()]:
        for name, value in values.items():
            assert evaluate.summary[f"test/{method}/{name}"] == value, (method, name)
    assert evaluate.summary["test/n_windows"] == metrics["n_windows"]

    logged = {k: v for row in evaluate.history for k, v in row.items() if not k.startswith("_")}
    table = logged["test/per_series"]
    per_series = pd.read_csv(run / "evaluate/per_series.csv")
    assert table["_type"] == "table-file" and table["nrows"] == len(per_series)
    assert table["ncols"] == len(per_series.columns)
    saved = json.loads((evaluate.dir / "files" / table["path"]).read_text())
    assert saved["columns"] == list(per_series.columns)
    assert [r[0] for r in saved["data"]] == per_series["series"].astype(str).tolist()
    for plot in ("forecasts", "error_by_horizon"):
        image = logged[f"plots/{plot}"]
        assert image["_type"] == "image-file" and image["format"] == "png"
        assert (evaluate.dir / "files" / image["path"]).read_bytes()[:4] == b"\x89PNG"
        assert image["path"] in evaluate.files


@pytest.mark.slow
def test_export_logs_the_model_directory_as_an_artifact(wandb_run):
    run, _ = wandb_run
    export = by_job(wandb_runs(run))["export"]
    [artifact] = [a for a in export.artifacts if a["type"] == "model"]
    assert artifact["name"] == "small-model"
    metrics = json.loads((run / "evaluate/metrics.json").read_text())
    meta = artifact["metadata"]
    assert meta["test_metrics"] == {"model": metrics["model"], "baselines": metrics["baselines"]}
    assert meta["data_fingerprint"] == json.loads((run / "ingest/meta.json").read_text())["fingerprint"]
    assert meta["train_fingerprint"] == json.loads((run / "train/meta.json").read_text())["fingerprint"]
    assert meta["horizon"] == 12 and meta["lookback"] == 48 and meta["n_series"] == 4
    exported = {p.name for p in (run / "export").iterdir() if p.is_file()}
    assert set(artifact["files"]) == exported
    assert {"model.safetensors", "model.onnx", "forecaster.json", "README.md"} <= exported
    assert export.summary["export/onnx_parity"] == meta["onnx_parity"] is not None


@pytest.mark.slow
def test_the_lineage_runs_from_the_data_through_the_weights_to_the_model(wandb_run):
    """ingest logs the data (by reference, with its fingerprint), train uses it and logs the weights, export uses
    those and logs the model: each edge is the same artifact content on both sides, so W&B links them."""
    run, _ = wandb_run
    jobs = by_job(wandb_runs(run))
    fingerprint = json.loads((run / "ingest/meta.json").read_text())["fingerprint"]
    [data] = jobs["ingest"].artifacts
    assert (data["name"], data["type"], data["used"]) == ("small-data", "dataset", False)
    assert data["metadata"]["fingerprint"] == fingerprint and data["metadata"]["n_series"] == 4
    assert set(data["files"]) == {"data.json"}  # no copy of the data: synthetic data has no file to reference
    train = {a["name"]: a for a in jobs["train"].artifacts}
    assert train["small-data"]["used"] and train["small-data"]["files"] == data["files"]  # the same content
    weights = train["small-weights"]
    assert not weights["used"] and set(weights["files"]) == {"model.safetensors"}
    assert weights["metadata"]["train_fingerprint"] == json.loads((run / "train/meta.json").read_text())["key"]
    export = {a["name"]: a for a in jobs["export"].artifacts}
    assert export["small-weights"]["used"] and export["small-weights"]["files"] == weights["files"]
    assert not export["small-model"]["used"]


@pytest.mark.slow
def test_a_file_source_is_referenced_not_copied(tmp_path):
    source = tmp_path / "data.csv"
    frame = pd.DataFrame({"time": pd.date_range("2024-01-01", periods=300, freq="h")})
    frame["y"] = np.sin(np.arange(300) / 3.8) + 5
    frame.to_csv(source, index=False)
    overrides = {"data.source": str(source), "data.target_column": "y", "tracking.backend": "wandb"}
    config = write_config(tmp_path, overrides)
    assert cli("ingest", "--config", str(config), env=wandb_env(tmp_path)).returncode == 0
    [data] = by_job(wandb_runs(tmp_path / "run"))["ingest"].artifacts
    assert data["refs"] == [source.resolve().as_uri()] and set(data["files"]) == {"data.json"}


@pytest.mark.slow
def test_a_promotion_puts_champion_and_the_version_on_the_model_artifact(tmp_path):
    overrides = {**FAST, "tracking.backend": "wandb", "registry.dir": str(tmp_path / "registry"),
                 "tracking.registry_collection": "wandb-registry-model/forecasters"}  # fmt: skip
    config = write_config(tmp_path, overrides)
    result = cli("run", "--config", str(config), "--promote", env=wandb_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = by_job(wandb_runs(tmp_path / "run"))
    [model] = jobs["registry"].artifacts
    [exported] = [a for a in jobs["export"].artifacts if a["type"] == "model"]
    assert model["name"] == exported["name"] == "small-model"
    assert model["files"] == exported["files"]  # the same version: W&B moves the aliases onto it
    assert {"champion", "v0001"} <= set(model["aliases"])  # W&B adds "latest"
    assert model["metadata"]["registry"]["decision"] == "promoted"
    assert jobs["registry"].summary["registry/decision"] == "promoted"
    assert "link small-model to the registry collection wandb-registry-model/forecasters" in result.stderr


@pytest.mark.slow
def test_a_rollback_moves_champion_to_the_version_rolled_back_to(tmp_path):
    """v0001 promoted, v0002 rejected; `rollback --to v0002` logs v0002's export files as the model artifact with
    the aliases champion and v0002: the same files as v0002's export, so W&B puts them on the version it holds."""
    overrides = {**FAST, "tracking.backend": "wandb", "registry.dir": str(tmp_path / "registry")}
    config = write_config(tmp_path, overrides)
    env = wandb_env(tmp_path)
    assert cli("run", "--config", str(config), "--promote", env=env).returncode == 0
    second = cli("run", "--config", str(config), "--promote", "train.max_steps=1", env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    registry = [r for r in wandb_runs(tmp_path / "run") if r.run["job_type"] == "registry"]
    assert [r.artifacts[0]["metadata"]["registry"]["decision"] for r in registry] == ["promoted", "rejected"]
    rejected = registry[1].artifacts[0]
    assert "champion" not in rejected["aliases"]

    rolled = cli("rollback", "--config", str(config), "--to", "v0002", env=env)
    assert rolled.returncode == 0, rolled.stderr[-3000:]
    rollback = by_job(wandb_runs(tmp_path / "run"))["rollback"]
    [model] = rollback.artifacts
    assert model["name"] == rejected["name"] == "small-model"
    assert model["files"] == rejected["files"]  # v0002's export as it was logged: the same W&B version
    assert {"champion", "v0002"} <= set(model["aliases"])
    assert model["metadata"]["registry"]["decision"] == "rolled_back"
    assert rollback.summary["registry/withdrawn"] == "v0001" and rollback.exited


# ---------------------------------------------------------------- resume continues the W&B run


def _start_and_kill(config: Path, env: dict, run: Path, at_step: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config)],
        cwd=REPO,
        env={**os.environ, **env},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    try:
        while logged_step(run) < at_step:
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "training too slow to reach the kill step"
            time.sleep(0.005)
    finally:
        kill_group(proc)


@pytest.mark.slow
def test_killed_and_resumed_training_continues_the_same_wandb_run(tmp_path):
    settings = {**FAST, "train.max_steps": 40, "train.checkpoint_every": 10, "train.log_every": 1}
    config = write_config(tmp_path, {**settings, "tracking.backend": "wandb", "export.onnx": False})
    env = wandb_env(tmp_path)
    run = tmp_path / "run"
    _start_and_kill(config, env, run, 13)  # past the first checkpoint (step 10)
    assert not (run / "train").exists() and (run / ".train.work/checkpoints/step_10").is_dir()
    run_id = (run / ".train.work/wandb_run_id").read_text().strip()

    result = cli("train", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr

    trains = [r for r in wandb_runs(run) if r.run["job_type"] == "train"]  # ingest is a run of its own
    assert len(trains) == 2
    assert [next(r.dir.glob("run-*.wandb")).name for r in trains] == [f"run-{run_id}.wandb"] * 2
    first, second = trains
    assert second.id == run_id and second.run["job_type"] == "train" and second.exited
    assert not first.exited  # killed
    rows = [r for r in jsonl(run / "train/metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 41))
    # exact resume in the tracker too: the killed run holds the steps up to its checkpoint (committed there
    # and on disk before the kill), the resumed one the rest; each step once, in order, with the values
    # metrics.jsonl keeps
    assert sorted(first.steps("train/loss")) == list(range(1, 11))
    assert sorted(second.steps("train/loss")) == list(range(11, 41))
    assert {**first.steps("train/loss"), **second.steps("train/loss")} == {r["step"]: r["loss"] for r in rows}
    assert sorted(first.steps("val/loss")) == [0, 10] and sorted(second.steps("val/loss")) == [20, 30, 40]


def test_a_training_killed_before_its_first_checkpoint_leaves_no_wandb_run(tmp_path):
    settings = {**FAST, "train.max_steps": 400, "train.checkpoint_every": 200, "train.log_every": 1}
    config = write_config(tmp_path, {**settings, "tracking.backend": "wandb", "export.onnx": False})
    run = tmp_path / "run"
    _start_and_kill(config, wandb_env(tmp_path), run, 3)
    assert [r.run["job_type"] for r in wandb_runs(run)] == ["ingest"]  # ingest finished; training left none


@pytest.mark.slow
def test_tensorboard_after_a_kill_and_a_resume_has_each_step_once(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    settings = {**FAST, "train.max_steps": 40, "train.checkpoint_every": 10, "train.log_every": 1}
    config = write_config(tmp_path, {**settings, "tracking.backend": "tensorboard", "export.onnx": False})
    run = tmp_path / "run"
    _start_and_kill(config, {}, run, 13)
    # a new process, as a user resumes: the file names (seconds, host, pid) then sort in the order they were written
    result = cli("train", "--config", str(config))
    assert result.returncode == 0 and "resumed from" in result.stderr, result.stderr[-2000:]
    events = sorted((run / "tensorboard/train").glob("events.out.tfevents.*"))
    assert len(events) == 2
    steps = []
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        steps += [e.step for e in accumulator.Scalars("train/loss")]
    assert steps == list(range(1, 41))  # the killed process's file ends at its checkpoint


# ---------------------------------------------------------------- sweeps

SWEEP = REPO / "configs/sweep.yaml"


def sample_values(sweep: dict) -> dict[str, Any]:
    """One value per sweep parameter, as the sweep controller would choose it."""
    out = {}
    for name, spec in sweep["parameters"].items():
        out[name] = spec["values"][0] if "values" in spec else spec.get("value", spec.get("min"))
    return out


def test_sweep_file_is_a_wandb_sweep_over_valid_config_keys():
    sweep = yaml.safe_load(SWEEP.read_text())
    assert {"program", "command", "method", "metric", "parameters"} <= set(sweep)
    assert sweep["method"] in ("bayes", "random", "grid")
    assert sweep["metric"] == {"name": "test/model/mase", "goal": "minimize"}
    command = sweep["command"]
    assert command[command.index("--config") + 1] == "configs/default.yaml"
    assert (REPO / "configs/default.yaml").is_file()
    assert command[-1] == "${args}" and "run" in command
    assert {"train.lr", "model.hidden_size", "window.lookback"} <= set(sweep["parameters"])
    for name, spec in sweep["parameters"].items():
        assert {"values", "value", "min", "distribution"} & set(spec), name
        choices = spec.get("values") or [spec.get("value", spec.get("min")), spec.get("max")]
        for value in [v for v in choices if v is not None]:
            cfg = load_config(REPO / "configs/default.yaml", [f"{name}={value}"])
            assert functools.reduce(getattr, name.split("."), cfg) == value, name  # top-level keys too


@pytest.mark.slow
def test_sweep_agent_command_runs_a_trial_into_the_agents_run(tmp_path):
    """The command `wandb agent` builds from configs/sweep.yaml, on a small config, as one sweep trial."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    sweep = yaml.safe_load(SWEEP.read_text())
    lr = sample_values(sweep)["train.lr"]
    params = {"train.lr": lr, "train.max_steps": 5, "train.num_threads": 1}  # a sweep value plus test sizes
    args = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    assert f"--train.lr={lr}" in args["args"]  # the `${args}` form: --key=value
    macros = {"env": [], "interpreter": [sys.executable], "program": [sweep["program"]], "args": args["args"]}
    config = write_config(tmp_path, {"tracking.backend": "wandb", "export.onnx": False})
    command: list[str] = []
    for part in sweep_utils.create_sweep_command(list(sweep["command"])):
        part = str(part)
        command += macros[part[2:-1]] if part.startswith("${") else [str(config) if part.endswith(".yaml") else part]
    assert command[1:4] == ["-m", "pipeline", "run"]
    env = wandb_env(tmp_path, WANDB_SWEEP_ID="sweep1", WANDB_RUN_ID="trial1", WANDB_PROJECT="lstm-pipeline")
    result = subprocess.run(command, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    saved = yaml.safe_load((tmp_path / "run/config.yaml").read_text())
    assert saved["train"]["lr"] == lr and saved["train"]["max_steps"] == 5
    runs = wandb_runs(tmp_path / "run")
    assert len(runs) == 4 and {r.id for r in runs} == {"trial1"}  # every stage continues the trial's run
    assert all(r.run["sweep_id"] == "sweep1" and r.run["job_type"] == "sweep" for r in runs)
    assert all(r.run["project"] == "lstm-pipeline" and r.run["group"] == "small" for r in runs)
    assert runs[0].config["train"]["lr"] == lr
    metrics = json.loads((tmp_path / "run/evaluate/metrics.json").read_text())
    metric = sweep["metric"]["name"]
    assert [r.summary[metric] for r in runs if metric in r.summary] == [metrics["model"]["mase"]]


# ---------------------------------------------------------------- TensorBoard and none


@pytest.mark.slow
def test_tensorboard_event_files_hold_the_same_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = write_config(tmp_path, {**FAST, "tracking.backend": "tensorboard", "export.onnx": False})
    result = cli_in_process("run", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    assert not (run / "wandb").exists()

    train = EventAccumulator(str(run / "tensorboard/train"), size_guidance={"scalars": 0})
    train.Reload()
    rows = jsonl(run / "train/metrics.jsonl")
    for key in ("loss", "lr", "grad_norm"):
        points = [(e.step, e.value) for e in train.Scalars(f"train/{key}")]
        assert [s for s, _ in points] == [r["step"] for r in rows if key in r], key
        assert [v for _, v in points] == pytest.approx([r[key] for r in rows if key in r], rel=1e-6), key
    val = [(e.step, e.value) for e in train.Scalars("val/loss")]
    assert val == [(r["step"], pytest.approx(r["val_loss"], rel=1e-6)) for r in rows if "val_loss" in r]
    # the final summary lands at the last step and leaves the earlier points in place
    assert [e.step for e in train.Scalars("val/best_loss")][-1] == 20
    assert len(train.Scalars("val/best_loss")) >= 2

    evaluate = EventAccumulator(str(run / "tensorboard/evaluate"))
    evaluate.Reload()
    metrics = json.loads((run / "evaluate/metrics.json").read_text())
    assert evaluate.Scalars("test/model/mase")[-1].value == pytest.approx(metrics["model"]["mase"], rel=1e-6)
    assert {"plots/forecasts", "plots/error_by_horizon"} <= set(evaluate.Tags()["images"])


def test_none_backend_writes_nothing_but_the_local_files(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", "tracking.backend=none"])
    tracker = open_tracker(cfg, "train", True, run_id="abc")
    assert isinstance(tracker, Tracker) and tracker.backend is None
    tracker.describe({"world_size": 1})
    tracker.log({"train/loss": 1.0}, step=1)
    tracker.summary({"test/model/mase": 1.0})
    tracker.table("t", pd.DataFrame({"a": [1]}))
    tracker.images({"p": tmp_path / "missing.png"})
    tracker.log_artifact(tmp_path, "x", "model", {})
    tracker.finish()
    assert not (tmp_path / "run" / "wandb").exists() and not (tmp_path / "run" / "tensorboard").exists()


def test_wandb_disabled_mode_writes_no_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for name, value in wandb_env(tmp_path).items():
        if name != "WANDB_MODE":
            monkeypatch.setenv(name, value)
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", "tracking.backend=wandb", "tracking.mode=disabled"])
    dist_state()  # as every stage has it (Accelerate's logging needs it)
    tracker = open_tracker(cfg, "export", True)
    tracker.log({"train/loss": 1.0}, step=1)
    tracker.log_artifact(tmp_path, "x", "model", {})
    tracker.finish()
    assert not list((tmp_path / "run").glob("wandb/*run-*"))


def test_online_without_credentials_runs_offline_and_says_how_to_sync(tmp_path, monkeypatch, caplog):
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    for name, value in wandb_env(tmp_path).items():
        if name != "WANDB_MODE":
            monkeypatch.setenv(name, value)
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", "tracking.backend=wandb", "tracking.mode=online"])
    dist_state()
    caplog.set_level("INFO", logger="pipeline")
    tracker = open_tracker(cfg, "evaluate", True)
    tracker.summary({"test/model/mase": 0.5})
    tracker.finish()
    for _ in range(50):  # W&B's service may still be writing the log when finish() returns (its exit record last)
        [run] = wandb_runs(tmp_path / "run")
        if run.exited:
            break
        time.sleep(0.2)
    assert run.exited and run.summary["test/model/mase"] == 0.5 and run.run["job_type"] == "evaluate"
    assert "no W&B credentials found; tracking offline" in caplog.text
    assert f"wandb sync {run.dir}" in caplog.text


def test_a_bad_wandb_mode_is_one_line_before_any_stage_works(tmp_path):
    """W&B refused WANDB_MODE=bogus with a pydantic traceback and exit 1 at the first checkpoint, after ingest,
    window and part of training had run."""
    config = write_config(tmp_path, {**FAST, "tracking.backend": "wandb"})
    result = cli("run", "--config", str(config), env=wandb_env(tmp_path, WANDB_MODE="bogus"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "error: environment variable WANDB_MODE must be one of online|offline|disabled (or dryrun, run), got 'bogus'"
    ]
    assert not (tmp_path / "run").exists()
    ignored = cli("ingest", "--config", str(config), "tracking.backend=none", env=wandb_env(tmp_path, WANDB_MODE="x"))
    assert ignored.returncode == 0, ignored.stderr[-2000:]  # no W&B, no reason to read its mode


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tracking.project=team/x", "tracking.project may not contain / (W&B refuses it), got 'team/x'"),
        ("tracking.project=a#b:c", "tracking.project may not contain # : (W&B refuses it), got 'a#b:c'"),
        ("tracking.project=" + "p" * 129, "tracking.project must be 1 to 128 characters (W&B refuses it), got 'ppp"),
        ("tracking.tags=[nightly,'']", "tracking.tags: each tag must be 1 to 64 characters (W&B), got ''"),
        ("tracking.tags=[" + "t" * 65 + "]", "tracking.tags: each tag must be 1 to 64 characters (W&B), got 'ttt"),
    ],
)
def test_names_wandb_refuses_are_config_errors(override, message):
    """W&B refused them with a UsageError or a pydantic traceback (exit 1) when the stage first logged: after
    ingest, or after a checkpoint's worth of training."""
    with pytest.raises(ConfigError) as err:
        load_config(None, ["tracking.backend=wandb", override])
    assert message in str(err.value)
    load_config(None, ["tracking.backend=tensorboard", override])  # no W&B, nothing to refuse


def test_a_project_wandb_refuses_stops_the_command_before_its_stage(tmp_path):
    config = write_config(tmp_path, {"tracking.backend": "wandb"})
    result = cli("ingest", "--config", str(config), "tracking.project=team/forecasts", env=wandb_env(tmp_path))
    assert result.returncode == 2 and not (tmp_path / "run").exists()
    assert result.stderr.strip().splitlines() == [
        "error: override 'tracking.project=team/forecasts': tracking.project may not contain / (W&B refuses it), "
        "got 'team/forecasts'"
    ]


def _without_root_powers() -> list[str]:
    """A command prefix under which file permissions apply (root ignores them unless it drops CAP_DAC_*)."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("root, and no setpriv to drop the capability to ignore file permissions")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


def test_an_unwritable_wandb_folder_is_one_line_naming_it(tmp_path):
    """W&B raised `PermissionError('<dir> is not writable')` without an errno: a traceback and exit 1."""
    config = write_config(tmp_path, {"tracking.backend": "wandb"})
    wandb_dir = tmp_path / "run" / "wandb"
    wandb_dir.mkdir(parents=True)
    wandb_dir.chmod(0o555)
    command = [*_without_root_powers(), sys.executable, "-m", "pipeline", "ingest", "--config", str(config)]
    result = subprocess.run(
        command, cwd=REPO, env={**os.environ, **wandb_env(tmp_path)}, capture_output=True, text=True, timeout=300
    )
    wandb_dir.chmod(0o755)
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = [ln for ln in result.stderr.splitlines() if not ln.startswith(tuple("0123456789"))]  # not the log
    assert line.startswith(f"error: {wandb_dir}/offline-run-")
    assert line.endswith(": Permission denied: W&B cannot write its run files there (tracking.backend=none runs "
                         "without W&B)")  # fmt: skip


def test_an_empty_wandb_mode_is_unset(tmp_path):
    """`WANDB_MODE=` (a manifest's `value: ""`): W&B refused the empty string with a pydantic traceback, exit 1."""
    config = write_config(tmp_path, {"tracking.backend": "wandb", "tracking.mode": "offline"})
    result = cli("ingest", "--config", str(config), env=wandb_env(tmp_path, WANDB_MODE=""))
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = wandb_runs(tmp_path / "run")
    assert run.run["job_type"] == "ingest" and [a["type"] for a in run.artifacts] == ["dataset"]


@pytest.mark.slow
def test_wandb_mode_dryrun_is_an_offline_run_with_its_lineage(tmp_path):
    """W&B's older name for offline: the stages took the online path, and train's use_artifact failed with
    `TypeError: Cannot use artifact when in offline mode` (exit 1) once the weights were trained."""
    config = write_config(tmp_path, {**FAST, "tracking.backend": "wandb", "export.onnx": False})
    result = cli("run", "--config", str(config), env=wandb_env(tmp_path, WANDB_MODE="dryrun"))
    assert result.returncode == 0, result.stderr[-3000:]
    runs = by_job(wandb_runs(tmp_path / "run"))
    assert sorted(runs) == ["evaluate", "export", "ingest", "train"]
    used = {(a["type"], a["used"]) for a in runs["train"].artifacts}
    assert used == {("dataset", True), ("checkpoint", False)}  # used the data, logged the weights


def test_the_closing_line_counts_the_offline_runs_not_uploaded_yet(tmp_path, caplog):
    """It said 'W&B ran offline; upload every run' after every command once a folder existed: after `wandb sync`
    had uploaded them all, and after commands that ran no W&B at all."""
    from pipeline.orchestrators.run import run_stages

    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", "tracking.backend=none"])
    wandb = tmp_path / "run" / "wandb"
    for name in ("offline-run-20261101_010000-aaaa1111", "offline-run-20261102_010000-bbbb2222"):
        (wandb / name).mkdir(parents=True)
    (wandb / "offline-run-20261101_010000-aaaa1111" / "run-aaaa1111.wandb.synced").touch()
    caplog.set_level("INFO", logger="pipeline")
    run_stages(cfg, names=())
    pattern = wandb / "offline-run-*"
    assert f"W&B: 1 offline runs here are not uploaded yet; upload them with: wandb sync {pattern}" in caplog.text
    (wandb / "offline-run-20261102_010000-bbbb2222" / "run-bbbb2222.wandb.synced").touch()
    caplog.clear()
    run_stages(cfg, names=())
    assert "wandb sync" not in caplog.text and "W&B" not in caplog.text


def test_tensorboard_not_installed_is_one_line_saying_what_to_install(tmp_path):
    """Without the `tensorboard` extra the train stage failed with ModuleNotFoundError tracebacks (exit 1) after
    ingest and window had run."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    not_installed = 'sys.modules["tensorboard"] = sys.modules["tensorboardX"] = None'  # what `import` then refuses
    (hidden / "sitecustomize.py").write_text(f"import sys\n{not_installed}\n")
    config = write_config(tmp_path, {"tracking.backend": "tensorboard"})
    result = cli("run", "--config", str(config), env={"PYTHONPATH": str(hidden)})
    assert result.returncode == 2 and not (tmp_path / "run").exists(), result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        "error: tracking.backend: tensorboard needs the tensorboard package: pip install 'lstm-pipeline[tensorboard]'"
    ]


def test_artifact_names_are_what_wandb_accepts():
    assert artifact_name("vic_elec-model") == "vic_elec-model"
    assert artifact_name("my run/v2 (test)-model") == "my-run-v2-test-model"


@pytest.mark.slow
def test_wandb_gets_quantile_calibration_and_backtest_numbers(tmp_path):
    overrides = {
        **FAST,
        "tracking.backend": "wandb",
        "model.quantiles": [0.1, 0.5, 0.9],
        "evaluate.backtest.folds": 2,
        "export.onnx": False,
    }
    result = cli("run", "--config", str(write_config(tmp_path, overrides)), env=wandb_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = by_job(wandb_runs(tmp_path / "run"))
    metrics = json.loads((tmp_path / "run/evaluate/metrics.json").read_text())
    evaluate = jobs["evaluate"].summary
    assert evaluate["test/model/pinball"] == metrics["quantiles"]["pinball"]
    assert evaluate["test/model/coverage_0.1-0.9"] == metrics["quantiles"]["coverage"]["0.1-0.9"]["empirical"]
    assert evaluate["backtest/model/mase"] == metrics["backtest"]["aggregate"]["model"]["mase"]
    assert (
        evaluate["backtest/fold_2/seasonal_naive/mae"]
        == metrics["backtest"]["per_fold"][1]["baselines"]["seasonal_naive"]["mae"]
    )
    calibration = json.loads((tmp_path / "run/train/meta.json").read_text())["calibration"]["0.1-0.9"]
    train = jobs["train"].summary
    assert train["val/coverage_0.1-0.9_calibrated"] == calibration["val_coverage_after"] >= 0.8
