"""Scheduled retraining: the model registry (champion/challenger), cached stages on growing data, warm
start, and the cron/Kubernetes/SLURM recipes that run it.

A schedule is simulated on a CSV file that grows between runs (synthetic series cut at increasing
lengths, the new rows appended to the file), with a tiny model so the whole file stays fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
import yaml

from pipeline.config import SyntheticConfig, load_config
from pipeline.library import registry_store
from pipeline.library.errors import ConfigError, UserError
from pipeline.library.forecaster import Forecaster
from pipeline.library.model import ModelSpec, build_model
from pipeline.library.synthetic import generate_synthetic
from pipeline.library.warm_start import warm_start_state
from pipeline.orchestrators import registry

from .conftest import REPO, cli_in_process, load_weights

pytestmark = pytest.mark.slow

NAME = "nightly"
LENGTHS = (300, 360, 420)  # the data on each "night": rows are appended to the same file
STAGES = ("ingest", "window", "train", "evaluate", "export")


def experiment(tmp: Path) -> dict:
    return {
        "name": NAME,
        "output_dir": str(tmp / "run"),
        "seed": 0,
        "data": {
            "source": str(tmp / "data.csv"),
            "format": "long",
            "id_column": "series",
            "time_column": "time",
            "target_column": "value",
            "freq": "h",
            "val_size": 0.15,
            "test_size": 0.15,
        },
        "window": {"lookback": 24, "horizon": 6, "stride": 1, "val_stride": 1},
        "model": {"hidden_size": 8, "num_layers": 1},
        "train": {
            "batch_size": 64,
            "max_steps": 30,
            "lr": 0.01,
            "warmup_steps": 5,
            "eval_every": 10,
            "checkpoint_every": 0,
            "log_every": 5,
            "patience": 0,
            "num_threads": 1,
        },
        "evaluate": {"season_length": 24, "plot_series": 0},
        "export": {"onnx": False},
        "tracking": {"backend": "none"},
        "registry": {"dir": str(tmp / "registry")},
    }


def full_data() -> pd.DataFrame:
    data = generate_synthetic(SyntheticConfig(n_series=3, length=max(LENGTHS), freq="h", seed=3))
    data["series"] = data["series"].astype(str)
    return data


def grow(path: Path, data: pd.DataFrame, length: int) -> None:
    """The first `length` steps of every series: a new file, or the missing rows appended to it."""
    times = np.sort(data["time"].unique())
    end = times[length - 1]
    if not path.exists():
        data[data["time"] <= end].to_csv(path, index=False)
        return
    have = pd.to_datetime(pd.read_csv(path, usecols=["time"])["time"]).max()
    new = data[(data["time"] > have) & (data["time"] <= end)]
    new.to_csv(path, mode="a", header=False, index=False)


def tree_hash(root: Path) -> str:
    """Names, symlink targets and file contents of a directory tree."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            digest.update(str(path.relative_to(root)).encode())
            if path.is_symlink():
                digest.update(b"->" + os.readlink(path).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


def history(tmp: Path) -> list[dict]:
    return registry_store.read_history(tmp / "registry" / NAME)


def ingest_fingerprint(tmp: Path) -> str:
    return json.loads((tmp / "run/ingest/meta.json").read_text())["fingerprint"]


def evaluate_mase(tmp: Path) -> float:
    return json.loads((tmp / "run/evaluate/metrics.json").read_text())["model"]["mase"]


def registry_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipeline", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)


def run_promote(config: Path, *overrides: str):
    result = cli_in_process("run", "--config", str(config), "--promote", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def kill_during_training(config: Path, run_dir: Path, *overrides: str) -> None:
    """Start `run --promote` and SIGKILL it (and its children) once training has logged a few steps."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    command = [sys.executable, "-m", "pipeline", "run", "--config", str(config), "--promote", *overrides]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = run_dir / ".train.work/metrics.jsonl"
    deadline = time.monotonic() + 120
    try:
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "training too slow to be killed"
            time.sleep(0.01)
    finally:
        family = [proc.pid]
        with contextlib.suppress(psutil.NoSuchProcess):
            family += [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def schedule(tmp_path_factory):
    """Five nights of retraining on one growing CSV file; what each night logged and left behind."""
    tmp = tmp_path_factory.mktemp("schedule")
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(experiment(tmp)))
    data = full_data()
    csv = tmp / "data.csv"
    out: dict = {"tmp": tmp, "config": config, "data": data, "mase": {}, "fingerprint": {}}

    grow(csv, data, LENGTHS[0])
    out["first"] = run_promote(config)  # night 1: no champion yet
    out["fingerprint"]["first"], out["mase"]["first"] = ingest_fingerprint(tmp), evaluate_mase(tmp)
    out["unchanged"] = run_promote(config)  # night 2: nothing new

    grow(csv, data, LENGTHS[1])
    out["appended"] = run_promote(config)  # night 3: more rows, same config
    out["fingerprint"]["appended"], out["mase"]["appended"] = ingest_fingerprint(tmp), evaluate_mase(tmp)
    out["better"] = run_promote(config, "train.max_steps=150")  # night 4: a longer training
    out["mase"]["better"] = evaluate_mase(tmp)
    out["sabotaged"] = run_promote(config, "train.max_steps=1")  # night 5: a broken training
    out["mase"]["sabotaged"] = evaluate_mase(tmp)

    root = tmp / "registry" / NAME
    out["before_kill"] = (tree_hash(root), registry_store.current_version(root))
    grow(csv, data, LENGTHS[2])
    kill_during_training(config, tmp / "run", "train.max_steps=100000", "train.log_every=1")
    out["after_kill"] = (tree_hash(root), registry_store.current_version(root))
    return out


# ---------------------------------------------------------------- the schedule


def test_first_run_promotes_and_writes_a_version(schedule):
    tmp = schedule["tmp"]
    root = tmp / "registry" / NAME
    first = history(tmp)[0]
    assert first["decision"] == "promoted" and first["version"] == "v0001"
    assert first["reason"] == "no champion yet" and first["champion_mase"] is None
    assert first["data_fingerprint"] == schedule["fingerprint"]["first"]
    # the challenger is scored exactly as the evaluate stage scores the model
    assert first["challenger_mase"] == pytest.approx(schedule["mase"]["first"], rel=1e-9)
    version = root / "v0001"
    for name in ("model.safetensors", "forecaster.json", "manifest.json", "config.yaml", "run_config.yaml"):
        assert (version / name).is_file(), name
    assert json.loads((version / "data.json").read_text())["fingerprint"] == schedule["fingerprint"]["first"]
    metrics = json.loads((version / "metrics.json").read_text())
    assert metrics["challenger"]["mase"] == first["challenger_mase"] and metrics["evaluate"]["model"]
    assert json.loads((version / "decision.json").read_text())["decision"] == "promoted"
    Forecaster.load(version)  # a complete, manifest-checked export
    assert "registry: v0001 promoted" in schedule["first"].stderr
    assert not list(root.glob(".v*")), "a temporary version directory was left behind"


def test_unchanged_rerun_skips_every_stage_and_records_unchanged(schedule):
    stderr = schedule["unchanged"].stderr
    for stage in STAGES:
        assert f"{stage}: up to date" in stderr, stage
    record = history(schedule["tmp"])[1]
    assert record["decision"] == "unchanged" and record["version"] == record["current"] == "v0001"
    assert record["challenger_mase"] is None  # nothing was scored
    assert "registry: " in stderr and "unchanged" in stderr


def test_appended_rows_rerun_every_stage(schedule):
    assert schedule["fingerprint"]["appended"] != schedule["fingerprint"]["first"]
    stderr = schedule["appended"].stderr
    assert "up to date" not in stderr
    for stage in ("ingest", "window", "evaluate", "export"):
        assert any(line.split(" INFO ")[-1].startswith(f"{stage}:") for line in stderr.splitlines()), stage
    assert "train: done at step 30" in stderr
    record = history(schedule["tmp"])[2]
    assert record["version"] == "v0002" and record["decision"] in ("promoted", "rejected")
    assert record["data_fingerprint"] == schedule["fingerprint"]["appended"]
    assert record["challenger_mase"] == pytest.approx(schedule["mase"]["appended"], rel=1e-9)


def test_a_better_challenger_is_promoted(schedule):
    assert "ingest: up to date" in schedule["better"].stderr  # only the config changed
    record = history(schedule["tmp"])[3]
    assert record["version"] == "v0003" and record["decision"] == "promoted", record
    assert record["challenger_mase"] < record["champion_mase"]
    assert record["current"] == "v0003"


def test_a_sabotaged_challenger_is_not_promoted(schedule):
    tmp = schedule["tmp"]
    record = history(tmp)[4]
    assert record["version"] == "v0004" and record["decision"] == "rejected", record
    assert record["champion_version"] == record["current"] == "v0003"
    assert record["challenger_mase"] >= record["champion_mase"]
    assert registry_store.current_version(tmp / "registry" / NAME) == "v0003"
    assert (tmp / "registry" / NAME / "v0004/model.safetensors").is_file()  # kept, but not serving
    assert "v0004 rejected" in schedule["sabotaged"].stderr  # and the CLI exited 0 (run_promote checks)


def test_history_records_every_decision_with_both_scores(schedule):
    records = history(schedule["tmp"])
    assert [r["decision"] for r in records][:2] == ["promoted", "unchanged"]
    assert len(records) == 5, "the killed run must not add a record"
    for record in records[2:]:
        assert isinstance(record["challenger_mase"], float) and isinstance(record["champion_mase"], float)
        assert record["reason"] and record["time"] and record["data_fingerprint"]
        assert record["n_windows"] > 0


def test_a_run_killed_in_training_leaves_the_registry_as_it_was(schedule):
    assert schedule["after_kill"] == schedule["before_kill"]
    assert schedule["after_kill"][1] == "v0003"


def test_predict_from_the_registry_current(schedule, tmp_path):
    tmp = schedule["tmp"]
    out = tmp_path / "forecast.csv"
    result = cli_in_process(
        "predict", "--model", str(tmp / "registry" / NAME / "current"), "--input", str(tmp / "data.csv"),
        "--output", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    forecast = pd.read_csv(out)
    assert len(forecast) == 3 * 6 and np.isfinite(forecast["forecast"]).all()
    direct = Forecaster.load(tmp / "registry" / NAME / "v0003").predict(pd.read_csv(tmp / "data.csv"))
    np.testing.assert_allclose(forecast["forecast"].to_numpy(), direct["forecast"].to_numpy(), rtol=1e-6)


def test_the_python_api_loads_a_registry_current_symlink_or_pointer_file(schedule, tmp_path):
    """docs/python.md: `Forecaster.load(...)  # or a registry's .../current`; on a file system without symlinks
    `current` is a pointer file, which Forecaster.load took for a missing directory."""
    copy = tmp_path / "registry"
    shutil.copytree(schedule["tmp"] / "registry", copy, symlinks=True)
    history_frame = pd.read_csv(schedule["tmp"] / "data.csv")
    expected = Forecaster.load(copy / NAME / "v0003").predict(history_frame)["forecast"].to_numpy()
    assert (copy / NAME / "current").is_symlink()
    np.testing.assert_array_equal(Forecaster.load(copy / NAME / "current").predict(history_frame)["forecast"], expected)
    (copy / NAME / "current").unlink()
    (copy / NAME / "current").write_text("v0003\n")
    np.testing.assert_array_equal(Forecaster.load(copy / NAME / "current").predict(history_frame)["forecast"], expected)


def test_decision_helper_exit_codes(schedule):
    config = schedule["config"]
    rejected = registry_cli("decision", "--config", str(config))
    assert rejected.returncode == 3 and json.loads(rejected.stdout)["version"] == "v0004"


def test_current_pointing_at_a_missing_version_is_a_clear_error(schedule, tmp_path):
    copy = tmp_path / "registry"
    shutil.copytree(schedule["tmp"] / "registry", copy, symlinks=True)
    shutil.rmtree(copy / NAME / "v0003")
    predicted = cli_in_process(
        "predict", "--model", str(copy / NAME / "current"), "--input", str(schedule["tmp"] / "data.csv"),
        "--output", str(tmp_path / "f.csv"),
    )  # fmt: skip
    assert predicted.returncode == 2
    assert "v0003" in predicted.stderr and "missing" in predicted.stderr and "Traceback" not in predicted.stderr
    decision = cli_in_process("decision", "--config", str(schedule["config"]), f"registry.dir={copy}")
    assert decision.returncode == 2 and "v0003" in decision.stderr
    cfg = load_config(schedule["config"], [f"registry.dir={copy}", "registry.promote=true"])
    with pytest.raises(UserError, match="v0003"):
        registry.promote(cfg)  # the registry step of `run --promote`


# ---------------------------------------------------------------- warm start


def warm_config(schedule, tmp_path: Path) -> Path:
    """The schedule's experiment in a copy of its run directory (ingest and window stay cached)."""
    shutil.copytree(schedule["tmp"] / "run", tmp_path / "run", ignore=shutil.ignore_patterns(".train.work"))
    settings = experiment(schedule["tmp"])
    settings["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_init_from_champion_starts_from_its_weights(schedule, tmp_path):
    config = warm_config(schedule, tmp_path)
    result = cli_in_process(
        "train", "--config", str(config), "train.init_from=champion", "train.lr=1e-12", "train.max_steps=2",
        "train.warmup_steps=0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "starting from the weights of champion v0003" in result.stderr
    trained = load_weights(tmp_path / "run/train/model.safetensors")
    champion = load_weights(schedule["tmp"] / "registry" / NAME / "current" / "model.safetensors")
    assert trained.keys() == champion.keys()
    meta = json.loads((tmp_path / "run/train/meta.json").read_text())
    for key in trained.keys() - {"blend"}:
        torch.testing.assert_close(trained[key], champion[key], rtol=0, atol=1e-9)
    assert float(trained["blend"]) == 1.0  # training runs with all of the correction (the champion's share aside)
    best = load_weights(tmp_path / "run/train/best/model.safetensors")
    assert float(best["blend"]) == pytest.approx(meta["blend"]["weight"])  # set after training, on this run's windows
    assert meta["state"]["step"] == 2


def test_a_warm_start_keeps_the_transform_of_the_champion(schedule, tmp_path):
    config = warm_config(schedule, tmp_path)
    champion = json.loads((schedule["tmp"] / "registry" / NAME / "current" / "forecaster.json").read_text())
    result = cli_in_process(
        "ingest", "--config", str(config), "--force", "train.init_from=champion", "data.transform=auto"
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads((tmp_path / "run/ingest/meta.json").read_text())
    assert meta["transform"] == champion["transform"]
    assert meta["transform_check"]["why"] == "kept from the starting weights (train.init_from)"


def test_a_new_champion_makes_a_warm_started_train_run_again(schedule, tmp_path):
    """The train cache key holds the champion's version: a promotion alone invalidates it."""
    config = warm_config(schedule, tmp_path)
    args = ("train", "--config", str(config), "train.init_from=champion", "train.max_steps=2", "train.warmup_steps=0")
    assert cli_in_process(*args).returncode == 0
    assert "train: up to date" in cli_in_process(*args).stderr
    root = schedule["tmp"] / "registry" / NAME
    serving = registry_store.current_version(root)
    other = next(v for v in registry_store.versions(root) if v != serving)
    registry_store.switch_current(root, other)
    try:
        again = cli_in_process(*args)
    finally:
        registry_store.switch_current(root, serving)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "train: up to date" not in again.stderr
    assert f"starting from the weights of champion {other}" in again.stderr


def test_init_from_a_different_architecture_is_exit_2(schedule, tmp_path):
    config = warm_config(schedule, tmp_path)
    result = cli_in_process("train", "--config", str(config), "train.init_from=champion", "model.hidden_size=16")
    assert result.returncode == 2
    assert "hidden_size=8 (config: 16)" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: train.init_from: the architecture of champion")


def test_init_from_a_path_checks_shapes(schedule):
    version = schedule["tmp"] / "registry" / NAME / "v0001"
    cfg = load_config(schedule["config"], [f"train.init_from={version}"])
    spec = ModelSpec(**json.loads((version / "forecaster.json").read_text())["model"])
    assert (spec.hidden_size, spec.num_layers) == (8, 1)
    state = warm_start_state(cfg.train.init_from, cfg.registry_root, spec, build_model(spec).state_dict())
    assert set(state) == set(build_model(spec).state_dict())
    other = dataclasses.replace(spec, num_layers=2)
    with pytest.raises(ConfigError, match="num_layers=1 \\(config: 2\\)"):
        warm_start_state(cfg.train.init_from, cfg.registry_root, other, build_model(other).state_dict())
    no_calendar = dataclasses.replace(spec, calendar=(), input_size=1)
    assert spec.calendar  # the hourly schedule data has a daily cycle at least
    with pytest.raises(ConfigError, match=re.escape(f"calendar={list(spec.calendar)!r} (config: [])")):
        warm_start_state(cfg.train.init_from, cfg.registry_root, no_calendar, build_model(no_calendar).state_dict())
    # a bare weights file has no spec: the shapes decide
    cfg = load_config(schedule["config"], [f"train.init_from={version / 'model.safetensors'}"])
    wider = dataclasses.replace(spec, hidden_size=16)
    with pytest.raises(ConfigError, match="shape"):
        warm_start_state(cfg.train.init_from, cfg.registry_root, wider, build_model(wider).state_dict())
    cfg = load_config(schedule["config"], ["train.init_from=/nonexistent/dir"])
    with pytest.raises(ConfigError, match="not none, champion"):
        warm_start_state(cfg.train.init_from, cfg.registry_root, spec, build_model(spec).state_dict())


def test_a_rejected_night_rerun_with_nothing_new_is_decided_again(tmp_path):
    """docs/registry.md: `unchanged` only when the export is the current version; a rejected challenger rerun
    with nothing new skips every stage, keeps its version and is rejected again against the same champion."""
    full_data()[lambda d: d["time"] <= np.sort(d["time"].unique())[LENGTHS[0] - 1]].to_csv(
        tmp_path / "data.csv", index=False
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(experiment(tmp_path)))
    run_promote(config, "train.max_steps=150")
    run_promote(config, "train.max_steps=1")
    again = run_promote(config, "train.max_steps=1")
    assert re.findall(r"(\w+): up to date \(inputs unchanged\), skipped", again.stderr) == list(STAGES)
    first, rejected, rerun = history(tmp_path)
    assert first["decision"] == "promoted" and rejected["decision"] == rerun["decision"] == "rejected"
    assert rerun["version"] == rejected["version"] == "v0002" and rerun["current"] == "v0001"
    assert rerun["challenger_mase"] == rejected["challenger_mase"]
    assert sorted(p.name for p in (tmp_path / "registry" / NAME).glob("v*")) == ["v0001", "v0002"]
    decision = cli_in_process("decision", "--config", str(config))
    assert decision.returncode == 3 and json.loads(decision.stdout)["version"] == "v0002"


# ---------------------------------------------------------------- covariates changed between nights


def test_a_night_that_adds_or_drops_covariates_scores_the_champion_with_its_own(tmp_path):
    """The champion is scored with the covariate scaling and static values it was trained with, whatever
    this night ingests: adding a covariate or dropping a static one used to crash the registry step (exit 1,
    every night); a covariate column the champion reads and this night lacks is one line (exit 2)."""
    data = full_data()
    data = data[data["time"] <= np.sort(data["time"].unique())[LENGTHS[0] - 1]].copy()
    steps = np.arange(len(data))
    data["temp"], data["temp2"] = np.sin(steps / 7.0), np.cos(steps / 5.0)
    data["size"] = data["series"].map({"s0000": 1.0, "s0001": 2.0, "s0002": 5.0})
    data.to_csv(tmp_path / "data.csv", index=False)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(experiment(tmp_path)))
    root = tmp_path / "registry" / NAME

    run_promote(config, "data.past_covariates=[temp]", "data.static_covariates=[size]")
    first = history(tmp_path)[-1]
    run_promote(config, "data.past_covariates=[temp,temp2]", "train.max_steps=40")  # one more, the static dropped
    second = history(tmp_path)[-1]
    assert first["version"] == "v0001" and second["champion_version"] == "v0001"
    # the same data and windows: the champion scores what it scored the night it was the challenger
    assert second["champion_mase"] == pytest.approx(first["challenger_mase"], rel=1e-12)

    before = (tree_hash(root), registry_store.current_version(root))
    dropped = cli_in_process(
        "run", "--config", str(config), "--promote", "data.past_covariates=[]", "train.max_steps=20"
    )  # fmt: skip
    champion = second["current"]
    assert dropped.returncode == 2, dropped.stderr[-2000:]
    assert dropped.stderr.strip().splitlines()[-1] == (
        f"error: registry: the champion {champion} reads the covariate 'temp', which this run does not ingest "
        "(data.past_covariates, data.future_covariates): list it again to score the two on the same windows, "
        "or use a new `name` for a model without it"
    )
    assert (tree_hash(root), registry_store.current_version(root)) == before


# ---------------------------------------------------------------- registry pieces


@pytest.mark.parametrize(
    ("challenger", "champion", "margin", "promoted"),
    [
        (0.9, None, 0.0, True),
        (0.9, 1.0, 0.0, True),
        (1.0, 1.0, 0.0, False),
        (0.95, 1.0, 0.1, False),
        (0.89, 1.0, 0.1, True),
        (float("nan"), 1.0, 0.0, False),
        (float("nan"), None, 0.0, False),
    ],
)
def test_promotion_rule(challenger, champion, margin, promoted):
    assert registry.decide(challenger, champion, margin)[0] is promoted


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["registry.promote=true"], "needs registry.dir"),
        (["registry.dir=/r", "registry.min_improvement=1.5"], "registry.min_improvement must be in [0, 1)"),
        (["registry.dir=' '"], "registry.dir is empty"),
        (["train.init_from=champion"], "train.init_from: champion needs registry.dir"),
        (["train.init_from=''"], "train.init_from must be"),
    ],
)
def test_registry_config_is_validated(overrides, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_config(None, overrides)


def test_promote_flag_without_a_registry_is_exit_2(tmp_path):
    result = cli_in_process("run", "--config", str(REPO / "configs/default.yaml"), "--promote")
    assert result.returncode == 2 and "needs registry.dir" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_switch_current_and_a_pointer_file(tmp_path):
    root = tmp_path / NAME
    for v in ("v0001", "v0002"):
        (root / v).mkdir(parents=True)
        (root / v / "model.safetensors").write_bytes(b"x")
    registry_store.switch_current(root, "v0001")
    registry_store.switch_current(root, "v0002")
    assert (root / "current").is_symlink() and os.readlink(root / "current") == "v0002"
    assert registry_store.resolve_model_dir(root / "current") == root / "v0002"
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []
    (root / "current").unlink()
    (root / "current").write_text("v0001\n")  # a file system without symlinks
    assert registry_store.current_version(root) == "v0001"
    assert registry_store.resolve_model_dir(root / "current") == root / "v0001"
    (root / "current").write_text("v0007\n")
    with pytest.raises(UserError, match="v0007"):
        registry_store.resolve_model_dir(root / "current")
    assert registry_store.resolve_model_dir(tmp_path / "export") == tmp_path / "export"  # not a registry


def test_a_history_line_that_is_no_record_is_left_out_with_a_warning(tmp_path, caplog):
    """A line `[1, 2]` in history.jsonl made `decision` an AttributeError traceback (exit 1); a torn line was left
    out without a word."""
    root = tmp_path / NAME
    root.mkdir()
    registry.append_history(root, {"version": "v0001", "decision": "promoted"})
    with open(root / "history.jsonl", "a") as fh:
        fh.write('[1, 2]\n{"version": "v0002", "deci\n')
    with caplog.at_level("WARNING", logger="pipeline"):
        assert registry_store.read_history(root) == [{"version": "v0001", "decision": "promoted"}]
    assert [r.getMessage() for r in caplog.records] == [
        f"registry: line {n} of {root / 'history.jsonl'} is no decision record; left out" for n in (2, 3)
    ]


def test_recover_after_a_kill_inside_the_registry_step(tmp_path):
    root = tmp_path / NAME
    (root / ".v0003.tmp").mkdir(parents=True)  # killed while copying the export
    for version, decision in (("v0001", "promoted"), ("v0002", "promoted")):
        (root / version).mkdir()
        (root / version / "model.safetensors").write_bytes(b"x")
        (root / version / "decision.json").write_text(json.dumps({"version": version, "decision": decision}))
    registry.append_history(root, {"version": "v0001", "decision": "promoted"})
    registry_store.switch_current(root, "v0001")  # v0002 was renamed into place, then the run was killed
    registry.recover(root)
    assert not (root / ".v0003.tmp").exists()
    records = registry_store.read_history(root)
    assert [(r["version"], r["decision"]) for r in records] == [("v0001", "promoted"), ("v0002", "interrupted")]
    assert registry_store.current_version(root) == "v0001"
    registry.recover(root)
    assert len(registry_store.read_history(root)) == 2  # idempotent


# ---------------------------------------------------------------- cron, Kubernetes, SLURM

CRON = REPO / "launch/cron/retrain.sh"
SBATCH = REPO / "launch/slurm/retrain.sbatch"
CRONJOB = REPO / "launch/k8s/cronjob.yaml"
needs_flock = pytest.mark.skipif(shutil.which("flock") is None, reason="flock (util-linux) not installed")

STUB = """#!/usr/bin/env bash
echo "lstm-pipeline $*" >> "$STUB_LOG"
if [ "${STUB_DECISION:-}" != "" ]; then
  mkdir -p "$STUB_HISTORY_DIR"
  echo "{\\"version\\": \\"v0001\\", \\"decision\\": \\"$STUB_DECISION\\"}" >> "$STUB_HISTORY_DIR/history.jsonl"
fi
exit "${STUB_RC:-0}"
"""

PYTHON_STUB = f"""#!/usr/bin/env bash
# retrain.sh's PYTHON: `-m pipeline run ...` is recorded (and stubbed) as the other stubs are; the decision
# (`-m pipeline decision`) runs in the real interpreter
if [ "$1 $2 $3" = "-m pipeline run" ]; then
  shift 2
  exec "$(dirname "$0")/pipeline-run" "$@"
fi
exec "{sys.executable}" "$@"
"""


def run_wrapper(
    tmp_path: Path, script: Path, args: list[str], path: str | None = None, cli: bool = True, **env: str
) -> tuple[int, list[str], str]:
    """Run a recipe with stubs that only record what they were asked: `sbatch`, an `lstm-pipeline` on PATH (a
    recipe must not run it) and the interpreter in PYTHON, whose `-m pipeline run` is recorded as `python -m
    pipeline run ...`. `path`: the PATH after the stubs' folder (default: this process's); `cli=False`: no
    `lstm-pipeline` stub either."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, command in (
        ("lstm-pipeline", "lstm-pipeline"),
        ("sbatch", "sbatch"),
        ("pipeline-run", "python -m pipeline"),
    ):
        if name != "lstm-pipeline" or cli:
            (bin_dir / name).write_text(STUB.replace("lstm-pipeline $*", f"{command} $*"))
            (bin_dir / name).chmod(0o755)
    (bin_dir / "python").write_text(PYTHON_STUB)
    (bin_dir / "python").chmod(0o755)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"name": NAME, "registry": {"dir": str(tmp_path / "registry")}}))
    log = tmp_path / "calls.log"
    full_env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH'] if path is None else path}",
        "STUB_LOG": str(log),
        "STUB_HISTORY_DIR": str(tmp_path / "registry" / NAME),
        "PYTHON": str(bin_dir / "python"),
        "LOCK_FILE": str(tmp_path / "retrain.lock"),
        "HOME": str(tmp_path),
        **env,
    }
    args = [a.replace("CONFIG", str(config)) for a in args]
    result = subprocess.run(["bash", str(script), *args], cwd=REPO, env=full_env, capture_output=True, text=True)
    calls = log.read_text().splitlines() if log.exists() else []
    return result.returncode, calls, result.stderr


@needs_flock
@pytest.mark.parametrize(
    ("decision", "run_rc", "expected"),
    [("promoted", 0, 0), ("unchanged", 0, 0), ("rejected", 0, 3), ("", 2, 2), ("", 1, 1), ("", 137, 1)],
)
def test_cron_wrapper_exit_codes(tmp_path, decision, run_rc, expected):
    code, calls, stderr = run_wrapper(
        tmp_path, CRON, ["CONFIG", "train.max_steps=5"], STUB_DECISION=decision, STUB_RC=str(run_rc)
    )
    assert code == expected, stderr
    assert calls == [f"python -m pipeline run --config {tmp_path / 'config.yaml'} --promote train.max_steps=5"]


@needs_flock
def test_cron_wrapper_runs_the_training_and_the_decision_with_python_not_path(tmp_path):
    """cron's bare PATH, without lstm-pipeline on it: PYTHON runs both steps (and the decision reads the run's)."""
    bare = os.pathsep.join(str(Path(shutil.which(tool)).parent) for tool in ("flock", "date", "bash"))
    for folder in bare.split(os.pathsep):
        assert not (Path(folder) / "lstm-pipeline").exists(), folder
    code, calls, stderr = run_wrapper(
        tmp_path, CRON, ["CONFIG", "seed=1"], path=bare, cli=False, STUB_DECISION="rejected"
    )
    assert code == 3, stderr
    assert calls == [f"python -m pipeline run --config {tmp_path / 'config.yaml'} --promote seed=1"]


@needs_flock
def test_cron_wrapper_passes_force_to_the_run_and_not_to_the_decision(tmp_path):
    code, calls, stderr = run_wrapper(tmp_path, CRON, ["CONFIG", "--force", "seed=1"], STUB_DECISION="promoted")
    assert code == 0, stderr
    assert calls == [f"python -m pipeline run --config {tmp_path / 'config.yaml'} --promote --force seed=1"]


@needs_flock
def test_cron_wrapper_never_overlaps(tmp_path):
    with open(tmp_path / "retrain.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        code, calls, stderr = run_wrapper(tmp_path, CRON, ["CONFIG"], STUB_DECISION="promoted")
    assert code == 75 and calls == [] and "another run holds" in stderr


@needs_flock
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_to_the_cron_wrapper_stops_the_run_and_frees_the_lock(tmp_path, sig):
    """`timeout 3h retrain.sh ...` or `kill` reach the wrapper, not the run: the run must stop with it (it went on
    training in the background, holding the lock, and the wrapper exited 128 + the signal)."""
    stub = tmp_path / "python"
    stub.write_text('#!/usr/bin/env bash\necho $$ > "$STUB_PID"\nexec sleep 60\n')  # `-m pipeline run`: a long run
    stub.chmod(0o755)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"name": NAME, "registry": {"dir": str(tmp_path / "registry")}}))
    env = {
        **os.environ,
        "PYTHON": str(stub),
        "LOCK_FILE": str(tmp_path / "retrain.lock"),
        "STUB_PID": str(tmp_path / "pid"),
    }
    # a shell's background job (`make test &`, a CI step's `... &`) starts with INT ignored, which bash cannot
    # trap: the wrapper starts with the disposition a scheduler or a terminal gives it
    wrapper = subprocess.Popen(
        ["bash", str(CRON), str(config)], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not (tmp_path / "pid").is_file() or not (tmp_path / "pid").read_text().strip():
        assert time.monotonic() < deadline and wrapper.poll() is None, "the run never started"
        time.sleep(0.02)
    run = psutil.Process(int((tmp_path / "pid").read_text()))
    wrapper.send_signal(sig)
    _, stderr = wrapper.communicate(timeout=30)
    assert wrapper.returncode == 1, stderr
    assert (
        stderr.strip()
        .splitlines()[-1]
        .endswith("retrain: stopped by a signal, and the run with it (the registry changes only at its end)")
    )
    _, alive = psutil.wait_procs([run], timeout=10)
    assert not alive, "the run outlived the wrapper"
    with open(tmp_path / "retrain.lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again: the next night is not skipped


@needs_flock
def test_the_default_lock_is_the_same_file_whatever_tmpdir_says(tmp_path):
    """A scheduler may give each job its own TMPDIR: the default lock must not follow it, or two nights overlap."""
    with open("/tmp/lstm-pipeline-retrain-config.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        code, calls, stderr = run_wrapper(
            tmp_path, CRON, ["CONFIG"], STUB_DECISION="promoted", LOCK_FILE="", TMPDIR=str(tmp_path)
        )
    assert code == 75 and calls == [] and "another run holds" in stderr


def test_recipe_scripts_parse():
    for script in (CRON, SBATCH):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert os.access(script, os.X_OK), script


@needs_flock
def test_sbatch_resubmits_itself_then_retrains(tmp_path):
    code, calls, stderr = run_wrapper(
        tmp_path,
        SBATCH,
        ["registry.dir=" + str(tmp_path / "registry")],
        STUB_DECISION="rejected",
        CONFIG=str(tmp_path / "config.yaml"),
        SLURM_SUBMIT_DIR=str(REPO),
        RETRAIN_BEGIN="now+1day",
    )
    assert code == 3, stderr
    config = tmp_path / "config.yaml"
    assert calls == [
        f"sbatch --begin=now+1day --dependency=singleton launch/slurm/retrain.sbatch registry.dir={tmp_path}/registry",
        f"python -m pipeline run --config {config} --promote registry.dir={tmp_path}/registry",
    ]
    text = SBATCH.read_text()
    assert "#SBATCH --gpus=1" in text and "scrontab" in text and "#SCRON" in text


def test_crontab_line_runs_the_wrapper_with_a_valid_config():
    lines = [ln for ln in (REPO / "launch/cron/crontab.example").read_text().splitlines() if ln[:1].isdigit()]
    assert len(lines) == 1
    fields = lines[0].split()
    assert fields[:5] == ["15", "2", "*", "*", "*"]  # nightly
    command = lines[0].split("launch/cron/retrain.sh", 1)[1].split(">>")[0].split()
    load_config(REPO / command[0], command[1:])
    assert lines[0] in (REPO / "docs/registry.md").read_text()  # the guide shows the line as it is


def test_kubernetes_cronjob():
    from pipeline.orchestrators.cli import parse_args

    docs = {d["kind"]: d for d in yaml.safe_load_all(CRONJOB.read_text())}
    job = docs["CronJob"]["spec"]
    assert job["concurrencyPolicy"] == "Forbid" and len(job["schedule"].split()) == 5
    pod = job["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["WANDB_API_KEY"]["valueFrom"]
    claim = docs["PersistentVolumeClaim"]["metadata"]["name"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (name,) = [n for n, v in volumes.items() if v.get("persistentVolumeClaim", {}).get("claimName") == claim]
    data = mounts[name]
    # the arguments of the image's ENTRYPOINT (lstm-pipeline): a valid command and config
    args = parse_args(container["args"])
    assert args.command == "run" and args.promote
    cfg = load_config(REPO / args.config, [*args.overrides, "registry.promote=true"])
    assert cfg.run_dir.is_relative_to(data) and Path(cfg.registry.dir).is_relative_to(data)
    dockerfile = (REPO / "docker/Dockerfile").read_text()
    user = [ln.split()[1] for ln in dockerfile.splitlines() if ln.startswith("USER ")][-1]
    assert pod["securityContext"]["runAsUser"] == int(user.split(":")[0])


# ---------------------------------------------------------------- rollback


def test_a_rollback_serves_the_version_chosen_and_the_nightly_decision_never_undoes_it(tmp_path):
    """An operator takes a promoted model out of service; the next night with nothing new used to judge it again
    against the version rolled back to and promote it straight back."""
    full_data()[lambda d: d["time"] <= np.sort(d["time"].unique())[LENGTHS[0] - 1]].to_csv(
        tmp_path / "data.csv", index=False
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(experiment(tmp_path)))  # registry.min_improvement 0
    root = tmp_path / "registry" / NAME
    run_promote(config, "train.max_steps=150")  # v0001, promoted
    run_promote(config, "train.max_steps=1")  # v0002, rejected: no better than v0001
    assert registry_store.current_version(root) == "v0001"

    nothing_before = cli_in_process("rollback", "--config", str(config))
    assert nothing_before.returncode == 2
    assert nothing_before.stderr.strip().splitlines()[-1] == (
        f"error: registry {root}: no version served before v0001 that is still there and not withdrawn; "
        "name one with --to vNNNN (versions: v0001, v0002)"
    )
    for bad, words in (("v0009", "no version v0009"), ("../v0001", "is not a version name")):
        refused = cli_in_process("rollback", "--config", str(config), "--to", bad)
        assert refused.returncode == 2 and words in refused.stderr and "Traceback" not in refused.stderr
    assert registry_store.current_version(root) == "v0001"

    rolled = cli_in_process("rollback", "--config", str(config), "--to", "v0002")
    assert rolled.returncode == 0, rolled.stderr[-2000:]
    assert json.loads(rolled.stdout)["withdrawn"] == "v0001"
    assert registry_store.current_version(root) == "v0002"
    decision = cli_in_process("decision", "--config", str(config))
    assert decision.returncode == 0 and json.loads(decision.stdout)["decision"] == "rolled_back"

    night = run_promote(config, "train.max_steps=150")  # v0001's export again: nothing new
    assert "v0001 not judged" in night.stderr
    last = history(tmp_path)[-1]
    assert last["decision"] == "rejected" and last["version"] == "v0001" and last["current"] == "v0002"
    assert registry_store.current_version(root) == "v0002"
    assert cli_in_process("decision", "--config", str(config)).returncode == 3

    no_earlier = cli_in_process("rollback", "--config", str(config))  # v0001, before v0002, is withdrawn
    assert no_earlier.returncode == 2 and "no version served before v0002" in no_earlier.stderr
    back = cli_in_process("rollback", "--config", str(config), "--to", "v0001")  # an operator puts it back
    assert back.returncode == 0 and registry_store.current_version(root) == "v0001"
    again = run_promote(config, "train.max_steps=150")
    assert history(tmp_path)[-1]["decision"] == "unchanged", again.stderr[-2000:]
    history_frame = pd.read_csv(tmp_path / "data.csv")
    np.testing.assert_array_equal(
        Forecaster.load(root / "current").predict(history_frame)["forecast"],
        Forecaster.load(root / "v0001").predict(history_frame)["forecast"],
    )


def test_a_rollback_without_a_registry_history_is_one_line(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(experiment(tmp_path)))
    result = cli_in_process("rollback", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: registry {tmp_path / 'registry' / NAME}: nothing was promoted there, so there is nothing to roll back"
    )
